"""Smoke runs of the benchmark scripts that share the harness (frontier and demo have their own tests)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from tests.scripts import load_script


def load(name: str) -> ModuleType:
    return load_script(f"benchmarks/{name}.py", f"bench_{name}")


def test_memory_and_time_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("memory_and_time").main(["--quick", "--markdown", "--devices", "cpu,cuda"]) == 0
    out = capsys.readouterr().out
    assert "### mlp-4 on cpu" in out and "| MPC sliding h=1" in out and "| checkpoint every 2 blocks" in out
    assert "saved-for-backward MiB (breakdown)" in out and "predicted MiB" in out
    assert "timed rounds" in out and "What the real peak at h = 1 is made of" in out
    assert "### Depth scaling on cpu: mlp-2, mlp-3, mlp-4" in out and "KiB/block" in out
    if not torch.cuda.is_available():
        assert "CUDA: not run" in out


def test_memory_and_time_refuses_bad_modes() -> None:
    with pytest.raises(SystemExit):
        load("memory_and_time").parse_args(["--modes", "diagonal"])


def test_telemetry_overhead_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    module = load("telemetry_overhead")
    code = module.main(
        ["--steps", "3", "--warmup", "1", "--rounds", "1", "--configs", "off,default", "--batch-size", "64"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| default" in out and "Telemetry's own work" in out and "timed rounds" in out
    assert (
        "start_memory" in module._HOOKS[module.StepRecorder]
        and "on_train_batch_end" in module._HOOKS[module.MPCTelemetry]
    )

"""The script behind docs/img/dashboard.png: it merges the CSV rows per step and draws every panel."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "docs" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_merged_per_step_and_every_panel_is_drawn(tmp_path: Path) -> None:
    dashboard = _script()
    path = tmp_path / "metrics.csv"
    keys = ["step", "epoch", "train_loss", "mpc/peak_activation_bytes", "mpc/backprop_activation_bytes"]
    keys.append("mpc/alignment")
    names = ("loss", "activation_bytes", "alignment", "forward_ms", "backward_ms")
    for block in range(3):
        keys += [f"mpc/block_{block:02d}/{name}" for name in names]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for step in range(4):
            # the telemetry's per-block row and Lightning's own row of the same step
            per_block = {"step": step, "epoch": 0}
            for block in range(3):
                per_block |= {
                    f"mpc/block_{block:02d}/loss": 2.0 / (step + 1 + block),
                    f"mpc/block_{block:02d}/activation_bytes": 1000.0 * (3 - block),
                    f"mpc/block_{block:02d}/alignment": 1.0 if block == 2 else 0.5,
                    f"mpc/block_{block:02d}/forward_ms": 1.0,
                    f"mpc/block_{block:02d}/backward_ms": 2.0,
                }
            writer.writerow(per_block)
            writer.writerow(
                {"step": step, "epoch": 0, "train_loss": 1.0, "mpc/peak_activation_bytes": 3000.0,
                 "mpc/backprop_activation_bytes": 5000.0, "mpc/alignment": 0.7}
            )
    rows = dashboard.load(path)
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert rows[1]["mpc/block_02/loss"] == pytest.approx(0.5) and rows[1]["train_loss"] == 1.0
    out = dashboard.plot(rows, tmp_path / "dashboard.png", title="test")
    assert out.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="No mpc/block_"):
        dashboard.plot([{"step": 0.0, "train_loss": 1.0}], tmp_path / "empty.png")


def test_offline_environment_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = _script()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with dashboard.offline_wandb(tmp_path):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path)
    assert os.environ["WANDB_MODE"] == "online" and "WANDB_DIR" not in os.environ


def test_the_committed_figure_exists() -> None:
    assert (ROOT / "docs" / "img" / "dashboard.png").read_bytes().startswith(b"\x89PNG")

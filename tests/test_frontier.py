"""Smoke run of ``benchmarks/frontier.py`` on a few bundled digits, and its checkpointed baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from lightning_mpc.recipes import MLPClassifier

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frontier() -> ModuleType:
    spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["frontier"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("segment", [1, 3])
def test_checkpointed_mlp_has_exact_gradients(frontier: ModuleType, segment: int) -> None:
    sizes = {"hidden": 16, "in_features": 12, "num_classes": 4}
    plain = MLPClassifier(num_blocks=5, **sizes)
    checkpointed = frontier.CheckpointedMLP(num_blocks=5, segment=segment, **sizes)
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.randn(6, 12), torch.randint(0, 4, (6,))
    for model in (plain, checkpointed):
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_frontier_smoke_run(frontier: ModuleType, tmp_path: Path) -> None:
    code = frontier.main(
        [
            "--epochs",
            "1",
            "--limit",
            "64",
            "--batch-size",
            "32",
            "--horizons",
            "2",
            "--rounds",
            "1",
            "--timing-steps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    page = (tmp_path / "frontier.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "BP",
        "BP + checkpoint every block",
        "BP + checkpoint every 3 blocks",
        "MPC sliding",
        "MPC block",
    ]
    assert "h = T/2 = 4 was not run" in page and "Smoke run" in page
    assert "python benchmarks/frontier.py --epochs 1" in page and "torch thread" in page
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("| BP") or line.startswith("| MPC")
    }
    assert float(cells["BP"][4]) == 1.0
    assert float(cells["MPC sliding"][4]) < 1.0 and float(cells["BP + checkpoint every 3 blocks"][4]) < 1.0
    # exact gradients: checkpointing trains exactly like back-propagation
    assert cells["BP + checkpoint every block"][2] == cells["BP"][2]
    assert (tmp_path / "img" / "frontier.png").read_bytes().startswith(b"\x89PNG")

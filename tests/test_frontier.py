"""Smoke run of ``benchmarks/frontier.py`` on a few bundled digits, and its method rows."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from lightning_mpc.bench import Method, rule_method
from tests.scripts import load_script


@pytest.fixture(scope="module")
def frontier() -> ModuleType:
    return load_script("benchmarks/frontier.py")


def test_methods_list_every_row_once(frontier: ModuleType) -> None:
    rows = frontier.methods(8, [1, 2, 4], ["sliding", "block"])
    assert [m.key for m in rows] == [
        "BP",
        "BP + checkpoint every block",
        "BP + checkpoint every 3 blocks",
        "MPC sliding h=1",
        "MPC sliding h=2",
        "MPC sliding h=4",
        "MPC block h=1",
        "MPC block h=2",
        "MPC block h=4",
    ]
    assert [m.family for m in rows[:3]] == ["bp", "checkpoint", "checkpoint"] and all(m.exact for m in rows[:3])


def test_a_rule_row_is_one_entry(frontier: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a rule: one RULE_METHODS entry (here MPC under another label, a rule every branch has)."""
    entry = frontier.RuleRow(lambda make: rule_method("mpc", "MPC rule", make, horizon=2), models=("mlp",))
    monkeypatch.setitem(frontier.RULE_METHODS, "mpc", entry)
    row = frontier.rule_row("mpc")
    assert isinstance(row, Method) and row.label == "MPC rule" and row.family == "mpc"
    assert type(row.make_strategy()).__name__ == "RuleStrategy"
    assert type(row.make_model(8)).__name__ == "MLPClassifier"
    assert "mpc" in frontier.default_rules("mlp") and "mpc" not in frontier.default_rules("residual-mlp")
    with pytest.raises(ValueError, match="cannot train the 'residual-mlp' model.*HINT: run the frontier with --model"):
        frontier.rule_row("mpc", "residual-mlp")
    with pytest.raises(KeyError, match="No credit-assignment rule named 'nope'"):
        rule_method("nope")


def test_pint_trains_on_the_residual_model(frontier: ModuleType) -> None:
    rows = frontier.methods(5, [1], ["sliding"], ["pint"], "residual-mlp")
    assert [m.key for m in rows][-1] == "PinT (2 slabs, 1 sweep)"
    assert all(type(m.make_model(5)).__name__ == "ResidualMLPClassifier" for m in rows)
    assert "pint (`--model residual-mlp`)" in frontier.rules_elsewhere("mlp")
    assert not any(r.startswith("pint") for r in frontier.rules_elsewhere("residual-mlp"))


def test_scalable_ff_trains_on_the_convolutional_model(frontier: ModuleType) -> None:
    rows = frontier.methods(8, [1], ["sliding"], frontier.default_rules("cifar-resnet"), "cifar-resnet")
    assert [m.key for m in rows][-1] == "Scalable FF" and rows[-1].family == "sff"
    model = rows[0].make_model(8)
    assert type(model).__name__ == "CIFARResNetClassifier" and len(model.net) == 8
    assert "sff (`--model cifar-resnet`)" in frontier.rules_elsewhere("mlp")
    assert frontier.default_rules("mlp") == ["pepita", "ff"]


def test_the_convolutional_model_takes_3n_plus_2_blocks(frontier: ModuleType) -> None:
    with pytest.raises(SystemExit):
        frontier.main(["--model", "cifar-resnet", "--blocks", "7"])


def test_frontier_smoke_run(frontier: ModuleType, tmp_path: Path) -> None:
    code = frontier.main(
        [
            "--epochs",
            "1",
            "--limit",
            "256",
            "--batch-size",
            "128",
            "--horizons",
            "1",
            "--rounds",
            "2",
            "--timing-steps",
            "1",
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
        "PEPITA",
        "Forward-Forward",
    ]
    assert "h = T/2 = 4 was not run" in page and "Smoke run" in page
    assert "python benchmarks/frontier.py --epochs 1" in page and "torch thread" in page
    assert "timed rounds" in page and "real memory" in page
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith(("| BP", "| MPC"))
    }
    assert float(cells["BP"][4]) == 1.0
    # batch 128: local learning and sqrt(T) checkpointing hold less real memory than back-propagation
    assert float(cells["MPC sliding"][4]) < 1.0 and float(cells["BP + checkpoint every 3 blocks"][4]) < 1.0
    # exact gradients: checkpointing trains exactly like back-propagation
    assert cells["BP + checkpoint every block"][2] == cells["BP"][2]
    assert (tmp_path / "img" / "frontier.png").read_bytes().startswith(b"\x89PNG")

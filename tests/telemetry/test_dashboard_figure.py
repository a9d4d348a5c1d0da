"""The script behind docs/img/dashboard.png: a real offline run, drawn by the package's report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lightning_mpc.report
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    return load_script("docs/dashboard.py")


def test_the_script_draws_with_the_package() -> None:
    # one drawing code path: the docs figure is what `lightning-mpc report` draws (tests/report/ tests it)
    dashboard = _script()
    assert dashboard.draw_dashboard is lightning_mpc.report.draw_dashboard
    assert dashboard.load_run is lightning_mpc.report.load_run


def test_offline_environment_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = _script()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with dashboard.offline_wandb(tmp_path):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path)
    assert os.environ["WANDB_MODE"] == "online" and "WANDB_DIR" not in os.environ


def test_the_committed_figure_exists() -> None:
    assert (ROOT / "docs" / "img" / "dashboard.png").read_bytes().startswith(b"\x89PNG")

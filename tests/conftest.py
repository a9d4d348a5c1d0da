"""Test isolation shared by every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_global_seed_from_an_earlier_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the seed an earlier test's ``seed_everything`` (a recipe, the CLI) left in the environment.

    Lightning's DDP strategies re-seed every process from ``PL_GLOBAL_SEED`` when they start, so a leftover
    value makes a spawned run draw different initial heads than the one-process run it is compared with.
    """
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)

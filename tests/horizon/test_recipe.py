"""The deep-linear recipe runs and measures what its docstring says."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.scripts import load_script


def _recipe() -> ModuleType:
    return load_script("recipes/deep_linear.py", "deep_linear_recipe")


def test_whitened_inputs_have_identity_covariance() -> None:
    recipe = _recipe()
    x = recipe.whitened_inputs(64, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.T @ x / 64, torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("family", ["iid", "smooth"])
def test_deep_linear_alignment_grows_with_the_horizon(family: str, tmp_path: Path) -> None:
    recipe = _recipe()
    (result,) = recipe.run([6], [family], seeds=1, width=6, samples=32, sigma=1.0)
    values = [result.alignment[h] for h in range(1, 7)]
    assert values == sorted(values) and values[-1] == 1.0 and values[0] < 0.95
    assert 1.0 < result.law.exponent < 4.0 and result.law.exponent_fitted
    assert "| " + family in recipe.table([result])
    recipe.plot([result], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0

"""The deep-linear recipe runs and measures what its docstring says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "deep_linear.py"


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deep_linear_recipe", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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

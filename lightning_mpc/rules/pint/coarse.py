"""The predictor's coarse network: fewer Euler steps of a larger size, parameters derived from the fine steps.

Slab ``s`` covers fine steps ``a_s .. b_s - 1`` of sizes ``dt_n``. Its coarse propagator ``G_s`` takes
``ceil((b_s - a_s) / coarsening)`` Euler steps (the coarsening factor is how many fine steps one coarse step
covers at most, as in parareal and multigrid in time); coarse step ``j`` covers a contiguous group of the
slab's fine steps, has the group's total step size and a vector field derived from the group's fields:

* ``"mean"`` (default): the first field of the group evaluated with the group's parameters averaged
  (restriction by averaging; the fields must have the same parameter names and shapes);
* ``"first"``: the first field of the group with its own parameters (restriction by injection, as in
  multigrid-in-time training of ResNets).

The coarse co-state propagator is the exact adjoint of ``G_s``: ``B_s(x)^T p``, a vector-Jacobian product
of the coarse step at ``x``. Neither computes parameter gradients: the coarse network only predicts the
boundary values, the slabs' fine passes compute the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.func import functional_call

from lightning_mpc.rules.pint.modules import ResidualStep, euler_step
from lightning_mpc.rules.pint.slabs import positive_int, slab_ranges

__all__ = [
    "COARSE_WEIGHTS",
    "DEFAULT_COARSENING",
    "CoarseNetwork",
    "CoarseWeights",
    "validate_coarse_weights",
    "validate_coarsening",
]

CoarseWeights = Literal["mean", "first"]
COARSE_WEIGHTS: tuple[str, ...] = ("mean", "first")
DEFAULT_COARSENING = 4
"""Fine steps per coarse step by default (16 steps: K = 2 slabs get 2 coarse steps each, K = 4 get 1)."""


def validate_coarse_weights(weights: str) -> CoarseWeights:
    """``weights`` if it is one of :data:`COARSE_WEIGHTS`.

    Raises:
        ValueError: otherwise.
    """
    if weights not in COARSE_WEIGHTS:
        raise ValueError(
            f"coarse_weights must be one of {', '.join(COARSE_WEIGHTS)}, got {weights!r}. HINT: 'mean' averages the "
            "parameters of the fine steps a coarse step covers, 'first' injects the first step's."
        )
    return weights  # type: ignore[return-value]


def validate_coarsening(coarsening: int) -> int:
    """``coarsening`` if it is an integer ``>= 1``.

    Raises:
        ValueError: otherwise.
    """
    return positive_int(
        "coarsening", coarsening, "the number of fine steps one coarse step covers at most; 1: an exact predictor."
    )


class _CoarseStep:
    """One coarse Euler step: ``x + dt * f(x)`` with ``f`` the template's field and optional replacement parameters."""

    def __init__(self, template: ResidualStep, dt: float, parameters: dict[str, Tensor] | None) -> None:
        self.template = template
        self.dt = dt
        self.parameters = parameters

    def __call__(self, x: Tensor) -> Tensor:
        f = self.template.f
        update = f(x) if self.parameters is None else functional_call(f, self.parameters, (x,), strict=False)
        return euler_step(f, x, self.dt, update)


def _averaged(steps: Sequence[ResidualStep], first_index: int) -> dict[str, Tensor]:
    named = [dict(step.f.named_parameters()) for step in steps]
    reference = named[0]
    for offset, params in enumerate(named[1:], start=1):
        same = params.keys() == reference.keys() and all(params[k].shape == reference[k].shape for k in reference)
        if not same:
            shapes = sorted((k, tuple(v.shape)) for k, v in params.items())
            expected = sorted((k, tuple(v.shape)) for k, v in reference.items())
            raise ValueError(
                f"coarse_weights='mean' averages the parameters of the fine steps one coarse step covers, but step "
                f"{first_index + offset} has parameters {shapes} and step {first_index} has {expected}. HINT: give "
                "these steps fields of the same architecture, or use coarse_weights='first'."
            )
    with torch.no_grad():
        return {name: torch.stack([params[name].detach() for params in named]).mean(dim=0) for name in reference}


class CoarseNetwork:
    """The coarse propagators ``G_s`` of every slab and their adjoints.

    Built from the current parameters (build a new one after the optimizer steps).

    Args:
        steps: all fine steps, in order.
        slabs: ``K``.
        coarsening: fine steps per coarse step, at most (``1``: the coarse network is the fine one).
        weights: how coarse parameters derive from the fine ones (``"mean"`` or ``"first"``).

    Raises:
        ValueError: for invalid settings or fields that ``"mean"`` cannot average.
    """

    def __init__(
        self, steps: Sequence[ResidualStep], slabs: int, coarsening: int = DEFAULT_COARSENING, weights: str = "mean"
    ) -> None:
        validate_coarsening(coarsening)
        weights = validate_coarse_weights(weights)
        self.ranges = slab_ranges(len(steps), slabs)
        self.propagators: list[list[_CoarseStep]] = []
        for steps_of_slab in self.ranges:
            groups = slab_ranges(len(steps_of_slab), -(-len(steps_of_slab) // coarsening))
            coarse = []
            for group in groups:
                members = [steps[steps_of_slab[j]] for j in group]
                dt = sum(step.dt for step in members)
                params = _averaged(members, steps_of_slab[group[0]]) if weights == "mean" else None
                coarse.append(_CoarseStep(members[0], dt, params))
            self.propagators.append(coarse)

    def propagate(self, slab: int, x: Tensor) -> Tensor:
        """``G_s(x)``, without a graph."""
        with torch.no_grad():
            for step in self.propagators[slab]:
                x = step(x)
        return x

    def adjoint(self, slab: int, x: Tensor, costate: Tensor) -> Tensor:
        """``B_s(x)^T costate``: the co-state at the slab's input given ``costate`` at its output."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            out = leaf
            for step in self.propagators[slab]:
                out = step(out)
            (grad,) = torch.autograd.grad(out, leaf, costate)
        return grad

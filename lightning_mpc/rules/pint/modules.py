"""Residual blocks as ODE steps, and the 16-step residual MLP the parallel-in-time recipe trains.

A residual network whose blocks keep the width is the forward-Euler discretisation of an ODE,
``x_{n+1} = x_n + dt * f(x_n, theta_n)``. :class:`ResidualStep` is such a block; the parallel-in-time rule
recognises a network's ODE steps by this type, and everything before the first step (the stem) and after
the last one (the classifier) is trained by ordinary back-propagation from the co-states the steps give it.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["ResidualStep", "euler_step", "residual_mlp"]


def euler_step(f: nn.Module, x: Tensor, dt: float, update: Tensor) -> Tensor:
    """``x + dt * update`` where ``update = f(x)``, refusing a field that changes the state's shape.

    Raises:
        ValueError: if ``update`` and ``x`` differ in shape (an ODE step keeps the width).
    """
    if update.shape != x.shape:
        raise ValueError(
            f"ResidualStep: f ({type(f).__name__}) maps a state of shape {tuple(x.shape)} to {tuple(update.shape)}; "
            "an ODE step x + dt * f(x) keeps the width. HINT: make f map width d to d, and change the width in a "
            "plain block before the first or after the last ResidualStep."
        )
    return x + dt * update


class ResidualStep(nn.Module):
    """One explicit Euler step of an ODE: ``x + dt * f(x)``; ``f`` must keep the shape of ``x``.

    Args:
        f: the step's vector field (its parameters are the step's ``theta_n``).
        dt: the step size, a positive finite number.

    Raises:
        ValueError: for a step size that is not positive and finite.
    """

    def __init__(self, f: nn.Module, dt: float) -> None:
        super().__init__()
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(
                f"ResidualStep needs a positive, finite step size dt, got {dt!r}. "
                "HINT: use dt = T / num_steps for a network that integrates up to time T."
            )
        self.f = f
        self.dt = float(dt)

    def forward(self, x: Tensor) -> Tensor:
        """``x + dt * f(x)``.

        Raises:
            ValueError: if ``f`` changes the shape of ``x`` (an ODE step keeps the width).
        """
        return euler_step(self.f, x, self.dt, self.f(x))

    def extra_repr(self) -> str:
        return f"dt={self.dt:g}"


def residual_mlp(
    num_steps: int = 16,
    width: int = 128,
    in_features: int = 28 * 28,
    num_classes: int = 10,
    horizon: float = 4.0,
) -> nn.Sequential:
    """A stem, ``num_steps`` residual steps of equal width and a linear classifier, as an ``nn.Sequential``.

    Blocks: ``Linear(in_features, width) + Tanh`` (the stem; inputs must be flat), then ``num_steps`` times
    ``ResidualStep(Linear(width, width) + Tanh, dt = horizon / num_steps)``, then ``Linear(width, num_classes)``.
    Every child holds parameters, so :func:`lightning_mpc.partition` cuts it into ``num_steps + 2`` blocks.

    Args:
        num_steps: the number of ODE steps (at least 1).
        width: the state's width ``d``.
        in_features: flattened input size.
        num_classes: outputs of the classifier.
        horizon: the integration time ``T``; each step has ``dt = T / num_steps``.

    Raises:
        ValueError: for fewer than one step or a non-positive width or horizon.
    """
    if num_steps < 1 or width < 1 or not horizon > 0:
        raise ValueError(
            f"residual_mlp needs num_steps >= 1, width >= 1 and horizon > 0, got {num_steps}, {width}, {horizon}. "
            "HINT: for example residual_mlp(num_steps=16, width=128, horizon=4.0)."
        )
    dt = horizon / num_steps
    stem = nn.Sequential(nn.Linear(in_features, width), nn.Tanh())
    steps = [ResidualStep(nn.Sequential(nn.Linear(width, width), nn.Tanh()), dt) for _ in range(num_steps)]
    return nn.Sequential(stem, *steps, nn.Linear(width, num_classes))

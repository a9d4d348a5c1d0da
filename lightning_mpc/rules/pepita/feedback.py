"""PEPITA's feedback projection ``F`` and weight mirroring (Srinivasan et al., arXiv 2302.05440).

``F`` maps the ``C`` output errors onto the network's input: the modulated input is ``x_err = x + F e``,
with ``F`` of shape ``(input size, C)`` and ``F e`` reshaped like ``x`` (the sign of Dellaferrera & Kreiman's
code, arXiv 2201.11665). By default ``F`` is one fixed matrix, He-uniform scaled by ``0.05`` as in the
authors' code: entries uniform in ``[-a, a]`` with ``a = 0.05 * sqrt(6 / input size)``, standard deviation
``0.05 * sqrt(2 / input size)``.

For weight mirroring ``F`` is factorised over the ``L`` trainable (linear) layers, ``F = -B_1 B_2 ... B_L``
with ``B_l`` shaped like ``W_l^T``. Mirroring steps move every ``B_l`` toward ``W_l^T`` with noise: inject
``xi ~ N(0, sigma^2 I)`` at layer ``l``'s input, observe ``y = W_l xi``, and step
``B_l <- B_l + lr (xi^T y / n - weight_decay * B_l)``, whose expectation is proportional to ``W_l^T``
(Hebbian: the product of the layer's input and output). The minus sign in ``F`` makes the first layer's
update, to first order the direct-feedback-alignment update with feedback ``-W_1 F = W_1 W_1^T W_2^T ...``,
point along back-propagation's (2302.05440 writes the same rule as ``x - F e`` with ``F = B_1 ... B_L``).
After each mirroring step the factors are rescaled together so that ``F`` keeps its initial standard
deviation (the "normalisation of F's scale").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_FEEDBACK_SCALE",
    "FeedbackProjection",
    "feedback_std",
    "mirror_angles",
    "mirror_step",
    "normalize_factors",
    "random_feedback",
]

DEFAULT_FEEDBACK_SCALE = 0.05
"""The authors' factor on the He-uniform initialisation of ``F``."""


def feedback_std(input_size: int, scale: float = DEFAULT_FEEDBACK_SCALE) -> float:
    """The standard deviation of He-uniform ``F`` scaled by ``scale``: ``scale * sqrt(2 / input_size)``."""
    return scale * math.sqrt(2.0 / input_size)


def random_feedback(
    input_size: int,
    num_outputs: int,
    scale: float = DEFAULT_FEEDBACK_SCALE,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A fixed feedback matrix ``F`` of shape ``(input_size, num_outputs)``, He-uniform scaled by ``scale``.

    Drawn on the CPU from ``generator`` (reproducible whatever the device), then moved to ``device``.
    """
    bound = math.sqrt(6.0 / input_size)
    uniform = torch.rand(input_size, num_outputs, generator=generator, dtype=torch.float64)
    matrix = (uniform * 2.0 - 1.0) * bound * scale
    return matrix.to(device=device, dtype=dtype or torch.get_default_dtype())


def normalize_factors(factors: Sequence[Tensor], target_std: float) -> None:
    """Rescale ``factors`` in place, all by the same factor, so that their product has ``target_std``."""
    product = _product(factors)
    std = float(product.std())
    if std == 0.0 or not math.isfinite(std):
        return
    ratio = (target_std / std) ** (1.0 / len(factors))
    for factor in factors:
        factor.mul_(ratio)


def _product(factors: Sequence[Tensor]) -> Tensor:
    result = factors[0]
    for factor in factors[1:]:
        result = result @ factor
    return result


def _linear_weights(layers: Sequence[nn.Module]) -> list[Tensor]:
    weights = []
    for layer in layers:
        if not isinstance(layer, nn.Linear):
            raise TypeError(
                f"Weight mirroring factorises F over linear layers, got a {type(layer).__name__}. "
                "HINT: use mirror=False for networks with convolutions."
            )
        weights.append(layer.weight)
    return weights


@torch.no_grad()
def mirror_step(
    layers: Sequence[nn.Module],
    factors: Sequence[Tensor],
    *,
    noise_std: float = 0.1,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    samples: int = 64,
    generator: torch.Generator | None = None,
) -> None:
    """One noise-driven Hebbian step that moves every factor ``B_l`` toward ``W_l^T``, in place.

    For each layer: ``xi ~ N(0, noise_std^2)`` of shape ``(samples, in_l)`` (drawn on the CPU from
    ``generator``), ``y = xi W_l^T`` and ``B_l <- B_l + lr * (xi^T y / samples - weight_decay * B_l)``.

    Args:
        layers: the trainable ``nn.Linear`` layers, in forward order.
        factors: ``B_1 .. B_L``, ``B_l`` of shape ``(in_l, out_l)``.
        noise_std: the noise amplitude ``sigma``.
        lr: the step size.
        weight_decay: the decay of the factors toward zero.
        samples: noise samples per step.
        generator: the random generator of the noise.
    """
    weights = _linear_weights(layers)
    if len(weights) != len(factors):
        raise ValueError(f"Got {len(factors)} feedback factors for {len(weights)} layers; they must match.")
    for weight, factor in zip(weights, factors):
        noise = torch.randn(samples, weight.shape[1], generator=generator, dtype=factor.dtype).mul_(noise_std)
        noise = noise.to(factor.device)
        response = noise @ weight.detach().to(factor.dtype).T
        if weight_decay:
            factor.mul_(1.0 - lr * weight_decay)
        factor.addmm_(noise.T, response, alpha=lr / samples)


@torch.no_grad()
def mirror_angles(layers: Sequence[nn.Module], factors: Sequence[Tensor]) -> list[float]:
    """The angle in degrees between every factor ``B_l`` and ``W_l^T`` (0: mirrored, 90: unrelated)."""
    angles = []
    for weight, factor in zip(_linear_weights(layers), factors):
        a, b = factor.flatten(), weight.detach().T.reshape(-1).to(factor.dtype)
        dot, norms = torch.stack([a @ b, a.norm() * b.norm()]).double().tolist()
        cos = dot / max(norms, 1e-300)
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    return angles


class FeedbackProjection(nn.Module):
    """The feedback projection ``F`` as a module of buffers (saved in checkpoints, moved with the model).

    Args:
        input_size: the number of elements of one input sample (``F`` has this many rows).
        num_outputs: the number of outputs ``C`` (columns of ``F``).
        hidden_sizes: for weight mirroring, the output sizes of the layers but the last; ``F`` is then the
            product of ``len(hidden_sizes) + 1`` factors. ``None``: one fixed matrix.
        target_std: the standard deviation the factors are normalised to (mirroring only).

    Buffers:
        matrix: ``F`` itself, shape ``(input_size, num_outputs)`` (fixed ``F`` only).
        factor_0 .. factor_{L-1}: ``B_1 .. B_L`` (mirroring only).
        target_std: the standard deviation ``F`` keeps (mirroring only).
        noise_state: the state of the mirroring noise generator, so that resuming continues its draws.
    """

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        hidden_sizes: Sequence[int] | None = None,
        target_std: float | None = None,
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.num_outputs = int(num_outputs)
        self.hidden_sizes = None if hidden_sizes is None else [int(s) for s in hidden_sizes]
        if self.hidden_sizes is None:
            self.register_buffer("matrix", torch.zeros(self.input_size, self.num_outputs))
            return
        sizes = [self.input_size, *self.hidden_sizes, self.num_outputs]
        for index, (rows, cols) in enumerate(pairwise(sizes)):
            self.register_buffer(f"factor_{index}", torch.zeros(rows, cols))
        std = feedback_std(self.input_size) if target_std is None else target_std
        self.register_buffer("target_std", torch.tensor(float(std), dtype=torch.float64))
        self.register_buffer("noise_state", torch.Generator().get_state())

    @property
    def mirrored(self) -> bool:
        """Whether ``F`` is factorised for weight mirroring."""
        return self.hidden_sizes is not None

    @property
    def factors(self) -> list[Tensor]:
        """``B_1 .. B_L`` (empty for a fixed ``F``)."""
        if self.hidden_sizes is None:
            return []
        return [getattr(self, f"factor_{index}") for index in range(len(self.hidden_sizes) + 1)]

    def extra_repr(self) -> str:
        shape = f"input_size={self.input_size}, num_outputs={self.num_outputs}"
        return shape if self.hidden_sizes is None else f"{shape}, factorised over {len(self.factors)} layers"

    @torch.no_grad()
    def reset(self, generator: torch.Generator, scale: float = DEFAULT_FEEDBACK_SCALE) -> None:
        """Draw ``F`` (or its factors) from ``generator``, on the CPU, then move it to the buffers' device.

        A fixed ``F`` is He-uniform scaled by ``scale``. Factors are drawn normal with equal standard
        deviations and rescaled so that their product has the standard deviation of that ``F``.
        """
        if self.hidden_sizes is None:
            self.matrix.copy_(random_feedback(self.input_size, self.num_outputs, scale, generator=generator))
            return
        target = feedback_std(self.input_size, scale)
        self.target_std.fill_(target)
        for factor in self.factors:
            factor.copy_(torch.randn(factor.shape, generator=generator, dtype=torch.float64))
        normalize_factors(self.factors, target)
        self.noise_state.copy_(
            torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator))).get_state()
        )

    def weight(self) -> Tensor:
        """``F``: the matrix, or ``-B_1 B_2 ... B_L``."""
        if self.hidden_sizes is None:
            return self.matrix
        return -_product(self.factors)

    def project(self, error: Tensor, like: Tensor) -> Tensor:
        """``F e`` reshaped like ``like`` (one sample per row of ``error``)."""
        weight = self.weight()
        return (error.to(weight.dtype) @ weight.T).reshape(like.shape).to(like.dtype)

    def mirror(
        self,
        layers: Sequence[nn.Module],
        *,
        noise_std: float,
        lr: float,
        weight_decay: float,
        samples: int,
        steps: int = 1,
        normalize: bool = True,
    ) -> None:
        """``steps`` mirroring steps (:func:`mirror_step`) with the module's own noise generator, then normalise."""
        if self.hidden_sizes is None:
            raise RuntimeError("This feedback projection is not factorised. HINT: build it with hidden_sizes.")
        generator = torch.Generator()
        generator.set_state(self.noise_state.cpu())
        for _ in range(steps):
            mirror_step(
                layers,
                self.factors,
                noise_std=noise_std,
                lr=lr,
                weight_decay=weight_decay,
                samples=samples,
                generator=generator,
            )
        self.noise_state.copy_(generator.get_state())
        if normalize:
            normalize_factors(self.factors, float(self.target_std))

"""Training methods compared side by side in Lightning: a descriptor per method, and the builders of the shipped ones.

A :class:`Method` says how to build the model and the Trainer's strategy for one row of a comparison, and
where its memory figure comes from. The demo and the frontier benchmark list their rows as methods;
adding a credit-assignment rule to a comparison is one :func:`rule_method` call (or a few lines of a
:class:`Method` of its own when the rule needs another model)::

    methods = [backprop_method(), checkpoint_method(1), mpc_method(2), rule_method("ff")]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_mpc.bench.callbacks import StepMemory
from lightning_mpc.bench.steps import checkpointed_forward
from lightning_mpc.recipes.models import MLPClassifier

__all__ = [
    "CheckpointedSequential",
    "MemorySource",
    "Method",
    "backprop_method",
    "checkpoint_method",
    "mpc_method",
    "rule_method",
    "with_checkpointing",
]


class MemorySource(Protocol):
    """A callback that measures a training step's real memory; :attr:`peak_bytes` is ``None`` until it has."""

    peak_bytes: int | None


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose children run in checkpointed segments of ``segment`` blocks when training.

    With gradients enabled in training mode the children run under
    :func:`~lightning_mpc.bench.steps.checkpointed_forward` (``use_reentrant=False``): only the segment inputs
    are kept, and each segment is recomputed during the backward. Gradients are exactly back-propagation's;
    evaluation runs the children plainly. The children and their state-dict keys are those of the wrapped
    ``nn.Sequential``.

    Args:
        *blocks: the blocks, in order.
        segment: blocks per checkpointed segment (1: every block on its own).
    """

    def __init__(self, *blocks: nn.Module, segment: int = 1) -> None:
        super().__init__(*blocks)
        self.segment = segment

    def forward(self, x: Tensor) -> Tensor:
        """The blocks' output; checkpointed segments when training with gradients enabled."""
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        return checkpointed_forward(list(self), x, self.segment)


def with_checkpointing(model: L.LightningModule, segment: int) -> L.LightningModule:
    """``model`` with its ``net`` (an ``nn.Sequential`` of blocks) run in checkpointed segments of ``segment`` blocks.

    Raises:
        TypeError: if the model has no ``net`` that is an ``nn.Sequential``.
    """
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"with_checkpointing needs a model whose `net` is an nn.Sequential of blocks, got {type(net).__name__} on "
            f"{type(model).__name__}. HINT: build the comparison on a model with `self.net = nn.Sequential(...)`."
        )
    model.net = CheckpointedSequential(*net, segment=segment)
    return model


@dataclass(frozen=True)
class Method:
    """One row of a side-by-side comparison.

    Attributes:
        label: the row's name (``"BP"``, ``"MPC sliding"``, ``"FF"``, ...).
        family: ``"bp"``, ``"checkpoint"``, ``"mpc"`` or a rule's registered name.
        make_model: a fresh LightningModule for ``num_blocks`` blocks.
        make_strategy: the Trainer's ``strategy`` argument (a fresh strategy object, or a registered name).
        horizon: the horizon, for MPC (``None`` otherwise).
        mode: the MPC window mode (``None`` otherwise).
        memory: builds the callback that measures the memory figure of a training step
            (:class:`~lightning_mpc.bench.callbacks.StepMemory`, real allocator bytes, by default).
        exact: whether the method's gradients are back-propagation's.
    """

    label: str
    family: str
    make_model: Callable[[int], L.LightningModule]
    make_strategy: Callable[[], Any] = field(default=lambda: "auto")
    horizon: int | None = None
    mode: str | None = None
    memory: Callable[[], Callback] = StepMemory
    exact: bool = False

    @property
    def key(self) -> str:
        """A name unique among the rows of a comparison: the label, with the horizon where there is one."""
        return self.label if self.horizon is None else f"{self.label} h={self.horizon}"

    def horizon_text(self, num_blocks: int) -> str:
        """The horizon column: ``h`` for MPC, ``T (all)`` for exact methods, ``-`` for other rules."""
        if self.horizon is not None:
            return str(self.horizon)
        return f"{num_blocks} (all)" if self.exact else "-"


def _mlp(num_blocks: int) -> L.LightningModule:
    return MLPClassifier(num_blocks=num_blocks)


def backprop_method(label: str = "BP", make_model: Callable[[int], L.LightningModule] = _mlp) -> Method:
    """Back-propagation: Lightning's default strategy."""
    return Method(label, "bp", make_model, exact=True)


def checkpoint_method(
    segment: int, label: str | None = None, make_model: Callable[[int], L.LightningModule] = _mlp
) -> Method:
    """Back-propagation with activation checkpointing in segments of ``segment`` blocks (:func:`with_checkpointing`)."""
    text = "every block" if segment == 1 else f"every {segment} blocks"
    return Method(
        label or f"BP + checkpoint {text}",
        "checkpoint",
        lambda num_blocks: with_checkpointing(make_model(num_blocks), segment),
        exact=True,
    )


def mpc_method(
    horizon: int, mode: str = "sliding", label: str | None = None, make_model: Callable[[int], L.LightningModule] = _mlp
) -> Method:
    """MPC at ``horizon`` in ``mode`` (:class:`~lightning_mpc.MPCStrategy`, telemetry off)."""
    from lightning_mpc.lightning import MPCStrategy

    return Method(
        label or f"MPC ({mode})",
        "mpc",
        make_model,
        lambda: MPCStrategy(horizon=horizon, mode=mode, telemetry=False),  # type: ignore[arg-type]
        horizon=horizon,
        mode=mode,
    )


def rule_method(
    name: str, label: str | None = None, make_model: Callable[[int], L.LightningModule] = _mlp, **rule_kwargs: Any
) -> Method:
    """A registered credit-assignment rule (:class:`~lightning_mpc.RuleStrategy`, telemetry off).

    Args:
        name: the rule's registered name (see :func:`lightning_mpc.available_rules`).
        label: the row's name (default: the name in capitals).
        make_model: the model for ``num_blocks`` blocks (default: the MLP of the other rows).
        **rule_kwargs: the rule's arguments.

    Raises:
        KeyError: for a name no rule is registered under (the message lists the registered ones).
    """
    from lightning_mpc.lightning import RuleStrategy
    from lightning_mpc.rules import build_rule, get_rule

    get_rule(name)  # fail now, with the list of registered rules, rather than inside a Trainer
    return Method(
        label or name.upper(),
        name,
        make_model,
        lambda: RuleStrategy(rule=build_rule(name, **rule_kwargs), telemetry=False),
    )

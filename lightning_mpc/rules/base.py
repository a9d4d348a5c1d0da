"""The credit-assignment rule interface: what every training rule over a network's blocks provides.

A rule decides which gradient every parameter receives for a batch and writes it into ``.grad``. It never
steps an optimizer, so the user's optimizer, schedulers, gradient accumulation, clipping and the data-parallel
gradient averaging work unchanged whatever the rule. The Lightning strategies
(:class:`~lightning_mpc.lightning.strategy.RuleStrategy` and its DDP form) drive a rule through one training
step like this::

    setup(RuleSetup)                          # once, before the optimizers exist: auxiliary modules
    for every training batch:
        listener = begin_step(RuleStep)       # step-owning rules do their passes here, or later
        <the user's training_step runs; ``listener`` receives the blocks' inputs and outputs>
        end_forward(output)                   # training_step returned
        <Lightning back-propagates the returned loss, unless the rule owns the step>
        after_backward()                      # every gradient of the micro-batch is in ``.grad`` after this
    inference_listener()                      # validation, test, predict: the rule's prediction

Two kinds of rules fit:

* Rules that run inside the user's forward (MPC, Forward-Forward): the listener interleaves their work
  with the forward (local losses, detached block boundaries), and the loss ``training_step`` returns is
  back-propagated as usual into what it reaches (``owns_step = False``).
* Rules that own the step (PEPITA, target propagation, parallel-in-time): extra passes, no backward of the
  user's loss (``owns_step = True``). The user's ``training_step`` still runs, so what it logs is logged
  and the loss it returns is reported, but the strategy does not back-propagate it.

Auxiliary modules (local heads, goodness heads, feedback matrices, readouts) are owned by the rule and
registered on the ``LightningModule`` under the names :meth:`CreditRule.auxiliary_modules` gives, so
``self.parameters()``, optimizers and checkpoints see them. Telemetry observes a rule through one event
protocol, :class:`~lightning_mpc.core.observer.EngineObserver` (``rule.observer``).

Every rule also has a pure-PyTorch function (``horizon_backward`` for MPC) tested without Lightning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.core.observer import EngineObserver

__all__ = ["CreditRule", "GradReady", "RuleSetup", "RuleStep"]

GradReady = Callable[[Sequence[nn.Parameter]], None]
"""Called with parameters whose gradient for the step is final (to start their all-reduce early)."""


@dataclass
class RuleSetup:
    """What a rule sees when it is set up (once per ``fit``, before the optimizers are configured).

    Attributes:
        module: the ``LightningModule`` (auxiliary modules are registered on it; rules may look for the
            submodules they train, such as a recurrent cell).
        blocks: the blocks, in the order the forward runs them (empty for rules that do not use blocks).
        block_output_shapes: the shape of every block's output on the dry-run example (batch first).
        example_input: block 0's input on a few samples of the first batch (``None`` without blocks).
        device: the device training runs on.
        dtype: the floating-point dtype of the blocks' parameters (auxiliary modules should match it).
        in_place_inputs: indices of the blocks found to modify their input in place (they must be given
            a copy of the previous block's output when it is a graph leaf; see ``HorizonEngine(clone_inputs=...)``).
        world_size: the number of processes training together (``1`` on one device).
        rank: this process's rank.
        trainer: the ``Trainer`` being set up (``None`` outside Lightning).
    """

    module: nn.Module
    blocks: list[nn.Module]
    block_output_shapes: list[torch.Size]
    example_input: Tensor | None
    device: torch.device
    dtype: torch.dtype | None
    in_place_inputs: frozenset[int] = frozenset()
    world_size: int = 1
    rank: int = 0
    trainer: Any = None


@dataclass
class RuleStep:
    """One training step (one micro-batch) as a rule sees it.

    Attributes:
        batch: the batch, on the device, as ``training_step`` receives it.
        loss_fn: the module's local objective on this batch: ``loss_fn(prediction) -> scalar``
            (:meth:`~lightning_mpc.MPCMixin.local_loss`, default cross-entropy or MSE against ``batch[1]``).
        scale: a linear map to apply to every loss before its backward, or to every gradient a rule writes
            directly: it divides by ``accumulate_grad_batches`` and multiplies by the AMP loss scale. ``None``
            means the identity.
        block_input: computes block 0's input for this batch (the module's forward up to block 0, nothing
            after it); for rules that run their own passes over the blocks.
        first_micro_batch: whether this micro-batch starts an accumulation window (gradients were zeroed).
        last_micro_batch: whether the optimizer steps after this micro-batch.
    """

    batch: Any
    loss_fn: Callable[[Tensor], Tensor]
    scale: Callable[[Tensor], Tensor] | None
    block_input: Callable[[], Tensor]
    first_micro_batch: bool = True
    last_micro_batch: bool = True

    def scaled(self, value: Tensor) -> Tensor:
        """``value`` passed through :attr:`scale` (the identity when there is none)."""
        return value if self.scale is None else self.scale(value)


class CreditRule(ABC):
    """Base class of credit-assignment rules (see the module documentation for the step protocol).

    Subclasses set the class attributes and implement :meth:`setup`, :meth:`begin_step` and
    :meth:`after_backward`; the other methods have working defaults.

    Class attributes:
        name: the registered name, also the strategy flag (``Trainer(strategy=name)``).
        metric_prefix: the prefix of the rule's metrics (``"mpc"`` gives ``mpc/block_03/loss``).
        owns_step: ``True`` when the rule computes every gradient itself and the loss ``training_step``
            returns must not be back-propagated.
        uses_blocks: ``False`` for rules that find their own submodules (a recurrent cell) instead of
            cutting the network into blocks.
        data_parallel: whether the rule allows data parallelism (a ``<name>_ddp`` strategy is registered).
    """

    name: ClassVar[str]
    metric_prefix: ClassVar[str]
    owns_step: ClassVar[bool] = False
    uses_blocks: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = True

    def __init__(self) -> None:
        self.observer: EngineObserver | None = None
        """Receives the rule's events (telemetry); ``None`` for none."""
        self.on_grad_ready: GradReady | None = None
        """Set by the DDP strategy: call it with parameters whose gradient is final for the step."""

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """The rule's configuration as plain values (logged as hyper-parameters and in the W&B config)."""
        return {"rule": self.name}

    @property
    def blocks(self) -> list[nn.Module]:
        """The blocks the rule trains (after :meth:`setup`)."""
        return list(getattr(self, "_blocks", []))

    # ------------------------------------------------------------------ setup
    def partition_options(self) -> dict[str, Any]:
        """Keyword arguments for cutting the network into blocks (see :func:`lightning_mpc.partition`)."""
        return {}

    @abstractmethod
    def setup(self, context: RuleSetup) -> None:
        """Validate the model and build the auxiliary modules.

        Raise a ``ValueError`` or ``TypeError`` whose message names the offending block or module and
        ends with ``HINT:`` for anything the rule cannot train, so that training stops before it starts.
        """

    def auxiliary_modules(self) -> Mapping[str, nn.Module]:
        """Modules the rule owns, by the attribute name under which they are registered on the module."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """What, beyond the state dict, rebuilds the auxiliary modules (stored in checkpoints)."""
        return {}

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        """Give ``module`` auxiliary modules shaped like a checkpoint's before its state dict is loaded.

        Called on a rule built with its default arguments when a checkpoint is loaded outside training
        (``load_from_checkpoint``), so it must rely on ``state`` only. Leave modules the module already has
        alone (resuming ``fit``: the optimizer holds them).

        Args:
            module: the LightningModule being restored.
            state: what :meth:`checkpoint_state` returned when the checkpoint was saved.
            checkpoint: the whole checkpoint (its ``state_dict`` holds the modules' tensors).
        """

    # ------------------------------------------------------------------ steps
    @abstractmethod
    def begin_step(self, step: RuleStep) -> BlockListener | None:
        """Start a training step; return the listener to attach to the blocks during ``training_step``."""

    def end_forward(self, output: Any) -> None:
        """``training_step`` returned ``output`` (not ``None``); check that the step ran as the rule needs."""

    @abstractmethod
    def after_backward(self) -> None:
        """The returned loss was back-propagated (or, for step-owning rules, would have been): finish the step."""

    def abort(self) -> None:
        """Drop the step in progress (``training_step`` raised or returned ``None``)."""

    def inference_listener(self) -> BlockListener | None:
        """A listener for validation, test and predict forwards: the rule's prediction, ``None`` for the plain model."""
        return None

    def teardown(self) -> None:
        """Release what the rule holds at the end of ``fit``."""
        self.abort()

    # ------------------------------------------------------------------ helpers for subclasses
    def _grad_ready(self, params: Sequence[nn.Parameter]) -> None:
        if self.on_grad_ready is not None and params:
            self.on_grad_ready(params)

    def _emit(self, name: str, index: int | None, value: float | Tensor) -> None:
        """Report a rule-specific signal (e.g. a goodness or an angle) to the observer."""
        if self.observer is not None:
            self.observer.signal(name, index, value)

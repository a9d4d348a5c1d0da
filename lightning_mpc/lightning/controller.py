"""Lightning-side bookkeeping of horizon training, shared by the MPC strategies.

The controller resolves the blocks and heads of a ``LightningModule``, installs the block hooks, and
around every training step: zeroes gradients at the start of an accumulation window (Lightning's own
``zero_grad`` would run after ``training_step`` and wipe the local gradients written during it),
attaches the :class:`~lightning_mpc.core.engine.HorizonEngine` to the hooks while the user's
``training_step`` runs, and completes the last window after Lightning's backward of the final loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_mpc.core.engine import HorizonEngine, iter_parameters
from lightning_mpc.core.heads import HeadSpec, build_heads, default_local_loss, infer_head_specs
from lightning_mpc.core.hooks import BlockHooks, OutputShapeRecorder
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import Balance, describe, validate_partition_options
from lightning_mpc.core.schedule import Mode, validate_horizon, validate_mode
from lightning_mpc.horizon.selection import HorizonReport
from lightning_mpc.lightning.auto_horizon import AUTO, DEFAULT_AUTO_BATCHES, AutoHorizon
from lightning_mpc.lightning.batches import call_forward, example_block_input, example_input
from lightning_mpc.lightning.mixin import (
    HEADS_ATTRIBUTE,
    MPCMixin,
    batch_target,
    heads_from_checkpoint,
    resolve_blocks,
)

__all__ = ["MPCController"]



class MPCController:
    """Everything an MPC strategy does beyond its parent strategy.

    Args:
        horizon: ``h >= 1``; larger than the number of blocks means back-propagation. ``"auto"`` selects
            it at setup for the one objective given (see :func:`lightning_mpc.select_horizon`).
        mode: ``"sliding"`` or ``"block"``.
        memory_budget: with ``"auto"``: the best alignment whose activation memory fits (bytes or ``"2GB"``).
        min_alignment: with ``"auto"``: the least memory whose ``cos^2`` to back-propagation reaches it.
        memory_weight: with ``"auto"``: the minimum of ``memory_weight * bytes - cos^2``.
        auto_batches: with ``"auto"``: how many of the first training batches to measure on.
        probes: with ``"auto"``: the horizons to measure (default ``1, 2, 4, ...`` and ``T``).
        num_blocks: cut the network into this many blocks (see :func:`lightning_mpc.partition`).
        balance: ``"memory"``: choose the cuts by real activation memory on the first batch.
    """

    def __init__(
        self,
        horizon: int | str = 1,
        mode: Mode = "sliding",
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        auto_batches: int = DEFAULT_AUTO_BATCHES,
        probes: Sequence[int] | None = None,
        num_blocks: int | None = None,
        balance: Balance | None = None,
    ) -> None:
        validate_partition_options(num_blocks, balance)
        self.num_blocks = num_blocks
        self.balance = balance
        self.auto = AutoHorizon.from_arguments(
            horizon,
            memory_budget=memory_budget,
            min_alignment=min_alignment,
            memory_weight=memory_weight,
            num_batches=auto_batches,
            probes=probes,
        )
        self.horizon: int | str = AUTO if self.auto is not None else validate_horizon(horizon)
        self.report: HorizonReport | None = None
        self.mode = validate_mode(mode)
        self.engine: HorizonEngine | None = None
        self.hooks: BlockHooks | None = None
        self._zero_grad: Callable[..., Any] | None = None
        self._warned_skip = False

    # ---------------------------------------------------------------- setup
    def prepare(self, trainer: pl.Trainer, module: pl.LightningModule, device: torch.device) -> None:
        """Resolve blocks, build heads (dry run), install hooks and take over ``zero_grad``.

        Called before the optimizers are configured, so that ``self.parameters()`` includes the heads.
        """
        if not module.automatic_optimization:
            raise RuntimeError(
                f"{type(module).__name__} uses manual optimization, which MPC strategies do not support: they "
                "write local gradients during training_step. HINT: set self.automatic_optimization = True."
            )
        self.teardown(module)
        blocks = resolve_blocks(
            module,
            num_blocks=self.num_blocks,
            balance=self.balance,
            example_input=functools.partial(
                example_block_input, trainer, module, device=device, purpose="balance the partition by memory"
            ),
        )
        hooks = BlockHooks(blocks)
        try:
            heads = self._resolve_heads(trainer, module, blocks, hooks, device)
            if self.auto is not None:
                loss_fn = functools.partial(_local_loss, module)
                self.report = self.auto.select(trainer, module, blocks, list(heads), self.mode, device, loss_fn)
                self.horizon = self.report.horizon
        except BaseException:
            hooks.remove()
            raise
        module.mpc_blocks = blocks  # type: ignore[assignment]
        setattr(module, HEADS_ATTRIBUTE, heads)
        self.hooks = hooks
        self.engine = HorizonEngine(blocks, list(heads), validate_horizon(self.horizon), self.mode)
        self._zero_grad = module.optimizer_zero_grad
        module.optimizer_zero_grad = None  # type: ignore[assignment,method-assign]
        self._warn_outside_parameters(module, blocks, heads)

    def set_horizon(self, horizon: int) -> None:
        """Train with ``horizon`` from the next step on (e.g. a :class:`~lightning_mpc.HorizonFinder`'s choice)."""
        self.horizon = validate_horizon(horizon)
        if self.engine is not None:
            # A new engine; the hooks attach to it at the next step and MPCTelemetry follows it.
            self.engine = HorizonEngine(self.engine.blocks, self.engine.heads, self.horizon, self.mode)

    def _resolve_heads(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        blocks: Sequence[nn.Module],
        hooks: BlockHooks,
        device: torch.device,
    ) -> nn.ModuleList:
        expected = len(blocks) - 1
        custom = module.configure_heads() if isinstance(module, MPCMixin) else None
        if custom is not None:
            heads = custom if isinstance(custom, nn.ModuleList) else nn.ModuleList(custom)
            source = "configure_heads()"
            module._mpc_head_specs = None  # type: ignore[attr-defined]
        else:
            existing = getattr(module, HEADS_ATTRIBUTE, None)
            if isinstance(existing, nn.ModuleList) and len(existing) == expected:
                return existing  # built by an earlier fit or restored from a checkpoint
            specs = self._infer_specs(trainer, module, blocks, hooks, device)
            heads = build_heads(specs)
            module._mpc_head_specs = specs  # type: ignore[attr-defined]
            source = "the built heads"
        if len(heads) != expected:
            raise ValueError(
                f"{type(module).__name__}: {source} gave {len(heads)} heads for {len(blocks)} blocks; expected "
                f"{expected} (one per block but the last). HINT: use nn.Identity() for a block without head."
            )
        dtype = next((p.dtype for b in blocks for p in b.parameters() if p.is_floating_point()), None)
        return heads.to(device=device, dtype=dtype)

    def _infer_specs(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        blocks: Sequence[nn.Module],
        hooks: BlockHooks,
        device: torch.device,
    ) -> list[HeadSpec]:
        example = example_input(trainer, module, "size the local heads")
        example = move_data_to_device(example, device)
        recorder = OutputShapeRecorder()
        hooks.attach(recorder)
        was_training = module.training
        try:
            module.eval()
            with torch.no_grad(), preserved_buffers([module]):
                call_forward(module, blocks, example)
        finally:
            hooks.attach(None)
            module.train(was_training)
        expected = list(range(len(blocks)))
        if recorder.order != expected or sorted(recorder.shapes) != expected:
            missing = [i for i in expected if i not in recorder.shapes]
            raise RuntimeError(
                f"{type(module).__name__}.forward did not run the {len(blocks)} blocks once each in order "
                f"(ran: {recorder.order}, never finished: {missing}; blocks: "
                f"{', '.join(describe(b) for b in blocks)}). HINT: configure_blocks() must return submodules "
                "that forward() applies in order, each exactly once."
            )
        for index, shape in recorder.shapes.items():
            if not isinstance(shape, torch.Size):
                raise TypeError(
                    f"Block {index} ({describe(blocks[index])}) returned {shape.__name__}, expected a Tensor. "
                    "HINT: blocks must map one tensor to one tensor."
                )
        return infer_head_specs(blocks, [recorder.shapes[i] for i in range(len(blocks))])

    @staticmethod
    def _warn_outside_parameters(module: nn.Module, blocks: Sequence[nn.Module], heads: nn.ModuleList) -> None:
        inside = {id(p) for p in iter_parameters([*blocks, heads])}
        outside = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            shown = ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else "")
            rank_zero_warn(
                f"{len(outside)} trainable parameters of {type(module).__name__} are in no block ({shown}). They "
                "learn only from the loss returned by training_step, and only if they act after the last block. "
                "HINT: include them in configure_blocks() to train them with the horizon rule."
            )

    def check_optimizers(self, module: nn.Module, optimizers: Sequence[Optimizer]) -> None:
        """Warn when the optimizers do not cover the local heads (they would never learn)."""
        heads = getattr(module, HEADS_ATTRIBUTE, None)
        if heads is None:
            return
        optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
        missing = [p for p in heads.parameters() if p.requires_grad and id(p) not in optimized]
        if missing:
            rank_zero_warn(
                f"{len(missing)} parameters of the local heads are in no optimizer, so the heads stay at their "
                "initialisation. HINT: build the optimizer over self.parameters() in configure_optimizers()."
            )

    # ----------------------------------------------------------------- steps
    def begin_step(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        batch: Any,
        optimizers: Sequence[Optimizer],
        scaler: Any | None,
    ) -> None:
        """Zero gradients at the first micro-batch of a window and route the forward through the engine."""
        assert self.engine is not None and self.hooks is not None, "MPCController.prepare was not called"
        batch_idx = trainer.fit_loop.epoch_loop.batch_idx
        accumulate = trainer.accumulate_grad_batches
        if batch_idx % accumulate == 0 and self._zero_grad is not None:
            for optimizer in optimizers:
                self._zero_grad(trainer.current_epoch, batch_idx, optimizer)
        loss_fn = functools.partial(_local_loss, module, batch=batch)
        self.engine.start(loss_fn, _make_scale(accumulate, scaler))
        self.hooks.attach(self.engine)

    def end_step(self, output: Any) -> None:
        """Detach the engine from the hooks after ``training_step`` and check that every block ran."""
        assert self.engine is not None and self.hooks is not None
        self.hooks.attach(None)
        if output is None:
            if self.engine.blocks_done and not self._warned_skip:
                rank_zero_warn(
                    "training_step returned None after the blocks ran: the local updates of the windows that "
                    "closed during the forward stay in .grad and are applied with the next optimizer step."
                )
                self._warned_skip = True
            self.engine.reset()
            return
        if self.engine.blocks_done != self.engine.num_blocks:
            done = self.engine.blocks_done
            self.engine.reset()
            raise RuntimeError(
                f"training_step ran {done} of the {self.engine.num_blocks} blocks. HINT: the forward in "
                "training_step must run every block once (call the model on the batch)."
            )

    def abort(self) -> None:
        """Drop the step in progress (after an exception in ``training_step``)."""
        if self.hooks is not None:
            self.hooks.attach(None)
        if self.engine is not None:
            self.engine.reset()

    def complete(self) -> None:
        """Chain the final loss's gradient through the last window; call after its backward."""
        if self.engine is not None and self.engine.active:
            self.engine.complete()

    def teardown(self, module: pl.LightningModule | None) -> None:
        """Remove hooks and give ``zero_grad`` back to Lightning."""
        self.abort()
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
        self.engine = None
        if module is not None and "optimizer_zero_grad" in vars(module):
            del module.optimizer_zero_grad
        self._zero_grad = None

    @staticmethod
    def restore_heads(module: nn.Module, checkpoint: Mapping[str, Any]) -> None:
        """Rebuild heads recorded in ``checkpoint`` on a module that has none (evaluation from a checkpoint)."""
        heads_from_checkpoint(module, checkpoint)


def _local_loss(module: nn.Module, prediction: Tensor, batch: Any) -> Tensor:
    if isinstance(module, MPCMixin):
        return module.local_loss(prediction, batch)
    return default_local_loss(prediction, batch_target(batch))


def _make_scale(accumulate: int, scaler: Any | None) -> Callable[[Tensor], Tensor] | None:
    if accumulate == 1 and scaler is None:
        return None

    def scale(loss: Tensor) -> Tensor:
        loss = loss / accumulate
        return scaler.scale(loss) if scaler is not None else loss

    return scale

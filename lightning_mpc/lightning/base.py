"""What every MPC strategy adds to its Lightning parent, whatever the parent (one device, DDP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.optim import Optimizer

from lightning_mpc.core.schedule import Mode
from lightning_mpc.horizon.selection import HorizonReport
from lightning_mpc.lightning.controller import MPCController
from lightning_mpc.lightning.telemetry import MPCTelemetry, attach_telemetry

__all__ = ["MPCStrategyMixin"]


class MPCStrategyMixin:
    """Mixin placed before a Lightning ``Strategy`` class: the horizon rule inside Lightning's loop.

    Subclasses set ``self.mpc`` (an :class:`MPCController`) in ``__init__`` and may override the
    three hooks :meth:`_mpc_after_prepare`, :meth:`_mpc_step_begin` and :meth:`_mpc_after_backward`.
    """

    mpc: MPCController
    telemetry: bool | MPCTelemetry = True
    """Per-block telemetry: ``True`` adds a default :class:`MPCTelemetry` unless ``Trainer(callbacks=...)`` has one."""

    @property
    def horizon(self) -> int | str:
        """The horizon ``h`` in use; ``"auto"`` until the selection of ``horizon="auto"`` ran at setup."""
        return self.mpc.horizon

    @property
    def horizon_report(self) -> HorizonReport | None:
        """The measurements, laws and choice of ``horizon="auto"`` (``None`` for a fixed horizon or before setup)."""
        return self.mpc.report

    @property
    def mode(self) -> Mode:
        """The window mode, ``"sliding"`` or ``"block"``."""
        return self.mpc.mode

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        # The local heads are created in setup; a checkpoint that carries them loads after that.
        return True

    # ------------------------------------------------------------ extension hooks
    def _mpc_after_prepare(self, trainer: pl.Trainer) -> None:
        """Called once blocks and heads exist, before the optimizers are configured."""

    def _mpc_step_begin(self, trainer: pl.Trainer) -> None:
        """Called at the start of every training step, before the forward."""

    def _mpc_after_backward(self) -> None:
        """Called when every gradient of the micro-batch is in ``.grad``, before ``on_after_backward``."""

    # ------------------------------------------------------------ Strategy overrides
    def setup_environment(self) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        trainer = getattr(module, "_trainer", None)
        if trainer is not None:
            attach_telemetry(trainer, self.telemetry)
        super().setup_environment()  # type: ignore[misc]

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        self.mpc.prepare(trainer, module, self.root_device)  # type: ignore[attr-defined]
        self._mpc_after_prepare(trainer)
        super().setup_optimizers(trainer)  # type: ignore[misc]
        self.mpc.check_optimizers(module, self.optimizers)  # type: ignore[attr-defined]

    def training_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        batch = args[0] if args else kwargs.get("batch")
        trainer = module.trainer
        self._mpc_step_begin(trainer)
        scaler = getattr(self.precision_plugin, "scaler", None)  # type: ignore[attr-defined]
        self.mpc.begin_step(trainer, module, batch, self.optimizers, scaler)  # type: ignore[attr-defined]
        try:
            output = super().training_step(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            self.mpc.abort()
            raise
        self.mpc.end_step(output)
        return output

    def backward(self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        precision = self.precision_plugin  # type: ignore[attr-defined]
        self.pre_backward(closure_loss)  # type: ignore[attr-defined]
        closure_loss = precision.pre_backward(closure_loss, module)
        precision.backward(closure_loss, module, optimizer, *args, **kwargs)
        # The final loss reached the last block's output; carry it through the last window before
        # Lightning's on_after_backward, clipping and the optimizer step see the gradients.
        self.mpc.complete()
        self._mpc_after_backward()
        closure_loss = precision.post_backward(closure_loss, module)
        self.post_backward(closure_loss)  # type: ignore[attr-defined]
        return closure_loss

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        self.mpc.restore_heads(module, checkpoint)
        super().load_model_state_dict(checkpoint, strict=strict)  # type: ignore[misc]

    def teardown(self) -> None:
        self.mpc.teardown(self.lightning_module)  # type: ignore[attr-defined]
        super().teardown()  # type: ignore[misc]


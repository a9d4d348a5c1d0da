"""What every rule strategy adds to its Lightning parent, whatever the parent (one device, DDP) and the rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.optim import Optimizer

from lightning_mpc.lightning.controller import CHECKPOINT_KEY, RuleController
from lightning_mpc.rules.base import CreditRule

__all__ = ["MPCStrategyMixin", "RuleStrategyMixin"]


class RuleStrategyMixin:
    """Mixin placed before a Lightning ``Strategy`` class: a credit-assignment rule inside Lightning's loop.

    Subclasses set ``self.controller`` (a :class:`~lightning_mpc.lightning.controller.RuleController`) in
    ``__init__`` and may override the hooks :meth:`_rule_after_prepare`, :meth:`_rule_step_begin` and
    :meth:`_rule_after_backward`.
    """

    controller: RuleController
    telemetry: Any = True
    """Per-block telemetry: ``True`` adds a default telemetry callback unless ``Trainer(callbacks=...)`` has one."""

    @property
    def rule(self) -> CreditRule:
        """The credit-assignment rule this strategy trains with."""
        return self.controller.rule

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        # The rule's modules are created in setup; a checkpoint that carries them loads after that.
        return True

    # ------------------------------------------------------------ extension hooks
    def _rule_after_prepare(self, trainer: pl.Trainer) -> None:
        """Called once the rule and its modules exist, before the optimizers are configured."""

    def _rule_step_begin(self, trainer: pl.Trainer) -> None:
        """Called at the start of every training step, before the forward."""

    def _rule_after_backward(self) -> None:
        """Called when every gradient of the micro-batch is in ``.grad``, before ``on_after_backward``."""

    def _world(self) -> tuple[int, int]:
        return int(getattr(self, "world_size", 1) or 1), int(getattr(self, "global_rank", 0) or 0)

    # ------------------------------------------------------------ Strategy overrides
    def setup_environment(self) -> None:
        from lightning_mpc.lightning.telemetry import attach_telemetry

        module = self.lightning_module  # type: ignore[attr-defined]
        trainer = getattr(module, "_trainer", None)
        if trainer is not None:
            attach_telemetry(trainer, self.telemetry)
        super().setup_environment()  # type: ignore[misc]

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)  # type: ignore[misc]
        if trainer.state.fn != TrainerFn.FITTING:
            # validate/test/predict: the rule's prediction (fit sets the rule up in setup_optimizers)
            module = self.lightning_module  # type: ignore[attr-defined]
            self.controller.prepare_evaluation(trainer, module, self.root_device, *self._world())  # type: ignore[attr-defined]

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        world_size, rank = self._world()
        self.controller.prepare(trainer, module, self.root_device, world_size, rank)  # type: ignore[attr-defined]
        self.controller.install_clipping(self.precision_plugin)  # type: ignore[attr-defined]
        self._rule_after_prepare(trainer)
        super().setup_optimizers(trainer)  # type: ignore[misc]
        self.controller.check_optimizers(self.optimizers)  # type: ignore[attr-defined]

    def training_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        batch = args[0] if args else kwargs.get("batch")
        trainer = module.trainer
        self._rule_step_begin(trainer)
        scaler = getattr(self.precision_plugin, "scaler", None)  # type: ignore[attr-defined]
        self.controller.begin_step(trainer, module, batch, self.optimizers, scaler)  # type: ignore[attr-defined]
        try:
            output = super().training_step(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            self.controller.abort()
            raise
        self.controller.end_step(output)
        return output

    def backward(self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        precision = self.precision_plugin  # type: ignore[attr-defined]
        self.pre_backward(closure_loss)  # type: ignore[attr-defined]
        closure_loss = precision.pre_backward(closure_loss, module)
        if not self.rule.owns_step:
            precision.backward(closure_loss, module, optimizer, *args, **kwargs)
        # The rule finishes its step (MPC: the final loss reached the last block's output and is carried
        # through the last window) before Lightning's on_after_backward, clipping and the optimizer step.
        self.controller.after_backward()
        self._rule_after_backward()
        closure_loss = precision.post_backward(closure_loss, module)
        self.post_backward(closure_loss)  # type: ignore[attr-defined]
        return closure_loss

    def _evaluate(self, parent: Any, *args: Any, **kwargs: Any) -> Any:
        self.controller.attach_inference()
        try:
            return parent(*args, **kwargs)
        finally:
            self.controller.detach_inference()

    def validation_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        return self._evaluate(super().validation_step, *args, **kwargs)  # type: ignore[misc]

    def test_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        return self._evaluate(super().test_step, *args, **kwargs)  # type: ignore[misc]

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._evaluate(super().predict_step, *args, **kwargs)  # type: ignore[misc]

    # ------------------------------------------------------------ checkpoints
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = super().lightning_module_state_dict()  # type: ignore[misc]
        module = self.lightning_module  # type: ignore[attr-defined]
        return state if module is None else self.controller.strip_auxiliary(module, state)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        if module is not None:
            checkpoint[CHECKPOINT_KEY] = self.controller.checkpoint_state(module)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)  # type: ignore[misc]

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        assert module is not None
        self.controller.restore(module, checkpoint)  # type: ignore[arg-type]
        super().load_model_state_dict(checkpoint, strict=strict)  # type: ignore[misc]

    def teardown(self) -> None:
        self.controller.teardown(self.lightning_module)  # type: ignore[attr-defined]
        super().teardown()  # type: ignore[misc]


MPCStrategyMixin = RuleStrategyMixin
"""The name of :class:`RuleStrategyMixin` in lightning-mpc 0.1."""

"""Lightning-side bookkeeping shared by every credit-assignment rule and every strategy that runs one.

The controller resolves the blocks of a ``LightningModule``, installs the block hooks, dry-runs the
module's forward (shapes, order, in-place inputs, connections across block boundaries), sets the rule up
and registers its auxiliary modules on the module. Around every training step it zeroes gradients at the
start of an accumulation window (Lightning's own ``zero_grad`` would run after ``training_step`` and wipe
the gradients a rule writes during it), attaches the rule's listener to the hooks while the user's
``training_step`` runs, undoes a step whose ``training_step`` returned ``None`` (a skipped batch leaves
``.grad`` as it was), and finishes the rule's step after Lightning's backward of the returned loss.
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

from lightning_mpc.core.engine import iter_parameters
from lightning_mpc.core.heads import default_local_loss
from lightning_mpc.core.hooks import BlockHooks, first_block_input
from lightning_mpc.core.inspection import BlockInspection, inspect_blocks
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.lightning.batches import call_forward, example_block_input, example_input
from lightning_mpc.lightning.compat import is_accumulating
from lightning_mpc.lightning.mixin import MPCMixin, batch_input, batch_target, resolve_blocks
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep

__all__ = ["CHECKPOINT_KEY", "RuleController", "dry_run", "make_scale", "module_local_loss", "restore_rule_modules"]

CHECKPOINT_KEY = "lightning_mpc"
"""Where a checkpoint keeps the rule's state (and, for modules without the mixin, its auxiliary modules)."""


def module_local_loss(module: nn.Module, prediction: Tensor, batch: Any) -> Tensor:
    """The module's local objective: ``module.local_loss`` with the mixin, else the default on ``batch[1]``."""
    if isinstance(module, MPCMixin):
        return module.local_loss(prediction, batch)
    return default_local_loss(prediction, batch_target(batch))


def make_scale(accumulate: int, scaler: Any | None) -> Callable[[Tensor], Tensor] | None:
    """The linear map every loss (or directly written gradient) goes through: ``/ accumulate``, AMP scaling."""
    if accumulate == 1 and scaler is None:
        return None

    def scale(value: Tensor) -> Tensor:
        value = value / accumulate
        return scaler.scale(value) if scaler is not None else value

    return scale


def _grad_state(param: nn.Parameter, zeroed: bool) -> Tensor | str | None:
    """What ``param.grad`` must be put back to if the step is skipped (a copy only inside accumulation windows)."""
    if param.grad is None:
        return None
    if zeroed:
        return "zero"
    return param.grad.detach().clone()


def dry_run(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    blocks: Sequence[nn.Module],
    hooks: BlockHooks,
    device: torch.device,
) -> BlockInspection:
    """Run the module's forward on a few samples of the first batch and inspect its blocks (see :mod:`~lightning_mpc.core.inspection`).

    The input goes through the precision plugin as in training (``precision="64-true"``, ``"bf16-true"``, ...);
    the module runs in eval mode and its buffers are restored afterwards.
    """
    example = example_input(trainer, module, "size and check the blocks")
    example = move_data_to_device(example, device)
    example = trainer.precision_plugin.convert_input(example)
    was_training = module.training
    try:
        module.eval()
        with preserved_buffers([module]), trainer.precision_plugin.forward_context():
            return inspect_blocks(blocks, hooks, lambda: call_forward(module, blocks, example))
    except (RuntimeError, TypeError) as err:
        raise type(err)(f"{type(module).__name__}: {err}") from err
    finally:
        module.train(was_training)


def restore_rule_modules(module: nn.Module, checkpoint: dict[str, Any], rule: CreditRule | None = None) -> None:
    """Give ``module`` the auxiliary modules of the rule that saved ``checkpoint``, before its state dict loads.

    Args:
        module: the module being restored (from a strategy's checkpoint loading, or ``load_from_checkpoint``).
        checkpoint: the checkpoint; modules saved outside its ``state_dict`` (modules without the mixin) are
            put back into it.
        rule: the rule training now; ``None`` outside training, where a rule of the saved kind is built with
            its defaults.
    """
    from lightning_mpc.rules.mpc.rule import MPCRule
    from lightning_mpc.rules.registry import RULES

    saved = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(saved, Mapping):
        name, state = saved.get("rule"), saved.get("state", {})
        auxiliary = saved.get("auxiliary_state_dict")
        if auxiliary:
            checkpoint.setdefault("state_dict", {}).update(auxiliary)
    else:
        legacy = checkpoint.get("mpc")  # checkpoints of lightning-mpc 0.1 (MPC only)
        name, state = ("mpc", legacy) if isinstance(legacy, Mapping) else (None, {})
    if name is None:
        return
    if rule is None or rule.name != name:
        if name not in RULES:
            return
        rule = RULES.get(name)() if name != MPCRule.name else MPCRule()
    rule.restore_modules(module, state, checkpoint)


def _has_own_prediction(rule: CreditRule) -> bool:
    """Whether ``rule`` replaces the plain model in validation, test and predict (overrides ``inference_listener``)."""
    return type(rule).inference_listener is not CreditRule.inference_listener


class RuleController:
    """Everything a rule's strategy does beyond its Lightning parent strategy.

    Args:
        rule: the configured credit-assignment rule.
        partition_options: keyword arguments for cutting the network into blocks (``num_blocks``,
            ``balance``, ...), added to the rule's own :meth:`~lightning_mpc.rules.CreditRule.partition_options`.
    """

    def __init__(self, rule: CreditRule, partition_options: Mapping[str, Any] | None = None) -> None:
        self.rule = rule
        self.partition_options = dict(partition_options or {})
        self.blocks: list[nn.Module] = []
        self.inspection: BlockInspection | None = None
        """What the dry run found (output shapes, block 0's input on a few samples), after :meth:`prepare`."""
        self.hooks: BlockHooks | None = None
        self._zero_grad: Callable[..., Any] | None = None
        self._grad_snapshot: list[tuple[nn.Parameter, Tensor | str | None]] | None = None
        self._warned_skip = False
        self._module: pl.LightningModule | None = None
        self._clipping: Any = None

    # ---------------------------------------------------------------- setup
    def prepare(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        device: torch.device,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        """Resolve blocks, dry-run the forward, set the rule up, register its modules, take over ``zero_grad``.

        Called before the optimizers are configured, so that ``self.parameters()`` includes the rule's modules.
        """
        if not module.automatic_optimization:
            raise RuntimeError(
                f"{type(module).__name__} uses manual optimization, which the {self.rule.name!r} strategies do not "
                "support: the rule writes gradients during training_step. HINT: set self.automatic_optimization = True."
            )
        self.teardown(module)
        self._set_up_rule(trainer, module, device, world_size, rank)
        self._zero_grad = module.optimizer_zero_grad
        module.optimizer_zero_grad = None  # type: ignore[assignment,method-assign]
        if self.blocks:
            self._warn_outside_parameters(module, self.blocks)

    def prepare_evaluation(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        device: torch.device,
        world_size: int = 1,
        rank: int = 0,
    ) -> bool:
        """Make the rule's prediction available to ``validate``, ``test`` and ``predict`` run outside ``fit``.

        After a ``fit`` with this strategy (whose teardown removed the hooks) the blocks are hooked again and the
        rule keeps what that fit set up. Without one, a rule with a prediction of its own (an
        ``inference_listener``) is set up as ``fit`` would do it (blocks, dry run on a batch of the running
        stage, auxiliary modules registered, so that a checkpoint loads into them), leaving ``zero_grad`` and
        optimizers alone. Rules that predict with the plain model need nothing.

        Returns:
            Whether the blocks are hooked.
        """
        if self.hooks is None and self.blocks:
            self.hooks = BlockHooks(self.blocks)
        elif self.hooks is None and self.rule.uses_blocks and _has_own_prediction(self.rule):
            self._set_up_rule(trainer, module, device, world_size, rank)
        return self.hooks is not None

    def _set_up_rule(
        self, trainer: pl.Trainer, module: pl.LightningModule, device: torch.device, world_size: int, rank: int
    ) -> None:
        """Resolve blocks, install the hooks, dry-run the forward, set the rule up and register its modules."""
        blocks: list[nn.Module] = []
        hooks: BlockHooks | None = None
        inspection: BlockInspection | None = None
        if self.rule.uses_blocks:
            options = {**self.rule.partition_options(), **self.partition_options}
            block_input = functools.partial(
                example_block_input, trainer, module, device=device, purpose="balance the partition by memory"
            )
            blocks = resolve_blocks(module, **options, example_input=block_input)
            hooks = BlockHooks(blocks)
        try:
            if hooks is not None:
                inspection = dry_run(trainer, module, blocks, hooks, device)
            dtype = next((p.dtype for b in blocks for p in b.parameters() if p.is_floating_point()), None)
            if dtype is None:
                dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
            self.rule.setup(
                RuleSetup(
                    module=module,
                    blocks=blocks,
                    block_output_shapes=[] if inspection is None else inspection.output_shapes,
                    example_input=None if inspection is None else inspection.first_input,
                    device=device,
                    dtype=dtype,
                    in_place_inputs=frozenset() if inspection is None else inspection.in_place_inputs,
                    world_size=world_size,
                    rank=rank,
                    trainer=trainer,
                )
            )
        except BaseException:
            if hooks is not None:
                hooks.remove()
            raise
        for name, aux in self.rule.auxiliary_modules().items():
            setattr(module, name, aux)
        module.mpc_blocks = blocks  # type: ignore[assignment]
        self.blocks = blocks
        self.inspection = inspection
        self.hooks = hooks
        self._module = module

    def _warn_outside_parameters(self, module: nn.Module, blocks: Sequence[nn.Module]) -> None:
        inside = {id(p) for p in iter_parameters([*blocks, *self.rule.auxiliary_modules().values()])}
        outside = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside and not self.rule.owns_step:
            shown = ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else "")
            rank_zero_warn(
                f"{len(outside)} trainable parameters of {type(module).__name__} are in no block ({shown}). They "
                "learn only from the loss returned by training_step, and only if they act after the last block. "
                "HINT: include them in configure_blocks() to train them with the rule."
            )

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter of the rule's auxiliary modules."""
        return list(iter_parameters(list(self.rule.auxiliary_modules().values())))

    def check_optimizers(self, optimizers: Sequence[Optimizer]) -> None:
        """Warn when the optimizers do not cover the rule's modules (they would never learn)."""
        optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
        missing = [p for p in self.auxiliary_parameters() if id(p) not in optimized]
        if missing:
            names = ", ".join(self.rule.auxiliary_modules())
            rank_zero_warn(
                f"{len(missing)} parameters of the rule's modules ({names}) are in no optimizer, so they stay at "
                "their initialisation. HINT: build the optimizer over self.parameters() in configure_optimizers()."
            )

    def auxiliary_groups(self) -> list[list[nn.Parameter]]:
        """The rule's trainable modules as clipping groups: every child of a ``ModuleList`` (one head) on its own."""
        groups: list[list[nn.Parameter]] = []
        for aux in self.rule.auxiliary_modules().values():
            members = list(aux) if isinstance(aux, nn.ModuleList) else [aux]
            for member in members:
                params = [p for p in member.parameters() if p.requires_grad]
                if params:
                    groups.append(params)
        return groups

    def install_clipping(self, precision: Any) -> None:
        """Make norm clipping (``Trainer(gradient_clip_val=...)``) treat the rule's modules apart from the network.

        The network's parameters are clipped together, exactly as without the rule, so that a rule equal to
        back-propagation (MPC with ``h = T``) stays equal to it with clipping; each auxiliary module (each
        local head) is clipped by its own norm, since its gradient comes from its own loss. Value clipping is
        element-wise and needs no change.
        """
        self.uninstall_clipping()

        def clip_grad_by_norm(optimizer: Optimizer, clip_val: float) -> None:
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            groups = [[p for p in group if id(p) in in_optimizer] for group in self.auxiliary_groups()]
            auxiliary = {id(p) for group in groups for p in group}
            network = [p for p in precision.main_params(optimizer) if id(p) not in auxiliary]
            torch.nn.utils.clip_grad_norm_(network, clip_val)
            for group in groups:
                if group:
                    torch.nn.utils.clip_grad_norm_(group, clip_val)

        precision.clip_grad_by_norm = clip_grad_by_norm
        self._clipping = precision

    def uninstall_clipping(self) -> None:
        """Give the precision plugin its own norm clipping back."""
        if self._clipping is not None:
            vars(self._clipping).pop("clip_grad_by_norm", None)
            self._clipping = None

    # ----------------------------------------------------------------- steps
    def begin_step(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        batch: Any,
        optimizers: Sequence[Optimizer],
        scaler: Any | None,
    ) -> None:
        """Zero gradients at the first micro-batch of a window, then start the rule's step and attach its listener."""
        batch_idx = trainer.fit_loop.epoch_loop.batch_idx
        accumulate = trainer.accumulate_grad_batches
        first = batch_idx % accumulate == 0
        if first and self._zero_grad is not None:
            for optimizer in optimizers:
                self._zero_grad(trainer.current_epoch, batch_idx, optimizer)
        # A skipped batch (training_step returns None) must leave .grad as it was: after zero_grad that is
        # "no gradient"; later in an accumulation window it is what the earlier micro-batches wrote.
        self._grad_snapshot = [(p, _grad_state(p, first)) for p in module.parameters() if p.requires_grad]
        cache: list[Tensor] = []

        def block_input() -> Tensor:
            if not cache:
                x = batch_input(batch)
                with torch.no_grad():
                    cache.append(first_block_input(self.blocks, lambda: call_forward(module, self.blocks, x)))
            return cache[0]

        step = RuleStep(
            batch=batch,
            loss_fn=lambda prediction: module_local_loss(module, prediction, batch),
            scale=make_scale(accumulate, scaler),
            block_input=block_input,
            first_micro_batch=first,
            last_micro_batch=not is_accumulating(trainer),
        )
        listener = self.rule.begin_step(step)
        if self.hooks is not None:
            self.hooks.attach(listener)

    def end_step(self, output: Any) -> None:
        """Detach the listener after ``training_step``; a ``None`` output skips the batch entirely."""
        if self.hooks is not None:
            self.hooks.attach(None)
        if output is None:
            self.rule.abort()
            self._restore_gradients()
            if not self._warned_skip:
                rank_zero_warn(
                    "training_step returned None: the batch is skipped. Every gradient the rule wrote for it was "
                    "removed and the rule's own state put back, so parameters, local heads, the rule's modules and "
                    "optimizer state are as if the batch never ran (BatchNorm statistics move, as in plain "
                    "Lightning)."
                )
                self._warned_skip = True
            return
        self._grad_snapshot = None
        self.rule.end_forward(output)

    def _restore_gradients(self) -> None:
        snapshot, self._grad_snapshot = self._grad_snapshot, None
        for param, state in snapshot or []:
            if isinstance(state, str):  # zeroed in place by zero_grad(set_to_none=False)
                if param.grad is not None:
                    param.grad.zero_()
            else:
                param.grad = state

    def after_backward(self) -> None:
        """Finish the rule's step; call after Lightning's backward of the returned loss (or in its place)."""
        self.rule.after_backward()

    def abort(self) -> None:
        """Drop the step in progress (after an exception in ``training_step``)."""
        if self.hooks is not None:
            self.hooks.attach(None)
        self.rule.abort()
        self._grad_snapshot = None

    # ----------------------------------------------------------- evaluation
    def attach_inference(self) -> None:
        """Route validation/test/predict forwards through the rule's inference listener (if it has one)."""
        if self.hooks is not None:
            self.hooks.attach(self.rule.inference_listener())

    def detach_inference(self) -> None:
        """Undo :meth:`attach_inference`."""
        if self.hooks is not None:
            self.hooks.attach(None)

    # ----------------------------------------------------------- checkpoints
    def checkpoint_state(self, module: nn.Module) -> dict[str, Any]:
        """What a checkpoint must carry to rebuild the rule's modules.

        A module without :class:`~lightning_mpc.MPCMixin` does not know the rule's modules, so its state dict is
        saved without them (``load_from_checkpoint`` then gives the plain model) and their tensors travel here.
        """
        state: dict[str, Any] = {"rule": self.rule.name, "state": self.rule.checkpoint_state()}
        if not isinstance(module, MPCMixin):
            state["auxiliary_state_dict"] = {
                f"{name}.{key}": value
                for name, aux in self.rule.auxiliary_modules().items()
                for key, value in aux.state_dict().items()
            }
        return state

    def strip_auxiliary(self, module: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` without the rule's modules when ``module`` has no mixin (see :meth:`checkpoint_state`)."""
        if isinstance(module, MPCMixin):
            return state_dict
        prefixes = tuple(f"{name}." for name in self.rule.auxiliary_modules())
        if not prefixes:
            return state_dict
        return {key: value for key, value in state_dict.items() if not key.startswith(prefixes)}

    def restore(self, module: nn.Module, checkpoint: dict[str, Any]) -> None:
        """Give ``module`` the rule's modules saved in ``checkpoint`` before its state dict is loaded."""
        restore_rule_modules(module, checkpoint, self.rule)

    def teardown(self, module: pl.LightningModule | None) -> None:
        """Remove hooks, release the rule's step and give ``zero_grad`` back to Lightning."""
        self.abort()
        self.rule.teardown()
        self.uninstall_clipping()
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
        if module is not None and "optimizer_zero_grad" in vars(module):
            del module.optimizer_zero_grad
        self._zero_grad = None

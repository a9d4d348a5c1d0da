"""The model-predictive-control rule (Ren & Li, arXiv 2409.19561) as a credit-assignment rule.

Block ``k`` learns from the loss ``h`` blocks ahead (``"sliding"``) or at the end of its window of ``h``
blocks (``"block"``); every block but the last gets a small local head. The work is done by the interleaved
:class:`~lightning_mpc.core.engine.HorizonEngine`, which runs inside the user's forward through the block
hooks; the loss ``training_step`` returns trains the last window. The pure-PyTorch form of the rule is
:func:`lightning_mpc.horizon_backward`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_mpc.core.engine import HorizonEngine
from lightning_mpc.core.heads import HeadSpec, build_heads, head_specs_for
from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.schedule import Mode, validate_horizon, validate_mode
from lightning_mpc.horizon.selection import HorizonReport
from lightning_mpc.rules.base import CreditRule, GradReady, RuleSetup, RuleStep
from lightning_mpc.rules.head_state import head_specs_state, rebuild_heads

__all__ = ["HEADS_ATTRIBUTE", "MPCRule", "heads_from_state"]

HEADS_ATTRIBUTE = "mpc_heads"
"""The attribute of the LightningModule that holds the local heads."""


class MPCRule(CreditRule):
    """Horizon-truncated back-propagation with local heads: ``Trainer(strategy="mpc")``.

    Args:
        horizon: ``h >= 1``; at least the number of blocks is exact back-propagation. ``"auto"`` selects
            it at setup for the one objective given (see :func:`lightning_mpc.select_horizon`).
        mode: ``"sliding"`` (the paper's rule) or ``"block"`` (non-overlapping windows).
        memory_budget: with ``"auto"``: the best alignment whose real memory fits (bytes or ``"2GB"``).
        min_alignment: with ``"auto"``: the least memory whose ``cos^2`` to back-propagation reaches it.
        memory_weight: with ``"auto"``: the minimum of ``memory_weight * bytes - cos^2``.
        auto_batches: with ``"auto"``: how many of the first training batches to measure on.
        probes: with ``"auto"``: the horizons to measure (default ``1, 2, 4, ...`` and ``T``).
    """

    name = "mpc"
    metric_prefix = "mpc"

    def __init__(
        self,
        horizon: int | str = 1,
        mode: Mode = "sliding",
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        auto_batches: int | None = None,
        probes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        from lightning_mpc.lightning.auto_horizon import AUTO, DEFAULT_AUTO_BATCHES, AutoHorizon

        self.auto = AutoHorizon.from_arguments(
            horizon,
            memory_budget=memory_budget,
            min_alignment=min_alignment,
            memory_weight=memory_weight,
            num_batches=DEFAULT_AUTO_BATCHES if auto_batches is None else auto_batches,
            probes=probes,
        )
        self.horizon: int | str = AUTO if self.auto is not None else validate_horizon(horizon)
        self.mode: Mode = validate_mode(mode)
        self.report: HorizonReport | None = None
        self.engine: HorizonEngine | None = None
        self.head_specs: list[HeadSpec] | None = None
        self._blocks: list[nn.Module] = []
        self._heads: nn.ModuleList | None = None
        self._clone_inputs: frozenset[int] = frozenset()
        self._observer: EngineObserver | None = None
        self._on_grad_ready: GradReady | None = None

    # The engine is replaced by set_horizon: observer and grad-ready callback live here and follow it.
    @property  # type: ignore[override]
    def observer(self) -> EngineObserver | None:
        return self._observer

    @observer.setter
    def observer(self, value: EngineObserver | None) -> None:
        self._observer = value
        if getattr(self, "engine", None) is not None:
            self.engine.observer = value  # type: ignore[union-attr]

    @property  # type: ignore[override]
    def on_grad_ready(self) -> GradReady | None:
        return self._on_grad_ready

    @on_grad_ready.setter
    def on_grad_ready(self, value: GradReady | None) -> None:
        self._on_grad_ready = value
        if getattr(self, "engine", None) is not None:
            self.engine.on_grad_ready = value  # type: ignore[union-attr]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"rule": self.name, "horizon": self.horizon, "mode": self.mode}
        if self.engine is not None:
            info["num_blocks"] = self.engine.num_blocks
            info["learns_from"] = list(self.engine.depths)
        return info

    @property
    def heads(self) -> nn.ModuleList | None:
        """The local heads (after setup)."""
        return self._heads

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        from lightning_mpc.lightning.mixin import MPCMixin

        module, blocks = context.module, context.blocks
        self._blocks = list(blocks)
        self._clone_inputs = context.in_place_inputs
        expected = len(blocks) - 1
        custom = module.configure_heads() if isinstance(module, MPCMixin) else None
        existing = getattr(module, HEADS_ATTRIBUTE, None)
        if custom is not None:
            heads = custom if isinstance(custom, nn.ModuleList) else nn.ModuleList(custom)
            source = "configure_heads()"
            self.head_specs = None
        elif isinstance(existing, nn.ModuleList) and len(existing) == expected:
            heads, source = existing, "the restored heads"  # built by an earlier fit or restored from a checkpoint
        else:
            self.head_specs = head_specs_for(context.block_output_shapes, context.blocks)
            heads, source = build_heads(self.head_specs), "the built heads"
        if len(heads) != expected:
            raise ValueError(
                f"{type(module).__name__}: {source} gave {len(heads)} heads for {len(blocks)} blocks; expected "
                f"{expected} (one per block but the last). HINT: use nn.Identity() for a block without head."
            )
        self._heads = heads.to(device=context.device, dtype=context.dtype)
        if self.auto is not None and context.trainer is not None:
            from lightning_mpc.lightning.controller import module_local_loss

            self.report = self.auto.select(
                context.trainer,
                module,
                self._blocks,
                list(self._heads),
                self.mode,
                context.device,
                lambda prediction, batch: module_local_loss(module, prediction, batch),
            )
            self.horizon = self.report.horizon
        self._new_engine()
        assert self.engine is not None
        if self.engine.horizon >= self.engine.num_blocks:
            what = "a single block" if self.engine.num_blocks == 1 else f"{self.engine.num_blocks} blocks"
            rank_zero_info(
                f"MPC with horizon {self.engine.horizon} over {what} is exact back-propagation (with its memory): "
                "every block learns from the final loss. The local heads still learn from their own losses."
            )

    def _new_engine(self) -> None:
        assert self._heads is not None
        engine = HorizonEngine(
            self._blocks, list(self._heads), validate_horizon(self.horizon), self.mode, clone_inputs=self._clone_inputs
        )
        engine.observer = self._observer
        engine.on_grad_ready = self._on_grad_ready
        self.engine = engine

    def set_horizon(self, horizon: int) -> None:
        """Train with ``horizon`` from the next step on (e.g. a :class:`~lightning_mpc.HorizonFinder`'s choice)."""
        self.horizon = validate_horizon(horizon)
        if self.engine is not None:
            self._new_engine()

    def auxiliary_modules(self) -> Mapping[str, nn.Module]:
        return {} if self._heads is None else {HEADS_ATTRIBUTE: self._heads}

    def checkpoint_state(self) -> dict[str, Any]:
        return head_specs_state(self.head_specs)

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        if getattr(module, HEADS_ATTRIBUTE, None) is not None:
            return  # set up already (resuming fit): the state dict loads into the existing heads
        heads = heads_from_state(module, state, checkpoint.get("state_dict", {}))
        if heads is not None:
            setattr(module, HEADS_ATTRIBUTE, heads)

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: RuleStep) -> BlockListener | None:
        assert self.engine is not None, "MPCRule.setup was not called"
        self.engine.start(step.loss_fn, step.scale)
        return self.engine

    def end_forward(self, output: Any) -> None:
        assert self.engine is not None
        if self.engine.blocks_done != self.engine.num_blocks:
            done = self.engine.blocks_done
            self.engine.reset()
            raise RuntimeError(
                f"training_step ran {done} of the {self.engine.num_blocks} blocks. HINT: the forward in "
                "training_step must run every block once (call the model on the batch)."
            )

    def after_backward(self) -> None:
        if self.engine is not None and self.engine.active:
            self.engine.complete()

    def abort(self) -> None:
        if self.engine is not None:
            self.engine.reset()

    def teardown(self) -> None:
        self.abort()
        self.engine = None


def heads_from_state(
    module: nn.Module, state: Mapping[str, Any], state_dict: Mapping[str, Any]
) -> nn.ModuleList | None:
    """Local heads shaped like those saved in ``state_dict`` (``mpc_heads.*``), or ``None`` when it holds none.

    Uses the saved head specs (built-in heads) or the module's ``configure_heads()`` (custom heads), on the
    device and with the dtype of the saved tensors.

    Raises:
        ValueError: if the checkpoint holds heads that cannot be rebuilt.
    """
    return rebuild_heads(
        module,
        HEADS_ATTRIBUTE,
        state,
        state_dict,
        lambda specs: build_heads([HeadSpec(**s) for s in specs]),
        "local heads",
    )

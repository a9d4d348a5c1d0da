"""The parallel-in-time rule (Parpas & Muir, arXiv 1902.02542) as a credit-assignment rule: ``strategy="pint"``.

The network's ODE steps (:class:`~lightning_mpc.rules.pint.ResidualStep` blocks) are cut into ``K`` slabs. A
coarse network predicts every slab's boundary state and co-state, every slab corrects with its fine forward
and backward, parareal updates refine the boundary values between sweeps, and the last sweep's slab passes
write the gradients (see :mod:`lightning_mpc.rules.pint.functional`). The blocks before the first step (the
stem) learn by back-propagating the first slab's co-state; the blocks after the last step (the head) learn
with the last slab. On one process the slabs run one after the other (:class:`SequentialSlabs`); under
:class:`~lightning_mpc.rules.pint.strategy.PinTStrategy` with ``devices=K`` each process runs one slab
(:class:`DistributedSlabs`).

The rule runs inside the user's ``training_step``: when the model's forward reaches the first step, the
stem's output is the slabs' input; the rule computes every gradient there, runs the user's remaining steps on
an empty batch (their work is already done) and hands the head the last slab's output, so the loss
``training_step`` returns and logs is the loss the rule trained on. It is reported, not back-propagated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from lightning_mpc.core.engine import _no_autocast
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep
from lightning_mpc.rules.pint.backends import DistributedSlabs, SequentialSlabs, SlabBackend
from lightning_mpc.rules.pint.coarse import (
    DEFAULT_COARSENING,
    CoarseNetwork,
    validate_coarse_weights,
    validate_coarsening,
)
from lightning_mpc.rules.pint.functional import PinTResult, parallel_in_time, scratch_buffers
from lightning_mpc.rules.pint.slabs import (
    ResidualNetwork,
    check_deterministic,
    split_network,
    validate_iterations,
    validate_slabs,
)

__all__ = ["DEFAULT_SLABS", "PinTRule"]

DEFAULT_SLABS = 2
"""Slabs on one process when ``slabs`` is not given (several processes: one slab each)."""


def _batch_tensors(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            yield from _batch_tensors(item)
    elif isinstance(batch, dict):
        for item in batch.values():
            yield from _batch_tensors(item)


class PinTRule(CreditRule):
    """Parallel-in-time training of a residual network: ``Trainer(strategy="pint", devices=K)``.

    Args:
        slabs: ``K``, the number of slabs; default: the number of processes, or 2 on one process. Under several
            processes it must equal their number (one slab per process).
        iterations: correction sweeps ``k >= 1``. After ``k`` sweeps the first ``k`` slabs' forwards are exact;
            ``2K - 1`` sweeps give back-propagation's gradients exactly; 1 (default) predicts and corrects once.
        coarsening: how many fine steps one coarse Euler step covers at most (the predictor's resolution;
            ``1`` makes the predictor exact and one sweep back-propagation, at the cost of a serial forward).
        coarse_weights: ``"mean"`` (average the parameters of the fine steps a coarse step covers) or
            ``"first"`` (inject the first one's).

    Raises:
        ValueError: for invalid settings (with a HINT); :meth:`setup` also refuses networks that are not
            ``stem -> ResidualStep x N -> head``, more slabs than steps, and dropout inside the steps.
    """

    name = "pint"
    metric_prefix = "pint"
    owns_step = True
    uses_blocks = True
    data_parallel = False

    def __init__(
        self,
        slabs: int | None = None,
        iterations: int = 1,
        coarsening: int = DEFAULT_COARSENING,
        coarse_weights: str = "mean",
    ) -> None:
        super().__init__()
        self.slabs = None if slabs is None else validate_slabs(slabs)
        self.iterations = validate_iterations(iterations)
        self.coarsening = validate_coarsening(coarsening)
        self.coarse_weights = validate_coarse_weights(coarse_weights)
        self.network: ResidualNetwork | None = None
        self.backend: SlabBackend | None = None
        self.num_slabs: int | None = None
        """``K`` in use (after setup)."""
        self.last_result: PinTResult | None = None
        """What the last step's slabs gave (timeline, defects, loss)."""
        self._blocks: list[nn.Module] = []
        self._step: RuleStep | None = None
        self._kept: contextlib.ExitStack | None = None
        self._ran = False

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "rule": self.name,
            "slabs": self.num_slabs if self.num_slabs is not None else self.slabs,
            "iterations": self.iterations,
            "coarsening": self.coarsening,
            "coarse_weights": self.coarse_weights,
        }
        if self.network is not None:
            info["steps"] = [self.network.first, self.network.last]
            info["backend"] = "distributed" if isinstance(self.backend, DistributedSlabs) else "sequential"
        return info

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        network = split_network(context.blocks)
        check_deterministic(network.steps)
        steps = len(network.steps)
        if context.world_size > 1:
            slabs = context.world_size if self.slabs is None else self.slabs
            if slabs != context.world_size:
                raise ValueError(
                    f"PinTRule(slabs={slabs}) under {context.world_size} processes: the multi-process backend runs one "
                    f"slab per process. HINT: leave slabs unset, or train with devices={slabs}."
                )
        else:
            slabs = self.slabs if self.slabs is not None else min(DEFAULT_SLABS, steps)
        validate_slabs(slabs, steps)
        CoarseNetwork(network.steps, slabs, self.coarsening, self.coarse_weights)  # refuses fields it cannot average
        self.backend = DistributedSlabs() if context.world_size > 1 else SequentialSlabs()
        self.network = network
        self.num_slabs = slabs
        self._blocks = list(context.blocks)

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: RuleStep) -> _PinTListener:
        assert self.network is not None, "PinTRule.setup was not called"
        self.abort()
        self._step = step
        return _PinTListener(self)

    def _train(self, x0: Tensor) -> Tensor:
        """Every gradient of the step, from the stem's output ``x0``; returns the last state to feed the head."""
        network, step, backend = self.network, self._step, self.backend
        assert network is not None and step is not None and backend is not None and self.num_slabs is not None
        with scratch_buffers(network.head):  # the user's forward runs the head once more, on the result
            result = parallel_in_time(
                network.steps,
                x0,
                network.head,
                step.loss_fn,
                self.num_slabs,
                self.iterations,
                coarsening=self.coarsening,
                coarse_weights=self.coarse_weights,
                backend=backend,
                scale=step.scale,
                observer=self.observer,
                block_offset=network.first,
                same_on_every_process=list(_batch_tensors(step.batch)),
            )
        if x0.requires_grad:
            with _no_autocast(x0.device):
                x0.backward(result.input_costate)
        self.last_result = result
        self._ran = True
        # The user's forward runs the steps on an empty batch (their work is done): keep their buffers as they are.
        self._kept = contextlib.ExitStack()
        self._kept.enter_context(scratch_buffers(network.steps))
        return result.output

    def _release(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def end_forward(self, output: Any) -> None:
        self._release()
        if not self._ran:
            assert self.network is not None
            raise RuntimeError(
                f"training_step did not run the residual steps (block {self.network.first} was never called), so the "
                "pint rule computed no gradient. HINT: the forward in training_step must run the network's blocks "
                "in order (call the model on the batch)."
            )

    def after_backward(self) -> None:
        self._step = None
        self._ran = False

    def abort(self) -> None:
        self._release()
        self._step = None
        self._ran = False

    def teardown(self) -> None:
        self.abort()
        self.backend = None


class _PinTListener:
    """Runs the rule when the model's forward reaches the first step; short-cuts the user's steps."""

    def __init__(self, rule: PinTRule) -> None:
        self.rule = rule
        assert rule.network is not None
        self.first, self.last = rule.network.first, rule.network.last
        self.output: Tensor | None = None
        self.busy = False
        """While the rule runs its own passes over the blocks, their hooks report here too: pass them through."""

    def block_started(self, index: int) -> None:
        pass

    def block_input(self, index: int, x: Tensor) -> Tensor:
        if index != self.first or self.busy:
            return x
        self.busy = True
        try:
            self.output = self.rule._train(x)
        finally:
            self.busy = False
        return x[:0]

    def block_output(self, index: int, output: Tensor) -> Tensor:
        if index != self.last or self.output is None or self.busy:
            return output
        self.rule._release()
        result, self.output = self.output, None
        return result

"""What a rule reports while a step runs, for measurements that must not change the step.

The event protocol of every credit-assignment rule (:class:`~lightning_mpc.rules.CreditRule`): the horizon
engine emits the block and window events below, other rules emit what applies to them (a block's forward,
its local loss, its backward) and their own measurements through :meth:`EngineObserver.signal`.

An :class:`EngineObserver` attached to :attr:`HorizonEngine.observer
<lightning_mpc.core.engine.HorizonEngine.observer>` (or passed to :func:`~lightning_mpc.horizon_backward`)
receives one call per event of the interleaved schedule: a block starts and finishes its forward, a
local loss is computed, a backward through a block's graph (or a head's) starts and finishes, the final
loss's gradient reaches the last block's output, the step completes. With no observer the engine
makes none of these calls.

Observers receive tensors that are still attached to autograd graphs: they must not keep them (keep
``detach()``-ed results or Python numbers), or the activations they were meant to measure stay alive.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["EngineObserver"]


class EngineObserver:
    """Base class of engine observers; every method does nothing. Override the ones you need.

    Events of one step, in order (``T`` blocks, block ``k`` has head ``k`` for ``k < T - 1``)::

        step_started
        for k in 0..T-1:
            block_started(k)          # only when the forward is driven by hooks or horizon_backward
            block_finished(k, x_{k+1})
            if k < T - 1:
                local_loss(k, head_k(x_{k+1}), l_{k+1})
                backward_started(k) / backward_finished(k)      # head k's loss, if it has a backward
                backward_started(j) / backward_finished(j) ...  # vector-Jacobian products through the
                                                                # graphs of the blocks j it trains
        output_gradient(dl_T/dx_T)    # after the final loss's backward reached the last block's output
        backward_started(j) / backward_finished(j) ...          # the last window
        step_completed

    A step that is abandoned (:meth:`HorizonEngine.reset
    <lightning_mpc.core.engine.HorizonEngine.reset>` before completion) never reports
    ``output_gradient`` or ``step_completed``; the next ``step_started`` begins afresh.
    """

    def step_started(self) -> None:
        """A step begins (called at the end of ``HorizonEngine.start``)."""

    def block_started(self, index: int) -> None:
        """Block ``index`` begins its forward."""

    def block_finished(self, index: int, output: Tensor) -> None:
        """Block ``index`` produced ``output`` (still attached to the block's graph; do not keep it)."""

    def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
        """Head ``index``'s ``prediction`` and its ``loss`` were computed, before their backward.

        Both are attached to the head's graph; do not keep them.
        """

    def backward_started(self, index: int) -> None:
        """A backward through block ``index``'s graph, or head ``index``'s loss, begins."""

    def backward_finished(self, index: int) -> None:
        """The backward announced by the matching :meth:`backward_started` returned."""

    def output_gradient(self, grad: Tensor | None) -> None:
        """The final loss's gradient with respect to the last block's output (scaled like the step's losses).

        ``None`` when the final loss does not depend on it. The tensor is detached; keeping it is safe.
        """

    def step_completed(self) -> None:
        """Every gradient of the step is in ``.grad`` and every graph has been released."""

    def signal(self, name: str, index: int | None, value: float | Tensor) -> None:
        """A rule-specific measurement: ``name`` of block ``index`` (``None``: the whole network), e.g. a goodness.

        ``value`` is a Python number or a detached scalar tensor; keeping it is safe.
        """

"""Parallel-in-time gradients of a residual network: predict globally with a coarse network, correct locally per slab.

The network is ``stem -> N ODE steps -> head``, ``x_{n+1} = x_n + dt_n f_n(x_n)``, with loss
``L = loss(head(x_N))``. Back-propagation is the co-state recursion ``p_N = dL/dx_N``,
``p_n = p_{n+1} + dt_n (df_n/dx)^T p_{n+1}``, and step ``n``'s gradient is ``dt_n (df_n/dtheta_n)^T p_{n+1}``.
The ``N`` steps are cut into ``K`` slabs; ``X_s`` is the state entering slab ``s`` (``X_K`` the last state)
and ``P_s`` the co-state there. ``F_s`` is the slab's fine forward, ``F_s^*(X, P)`` its fine backward (the
co-state at its input), ``G_s`` and ``G_s^*`` the same for the coarse network
(:class:`~lightning_mpc.rules.pint.coarse.CoarseNetwork`).

Prediction (iteration 0): ``X_0`` exact, ``X_{s+1} = G_s(X_s)``; ``P_K = dL/dx`` at ``X_K``;
``P_s = G_s^*(X_s, P_{s+1})``.

Correction sweep ``i = 1..k``, every slab in parallel, from the boundary values of iteration ``i - 1``:
slab ``s`` runs ``Y_s = F_s(X_s)`` and ``Q_s = F_s^*(X_s, R_s)`` with ``R_s = P_{s+1}``; the last slab
takes ``R = dL/dx`` at its own output ``Y_{K-1}`` instead (its head and loss run locally). Each slab's
parameter gradients come out of its fine backward. Then the parareal updates, the same on every process::

    X_{s+1} <- Y_s + G_s(X_s^new) - G_s(X_s^old)                          s = 0 .. K-1
    P_K     <- dL/dx at X_K^new
    P_s     <- Q_s + G_s^*(X_s^new, P_{s+1}^new) - G_s^*(X_s^old, R_s)    s = K-1 .. 0

A correction whose arguments did not change is exactly zero (it is not computed), so values that became
exact stay exact to the bit. The gradients written are those of the last sweep.

Exactness (tested to 0.0): after ``k`` sweeps the boundary states ``X_0..X_k`` are back-propagation's (the
first ``k`` slabs' forwards are exact); the co-states need the exact last state first and then travel
back one slab per sweep, so slab ``s``'s gradient is exact after ``2K - 1 - s`` sweeps and every gradient
after ``2K - 1`` (``K = 1``: one sweep is back-propagation). With the predictor replaced by exact boundary
values one sweep is back-propagation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.engine import _no_autocast, iter_parameters
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.rules.pint.backends import SequentialSlabs, SlabBackend, SlabOutput, SlabTime, now
from lightning_mpc.rules.pint.coarse import DEFAULT_COARSENING, CoarseNetwork
from lightning_mpc.rules.pint.modules import ResidualStep
from lightning_mpc.rules.pint.slabs import (
    check_deterministic,
    slab_ranges,
    split_network,
    validate_iterations,
    validate_slabs,
)

__all__ = ["Boundaries", "PinTResult", "parallel_in_time", "pint_backward"]

LossScale = Callable[[Tensor], Tensor]


@dataclass
class Boundaries:
    """The boundary values of the ``K`` slabs: states ``X_0..X_K`` and co-states ``P_0..P_K``.

    ``X_s`` enters slab ``s``, ``X_K`` leaves the last slab; ``P_s`` is the loss's gradient at ``X_s`` (scaled
    like the loss). Pass them to :func:`parallel_in_time` in place of the predictor's.
    """

    states: list[Tensor]
    costates: list[Tensor]

    def detached(self) -> Boundaries:
        """A copy holding detached tensors (safe to keep)."""
        return Boundaries([x.detach() for x in self.states], [p.detach() for p in self.costates])


@dataclass
class PinTResult:
    """What :func:`parallel_in_time` returns besides the gradients it writes.

    Attributes:
        loss: the loss on the last slab's output in the last sweep (unscaled, detached).
        output: the network's last state in the last sweep, ``Y_{K-1}`` (detached).
        input_costate: the co-state at the first step's input, ``Q_0`` of the last sweep (scaled like the loss):
            back-propagate it into whatever computed ``x0``.
        history: with ``record=True``: the boundary values of the prediction (index 0) and after every sweep.
        timeline: when each slab this process ran computed, per sweep.
        state_defect: the largest relative change of a boundary state in the last update (``None`` if not run).
        costate_defect: the same for the co-states.
    """

    loss: Tensor
    output: Tensor
    input_costate: Tensor
    history: list[Boundaries] = field(default_factory=list)
    timeline: list[SlabTime] = field(default_factory=list)
    state_defect: float | None = None
    costate_defect: float | None = None


@contextlib.contextmanager
def scratch_buffers(modules: Sequence[nn.Module], active: bool = True) -> Iterator[None]:
    """Run ``modules`` on copies of their buffers, so that their own buffers (BatchNorm statistics) stay as they are.

    Unlike restoring the values afterwards, the originals are never written, so graphs built inside (which
    may save the buffers for backward and outlive the block) stay valid.
    """
    if not active:
        yield
        return
    swapped: list[tuple[nn.Module, str, Tensor]] = []
    for module in modules:
        for sub in module.modules():
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    swapped.append((sub, name, buffer))
                    sub._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for sub, name, buffer in swapped:
            sub._buffers[name] = buffer


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether two boundary values are equal to the bit (the same tensor, or equal elements)."""
    return a is b or torch.equal(a, b)


def _relative_change(new: Sequence[Tensor], old: Sequence[Tensor]) -> float:
    worst = 0.0
    for a, b in zip(new, old):
        if a is b:
            continue
        scale = float(b.detach().double().norm())
        change = float((a.detach().double() - b.detach().double()).norm())
        worst = max(worst, change / scale if scale > 0 else change)
    return worst


class _Iterate:
    """The boundary values of one iteration and the coarse graphs built at its states."""

    def __init__(self, states: list[Tensor], costates: list[Tensor]) -> None:
        self.states = states
        self.costates = costates
        self.coarse: dict[int, tuple[Tensor, Tensor]] = {}
        """Slab -> (leaf at X_s, G_s(X_s) with its graph)."""
        self.adjoints: dict[int, Tensor] = {}
        """Slab -> G_s^*(X_s, P_{s+1}), when computed."""


class _Solver:
    """One call of :func:`parallel_in_time`: the prediction, the sweeps, the updates."""

    def __init__(
        self,
        steps: Sequence[ResidualStep],
        head: Sequence[nn.Module],
        loss_fn: Callable[[Tensor], Tensor],
        slabs: int,
        coarse: CoarseNetwork,
        backend: SlabBackend,
        scale: LossScale | None,
        observer: EngineObserver | None,
        block_offset: int,
    ) -> None:
        self.steps = list(steps)
        self.head = list(head)
        self.loss_fn = loss_fn
        self.slabs = slabs
        self.ranges = slab_ranges(len(steps), slabs)
        self.coarse = coarse
        self.backend = backend
        self.scale = scale
        self.observer = observer
        self.block_offset = block_offset
        self.slab_modules = [[self.steps[j] for j in r] for r in self.ranges]
        self.slab_params = [list(iter_parameters(modules)) for modules in self.slab_modules]
        self.head_params = list(iter_parameters(self.head))
        self.timeline: list[SlabTime] = []

    # ------------------------------------------------------------------ pieces
    def _scaled(self, loss: Tensor) -> Tensor:
        return loss if self.scale is None else self.scale(loss)

    def terminal_costate(self, x: Tensor) -> Tensor:
        """``dL/dx`` at the last state ``x`` (head and loss; the head's buffers are kept)."""
        with scratch_buffers(self.head), torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            loss = self._scaled(self.loss_fn(run_blocks(self.head, leaf)))
            with _no_autocast(leaf.device):
                (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
        return torch.zeros_like(leaf) if grad is None else grad

    def coarse_at(self, iterate: _Iterate, slab: int) -> tuple[Tensor, Tensor]:
        """``(leaf, G_s(X_s))`` with the graph, built once per iterate and slab."""
        if slab not in iterate.coarse:
            with scratch_buffers(self.slab_modules[slab]), torch.enable_grad():
                leaf = iterate.states[slab].detach().requires_grad_(True)
                out = leaf
                for step in self.coarse.propagators[slab]:
                    out = step(out)
            iterate.coarse[slab] = (leaf, out)
        return iterate.coarse[slab]

    def adjoint(self, iterate: _Iterate, slab: int, costate: Tensor) -> Tensor:
        """``G_s^*(X_s, costate)`` through the coarse graph at the iterate's ``X_s``."""
        leaf, out = self.coarse_at(iterate, slab)
        with _no_autocast(leaf.device):
            (grad,) = torch.autograd.grad(out, leaf, costate, retain_graph=True)
        return grad

    # ------------------------------------------------------------------ prediction
    def predict(self, x0: Tensor) -> _Iterate:
        states = [x0]
        iterate = _Iterate(states, [])
        for s in range(self.slabs):
            states.append(self.coarse_at(iterate, s)[1].detach())
        costates = [torch.empty(0)] * (self.slabs + 1)
        costates[self.slabs] = self.terminal_costate(states[-1])
        for s in reversed(range(self.slabs)):
            costates[s] = self.adjoint(iterate, s, costates[s + 1])
            iterate.adjoints[s] = costates[s]
        iterate.costates = costates
        return iterate

    def given(self, boundaries: Boundaries, x0: Tensor) -> _Iterate:
        states, costates = list(boundaries.states), list(boundaries.costates)
        if len(states) != self.slabs + 1 or len(costates) != self.slabs + 1:
            raise ValueError(
                f"boundaries hold {len(states)} states and {len(costates)} co-states for {self.slabs} slabs; expected "
                f"{self.slabs + 1} of each (X_0..X_K, P_0..P_K). HINT: give one value per slab boundary."
            )
        for name, values in (("state", states), ("co-state", costates)):
            for s, value in enumerate(values):
                if value.shape != x0.shape:
                    raise ValueError(
                        f"boundary {name} {s} has shape {tuple(value.shape)}, the states have {tuple(x0.shape)}. "
                        "HINT: boundary values are the states (and their gradients) entering each slab."
                    )
        return _Iterate([v.detach() for v in states], [v.detach() for v in costates])

    # ------------------------------------------------------------------ a slab's fine pass
    def run_slab(self, slab: int, iterate: _Iterate, sweep: int, final: bool) -> SlabOutput:
        modules = self.slab_modules[slab]
        last = slab == self.slabs - 1
        observe = self.observer if final else None
        first_block = self.block_offset + self.ranges[slab].start
        start, cpu_start = now()
        with scratch_buffers(modules, not final), scratch_buffers(self.head, not final and last), torch.enable_grad():
            leaf = iterate.states[slab].detach().requires_grad_(True)
            y = leaf
            for offset, step in enumerate(modules):
                if observe is not None:
                    observe.block_started(first_block + offset)
                y = step(y)
                if observe is not None:
                    observe.block_finished(first_block + offset, y)
            params = self.slab_params[slab] + (self.head_params if last else [])
            loss: Tensor | None = None
            terminal: Tensor | None = None
            if observe is not None:
                observe.backward_started(first_block)
            if last:
                prediction = run_blocks(self.head, y)
                loss = self.loss_fn(prediction)
                if observe is not None:
                    observe.local_loss(self.block_offset + len(self.steps) - 1 + len(self.head), prediction, loss)
                with _no_autocast(leaf.device):
                    grads = torch.autograd.grad(self._scaled(loss), [y, leaf, *params], allow_unused=True)
                terminal, costate, param_grads = grads[0], grads[1], grads[2:]
                terminal = torch.zeros_like(y) if terminal is None else terminal
            else:
                with _no_autocast(leaf.device):
                    grads = torch.autograd.grad(y, [leaf, *params], iterate.costates[slab + 1], allow_unused=True)
                costate, param_grads = grads[0], grads[1:]
            if observe is not None:
                observe.backward_finished(first_block)
        end, cpu_end = now()
        timing = SlabTime(sweep, slab, start, end, cpu_end - cpu_start, self.backend.rank)
        self.timeline.append(timing)
        return SlabOutput(
            output=y.detach(),
            costate=torch.zeros_like(leaf) if costate is None else costate,
            terminal_costate=terminal,
            loss=None if loss is None else loss.detach(),
            gradients=[torch.zeros_like(p) if g is None else g for p, g in zip(params, param_grads)],
            time=timing,
        )

    # ------------------------------------------------------------------ the parareal update
    def update(self, old: _Iterate, outputs: Sequence[SlabOutput]) -> _Iterate:
        K = self.slabs
        states = [old.states[0]]
        new = _Iterate(states, [])
        for s in range(K):
            y = outputs[s].output
            if _same(states[s], old.states[s]):
                states[s] = old.states[s]
                if s in old.coarse:
                    new.coarse[s] = old.coarse[s]
                states.append(y)
            else:
                correction = self.coarse_at(new, s)[1].detach() - self.coarse_at(old, s)[1].detach()
                states.append(y + correction)
        terminal = outputs[K - 1].terminal_costate
        assert terminal is not None
        costates = [torch.empty(0)] * (K + 1)
        costates[K] = terminal if _same(states[K], outputs[K - 1].output) else self.terminal_costate(states[K])
        for s in reversed(range(K)):
            received = old.costates[s + 1] if s < K - 1 else terminal
            q = outputs[s].costate
            if _same(states[s], old.states[s]) and _same(costates[s + 1], received):
                costates[s] = q
            else:
                before = old.adjoints.get(s) if s < K - 1 else None
                if before is None:
                    before = self.adjoint(old, s, received)
                after = self.adjoint(new, s, costates[s + 1])
                new.adjoints[s] = after
                costates[s] = q + (after - before)
        new.costates = costates
        return new

    # ------------------------------------------------------------------ gradients
    def write_gradients(self, outputs: Sequence[SlabOutput]) -> None:
        K = self.slabs
        params: list[nn.Parameter] = []
        grads: list[Tensor] = []
        owners: list[int] = []
        for s in range(K):
            slab_params = self.slab_params[s] + (self.head_params if s == K - 1 else [])
            mine = outputs[s].gradients if self.backend.owns(s) else None
            for index, param in enumerate(slab_params):
                params.append(param)
                grads.append(mine[index] if mine is not None else torch.zeros_like(param))
                owners.append(s)
        self.backend.share(grads, owners)
        total: dict[int, Tensor] = {}
        for param, grad in zip(params, grads):
            key = id(param)
            total[key] = grad if key not in total else total[key] + grad
        with torch.no_grad():
            for param in {id(p): p for p in params}.values():
                grad = total[id(param)]
                if param.grad is None:
                    param.grad = grad.detach().clone() if grad.requires_grad else grad
                else:
                    param.grad.add_(grad)
        # Buffers (BatchNorm statistics) moved only where the last sweep ran each slab (and the head).
        buffers: list[Tensor] = []
        buffer_owners: list[int] = []
        for owner, modules in [*enumerate(self.slab_modules), (K - 1, self.head)]:
            for module in modules:
                for buffer in module.buffers():
                    buffers.append(buffer)
                    buffer_owners.append(owner)
        if buffers:
            self.backend.share(buffers, buffer_owners)


def parallel_in_time(
    steps: Sequence[ResidualStep],
    x0: Tensor,
    head: Sequence[nn.Module],
    loss_fn: Callable[[Tensor], Tensor],
    slabs: int,
    iterations: int = 1,
    *,
    coarsening: int = DEFAULT_COARSENING,
    coarse_weights: str = "mean",
    boundaries: Boundaries | None = None,
    backend: SlabBackend | None = None,
    scale: LossScale | None = None,
    record: bool = False,
    observer: EngineObserver | None = None,
    block_offset: int = 0,
    same_on_every_process: Sequence[Tensor] = (),
) -> PinTResult:
    """Accumulate the parallel-in-time gradients of ``steps`` and ``head`` into ``.grad``.

    See the module documentation for the algorithm. Gradients are added to ``.grad`` (as ``Tensor.backward``
    does). ``x0`` is not back-propagated into: continue with ``result.input_costate`` (as
    :func:`pint_backward` does for the stem). Buffers (BatchNorm statistics) move as in one back-propagation
    step: only the last sweep's fine passes update them.

    Args:
        steps: the ODE steps, in order (:class:`~lightning_mpc.rules.pint.ResidualStep`).
        x0: the state entering the first step.
        head: the blocks after the last step (may be empty).
        loss_fn: ``loss_fn(prediction) -> scalar`` on the head's output.
        slabs: ``K``, at most ``len(steps)``.
        iterations: the number of correction sweeps ``k >= 1``.
        coarsening: fine steps one coarse step covers at most (``1``: the predictor is exact).
        coarse_weights: ``"mean"`` or ``"first"`` (see :class:`~lightning_mpc.rules.pint.coarse.CoarseNetwork`).
        boundaries: use these boundary values instead of the predictor's.
        backend: where the slabs run (default :class:`~lightning_mpc.rules.pint.SequentialSlabs`).
        scale: applied to the loss before its backward (``accumulate_grad_batches``, AMP loss scale).
        record: keep the boundary values of every iteration in ``result.history`` (and compute the last update).
        observer: receives block, loss, backward and signal events of the last sweep.
        block_offset: the index of the first step among the network's blocks (for the observer's events).
        same_on_every_process: tensors (the batch) that must be equal on every process, checked with ``x0``
            before any work (one small collective under a multi-process backend).

    Returns:
        A :class:`PinTResult`.

    Raises:
        ValueError: for invalid settings, with a HINT.
    """
    steps = list(steps)
    for index, step in enumerate(steps):
        if not isinstance(step, ResidualStep):
            raise ValueError(
                f"steps[{index}] is a {type(step).__name__}, not a ResidualStep. HINT: pass the network's ODE steps "
                "(split_network(blocks).steps), or wrap each as ResidualStep(f, dt)."
            )
    K = validate_slabs(slabs, len(steps))
    k = validate_iterations(iterations)
    backend = backend if backend is not None else SequentialSlabs()
    backend.check(K)
    backend.check_same([*same_on_every_process, x0], "batches")
    coarse = CoarseNetwork(steps, K, coarsening, coarse_weights)
    solver = _Solver(steps, head, loss_fn, K, coarse, backend, scale, observer, block_offset)
    x0 = x0.detach()
    if observer is not None:
        observer.step_started()
    iterate = solver.given(boundaries, x0) if boundaries is not None else solver.predict(x0)
    history = [Boundaries(list(iterate.states), list(iterate.costates))] if record else []
    outputs: list[SlabOutput] = []
    state_defect = costate_defect = None
    for sweep in range(1, k + 1):
        final = sweep == k
        outputs = backend.sweep(lambda s: solver.run_slab(s, iterate, sweep, final), K)
        if not final or record or observer is not None:
            updated = solver.update(iterate, outputs)
            if final:
                state_defect = _relative_change(updated.states, iterate.states)
                costate_defect = _relative_change(updated.costates, iterate.costates)
            iterate = updated
            if record:
                history.append(Boundaries(list(iterate.states), list(iterate.costates)))
    solver.write_gradients(outputs)
    last = outputs[K - 1]
    assert last.loss is not None
    if observer is not None:
        if state_defect is not None:
            observer.signal("state_defect", None, state_defect)
            observer.signal("costate_defect", None, costate_defect)  # type: ignore[arg-type]
        observer.step_completed()
    return PinTResult(
        loss=last.loss,
        output=last.output,
        input_costate=outputs[0].costate,
        history=history,
        timeline=solver.timeline,
        state_defect=state_defect,
        costate_defect=costate_defect,
    )


def pint_backward(
    blocks: Sequence[nn.Module],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    slabs: int,
    iterations: int = 1,
    *,
    coarsening: int = DEFAULT_COARSENING,
    coarse_weights: str = "mean",
    boundaries: Boundaries | None = None,
    backend: SlabBackend | None = None,
    scale: LossScale | None = None,
    record: bool = False,
    observer: EngineObserver | None = None,
) -> PinTResult:
    """Parallel-in-time training gradients of ``stem -> ResidualStep x N -> head``, accumulated into ``.grad``.

    The pure-PyTorch form of ``Trainer(strategy="pint")``: the blocks are split with
    :func:`~lightning_mpc.rules.pint.slabs.split_network`, the stem runs with autograd, the steps are trained by
    :func:`parallel_in_time`, and the stem by back-propagating the first step's co-state. ``K = 1`` (or
    ``iterations >= 2K - 1``) gives back-propagation's gradients.

    Args:
        blocks: the network's blocks, in order; the ODE steps are the :class:`ResidualStep` blocks.
        x: the input of block 0.
        target: the second argument of ``loss_fn``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        slabs: ``K``, at most the number of steps.
        iterations: correction sweeps ``k >= 1``.
        coarsening: fine steps one coarse step covers at most.
        coarse_weights: ``"mean"`` or ``"first"``.
        boundaries: boundary values to use instead of the predictor's.
        backend: where the slabs run (default: sequentially in this process).
        scale: applied to the loss before its backward.
        record: keep every iteration's boundary values.
        observer: receives the step's events.

    Returns:
        A :class:`PinTResult` (``result.loss`` is the final loss, detached).

    Raises:
        ValueError: for a network that is not ``stem -> ResidualStep x N -> head``, dropout inside the steps,
            or invalid settings (with a HINT).
    """
    network = split_network(blocks)
    check_deterministic(network.steps)
    validate_slabs(slabs, len(network.steps))
    with torch.enable_grad():
        x0 = run_blocks(network.stem, x)
    result = parallel_in_time(
        network.steps,
        x0,
        network.head,
        lambda prediction: loss_fn(prediction, target),
        slabs,
        iterations,
        coarsening=coarsening,
        coarse_weights=coarse_weights,
        boundaries=boundaries,
        backend=backend,
        scale=scale,
        record=record,
        observer=observer,
        block_offset=network.first,
        same_on_every_process=[t for t in (x, target) if isinstance(t, Tensor)],
    )
    if x0.requires_grad:
        with _no_autocast(x0.device):
            torch.autograd.backward(x0, result.input_costate)
    return result

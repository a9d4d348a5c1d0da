"""A dry run of a model's own forward that checks it can be trained block by block.

Before training, the strategies run the module's ``forward`` once on a few samples with the block hooks
attached and this inspector as the listener. Every block's output is replaced by a copy of a fresh graph
leaf, as in training, so the inspector can see, from the autograd graph, which block outputs each block's
input (and the model's output) is computed from. It finds:

* the shape of every block's output (to size local heads);
* blocks that run out of order, twice or not at all;
* blocks that return something other than a floating-point tensor;
* blocks that write into their input in place (they need a copy of a graph leaf, see
  ``HorizonEngine(clone_inputs=...)``);
* connections that skip a block boundary (block 2 fed ``h2 + h1``): block-wise rules chain gradients
  from block to block only, so the gradient along such a path would be lost without a word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.hooks import BlockHooks
from lightning_mpc.core.partition import describe

__all__ = ["BlockInspection", "inspect_blocks"]

_HINT_ORDER = (
    "HINT: configure_blocks() must return submodules that forward() applies in order, each exactly once."
)


@dataclass(frozen=True)
class BlockInspection:
    """What the dry run found.

    Attributes:
        output_shapes: the shape of every block's output, batch first.
        first_input: block 0's input (detached).
        in_place_inputs: the blocks that modify their input in place.
    """

    output_shapes: list[torch.Size]
    first_input: Tensor
    in_place_inputs: frozenset[int]


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _sources(tensor: Tensor, leaves: dict[int, int]) -> set[int]:
    """The blocks (by index) whose output ``tensor`` is computed from, found by walking its autograd graph."""
    if tensor.grad_fn is None:
        index = leaves.get(id(tensor))
        return set() if index is None else {index}
    found: set[int] = set()
    seen: set[int] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf
            index = leaves.get(id(variable))
            if index is not None:
                found.add(index)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _order_error(blocks: Sequence[nn.Module], order: list[int], finished: dict[int, Any]) -> None:
    missing = [i for i in range(len(blocks)) if i not in finished]
    raise RuntimeError(
        f"The forward did not run the {len(blocks)} blocks once each in order (ran: {order}, never finished: "
        f"{missing}; blocks: {', '.join(describe(b) for b in blocks)}). {_HINT_ORDER}"
    )


class _Inspector:
    """The dry run's listener: records shapes and order, feeds copies of fresh leaves forward."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = blocks
        self.order: list[int] = []
        self.shapes: dict[int, torch.Size] = {}
        self.leaves: dict[int, int] = {}  # id(leaf) -> block whose output it is
        self.keep: list[Tensor] = []  # the leaves stay alive, so their ids stay unique
        self.inputs: dict[int, Tensor] = {}
        self.versions: dict[int, int] = {}
        self.in_place: set[int] = set()
        self.first_input: Tensor | None = None

    def block_started(self, index: int) -> None:
        self.order.append(index)
        if index != len(self.order) - 1:
            _order_error(self.blocks, self.order, self.shapes)

    def block_input(self, index: int, x: Tensor) -> Tensor:
        if index == 0 and self.first_input is None:
            self.first_input = x.detach()
        sources = _sources(x, self.leaves)
        expected = {index - 1} if index > 0 else set()
        extra = sorted(sources - expected)
        if extra:
            self._skip_error(f"block {index} ({describe(self.blocks[index])})", index, extra)
        self.inputs[index] = x
        self.versions[index] = x._version
        return x

    def block_output(self, index: int, output: Tensor) -> Tensor:
        block = self.blocks[index]
        if not isinstance(output, Tensor):
            raise TypeError(
                f"Block {index} ({describe(block)}) returned {type(output).__name__}, expected a Tensor. "
                "HINT: blocks must map one tensor to one tensor; wrap multi-output modules so that they return one."
            )
        if not (output.is_floating_point() or output.is_complex()):
            raise TypeError(
                f"Block {index} ({describe(block)}) returned a {output.dtype} tensor of shape {tuple(output.shape)}: "
                "no gradient can flow through integer values, so the blocks before it could never learn. "
                "HINT: end the block before the op that produces integers (argmax, indices, casts), or put that op "
                "after the last block."
            )
        seen = self.inputs.get(index)
        if seen is not None and seen._version != self.versions[index]:
            self.in_place.add(index)
        self.shapes[index] = output.shape
        leaf = output.detach().requires_grad_(True)
        self.keep.append(leaf)
        self.leaves[id(leaf)] = index
        return leaf.clone()  # a non-leaf, as the engine's copies: the next block may write into it

    def _skip_error(self, where: str, index: int | None, sources: list[int]) -> None:
        names = ", ".join(f"block {k} ({describe(self.blocks[k])})" for k in sources)
        low = min(sources)
        high = len(self.blocks) - 1 if index is None else index
        raise RuntimeError(
            f"The forward feeds the output of {names} into {where}, skipping a block boundary (a skip connection "
            "across blocks). Block-wise training chains gradients from each block to the one before it only, so the "
            f"gradient along that path would be lost silently. HINT: put both ends of the connection inside one "
            f"block: merge blocks {low}..{high} (configure_blocks() returning nn.Sequential spans, or "
            "partition(..., num_blocks=...)), or move the skip inside a block."
        )


def inspect_blocks(blocks: Sequence[nn.Module], hooks: BlockHooks, run: Callable[[], Any]) -> BlockInspection:
    """Dry-run ``run()`` (the module's forward on a few samples) with ``hooks`` routed to an inspector.

    Gradients are enabled (the autograd graph reveals which blocks feed which) but nothing is
    back-propagated; run it in eval mode with the buffers preserved (the caller's job).

    Raises:
        RuntimeError: blocks out of order / skipped / repeated, or a connection across a block boundary.
        TypeError: a block returns something other than a floating-point tensor.
    """
    inspector = _Inspector(blocks)
    hooks.attach(inspector)
    try:
        with torch.enable_grad():
            output = run()
            expected = list(range(len(blocks)))
            if inspector.order != expected or sorted(inspector.shapes) != expected:
                _order_error(blocks, inspector.order, inspector.shapes)
            last = len(blocks) - 1
            extra: set[int] = set()
            for tensor in _tensors(output):
                extra |= _sources(tensor, inspector.leaves) - {last}
            if extra:
                inspector._skip_error("the model's output", None, sorted(extra))
    finally:
        hooks.attach(None)
    assert inspector.first_input is not None
    return BlockInspection(
        output_shapes=[inspector.shapes[i] for i in range(len(blocks))],
        first_input=inspector.first_input,
        in_place_inputs=frozenset(inspector.in_place),
    )

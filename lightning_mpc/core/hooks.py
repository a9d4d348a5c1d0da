"""Forward hooks that route a model's own ``forward`` through a block listener.

Installed once on the entry and exit module of every block (see
:func:`lightning_mpc.core.partition.hook_points`), the hooks do nothing until a listener is
attached: then the entry hook reports that a block starts and the exit hook hands the block's output
to the listener and feeds forward whatever it returns. This is how the horizon engine runs inside
an unmodified ``training_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_mpc.core.partition import hook_points

__all__ = ["BlockHooks", "BlockListener", "OutputShapeRecorder", "first_block_input"]


class BlockListener(Protocol):
    """What the hooks report to: :class:`~lightning_mpc.core.engine.HorizonEngine` is one.

    A listener may also define ``block_input(index, x) -> Tensor``: it then receives the input of block
    ``index`` before the block runs and the block runs on what it returns (rules that normalise or detach
    block inputs, or embed a label into the network's input, use it).
    """

    def block_started(self, index: int) -> None: ...

    def block_output(self, index: int, output: Tensor) -> Tensor: ...


class OutputShapeRecorder:
    """A listener that records every block's output shape, in the order blocks run."""

    def __init__(self) -> None:
        self.shapes: dict[int, Any] = {}
        self.order: list[int] = []
        self.outputs: dict[int, Any] = {}

    def block_started(self, index: int) -> None:
        self.order.append(index)

    def block_output(self, index: int, output: Tensor) -> Tensor:
        self.shapes[index] = output.shape if isinstance(output, Tensor) else type(output)
        self.outputs[index] = output
        return output


class BlockHooks:
    """Hooks on every block's entry and exit module, forwarding to an attachable listener.

    Args:
        blocks: the blocks, in the order the model's forward runs them.
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.listener: BlockListener | None = None
        self._handles: list[RemovableHandle] = []
        for index, block in enumerate(blocks):
            entry, exit_ = hook_points(block)
            self._handles.append(entry.register_forward_pre_hook(self._make_pre_hook(index)))
            self._handles.append(exit_.register_forward_hook(self._make_post_hook(index)))

    def _make_pre_hook(self, index: int) -> Any:
        def pre_hook(module: nn.Module, args: Any) -> Any:
            listener = self.listener
            if listener is None:
                return None
            listener.block_started(index)
            replace = getattr(listener, "block_input", None)
            if replace is not None and isinstance(args, tuple) and args and isinstance(args[0], Tensor):
                return (replace(index, args[0]), *args[1:])
            return None

        return pre_hook

    def _make_post_hook(self, index: int) -> Any:
        def post_hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self.listener is not None:
                return self.listener.block_output(index, output)
            return None

        return post_hook

    def attach(self, listener: BlockListener | None) -> None:
        """Route the next forwards to ``listener`` (``None`` turns the hooks off)."""
        self.listener = listener

    def remove(self) -> None:
        """Remove every hook from the modules."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.listener = None


class _Captured(Exception):
    """Raised by the capture hook to stop a forward once block 0's input is known."""


def first_block_input(blocks: Sequence[nn.Module], run: Callable[[], Any]) -> Tensor:
    """Block 0's input when ``run()`` calls the model, without running any block.

    ``run`` is stopped by an exception as soon as block 0 is about to run, so only what the model's
    ``forward`` does before its first block is computed.

    Raises:
        RuntimeError: if ``run`` returns without calling block 0 on a tensor.
    """
    entry, _ = hook_points(blocks[0])

    def hook(module: nn.Module, args: Any) -> None:
        first = args[0] if isinstance(args, tuple) and args else args
        if isinstance(first, Tensor):
            captured.append(first.detach())
            raise _Captured

    captured: list[Tensor] = []
    handle = entry.register_forward_pre_hook(hook)
    try:
        run()
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"The model's forward did not call block 0 ({type(blocks[0]).__name__}) on a tensor. "
            "HINT: blocks must be submodules that forward() applies in order (configure_blocks())."
        )
    return captured[0]

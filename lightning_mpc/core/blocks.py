"""What a block is: a module whose composition with the next block is the model, and where to hook it.

A block runs in two ways. Called directly (``block(x)``, :func:`run_blocks`) it computes its output
from its input. Inside the model's own ``forward`` it is observed through two hook points (see
:func:`hook_points`): a forward pre-hook on its *entry* module (the first module the model's forward
calls for it) and a forward hook on its *exit* module (the module whose output is the block's output).
Functional work the model's forward does between one block's exit and the next block's entry
(``torch.flatten``, a pooling call, adding a position embedding) belongs to the next block: it is part
of that block's graph when the forward runs, and a :class:`BlockSpan` lists it as a *virtual* step (a
small module the forward itself never calls) before the entry module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "BlockSpan",
    "Layout",
    "block_layout",
    "block_parameter_count",
    "describe",
    "has_trainable_parameters",
    "hook_points",
    "join_units",
    "modifies_input_in_place",
    "module_device",
    "run_blocks",
]

Layout = Literal["channels_first", "channels_last"]
"""How a block's output stores features: ``(N, C, *spatial)`` (PyTorch's default) or ``(N, *spatial, C)`` (Swin)."""


class BlockSpan(nn.Sequential):
    """Several consecutive pieces of a model, run as one block.

    The parent's own ``forward`` calls the submodules one by one (for example torchvision's
    ``ResNet.forward`` calls ``conv1``, ``bn1``, ``relu`` and ``maxpool``), so the span records which
    module the parent calls first (``mpc_entry``) and which one produces the block's output
    (``mpc_exit``): hooks on those two see the block's input and output when the parent's forward runs.
    Calling the span itself runs its members in order, which is the same computation. Members before
    the entry (or after the exit) are the parent's functional steps (``torch.flatten``, pooling) written
    as small modules; the parent's forward never calls them.

    Args:
        *modules: the members, in the order they apply.
        entry: the member index (or the module itself) whose input is the block's input when the parent's
            forward runs. A module that is not a member (for example the model itself, when the block's
            input is the model's input) is referenced without being registered.
        exit: the member index (or the module itself) whose output is the block's output.
        layout: how the block's output stores features (``"channels_last"`` for ``(N, H, W, C)``); the
            automatic local heads follow it. ``None`` means PyTorch's channels-first default.
    """

    def __init__(
        self,
        *modules: nn.Module,
        entry: int | nn.Module = 0,
        exit: int | nn.Module = -1,
        layout: Layout | None = None,
    ) -> None:
        super().__init__(*modules)
        self._entry_ref = self._reference(entry, "entry")
        self._exit_ref = self._reference(exit, "exit")
        self.mpc_layout: Layout | None = layout

    def _reference(self, point: int | nn.Module, name: str) -> int | tuple[nn.Module]:
        members = list(self)
        if isinstance(point, int):
            if not -len(members) <= point < len(members):
                raise IndexError(
                    f"BlockSpan {name}={point} is not a member index (the span has {len(members)} members). "
                    f"HINT: pass an index into the modules, or the {name} module itself."
                )
            return point
        for index, member in enumerate(members):
            if member is point:
                return index
        return (point,)  # a tuple: nn.Module does not register modules held inside one

    @staticmethod
    def _resolve(span: BlockSpan, ref: int | tuple[nn.Module]) -> nn.Module:
        return span[ref] if isinstance(ref, int) else ref[0]

    @property
    def mpc_entry(self) -> nn.Module:
        """The module whose input is the block's input (see :func:`hook_points`)."""
        return hook_points(self._resolve(self, self._entry_ref))[0]

    @property
    def mpc_exit(self) -> nn.Module:
        """The module whose output is the block's output (see :func:`hook_points`)."""
        return hook_points(self._resolve(self, self._exit_ref))[1]

    def extra_repr(self) -> str:
        return "" if self.mpc_layout is None else f"layout={self.mpc_layout!r}"


def hook_points(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose input and output are ``block``'s, when a parent's forward runs it."""
    entry = getattr(block, "mpc_entry", block)
    exit_ = getattr(block, "mpc_exit", block)
    return entry, exit_


def block_layout(block: nn.Module) -> Layout | None:
    """How ``block``'s output stores features (``None``: channels first, the default)."""
    return getattr(block, "mpc_layout", None)


def has_trainable_parameters(module: nn.Module) -> bool:
    """Whether ``module`` has a parameter that requires a gradient."""
    return any(p.requires_grad for p in module.parameters())


def _members(unit: nn.Module) -> list[nn.Module]:
    return list(unit) if isinstance(unit, BlockSpan) else [unit]


def join_units(units: Sequence[nn.Module]) -> nn.Module:
    """One block made of consecutive ``units``: the unit itself for one, else a flat :class:`BlockSpan`.

    The block's entry is the first unit's entry, its exit the last unit's exit, its layout the last unit's.
    """
    if not units:
        raise ValueError("join_units got no units. HINT: pass at least one module.")
    if len(units) == 1:
        return units[0]
    members = [member for unit in units for member in _members(unit)]
    entry, _ = hook_points(units[0])
    _, exit_ = hook_points(units[-1])
    return BlockSpan(*members, entry=entry, exit=exit_, layout=block_layout(units[-1]))


def modifies_input_in_place(block: nn.Module) -> bool:
    """Whether the first module ``block`` applies is declared in place (``inplace=True``: ReLU, Dropout, SiLU, ...).

    Follows first members down through ``nn.Sequential`` (and :class:`BlockSpan`, whose first member may be a
    functional step of the parent's forward that comes before the entry module). For blocks that modify
    their input in place by other means, pass their indices to ``HorizonEngine(clone_inputs=...)``.
    """
    module = block
    while True:
        if getattr(module, "inplace", False) is True:
            return True
        if not isinstance(module, nn.Sequential) or len(module) == 0:
            return False
        module = module[0]


def run_blocks(blocks: Sequence[nn.Module], x: Any) -> Any:
    """Apply ``blocks`` in order (the composition :func:`~lightning_mpc.partition` promises equals the model)."""
    for block in blocks:
        x = block(x)
    return x


def block_parameter_count(block: nn.Module) -> int:
    """Number of trainable parameter elements in ``block``."""
    return sum(p.numel() for p in block.parameters() if p.requires_grad)


def describe(block: nn.Module) -> str:
    """Short name of a block for messages and summaries, e.g. ``BlockSpan(Conv2d..MaxPool2d)``."""
    if isinstance(block, BlockSpan):
        names = [type(m).__name__ for m in block]
        return f"BlockSpan({names[0]}..{names[-1]})" if len(names) > 1 else f"BlockSpan({names[0]})"
    return type(block).__name__


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter or buffer of ``module`` (CPU if it has none)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


"""Saving and rebuilding a rule's per-block heads (MPC's local heads, Scalable FF's goodness heads).

A rule whose heads are built from specs saves the specs in its checkpoint state; loading a checkpoint
rebuilds heads of the same shapes (from the specs, or from the module's ``configure_heads()`` for custom
heads) so that the state dict's ``<attribute>.*`` tensors load into them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["SpecWithDict", "head_specs_state", "rebuild_heads"]


class SpecWithDict(Protocol):
    """A head spec that serialises to a plain dict (``HeadSpec``, ``GoodnessHeadSpec``)."""

    def to_dict(self) -> dict[str, Any]: ...


def head_specs_state(specs: Sequence[SpecWithDict] | None) -> dict[str, Any]:
    """The checkpoint state of heads built from ``specs`` (``None``: custom heads from ``configure_heads()``)."""
    return {"head_specs": None if specs is None else [spec.to_dict() for spec in specs]}


def rebuild_heads(
    module: nn.Module,
    attribute: str,
    state: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    build: Callable[[list[dict[str, Any]]], nn.ModuleList],
    what: str = "heads",
) -> nn.ModuleList | None:
    """Heads shaped like those saved under ``attribute`` in ``state_dict``, or ``None`` when it holds none.

    Built from the saved specs (``state["head_specs"]``, through ``build``) or by the module's
    ``configure_heads()`` (custom heads), on the device and with the dtype of the saved tensors.

    Args:
        module: the LightningModule being loaded.
        attribute: where the heads live on it (``"mpc_heads"``, ``"sff_heads"``).
        state: the rule's checkpoint state (:func:`head_specs_state`).
        state_dict: the checkpoint's ``state_dict``.
        build: heads from the saved spec dicts.
        what: the heads' name in the error message.

    Raises:
        ValueError: if the checkpoint holds heads that cannot be rebuilt.
    """
    from lightning_mpc.lightning.mixin import MPCMixin

    prefix = f"{attribute}."
    saved = [value for key, value in state_dict.items() if key.startswith(prefix)]
    if not saved:
        return None
    specs = state.get("head_specs")
    heads: nn.ModuleList | None = None
    if specs is not None:
        heads = build(list(specs))
    elif isinstance(module, MPCMixin):
        heads = module.configure_heads()
    if heads is None:
        raise ValueError(
            f"The checkpoint holds {what} ({prefix}*) but {type(module).__name__} cannot rebuild them: they were "
            "returned by configure_heads() when it was saved. HINT: return the same heads from configure_heads(), "
            "or load with strict=False to drop them."
        )
    first = next((value for value in saved if isinstance(value, torch.Tensor) and value.is_floating_point()), None)
    if first is not None:
        heads = heads.to(device=first.device, dtype=first.dtype)
    return heads

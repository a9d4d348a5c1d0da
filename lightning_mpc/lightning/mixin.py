"""The LightningModule mixin: which blocks to train, which heads, which local loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_mpc.core.heads import default_local_loss
from lightning_mpc.core.partition import Balance, partition
from lightning_mpc.core.partitioners import partitioner_for
from lightning_mpc.core.partitioners.registry import supported_summary
from lightning_mpc.rules.mpc.rule import HEADS_ATTRIBUTE

__all__ = [
    "HEADS_ATTRIBUTE",
    "MPCMixin",
    "batch_input",
    "batch_target",
    "find_backbone",
    "resolve_blocks",
]



def find_backbone(module: nn.Module) -> nn.Module:
    """The module's only direct child that :func:`~lightning_mpc.partition` can cut (a registered model type).

    Raises:
        ValueError: if there is none, or more than one (the message names the candidates, what is
            supported and how to register a partitioner).
    """
    candidates = [
        (name, child)
        for name, child in module.named_children()
        if name != HEADS_ATTRIBUTE and partitioner_for(child) is not None
    ]
    if len(candidates) == 1:
        return candidates[0][1]
    hint = (
        "HINT: override configure_blocks() to return the network to cut or a list of submodules that forward() "
        "applies in order, or register a partitioner for your network's class with "
        "lightning_mpc.register_partitioner(MyNet, fn)."
    )
    if not candidates:
        children = ", ".join(f"{n} ({type(c).__name__})" for n, c in module.named_children()) or "none"
        raise ValueError(
            f"{type(module).__name__} has no child that lightning_mpc.partition can cut into blocks "
            f"(children: {children}; supported: {supported_summary()}). {hint}"
        )
    names = ", ".join(f"{n} ({type(c).__name__})" for n, c in candidates)
    raise ValueError(f"{type(module).__name__} has several networks that could be cut into blocks: {names}. {hint}")


def resolve_blocks(
    module: nn.Module,
    *,
    num_blocks: int | None = None,
    balance: Balance | None = None,
    example_input: Callable[[Sequence[nn.Module]], Tensor] | None = None,
) -> list[nn.Module]:
    """The blocks of ``module``: ``configure_blocks()`` when it has one, else its only backbone, partitioned.

    Args:
        module: the LightningModule (or any module with one network child).
        num_blocks: passed to :func:`~lightning_mpc.partition` when the network is cut automatically.
        balance: passed to :func:`~lightning_mpc.partition` (``"memory"``).
        example_input: with ``balance``: maps the natural blocks to block 0's input on an example batch.
    """
    configured: Sequence[nn.Module] | nn.Module
    if isinstance(module, MPCMixin):
        configured = module.configure_blocks()
    else:
        configured = find_backbone(module)
    if isinstance(configured, nn.Module):
        blocks = partition(configured, num_blocks=num_blocks, balance=balance, example_input=example_input)
    else:
        if num_blocks is not None or balance is not None:
            raise ValueError(
                f"{type(module).__name__}.configure_blocks() returned a list of blocks, so num_blocks and balance "
                "have nothing to cut. HINT: return the network itself from configure_blocks(), or drop them."
            )
        blocks = list(configured)
    if not blocks:
        raise ValueError(
            f"{type(module).__name__}.configure_blocks() returned no blocks. HINT: return at least one module."
        )
    module_params = {id(p) for p in module.parameters()}
    for index, block in enumerate(blocks):
        if not isinstance(block, nn.Module):
            raise TypeError(
                f"Block {index} of {type(module).__name__} is a {type(block).__name__}, not an nn.Module. "
                "HINT: configure_blocks() must return modules."
            )
        if any(id(p) not in module_params for p in block.parameters()):
            raise ValueError(
                f"Block {index} ({type(block).__name__}) has parameters that are not part of "
                f"{type(module).__name__}. HINT: configure_blocks() must return submodules of the "
                "LightningModule, so that the optimizer and checkpoints see them."
            )
    return blocks


def batch_input(batch: Any) -> Any:
    """The model input of a batch: ``batch[0]`` for tuples and lists, the batch itself for a tensor."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        f"Cannot find the model input in a batch of type {type(batch).__name__}. "
        "HINT: set example_input_array on your LightningModule, or configure_heads() to skip head inference."
    )


def batch_target(batch: Any) -> Any:
    """The target of a batch: ``batch[1]``."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    raise TypeError(
        f"The default local loss takes the target from batch[1], but the batch is a {type(batch).__name__}"
        f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}. "
        "HINT: override local_loss(prediction, batch) in your LightningModule."
    )


class MPCMixin:
    """Mixin for a ``LightningModule`` trained with :class:`~lightning_mpc.MPCStrategy`.

    Put it first among the bases: ``class Model(MPCMixin, L.LightningModule)``. Nothing else is
    required; override the methods below to say which blocks to train, which heads to use and which
    local loss to apply. After the strategy's setup the module has:

    Attributes:
        mpc_blocks: the blocks, in the order the forward runs them (a plain list; the modules stay
            registered where they are).
        mpc_heads: an ``nn.ModuleList`` with one head per block but the last (``nn.Identity`` means
            no head). The heads are submodules, so ``self.parameters()`` and checkpoints include them.
    """

    mpc_blocks: list[nn.Module]
    mpc_heads: nn.ModuleList  # registered by the strategy's setup; no class default, it would shadow the submodule

    def configure_blocks(self) -> Sequence[nn.Module] | nn.Module:
        """The network to cut into blocks, or the blocks themselves.

        Returns:
            A module to pass to :func:`lightning_mpc.partition` (default: the module's only child
            that it can cut, see :func:`lightning_mpc.supported_models`), or a list of submodules that ``forward`` applies
            in order, each exactly once.
        """
        assert isinstance(self, nn.Module)
        return find_backbone(self)

    def configure_heads(self) -> nn.ModuleList | None:
        """Your own local heads, one per block but the last, or ``None`` to build them from shapes.

        Built heads are pooled + linear for feature maps, linear for vectors, token-mean + linear for
        ``(batch, tokens, features)``, sized from a dry run on the first batch (or
        ``example_input_array``).
        """
        return None

    def local_loss(self, prediction: Tensor, batch: Any) -> Tensor:
        """Loss of a local head's prediction on the training batch.

        Default: cross-entropy for integer targets, MSE for floating-point targets, target ``batch[1]``.
        """
        return default_local_loss(prediction, batch_target(batch))

    def state_dict_without_heads(self) -> dict[str, Any]:
        """The state dict without the local heads: the plain model, for export or deployment."""
        assert isinstance(self, nn.Module)
        prefix = f"{HEADS_ATTRIBUTE}."
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefix)}

    def remove_heads(self) -> None:
        """Delete the local heads from the module (after training, before export)."""
        if HEADS_ATTRIBUTE in getattr(self, "_modules", {}):
            del self._modules[HEADS_ATTRIBUTE]  # type: ignore[attr-defined]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the rule's modules (local heads, ...) before the state dict is loaded."""
        from lightning_mpc.lightning.controller import restore_rule_modules

        assert isinstance(self, nn.Module)
        restore_rule_modules(self, checkpoint)

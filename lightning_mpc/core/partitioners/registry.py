"""Which function cuts which kind of model: the partitioner registry.

A partitioner maps a model to its *natural blocks*, in the order the model's ``forward`` runs them.
Each natural block is a module (a unit) or a list of smaller consecutive units that
``partition(..., balance="memory")`` may cut between. Every unit must be hookable (see
:mod:`lightning_mpc.core.blocks`): calling the units in order equals the model, and inside the model's
own forward the unit's entry module is called first and its exit module returns its output.

Registration is by class, or by the class's qualified name (``"timm.models.resnet.ResNet"``) so that a
partitioner for an optional library does not import it. The most specific registered class in the
model's method resolution order wins, so a partitioner for a subclass overrides its parent's.

Example::

    from lightning_mpc import register_partitioner

    @register_partitioner(MyNet)
    def cut_mynet(model: MyNet) -> list[nn.Module]:
        return [model.stem, *model.blocks, model.head]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

__all__ = [
    "NaturalBlocks",
    "PartitionerFn",
    "PartitionerRegistry",
    "RegisteredPartitioner",
    "partitioner_for",
    "register_partitioner",
    "registered_name",
    "supported_models",
]

NaturalBlocks = Sequence[nn.Module | Sequence[nn.Module]]
"""What a partitioner returns: the natural blocks, each a unit or a list of consecutive units."""

PartitionerFn = Callable[[Any], NaturalBlocks]
F = TypeVar("F", bound=PartitionerFn)


def registered_name(model_type: type | str) -> str:
    """The registry key of a class: ``"module.QualifiedName"`` (strings are taken as given)."""
    if isinstance(model_type, str):
        return model_type
    return f"{model_type.__module__}.{model_type.__qualname__}"


@dataclass(frozen=True)
class RegisteredPartitioner:
    """One entry of the registry.

    Attributes:
        name: the registered class's qualified name.
        fn: the partitioner.
        description: what it cuts into (for :func:`supported_models` and error messages).
    """

    name: str
    fn: PartitionerFn
    description: str

    @property
    def short_name(self) -> str:
        """The class name with its top-level package: ``torchvision ResNet``, ``torch Sequential``."""
        package, _, rest = self.name.partition(".")
        return f"{package} {rest.rsplit('.', 1)[-1]}"


class PartitionerRegistry:
    """Partitioners by model class; refuses a second registration of a class unless ``override=True``."""

    def __init__(self) -> None:
        self._entries: dict[str, RegisteredPartitioner] = {}

    def register(self, model_type: type | str, fn: PartitionerFn, *, description: str = "", override: bool = False) -> None:
        """Register ``fn`` for ``model_type`` and its subclasses.

        Raises:
            ValueError: if ``model_type`` already has a partitioner and ``override`` is false.
            TypeError: if ``model_type`` is neither a class nor a string, or ``fn`` is not callable.
        """
        if not isinstance(model_type, (type, str)):
            raise TypeError(
                f"register_partitioner needs a class or a qualified class name, got {model_type!r}. "
                "HINT: pass the model's class, e.g. register_partitioner(MyNet, fn)."
            )
        if not callable(fn):
            raise TypeError(f"The partitioner for {registered_name(model_type)} is not callable: {fn!r}.")
        name = registered_name(model_type)
        existing = self._entries.get(name)
        if existing is not None and not override:
            raise ValueError(
                f"{name} already has a partitioner ({getattr(existing.fn, '__qualname__', existing.fn)}). "
                "HINT: pass override=True to replace it."
            )
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        self._entries[name] = RegisteredPartitioner(name, fn, doc)

    def unregister(self, model_type: type | str) -> None:
        """Remove the partitioner registered for ``model_type`` (no error if there is none)."""
        self._entries.pop(registered_name(model_type), None)

    def lookup(self, model: nn.Module) -> RegisteredPartitioner | None:
        """The partitioner of the most specific registered class ``model`` is an instance of."""
        for cls in type(model).__mro__:
            entry = self._entries.get(registered_name(cls))
            if entry is not None:
                return entry
        return None

    def supports(self, model: nn.Module) -> bool:
        """Whether some registered partitioner cuts ``model``."""
        return self.lookup(model) is not None

    def entries(self) -> list[RegisteredPartitioner]:
        """Every registered partitioner, in registration order."""
        return list(self._entries.values())

    def __contains__(self, model_type: object) -> bool:
        return isinstance(model_type, (type, str)) and registered_name(model_type) in self._entries


REGISTRY = PartitionerRegistry()
"""The registry :func:`lightning_mpc.partition` dispatches through."""


@overload
def register_partitioner(model_type: type | str, fn: F, *, description: str = "", override: bool = False) -> F: ...


@overload
def register_partitioner(
    model_type: type | str, fn: None = None, *, description: str = "", override: bool = False
) -> Callable[[F], F]: ...


def register_partitioner(
    model_type: type | str, fn: F | None = None, *, description: str = "", override: bool = False
) -> F | Callable[[F], F]:
    """Teach :func:`lightning_mpc.partition` (and so ``strategy="mpc"``) to cut a kind of model.

    ``fn(model)`` returns the model's natural blocks in the order its ``forward`` runs them: modules whose
    composition equals the model, each called by the forward (it is hooked there), or lists of smaller
    such units that the memory-balanced partition may cut between. Use
    :class:`~lightning_mpc.BlockSpan` for a block made of several of the model's submodules, with the
    forward's functional steps (flatten, pooling) as small modules before its entry.

    Usable directly, ``register_partitioner(MyNet, fn)``, or as a decorator, ``@register_partitioner(MyNet)``.

    Args:
        model_type: the model class (subclasses included), or its qualified name as a string
            (``"package.module.ClassName"``), which avoids importing an optional library.
        fn: the partitioner; omitted when used as a decorator.
        description: one line for :func:`supported_models` (default: the first line of ``fn``'s docstring).
        override: replace an existing registration for the same class.

    Raises:
        ValueError: if the class already has a partitioner and ``override`` is false.
    """
    if fn is None:

        def decorator(function: F) -> F:
            REGISTRY.register(model_type, function, description=description, override=override)
            return function

        return decorator
    REGISTRY.register(model_type, fn, description=description, override=override)
    return fn


def partitioner_for(model: nn.Module) -> RegisteredPartitioner | None:
    """The registered partitioner that cuts ``model`` (``None`` if there is none)."""
    return REGISTRY.lookup(model)


def supported_models() -> dict[str, str]:
    """The model classes :func:`lightning_mpc.partition` cuts, by qualified name, with what each is cut into."""
    return {entry.name: entry.description for entry in REGISTRY.entries()}


def supported_summary() -> str:
    """The supported classes in one line, for error messages."""
    return ", ".join(entry.short_name for entry in REGISTRY.entries())

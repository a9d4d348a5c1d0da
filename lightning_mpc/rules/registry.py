"""The registry of credit-assignment rules: one name per rule, duplicates refused.

Registering a rule also registers its strategy flags with Lightning: ``Trainer(strategy=name)`` and, for
rules that allow data parallelism, ``Trainer(strategy=f"{name}_ddp")``. Rules shipped with the package are
registered when ``lightning_mpc`` is imported; a library or a user registers its own with
:func:`register_rule` (or the same as a class decorator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lightning_mpc.rules.base import CreditRule

__all__ = ["RULES", "RuleRegistry", "available_rules", "build_rule", "get_rule", "register_rule"]

R = TypeVar("R", bound=type[CreditRule])


class RuleRegistry:
    """Names to rule classes. Registering a name twice is refused unless ``override=True``."""

    def __init__(self) -> None:
        self._rules: dict[str, type[CreditRule]] = {}
        self._listeners: list[Callable[[type[CreditRule]], None]] = []

    def register(self, rule: type[CreditRule], *, override: bool = False) -> type[CreditRule]:
        """Add ``rule`` under ``rule.name``.

        Raises:
            TypeError: if ``rule`` is not a :class:`CreditRule` subclass with a ``name``.
            ValueError: if the name is taken by another class and ``override`` is false.
        """
        if not (isinstance(rule, type) and issubclass(rule, CreditRule)):
            raise TypeError(
                f"register_rule expects a CreditRule subclass, got {rule!r}. "
                "HINT: subclass lightning_mpc.rules.CreditRule and set its class attribute `name`."
            )
        name = getattr(rule, "name", None)
        if not isinstance(name, str) or not name or not name.isidentifier():
            raise TypeError(
                f"{rule.__name__}.name must be a non-empty identifier, got {name!r}. "
                "HINT: set a class attribute such as name = 'my_rule' (it becomes the strategy flag)."
            )
        existing = self._rules.get(name)
        if existing is not None and existing is not rule and not override:
            raise ValueError(
                f"A credit-assignment rule named {name!r} is already registered ({existing.__module__}."
                f"{existing.__qualname__}). HINT: choose another name, or pass override=True to replace it."
            )
        self._rules[name] = rule
        for listener in self._listeners:
            listener(rule)
        return rule

    def get(self, name: str) -> type[CreditRule]:
        """The rule class registered as ``name``.

        Raises:
            KeyError: for an unknown name; the message lists the registered ones.
        """
        try:
            return self._rules[name]
        except KeyError:
            raise KeyError(
                f"No credit-assignment rule named {name!r}; registered: {', '.join(sorted(self._rules)) or 'none'}. "
                "HINT: import the module that registers it, or register it with lightning_mpc.register_rule."
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._rules)

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def on_register(self, listener: Callable[[type[CreditRule]], None]) -> None:
        """Call ``listener`` for every rule registered so far and every rule registered later."""
        self._listeners.append(listener)
        for rule in list(self._rules.values()):
            listener(rule)


RULES = RuleRegistry()
"""The package's rule registry."""


def register_rule(rule: R | None = None, *, override: bool = False) -> Any:
    """Register a rule class (also usable as ``@register_rule`` or ``@register_rule(override=True)``).

    Args:
        rule: a :class:`~lightning_mpc.rules.CreditRule` subclass with a ``name``.
        override: replace a rule already registered under the same name.
    """
    if rule is None:
        return lambda cls: RULES.register(cls, override=override)
    return RULES.register(rule, override=override)


def get_rule(name: str) -> type[CreditRule]:
    """The rule class registered as ``name`` (see :meth:`RuleRegistry.get`)."""
    return RULES.get(name)


def available_rules() -> list[str]:
    """The names of every registered rule."""
    return RULES.names()


def build_rule(rule: CreditRule | str, **kwargs: Any) -> CreditRule:
    """A configured rule: ``rule`` itself, or the registered class ``rule`` built with ``kwargs``.

    Raises:
        TypeError: for anything else, or keyword arguments given with a rule object.
    """
    if isinstance(rule, CreditRule):
        if kwargs:
            raise TypeError(
                f"Got a configured {type(rule).__name__} and the arguments {sorted(kwargs)}. "
                "HINT: configure the rule object itself, or pass its name with the arguments."
            )
        return rule
    if isinstance(rule, str):
        return RULES.get(rule)(**kwargs)
    raise TypeError(
        f"rule must be a CreditRule or a registered rule name, got {type(rule).__name__}. "
        f"HINT: use one of {', '.join(RULES.names())}, or a configured rule object."
    )

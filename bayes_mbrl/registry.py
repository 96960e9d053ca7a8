"""Registries: components chosen by name (model kinds, planners, propagations,
objectives, experiment modes), each registered next to the class that implements it.

A registry maps a name to an object (a class, a factory function) together with the
dataclass of its options, if it has any, and a one-line summary. The configuration's
choice lists, its per-kind sections and the CLI's help are read from the registries,
so a new component is one module plus its registration::

    from bayes_mbrl.models import MODELS, DynamicsModel

    @MODELS.register("bayes_linear", options=BayesLinearOptions)
    class BayesLinearDynamics(DynamicsModel):
        \"\"\"Bayesian linear regression on features.\"\"\"
        ...

Modules inside ``bayes_mbrl.models`` and ``bayes_mbrl.algorithms`` are imported with
their package, so their registrations are always present; a module of the user's own
is imported by naming it in ``experiment.plugins`` (see :func:`import_plugins`).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bayes_mbrl.errors import ConfigError

__all__ = ["Entry", "Registry", "import_package_modules", "import_plugins"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    Attributes:
        name: the name it is chosen by (``model.kind = "ensemble"``).
        obj: the registered class or function.
        options: dataclass of its configurable options (an
            :class:`~bayes_mbrl.options.Options` subclass), or None.
        summary: one line for help texts (default: the first line of ``obj``'s docstring).
    """

    name: str
    obj: T
    options: type[Any] | None
    summary: str


class Registry(Generic[T]):
    """Name -> component, in registration order.

    Args:
        what: what the components are, for messages ("model kind").
        key: the configuration key that chooses one ("model.kind"), for messages.
    """

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, options: type[Any] | None = None, summary: str = ""
    ) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the object unchanged."""

        def decorate(obj: T) -> T:
            self.add(name, obj, options=options, summary=summary)
            return obj

        return decorate

    def add(
        self, name: str, obj: T, *, options: type[Any] | None = None, summary: str = ""
    ) -> None:
        """Register ``obj`` under ``name``.

        Registering the same object again (a module imported twice) replaces the
        entry; a different object under a taken name is refused.

        Raises:
            ConfigError: the name is empty or malformed, or taken by another object.
        """
        if (
            not isinstance(name, str)
            or not name
            or not name.replace("_", "").replace(".", "").replace("-", "").isalnum()
        ):
            raise ConfigError(
                f"{self.what} name {name!r} must be a non-empty word of letters, digits, "
                "'_', '-' or '.'"
            )
        old = self._entries.get(name)
        if old is not None and _qualname(old.obj) != _qualname(obj):
            raise ConfigError(
                f"{self.what} {name!r} is already registered by {_qualname(old.obj)}; "
                f"choose another name for {_qualname(obj)}"
            )
        if not summary:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            summary = doc.splitlines()[0].strip() if doc else ""
        self._entries[name] = Entry(name, obj, options, summary)

    def entry(self, name: str) -> Entry[T]:
        """The entry registered as ``name``.

        Raises:
            ConfigError: no such name; the message lists the names (and a close match).
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.key} {name!r}; {self.expected(str(name))}") from None

    def __getitem__(self, name: str) -> T:
        return self.entry(name).obj

    def get(self, name: str) -> T:
        """The object registered as ``name`` (see :meth:`entry`)."""
        return self.entry(name).obj

    def options(self, name: str) -> type[Any] | None:
        """The options dataclass of ``name`` (None when it has none)."""
        return self.entry(name).options

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        """Registered entries, in registration order."""
        return tuple(self._entries.values())

    def expected(self, got: str = "") -> str:
        """``"one of 'a', 'b' (did you mean 'a'?)"``: what a value must be."""
        names = self.names()
        text = "one of " + ", ".join(repr(n) for n in names)
        close = difflib.get_close_matches(got, list(names), n=1) if got else []
        return text + (f" (did you mean {close[0]!r}?)" if close else "")

    def help(self) -> str:
        """``name: summary`` lines, for CLI help."""
        return "\n".join(f"  {e.name}: {e.summary}" for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def import_package_modules(package: str) -> None:
    """Import every module of ``package`` (so their registrations run)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


def import_plugins(specs: Sequence[str], key: str = "experiment.plugins") -> None:
    """Import the user's modules that register components.

    Each spec is a Python file (``path/to/my_family.py``, relative to the working
    directory) or an importable module name (``my_package.my_family``). Importing
    runs the module's top-level code, where its ``@REGISTRY.register(...)`` lines
    add its components: point configs only at code you trust.

    Raises:
        ConfigError: a file or module cannot be found or imported.
    """
    from bayes_mbrl.user_code import import_user_module

    for spec in specs:
        import_user_module(spec, key)

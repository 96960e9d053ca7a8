"""Options: the configurable arguments of a component, each defined once with its
default, its bounds and its help text.

A component (a model family, an experiment mode) declares a dataclass of its options
next to its class; the configuration section of that component is read into it, and
the component's constructor validates its own arguments with the same checks, so a
bound is written once::

    @dataclass
    class EnsembleOptions(Options):
        num_members: int = option(5, at_least(1), "ensemble size")
        hidden_sizes: list[int] = option([200, 200, 200], positive_list, "hidden widths")

    EnsembleOptions(num_members=0)
    # OptionError: EnsembleOptions: num_members = 0 (int), expected an integer >= 1

A check returns None when the value is fine, else a phrase saying what is expected
("an integer >= 1"). :class:`OptionError` carries the field, the value and that
phrase, so the configuration can report it under its own key (``model.num_members``)
with where the value came from.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from bayes_mbrl.errors import ConfigError

__all__ = [
    "Check",
    "OptionError",
    "Options",
    "at_least",
    "at_most",
    "check_description",
    "check_options",
    "described",
    "greater_than",
    "interval",
    "non_empty",
    "one_of",
    "option",
    "option_bounds",
    "option_docs",
    "positive_list",
]

Check = Callable[[Any], "str | None"]
"""A value check: None when fine, else what is expected.

A check may carry a ``description`` attribute: what it accepts, as a phrase ("an
integer >= 1"), or a function returning it (for choices read from a registry). The
factories below set it; :func:`check_description` reads it for the configuration
reference (``bayes-mbrl config``)."""

CheckT = TypeVar("CheckT", bound=Callable[..., Any])


def described(description: str | Callable[[], str]) -> Callable[[CheckT], CheckT]:
    """Decorator: give a check its ``description`` (what it accepts, e.g.
    ``"an integer >= 1"``, or a function returning that); the check itself is unchanged."""

    def decorate(check: CheckT) -> CheckT:
        check.description = description  # type: ignore[attr-defined]
        return check

    return decorate


def check_description(check: Check | None) -> str:
    """What ``check`` accepts, as a phrase: its ``description`` attribute, else the first
    line of its docstring, else "" (also for no check)."""
    if check is None:
        return ""
    description = getattr(check, "description", None)
    if callable(description):
        description = description()
    if isinstance(description, str):
        return description
    doc = (getattr(check, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip().rstrip(".") if doc else ""


class OptionError(ConfigError):
    """An option has a bad value.

    Attributes:
        owner: the component or options class ("ProbabilisticEnsemble").
        name: the option ("num_members").
        value: the value given.
        expected: what it must be ("an integer >= 1").
    """

    def __init__(self, owner: str, name: str, value: Any, expected: str) -> None:
        self.owner, self.name, self.value, self.expected = owner, name, value, expected
        super().__init__(
            f"{owner}: {name} = {value!r} ({type(value).__name__}), expected {expected}"
        )


def option(default: Any, check: Check | None = None, doc: str = "") -> Any:
    """A dataclass field with its check and help text (mutable defaults are copied).

    The field's metadata holds ``check`` and ``doc``; :func:`option_bounds` and
    :func:`option_docs` read them for every field of a dataclass."""
    metadata = {"check": check, "doc": doc}
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(bound: float, what: str = "a number") -> Check:
    """``value >= bound``."""
    return described(f"{what} >= {bound}")(lambda v: None if v >= bound else f"{what} >= {bound}")


def at_most(bound: float, what: str = "a number") -> Check:
    """``value <= bound``."""
    return described(f"{what} <= {bound}")(lambda v: None if v <= bound else f"{what} <= {bound}")


def greater_than(bound: float, what: str = "a number") -> Check:
    """``value > bound``."""
    return described(f"{what} > {bound}")(lambda v: None if v > bound else f"{what} > {bound}")


def interval(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A number in an interval with the given open or closed ends."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")

    @described(f"a number in {left}{lo:g}, {hi:g}{right}")
    def check(v: float) -> str | None:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        return None if ok_lo and ok_hi else f"a number in {left}{lo:g}, {hi:g}{right}"

    return check


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Check:
    """Membership in ``choices`` (or in what a callable returns, read at check time,
    for choices that come from a registry); the message lists them all."""

    def describe() -> str:
        names = choices() if callable(choices) else choices
        return "one of " + ", ".join(repr(c) for c in names)

    @described(describe)
    def check(v: str) -> str | None:
        names = list(choices() if callable(choices) else choices)
        if v in names:
            return None
        expected = "one of " + ", ".join(repr(c) for c in names)
        close = difflib.get_close_matches(str(v), names, n=1)
        return expected + (f" (did you mean {close[0]!r}?)" if close else "")

    return check


@described("a non-empty string")
def non_empty(v: str) -> str | None:
    """A non-empty, non-blank string."""
    return None if v.strip() else "a non-empty string"


@described("a non-empty list of integers >= 1")
def positive_list(v: list[int]) -> str | None:
    """A non-empty list of integers >= 1."""
    if v and all(x >= 1 for x in v):
        return None
    return "a non-empty list of integers >= 1"


def _type_problem(value: Any, annotation: Any) -> str | None:
    """What ``value`` should be when it does not have the annotated type, else None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if is_int else "an integer"
    if annotation is float:
        if not (is_int or isinstance(value, float)):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    if annotation == list[int]:
        ok = isinstance(value, list | tuple) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        )
        return None if ok else "a list of integers, e.g. [200, 200]"
    if annotation == list[str]:
        ok = isinstance(value, list | tuple) and all(isinstance(x, str) for x in value)
        return None if ok else 'a list of strings, e.g. ["a", "b"]'
    return None  # other annotations are the component's own business


def check_options(obj: Any, owner: str | None = None) -> None:
    """Check every field of the dataclass ``obj``: its type, then its check.

    Raises:
        OptionError: the first field that fails, named with ``owner`` (default: the
            dataclass's name).
    """
    who = owner or type(obj).__name__
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _type_problem(value, hints.get(f.name))
        if problem is None:
            check = f.metadata.get("check")
            problem = check(value) if check is not None else None
        if problem is not None:
            raise OptionError(who, f.name, value, problem)


def option_docs(cls: type[Any]) -> dict[str, str]:
    """Field name -> help text of an options dataclass."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def option_bounds(cls: type[Any]) -> dict[str, str]:
    """Field name -> what its check accepts (:func:`check_description`; "" for a field
    without a check) of an options dataclass."""
    return {f.name: check_description(f.metadata.get("check")) for f in dataclasses.fields(cls)}


@dataclass
class Options:
    """Base of options dataclasses: fields are checked when an instance is made.

    Subclasses add fields with :func:`option` and may override :meth:`validate` for
    checks across fields (raise :class:`OptionError` naming the field at fault).
    """

    def __post_init__(self) -> None:
        # an int given for a float field is converted, as TOML readers expect
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (
                hints.get(f.name) is float
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                object.__setattr__(self, f.name, float(value))
        check_options(self)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (none by default)."""

    @classmethod
    def of(cls, owner: str, **values: Any) -> Any:
        """Build and check the options of a component, errors named by ``owner``
        (the component's class, so a constructor reports its own arguments).

        Raises:
            OptionError: a value fails its check.
            ConfigError: an argument is not one of the options.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its options are {names}"
            raise ConfigError(f"{owner}: unknown option {unknown[0]!r}; {hint}")
        try:
            return cls(**values)
        except OptionError as exc:
            raise OptionError(owner, exc.name, exc.value, exc.expected) from None

    def replace(self, **changes: Any) -> Any:
        """A checked copy with ``changes``."""
        return dataclasses.replace(self, **changes)

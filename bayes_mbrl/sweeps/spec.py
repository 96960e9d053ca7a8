"""A sweep file: one base configuration, its variants, the seeds, how to run them.

A sweep TOML names a ``base`` (a preset or a config file), the configurations to try
(a ``[grid]`` of dotted keys to lists of values, crossed; or a ``[[list]]`` of
variants, each a ``label`` and a ``set`` table of overrides), ``seeds``, and how
trials run (``retries``, ``threads`` per trial, ``jobs``, ``timeout``, ``out``)::

    base = "pendulum-ensemble-mpc"
    seeds = [0, 1, 2]
    retries = 1
    threads = 1

    [set]                       # every trial
    "experiment.episodes" = 4

    [grid]                      # 2 x 2 configurations
    "planner.kind" = ["cem", "icem"]
    "planner.horizon" = [15, 30]

A trial is one configuration with one seed; it runs into ``OUT/<label>-s<seed>``.
:func:`load_sweep` validates the whole sweep before anything runs: every trial's
configuration through :func:`~bayes_mbrl.config.load_config`, its ``[env]`` section
built as a run builds it (a bad ``env.id``, entry point or reward function) and its
mode checked against that env (:func:`~bayes_mbrl.algorithms.check_mode_fits_task`).
A string value may hold ``{seed}``, replaced by the trial's seed (e.g. a per-seed
teacher run).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bayes_mbrl.algorithms import check_mode_fits_task
from bayes_mbrl.config import DEFAULT_PRESET, MAX_SEED, Config, list_presets, load_config
from bayes_mbrl.envs.custom import build_task
from bayes_mbrl.envs.tasks import TaskSpec
from bayes_mbrl.errors import BayesMBRLError, ConfigError
from bayes_mbrl.options import OptionError, Options, at_least, described, non_empty, option

__all__ = [
    "Sweep",
    "SweepOptions",
    "Trial",
    "Variant",
    "load_sweep",
    "sweep_from_dict",
]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
_OWNED = {
    "experiment.seed": "the sweep's seeds",
    "experiment.threads": "the sweep's threads",
    "experiment.progress": "the sweep (trials run without progress bars)",
}
"""Keys the sweep sets itself, and what sets them."""
_TABLES = ("grid", "list", "set")


@described(f"a non-empty list of distinct integers in [0, {MAX_SEED}]")
def _seed_list(v: list[int]) -> str | None:
    ok = bool(v) and len(set(v)) == len(v) and all(0 <= s <= MAX_SEED for s in v)
    return None if ok else f"a non-empty list of distinct integers in [0, {MAX_SEED}]"


@dataclass
class SweepOptions(Options):
    """The scalar keys of a sweep file (its tables are ``grid``, ``list`` and ``set``)."""

    base: str = option(
        DEFAULT_PRESET,
        non_empty,
        "preset name, or path to a config TOML (relative to the sweep file)",
    )
    seeds: list[int] = option(
        [0], _seed_list, "the seeds of every configuration (an integer N means 0..N-1)"
    )
    retries: int = option(
        1,
        at_least(0, "an integer"),
        "further attempts of a failed trial (each resumes its run directory)",
    )
    threads: int = option(1, at_least(1, "an integer"), "torch threads of each trial")
    jobs: int = option(
        0,
        at_least(0, "an integer"),
        "trials at once (0: the cores / threads for the local backend, no limit for ray)",
    )
    timeout: float = option(
        0.0, at_least(0), "seconds an attempt may take before it is stopped (0: no limit)"
    )
    out: str = option(
        "", None, "output directory, relative to the working directory (default runs/<file stem>)"
    )


@dataclass(frozen=True)
class Variant:
    """One configuration of a sweep.

    Attributes:
        label: its name; trial directories are ``<label>-s<seed>``.
        overrides: dotted key -> value, applied over the base (after the sweep's ``set``).
    """

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """One configuration with one seed.

    Attributes:
        name: ``<label>-s<seed>``, the name of its run directory.
        label: the configuration's label.
        seed: the seed.
        overrides: the overrides it was built with, as ``key=value`` strings.
        config: the validated configuration it runs.
    """

    name: str
    label: str
    seed: int
    overrides: tuple[str, ...]
    config: Config


@dataclass
class Sweep:
    """A validated sweep.

    Attributes:
        name: the sweep file's stem (the default output directory is ``runs/<name>``).
        base: the preset name or the resolved path of the base config.
        options: the scalar options.
        variants: the configurations.
        trials: every configuration with every seed, configurations validated.
    """

    name: str
    base: str | Path
    options: SweepOptions
    variants: list[Variant]
    trials: list[Trial]

    def default_out(self) -> Path:
        """``options.out``, or ``runs/<name>``."""
        return Path(self.options.out) if self.options.out else Path("runs") / self.name


def _flatten(table: Mapping[str, Any], what: str, where: str) -> dict[str, Any]:
    """``{"planner": {"kind": x}}`` and ``{"planner.kind": x}`` both as ``{"planner.kind": x}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and "." not in key:
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[str(key)] = value
    for key in flat:
        if not _KEY.match(key):
            raise ConfigError(
                f"{what}: {key!r} is not a dotted config key such as 'planner.horizon' ({where})"
            )
        if key in _OWNED:
            raise ConfigError(
                f"{what}: {key} is set by {_OWNED[key]}; remove it from the overrides ({where})"
            )
    return flat


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "x".join(_label_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def _grid_variants(grid: Mapping[str, Any], where: str) -> list[Variant]:
    flat = _flatten(grid, "[grid]", where)
    if not flat:
        raise ConfigError(f"[grid] is empty; give each key a list of values ({where})")
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"[grid] {key} = {values!r}: expected a non-empty list of values, "
                f"e.g. {key} = [1, 2] ({where})"
            )
    keys = list(flat)
    variants = []
    for combo in itertools.product(*(flat[k] for k in keys)):
        label = ",".join(f"{k}={_label_value(v)}" for k, v in zip(keys, combo, strict=True))
        variants.append(Variant(label, dict(zip(keys, combo, strict=True))))
    return variants


def _list_variants(items: Any, where: str) -> list[Variant]:
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"list must be a non-empty array of tables [[list]] with label and set ({where})"
        )
    variants = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"list entry {i + 1} is not a table ({where})")
        unknown = sorted(set(item) - {"label", "set"})
        if unknown:
            raise ConfigError(
                f"list entry {i + 1}: unknown key {unknown[0]!r}; an entry has label and "
                f"set ({where})"
            )
        label = item.get("label")
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ConfigError(
                f"list entry {i + 1}: label = {label!r}; give each entry a label of letters, "
                f"digits and . _ = , + - (it names the run directories) ({where})"
            )
        sets = item.get("set", {})
        if not isinstance(sets, Mapping):
            raise ConfigError(f"list entry {label!r}: set must be a table of overrides ({where})")
        variants.append(Variant(label, _flatten(sets, f"list entry {label!r}", where)))
    return variants


def _override(key: str, value: Any, seed: int) -> str:
    """``key=value`` with the value written as TOML (``{seed}`` in strings replaced)."""

    def substitute(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{seed}", str(seed))
        if isinstance(v, list):
            return [substitute(x) for x in v]
        return v

    def toml(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        if isinstance(v, Mapping):
            raise ConfigError(f"{key} = {value!r}: a config value cannot be a table")
        return tomli_w.dumps({"v": v}).strip()[4:]

    return f"{key}={toml(substitute(value))}"


def _resolve_base(base: str, base_dir: Path) -> str | Path:
    if base in list_presets():
        return base
    path = Path(base)
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(
            f"base = {base!r} is neither a preset nor a config file (looked for {path}; a "
            f"path is relative to the sweep file); presets are {', '.join(list_presets())}"
        )
    return path


def sweep_from_dict(data: Mapping[str, Any], name: str, base_dir: Path | str = ".") -> Sweep:
    """Validate a sweep given as a table (as read from TOML).

    Args:
        data: the sweep's keys and tables (see the module docstring).
        name: the sweep's name (the default output directory is ``runs/<name>``).
        base_dir: the directory a relative ``base`` path is relative to.

    Returns:
        The sweep, every trial's configuration validated.

    Raises:
        ConfigError: a key, a table or a trial's configuration is wrong; the message
            names it and, for a trial, its label.
    """
    where = f"sweep {name!r}"
    scalars = {k: v for k, v in data.items() if k not in _TABLES}
    if isinstance(scalars.get("seeds"), int) and not isinstance(scalars["seeds"], bool):
        if scalars["seeds"] < 1:
            raise ConfigError(f"seeds = {scalars['seeds']}: expected at least 1 ({where})")
        scalars["seeds"] = list(range(scalars["seeds"]))
    try:
        options: SweepOptions = SweepOptions.of(where, **scalars)
    except OptionError as exc:
        raise ConfigError(f"{where}: {exc.name} = {exc.value!r}, expected {exc.expected}") from None
    if "grid" in data and "list" in data:
        raise ConfigError(f"a sweep has a [grid] or a [[list]] of variants, not both ({where})")
    if "grid" in data:
        if not isinstance(data["grid"], Mapping):
            raise ConfigError(f"grid must be a table of key = [values] ({where})")
        variants = _grid_variants(data["grid"], where)
    elif "list" in data:
        variants = _list_variants(data["list"], where)
    else:
        variants = [Variant(Path(options.base).stem)]
    common = data.get("set", {})
    if not isinstance(common, Mapping):
        raise ConfigError(f"set must be a table of overrides for every trial ({where})")
    common = _flatten(common, "[set]", where)
    labels = [v.label for v in variants]
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise ConfigError(f"two variants have the label {duplicated[0]!r}; labels must differ")
    base = _resolve_base(options.base, Path(base_dir))
    trials = []
    tasks: dict[str, TaskSpec] = {}
    for variant in variants:
        for seed in options.seeds:
            overrides = tuple(
                _override(k, v, seed) for k, v in {**common, **variant.overrides}.items()
            )
            forced = [f"experiment.threads={options.threads}", "experiment.progress=false"]
            try:
                config = load_config(base, [*overrides, *forced], seed=seed)
                _check_runnable(config, tasks)
            except BayesMBRLError as exc:
                raise ConfigError(f"{where}, configuration {variant.label!r}: {exc}") from None
            name_ = f"{variant.label}-s{seed}"
            trials.append(Trial(name_, variant.label, seed, overrides, config))
    return Sweep(name, base, options, variants, trials)


def _check_runnable(config: Config, tasks: dict[str, TaskSpec]) -> None:
    """Build the trial's env as its run will (once per distinct ``[env]`` section, in
    ``tasks``) and check its mode acts on it."""
    key = repr(config.env)
    if key not in tasks:
        tasks[key] = build_task(config.env)
    check_mode_fits_task(config, tasks[key])


def load_sweep(path: Path | str) -> Sweep:
    """Read and validate a sweep file (see the module docstring).

    Raises:
        ConfigError: the file is missing or not TOML, or the sweep is invalid.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"sweep file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sweep file {str(path)!r}: {exc}") from None
    return sweep_from_dict(data, path.stem, path.parent)

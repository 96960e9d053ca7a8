"""Experiment configuration: typed sections, TOML presets, validation.

This is the only module that knows about TOML. Everything else in the toolkit
takes plain typed arguments; the experiment runner hands a :class:`Config` to the
algorithm registered for ``experiment.mode``, which builds its parts from it.

Sections:

- ``[experiment]``, ``[env]``, ``[planner]``: :class:`ExperimentConfig`,
  :class:`EnvConfig`, :class:`PlannerConfig`;
- ``[model]``: ``kind`` (a name in :data:`~bayes_mbrl.models.base.MODELS`) and the
  options of that kind, read into the kind's own options dataclass (a key of another
  kind is an error that names the kinds it belongs to);
- ``[<mode>]``: the options of an experiment mode that has some (``[pilco]``), read
  into the dataclass registered with the mode in
  :data:`~bayes_mbrl.algorithms.base.ALGORITHMS`.

Every field is defined once, with its default, its bounds and its help text, in its
options dataclass (:mod:`bayes_mbrl.options`); this module adds the dotted key and
where a value came from to the message of a bad value. The choice lists come from
the registries, so a model kind, planner, propagation, objective or mode registered
by a module (or by a plugin named in ``experiment.plugins``) is accepted here
without editing this file. The defaults together are the embedded default experiment
(:data:`DEFAULT_PRESET`): Bayesian MPC with a probabilistic ensemble on ``Pendulum-v1``.

Typical use::

    config = load_config("pendulum-ensemble-mpc", ["planner.horizon=20"], seed=3)
    dump_config(config, run_dir / "config.toml")
    assert load_config(run_dir / "config.toml") == config

Configuration files written before model sections were per kind (a ``[model]``
table holding every key of every kind, as ``dump_config`` wrote them) still load:
the keys of the other kinds are dropped. When ``model.kind`` is changed by an
override (``--set model.kind=gp``), the file's ``[model]`` values, chosen for the
file's kind, are dropped: the new kind starts from its own defaults and the
``model.*`` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

import bayes_mbrl.algorithms
import bayes_mbrl.models  # noqa: F401  (registers the built-in model kinds)
from bayes_mbrl.algorithms.base import ALGORITHMS
from bayes_mbrl.errors import CheckpointError, ConfigError
from bayes_mbrl.models.base import MODELS
from bayes_mbrl.options import (
    OptionError,
    Options,
    at_least,
    check_description,
    described,
    greater_than,
    interval,
    non_empty,
    one_of,
    option,
)
from bayes_mbrl.planning import OBJECTIVES, PLANNERS, PRECISION_CHOICES, PROPAGATIONS
from bayes_mbrl.planning.lqr import ILQR_DYNAMICS
from bayes_mbrl.registry import import_plugins

__all__ = [
    "CONFIG_HEADER",
    "DEFAULT_PRESET",
    "MAX_SEED",
    "Config",
    "EnvConfig",
    "ExperimentConfig",
    "KeyReference",
    "PlannerConfig",
    "config_from_dict",
    "config_reference",
    "config_text",
    "config_to_dict",
    "dump_config",
    "list_presets",
    "load_config",
    "model_section",
    "section_keys",
    "source_name",
]

DEFAULT_PRESET = "pendulum-ensemble-mpc"
"""Name of the embedded preset used when no configuration is given."""

MAX_SEED = 2**32 - 1
"""Largest ``experiment.seed``: numpy (seeded through Pyro) takes seeds below ``2**32``."""

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_INT1 = at_least(1, "an integer")


@described("'cpu', 'cuda', 'cuda:N' or 'mps'")
def _device(v: str) -> str | None:
    """Check a torch device string without importing torch."""
    return None if _DEVICE_RE.match(v) else "'cpu', 'cuda', 'cuda:N' or 'mps'"


@described(f"an integer in [0, {MAX_SEED}]")
def _seed(v: int) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"an integer in [0, {MAX_SEED}]"


@described("a list of 'path/to/file.py' or 'package.module'")
def _plugin_list(v: list[str]) -> str | None:
    return None if all(s.strip() for s in v) else "a list of 'path/to/file.py' or 'package.module'"


@dataclass
class ExperimentConfig(Options):
    """How the experiment runs (``[experiment]``)."""

    seed: int = option(0, _seed, "seed of every random number generator")
    episodes: int = option(8, _INT1, "total episodes, including the random seed episodes")
    seed_episodes: int = option(
        1, _INT1, "episodes of uniformly random actions before the first fit (<= episodes)"
    )
    mode: str = option("mpc", one_of(lambda: ALGORITHMS.names()), "the algorithm (see modes)")
    device: str = option("cpu", _device, "torch device: cpu, cuda, cuda:N or mps")
    checkpoint_keep: int = option(2, _INT1, "checkpoints kept in the run directory")
    progress: bool = option(True, None, "show progress bars")
    threads: int = option(
        0,
        at_least(0, "an integer"),
        "torch intra-op threads of this run (0: the cores available to the process); "
        "give each of several runs on one machine its share, e.g. 1 each for 2 runs on 2 cores",
    )
    eval_episodes: int = option(
        0,
        at_least(0, "an integer"),
        "evaluation episodes from fixed starts (env seeds 20000, 20001, ...) with the agent "
        "acting deterministically, after the episodes that eval_every selects (0: none); "
        "their mean return is metrics.csv's eval_return",
    )
    eval_every: int = option(
        0,
        at_least(0, "an integer"),
        "evaluate after each episode that passes a multiple of this many environment "
        "steps (0: after every episode but the random ones)",
    )
    max_env_steps: int = option(
        0,
        at_least(0, "an integer"),
        "a budget of environment steps: no episode starts once this many are collected "
        "(0: none; the run ends after experiment.episodes either way)",
    )
    plugins: list[str] = option(
        [],
        _plugin_list,
        "the user's modules to import first ('path/to/file.py' or 'package.module'): "
        "where their own model kinds, planners or modes are registered",
    )


_USER_CODE = re.compile(r"^\S(.*\S)?:[A-Za-z_][A-Za-z0-9_]*$")


def _user_code(what: str) -> Callable[[str], str | None]:
    """Check of a ``path/to/file.py:NAME`` or ``package.module:NAME`` key (empty: none)."""
    expected = f"'path/to/file.py:{what}' or 'package.module:{what}' (or \"\" for none)"

    @described(expected)
    def check(v: str) -> str | None:
        return None if v == "" or _USER_CODE.match(v) else expected

    return check


@dataclass
class EnvConfig(Options):
    """Which environment to run (``[env]``).

    ``id`` is a built-in task (``bayes-mbrl`` knows its reward), any registered
    gymnasium env, or your own env registered under that id by ``entry_point``. The
    code keys name a file relative to the working directory (as ``model.pyro_model``)
    or a module on the Python path; ``docs/own_env.md`` walks through one.
    """

    id: str = option("Pendulum-v1", non_empty, "gymnasium environment id")
    episode_length: int = option(200, _INT1, "steps per episode")
    entry_point: str = option(
        "",
        _user_code("Class"),
        "your gymnasium.Env subclass, 'path/to/file.py:Class' (relative to the working "
        "directory) or 'package.module:Class', registered under env.id (\"\": env.id is "
        "registered already)",
    )
    reward_fn: str = option(
        "",
        _user_code("function"),
        "batched torch reward (obs, action, next_obs) -> reward, 'path/to/file.py:function'; "
        "checked against the env's rewards before the run (\"\": a built-in task's own, "
        "else a reward model learned with the dynamics, in the MPC modes)",
    )
    termination_fn: str = option(
        "",
        _user_code("function"),
        "batched torch termination (obs, action, next_obs) -> bool, "
        "'path/to/file.py:function'; checked against the env's terminations (\"\": a "
        "built-in task's own, else the episode never terminates in imagination)",
    )
    expected_reward_fn: str = option(
        "",
        _user_code("function"),
        "exact E[reward] under a Gaussian belief (next_obs_mean, next_obs_cov, action) -> "
        "(...), 'path/to/file.py:function', for moment-matching planners (\"\": a built-in "
        "task's own, else none)",
    )


@dataclass
class PlannerConfig(Options):
    """The uncertainty-aware trajectory optimiser and its rollout evaluator (``[planner]``)."""

    kind: str = option("icem", one_of(lambda: tuple(PLANNERS)), "trajectory optimiser")
    horizon: int = option(30, _INT1, "planning horizon in steps")
    population: int = option(
        100, _INT1, "candidate action sequences per iteration (iCEM: of the first iteration)"
    )
    iterations: int = option(3, _INT1, "optimiser iterations per planning call")
    elite_fraction: float = option(
        0.1, interval(0.0, 1.0, lo_open=True), "fraction of the population kept as elites (CEM)"
    )
    momentum: float = option(
        0.1, interval(0.0, 1.0, hi_open=True), "smoothing of the sampling distribution"
    )
    particles: int = option(
        5, _INT1, "particles propagated per candidate: functions x noise draws per function"
    )
    functions: int = option(
        0,
        at_least(0, "an integer"),
        "posterior functions per candidate, dividing particles (0: an ensemble's members "
        "when they divide particles, else one per particle)",
    )
    propagation: str = option(
        "ts_inf", one_of(lambda: tuple(PROPAGATIONS)), "uncertainty propagation"
    )
    objective: str = option(
        "mean", one_of(lambda: tuple(OBJECTIVES)), "how particle returns are scored"
    )
    risk_beta: float = option(
        1.0, at_least(0), "weight of the std for mean_minus_std and optimistic"
    )
    cvar_alpha: float = option(0.1, interval(0.0, 1.0, lo_open=True), "tail fraction of cvar")
    precision: str = option(
        "auto",
        one_of(lambda: PRECISION_CHOICES),
        "precision of the model's matmuls in planning: float32, bfloat16, or auto (bfloat16 "
        "on a CPU with native bf16 for a model that computes in it, float32 otherwise)",
    )
    cuda_graphs: bool = option(
        True,
        None,
        "on a CUDA device, record each episode's plans once as a CUDA graph and replay them "
        "(cem, icem, mppi, random_shooting); false plans eagerly. Ignored on the CPU",
    )
    mppi_temperature: float = option(1.0, greater_than(0), "MPPI softmax temperature")
    mppi_noise_std: float = option(
        0.5, greater_than(0), "MPPI noise as a fraction of the half action range"
    )
    icem_noise_beta: float = option(
        2.0, at_least(0), "iCEM: colour of the samples along the horizon (0 white, 2 red)"
    )
    icem_population_decay: float = option(
        1.25, at_least(1), "iCEM: the population shrinks by this factor each iteration"
    )
    icem_keep_fraction: float = option(
        0.3, interval(0.0, 1.0), "iCEM: fraction of the elites carried to the next iteration"
    )
    ilqr_dynamics: str = option(
        "mean",
        one_of(lambda: ILQR_DYNAMICS),
        "iLQR: differentiate the predictive mean, or every posterior function (the "
        "backward pass averaged over them)",
    )
    ilqr_restarts: int = option(
        0,
        at_least(0, "an integer"),
        "iLQR: smooth random sequences whose best is a second start (0: the warm start only)",
    )


_STATIC: dict[str, type[Options]] = {
    "experiment": ExperimentConfig,
    "env": EnvConfig,
    "planner": PlannerConfig,
}

_LEGACY_MODEL_KEYS = frozenset(
    "kind num_members hidden_sizes activation learning_rate weight_decay batch_size "
    "max_epochs patience val_fraction prior_scale noise inference num_samples warmup_steps "
    "num_chains max_tree_depth pyro_model guide num_steps kernel num_features num_inducing "
    "max_train_points".split()
)
"""The keys of the flat ``[model]`` table that earlier versions wrote for every kind."""

_SECTION_CLASSES: dict[tuple[str, type[Any] | None], type[Any]] = {}


def _model_section_class(kind: str) -> type[Any]:
    """The dataclass of a ``[model]`` section of ``kind``: its options plus ``kind``."""
    options = MODELS.options(kind)
    key = (kind, options)
    if key not in _SECTION_CLASSES:
        base = options if options is not None else Options
        name = f"{base.__name__.removesuffix('Options')}ModelSection"
        _SECTION_CLASSES[key] = dataclasses.make_dataclass(
            name, [("kind", str, field(default=kind))], bases=(base,)
        )
    return _SECTION_CLASSES[key]


def model_section(kind: str = "ensemble", **options: Any) -> Any:
    """A ``[model]`` section: ``kind`` and its options (the others take their defaults).

    Raises:
        ConfigError: unknown kind, or an option that is not one of the kind's.
        OptionError: an option has a bad value.
    """
    MODELS.entry(kind)
    cls = _model_section_class(kind)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "kind"]
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ConfigError(
            f"model.{unknown[0]} is not an option of model.kind = {kind!r}; "
            f"{_belongs_to(unknown[0])}the options of {kind!r} are {', '.join(names)}"
        )
    return cls(kind=kind, **options)


def _default_mode_sections() -> dict[str, Any]:
    return {e.name: e.options() for e in ALGORITHMS.entries() if e.options is not None}


@dataclass
class Config:
    """A complete experiment configuration.

    Attributes:
        experiment: How the experiment runs.
        env: Which environment to run.
        model: The dynamics model: ``kind`` and that kind's options.
        planner: The planner and its rollout evaluator.
        modes: Options of the experiment modes that have some, by mode name; each
            is also an attribute (``config.pilco``).
    """

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: Any = field(default_factory=model_section)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    modes: dict[str, Any] = field(default_factory=_default_mode_sections)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "modes":
            raise AttributeError(name)
        modes = self.__dict__.get("modes", {})
        if name in modes:
            return modes[name]
        raise AttributeError(f"Config has no section {name!r}")

    @property
    def mode_options(self) -> Any:
        """The options of ``experiment.mode`` (None when the mode has none)."""
        return self.modes.get(self.experiment.mode)


# ----------------------------------------------------------------------- validation

Origin = Callable[[str], str | None]
"""Maps a dotted key to where its value came from (for error messages), or None."""


def _no_origin(key: str) -> str | None:
    """Origin function for plain dictionaries: nothing to add."""
    return None


def _fail(key: str, value: Any, expected: str, origin: Origin) -> ConfigError:
    """Build the ConfigError for a bad value of ``key``."""
    where = origin(key)
    suffix = f" ({where})" if where else ""
    return ConfigError(
        f"invalid value for '{key}': got {value!r} ({type(value).__name__}), "
        f"expected {expected}{suffix}"
    )


def _fields(cls: type[Any] | None) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def _model_kinds_of(key: str) -> list[str]:
    """The model kinds that have option ``key``."""
    return [e.name for e in MODELS.entries() if key in _fields(e.options)]


def _belongs_to(key: str) -> str:
    kinds = _model_kinds_of(key)
    if not kinds:
        return ""
    return f"it is an option of model.kind = {' or '.join(repr(k) for k in kinds)}; "


def section_keys() -> dict[str, list[str]]:
    """Section -> its keys, for every section a config may have now (``model``: the
    union over the registered kinds)."""
    keys = {name: _fields(cls) for name, cls in _STATIC.items()}
    model_keys = ["kind"]
    for e in MODELS.entries():
        model_keys += [k for k in _fields(e.options) if k not in model_keys]
    keys["model"] = model_keys
    for mode in ALGORITHMS.entries():
        if mode.options is not None:
            keys[mode.name] = _fields(mode.options)
    return keys


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, ks in section_keys().items() for k in ks]


def _unknown_section(section: str, where: str | None) -> ConfigError:
    """Build the ConfigError for an unknown section, with suggestions."""
    suffix = f" ({where})" if where else ""
    # A key put at the top level ("horizon = 20") matches a dotted key.
    as_key = [k for k in _all_keys() if k.split(".", 1)[1] == section]
    if as_key:
        table = as_key[0].split(".")[0]
        return ConfigError(
            f"unknown section '{section}'; did you mean "
            + " or ".join(repr(k) for k in as_key)
            + f"? (write it as [{table}] {section} = ...){suffix}"
        )
    sections = list(section_keys())
    close = difflib.get_close_matches(section, sections, n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else "valid sections are " + ", ".join(repr(s) for s in sections)
    )
    return ConfigError(f"unknown section '{section}'; {hint}{suffix}")


def _unknown_key(section: str, key: str, own: list[str], where: str | None) -> ConfigError:
    """Build the ConfigError for an unknown key of a known section, with suggestions.

    Suggests, in order of preference: the same key in another section (a key put
    in the wrong table), close matches among the section's keys, close matches
    among all other keys; failing all, lists the section's keys.
    """
    others = [k for k in _all_keys() if not k.startswith(section + ".")]
    suggestions = [k for k in others if k.split(".", 1)[1] == key]
    if not suggestions:
        close = difflib.get_close_matches(key, own, n=3)
        suggestions = [f"{section}.{k}" for k in close]
    if not suggestions:
        by_name = {k.split(".", 1)[1]: k for k in others}
        close = difflib.get_close_matches(key, list(by_name), n=3)
        suggestions = [by_name[k] for k in close]
    if suggestions:
        hint = "did you mean " + " or ".join(repr(k) for k in suggestions) + "?"
    else:
        hint = f"valid keys of [{section}] are " + ", ".join(own)
    suffix = f" ({where})" if where else ""
    return ConfigError(f"unknown key '{section}.{key}'; {hint}{suffix}")


def _make(section: str, cls: type[Any], values: dict[str, Any], origin: Origin) -> Any:
    """``cls(**values)``, a bad value reported under ``section.field`` with its origin."""
    try:
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in values.items()})
    except OptionError as exc:
        raise _fail(f"{section}.{exc.name}", exc.value, exc.expected, origin) from None


def _build_section(section: str, cls: type[Any], body: Mapping[str, Any], origin: Origin) -> Any:
    own = _fields(cls)
    for key in body:
        if key not in own:
            raise _unknown_key(section, str(key), own, origin(f"{section}.{key}"))
    return _make(section, cls, dict(body), origin)


def _build_model(
    body: Mapping[str, Any], origin: Origin, from_override: Callable[[str], bool]
) -> Any:
    """The ``[model]`` section of the kind it names (see the module docstring for the
    keys of other kinds that are dropped rather than refused)."""
    kind = body.get("kind", "ensemble")
    if not isinstance(kind, str):
        raise _fail("model.kind", kind, "a string", origin)
    if kind not in MODELS:
        raise _fail("model.kind", kind, MODELS.expected(kind), origin)
    cls = _model_section_class(kind)
    own = _fields(cls)
    legacy = _LEGACY_MODEL_KEYS <= set(body)
    kind_overridden = from_override("model.kind")
    values: dict[str, Any] = {}
    for key, value in body.items():
        dotted = f"model.{key}"
        if key == "kind" or (kind_overridden and not from_override(dotted)):
            continue  # the file's values were chosen for the file's kind
        if key in own:
            values[key] = value
            continue
        kinds = _model_kinds_of(str(key))
        if kinds and legacy:
            continue  # an old full dump holds every kind's keys
        if kinds:
            where = origin(dotted)
            raise ConfigError(
                f"'{dotted}' is not an option of model.kind = {kind!r}: it is an option of "
                f"model.kind = {' or '.join(repr(k) for k in kinds)}. Remove it or change "
                f"model.kind; the options of {kind!r} are "
                f"{', '.join(k for k in own if k != 'kind')}" + (f" ({where})" if where else "")
            )
        raise _unknown_key("model", str(key), own, origin(dotted))
    return _make("model", cls, values, origin)


def _build(
    d: Mapping[str, Any], origin: Origin, from_override: Callable[[str], bool] | None = None
) -> Config:
    """Validate a nested mapping and build a :class:`Config` (see config_from_dict)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a table of sections, got {type(d).__name__}")
    overridden = from_override or (lambda key: False)
    for section, body in d.items():
        if not isinstance(body, Mapping):
            if section not in section_keys():
                raise _unknown_section(str(section), origin(str(section)))
            raise ConfigError(
                f"section '{section}' must be a table, got {body!r} ({type(body).__name__})"
            )
    # the user's modules first: they may register the kinds and modes named below
    exp_body = d.get("experiment", {})
    if "plugins" in exp_body:
        plugins = _make("experiment", ExperimentConfig, {"plugins": exp_body["plugins"]}, origin)
        import_plugins(plugins.plugins)
    experiment = _build_section("experiment", ExperimentConfig, exp_body, origin)
    known = section_keys()
    for section, body in d.items():
        if section not in known:
            first = next(iter(body), None)
            raise _unknown_section(str(section), origin(f"{section}.{first}"))
    modes = _default_mode_sections()
    for name in modes:
        if name in d:
            options = ALGORITHMS.options(name)
            assert options is not None
            modes[name] = _build_section(name, options, d[name], origin)
    config = Config(
        experiment=experiment,
        env=_build_section("env", EnvConfig, d.get("env", {}), origin),
        model=_build_model(d.get("model", {}), origin, overridden),
        planner=_build_section("planner", PlannerConfig, d.get("planner", {}), origin),
        modes=modes,
    )
    exp = config.experiment
    if exp.seed_episodes > exp.episodes:
        raise _fail(
            "experiment.seed_episodes",
            exp.seed_episodes,
            f"at most experiment.episodes = {exp.episodes}",
            origin,
        )
    problem = ALGORITHMS[exp.mode](exp.mode).check(config)
    if problem is not None:
        raise _fail(*problem, origin)
    return config


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Validate a nested mapping (as read from TOML) and build a :class:`Config`.

    Missing sections and keys take their defaults. Ints are accepted for float
    fields and converted; bools are not accepted as ints.

    Args:
        d: Mapping of section name to mapping of key to value.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On an unknown section or key (with close matches suggested), a
            model key of another kind (naming the kinds it belongs to), a value of
            the wrong type, or a value out of range or not among the choices. The
            message names the dotted key, the value and what is expected.
    """
    return _build(d, _no_origin)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Return ``config`` as nested plain dictionaries (section -> key -> value).

    The sections are ``experiment``, ``env``, ``model`` (``kind`` first), ``planner``
    and, of the modes' sections, the chosen mode's and any that differ from their
    defaults.

    Args:
        config: The configuration.

    Returns:
        A new dictionary that :func:`config_from_dict` turns back into an equal config.
    """
    model = dataclasses.asdict(config.model)
    out: dict[str, dict[str, Any]] = {
        "experiment": dataclasses.asdict(config.experiment),
        "env": dataclasses.asdict(config.env),
        "model": {"kind": model.pop("kind"), **model},
        "planner": dataclasses.asdict(config.planner),
    }
    defaults = _default_mode_sections()
    for name, options in config.modes.items():
        if name == config.experiment.mode or options != defaults.get(name):
            out[name] = dataclasses.asdict(options)
    return out


# -------------------------------------------------------------------------- presets


def _presets_dir() -> Any:
    """Return the Traversable of the packaged presets directory."""
    return resources.files("bayes_mbrl").joinpath("presets")


def list_presets() -> dict[str, str]:
    """Return the embedded presets.

    Returns:
        Mapping of preset name to its one-line description (the first comment
        line of the preset file), sorted by name.
    """
    out: dict[str, str] = {}
    entries = sorted(_presets_dir().iterdir(), key=lambda e: e.name)
    for entry in entries:
        if not entry.name.endswith(".toml"):
            continue
        description = ""
        for line in entry.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                description = stripped.lstrip("#").strip()
                break
            if stripped:
                break
        out[entry.name.removesuffix(".toml")] = description
    return out


def _is_preset_name(source: str | Path | None) -> bool:
    """True when ``source`` is a string naming an embedded preset."""
    return isinstance(source, str) and source in list_presets()


def source_name(source: str | Path | None) -> str:
    """Return a short name for a config source, e.g. for naming run directories.

    Args:
        source: As for :func:`load_config`.

    Returns:
        The preset name (``DEFAULT_PRESET`` for None) or the file's stem.
    """
    if source is None:
        return DEFAULT_PRESET
    if _is_preset_name(source):
        return str(source)
    return Path(source).stem


# --------------------------------------------------------------------------- loading


def _read_source(source: str | Path | None) -> tuple[dict[str, Any], str]:
    """Read the TOML of a preset or file.

    Returns:
        The parsed table and a description of where it came from.
    """
    if source is None or _is_preset_name(source):
        name = DEFAULT_PRESET if source is None else str(source)
        text = _presets_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")
        try:
            return tomllib.loads(text), f"preset '{name}'"
        except tomllib.TOMLDecodeError as exc:  # a packaging bug, still report it
            raise ConfigError(f"embedded preset '{name}' is not valid TOML: {exc}") from exc
    path = Path(source)
    if not path.exists():
        presets = list(list_presets())
        if isinstance(source, str) and os.sep not in source and not path.suffix:
            close = difflib.get_close_matches(source, presets, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"presets are {', '.join(presets)}"
            raise ConfigError(f"no preset or config file named {source!r}; {hint}")
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), f"file {str(path)!r}"
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc


_OVERRIDE_FORM = 'SECTION.KEY=VALUE, e.g. planner.horizon=20 or env.id="Pendulum-v1"'


def _parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` into its parts; the value is a TOML value.

    A value that is not valid TOML but is a bare word (no quotes, brackets or
    braces, not empty) is taken as a string, so ``env.id=Pendulum-v1`` works.

    Raises:
        ConfigError: If the override is malformed.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    parts = key.split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"malformed override {text!r}: expected {_OVERRIDE_FORM}")
    if not raw:
        raise ConfigError(f"override {text!r} has no value: expected {_OVERRIDE_FORM}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if raw[0] in "\"'[{" or "\n" in raw:
            raise ConfigError(
                f"override {text!r}: value {raw!r} is not a valid TOML value ({exc})"
            ) from exc
        value = raw
    return parts[0], parts[1], value


def load_config(
    source: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> Config:
    """Load and validate a configuration.

    Args:
        source: None for the default preset (:data:`DEFAULT_PRESET`), the name of
            an embedded preset (see :func:`list_presets`), or a path to a TOML file.
            Strings are looked up as preset names first.
        overrides: Strings ``section.key=value`` applied in order on top of the
            source; each value is parsed as a TOML value, and a bare word that is
            not valid TOML is taken as a string.
        seed: If given, overrides ``experiment.seed``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file is missing, unreadable or not valid TOML (the
            message names the path and, for syntax errors, the line), an override
            is malformed, or the resulting configuration is invalid.
    """
    if isinstance(overrides, str):  # a lone string would be split into characters
        overrides = (overrides,)
    data, where = _read_source(source)
    from_override: dict[str, str] = {}
    for text in overrides:
        section, key, value = _parse_override(text)
        body = data.setdefault(section, {})
        if isinstance(body, dict):
            body[key] = value
        else:
            data[section] = {key: value}
        from_override[f"{section}.{key}"] = f"from override {text!r}"
    if seed is not None:
        data.setdefault("experiment", {})
        if isinstance(data["experiment"], dict):
            data["experiment"]["seed"] = seed
        from_override["experiment.seed"] = "from the seed argument"

    def origin(key: str) -> str:
        return from_override.get(key, f"in {where}")

    return _build(data, origin, lambda key: key in from_override)


def dump_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as TOML, atomically (temporary file + ``os.replace``).

    ``load_config(path)`` reads the file back to an equal config.

    Args:
        config: The configuration.
        path: Destination file; its directory must exist.

    Raises:
        CheckpointError: If the file cannot be written.
    """
    path = Path(path)
    text = config_text(config)
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=path.parent,
            prefix=f".{path.name}.",
            suffix=".tmp",
            delete=False,
        ) as fh:
            tmp_name = fh.name
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a config is not secret
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise CheckpointError(f"cannot write config file {str(path)!r}: {exc}") from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


# ------------------------------------------------------------------------ reference

CONFIG_HEADER = "# bayes-mbrl experiment configuration"
"""First line of every config file :func:`dump_config` writes (it marks run directories)."""


def config_text(config: Config) -> str:
    """``config`` as the TOML text :func:`dump_config` writes (header line first)."""
    return CONFIG_HEADER + "\n" + tomli_w.dumps(config_to_dict(config))


@dataclass(frozen=True)
class KeyReference:
    """One configuration key, for the reference (``bayes-mbrl config``).

    Attributes:
        key: the dotted key (``planner.horizon``).
        type: its TOML type as a Python annotation (``int``, ``list[int]``).
        value: its value in the configuration the reference was made from.
        default: its default (the options dataclass's).
        bounds: what it accepts ("an integer >= 1"; "" when any value of the type is).
        doc: one line of meaning.
        section_doc: what the key's section is (the same for every key of a section).
    """

    key: str
    type: str
    value: Any
    default: Any
    bounds: str
    doc: str
    section_doc: str


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _section_reference(section: str, options: Any, section_doc: str) -> list[KeyReference]:
    """The keys of one section, read from its options dataclass instance."""
    cls = type(options)
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - options fields always have defaults
            default = None
        rows.append(
            KeyReference(
                key=f"{section}.{f.name}",
                type=_type_name(hints.get(f.name, Any)),
                value=getattr(options, f.name),
                default=default,
                bounds=check_description(f.metadata.get("check")),
                doc=f.metadata.get("doc", ""),
                section_doc=section_doc,
            )
        )
    return rows


def config_reference(config: Config | None = None) -> list[KeyReference]:
    """Every key a configuration has, with its type, value, default, bounds and meaning,
    read from the options dataclasses and the registries.

    Args:
        config: the configuration to describe (default: the defaults). Its model kind
            decides the keys of ``[model]``; every mode that has options is included.

    Returns:
        The keys by section: ``experiment``, ``env``, ``model``, ``planner``, then the
        modes' sections, each in field order.
    """
    config = config if config is not None else Config()
    kind = config.model.kind
    model_summary = MODELS.entry(kind).summary
    rows: list[KeyReference] = []
    for name, options in (
        ("experiment", config.experiment),
        ("env", config.env),
        ("model", config.model),
        ("planner", config.planner),
    ):
        if name == "model":
            doc = f"The dynamics model, model.kind = {kind!r}: {model_summary}".rstrip(": ")
            rows.append(
                KeyReference(
                    key="model.kind",
                    type="str",
                    value=kind,
                    default=model_section().kind,
                    bounds=MODELS.expected(),
                    doc="the model family; the other [model] keys are its options",
                    section_doc=doc,
                )
            )
            rows += [r for r in _section_reference(name, options, doc) if r.key != "model.kind"]
        else:
            doc = (type(options).__doc__ or "").strip().splitlines()[0].strip()
            doc = re.sub(r"\s*\(``\[\w+\]``\)\.?$", "", doc)
            rows += _section_reference(name, options, doc)
    for mode, options in config.modes.items():
        entry = ALGORITHMS.entry(mode)
        doc = f"Options of experiment.mode = {mode!r}: {entry.summary}".rstrip(": ")
        rows += _section_reference(mode, options, doc)
    return rows

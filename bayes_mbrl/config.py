"""Experiment configuration: typed dataclasses, TOML presets, validation.

This is the only module that knows about TOML. Everything else in the toolkit
takes plain typed arguments; the experiment runner unpacks a :class:`Config`
into them.

A configuration has five sections, ``experiment``, ``env``, ``model``,
``planner`` and ``pilco``; every field has a default, and the defaults together are the
embedded default experiment (:data:`DEFAULT_PRESET`): Bayesian MPC with a
probabilistic ensemble on ``Pendulum-v1``.

Typical use::

    config = load_config("pendulum-ensemble-mpc", ["planner.horizon=20"], seed=3)
    dump_config(config, run_dir / "config.toml")
    assert load_config(run_dir / "config.toml") == config
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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

from bayes_mbrl.algorithms.mpc import MODES as _MODES
from bayes_mbrl.errors import CheckpointError, ConfigError
from bayes_mbrl.models.ensemble import ACTIVATIONS as _ACTIVATIONS
from bayes_mbrl.planning import OBJECTIVES as _OBJECTIVES
from bayes_mbrl.planning import PLANNERS as _PLANNERS
from bayes_mbrl.planning import PRECISIONS as _PRECISIONS
from bayes_mbrl.planning import PROPAGATIONS as _PROPAGATIONS

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_PRESET",
    "GUIDES",
    "INFERENCE_KINDS",
    "KERNELS",
    "MAX_SEED",
    "MODEL_KINDS",
    "MODES",
    "NOISE_KINDS",
    "OBJECTIVES",
    "PILCO_POLICIES",
    "PLANNER_KINDS",
    "PRECISIONS",
    "PROPAGATIONS",
    "Config",
    "EnvConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PilcoConfig",
    "PlannerConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "list_presets",
    "load_config",
    "source_name",
]

DEFAULT_PRESET = "pendulum-ensemble-mpc"
"""Name of the embedded preset used when no configuration is given."""

# The choices are owned by the modules that implement them; config only validates.
MODES: tuple[str, ...] = (*_MODES, "pilco")
"""Experiment modes: fit once and run plans open loop (``v0.5``), refit after each
episode and run plans open loop (``v1.0``), refit each episode and replan every
step (``mpc``), or PILCO policy search through a moment-matched GP (``pilco``:
uses the ``model`` section's GP settings and the ``pilco`` section; the planner
section is not used)."""

PILCO_POLICIES: tuple[str, ...] = ("rbf", "linear")
"""Policy families of PILCO."""

MODEL_KINDS: tuple[str, ...] = ("ensemble", "bnn", "pyro", "gp", "sparse_gp")
"""Dynamics model kinds the experiment runner can build: a bootstrap ensemble of
probabilistic nets, a Bayesian neural net (Pyro, mean-field SVI or NUTS), a
user-written Pyro model (``model.pyro_model``), an exact GP or a sparse variational
GP (GPyTorch, one GP per state dimension, pathwise function draws)."""

KERNELS: tuple[str, ...] = ("se", "matern52", "matern32")
"""GP kernels (ARD)."""

INFERENCE_KINDS: tuple[str, ...] = ("svi", "nuts")
"""Posterior inference for the Pyro model kinds (``bnn``, ``pyro``)."""

NOISE_KINDS: tuple[str, ...] = ("heteroscedastic", "homoscedastic")
"""Observation noise of the Bayesian neural net."""

GUIDES: tuple[str, ...] = ("normal", "multivariate_normal", "lowrank", "delta")
"""Autoguides for SVI on a user-written Pyro model."""

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
"""Hidden-layer activations of neural dynamics models."""

PLANNER_KINDS: tuple[str, ...] = _PLANNERS
"""Trajectory optimisers."""

PROPAGATIONS: tuple[str, ...] = _PROPAGATIONS
"""Uncertainty propagation schemes for particles through the model."""

OBJECTIVES: tuple[str, ...] = _OBJECTIVES
"""How the planner scores the distribution of particle returns."""

PRECISIONS: tuple[str, ...] = tuple(_PRECISIONS)
"""Floating-point precision of model rollouts inside the planner."""

MAX_SEED = 2**32 - 1
"""Largest ``experiment.seed``: numpy (seeded through Pyro) takes seeds below ``2**32``."""

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass
class ExperimentConfig:
    """How the experiment runs.

    Attributes:
        seed: Seed of every random number generator (in ``[0, 2**32 - 1]``).
        episodes: Total number of episodes, including the random seed episodes.
        seed_episodes: Episodes with uniformly random actions before the first fit
            (>= 1 and <= ``episodes``).
        mode: One of :data:`MODES`.
        device: Torch device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        checkpoint_keep: How many checkpoints to keep in the run directory (>= 1).
        progress: Whether to show progress bars.
    """

    seed: int = 0
    episodes: int = 8
    seed_episodes: int = 1
    mode: str = "mpc"
    device: str = "cpu"
    checkpoint_keep: int = 2
    progress: bool = True


@dataclass
class EnvConfig:
    """Which environment to run.

    Attributes:
        id: Gymnasium environment id.
        episode_length: Number of steps per episode (>= 1).
    """

    id: str = "Pendulum-v1"
    episode_length: int = 200


@dataclass
class ModelConfig:
    """The probabilistic dynamics model and how it is fitted.

    Attributes:
        kind: One of :data:`MODEL_KINDS`.
        num_members: Ensemble size (>= 1).
        hidden_sizes: Width of each hidden layer (non-empty, each >= 1).
        activation: One of :data:`ACTIVATIONS`.
        learning_rate: Optimiser learning rate (> 0).
        weight_decay: L2 weight decay (>= 0).
        batch_size: Minibatch size (>= 1).
        max_epochs: Upper bound on training epochs per fit (>= 1).
        patience: Epochs without validation improvement before stopping (>= 1).
        val_fraction: Fraction of the data held out for validation, in [0, 0.5).
        prior_scale: ``bnn``: standard deviation of the Gaussian weight prior (> 0).
        noise: ``bnn``: one of :data:`NOISE_KINDS`.
        inference: ``bnn`` and ``pyro``: one of :data:`INFERENCE_KINDS`.
        num_samples: NUTS samples kept per chain (>= 1).
        warmup_steps: NUTS warm-up steps per chain (>= 1).
        num_chains: NUTS chains (>= 1; 2 or more for r_hat).
        max_tree_depth: NUTS maximum tree depth (>= 1; at most ``2**depth - 1``
            leapfrog steps per sample).
        pyro_model: ``pyro``: the user's Pyro model function, ``path/to/file.py:function``
            (relative to the working directory) or ``package.module:function``.
        guide: ``pyro`` with SVI: one of :data:`GUIDES`.
        num_steps: ``pyro`` with SVI: optimisation steps per fit; ``gp``: Adam steps on
            the marginal likelihood per fit (>= 1).
        kernel: ``gp``, ``sparse_gp``: one of :data:`KERNELS`.
        num_features: ``gp``, ``sparse_gp``: random Fourier features of each posterior
            function draw (>= 1).
        num_inducing: ``sparse_gp``: inducing points (>= 1).
        max_train_points: ``gp``: condition on at most this many transitions, a random
            subset (0: all).
    """

    kind: str = "ensemble"
    num_members: int = 5
    hidden_sizes: list[int] = field(default_factory=lambda: [200, 200, 200])
    activation: str = "silu"
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 5
    val_fraction: float = 0.1
    prior_scale: float = 1.0
    noise: str = "heteroscedastic"
    inference: str = "svi"
    num_samples: int = 200
    warmup_steps: int = 200
    num_chains: int = 1
    max_tree_depth: int = 10
    pyro_model: str = ""
    guide: str = "normal"
    num_steps: int = 2000
    kernel: str = "se"
    num_features: int = 1024
    num_inducing: int = 256
    max_train_points: int = 0


@dataclass
class PlannerConfig:
    """The uncertainty-aware trajectory optimiser.

    Attributes:
        kind: One of :data:`PLANNER_KINDS`.
        horizon: Planning horizon in steps (>= 1).
        population: Candidate action sequences per iteration (>= 1).
        iterations: Optimiser iterations per planning call (>= 1).
        elite_fraction: Fraction of the population kept as elites (CEM), in (0, 1].
        momentum: Smoothing of the sampling distribution between iterations, in [0, 1).
        particles: Particles propagated per candidate (>= 1).
        propagation: One of :data:`PROPAGATIONS`.
        objective: One of :data:`OBJECTIVES`.
        risk_beta: Weight of the standard deviation for ``mean_minus_std`` and
            ``optimistic`` (>= 0).
        cvar_alpha: Tail fraction for ``cvar``, in (0, 1].
        precision: One of :data:`PRECISIONS`.
        mppi_temperature: MPPI softmax temperature (> 0).
        mppi_noise_std: MPPI sampling noise as a fraction of the half action range (> 0).
    """

    kind: str = "cem"
    horizon: int = 30
    population: int = 200
    iterations: int = 5
    elite_fraction: float = 0.1
    momentum: float = 0.1
    particles: int = 5
    propagation: str = "ts_inf"
    objective: str = "mean"
    risk_beta: float = 1.0
    cvar_alpha: float = 0.1
    precision: str = "float32"
    mppi_temperature: float = 1.0
    mppi_noise_std: float = 0.5


@dataclass
class PilcoConfig:
    """PILCO's policy search (``experiment.mode = "pilco"``).

    The GP is the ``model`` section's exact GP (``model.kind = "gp"``,
    ``model.kernel = "se"``): ``model.num_steps`` and ``model.learning_rate`` fit
    its hyperparameters, ``model.max_train_points`` caps the transitions it
    conditions on (the most recent are kept; 0 = all).

    Attributes:
        policy: One of :data:`PILCO_POLICIES`.
        num_basis: Gaussian basis functions of the RBF policy (>= 1).
        opt_iterations: L-BFGS iterations per policy optimization (>= 1).
    """

    policy: str = "rbf"
    num_basis: int = 50
    opt_iterations: int = 75


@dataclass
class Config:
    """A complete experiment configuration.

    Attributes:
        experiment: How the experiment runs.
        env: Which environment to run.
        model: The dynamics model.
        planner: The planner.
        pilco: PILCO's policy search (mode ``pilco`` only).
    """

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    pilco: PilcoConfig = field(default_factory=PilcoConfig)


# --------------------------------------------------------------------------- schema

_SECTIONS: dict[str, type[Any]] = {
    "experiment": ExperimentConfig,
    "env": EnvConfig,
    "model": ModelConfig,
    "planner": PlannerConfig,
    "pilco": PilcoConfig,
}


def _schema() -> dict[str, dict[str, Any]]:
    """Return section -> field name -> resolved type annotation."""
    return {
        name: {f.name: get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
        for name, cls in _SECTIONS.items()
    }


_SCHEMA = _schema()
_ALL_KEYS: list[str] = [f"{s}.{k}" for s, fields in _SCHEMA.items() for k in fields]


# A value check returns None when the value is fine, else a phrase saying what
# is expected ("an integer >= 1").
_Check = Callable[[Any], str | None]


def _at_least(bound: int | float, what: str) -> _Check:
    """Check ``value >= bound``."""
    return lambda v: None if v >= bound else f"{what} >= {bound}"


def _greater_than(bound: int | float, what: str) -> _Check:
    """Check ``value > bound``."""
    return lambda v: None if v > bound else f"{what} > {bound}"


def _interval(lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> _Check:
    """Check that a float lies in an interval with the given open/closed ends."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")

    def check(v: float) -> str | None:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        return None if ok_lo and ok_hi else f"a number in {left}{lo:g}, {hi:g}{right}"

    return check


def _one_of(choices: Sequence[str]) -> _Check:
    """Check membership in ``choices``; the message lists them all."""

    def check(v: str) -> str | None:
        if v in choices:
            return None
        expected = "one of " + ", ".join(repr(c) for c in choices)
        close = difflib.get_close_matches(v, list(choices), n=1)
        return expected + (f" (did you mean {close[0]!r}?)" if close else "")

    return check


def _device(v: str) -> str | None:
    """Check a torch device string without importing torch."""
    return None if _DEVICE_RE.match(v) else "'cpu', 'cuda', 'cuda:N' or 'mps'"


def _non_empty(v: str) -> str | None:
    """Check that a string is not empty or blank."""
    return None if v.strip() else "a non-empty string"


def _positive_list(v: list[int]) -> str | None:
    """Check a non-empty list of positive integers."""
    if v and all(x >= 1 for x in v):
        return None
    return "a non-empty list of integers >= 1"


def _pyro_model_spec(v: str) -> str | None:
    """Check the form ``file.py:function`` / ``module:function`` (or empty)."""
    if not v:
        return None
    target, sep, func = v.rpartition(":")
    if sep and target and func.isidentifier():
        return None
    return "'path/to/file.py:function' or 'package.module:function'"


_INT1 = _at_least(1, "an integer")

_CHECKS: dict[str, _Check] = {
    "experiment.seed": lambda v: None if 0 <= v <= MAX_SEED else f"an integer in [0, {MAX_SEED}]",
    "experiment.episodes": _INT1,
    "experiment.seed_episodes": _INT1,
    "experiment.mode": _one_of(MODES),
    "experiment.device": _device,
    "experiment.checkpoint_keep": _INT1,
    "env.id": _non_empty,
    "env.episode_length": _INT1,
    "model.kind": _one_of(MODEL_KINDS),
    "model.num_members": _INT1,
    "model.hidden_sizes": _positive_list,
    "model.activation": _one_of(ACTIVATIONS),
    "model.learning_rate": _greater_than(0, "a number"),
    "model.weight_decay": _at_least(0, "a number"),
    "model.batch_size": _INT1,
    "model.max_epochs": _INT1,
    "model.patience": _INT1,
    "model.val_fraction": _interval(0.0, 0.5, lo_open=False, hi_open=True),
    "model.prior_scale": _greater_than(0, "a number"),
    "model.noise": _one_of(NOISE_KINDS),
    "model.inference": _one_of(INFERENCE_KINDS),
    "model.num_samples": _INT1,
    "model.warmup_steps": _INT1,
    "model.num_chains": _INT1,
    "model.max_tree_depth": _INT1,
    "model.pyro_model": _pyro_model_spec,
    "model.guide": _one_of(GUIDES),
    "model.num_steps": _INT1,
    "model.kernel": _one_of(KERNELS),
    "model.num_features": _INT1,
    "model.num_inducing": _INT1,
    "model.max_train_points": _at_least(0, "an integer"),
    "planner.kind": _one_of(PLANNER_KINDS),
    "planner.horizon": _INT1,
    "planner.population": _INT1,
    "planner.iterations": _INT1,
    "planner.elite_fraction": _interval(0.0, 1.0, lo_open=True, hi_open=False),
    "planner.momentum": _interval(0.0, 1.0, lo_open=False, hi_open=True),
    "planner.particles": _INT1,
    "planner.propagation": _one_of(PROPAGATIONS),
    "planner.objective": _one_of(OBJECTIVES),
    "planner.risk_beta": _at_least(0, "a number"),
    "planner.cvar_alpha": _interval(0.0, 1.0, lo_open=True, hi_open=False),
    "planner.precision": _one_of(PRECISIONS),
    "planner.mppi_temperature": _greater_than(0, "a number"),
    "planner.mppi_noise_std": _greater_than(0, "a number"),
    "pilco.policy": _one_of(PILCO_POLICIES),
    "pilco.num_basis": _INT1,
    "pilco.opt_iterations": _INT1,
}


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


def _is_int(v: Any) -> bool:
    """True for ints that are not bools."""
    return isinstance(v, int) and not isinstance(v, bool)


def _coerce(key: str, value: Any, annotation: Any, origin: Origin) -> Any:
    """Type-check ``value`` against ``annotation`` and return it converted.

    Args:
        key: Dotted key, for error messages.
        value: Value read from TOML or an override.
        annotation: The field's resolved type annotation.
        origin: Where values came from, for error messages.

    Returns:
        The value, with ints converted to float for float fields and lists copied.

    Raises:
        ConfigError: If the value has the wrong type.
    """
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _fail(key, value, "true or false", origin)
    if annotation is int:
        if _is_int(value):
            return value
        raise _fail(key, value, "an integer", origin)
    if annotation is float:
        if _is_int(value) or isinstance(value, float):
            if not math.isfinite(value):
                raise _fail(key, value, "a finite number", origin)
            return float(value)
        raise _fail(key, value, "a number", origin)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _fail(key, value, "a string", origin)
    if annotation == list[int]:
        if isinstance(value, list) and all(_is_int(x) for x in value):
            return list(value)
        raise _fail(key, value, "a list of integers, e.g. [200, 200]", origin)
    raise TypeError(f"config field {key} has unsupported annotation {annotation!r}")


def _unknown_section(section: str, where: str | None) -> ConfigError:
    """Build the ConfigError for an unknown section, with suggestions."""
    suffix = f" ({where})" if where else ""
    # A key put at the top level ("horizon = 20") matches a dotted key.
    as_key = [k for k in _ALL_KEYS if k.split(".", 1)[1] == section]
    if as_key:
        table = as_key[0].split(".")[0]
        return ConfigError(
            f"unknown section '{section}'; did you mean "
            + " or ".join(repr(k) for k in as_key)
            + f"? (write it as [{table}] {section} = ...){suffix}"
        )
    close = difflib.get_close_matches(section, list(_SCHEMA), n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else "valid sections are " + ", ".join(repr(s) for s in _SCHEMA)
    )
    return ConfigError(f"unknown section '{section}'; {hint}{suffix}")


def _unknown_key(section: str, key: str, where: str | None) -> ConfigError:
    """Build the ConfigError for an unknown key of a known section, with suggestions.

    Suggests, in order of preference: the same key in another section (a key put
    in the wrong table), close matches among the section's keys, close matches
    among all other keys; failing all, lists the section's keys.
    """
    own = list(_SCHEMA[section])
    others = [k for k in _ALL_KEYS if not k.startswith(section + ".")]
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


def _build(d: Mapping[str, Any], origin: Origin) -> Config:
    """Validate a nested mapping and build a :class:`Config` (see config_from_dict)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a table of sections, got {type(d).__name__}")
    sections: dict[str, Any] = {}
    for section, body in d.items():
        if section not in _SCHEMA:
            first = next(iter(body), None) if isinstance(body, Mapping) else None
            raise _unknown_section(str(section), origin(f"{section}.{first}"))
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"section '{section}' must be a table, got {body!r} ({type(body).__name__})"
            )
        fields = _SCHEMA[section]
        values: dict[str, Any] = {}
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if key not in fields:
                raise _unknown_key(section, str(key), origin(dotted))
            value = _coerce(dotted, value, fields[key], origin)
            problem = _CHECKS[dotted](value) if dotted in _CHECKS else None
            if problem is not None:
                raise _fail(dotted, value, problem, origin)
            values[key] = value
        sections[section] = _SECTIONS[section](**values)
    config = Config(**sections)
    if config.model.kind == "pyro" and not config.model.pyro_model:
        raise _fail(
            "model.pyro_model",
            config.model.pyro_model,
            "the user's Pyro model as 'path/to/file.py:function' when model.kind = 'pyro'",
            origin,
        )
    if config.experiment.mode == "pilco" and (
        config.model.kind != "gp" or config.model.kernel != "se"
    ):
        key = "model.kind" if config.model.kind != "gp" else "model.kernel"
        raise _fail(
            key,
            config.model.kind if key == "model.kind" else config.model.kernel,
            "'gp' with model.kernel = 'se' when experiment.mode = 'pilco' (moment matching "
            "needs the exact squared-exponential GP)",
            origin,
        )
    exp = config.experiment
    if exp.seed_episodes > exp.episodes:
        raise _fail(
            "experiment.seed_episodes",
            exp.seed_episodes,
            f"at most experiment.episodes = {exp.episodes}",
            origin,
        )
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
        ConfigError: On an unknown section or key (with close matches suggested),
            a value of the wrong type, or a value out of range or not among the
            choices. The message names the dotted key, the value and what is
            expected.
    """
    return _build(d, _no_origin)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Return ``config`` as nested plain dictionaries (section -> key -> value).

    Args:
        config: The configuration.

    Returns:
        A new dictionary that :func:`config_from_dict` turns back into an equal config.
    """
    return dataclasses.asdict(config)


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

    return _build(data, origin)


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
    text = "# bayes-mbrl experiment configuration\n" + tomli_w.dumps(config_to_dict(config))
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

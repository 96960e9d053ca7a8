"""A corpus of bad inputs: each gets a ``bayes_mbrl`` error that names the problem and the fix.

Every case below does one bad thing a user can do (a config, a CLI flag, a shape, a
NaN, a wrong space, a crafted or damaged checkpoint, a broken user model or reward
function). One parametrized test runs each case and asserts that

- the exception is a :class:`~bayes_mbrl.errors.BayesMBRLError` of the expected class
  (never a bare traceback from inside torch, Pyro, gymnasium or numpy), and its message
  matches the case's regex, which names the problem and, where the code gives one, the fix;
- for CLI cases (``bayes_mbrl.cli.main``): a non-zero exit status and the message on
  stderr, without a ``Traceback``;
- for cases that touch stored data (a run directory, a replay buffer, a transition log,
  PILCO's data, a fitted model, checkpoints): nothing stored was changed or lost
  (bytes compared before and after; see :meth:`Ctx.keep`).

A case is a small function ``case(ctx)``; API cases do the bad thing, CLI cases
return the ``argv`` for ``main``. The tiny run directory shared by the cases is built
once per module (one random episode of 10 steps).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from gymnasium import spaces
from test_pyro_dynamics import linear_model  # a valid user model: s' = a s + b u + noise
from torch import Tensor

import bayes_mbrl.cli as cli_module
from bayes_mbrl.algorithms.pilco import PILCO, PILCO_TASKS
from bayes_mbrl.cli import main
from bayes_mbrl.config import Config, config_from_dict, dump_config, load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import check_continuous_env, get_task, make_env
from bayes_mbrl.errors import (
    BayesMBRLError,
    CheckpointError,
    ConfigError,
    DataError,
    EnvError,
    ModelError,
    UnsafeCheckpointError,
)
from bayes_mbrl.experiment import (
    Experiment,
    TransitionLog,
    load_checkpoint,
    resume_experiment,
    run_experiment,
    save_checkpoint,
)
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.models.gp import ExactGPDynamics
from bayes_mbrl.models.pyro_dynamics import PyroDynamics
from bayes_mbrl.planning import CEMPlanner, RolloutEvaluator

TINY = [
    "env.episode_length=10",
    "experiment.episodes=1",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "model.num_members=2",
    "model.hidden_sizes=[8]",
    "model.max_epochs=2",
    "planner.population=8",
    "planner.iterations=1",
    "planner.particles=2",
    "planner.horizon=3",
]


def _tiny(extra: tuple[str, ...]) -> list[str]:
    """TINY and ``extra``; TINY's model keys (the ensemble's) only when ``extra`` keeps
    the ensemble (a key of another kind is refused)."""
    other_kind = any(e.startswith("model.kind=") for e in extra)
    return [*(t for t in TINY if not (other_kind and t.startswith("model."))), *extra]


def tiny(*extra: str) -> Config:
    return load_config(None, _tiny(extra))


def tiny_args(*extra: str) -> list[str]:
    args = ["--no-progress"]
    for override in _tiny(extra):
        args += ["--set", override]
    return args


# ------------------------------------------------------------------ snapshots
def freeze(obj: Any) -> Any:
    """A comparable, exact copy of tensors, arrays, bytes and plain containers."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return ("tensor", str(t.dtype), tuple(t.shape), raw)
    if isinstance(obj, np.ndarray):
        return ("array", str(obj.dtype), obj.shape, obj.tobytes())
    if isinstance(obj, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in obj.items()))
    if isinstance(obj, list | tuple):
        return tuple(freeze(v) for v in obj)
    return obj


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@dataclass
class Ctx:
    """What a case gets: a fresh ``tmp`` directory, the shared fixtures, and ``keep``."""

    tmp: Path
    request: pytest.FixtureRequest
    kept: list[tuple[str, Callable[[], Any], Any]] = field(default_factory=list)
    cli_error: BaseException | None = None

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def keep(self, label: str, getter: Callable[[], Any]) -> None:
        """Record ``getter()`` now; the test asserts it is unchanged after the case."""
        self.kept.append((label, getter, freeze(getter())))

    def keep_tree(self, root: Path) -> None:
        self.keep(f"files under {root}", lambda: tree_bytes(root))

    def copy_run(self, name: str = "base_run") -> Path:
        """A private copy of a module-scoped run directory."""
        dst = self.tmp / name
        shutil.copytree(self.fixture(name), dst)
        return dst


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run: one random episode of 10 steps, no model fitted yet."""
    run_dir = tmp_path_factory.mktemp("corpus") / "run"
    run_experiment(tiny(), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def pilco_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a PILCO run's config (analyze refuses it before reading more)."""
    run_dir = tmp_path_factory.mktemp("corpus") / "pilco"
    run_dir.mkdir()
    config = load_config("pendulum-swingup-pilco", ["experiment.progress=false"])
    dump_config(config, run_dir / "config.toml")
    return run_dir


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run of two episodes: its last checkpoint holds a fitted ensemble."""
    run_dir = tmp_path_factory.mktemp("corpus") / "fitted"
    run_experiment(tiny("experiment.episodes=2"), run_dir)
    return run_dir


def random_buffer(n: int, obs_dim: int = 3, action_dim: int = 1, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    action = torch.rand(n, action_dim, generator=g) * 2 - 1
    next_obs = obs + 0.1 * torch.randn(n, obs_dim, generator=g)
    buf = ReplayBuffer(obs_dim, action_dim, max(n, 1))
    if n:
        buf.add(obs, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    return buf


def make_ensemble() -> ProbabilisticEnsemble:
    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8], max_epochs=2)
    model.fit(random_buffer(24), torch.Generator().manual_seed(0))
    return model


@pytest.fixture(scope="module")
def ensemble() -> ProbabilisticEnsemble:
    """A fitted 2-member ensemble on 3-D observations and 1-D actions (read-only)."""
    return make_ensemble()


@pytest.fixture(scope="module")
def pyro_model() -> PyroDynamics:
    """The valid user model, fitted by a few SVI steps (read-only)."""
    model = PyroDynamics(linear_model, 1, 1, num_steps=3)
    model.fit(random_buffer(12, 1, 1))
    return model


@pytest.fixture(scope="module")
def se_gp() -> ExactGPDynamics:
    """An exact SE GP fitted (2 Adam steps) on 12 transitions (read-only)."""
    model = ExactGPDynamics(3, 1, kernel="se", training_steps=2)
    model.fit(random_buffer(12))
    return model


def evaluator(model: Any, reward_fn: Any = None, **kwargs: Any) -> RolloutEvaluator:
    task = get_task("Pendulum-v1")
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return RolloutEvaluator(model, reward_fn or task.reward_fn, 3, particles=2, **kwargs)


class ImageObsEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """A continuous-action env with 32x32 RGB image observations."""

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros((32, 32, 3), np.uint8), {}

    def step(self, action: np.ndarray) -> Any:
        return np.zeros((32, 32, 3), np.uint8), 0.0, False, False, {}


IMAGE_ENV_ID = "bayes_mbrl_corpus/ImageObs-v0"
if IMAGE_ENV_ID not in gymnasium.registry:
    gymnasium.register(IMAGE_ENV_ID, entry_point=ImageObsEnv, max_episode_steps=10)


class Evil:
    """Unpickling this runs code (the attack that weights_only loading refuses)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


# ===================================================================== cases
CASES: list[Any] = []


def case(error: type[BayesMBRLError], pattern: str, *, id: str, xfail: str | None = None):
    """Register an API case: ``fn(ctx)`` raises ``error``, its message matching ``pattern``."""

    def register(fn: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        CASES.append(pytest.param("api", fn, error, pattern, id=id, marks=marks))
        return fn

    return register


def cli_case(error: type[BayesMBRLError] | None, pattern: str, *, id: str):
    """Register a CLI case: ``fn(ctx)`` returns ``argv``; ``main`` must exit non-zero and
    print a message matching ``pattern`` (``error`` None: an argparse usage error)."""

    def register(fn: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        CASES.append(pytest.param("cli", fn, error, pattern, id=id))
        return fn

    return register


# ------------------------------------------------------------------ configs
@case(
    ConfigError,
    r"unknown key 'planner\.horizn'; did you mean 'planner\.horizon'\?",
    id="config-unknown-key",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["planner.horizn=5"])


@case(
    ConfigError,
    r"unknown key 'model\.horizon'; did you mean 'planner\.horizon'",
    id="config-key-in-wrong-section",
)
def _(ctx: Ctx) -> None:
    config_from_dict({"model": {"horizon": 5}})


@case(
    ConfigError, r"unknown section 'planer'; did you mean 'planner'\?", id="config-unknown-section"
)
def _(ctx: Ctx) -> None:
    load_config(None, ["planer.horizon=5"])


@case(
    ConfigError,
    r"'planner\.horizon': got 'ten' \(str\), expected an integer",
    id="config-wrong-type",
)
def _(ctx: Ctx) -> None:
    load_config(None, ['planner.horizon="ten"'])


@case(
    ConfigError,
    r"'experiment\.episodes': got True \(bool\), expected an integer",
    id="config-bool-for-int",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["experiment.episodes=true"])


@case(
    ConfigError,
    r"'planner\.elite_fraction': got 1\.5 .*expected a number in \(0, 1\]",
    id="config-out-of-range-fraction",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["planner.elite_fraction=1.5"])


@case(
    ConfigError,
    r"'model\.hidden_sizes': got \[\].*expected a non-empty list of integers >= 1",
    id="config-empty-hidden-sizes",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["model.hidden_sizes=[]"])


@case(
    ConfigError,
    r"'model\.learning_rate': got inf .*expected a finite number",
    id="config-infinite-float",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["model.learning_rate=inf"])


@case(
    ConfigError,
    r"'experiment\.seed': got 18446744073709551616 .*expected an integer in \[0, 4294967295\]",
    id="config-seed-too-large",
)
def _(ctx: Ctx) -> None:
    load_config(None, [], seed=2**64)


@case(
    ConfigError,
    r"'model\.kind': got 'ensembel' .*one of 'ensemble'.*did you mean 'ensemble'\?",
    id="config-unknown-model-kind",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["model.kind=ensembel"])


@case(
    ConfigError,
    r"'planner\.kind': got 'cme' .*did you mean 'cem'\?",
    id="config-unknown-planner-kind",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["planner.kind=cme"])


@case(
    ConfigError,
    r"'experiment\.seed_episodes': got 9 .*expected at most experiment\.episodes = 8",
    id="config-seed-episodes-gt-episodes",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["experiment.seed_episodes=9"])


@case(
    ConfigError,
    r"'experiment\.device': got 'gpu' .*expected 'cpu', 'cuda', 'cuda:N' or 'mps'",
    id="config-device-unknown",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["experiment.device=gpu"])


@case(
    ConfigError,
    r"experiment\.device = 'cuda:99' but (torch .* sees no CUDA device|this machine has \d+ "
    r"CUDA device).*",
    id="config-device-missing",
)
def _(ctx: Ctx) -> None:
    try:
        run_experiment(tiny("experiment.device=cuda:99"), ctx.tmp / "run")
    finally:
        assert not (ctx.tmp / "run").exists()  # refused before anything was written


@case(
    ConfigError,
    r"experiment\.device = 'cuda' runs experiment\.mode in \['v0\.5', 'v1\.0', 'mpc'\] with "
    r"model\.kind in \['ensemble'\]; this run has mode 'mpc' and model 'bnn'",
    id="config-device-model-cpu-only",
)
def _(ctx: Ctx) -> None:
    try:
        run_experiment(tiny("experiment.device=cuda", "model.kind=bnn"), ctx.tmp / "run")
    finally:
        assert not (ctx.tmp / "run").exists()


@case(
    ConfigError,
    r"'model\.pyro_model'.*expected the user's Pyro model as 'path/to/file\.py:function'",
    id="config-pyro-without-model",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["model.kind=pyro"])


@case(
    ConfigError,
    r"'model\.pyro_model': got 'no_colon' .*'path/to/file\.py:function'",
    id="config-pyro-model-malformed",
)
def _(ctx: Ctx) -> None:
    load_config(None, ["model.kind=pyro", "model.pyro_model=no_colon"])


@case(
    ConfigError,
    r"'model\.kind': got 'ensemble' .*expected 'gp' with model\.kernel = 'se' when"
    r" experiment\.mode = 'pilco'",
    id="config-pilco-non-gp",
)
def _(ctx: Ctx) -> None:
    load_config("pendulum-swingup-pilco", ["model.kind=ensemble"])


@case(
    ConfigError,
    r"'model\.kernel': got 'matern52' .*squared-exponential",
    id="config-pilco-non-se-kernel",
)
def _(ctx: Ctx) -> None:
    load_config("pendulum-swingup-pilco", ["model.kernel=matern52"])


@case(
    ConfigError,
    r"config file '.*bad\.toml' is not valid TOML: .*line 2",
    id="config-toml-syntax-error",
)
def _(ctx: Ctx) -> None:
    (ctx.tmp / "bad.toml").write_text("[planner]\nhorizon = = 3\n")
    load_config(ctx.tmp / "bad.toml")


@case(ConfigError, r"config file '.*missing\.toml' not found", id="config-missing-file")
def _(ctx: Ctx) -> None:
    load_config(ctx.tmp / "missing.toml")


@case(ConfigError, r"config file '.*latin1\.toml' is not UTF-8 text", id="config-not-utf8")
def _(ctx: Ctx) -> None:
    (ctx.tmp / "latin1.toml").write_bytes(b'[env]\nid = "P\xe9ndulum"\n')
    load_config(ctx.tmp / "latin1.toml")


@case(
    ConfigError,
    r"no preset or config file named 'pendulum-ensemble-mcp'; did you mean"
    r" 'pendulum-ensemble-mpc'\?",
    id="config-preset-typo",
)
def _(ctx: Ctx) -> None:
    load_config("pendulum-ensemble-mcp")


@case(
    EnvError,
    r"unknown gymnasium env id 'Pendulum-v2'\. Did you mean 'Pendulum-v1'.*env\.entry_point",
    id="config-unknown-env-id",
)
def _(ctx: Ctx) -> None:
    try:
        run_experiment(tiny('env.id="Pendulum-v2"'), ctx.tmp / "run")
    finally:
        assert not (ctx.tmp / "run").exists()


@case(
    ConfigError,
    r"experiment\.mode = 'pilco' needs a PILCO task description .*env\.id ="
    r" 'Pendulum-v1'.*PILCO_TASKS",
    id="pilco-mode-env-without-task",
)
def _(ctx: Ctx) -> None:
    config = load_config("pendulum-swingup-pilco", ['env.id="Pendulum-v1"'])
    Experiment(config, ctx.tmp / "run")


# ------------------------------------------------------------------ CLI flags
@cli_case(
    ConfigError,
    r"bayes-mbrl: error: malformed override 'planner\.horizon': expected SECTION\.KEY=VALUE",
    id="cli-set-without-equals",
)
def _(ctx: Ctx) -> list[str]:
    return ["run", "--out", str(ctx.tmp / "run"), "--set", "planner.horizon"]


@cli_case(None, r"argument --seed: invalid int value: 'abc'", id="cli-seed-not-an-int")
def _(ctx: Ctx) -> list[str]:
    return ["run", "--out", str(ctx.tmp / "run"), "--seed", "abc"]


@cli_case(
    ConfigError,
    r"'experiment\.seed': got -1 .*expected an integer .*from the seed argument",
    id="cli-negative-seed",
)
def _(ctx: Ctx) -> list[str]:
    return ["run", "--out", str(ctx.tmp / "run"), "--seed", "-1"]


@cli_case(
    CheckpointError,
    r"is not a run directory \(it has no config\.toml\); start a new run with 'bayes-mbrl run'",
    id="cli-resume-non-run-dir",
)
def _(ctx: Ctx) -> list[str]:
    (ctx.tmp / "notes.txt").write_text("my notes")
    ctx.keep_tree(ctx.tmp)
    return ["resume", str(ctx.tmp)]


@cli_case(
    CheckpointError,
    r"is not a bayes_mbrl run directory: its config\.toml was not written by bayes_mbrl",
    id="cli-resume-unrelated-config-toml",
)
def _(ctx: Ctx) -> list[str]:
    (ctx.tmp / "config.toml").write_text('[tool]\nname = "x"\n')
    ctx.keep_tree(ctx.tmp)
    return ["resume", str(ctx.tmp)]


@cli_case(
    CheckpointError,
    r"is not a bayes_mbrl run directory: its config\.toml was not written by bayes_mbrl",
    id="cli-analyze-unrelated-config-toml",
)
def _(ctx: Ctx) -> list[str]:
    (ctx.tmp / "config.toml").write_text('[tool]\nname = "x"\n')
    ctx.keep_tree(ctx.tmp)
    return ["analyze", str(ctx.tmp)]


@cli_case(CheckpointError, r"run directory .*nowhere does not exist", id="cli-resume-missing-dir")
def _(ctx: Ctx) -> list[str]:
    return ["resume", str(ctx.tmp / "nowhere")]


@cli_case(
    ConfigError,
    r"already contains a run; continue it with 'bayes-mbrl resume .*' or pick another --out",
    id="cli-run-into-existing-run",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run()
    ctx.keep_tree(run_dir)
    return ["run", "--out", str(run_dir), *tiny_args()]


@cli_case(
    ConfigError,
    r"--out .*is a file, not a directory; pick another --out",
    id="cli-run-out-under-a-file",
)
def _(ctx: Ctx) -> list[str]:
    (ctx.tmp / "afile").write_text("keep me")
    ctx.keep_tree(ctx.tmp)
    return ["run", "--out", str(ctx.tmp / "afile" / "run"), *tiny_args()]


@cli_case(
    CheckpointError,
    r"no model has been fitted yet \(only random episodes so far\); analyze the run after its"
    r" first planned episode",
    id="cli-analyze-without-fitted-model",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run()
    ctx.keep_tree(run_dir)
    return ["analyze", str(run_dir)]


@cli_case(
    CheckpointError,
    r"is a run of mode 'pilco', which has no dynamics model.*analyze runs of the MPC modes",
    id="cli-analyze-pilco-run",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run("pilco_run")
    ctx.keep_tree(run_dir)
    return ["analyze", str(run_dir)]


@cli_case(ConfigError, r"--num-draws must be at least 2, got 1", id="cli-analyze-num-draws-1")
def _(ctx: Ctx) -> list[str]:
    return ["analyze", str(ctx.fixture("base_run")), "--num-draws", "1"]


@cli_case(
    ConfigError,
    r"--out .*summary\.csv exists and is not a directory; pick another --out",
    id="cli-analyze-out-is-a-file",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run("fitted_run")
    (ctx.tmp / "summary.csv").write_text("an old result")
    ctx.keep_tree(ctx.tmp)
    return ["analyze", str(run_dir), "--out", str(ctx.tmp / "summary.csv")]


@cli_case(
    ConfigError,
    r"invalid value for 'planner\.horizon': got 0 .*expected an integer >= 1 \(in file"
    r" '.*config\.toml'\)",
    id="cli-resume-edited-config-invalid",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run()
    text = (run_dir / "config.toml").read_text().replace("horizon = 3", "horizon = 0")
    (run_dir / "config.toml").write_text(text)
    ctx.keep_tree(run_dir)
    return ["resume", str(run_dir), "--no-progress"]


@cli_case(
    ModelError,
    r"saved ensemble does not match this configuration \(.*size mismatch.*\); load it with the"
    r" config it was saved with",
    id="cli-analyze-config-edited-after-fit",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run("fitted_run")
    text = (
        (run_dir / "config.toml")
        .read_text()
        .replace("hidden_sizes = [\n    8,\n]", "hidden_sizes = [\n    9,\n]")
    )
    assert "9," in text
    (run_dir / "config.toml").write_text(text)
    ctx.keep_tree(run_dir)
    return ["analyze", str(run_dir)]


@cli_case(
    ModelError,
    r"saved ensemble does not match this configuration",
    id="cli-resume-config-edited-after-fit",
)
def _(ctx: Ctx) -> list[str]:
    run_dir = ctx.copy_run("fitted_run")
    config = (run_dir / "config.toml").read_text()
    text = config.replace("hidden_sizes = [\n    8,\n]", "hidden_sizes = [\n    9,\n]")
    text = text.replace("episodes = 2", "episodes = 3")
    (run_dir / "config.toml").write_text(text)
    ctx.keep_tree(run_dir)
    return ["resume", str(run_dir), "--no-progress"]


@cli_case(
    ConfigError,
    r"env\.id = 'CartPole-v1' has discrete actions \(Discrete\(2\)\); experiment\.mode = "
    r"'mpc' acts in continuous \(Box\) action spaces only\. Set experiment\.mode to one of "
    r"\['dqn', 'dyna_dqn', 'mcts'\]",
    id="cli-run-discrete-env",
)
def _(ctx: Ctx) -> list[str]:
    ctx.keep("no run directory", (ctx.tmp / "run").exists)
    return ["run", "--out", str(ctx.tmp / "run"), *tiny_args('env.id="CartPole-v1"')]


@cli_case(
    ConfigError,
    r"model\.pyro_model = 'missing_model\.py:model': file 'missing_model\.py' not found",
    id="cli-run-pyro-model-missing-file",
)
def _(ctx: Ctx) -> list[str]:
    ctx.keep("no run directory", (ctx.tmp / "run").exists)
    return [
        "run",
        "--out",
        str(ctx.tmp / "run"),
        *tiny_args("model.kind=pyro", "model.pyro_model=missing_model.py:model"),
    ]


# ------------------------------------------------------------ shapes and values
def _buffer(ctx: Ctx) -> ReplayBuffer:
    buf = ReplayBuffer(3, 1, 10, torch.tensor([-2.0]), torch.tensor([2.0]))
    buf.add([1.0, 0.0, 0.0], [0.5], -1.0, [1.0, 0.1, 0.2], False, False)
    ctx.keep("replay buffer", lambda: (len(buf), buf.state_dict()))
    return buf


@case(
    DataError,
    r"obs has shape \(2,\), expected \(3,\) .*one transition.*check that the environment matches"
    r" the buffer",
    id="buffer-wrong-obs-shape",
)
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([0.0, 0.0], [0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(DataError, r"action has shape \(2,\), expected \(1,\)", id="buffer-wrong-action-shape")
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([0.0, 0.0, 0.0], [0.5, 0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(
    DataError,
    r"obs is a scalar; pass one observation of shape \(3,\) or a batch \(N, 3\)",
    id="buffer-scalar-obs",
)
def _(ctx: Ctx) -> None:
    _buffer(ctx).add(1.0, [0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(DataError, r"obs contains NaN or inf .*nothing was stored", id="buffer-nan-obs")
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([np.nan, 0.0, 0.0], [0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(DataError, r"reward contains NaN or inf .*nothing was stored", id="buffer-inf-reward")
def _(ctx: Ctx) -> None:
    obs = torch.zeros(2, 3)
    _buffer(ctx).add(obs, torch.zeros(2, 1), torch.tensor([0.0, np.inf]), obs, [0, 0], [0, 0])


@case(
    DataError,
    r"action \[3\.0\] \(transition 0\) is outside the action space .*clip actions to the bounds",
    id="buffer-action-out-of-bounds",
)
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([0.0, 0.0, 0.0], [3.0], 0.0, [0.0, 0.0, 0.0], False, False)


@case(DataError, r"terminated must be boolean \(0/1\), got 0\.5", id="buffer-non-boolean-flag")
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([0.0, 0.0, 0.0], [0.5], 0.0, [0.0, 0.0, 0.0], 0.5, False)


@case(DataError, r"obs could not be converted to a tensor .*pass numbers", id="buffer-ragged-obs")
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([[0.0, 0.0, 0.0], [0.0]], [0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(
    DataError,
    r"reward has shape \(2,\), expected \(\) .*one transition",
    id="buffer-single-transition-two-rewards",
)
def _(ctx: Ctx) -> None:
    _buffer(ctx).add([0.0, 0.0, 0.0], [0.5], [0.0, 1.0], [0.0, 0.0, 0.0], False, False)


@case(
    DataError,
    r"give both action_low and action_high \(or neither, for no bound check\); got only action_low",
    id="buffer-only-one-bound",
)
def _(ctx: Ctx) -> None:
    ReplayBuffer(3, 1, 10, action_low=torch.tensor([-1.0]))


@case(
    DataError,
    r"ReplayBuffer is full \(1/1\) and cannot take 1 more; create it with a larger capacity",
    id="buffer-overflow",
)
def _(ctx: Ctx) -> None:
    buf = ReplayBuffer(3, 1, 1)
    buf.add([0.0, 0.0, 0.0], [0.5], 0.0, [0.0, 0.0, 0.0], False, False)
    ctx.keep("replay buffer", lambda: (len(buf), buf.state_dict()))
    buf.add([0.0, 0.0, 0.0], [0.5], 0.0, [0.0, 0.0, 0.0], False, False)


@case(
    DataError,
    r"action_low and action_high must have shape \(2,\) \(action_dim\), got \(3,\) and \(3,\)",
    id="buffer-bounds-wrong-shape",
)
def _(ctx: Ctx) -> None:
    ReplayBuffer(2, 2, 10, torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]))


@case(
    DataError,
    r"capacity 1000000000000000 is too large: .*GiB.*; lower experiment\.episodes or"
    r" env\.episode_length",
    id="buffer-capacity-too-large",
)
def _(ctx: Ctx) -> None:
    ReplayBuffer(3, 1, 10**15)


@case(
    DataError,
    r"ReplayBuffer state is missing \['action', .*\]; pass a dict from"
    r" ReplayBuffer\.state_dict\(\)",
    id="buffer-load-state-missing-keys",
)
def _(ctx: Ctx) -> None:
    _buffer(ctx).load_state_dict({"obs": torch.zeros(2, 3)})


@case(
    DataError,
    r"the state holds 20 transitions but the ReplayBuffer's capacity is 10",
    id="buffer-load-state-over-capacity",
)
def _(ctx: Ctx) -> None:
    big = random_buffer(20)
    _buffer(ctx).load_state_dict(big.state_dict())


@case(
    ModelError,
    r"the ensemble has not been fitted; call fit\(buffer\) first",
    id="model-predict-before-fit",
)
def _(ctx: Ctx) -> None:
    ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8]).predict(
        torch.zeros(4, 3), torch.zeros(4, 1)
    )


@case(DataError, r"obs must have shape \(B, 3\), got \(4, 2\)", id="model-predict-wrong-obs-shape")
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").predict(torch.zeros(4, 2), torch.zeros(4, 1))


@case(
    DataError,
    r"action has 3 rows but obs has 4; pass matching batches",
    id="model-predict-mismatched-rows",
)
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").predict(torch.zeros(4, 3), torch.zeros(3, 1))


@case(DataError, r"obs must be a torch\.Tensor, got ndarray", id="model-predict-numpy-input")
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").predict(np.zeros((4, 3)), torch.zeros(4, 1))


@case(
    DataError,
    r"obs contains NaN or inf \(row 1: \[0\.0, 0\.0, nan\]\); drop or fix those rows",
    id="model-predict-nan-input",
)
def _(ctx: Ctx) -> None:
    obs = torch.zeros(4, 3)
    obs[1, 2] = float("nan")
    ctx.fixture("ensemble").predict(obs, torch.zeros(4, 1))


@case(DataError, r"number of functions must be >= 1, got 0", id="model-sample-functions-n0")
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").sample_functions(0)


@case(DataError, r"num_functions must be >= 1 or None, got 0", id="model-predict-num-functions-0")
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").predict(torch.zeros(4, 3), torch.zeros(4, 1), num_functions=0)


@case(
    DataError,
    r"FunctionSample of 2 functions expects obs of shape \(2, B, 3\), got \(4, 3\)",
    id="model-function-sample-2d-obs",
)
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").sample_functions(2)(torch.zeros(4, 3), torch.zeros(4, 1))


@case(
    DataError,
    r"expects action of shape \(2, 4, 1\) to go with obs \(2, 4, 3\), got \(2, 4, 2\)",
    id="model-function-sample-wrong-action",
)
def _(ctx: Ctx) -> None:
    ctx.fixture("ensemble").sample_functions(2)(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2))


@case(
    DataError,
    r"need at least 2 transitions to fit a GP, got 1; collect more",
    id="gp-fit-one-transition",
)
def _(ctx: Ctx) -> None:
    ExactGPDynamics(3, 1, training_steps=1).fit(random_buffer(1))


@case(
    ModelError,
    r"ExactGPDynamics has not been fitted; call fit\(buffer\) first",
    id="gp-sample-before-fit",
)
def _(ctx: Ctx) -> None:
    ExactGPDynamics(3, 1).sample_functions(2)


@case(DataError, r"start_obs must have shape \(3,\), got \(1, 3\)", id="rollout-wrong-start-obs")
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"))(torch.zeros(1, 3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"actions must have shape \(population, 3, 1\), got \(4, 5, 1\)",
    id="rollout-wrong-actions-shape",
)
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"))(torch.zeros(3), torch.zeros(4, 5, 1))


@case(
    DataError,
    r"start_obs must be a torch\.Tensor, got ndarray; pass torch\.as_tensor\(obs\)",
    id="rollout-numpy-start-obs",
)
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"))(np.zeros(3, np.float32), torch.zeros(4, 3, 1))


@case(DataError, r"start_obs contains NaN or inf", id="rollout-nan-start-obs")
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"))(torch.tensor([0.0, np.nan, 0.0]), torch.zeros(4, 3, 1))


@case(
    ConfigError,
    r"unknown propagation 'ts_infinity'; choose one of \['ts_inf'",
    id="rollout-unknown-propagation",
)
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"), propagation="ts_infinity")


@case(
    ConfigError,
    r"'moment_matching' needs an exact GP with the squared-exponential kernel, got a"
    r" ProbabilisticEnsemble; use model\.kind = 'gp'",
    id="rollout-moment-matching-with-ensemble",
)
def _(ctx: Ctx) -> None:
    evaluator(ctx.fixture("ensemble"), propagation="moment_matching")


# ----------------------------------------------------------------- env spaces
@case(
    EnvError,
    r"CartPole-v1: continuous planners need a Box action space; got Discrete\(2\)\. Use a"
    r" continuous-action environment",
    id="env-discrete-action-make-env",
)
def _(ctx: Ctx) -> None:
    make_env("CartPole-v1")


@case(
    ConfigError,
    r"env\.id = 'CartPole-v1' has discrete actions \(Discrete\(2\)\); experiment\.mode = 'mpc'",
    id="env-discrete-action-runner",
)
def _(ctx: Ctx) -> None:
    try:
        run_experiment(tiny('env.id="CartPole-v1"'), ctx.tmp / "run")
    finally:
        assert not (ctx.tmp / "run").exists()


@case(
    EnvError,
    r"state models need a flat Box observation; got shape \(32, 32, 3\) \(images\?\)",
    id="env-image-obs-make-env",
)
def _(ctx: Ctx) -> None:
    make_env(IMAGE_ENV_ID)


@case(
    EnvError,
    r"state models need a flat Box observation; got shape \(32, 32, 3\)",
    id="env-image-obs-runner",
)
def _(ctx: Ctx) -> None:
    try:
        run_experiment(tiny(f'env.id="{IMAGE_ENV_ID}"'), ctx.tmp / "run")
    finally:
        assert not (ctx.tmp / "run").exists()


@case(
    DataError,
    r"obs has shape \(32, 32, 3\).*flat \(obs_dim,\) observations .*image",
    id="env-image-obs-into-buffer",
)
def _(ctx: Ctx) -> None:
    obs = np.zeros((32, 32, 3), np.uint8)
    _buffer(ctx).add(obs, [0.5], 0.0, obs, False, False)


@case(
    EnvError,
    r"continuous planners need a Box action space; got Discrete\(2\)",
    id="env-check-discrete-env",
)
def _(ctx: Ctx) -> None:
    env = gymnasium.make("CartPole-v1")
    try:
        check_continuous_env(env)
    finally:
        env.close()


@case(
    ConfigError,
    r"planners need finite action bounds .*gymnasium\.wrappers\.ClipAction",
    id="planner-unbounded-actions",
)
def _(ctx: Ctx) -> None:
    CEMPlanner(torch.tensor([-np.inf]), torch.tensor([np.inf]), horizon=3, population=8)


# ---------------------------------------------------------------- checkpoints
@case(
    UnsafeCheckpointError,
    r"would run code when loaded .*weights_only=True and refused it",
    id="checkpoint-crafted-pickle",
)
def _(ctx: Ctx) -> None:
    path = ctx.tmp / "ckpt_0001.pt"
    torch.save({"format_version": 1, "model": Evil()}, path)
    ctx.keep_tree(ctx.tmp)
    cwd = os.getcwd()
    os.chdir(ctx.tmp)
    try:
        load_checkpoint(path)
    finally:
        os.chdir(cwd)
        assert not (ctx.tmp / "PWNED").exists()  # the code did not run


@case(
    UnsafeCheckpointError,
    r"would run code when loaded \(it imports \w+\.system\); .*weights_only=True and refused it",
    id="checkpoint-raw-pickle",
)
def _(ctx: Ctx) -> None:
    path = ctx.tmp / "ckpt_0001.pt"
    path.write_bytes(pickle.dumps(Evil()))  # not torch.save's zip: a plain pickle
    ctx.keep_tree(ctx.tmp)
    cwd = os.getcwd()
    os.chdir(ctx.tmp)
    try:
        load_checkpoint(path)
    finally:
        os.chdir(cwd)
        assert not (ctx.tmp / "PWNED").exists()


@case(UnsafeCheckpointError, r"would run code when loaded", id="checkpoint-crafted-pickle-resume")
def _(ctx: Ctx) -> None:
    run_dir = ctx.copy_run()
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    payload = buf.getvalue()
    wrapper = {
        "format_version": 2,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    torch.save(wrapper, run_dir / "checkpoints" / "ckpt_0001.pt")
    ctx.keep_tree(run_dir)
    cwd = os.getcwd()
    os.chdir(ctx.tmp)
    try:
        resume_experiment(run_dir, progress=False)
    finally:
        os.chdir(cwd)
        assert not (ctx.tmp / "PWNED").exists()


@case(
    CheckpointError,
    r"is not a readable checkpoint .*truncated or corrupted",
    id="checkpoint-truncated",
)
def _(ctx: Ctx) -> None:
    path = ctx.copy_run() / "checkpoints" / "ckpt_0001.pt"
    path.write_bytes(path.read_bytes()[:300])
    load_checkpoint(path)


@case(CheckpointError, r"fails its SHA-256 check; the file is corrupted", id="checkpoint-bit-flip")
def _(ctx: Ctx) -> None:
    path = ctx.copy_run() / "checkpoints" / "ckpt_0001.pt"
    raw = bytearray(path.read_bytes())
    # torch.save pickles the payload bytes as latin-1 text in UTF-8: flip an ASCII byte
    # into another ASCII byte (a multi-byte character flipped may no longer decode, which
    # is refused earlier, as unreadable)
    pos = next(i for i in range(len(raw) // 2, len(raw)) if 0x20 <= raw[i] < 0x7E)
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    load_checkpoint(path)


@case(
    CheckpointError,
    r"empty\.pt is not a readable checkpoint .*truncated or corrupted",
    id="checkpoint-empty-file",
)
def _(ctx: Ctx) -> None:
    (ctx.tmp / "empty.pt").write_bytes(b"")
    load_checkpoint(ctx.tmp / "empty.pt")


@case(
    CheckpointError,
    r"has 5 transitions but the checkpoint expects 10; the transition log was truncated or"
    r" replaced",
    id="checkpoint-log-shorter-than-checkpoint",
)
def _(ctx: Ctx) -> None:
    run_dir = ctx.copy_run()
    log = run_dir / "transitions.f32"
    width = TransitionLog(log, 3, 1).width
    log.write_bytes(log.read_bytes()[: 5 * width * 4])
    ctx.keep_tree(run_dir)
    resume_experiment(run_dir, progress=False)


@case(
    CheckpointError,
    r"ckpt_0001\.pt is missing \['num_transitions'.*\]",
    id="checkpoint-missing-keys-resume",
)
def _(ctx: Ctx) -> None:
    run_dir = ctx.copy_run()
    save_checkpoint(run_dir / "checkpoints" / "ckpt_0001.pt", {"episodes_done": 1})
    ctx.keep_tree(run_dir)
    resume_experiment(run_dir, progress=False)


@case(
    ModelError,
    r"saved ensemble does not match this configuration \(.*size mismatch for weights\.0.*\); load"
    r" it with the config it was saved with \(the model was left unchanged\)",
    id="checkpoint-ensemble-state-mismatch",
)
def _(ctx: Ctx) -> None:
    model = make_ensemble()
    other = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[16], max_epochs=1)
    ctx.keep("fitted ensemble", model.state_dict)
    model.load_state_dict(other.state_dict())


@case(
    ModelError,
    r"saved ensemble does not match this configuration .*'fitted'",
    id="checkpoint-ensemble-state-missing-key",
)
def _(ctx: Ctx) -> None:
    model = make_ensemble()
    state = model.state_dict()
    del state["fitted"]
    ctx.keep("fitted ensemble", model.state_dict)
    model.load_state_dict(state)


@case(
    ModelError,
    r"saved Pyro dynamics state is missing 'latent_shapes'; load a state_dict\(\) of a model"
    r" built with the same arguments",
    id="checkpoint-pyro-state-missing-key",
)
def _(ctx: Ctx) -> None:
    model = PyroDynamics(linear_model, 1, 1, num_steps=3)
    model.load_state_dict({"inference": "svi", "guide": "normal", "fitted": True})


# ------------------------------------------------------------ user Pyro models
def _model_without_next_obs(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        pyro.sample("y", dist.Normal(a.unsqueeze(-1) * obs, 0.1).to_event(1), obs=next_obs)


def _model_wrong_event_shape(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = (a.unsqueeze(-1) * obs).repeat(1, 2)  # (N, 2) for obs_dim 1
        pyro.sample("next_obs", dist.Normal(loc, 0.1).to_event(1), obs=next_obs)


def _model_that_raises(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    pyro.sample("a", dist.Normal(0.0, 1.0))
    raise ZeroDivisionError("the user's bug")


def _model_not_vectorizable(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = (a * obs[:, 0]).unsqueeze(-1)  # obs[:, 0] instead of obs[..., 0]
        pyro.sample("next_obs", dist.Normal(loc, 0.1).to_event(1), obs=next_obs)


def _model_with_param(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    a = pyro.param("a", torch.tensor(0.5))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        pyro.sample("next_obs", dist.Normal(a * obs, s).to_event(1), obs=next_obs)


def _fit_user_model(model_fn: Callable[..., None]) -> None:
    PyroDynamics(model_fn, 1, 1, num_steps=2).fit(random_buffer(8, 1, 1))


@case(
    ModelError,
    r"has no sample site named 'next_obs' \(its sites: \['a', 'y'\]\); end it with"
    r" pyro\.sample\('next_obs'",
    id="pyro-model-without-next-obs",
)
def _(ctx: Ctx) -> None:
    _fit_user_model(_model_without_next_obs)


@case(
    ModelError,
    r"site 'next_obs' has event shape \(2,\), expected \(1,\) \(obs_dim\); .*to_event\(1\)",
    id="pyro-model-wrong-event-shape",
)
def _(ctx: Ctx) -> None:
    _fit_user_model(_model_wrong_event_shape)


@case(
    ModelError,
    r"the Pyro model raised ZeroDivisionError when traced as model\(obs \(8, 1\).*the user's bug;"
    r" fix the model",
    id="pyro-model-raises",
)
def _(ctx: Ctx) -> None:
    _fit_user_model(_model_that_raises)


@case(
    ModelError,
    r"the model is not vectorizable: .*index with `\.\.\.`",
    id="pyro-model-not-vectorizable",
)
def _(ctx: Ctx) -> None:
    _fit_user_model(_model_not_vectorizable)


@case(
    ModelError,
    r"declares pyro\.param sites \['a'\]; make unknown quantities latent pyro\.sample sites",
    id="pyro-model-uses-param",
)
def _(ctx: Ctx) -> None:
    _fit_user_model(_model_with_param)


@case(ConfigError, r"model_fn must be a callable Pyro model, got str", id="pyro-model-not-callable")
def _(ctx: Ctx) -> None:
    PyroDynamics("my_models.py:model", 1, 1)  # type: ignore[arg-type]


@case(
    DataError,
    r"buffer has obs_dim=3, action_dim=1 but the model was built for 1, 1; pass the matching"
    r" buffer",
    id="pyro-fit-wrong-buffer",
)
def _(ctx: Ctx) -> None:
    PyroDynamics(linear_model, 1, 1, num_steps=2).fit(random_buffer(8))


@case(
    ConfigError,
    r"model\.pyro_model = '.*missing_model\.py:model': file '.*missing_model\.py' not found",
    id="pyro-model-missing-file",
)
def _(ctx: Ctx) -> None:
    spec = f"{ctx.tmp / 'missing_model.py'}:model"
    Experiment(tiny("model.kind=pyro", f"model.pyro_model={spec!r}"), ctx.tmp / "run")


@case(
    ConfigError,
    r"has no function 'dynamics'; its functions are \['other'\]",
    id="pyro-model-missing-function",
)
def _(ctx: Ctx) -> None:
    (ctx.tmp / "user_models.py").write_text("def other(obs, action, next_obs=None):\n    pass\n")
    spec = f"{ctx.tmp / 'user_models.py'}:dynamics"
    Experiment(tiny("model.kind=pyro", f"model.pyro_model={spec!r}"), ctx.tmp / "run")


@case(
    DataError,
    r"FunctionSample of 2 functions expects action of shape \(2, 4, 1\) to go with obs \(2, 4,"
    r" 1\), got \(2, 4, 3\)",
    id="pyro-function-sample-wrong-action",
)
def _(ctx: Ctx) -> None:
    ctx.fixture("pyro_model").sample_functions(2)(torch.zeros(2, 4, 1), torch.zeros(2, 4, 3))


# ---------------------------------------------------------- custom reward functions
@case(
    DataError,
    r"reward_fn returned shape \(2, 4, 1\), expected \(2, 4\): one value per transition.*\(obs"
    r" \(\.\.\., D\), action \(\.\.\., A\), next_obs \(\.\.\., D\)\) -> reward \(\.\.\.\)",
    id="reward-fn-wrong-shape",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(ctx.fixture("ensemble"), lambda o, a, n: -o.square().sum(-1, keepdim=True))
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(DataError, r"reward_fn returned shape \(\), expected \(2, 4\)", id="reward-fn-scalar")
def _(ctx: Ctx) -> None:
    ev = evaluator(ctx.fixture("ensemble"), lambda o, a, n: torch.tensor(1.0))
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"reward_fn returned NaN or inf for finite .*inputs .*check the reward function",
    id="reward-fn-non-finite",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(ctx.fixture("ensemble"), lambda o, a, n: torch.log(o[..., 0] - 10.0))
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"reward_fn raised TypeError: .*; it must be a batched function",
    id="reward-fn-raises",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(ctx.fixture("ensemble"), lambda o, a: o.sum(-1))
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError, r"reward_fn returned a list, expected a torch\.Tensor", id="reward-fn-not-a-tensor"
)
def _(ctx: Ctx) -> None:
    ev = evaluator(ctx.fixture("ensemble"), lambda o, a, n: o.sum(-1).tolist())
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"termination_fn returned dtype torch\.float32, expected torch\.bool",
    id="termination-fn-not-bool",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(
        ctx.fixture("ensemble"), termination_fn=lambda o, a, n: (o[..., 0] > 0.5).float()
    )
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"reward_fn returned shape \(4, 1\), expected \(4,\)",
    id="reward-fn-wrong-shape-expectation",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(
        ctx.fixture("ensemble"),
        lambda o, a, n: -o.square().sum(-1, keepdim=True),
        propagation="expectation",
    )
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"expected_reward_fn returned shape \(\), expected \(4,\): one value per"
    r" transition.*\(next_obs_mean \(\.\.\., D\), next_obs_cov",
    id="expected-reward-fn-wrong-shape",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(
        ctx.fixture("se_gp"),
        propagation="moment_matching",
        expected_reward_fn=lambda mean, cov, action: mean.sum(),
    )
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


@case(
    DataError,
    r"reward_fn returned shape \(4, 12, 1\), expected \(4, 12\): one value per transition",
    id="reward-fn-wrong-shape-unscented",
)
def _(ctx: Ctx) -> None:
    ev = evaluator(
        ctx.fixture("se_gp"),
        lambda o, a, n: -n.square().sum(-1, keepdim=True),
        propagation="moment_matching",
    )
    ev(torch.zeros(3), torch.zeros(4, 3, 1))


# ----------------------------------------------------------------------- PILCO
def _pilco(ctx: Ctx) -> PILCO:
    task = PILCO_TASKS["bayes_mbrl/PendulumSwingUp-v0"]
    pilco = PILCO(task, torch.tensor([-2.0]), torch.tensor([2.0]), policy="linear", gp_steps=1)
    g = torch.Generator().manual_seed(0)
    pilco.add_rollout(torch.randn(6, 3, generator=g), torch.rand(5, 1, generator=g))
    ctx.keep("PILCO's data", lambda: (pilco.inputs, pilco.targets))
    return pilco


@case(DataError, r"the transitions contain NaN or inf; they were not added", id="pilco-rollout-nan")
def _(ctx: Ctx) -> None:
    obs = torch.zeros(4, 3)
    obs[2, 1] = float("nan")
    _pilco(ctx).add_rollout(obs, torch.zeros(3, 1))


@case(
    DataError,
    r"a rollout is obs \(T \+ 1, 3\) and actions \(T, 1\), got \(4, 3\) and \(4, 1\)",
    id="pilco-rollout-wrong-shapes",
)
def _(ctx: Ctx) -> None:
    _pilco(ctx).add_rollout(torch.zeros(4, 3), torch.zeros(4, 1))


@case(
    DataError,
    r"a rollout is obs \(T \+ 1, 3\) and actions \(T, 1\), got \(4,\)",
    id="pilco-rollout-1d-obs",
)
def _(ctx: Ctx) -> None:
    _pilco(ctx).add_rollout(torch.zeros(4), torch.zeros(3, 1))


@case(
    DataError,
    r"a rollout is obs .* numbers",
    id="pilco-rollout-not-numbers",
)
def _(ctx: Ctx) -> None:
    _pilco(ctx).add_rollout(np.array([["a", "b", "c"]] * 4), torch.zeros(3, 1))


# ===================================================================== the test
@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Ctx:
    context = Ctx(tmp_path, request)
    for name in ("_cmd_run", "_cmd_resume", "_cmd_analyze"):
        command = getattr(cli_module, name)

        def recording(args: Any, command: Callable[[Any], int] = command) -> int:
            try:
                return command(args)
            except BaseException as exc:
                context.cli_error = exc
                raise

        monkeypatch.setattr(cli_module, name, recording)
    return context


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [p.id for p in CASES]
    assert len(ids) >= 45 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("kind", "action", "error", "pattern"), CASES)
def test_bad_input_gets_a_named_bayes_mbrl_error(
    kind: str,
    action: Callable[[Ctx], Any],
    error: type[BayesMBRLError] | None,
    pattern: str,
    ctx: Ctx,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if kind == "api":
        with pytest.raises(Exception) as info:
            action(ctx)
        exc = info.value
        assert isinstance(exc, BayesMBRLError), f"bare {type(exc).__name__}: {exc}"
        assert error is not None and isinstance(exc, error), f"{type(exc).__name__}: {exc}"
        assert re.search(pattern, str(exc)), f"message {str(exc)!r} does not match {pattern!r}"
    else:
        argv = action(ctx)
        status = main(argv)
        captured = capsys.readouterr()
        text = captured.err + captured.out
        assert status != 0, text
        assert "Traceback" not in text, text
        assert re.search(pattern, captured.err), (
            f"stderr {captured.err!r} does not match {pattern!r}"
        )
        if error is None:
            assert ctx.cli_error is None and "usage:" in captured.err
        else:
            assert isinstance(ctx.cli_error, error), repr(ctx.cli_error)
    for label, getter, before in ctx.kept:
        assert freeze(getter()) == before, f"{label} changed"

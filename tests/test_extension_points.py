"""Extension points: registries, per-kind model sections, options, plugins, and the
agent/learner protocol as the runner sees it."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from bayes_mbrl.algorithms import ALGORITHMS, Agent, Learner
from bayes_mbrl.algorithms.base import check_learner
from bayes_mbrl.cli import components_help, main
from bayes_mbrl.config import (
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    model_section,
)
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.experiment import Experiment, run_experiment
from bayes_mbrl.models import MODELS
from bayes_mbrl.options import OptionError, Options, at_least, option
from bayes_mbrl.planning import OBJECTIVES, PLANNERS, PROPAGATIONS
from bayes_mbrl.registry import Registry

TINY = [
    "env.episode_length=10",
    "experiment.episodes=2",
    "experiment.progress=false",
    "model.num_members=2",
    "model.hidden_sizes=[8]",
    "model.max_epochs=2",
    "planner.population=10",
    "planner.iterations=1",
    "planner.particles=2",
    "planner.horizon=3",
]

# the flat [model] table every kind's config.toml held before sections were per kind
LEGACY_MODEL = {
    "kind": "gp",
    "num_members": 5,
    "hidden_sizes": [200, 200, 200],
    "activation": "silu",
    "learning_rate": 0.05,
    "weight_decay": 5e-05,
    "batch_size": 64,
    "max_epochs": 100,
    "patience": 5,
    "val_fraction": 0.1,
    "prior_scale": 1.0,
    "noise": "heteroscedastic",
    "inference": "svi",
    "num_samples": 200,
    "warmup_steps": 200,
    "num_chains": 1,
    "max_tree_depth": 10,
    "pyro_model": "",
    "guide": "normal",
    "num_steps": 100,
    "kernel": "se",
    "num_features": 256,
    "num_inducing": 256,
    "max_train_points": 600,
}


# ------------------------------------------------------------------------ registries
def test_registry_lookup_errors_list_the_choices_and_a_close_match() -> None:
    reg: Registry[int] = Registry("widget", "section.widget")
    reg.add("alpha", 1, summary="the first")
    reg.add("beta", 2)
    assert reg["alpha"] == 1 and list(reg) == ["alpha", "beta"] and "beta" in reg
    with pytest.raises(
        ConfigError, match=r"unknown section\.widget 'alpah'.*'alpha', 'beta'"
    ) as info:
        reg["alpah"]
    assert "did you mean 'alpha'" in str(info.value)
    assert "alpha: the first" in reg.help()


def test_registry_refuses_a_second_object_under_a_taken_name() -> None:
    reg: Registry[object] = Registry("widget", "section.widget")

    class A:
        pass

    class B:
        pass

    reg.add("a", A)
    reg.add("a", A)  # the same object again (a module imported twice): fine
    with pytest.raises(ConfigError, match="already registered"):
        reg.add("a", B)
    with pytest.raises(ConfigError, match="name"):
        reg.add("", B)


def test_builtin_components_are_registered() -> None:
    assert {"ensemble", "bnn", "pyro", "gp", "sparse_gp"} <= set(MODELS)
    assert {"mpc", "v1.0", "v0.5", "pilco"} <= set(ALGORITHMS)
    assert {"cem", "mppi", "random_shooting"} <= set(PLANNERS)
    assert {"ts_inf", "ts_1", "expectation", "moment_matching"} <= set(PROPAGATIONS)
    assert {"mean", "mean_minus_std", "cvar", "optimistic"} <= set(OBJECTIVES)
    text = components_help()
    for name in ("model.kind", "experiment.mode", "planner.kind", "sparse_gp", "pilco.num_basis"):
        assert name in text


def test_cli_components_lists_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    assert "model.num_members = 5" in out and "planner.propagation" in out


# --------------------------------------------------------------------------- options
@dataclasses.dataclass
class _Opts(Options):
    width: int = option(3, at_least(1, "an integer"), "a width")
    rate: float = option(0.5, None, "a rate")


def test_options_check_types_and_bounds_and_convert_ints_for_floats() -> None:
    assert _Opts(rate=1).rate == 1.0 and isinstance(_Opts(rate=1).rate, float)
    with pytest.raises(OptionError) as info:
        _Opts(width=0)
    assert (info.value.name, info.value.value, info.value.expected) == (
        "width",
        0,
        "an integer >= 1",
    )
    with pytest.raises(OptionError, match="expected an integer"):
        _Opts(width="3")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"^MyModel: width = 0"):
        _Opts.of("MyModel", width=0)
    with pytest.raises(ConfigError, match="MyModel: unknown option 'widht'; did you mean 'width'"):
        _Opts.of("MyModel", widht=2)


# ---------------------------------------------------------------- per-kind sections
def test_each_kind_has_its_own_section_with_only_its_keys() -> None:
    gp = config_from_dict({"model": {"kind": "gp", "num_steps": 7}}).model
    assert gp.kind == "gp" and gp.num_steps == 7
    assert not hasattr(gp, "num_members")
    ens = config_from_dict({"model": {"num_members": 3}}).model
    assert ens.kind == "ensemble" and ens.num_members == 3 and not hasattr(ens, "num_steps")


def test_a_key_of_another_kind_names_the_kinds_it_belongs_to() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"kind": "gp", "num_members": 3}})
    msg = str(info.value)
    assert "'model.num_members' is not an option of model.kind = 'gp'" in msg
    assert "'ensemble'" in msg and "num_steps" in msg
    with pytest.raises(ConfigError, match=r"override 'model.num_members=3'"):
        load_config("pendulum-gp-mpc", ["model.num_members=3"])


def test_changing_the_kind_by_override_starts_the_new_kind_from_its_defaults() -> None:
    cfg = load_config("pendulum-gp-mpc", ["model.kind=sparse_gp", "model.num_inducing=16"])
    assert cfg.model.kind == "sparse_gp" and cfg.model.num_inducing == 16
    # the file's [model] values were chosen for the exact GP: none is carried over
    assert cfg.model == model_section("sparse_gp", num_inducing=16)
    cfg = load_config("pendulum-gp-mpc", ["model.kind=sparse_gp", "model.learning_rate=0.05"])
    assert cfg.model.learning_rate == 0.05


def test_a_config_written_before_per_kind_sections_still_loads(tmp_path: Path) -> None:
    cfg = config_from_dict({"model": dict(LEGACY_MODEL), "pilco": {"num_basis": 50}})
    assert cfg.model.kind == "gp"
    assert (cfg.model.num_steps, cfg.model.learning_rate, cfg.model.max_train_points) == (
        100,
        0.05,
        600,
    )
    keys = set(config_to_dict(cfg)["model"])
    assert keys >= {"kind", "kernel", "num_steps", "learning_rate", "num_features"}
    assert not keys & {"num_members", "hidden_sizes", "guide", "num_inducing", "prior_scale"}
    # a bad value of the kind's own keys is still refused
    with pytest.raises(ConfigError, match=r"'model\.num_steps'"):
        config_from_dict({"model": {**LEGACY_MODEL, "num_steps": -1}})


def test_mode_sections_are_read_into_the_modes_options(tmp_path: Path) -> None:
    cfg = load_config("cartpole-swingup-pilco", ["pilco.num_basis=7"])
    assert cfg.pilco.num_basis == 7 and cfg.mode_options is cfg.pilco
    with pytest.raises(ConfigError, match=r"'pilco\.policy'.*'rbf', 'linear'"):
        load_config("cartpole-swingup-pilco", ["pilco.policy=mlp"])
    with pytest.raises(ConfigError, match=r"'model\.kind'.*'gp' with model\.kernel = 'se'"):
        load_config("pendulum-ensemble-mpc", ["experiment.mode=pilco"])
    # an MPC config does not write the [pilco] section it does not use
    path = tmp_path / "c.toml"
    dump_config(load_config(None), path)
    assert "[pilco]" not in path.read_text()


# ------------------------------------------------------------------------- plugins
PLUGIN = '''
from dataclasses import dataclass

import torch

from bayes_mbrl.algorithms import ALGORITHMS, Algorithm, AlgorithmParts, RandomAgent
from bayes_mbrl.models import FitReport
from bayes_mbrl.options import Options, at_least, option


@dataclass
class ConstantOptions(Options):
    reps: int = option(1, at_least(1, "an integer"), "how often to repeat nothing")


class CountingLearner:
    """Counts its fits (a learner with no model)."""

    def __init__(self) -> None:
        self.fits = 0

    def fit(self, data, generator=None, progress=None):
        self.fits += 1
        if progress is not None:
            progress(1, float(len(data)), float("nan"))
        return FitReport(train_losses=[float(len(data))], epochs=1)

    def progress_total(self):
        return 1

    def state_dict(self):
        return {"fits": torch.tensor(self.fits)}

    def load_state_dict(self, state):
        self.fits = int(state["fits"])


@ALGORITHMS.register("plugin_random", options=ConstantOptions)
class PluginRandom(Algorithm):
    """Random actions with a learner that counts its fits."""

    def build(self, config, task, generator):
        learner = CountingLearner()
        agent = RandomAgent(task.action_low, task.action_high, generator)
        return AlgorithmParts(agent=agent, learner=learner, title="plugin")
'''


def test_a_plugin_module_registers_a_mode_that_the_runner_runs(tmp_path: Path) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    overrides = [
        f'experiment.plugins=["{plugin}"]',
        "experiment.mode=plugin_random",
        "plugin_random.reps=2",
        "experiment.episodes=3",
        "env.episode_length=10",
        *TINY[2:],
    ]
    cfg = load_config(None, overrides)
    assert cfg.plugin_random.reps == 2
    run_dir = tmp_path / "run"
    result = run_experiment(cfg, run_dir)
    assert len(result.returns) == 3
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # fitted before each planned episode on all data so far: 10, then 20 transitions
    assert [r["train_loss"] for r in rows] == ["nan", "10", "20"]
    assert [r["policy"] for r in rows] == ["random", "plugin_random", "plugin_random"]
    # the saved config names the plugin, so resume and load work from the file alone
    assert load_config(run_dir / "config.toml").plugin_random.reps == 2
    with pytest.raises(ConfigError, match=r"experiment\.plugins.*not found"):
        load_config(None, ['experiment.plugins=["no/such/file.py"]'])


def test_the_runner_sees_only_agent_and_learner() -> None:
    for mode in ("mpc", "v0.5", "pilco"):
        preset = "cartpole-swingup-pilco" if mode == "pilco" else "pendulum-ensemble-mpc"
        cfg = load_config(preset, ["experiment.progress=false", f"experiment.mode={mode}"])
        exp = Experiment(cfg, Path("/nonexistent-run-dir"))
        assert isinstance(exp.parts.agent, Agent)
        assert isinstance(exp.parts.learner, Learner)
        assert exp.parts.refits_each_episode == (mode != "v0.5")
        assert (exp.parts.model is None) == (mode == "pilco")


def test_a_learner_whose_fit_takes_no_progress_is_named_before_the_run() -> None:
    class OldModel:
        def fit(self, data, generator=None):  # type: ignore[no-untyped-def]
            return None

    class AnyKeywords:
        def fit(self, data, **kwargs):  # type: ignore[no-untyped-def]
            return None

    check_learner(AnyKeywords())
    with pytest.raises(ModelError, match=r"OldModel\.fit takes no 'progress' argument"):
        check_learner(OldModel())

"""Tests of bayes_mbrl.config: presets, overrides, validation, TOML round trip."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bayes_mbrl.config import (
    DEFAULT_PRESET,
    Config,
    EnvConfig,
    ExperimentConfig,
    PlannerConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    list_presets,
    load_config,
    model_section,
    source_name,
)
from bayes_mbrl.errors import BayesMBRLError, ConfigError
from bayes_mbrl.models import MODELS

# --------------------------------------------------------------------- defaults/presets


def test_defaults_are_the_documented_experiment() -> None:
    cfg = Config()
    assert cfg.experiment == ExperimentConfig(
        seed=0,
        episodes=8,
        seed_episodes=1,
        mode="mpc",
        device="cpu",
        checkpoint_keep=2,
        progress=True,
    )
    assert cfg.env == EnvConfig(id="Pendulum-v1", episode_length=200)
    assert cfg.model.kind == "ensemble" and cfg.model.hidden_sizes == [200, 200, 200]
    assert cfg.planner.kind == "icem" and cfg.planner.horizon == 30
    assert (cfg.planner.population, cfg.planner.iterations) == (100, 3)
    assert cfg.planner.precision == "auto"
    assert set(MODELS.names()) >= {"ensemble", "bnn", "pyro", "gp", "sparse_gp"}


def test_hidden_sizes_default_is_not_shared() -> None:
    a, b = model_section(), model_section()
    a.hidden_sizes.append(1)
    assert b.hidden_sizes == [200, 200, 200]


def test_load_none_is_default_preset_and_equals_dataclass_defaults() -> None:
    assert load_config(None) == Config()
    assert load_config(DEFAULT_PRESET) == Config()


def test_list_presets_names_and_descriptions() -> None:
    presets = list_presets()
    assert set(presets) >= {
        "pendulum-ensemble-mpc",
        "pendulum-ensemble-mpc-bf16",
        "mountaincar-ensemble-mpc",
        "cartpole-swingup-ensemble-mpc",
    }
    for name, description in presets.items():
        assert description, f"preset {name} has no description line"
        assert not description.startswith("#")
        assert "\n" not in description


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_loads(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    # Presets write every key out, so they document the full configuration.
    import tomllib
    from importlib import resources

    text = resources.files("bayes_mbrl").joinpath("presets", f"{name}.toml").read_text()
    data = tomllib.loads(text)
    assert data == config_to_dict(cfg)


def test_preset_contents() -> None:
    bf16 = load_config("pendulum-ensemble-mpc-bf16")
    assert bf16.planner.precision == "bfloat16"
    cem = load_config("pendulum-ensemble-cem").planner
    assert dataclasses.replace(bf16.planner, precision="float32") == cem
    assert (cem.kind, cem.population, cem.iterations, cem.precision) == ("cem", 200, 5, "float32")
    mc = load_config("mountaincar-ensemble-mpc")
    assert mc.env == EnvConfig(id="MountainCarContinuous-v0", episode_length=999)
    assert mc.experiment.episodes == 10 and mc.planner.horizon == 30
    assert mc.planner.objective == "info_gain" and mc.mpc.replan_every == 4
    cp = load_config("cartpole-swingup-ensemble-mpc")
    assert cp.env == EnvConfig(id="bayes_mbrl/CartPoleSwingUp-v0", episode_length=40)
    assert cp.planner.horizon == 20 and cp.experiment.episodes == 10


def test_source_name() -> None:
    assert source_name(None) == DEFAULT_PRESET
    assert source_name("mountaincar-ensemble-mpc") == "mountaincar-ensemble-mpc"
    assert source_name(Path("some/dir/my-exp.toml")) == "my-exp"
    assert source_name("some/dir/my-exp.toml") == "my-exp"


# ------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("planner.horizon=20", "planner", "horizon", 20),
        ("model.learning_rate=3e-4", "model", "learning_rate", 3e-4),
        ("model.weight_decay=0", "model", "weight_decay", 0.0),  # int -> float
        ("experiment.progress=false", "experiment", "progress", False),
        ('env.id="MountainCarContinuous-v0"', "env", "id", "MountainCarContinuous-v0"),
        ("env.id=MountainCarContinuous-v0", "env", "id", "MountainCarContinuous-v0"),
        ("planner.kind=mppi", "planner", "kind", "mppi"),
        ("model.hidden_sizes=[64, 32]", "model", "hidden_sizes", [64, 32]),
        (" planner.horizon = 7 ", "planner", "horizon", 7),
    ],
)
def test_override_of_each_type(override: str, section: str, key: str, expected: Any) -> None:
    cfg = load_config(None, [override])
    value = getattr(getattr(cfg, section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_apply_in_order_and_leave_the_rest() -> None:
    cfg = load_config(None, ["planner.horizon=20", "planner.horizon=25"])
    assert cfg.planner.horizon == 25
    assert dataclasses.replace(cfg.planner, horizon=Config().planner.horizon) == Config().planner


def test_seed_argument_overrides_seed_and_set() -> None:
    assert load_config(None, seed=7).experiment.seed == 7
    assert load_config(None, ["experiment.seed=3"], seed=9).experiment.seed == 9
    assert load_config(None, ["experiment.seed=3"]).experiment.seed == 3


def test_override_on_file_missing_the_section(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text('[env]\nid = "MountainCarContinuous-v0"\n')
    cfg = load_config(path, ["planner.horizon=3"])
    assert cfg.env.id == "MountainCarContinuous-v0"
    assert cfg.planner.horizon == 3
    assert cfg.model == model_section()


@pytest.mark.parametrize("override", ["planner.horizon", "horizon=3", "a.b.c=1", "=3", ".x=1"])
def test_malformed_override_names_expected_form(override: str) -> None:
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        load_config(None, [override])


def test_override_with_broken_toml_value_is_an_error_not_a_string() -> None:
    with pytest.raises(ConfigError, match=r"model\.hidden_sizes"):
        load_config(None, ["model.hidden_sizes=[1, 2"])


# ------------------------------------------------------------------ unknown keys


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["planner.horizn=20"])
    msg = str(info.value)
    assert "unknown key 'planner.horizn'" in msg
    assert "did you mean 'planner.horizon'?" in msg


def test_key_in_wrong_section_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'model\.hidden_sizes'"):
        config_from_dict({"planner": {"hidden_sizes": [3]}})


def test_unknown_section() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"plannr": {"horizon": 3}})
    assert "unknown section 'plannr'" in str(info.value)
    assert "'planner'" in str(info.value)


def test_top_level_key_suggests_its_section() -> None:
    with pytest.raises(ConfigError, match=r"planner\.horizon"):
        config_from_dict({"horizon": 3})


def test_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="section 'planner' must be a table"):
        config_from_dict({"planner": 3})


# ------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("planner", "horizon", "20", "an integer"),  # string for int
        ("planner", "horizon", True, "an integer"),  # bool for int
        ("planner", "horizon", 20.0, "an integer"),  # float for int
        ("model", "hidden_sizes", ["200", "200"], "a list of integers"),
        ("model", "hidden_sizes", [200, True], "a list of integers"),
        ("model", "hidden_sizes", 200, "a list of integers"),
        ("model", "learning_rate", "0.001", "a number"),
        ("model", "learning_rate", True, "a number"),
        ("experiment", "progress", 1, "true or false"),
        ("env", "id", 3, "a string"),
    ],
)
def test_wrong_type(section: str, key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    msg = str(info.value)
    assert f"'{section}.{key}'" in msg
    assert repr(value) in msg
    assert expected in msg


def test_float_field_accepts_int_and_converts() -> None:
    cfg = config_from_dict({"planner": {"risk_beta": 2}})
    assert cfg.planner.risk_beta == 2.0 and isinstance(cfg.planner.risk_beta, float)


def test_non_finite_float_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'model\.learning_rate'.*finite"):
        config_from_dict({"model": {"learning_rate": float("inf")}})


# ------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("experiment.seed", -1),
        ("experiment.episodes", 0),
        ("experiment.seed_episodes", 0),
        ("experiment.checkpoint_keep", 0),
        ("experiment.device", "gpu"),
        ("env.episode_length", 0),
        ("env.id", ""),
        ("model.num_members", 0),
        ("model.hidden_sizes", []),
        ("model.hidden_sizes", [200, 0]),
        ("model.learning_rate", 0.0),
        ("model.weight_decay", -1e-5),
        ("model.batch_size", 0),
        ("model.max_epochs", 0),
        ("model.patience", 0),
        ("model.val_fraction", 0.5),
        ("model.val_fraction", -0.1),
        ("planner.horizon", 0),
        ("planner.population", 0),
        ("planner.iterations", 0),
        ("planner.elite_fraction", 0.0),
        ("planner.elite_fraction", 1.5),
        ("planner.momentum", 1.0),
        ("planner.momentum", -0.1),
        ("planner.particles", 0),
        ("planner.risk_beta", -0.5),
        ("planner.cvar_alpha", 0.0),
        ("planner.cvar_alpha", 1.01),
        ("planner.mppi_temperature", 0.0),
        ("planner.mppi_noise_std", 0.0),
    ],
)
def test_out_of_range_names_key_and_value(dotted: str, value: Any) -> None:
    section, key = dotted.split(".")
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    msg = str(info.value)
    assert f"'{dotted}'" in msg
    assert repr(value) in msg
    assert "expected" in msg


def test_range_boundaries_that_are_allowed() -> None:
    cfg = config_from_dict(
        {
            "model": {"val_fraction": 0.0, "weight_decay": 0.0},
            "planner": {"elite_fraction": 1.0, "momentum": 0.0, "cvar_alpha": 1.0},
            "experiment": {"seed": 0, "device": "cuda:1"},
        }
    )
    assert cfg.model.val_fraction == 0.0 and cfg.planner.elite_fraction == 1.0
    assert cfg.experiment.device == "cuda:1"


@pytest.mark.parametrize(
    ("dotted", "value", "valid"),
    [
        ("experiment.mode", "v2", ["v0.5", "v1.0", "mpc"]),
        ("model.kind", "gpp", ["ensemble", "bnn", "pyro", "gp", "sparse_gp"]),
        ("model.activation", "gelu", ["silu", "relu", "tanh", "elu"]),
        ("planner.kind", "cme", ["cem", "mppi", "random_shooting"]),
        ("planner.propagation", "moment", ["ts_inf", "ts_1", "expectation"]),
        ("planner.objective", "max", ["mean", "mean_minus_std", "cvar", "optimistic"]),
        ("planner.precision", "float16", ["auto", "float32", "bfloat16"]),
    ],
)
def test_bad_choice_lists_valid_values(dotted: str, value: str, valid: list[str]) -> None:
    section, key = dotted.split(".")
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    msg = str(info.value)
    assert f"'{dotted}'" in msg and repr(value) in msg
    for choice in valid:
        assert repr(choice) in msg


def test_seed_episodes_not_above_episodes() -> None:
    with pytest.raises(ConfigError, match=r"experiment\.seed_episodes"):
        config_from_dict({"experiment": {"episodes": 3, "seed_episodes": 4}})
    cfg = config_from_dict({"experiment": {"episodes": 3, "seed_episodes": 3}})
    assert cfg.experiment.seed_episodes == 3


def test_error_says_where_the_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("[planner]\nhorizon = -3\n")
    with pytest.raises(ConfigError, match=r"exp\.toml"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'planner\.horizon=0'"):
        load_config(None, ["planner.horizon=0"])


def test_config_error_is_a_bayes_mbrl_error() -> None:
    with pytest.raises(BayesMBRLError):
        config_from_dict({"nope": {}})


# ------------------------------------------------------------------------ files


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[planner]\nhorizon = 3\nkind = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3" in msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_config(path)


def test_unknown_preset_name_suggests_close_preset() -> None:
    with pytest.raises(ConfigError, match="did you mean 'pendulum-ensemble-mpc'"):
        load_config("pendulum-ensembl-mpc")


def test_directory_is_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[env]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_config(path)


def test_file_with_only_some_keys_fills_defaults(tmp_path: Path) -> None:
    path = tmp_path / "partial.toml"
    path.write_text("[planner]\nkind = 'mppi'\n")
    cfg = load_config(path)
    assert cfg.planner.kind == "mppi"
    assert cfg == dataclasses.replace(Config(), planner=PlannerConfig(kind="mppi"))


def _non_default_config() -> Config:
    return Config(
        experiment=ExperimentConfig(
            seed=123, episodes=4, seed_episodes=2, mode="v1.0", progress=False
        ),
        env=EnvConfig(id="bayes_mbrl/CartPoleSwingUp-v0", episode_length=40),
        model=model_section(hidden_sizes=[7, 5], learning_rate=3.3e-4, val_fraction=0.0),
        planner=PlannerConfig(
            kind="mppi", precision="bfloat16", objective="cvar", cvar_alpha=0.05, momentum=0.0
        ),
    )


# built when the test runs, not when it is collected: a plugin registered by an earlier
# test (a mode with its own section) is then part of both sides of the round trip
@pytest.mark.parametrize("make", [Config, _non_default_config], ids=["cfg0", "cfg1"])
def test_dump_load_round_trip(tmp_path: Path, make: Any) -> None:
    cfg = make()
    path = tmp_path / "config.toml"
    dump_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert isinstance(loaded.model.learning_rate, float)
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_dump_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    dump_config(Config(), path)
    cfg = _non_default_config()
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert os.stat(path).st_mode & 0o444 == 0o444


def test_dump_into_missing_directory_raises_bayes_error(tmp_path: Path) -> None:
    with pytest.raises(BayesMBRLError, match=r"config\.toml"):
        dump_config(Config(), tmp_path / "missing" / "config.toml")


def test_config_to_dict_round_trips_through_from_dict() -> None:
    cfg = _non_default_config()
    d = config_to_dict(cfg)
    assert d["planner"]["kind"] == "mppi"
    assert set(d) == {"experiment", "env", "model", "planner"}  # no [pilco]: mode v1.0
    assert config_from_dict(d) == cfg
    # The dict is TOML-serialisable as is.
    assert "hidden_sizes" in tomli_w.dumps(d)
    # And independent of the config.
    d["model"]["hidden_sizes"].append(1)
    assert cfg.model.hidden_sizes == [7, 5]

"""The config reference: ``bayes-mbrl config`` lists every key with its type, value,
default, bounds and meaning; ``--toml`` (and ``presets --show``) print the resolved TOML."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from bayes_mbrl.algorithms import ALGORITHMS
from bayes_mbrl.cli import main
from bayes_mbrl.config import (
    CONFIG_HEADER,
    config_text,
    load_config,
    section_keys,
)
from bayes_mbrl.models import MODELS
from bayes_mbrl.options import (
    at_least,
    at_most,
    check_description,
    greater_than,
    interval,
    non_empty,
    one_of,
    positive_list,
)


def _config_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def _key_line(out: str, key: str) -> str:
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(f"{key} = ")]
    assert len(lines) == 1, f"{key} listed {len(lines)} times in:\n{out}"
    return lines[0]


@pytest.mark.parametrize("preset", ["pendulum-ensemble-mpc", "pendulum-swingup-pilco"])
def test_config_lists_every_key_of_every_section(
    preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _config_output([preset], capsys)
    config = load_config(preset)
    kind = config.model.kind
    model_keys = ["kind"] + [f.name for f in dataclasses.fields(MODELS.options(kind))]
    expected = {s: ks for s, ks in section_keys().items() if s != "model"}
    expected["model"] = model_keys
    for section, keys in expected.items():
        assert f"\n[{section}]  " in out
        for key in keys:
            _key_line(out, f"{section}.{key}")
    # no key of another model kind
    listed = set(re.findall(r"^  (model\.\w+) = ", out, flags=re.M))
    assert listed == {f"model.{k}" for k in model_keys}
    for mode in ALGORITHMS.entries():
        if mode.options is not None:
            assert f"\n[{mode.name}]  Options of experiment.mode = {mode.name!r}" in out


def test_config_shows_type_value_default_bounds_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _config_output(["pendulum-ensemble-mpc", "--set", "planner.horizon=20"], capsys)
    assert _key_line(out, "planner.horizon") == (
        "planner.horizon = 20  (int; an integer >= 1; default 30)"
    )
    assert "planning horizon in steps" in out
    assert _key_line(out, "model.num_members").startswith(
        "model.num_members = 5  (int; an integer >= 1"
    )
    assert _key_line(out, "planner.elite_fraction").endswith("(float; a number in (0, 1])")
    assert _key_line(out, "experiment.seed") == (
        "experiment.seed = 0  (int; an integer in [0, 4294967295])"
    )
    assert "one of 'cem', 'icem', 'mppi'" in _key_line(out, "planner.kind")
    assert "one of 'ensemble', 'bnn', 'gp'" in _key_line(out, "model.kind")
    assert _key_line(out, "experiment.progress") == "experiment.progress = true  (bool)"
    assert _key_line(out, "env.id") == 'env.id = "Pendulum-v1"  (str; a non-empty string)'


def test_config_kind_shows_the_options_of_that_kind(capsys: pytest.CaptureFixture[str]) -> None:
    out = _config_output(["--kind", "gp"], capsys)
    assert _key_line(out, "model.kind").startswith('model.kind = "gp"')
    assert _key_line(out, "model.num_steps").startswith("model.num_steps = 100  (int; an integer")
    assert "model.num_members" not in out


def test_config_toml_and_presets_show_print_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _config_output(["pendulum-gp-mpc", "--toml"], capsys)
    assert text == config_text(load_config("pendulum-gp-mpc"))
    assert text.startswith(CONFIG_HEADER + "\n")
    assert main(["presets", "--show", "pendulum-gp-mpc"]) == 0
    assert capsys.readouterr().out == text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(path) == load_config("pendulum-gp-mpc")
    assert main(["presets", "--show", "pendulum-gp"]) == 2
    assert "did you mean 'pendulum-gp-mpc'" in capsys.readouterr().err


def test_config_bad_input_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--kind", "gpp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'gp'" in err


def test_every_check_factory_describes_itself() -> None:
    assert check_description(at_least(1, "an integer")) == "an integer >= 1"
    assert check_description(at_most(2)) == "a number <= 2"
    assert check_description(greater_than(0)) == "a number > 0"
    assert check_description(interval(0, 1, lo_open=True)) == "a number in (0, 1]"
    assert check_description(one_of(["a", "b"])) == "one of 'a', 'b'"
    assert check_description(one_of(lambda: ("x",))) == "one of 'x'"
    assert check_description(non_empty) == "a non-empty string"
    assert check_description(positive_list) == "a non-empty list of integers >= 1"
    assert check_description(None) == ""

    def documented(v: int) -> str | None:
        """An even number.

        More text."""
        return None if v % 2 == 0 else "an even number"

    assert check_description(documented) == "An even number"
    assert check_description(lambda v: None) == ""

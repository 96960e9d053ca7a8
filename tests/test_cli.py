"""Tests of the ``bayes-mbrl`` command line (bayes_mbrl.cli.main)."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bayes_mbrl.cli import main
from bayes_mbrl.config import DEFAULT_PRESET, Config, dump_config, list_presets
from bayes_mbrl.errors import CheckpointError


def _experiment_module() -> Any:
    """Import bayes_mbrl.experiment, or skip when it does not exist yet."""
    try:
        return importlib.import_module("bayes_mbrl.experiment")
    except ModuleNotFoundError as exc:
        if exc.name != "bayes_mbrl.experiment":
            raise
        pytest.skip("bayes_mbrl.experiment is not written yet; run-path test needs it")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("bayes-mbrl: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_presets_lists_every_preset_and_marks_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == len(list_presets())
    for name, description in list_presets().items():
        assert any(line.startswith(name + " ") and description in line for line in lines)
    default_line = next(line for line in lines if line.split()[0] == DEFAULT_PRESET)
    assert "(default)" in default_line


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    assert "--set" in capsys.readouterr().out


def test_run_bad_set_is_one_line_error_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    assert main(["run", "--set", "planner.horizn=20", "--out", str(out_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "planner.horizon" in line
    assert not out_dir.exists()
    # Nor under the default location.
    assert main(["run", "--set", "planner.horizon=0"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'planner.horizon'" in line
    assert list(tmp_path.iterdir()) == []


def test_run_malformed_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--set", "horizon"]) == 2
    assert "SECTION.KEY=VALUE" in _one_error_line(capsys.readouterr().err)


def test_run_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "pendulum-ensembl-mpc"]) == 2
    assert "pendulum-ensemble-mpc" in _one_error_line(capsys.readouterr().err)


def test_run_refuses_out_onto_existing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dump_config(Config(), run_dir / "config.toml")
    before = sorted(run_dir.iterdir())
    assert main(["run", "--out", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"bayes-mbrl resume {run_dir}" in line
    assert "--out" in line
    assert sorted(run_dir.iterdir()) == before


def test_resume_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["resume", str(missing)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "does not exist" in line
    assert not missing.exists()


def test_resume_dir_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "config.toml" in line and "bayes-mbrl run" in line


# ------------------------------------------------------------- run path (needs experiment)


@dataclass
class _FakeResult:
    run_dir: Path
    returns: list[float]


def test_run_passes_config_and_default_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment_module()
    calls: list[tuple[Config, Path]] = []

    def fake_run(config: Config, run_dir: Path, callbacks: Any = ()) -> _FakeResult:
        calls.append((config, run_dir))
        return _FakeResult(run_dir=run_dir, returns=[-1200.0, -150.5])

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "mountaincar-ensemble-mpc", "--seed", "4", "--set", "planner.horizon=12"]
    assert main([*argv, "--no-progress"]) == 0
    ((config, run_dir),) = calls
    assert config.env.id == "MountainCarContinuous-v0"
    assert config.experiment.seed == 4
    assert config.planner.horizon == 12
    assert config.experiment.progress is False
    assert run_dir.parent == Path("runs")
    assert re.fullmatch(r"mountaincar-ensemble-mpc-seed4-\d{8}-\d{6}", run_dir.name)
    out = capsys.readouterr().out
    assert str(run_dir) in out and "-150.5" in out


def test_run_interrupted_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment_module()

    def fake_run(config: Config, run_dir: Path, callbacks: Any = ()) -> _FakeResult:
        run_dir.mkdir(parents=True)
        dump_config(config, run_dir / "config.toml")
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    out_dir = tmp_path / "r"
    assert main(["run", "--out", str(out_dir)]) == 130
    assert f"bayes-mbrl resume {out_dir}" in capsys.readouterr().err


def test_resume_passes_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment_module()
    calls: list[tuple[Path, bool | None]] = []

    def fake_resume(
        run_dir: Path,
        progress: bool | None = None,
        callbacks: object = (),
        episodes: int | None = None,
        device: str | None = None,
    ) -> _FakeResult:
        calls.append((run_dir, progress))
        return _FakeResult(run_dir=run_dir, returns=[1.0])

    monkeypatch.setattr(experiment, "resume_experiment", fake_resume)
    dump_config(Config(), tmp_path / "config.toml")
    assert main(["resume", str(tmp_path)]) == 0
    assert main(["resume", str(tmp_path), "--no-progress"]) == 0
    assert calls == [(tmp_path, None), (tmp_path, False)]
    assert str(tmp_path) in capsys.readouterr().out


# ------------------------------------------- run directories, one-line warnings (issue 21)

UNRELATED_CONFIG = '[tool]\nname = "x"\n'


@pytest.mark.parametrize("command", ["resume", "analyze"])
def test_dir_with_unrelated_config_toml_is_not_a_run_directory(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.toml").write_text(UNRELATED_CONFIG)
    assert main([command, str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is not a bayes_mbrl run directory" in line and "config.toml" in line
    assert "tool" not in line  # not a complaint about the file's sections
    assert not (tmp_path / "analysis").exists()


def test_run_dirs_are_recognised_without_a_checkpoint(tmp_path: Path) -> None:
    from bayes_mbrl.runs import check_run_dir, read_run_config

    written = tmp_path / "written"
    written.mkdir()
    dump_config(Config(), written / "config.toml")  # its header marks it
    edited = tmp_path / "edited"  # a config edited by hand, beside the run's files
    (edited / "checkpoints").mkdir(parents=True)
    (edited / "config.toml").write_text("[planner]\nhorizon = 5\n")
    alone = tmp_path / "alone"  # the same hand-written config with nothing of a run beside it
    alone.mkdir()
    (alone / "config.toml").write_text("[planner]\nhorizon = 5\n")
    for run_dir in (written, edited):
        check_run_dir(run_dir)  # accepted: no error
        assert read_run_config(run_dir).experiment.mode == "mpc"
    assert read_run_config(edited).planner.horizon == 5
    with pytest.raises(CheckpointError, match="is not a bayes_mbrl run directory"):
        check_run_dir(alone)


def test_run_directory_not_printed_when_the_run_fails_before_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "r"
    argv = ["run", "--out", str(out_dir), "--no-progress", "--set", "env.id=NoSuchEnv-v0"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "run directory" not in captured.out + captured.err
    _one_error_line(captured.err)
    assert not out_dir.exists()


TINY_RUN = [
    "--no-progress",
    "--set",
    "env.episode_length=30",
    "--set",
    "experiment.episodes=2",
    "--set",
    "model.num_members=2",
    "--set",
    "model.hidden_sizes=[8]",
    "--set",
    "model.max_epochs=2",
    "--set",
    "planner.population=10",
    "--set",
    "planner.iterations=1",
    "--set",
    "planner.particles=2",
    "--set",
    "planner.horizon=3",
]


def test_resume_fallback_warning_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    _experiment_module()
    run_dir = tmp_path / "run"
    assert main(["run", "--out", str(run_dir), *TINY_RUN]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"run directory: {run_dir}"
    newest = run_dir / "checkpoints" / "ckpt_0002.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)
        assert main(["resume", str(run_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-mbrl: warning: ")
    assert "ckpt_0002.pt is not a readable checkpoint" in lines[0]
    assert "using the previous checkpoint" in lines[0]
    assert ".py:" not in err and "warnings.warn" not in err and "weights_only" not in err

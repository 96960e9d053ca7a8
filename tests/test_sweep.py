"""Sweeps: the sweep file is validated whole before anything runs; trials run in
processes of their own (local pool or Ray), are retried after a failure or a kill,
resume their run directories, and a sweep killed mid-way and rerun loses nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bayes_mbrl.cli import main
from bayes_mbrl.config import dump_config
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.sweeps import load_sweep, read_summary, run_sweep, sweep_from_dict
from bayes_mbrl.sweeps.runner import _make_backend
from bayes_mbrl.sweeps.trial import KILL_ENV, KILL_MARK, TRIAL_FILE

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "experiment.episodes": 2,
    "env.episode_length": 15,
    "model.num_members": 2,
    "model.hidden_sizes": [8],
    "model.max_epochs": 2,
    "planner.kind": "cem",
    "planner.population": 10,
    "planner.iterations": 1,
    "planner.particles": 2,
    "planner.horizon": 3,
}

TINY_TOML = "\n".join(
    f'"{k}" = {json.dumps(v)}' for k, v in TINY.items()
)  # JSON scalars and lists are TOML too


def _sweep(**data: object):
    return sweep_from_dict({"set": TINY, **data}, "t")


def _metrics(run_dir: Path) -> bytes:
    return (run_dir / "metrics.csv").read_bytes()


# ------------------------------------------------------------------ the sweep file
def test_grid_is_crossed_with_seeds_and_every_trial_validated() -> None:
    sweep = _sweep(
        seeds=2, grid={"planner": {"horizon": [3, 4]}, "planner.particles": [2, 4]}, threads=1
    )
    assert [t.name for t in sweep.trials] == [
        f"planner.horizon={h},planner.particles={p}-s{s}"
        for h in (3, 4)
        for p in (2, 4)
        for s in (0, 1)
    ]
    last = sweep.trials[-1]
    assert (last.config.planner.horizon, last.config.planner.particles) == (4, 4)
    assert last.config.experiment.seed == 1
    assert last.config.experiment.threads == 1 and not last.config.experiment.progress
    assert last.config.env.episode_length == 15  # [set] applies to every trial


def test_list_variants_and_seed_substitution() -> None:
    sweep = _sweep(
        seeds=[3, 7],
        list=[
            {"label": "short", "set": {"planner.horizon": 2}},
            {
                "label": "init",
                "set": {"experiment.mode": "sac", "sac.init_policy": "runs/teacher-s{seed}"},
            },
        ],
    )
    by_name = {t.name: t for t in sweep.trials if t.label == "short"}
    assert set(by_name) == {"short-s3", "short-s7"}
    assert by_name["short-s7"].config.planner.horizon == 2
    # {seed} in a string value is the trial's seed
    init = [t for t in sweep.trials if t.label == "init"]
    assert [t.config.sac.init_policy for t in init] == ["runs/teacher-s3", "runs/teacher-s7"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"grid": {"planner.horizon": [3, 0]}}, "configuration 'planner.horizon=0'"),
        ({"grid": {"planner.horizn": [3]}}, "planner.horizon"),
        ({"grid": {"planner.horizon": 3}}, "non-empty list"),
        ({"grid": {"planner.horizon": [3]}, "list": []}, "not both"),
        ({"set": {"experiment.seed": 3}}, "the sweep's seeds"),
        ({"set": {"experiment.threads": 2}}, "the sweep's threads"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"retries": -1}, "retries"),
        ({"base": "no/such.toml"}, "neither a preset nor a config file"),
        ({"list": [{"label": "a b", "set": {}}]}, "label"),
        ({"list": [{"label": "a"}, {"label": "a"}]}, "two variants have the label 'a'"),
        ({"list": [{"label": "a", "sett": {}}]}, "unknown key 'sett'"),
        ({"jobz": 2}, "did you mean 'jobs'"),
        # each trial's env is built and its mode checked against it before any trial runs
        ({"grid": {"env.id": ["Pendulum-v1", "NoSuchEnv-v0"]}}, "'env.id=NoSuchEnv-v0'"),
        ({"grid": {"experiment.mode": ["mpc", "dqn"]}}, "'experiment.mode=dqn': env.id"),
    ],
)
def test_bad_sweep_is_refused_with_what_to_fix(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        sweep_from_dict({"set": {"experiment.episodes": 2}, **data}, "bad")
    assert expected in str(info.value)


def test_sweep_file_base_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.toml").write_text("[planner]\nhorizon = 7\n")
    (tmp_path / "s.toml").write_text('base = "cfg/base.toml"\nseeds = 2\n')
    sweep = load_sweep(tmp_path / "s.toml")
    assert [t.name for t in sweep.trials] == ["base-s0", "base-s1"]
    assert sweep.trials[0].config.planner.horizon == 7
    assert sweep.default_out() == Path("runs/s")


def test_dry_run_lists_the_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'seeds = [0, 1]\n[set]\n{TINY_TOML}\n[grid]\n"planner.horizon" = [3, 5]\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 configurations x 2 seeds = 4 trials" in out
    assert "planner.horizon=5-s1:" in out
    assert not (tmp_path / "o").exists()


def test_a_directory_with_another_run_is_refused_before_anything_runs(tmp_path: Path) -> None:
    sweep = _sweep(seeds=[0])
    mine = sweep.trials[0].config
    other = dataclasses.replace(mine, planner=dataclasses.replace(mine.planner, horizon=9))
    run_dir = tmp_path / "pendulum-ensemble-mpc-s0"  # the label is the base's name
    run_dir.mkdir()
    dump_config(other, run_dir / "config.toml")
    with pytest.raises(
        ConfigError, match=r"another configuration .*: planner\.horizon \(9 there, 3 here\)\. Use"
    ):
        run_sweep(sweep, out=tmp_path)
    assert not (tmp_path / "logs").exists()


def test_bad_fault_injection_names_the_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KILL_ENV, "nope:1")
    with pytest.raises(ConfigError, match="pendulum-ensemble-mpc-s0"):
        run_sweep(_sweep(seeds=[0]), out=tmp_path)


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        _make_backend("ray", 0, 1, None)


# ------------------------------------------------------------------------- running
def test_killed_trial_is_retried_and_a_failing_one_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'ok' kills itself after its first episode (then resumes to the same metrics as
    an uninterrupted run); 'bad' fails on every attempt: reported, not fatal. (A device
    no machine has passes the sweep's validation, which leaves devices to the machine
    that runs the trial.)"""
    path = tmp_path / "s.toml"
    path.write_text(
        f"seeds = [0]\nretries = 1\nthreads = 1\njobs = 2\n[set]\n{TINY_TOML}\n"
        '[[list]]\nlabel = "ok"\n'
        '[[list]]\nlabel = "bad"\nset = { "experiment.device" = "cuda:99" }\n'
    )
    monkeypatch.setenv(KILL_ENV, "ok-s0:1")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 1  # a trial failed
    records = {r["trial"]: r for r in read_summary(out)}
    assert records["ok-s0"]["status"] == "finished"
    assert records["ok-s0"]["attempts"] == 2
    assert records["bad-s0"]["status"] == "failed"
    assert records["bad-s0"]["attempts"] == 2
    assert "cuda:99" in records["bad-s0"]["error"]
    assert (out / "ok-s0" / KILL_MARK).exists()
    log = (out / "logs" / "ok-s0.log").read_text()
    assert "attempt 2 (local; resumes" in log
    assert "killed by SIGKILL" in capsys.readouterr().out
    csv_text = (out / "sweep.csv").read_text()
    assert csv_text.splitlines()[0].startswith("trial,config,seed,status,attempts,wall_seconds")
    # nothing lost: the killed-and-resumed trial equals an uninterrupted run
    reference = run_experiment(load_sweep(path).trials[0].config, tmp_path / "ref")
    assert _metrics(out / "ok-s0") == _metrics(reference.run_dir)


def test_an_attempt_past_the_timeout_is_stopped_and_reported(tmp_path: Path) -> None:
    sweep = _sweep(seeds=[0], retries=0, timeout=0.2)
    result = run_sweep(sweep, out=tmp_path, log=lambda s: None)
    (record,) = result.records
    assert (record["status"], record["attempts"]) == ("failed", 1)
    assert record["error"] == "timed out after 0.2 s"
    assert record["wall_seconds"] < 10


def test_sigkilled_sweep_rerun_loses_nothing_and_skips_finished(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f"seeds = [0, 1]\nthreads = 1\njobs = 1\n[set]\n{TINY_TOML}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bayes_mbrl.cli", "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = None
    deadline = time.monotonic() + 120
    while first is None and time.monotonic() < deadline and proc.poll() is None:
        first = next((d for d in out.glob("*-s*") if (d / TRIAL_FILE).exists()), None)
        time.sleep(0.05)
    assert first is not None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trial processes
    proc.wait()
    stamp = (first / "metrics.csv").stat().st_mtime_ns, (first / TRIAL_FILE).stat().st_mtime_ns

    assert main(["sweep", str(path), "--out", str(out)]) == 0
    records = {r["trial"]: r for r in read_summary(out)}
    assert {r["status"] for r in records.values()} == {"finished"}
    assert records[first.name]["attempts"] == 1  # not rerun
    assert stamp == (
        (first / "metrics.csv").stat().st_mtime_ns,
        (first / TRIAL_FILE).stat().st_mtime_ns,
    )
    assert (out / "logs" / f"{first.name}.log").read_text().count("=== ") == 1
    for name in ("pendulum-ensemble-mpc-s0", "pendulum-ensemble-mpc-s1"):
        metrics = (out / name / "metrics.csv").read_text().splitlines()
        assert len(metrics) == 1 + TINY["experiment.episodes"], name
        rows = (out / name / "transitions.f32").stat().st_size
        assert rows > 0


def test_local_and_ray_backends_give_identical_metrics(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    sweep = _sweep(seeds=[0, 1], threads=1)
    local = run_sweep(sweep, "local", jobs=2, out=tmp_path / "local", log=lambda s: None)
    ray = run_sweep(sweep, "ray", jobs=2, out=tmp_path / "ray", log=lambda s: None)
    assert not local.failed and not ray.failed
    for trial in sweep.trials:
        a, b = tmp_path / "local" / trial.name, tmp_path / "ray" / trial.name
        assert _metrics(a) == _metrics(b), trial.name
        assert (a / "transitions.f32").read_bytes() == (b / "transitions.f32").read_bytes()
    assert json.loads((tmp_path / "ray" / "sweep.json").read_text())["backend"] == "ray"

"""The experiment runner: outputs, seeding, interruption and resume, CLI end to end."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from bayes_mbrl.cli import main
from bayes_mbrl.config import Config, load_config
from bayes_mbrl.errors import CheckpointError, ConfigError, EnvError, UnsafeCheckpointError
from bayes_mbrl.experiment import (
    Callback,
    Experiment,
    TransitionLog,
    load_checkpoint,
    resume_experiment,
    run_experiment,
    save_checkpoint,
)

TINY = [
    "env.episode_length=40",
    "experiment.episodes=3",
    "experiment.progress=false",
    "model.num_members=2",
    "model.hidden_sizes=[16, 16]",
    "model.max_epochs=5",
    "planner.population=20",
    "planner.iterations=2",
    "planner.particles=4",
    "planner.horizon=5",
]


def tiny_config(*extra: str, seed: int = 0) -> Config:
    return load_config(None, [*TINY, *extra], seed=seed)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_experiment(tiny_config(), run_dir)
    return run_dir


def test_run_writes_outputs(reference_run: Path) -> None:
    rows = read_metrics(reference_run)
    assert [r["episode"] for r in rows] == ["1", "2", "3"]
    assert [r["policy"] for r in rows] == ["random", "mpc", "mpc"]
    assert [int(r["env_steps"]) for r in rows] == [40, 80, 120]
    assert "plan_seconds" not in rows[0]  # timings vary: they live in timings.csv
    with open(reference_run / "timings.csv") as f:
        timings = list(csv.DictReader(f))
    assert [r["episode"] for r in timings] == ["1", "2", "3"]
    assert float(timings[1]["plan_seconds"]) > 0 and float(timings[1]["fit_seconds"]) > 0
    assert (reference_run / "learning_curve.png").stat().st_size > 1000
    assert load_config(reference_run / "config.toml") == tiny_config()
    ckpts = sorted((reference_run / "checkpoints").glob("ckpt_*.pt"))
    assert [p.name for p in ckpts] == ["ckpt_0002.pt", "ckpt_0003.pt"]  # checkpoint_keep = 2
    state = load_checkpoint(ckpts[-1])
    assert state["episodes_done"] == 3 and state["num_transitions"] == 120
    log = TransitionLog(reference_run / "transitions.f32", 3, 1)
    rows_logged = log.read()
    assert rows_logged.shape == (120, log.width)
    episode_col = log.split_row(rows_logged)[-1]
    assert np.array_equal(episode_col, np.repeat([0.0, 1.0, 2.0], 40))


def test_same_seed_same_run_different_seed_differs(reference_run: Path, tmp_path: Path) -> None:
    run_experiment(tiny_config(), tmp_path / "same")
    run_experiment(tiny_config(seed=1), tmp_path / "other")
    metrics = (reference_run / "metrics.csv").read_bytes()
    assert (tmp_path / "same" / "metrics.csv").read_bytes() == metrics  # byte-identical
    assert (tmp_path / "same" / "transitions.f32").read_bytes() == (
        reference_run / "transitions.f32"
    ).read_bytes()
    assert (tmp_path / "other" / "metrics.csv").read_bytes() != metrics


class StopAfter(Callback):
    def __init__(self, episodes: int) -> None:
        self.episodes = episodes

    def _on_episode_end(self, experiment: Experiment, row: dict[str, object]) -> bool:
        return experiment.episodes_done < self.episodes


def test_stopped_after_an_episode_and_resumed_equals_uninterrupted(
    reference_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = run_experiment(tiny_config(), run_dir, callbacks=[StopAfter(2)])
    assert len(first.returns) == 2
    result = resume_experiment(run_dir)
    assert len(result.returns) == 3
    assert (run_dir / "metrics.csv").read_bytes() == (reference_run / "metrics.csv").read_bytes()
    assert (run_dir / "transitions.f32").read_bytes() == (
        reference_run / "transitions.f32"
    ).read_bytes()


def test_a_finished_run_extended_equals_the_longer_run(tmp_path: Path) -> None:
    """``resume --episodes`` continues a finished run as if it had been started with the
    larger total, and records the total; shortening is refused without touching it."""
    longer = tmp_path / "longer"
    run_experiment(tiny_config("experiment.episodes=4"), longer)
    run_dir = tmp_path / "run"
    run_experiment(tiny_config(), run_dir)  # 3 episodes, finished
    before = (run_dir / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError, match="extended, not shortened"):
        resume_experiment(run_dir, episodes=2)
    assert (run_dir / "metrics.csv").read_bytes() == before
    assert load_config(run_dir / "config.toml").experiment.episodes == 3
    assert main(["resume", str(run_dir), "--episodes", "4", "--no-progress"]) == 0
    assert (run_dir / "metrics.csv").read_bytes() == (longer / "metrics.csv").read_bytes()
    assert (run_dir / "transitions.f32").read_bytes() == (longer / "transitions.f32").read_bytes()
    saved = load_config(run_dir / "config.toml")
    assert saved.experiment.episodes == 4 and saved.experiment.progress is False
    assert len(resume_experiment(run_dir).returns) == 4  # nothing left to run


SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from bayes_mbrl.algorithms import mpc
    act = mpc.MPCAgent.act
    def slow_act(self, obs):
        time.sleep(0.02)
        return act(self, obs)
    mpc.MPCAgent.act = slow_act
    from bayes_mbrl.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_sigkill_mid_episode_then_resume_loses_and_duplicates_nothing(
    reference_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    args = ["run", "--out", str(run_dir), "--no-progress"]
    for override in TINY:
        args += ["--set", override]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    log_path = run_dir / "transitions.f32"
    width = TransitionLog(log_path, 3, 1).width
    deadline = time.monotonic() + 120
    try:
        # kill in the middle of the second episode (55 of 120 transitions)
        while time.monotonic() < deadline:
            if log_path.exists() and log_path.stat().st_size >= 55 * width * 4:
                break
            if proc.poll() is not None:
                pytest.fail(
                    "run ended before it could be killed: "
                    f"{proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.005)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    logged_before = len(TransitionLog(log_path, 3, 1).read())
    assert 55 <= logged_before < 120
    result = resume_experiment(run_dir, progress=False)
    assert len(result.returns) == 3
    assert (run_dir / "metrics.csv").read_bytes() == (reference_run / "metrics.csv").read_bytes()
    assert log_path.read_bytes() == (reference_run / "transitions.f32").read_bytes()


class Evil:
    """Unpickling this runs code (the attack weights_only loading refuses)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("damage", ["bit_flip", "truncate", "garbage"])
def test_corrupted_checkpoint_is_detected_and_the_previous_one_used(
    damage: str, reference_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_experiment(tiny_config(), run_dir, callbacks=[StopAfter(2)])
    newest = run_dir / "checkpoints" / "ckpt_0002.pt"
    raw = bytearray(newest.read_bytes())
    if damage == "bit_flip":  # a flipped bit in the tensor data: torch alone loads it
        raw[len(raw) // 2] ^= 0x10
    elif damage == "truncate":
        raw = raw[: len(raw) // 3]
    else:
        raw = bytearray(b"not a checkpoint at all" * 10)
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"corrupted|SHA-256|not a readable"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        result = resume_experiment(run_dir, progress=False)
    # episode 2 is re-run from checkpoint 1; its logged transitions are reproduced, not duplicated
    assert len(result.returns) == 3
    assert len(TransitionLog(run_dir / "transitions.f32", 3, 1).read()) == 120
    assert (run_dir / "metrics.csv").read_bytes() == (reference_run / "metrics.csv").read_bytes()


def test_malicious_checkpoint_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_experiment(tiny_config(), run_dir, callbacks=[StopAfter(1)])
    newest = run_dir / "checkpoints" / "ckpt_0001.pt"
    torch.save({"format_version": 1, "model": Evil()}, newest)  # a crafted replacement
    with pytest.raises(UnsafeCheckpointError, match="run code"):
        load_checkpoint(newest)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        resume_experiment(run_dir, progress=False)
    assert not (tmp_path / "PWNED").exists()
    # the same object hidden inside a checksummed payload is refused as well
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    payload = buf.getvalue()
    wrapper = {
        "format_version": 2,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    torch.save(wrapper, newest)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(newest)
    assert not (tmp_path / "PWNED").exists()
    assert len(TransitionLog(run_dir / "transitions.f32", 3, 1).read()) == 40  # data kept


def test_checkpoint_round_trip_and_format_1_still_read(tmp_path: Path) -> None:
    state = {"episodes_done": 3, "w": torch.arange(5.0), "nested": {"k": [1, 2]}}
    save_checkpoint(tmp_path / "a.pt", state)
    back = load_checkpoint(tmp_path / "a.pt")
    assert back["episodes_done"] == 3 and torch.equal(back["w"], state["w"])
    torch.save({"format_version": 1, "episodes_done": 2}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["episodes_done"] == 2
    torch.save({"format_version": 9}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 9"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.parametrize("mode", ["v0.5", "v1.0"])
def test_whole_plan_modes_replan_every_horizon(mode: str, tmp_path: Path) -> None:
    result = run_experiment(tiny_config(f"experiment.mode={mode!r}"), tmp_path / mode)
    rows = result.metrics
    assert rows[1]["fit_epochs"] > 0
    if mode == "v0.5":
        assert rows[2]["fit_epochs"] == 0  # fitted once, on the random episode only
    else:
        assert rows[2]["fit_epochs"] > 0


def test_bad_env_id_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match="Pendulum-v1"):
        run_experiment(tiny_config('env.id="Pendulum-v2"'), tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.toml").exists()


def test_cli_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--out", str(tmp_path / "cli"), "--no-progress", "--seed", "3"]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "results written to" in out and "episode returns" in out
    assert len(read_metrics(tmp_path / "cli")) == 3
    assert main(args) == 2  # the directory now holds a run
    assert "resume" in capsys.readouterr().err


class NaNAt(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Returns a NaN observation at one step of one episode (counted across resets)."""

    episodes = 0

    def __init__(self, env: gymnasium.Env, episode: int, step: int) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.bad_episode, self.bad_step, self.t = episode, step, 0

    def reset(self, **kwargs: object):  # type: ignore[no-untyped-def]
        NaNAt.episodes += 1
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, r, te, tr, info = self.env.step(action)
        self.t += 1
        if NaNAt.episodes == self.bad_episode and self.t == self.bad_step:
            obs = np.full_like(obs, np.nan)
        return obs, r, te, tr, info


def test_nan_from_the_env_skips_the_transition_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bayes_mbrl.experiment as experiment_module

    real_make_env = experiment_module.make_env
    NaNAt.episodes = 0
    monkeypatch.setattr(
        experiment_module,
        "make_env",
        lambda *a, **k: NaNAt(real_make_env(*a, **k), episode=2, step=5),
    )
    run_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=r"episode 2, step 5: the environment .* non-finite"):
        result = run_experiment(tiny_config(), run_dir)
    assert len(result.returns) == 3
    assert [r["env_steps"] for r in result.metrics] == [40, 44, 84]  # 4 kept in episode 2
    rows = TransitionLog(run_dir / "transitions.f32", 3, 1).read()
    assert len(rows) == 84 and np.isfinite(rows).all()


def test_a_failed_refit_keeps_the_run_going_with_the_last_good_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bayes_mbrl.errors import ModelError
    from bayes_mbrl.models import ProbabilisticEnsemble

    real_fit = ProbabilisticEnsemble.fit
    calls = {"n": 0}

    def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise ModelError("ensemble fit diverged (non-finite loss) at epoch 3")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(ProbabilisticEnsemble, "fit", fit)
    with pytest.warns(RuntimeWarning, match=r"episode 3: refitting the ensemble model failed"):
        result = run_experiment(tiny_config(), tmp_path / "run")
    assert len(result.returns) == 3
    assert result.metrics[1]["fit_epochs"] > 0 and result.metrics[2]["fit_epochs"] == 0
    # the first fit has nothing to fall back to: it still raises, naming the problem
    calls["n"] = 1
    with pytest.raises(ModelError, match="diverged"):
        run_experiment(tiny_config(), tmp_path / "first")

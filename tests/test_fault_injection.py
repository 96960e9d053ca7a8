"""Fault injection: runs SIGKILLed at random moments, then resumed, equal the uninterrupted run.

A short configuration (3 episodes of 12 steps, a 2-member ensemble, a small CEM) is
run once without interruption in a subprocess (the reference; it also gives the
time at which the run directory's config appears). Then :data:`KILLS` runs of the
same configuration, two at a time, are each killed with SIGKILL at a random
moment: 15% around start-up (uniform up to 1.2x the time the config takes to
appear), the rest a random 0-0.5 s after a random number (0-36) of transitions has
been logged, so the kills spread over the whole run's progress (fitting,
planning, stepping the env, writing the transition log, metrics or a checkpoint,
after the end) whatever the machine's speed. Each is finished: ``bayes-mbrl
resume`` when the run had written its config, a fresh ``bayes-mbrl run`` into the
same directory when the kill came before that. Every finished run must have byte-identical
``metrics.csv`` and ``transitions.f32`` (so no transition is lost or duplicated)
and the same model parameters as the reference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_mbrl.config import load_config
from bayes_mbrl.experiment import (
    TransitionLog,
    load_checkpoint,
    resume_experiment,
    run_experiment,
)

KILLS = 12
PARALLEL = 2  # runs killed at once (their kill times are drawn independently)
OVERRIDES = [
    "env.episode_length=12",
    "experiment.episodes=3",
    "experiment.progress=false",
    "model.num_members=2",
    "model.hidden_sizes=[16, 16]",
    "model.max_epochs=3",
    "planner.population=16",
    "planner.iterations=2",
    "planner.particles=2",
    "planner.horizon=4",
]
CLI = "import sys; from bayes_mbrl.cli import main; sys.exit(main(sys.argv[1:]))"


def cli_args(out: Path) -> list[str]:
    args = [sys.executable, "-c", CLI, "run", "--seed", "7", "--out", str(out), "--no-progress"]
    for override in OVERRIDES:
        args += ["--set", override]
    return args


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))[-1]
    state = load_checkpoint(newest)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)

    walk("model", state["model"])
    return flat


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """The uninterrupted run, and when its config appeared / when it ended (seconds).

    :data:`PARALLEL` copies run at once, as the killed runs will, so the timing that
    the kill moments are drawn from includes the same contention (the latest config
    and end times of the copies are used).
    """
    root = tmp_path_factory.mktemp("ref")
    outs = [root / f"run{i}" for i in range(PARALLEL)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(cli_args(o), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for o in outs
    ]
    config_at: list[float | None] = [None] * PARALLEL
    ended: list[float | None] = [None] * PARALLEL
    while any(e is None for e in ended):
        now = time.monotonic() - start
        for i, (o, proc) in enumerate(zip(outs, procs, strict=True)):
            if config_at[i] is None and (o / "config.toml").exists():
                config_at[i] = now
            if ended[i] is None and proc.poll() is not None:
                ended[i] = now
        time.sleep(0.002)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert all(c is not None for c in config_at)
    assert (outs[0] / "metrics.csv").read_bytes() == (outs[-1] / "metrics.csv").read_bytes()
    return outs[0], max(c for c in config_at if c is not None), max(e for e in ended if e)


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    reference: tuple[Path, float, float], tmp_path: Path
) -> None:
    ref_dir, config_at, _ = reference
    ref_metrics = (ref_dir / "metrics.csv").read_bytes()
    ref_log = (ref_dir / "transitions.f32").read_bytes()
    ref_model = model_tensors(ref_dir)
    width = TransitionLog(ref_dir / "transitions.f32", 3, 1).width
    rng = np.random.default_rng(2026)
    logged_at_kill: list[int] = []
    for first in range(0, KILLS, PARALLEL):
        batch = []
        for k in range(first, min(first + PARALLEL, KILLS)):
            out = tmp_path / f"kill{k}"
            if rng.uniform() < 0.15:  # around start-up: before or just after the config
                rows, delay = -1, rng.uniform(0.0, 1.2 * config_at)
            else:  # after a random number of logged transitions, plus up to 0.5 s
                rows, delay = int(rng.integers(0, 37)), rng.uniform(0.0, 0.5)
            proc = subprocess.Popen(
                cli_args(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            batch.append((k, out, rows, delay, proc, time.monotonic()))
        for _, out, rows, delay, proc, started in batch:
            log = out / "transitions.f32"
            if rows >= 0:  # wait for the transition count, then the extra delay
                while proc.poll() is None and (
                    not log.exists() or log.stat().st_size < rows * 4 * width
                ):
                    time.sleep(0.001)
                started = time.monotonic()
            while time.monotonic() < started + delay and proc.poll() is None:
                time.sleep(0.001)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for k, out, _, delay, _, _ in batch:
            log = out / "transitions.f32"
            logged_at_kill.append(log.stat().st_size // (4 * width) if log.exists() else -1)
            # finish it the way a user would
            if (out / "config.toml").exists():
                resume_experiment(out, progress=False)
            else:
                config = load_config("pendulum-ensemble-mpc", OVERRIDES, seed=7)
                run_experiment(config, out)
            assert (out / "metrics.csv").read_bytes() == ref_metrics, f"kill {k} at {delay:.2f} s"
            assert (out / "transitions.f32").read_bytes() == ref_log, f"kill {k}: log differs"
            model = model_tensors(out)
            assert model.keys() == ref_model.keys()
            for name, value in model.items():
                assert torch.equal(value, ref_model[name]), f"kill {k}: {name} differs"
    # the kills landed at different stages (before the log existed, mid-run, after the
    # end): at least some mid-run, i.e. with part of the 36 transitions logged
    print(f"transitions logged when killed: {logged_at_kill} (36 = complete)")
    assert sum(0 < n < 36 for n in logged_at_kill) >= 3

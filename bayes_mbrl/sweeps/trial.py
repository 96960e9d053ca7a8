"""One trial of a sweep, run in a process of its own: the same function on every backend.

:func:`run_trial` starts the trial's run, or resumes it when its run directory already
holds one (an earlier attempt was killed or failed), and on success writes
``RUN_DIR/sweep_trial.json`` (:data:`TRIAL_FILE`), the mark that the trial is finished.
It takes and returns plain JSON-able dicts, so a trial crosses a process boundary (a
subprocess of the local backend, a Ray task) as text.

A trial spec holds ``name``, ``run_dir`` (absolute), ``config_toml`` (the validated
configuration as TOML), ``threads``, and optionally ``kill_after_episode`` (fault
injection, see :data:`KILL_ENV`) and ``parent_pid`` (stop when the sweep that started
the trial is gone).
"""

from __future__ import annotations

import json
import os
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

from bayes_mbrl.callbacks import Callback
from bayes_mbrl.config import config_from_dict
from bayes_mbrl.experiment import apply_threads, resume_experiment, run_experiment
from bayes_mbrl.runs import CONFIG_FILE, atomic_write_bytes

__all__ = ["KILL_ENV", "KILL_MARK", "TRIAL_FILE", "read_trial_file", "run_trial"]

TRIAL_FILE = "sweep_trial.json"
"""Written into a trial's run directory when the trial has finished."""
KILL_ENV = "BAYES_MBRL_SWEEP_KILL"
"""Fault injection: ``TRIAL:EPISODE[,TRIAL:EPISODE...]`` makes each named trial kill
itself (SIGKILL) once, after that episode's checkpoint, to show that the sweep retries it
and loses nothing. Read by the sweep when it starts; the trial leaves :data:`KILL_MARK`
in its run directory so it is killed only once."""
KILL_MARK = ".sweep_killed_once"


class _KillOnce(Callback):
    """SIGKILLs its own process after episode ``episode``, unless it did so before."""

    def __init__(self, episode: int) -> None:
        self.episode = episode

    def _on_episode_end(self, experiment: Any, row: dict[str, Any]) -> bool:
        mark = experiment.run_dir / KILL_MARK
        if experiment.episodes_done == self.episode and not mark.exists():
            mark.write_text(f"killed after episode {self.episode} by {KILL_ENV}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return True


class _StopWhenOrphaned(Callback):
    """Ends the process when the sweep that started it is gone (its parent changed), so
    a rerun of the sweep never races a stray trial over the same run directory."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid

    def _on_step(self, experiment: Any, step: int, reward: float, total: float) -> None:
        if os.getppid() != self.parent_pid:
            os._exit(75)  # like a kill: the run resumes from its last checkpoint


def read_trial_file(run_dir: Path) -> dict[str, Any] | None:
    """The finished-trial record of ``run_dir`` (None when the trial has not finished)."""
    try:
        record: dict[str, Any] = json.loads((Path(run_dir) / TRIAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "finished" else None


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one trial to the end.

    Args:
        spec: the trial spec (see the module docstring).

    Returns:
        ``status`` ("finished"), ``episodes``, ``final_return`` (the last episode's),
        ``seconds`` (of this attempt) and ``resumed`` (whether the run directory held
        the run already).

    Raises:
        BayesMBRLError: the run failed (the sweep retries it).
    """
    start = time.perf_counter()
    run_dir = Path(spec["run_dir"])
    done = read_trial_file(run_dir)
    if done is not None:
        return done
    apply_threads(int(spec["threads"]))
    callbacks: list[Callback] = []
    if spec.get("kill_after_episode"):
        callbacks.append(_KillOnce(int(spec["kill_after_episode"])))
    if spec.get("parent_pid"):
        callbacks.append(_StopWhenOrphaned(int(spec["parent_pid"])))
    resumed = (run_dir / CONFIG_FILE).is_file()
    if resumed:
        result = resume_experiment(run_dir, progress=False, callbacks=callbacks)
    else:
        config = config_from_dict(tomllib.loads(spec["config_toml"]))
        result = run_experiment(config, run_dir, callbacks=callbacks)
    record = {
        "trial": spec["name"],
        "status": "finished",
        "episodes": len(result.returns),
        "final_return": result.returns[-1] if result.returns else None,
        "seconds": time.perf_counter() - start,
        "resumed": resumed,
    }
    atomic_write_bytes(run_dir / TRIAL_FILE, (json.dumps(record, indent=1) + "\n").encode())
    return record

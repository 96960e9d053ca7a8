"""Run a sweep's trials on a backend, retry failures, keep a summary on disk.

Backends run :func:`~bayes_mbrl.sweeps.trial.run_trial` in a fresh process per
attempt, so no state leaks from one trial into the next and every trial runs with
its own torch thread count; the same seeds give the same ``metrics.csv`` on both:

- ``local``: a pool of ``jobs`` worker threads, each starting one
  ``python -m bayes_mbrl.sweeps`` process per attempt (output in ``OUT/logs/``);
- ``ray``: one Ray task per attempt (``num_cpus`` = the trial's threads, one task per
  worker process); :func:`ray.init` joins ``address`` when given, else starts a local
  Ray instance. Ray is an optional extra (``pip install -e ".[ray]"``).

The output directory holds one run directory per trial (``OUT/<label>-s<seed>``),
``OUT/logs/<trial>.log`` and the summary ``sweep.json`` / ``sweep.csv``
(:data:`SUMMARY_FIELDS`), rewritten atomically whenever a trial starts or ends. A
trial whose run directory holds :data:`~bayes_mbrl.sweeps.trial.TRIAL_FILE` is
finished and is skipped by a rerun; any other trial with a run directory is resumed
from its newest checkpoint, so a sweep killed at any moment and run again loses no
finished episode. Each trial is locked while it runs (``OUT/logs/<trial>.lock``), so
two sweeps writing into one directory never run the same trial at once.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayes_mbrl.config import config_text, config_to_dict
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import available_cores
from bayes_mbrl.runs import CONFIG_FILE, atomic_write_bytes, read_run_config
from bayes_mbrl.sweeps.spec import Sweep, Trial
from bayes_mbrl.sweeps.trial import KILL_ENV, read_trial_file, run_trial

try:  # advisory file locks (POSIX); elsewhere a sweep does not lock its trials
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["BACKENDS", "SUMMARY_FIELDS", "SweepResult", "read_summary", "run_sweep"]

BACKENDS = ("local", "ray")
SUMMARY_FIELDS = (
    "trial",
    "config",
    "seed",
    "status",
    "attempts",
    "wall_seconds",
    "final_return",
    "episodes",
    "run_dir",
    "overrides",
    "error",
)
"""Columns of ``sweep.csv`` (and keys of each trial in ``sweep.json``): ``status`` is
``finished``, ``failed`` (after its retries), ``running`` or ``pending`` (a sweep
that was killed), ``interrupted``, or ``busy`` (another sweep into the same directory
was running it); ``attempts`` and ``wall_seconds`` add up over
every run of the sweep; ``run_dir`` is relative to the output directory."""
_IGNORED_KEYS = {"experiment": ("threads", "progress")}
"""Keys of a run's config that may differ from the sweep's when a trial is resumed."""


@dataclass
class SweepResult:
    """What a sweep left behind.

    Attributes:
        out: the output directory.
        records: one summary row per trial of this sweep (:data:`SUMMARY_FIELDS`).
        wall_seconds: wall time of this call.
    """

    out: Path
    records: list[dict[str, Any]]
    wall_seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The records of the trials that did not finish."""
        return [r for r in self.records if r["status"] != "finished"]


# ---------------------------------------------------------------------- backends
class _Backend(abc.ABC):
    """Starts trial attempts; each attempt is a future of the trial's outcome dict."""

    name = ""

    @abc.abstractmethod
    def submit(self, spec: dict[str, Any], log_path: Path) -> Future[dict[str, Any]]:
        """Start one attempt of the trial ``spec``, its output to ``log_path``."""

    @abc.abstractmethod
    def cancel(self, future: Future[dict[str, Any]]) -> None:
        """Stop an attempt (it then completes as failed)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every attempt still running and release the backend."""


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class _LocalBackend(_Backend):
    """``jobs`` threads, each running one trial process at a time."""

    name = "local"

    def __init__(self, jobs: int, threads: int) -> None:
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="sweep")
        self.procs: dict[Future[dict[str, Any]], subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }

    def submit(self, spec: dict[str, Any], log_path: Path) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()

        def attempt() -> None:
            try:
                future.set_result(self._run(future, spec, log_path))
            except BaseException as exc:
                future.set_exception(exc)

        self.pool.submit(attempt)
        return future

    def _run(
        self, future: Future[dict[str, Any]], spec: dict[str, Any], log_path: Path
    ) -> dict[str, Any]:
        spec_path = log_path.with_suffix(".spec.json")
        result_path = log_path.with_suffix(".result.json")
        spec_path.write_text(json.dumps(spec))
        result_path.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bayes_mbrl.sweeps", str(spec_path), str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=spec["cwd"],
                env=self.env,
            )
            with self.lock:
                self.procs[future] = proc
            rc = proc.wait()
            with self.lock:
                self.procs.pop(future, None)
        try:
            outcome: dict[str, Any] = json.loads(result_path.read_text())
            result_path.unlink()
            return outcome
        except (OSError, ValueError):
            how = f"was killed by {_signal_name(rc)}" if rc < 0 else f"exited with status {rc}"
            return {"status": "failed", "error": f"the trial's process {how}"}

    def cancel(self, future: Future[dict[str, Any]]) -> None:
        with self.lock:
            proc = self.procs.get(future)
        if proc is not None:
            proc.kill()

    def close(self) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ray_trial(spec: dict[str, Any], log_path: str) -> dict[str, Any]:
    """The Ray task: :func:`run_trial` with its output appended to the trial's log."""
    import traceback

    if os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])  # relative paths in the config (plugins, user models)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        with contextlib.redirect_stderr(log):
            try:
                return run_trial(spec)
            except Exception as exc:  # reported to the sweep, which retries
                traceback.print_exc()
                return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


class _RayBackend(_Backend):
    """One Ray task per attempt, each in a fresh worker process."""

    name = "ray"

    def __init__(self, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray, an optional extra: install it with "
                "pip install -e \".[ray]\" (or pip install 'ray[default]'), or use "
                "--backend local"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", include_dashboard=False, log_to_driver=False)
        self.task = ray.remote(max_calls=1, max_retries=0)(_ray_trial)
        self.refs: dict[Future[dict[str, Any]], Any] = {}

    def submit(self, spec: dict[str, Any], log_path: Path) -> Future[dict[str, Any]]:
        ref = self.task.options(num_cpus=spec["threads"]).remote(spec, str(log_path))
        future: Future[dict[str, Any]] = ref.future()
        self.refs[future] = ref
        return future

    def cancel(self, future: Future[dict[str, Any]]) -> None:
        ref = self.refs.get(future)
        if ref is not None:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        for future in list(self.refs):
            if not future.done():
                self.cancel(future)
        if self.started:
            self.ray.shutdown()


# ------------------------------------------------------------------------ helpers
def _kill_plan(trials: list[Trial]) -> dict[str, int]:
    """Trial name -> episode after which it kills itself once (:data:`KILL_ENV`)."""
    text = os.environ.get(KILL_ENV, "").strip()
    if not text:
        return {}
    plan: dict[str, int] = {}
    names = {t.name for t in trials}
    for item in text.split(","):
        name, _, episode = item.strip().rpartition(":")
        if name not in names or not episode.isdigit() or int(episode) < 1:
            raise ConfigError(
                f"{KILL_ENV}={text!r}: expected TRIAL:EPISODE[,...] with a trial of this "
                f"sweep ({', '.join(sorted(names))}) and an episode >= 1"
            )
        plan[name] = int(episode)
    return plan


def _config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if key in _IGNORED_KEYS.get(section, ()):
                continue
            if sa.get(key) != sb.get(key):
                keys.append(f"{section}.{key} ({sa.get(key)!r} there, {sb.get(key)!r} here)")
    return keys


def _check_existing_runs(trials: list[Trial], out: Path) -> None:
    """A trial directory that holds a run must hold a run of the trial's configuration."""
    for trial in trials:
        run_dir = out / trial.name
        if not (run_dir / CONFIG_FILE).is_file():
            continue
        there = config_to_dict(read_run_config(run_dir))
        diff = _config_differences(there, config_to_dict(trial.config))
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run of another configuration than trial {trial.name!r}: "
                f"{'; '.join(diff[:3])}. Use another --out, or remove {run_dir} to rerun it"
            )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; pick another --out")
    if (out / CONFIG_FILE).is_file():
        raise ConfigError(f"--out {out} is a run directory; give the sweep a directory of its own")


@contextlib.contextmanager
def _file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an advisory lock on ``path``; yields False when ``blocking`` is False and
    another process holds it."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _TrialLocks:
    """Non-blocking per-trial locks, held while a trial is scheduled or running."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.held: dict[str, contextlib.ExitStack] = {}

    def acquire(self, name: str) -> bool:
        stack = contextlib.ExitStack()
        if stack.enter_context(_file_lock(self.logs / f"{name}.lock", blocking=False)):
            self.held[name] = stack
            return True
        stack.close()
        return False

    def release(self, name: str) -> None:
        stack = self.held.pop(name, None)
        if stack is not None:
            stack.close()

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: floats to 6 significant digits, None empty."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _write_summary(out: Path, records: list[dict[str, Any]], backend: str) -> None:
    """Merge ``records`` into ``sweep.json`` / ``sweep.csv`` (trials of other sweeps into
    the same directory are kept) and write both atomically."""
    with _file_lock(out / ".sweep.lock"):
        merged: dict[str, dict[str, Any]] = {}
        try:
            old = json.loads((out / "sweep.json").read_text())
            merged = {r["trial"]: r for r in old.get("trials", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        merged.update({r["trial"]: r for r in records})
        rows = list(merged.values())
        text = json.dumps(
            {"backend": backend, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "trials": rows},
            indent=1,
        )
        atomic_write_bytes(out / "sweep.json", (text + "\n").encode())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k)) for k in SUMMARY_FIELDS})
        atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode())


def read_summary(out: Path | str) -> list[dict[str, Any]]:
    """The trials recorded in ``OUT/sweep.json`` ([] when there is none)."""
    try:
        trials: list[dict[str, Any]] = json.loads((Path(out) / "sweep.json").read_text())["trials"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return trials


def _make_backend(name: str, jobs: int, threads: int, address: str | None) -> _Backend:
    if name == "local":
        if address:
            raise ConfigError("--address joins a Ray cluster; use it with --backend ray")
        return _LocalBackend(jobs, threads)
    if name == "ray":
        return _RayBackend(address)
    raise ConfigError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- sweep
@dataclass
class _Attempt:
    trial: Trial
    started: float
    deadline: float | None
    timed_out: bool = False
    log_path: Path = field(default_factory=Path)


def run_sweep(
    sweep: Sweep,
    backend: str = "local",
    *,
    jobs: int | None = None,
    out: Path | str | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run every unfinished trial of ``sweep``; retry failed ones; write the summary.

    Trials already finished in ``out`` are skipped; trials with a run directory are
    resumed. A trial that still fails after ``sweep.options.retries`` further attempts
    is reported as failed; the others go on.

    Args:
        sweep: the validated sweep (:func:`~bayes_mbrl.sweeps.spec.load_sweep`).
        backend: ``"local"`` or ``"ray"``.
        jobs: trials at once (None: ``sweep.options.jobs``; 0 there: the cores /
            threads for ``local``, no limit for ``ray``).
        out: output directory (None: the sweep's ``out`` or ``runs/<sweep name>``).
        address: the Ray cluster to join (``ray`` only; None starts a local Ray).
        log: where progress lines go.

    Returns:
        The summary rows of this sweep's trials.

    Raises:
        ConfigError: a bad backend or output directory, a trial directory holding a run
            of another configuration, Ray missing: all before any trial starts.
    """
    start = time.perf_counter()
    out = Path(out) if out is not None else sweep.default_out()
    _check_out(out)
    _check_existing_runs(sweep.trials, out)
    kills = _kill_plan(sweep.trials)
    opts = sweep.options
    n_jobs = jobs if jobs is not None else opts.jobs
    if n_jobs < 0:
        raise ConfigError(f"--jobs must be at least 0 (0: automatic), got {n_jobs}")
    if n_jobs == 0:
        n_jobs = max(1, available_cores() // opts.threads) if backend == "local" else 0
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    previous = {r.get("trial"): r for r in read_summary(out)}
    records: dict[str, dict[str, Any]] = {}
    for trial in sweep.trials:
        old = previous.get(trial.name, {})
        records[trial.name] = {
            "trial": trial.name,
            "config": trial.label,
            "seed": trial.seed,
            "status": "pending",
            "attempts": int(old.get("attempts") or 0),
            "wall_seconds": float(old.get("wall_seconds") or 0.0),
            "final_return": None,
            "episodes": None,
            "run_dir": trial.name,
            "overrides": "; ".join(trial.overrides),
            "error": "",
        }
    engine = _make_backend(backend, n_jobs, opts.threads, address)
    limit = n_jobs if n_jobs > 0 else len(sweep.trials)
    locks = _TrialLocks(logs)
    queue = deque(sweep.trials)
    inflight: dict[Future[dict[str, Any]], _Attempt] = {}
    tries: Counter[str] = Counter()
    finished = 0

    def save() -> None:
        _write_summary(out, list(records.values()), engine.name)

    def finish(trial: Trial, outcome: dict[str, Any], note: str) -> None:
        nonlocal finished
        finished += 1
        rec = records[trial.name]
        rec.update(
            status="finished",
            final_return=outcome.get("final_return"),
            episodes=outcome.get("episodes"),
            error="",
        )
        rec["attempts"] = max(rec["attempts"], 1)
        ret = rec["final_return"]
        shown = f"{ret:.1f}" if isinstance(ret, float | int) else "-"
        log(f"[{finished}/{len(sweep.trials)}] {trial.name}: {note}, final return {shown}")

    try:
        while queue or inflight:
            while queue and len(inflight) < limit:
                trial = queue.popleft()
                run_dir = out / trial.name
                if trial.name not in locks.held and not locks.acquire(trial.name):
                    records[trial.name].update(
                        status="busy", error="running in another sweep into the same directory"
                    )
                    log(f"{trial.name}: skipped, another sweep into {out} is running it")
                    continue
                done = read_trial_file(run_dir)
                if done is not None:
                    finish(trial, done, "already finished, skipped")
                    locks.release(trial.name)
                    continue
                tries[trial.name] += 1
                rec = records[trial.name]
                rec.update(status="running", attempts=rec["attempts"] + 1)
                save()
                log_path = logs / f"{trial.name}.log"
                resumes = (run_dir / CONFIG_FILE).is_file()
                with open(log_path, "a") as fh:
                    fh.write(
                        f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {rec['attempts']} "
                        f"({engine.name}; {'resumes' if resumes else 'starts'} {run_dir}) ===\n"
                    )
                spec = {
                    "name": trial.name,
                    "run_dir": str(run_dir.resolve()),
                    "config_toml": config_text(trial.config),
                    "threads": opts.threads,
                    "cwd": os.getcwd(),
                    "kill_after_episode": kills.get(trial.name),
                    "parent_pid": os.getpid() if engine.name == "local" else None,
                }
                now = time.perf_counter()
                deadline = now + opts.timeout if opts.timeout > 0 else None
                future = engine.submit(spec, log_path)
                inflight[future] = _Attempt(trial, now, deadline, log_path=log_path)
            deadlines = [a.deadline for a in inflight.values() if a.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.perf_counter()) if deadlines else None
            done_set, _ = wait(list(inflight), timeout=wait_s, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for future, attempt in inflight.items():
                expired = attempt.deadline is not None and now >= attempt.deadline
                if future not in done_set and expired and not attempt.timed_out:
                    attempt.timed_out = True
                    engine.cancel(future)
            for future in done_set:
                attempt = inflight.pop(future)
                trial = attempt.trial
                rec = records[trial.name]
                rec["wall_seconds"] += time.perf_counter() - attempt.started
                try:
                    outcome = future.result()
                except Exception as exc:  # a Ray worker that died, a cancelled task
                    outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                if attempt.timed_out:
                    outcome = {"status": "failed", "error": f"timed out after {opts.timeout} s"}
                if outcome.get("status") == "finished":
                    note = f"finished in {rec['wall_seconds']:.1f} s, attempt {rec['attempts']}"
                    finish(trial, outcome, note)
                    locks.release(trial.name)
                else:
                    error = " ".join(str(outcome.get("error", "")).split())[:500]
                    rec.update(error=error)
                    where = f"see {attempt.log_path}"
                    if tries[trial.name] <= opts.retries:
                        rec.update(status="pending")
                        log(f"{trial.name}: attempt {rec['attempts']} failed ({error}); "
                            f"retrying, resuming its run directory ({where})")  # fmt: skip
                        queue.append(trial)
                    else:
                        rec.update(status="failed")
                        finished += 1
                        log(f"[{finished}/{len(sweep.trials)}] {trial.name}: failed after "
                            f"{tries[trial.name]} attempts ({error}; {where})")  # fmt: skip
                        locks.release(trial.name)
                save()
    except BaseException:
        for attempt in inflight.values():
            records[attempt.trial.name].update(status="interrupted")
        save()
        raise
    finally:
        engine.close()
        locks.release_all()
    save()
    return SweepResult(out, list(records.values()), time.perf_counter() - start)

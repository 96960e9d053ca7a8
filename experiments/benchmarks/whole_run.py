"""Whole runs timed side by side: wall time per episode with planning and fitting apart,
peak memory, and memory growth across episodes.

Each run is ``bayes-mbrl run PRESET --seed S --out DIR --no-progress`` in a child
process, so the code under test can be another checkout (``--code old=/tmp/old`` puts
``/tmp/old`` first on ``PYTHONPATH``: e.g. a ``git worktree`` of an older commit) and
its peak resident memory is the child's own (``ru_maxrss``). Versions run alternately
(old, new, old, new, ...) so both see the same machine. Per run it reports the wall
time, the planning and fitting seconds from ``timings.csv``, the mean return of the
chosen episodes from ``metrics.csv``, the peak RSS, and (where the code has the
callback API) the RSS after every episode, whose growth from the second planned
episode to the last, beyond the transitions stored, is what a leak would show. On a
GPU it also reports the peak GPU memory.

Run::

    python experiments/benchmarks/whole_run.py --code old=/tmp/old --code new= \\
        --seeds 0 --repeats 1 --out experiments/benchmarks/whole_run.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_RSS_FILE = "rss_per_episode.json"


def _rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def child(argv: list[str]) -> int:
    """Run the CLI in this process, recording RSS after each episode if the code allows."""
    from bayes_mbrl import cli

    out = Path(argv[argv.index("--out") + 1])
    samples: list[dict[str, Any]] = []
    try:
        import bayes_mbrl
        from bayes_mbrl import experiment as exp_mod
        from bayes_mbrl.callbacks import Callback

        # an editable install resolves a module the older checkout lacks from the
        # installed one: use the callback only if it belongs to the code under test
        if (
            Path(sys.modules[Callback.__module__].__file__ or "").parent
            != Path(bayes_mbrl.__file__ or "").parent
        ):
            raise ImportError("the code under test has no callback API")

        class RecordRSS(Callback):
            def _on_episode_end(self, experiment: Any, row: dict[str, Any]) -> bool:
                samples.append({"episode": row["episode"], "rss_bytes": _rss_bytes()})
                return True

        original = exp_mod.run_experiment

        def run_with_rss(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
            return original(*args, callbacks=[*callbacks, RecordRSS()], **kwargs)

        exp_mod.run_experiment = run_with_rss  # type: ignore[assignment]
    except ImportError:  # older code without the callback API: no per-episode RSS
        pass
    rc = cli.main(argv)
    if samples:
        extra: dict[str, Any] = {"rss": samples}
        try:
            import torch

            if torch.cuda.is_available():
                extra["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        except ImportError:
            pass
        (out / _RSS_FILE).write_text(json.dumps(extra))
    return int(rc or 0)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def one_run(
    label: str, code: str, preset: str, seed: int, sets: list[str], out: Path, episodes: list[int]
) -> dict[str, Any]:
    """Run once in a child process; the measured figures of that run."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", "run", preset, "--seed", str(seed)]
    cmd += ["--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    log = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"{label} seed {seed} failed (status {status}):\n{log[-3000:]}")
    timings = _read_csv(out / "timings.csv")
    metrics = _read_csv(out / "metrics.csv")
    returns = {int(r["episode"]): float(r["return"]) for r in metrics}
    result: dict[str, Any] = {
        "label": label,
        "seed": seed,
        "wall_seconds": wall,
        "plan_seconds": sum(float(r["plan_seconds"]) for r in timings),
        "fit_seconds": sum(float(r["fit_seconds"]) for r in timings),
        "episode_seconds": [float(r["episode_seconds"]) for r in timings],
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "returns": [returns[k] for k in sorted(returns)],
        "mean_return": sum(returns[e] for e in episodes) / len(episodes),
        # the planning lines of the run log, and a warning if recording a CUDA graph failed
        "log": [
            line
            for line in log.splitlines()
            if line.startswith(("planning precision", "planning on")) or "CUDA graph" in line
        ],
    }
    rss_path = out / _RSS_FILE
    if rss_path.exists():
        result.update(json.loads(rss_path.read_text()))
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        raise SystemExit(child(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a version to run: PATH goes first on PYTHONPATH ('' = the installed one)",
    )
    parser.add_argument("--preset", default="pendulum-ensemble-mpc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--episodes", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    versions = [c.split("=", 1) for c in args.code] or [["this", ""]]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for seed in args.seeds:
                for label, code in versions:
                    out = Path(tmp) / f"{label}-s{seed}-r{rep}"
                    r = one_run(label, code, args.preset, seed, args.set, out, args.episodes)
                    results.append(r)
                    rss = r.get("rss", [])
                    growth = (rss[-1]["rss_bytes"] - rss[2]["rss_bytes"]) if len(rss) > 3 else 0
                    print(
                        f"{label:>6} seed {seed} rep {rep}: wall {r['wall_seconds']:6.1f} s | "
                        f"planning {r['plan_seconds']:6.1f} s | fitting {r['fit_seconds']:5.1f} s"
                        f" | peak RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB | RSS growth "
                        f"episode 3 to last {growth / 2**20:+6.1f} MiB | mean return "
                        f"{r['mean_return']:7.1f} | {'; '.join(r['log'])}",
                        flush=True,
                    )
    for label, _ in versions:
        walls = [r["wall_seconds"] for r in results if r["label"] == label]
        print(f"{label:>6}: mean wall {sum(walls) / len(walls):6.1f} s over {len(walls)} runs")
    if args.out:
        meta = {"machine": platform.processor() or platform.machine(), "argv": sys.argv}
        args.out.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))


if __name__ == "__main__":
    main()

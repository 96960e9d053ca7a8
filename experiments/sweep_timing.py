"""Issue 19's sweep measurement: the same sweep on the ``local`` backend, on the ``ray``
backend (a local Ray instance) and as plain runs one after another; wall time of each,
per-trial ``metrics.csv`` compared byte for byte, and one trial killed mid-way on the
local backend to show that it is retried and the sweep completes with nothing lost.

    python experiments/sweep_timing.py                      # experiments/sweep_pendulum.toml
    python experiments/sweep_timing.py --tiny --out runs/sweep_timing_tiny   # 2 x 2, 2 episodes

Each backend runs ``bayes-mbrl sweep`` in a process of its own (``--jobs``, default:
the cores / the sweep's threads); "one after another" runs ``bayes-mbrl run`` for each
trial in turn with the same threads (``--sequential-threads 2``: each run on 2 threads,
the 2-core machine used whole by one run at a time). The killed trial (``--kill TRIAL:EPISODE``, by
default the first trial after its first episode) kills itself with SIGKILL through
``BAYES_MBRL_SWEEP_KILL``, once. Writes ``OUT/timing.json`` (and ``--json`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from bayes_mbrl.config import list_presets
from bayes_mbrl.experiment import available_cores
from bayes_mbrl.sweeps import load_sweep, read_summary
from bayes_mbrl.sweeps.trial import KILL_ENV

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _timed(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> float:
    start = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        print(f"warning: {' '.join(cmd[:6])} ... exited with {rc} (see {log})", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "experiments/sweep_pendulum.toml")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep_timing"))
    parser.add_argument("--jobs", type=int, default=0, help="0: the cores / the sweep's threads")
    parser.add_argument("--kill", default="", help="TRIAL:EPISODE ('none': no kill)")
    parser.add_argument(
        "--tiny", action="store_true", help="2 configurations x 2 seeds, 2 episodes"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["local", "ray", "sequential"])
    parser.add_argument(
        "--sequential-threads",
        type=int,
        default=0,
        help="torch threads of each run one after another (0: the sweep's threads; the "
        "cores: the machine used whole, the fair baseline)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(
            f"{args.out} exists; remove it or pick another --out (timings need fresh runs)"
        )
    args.out.mkdir(parents=True)
    data = tomllib.loads(args.sweep.read_text())
    base = data.get("base")
    if isinstance(base, str) and base not in list_presets():  # a path, relative to the file
        data["base"] = str((args.sweep.parent / base).resolve())
    data.pop("out", None)
    if args.tiny:
        data["seeds"] = [0, 1]
        data["set"] = {**data.get("set", {}), "experiment.episodes": 2}
        if "list" in data:
            data["list"] = data["list"][:2]
    sweep_file = args.out / "sweep.toml"
    sweep_file.write_text(tomli_w.dumps(data))
    sweep = load_sweep(sweep_file)
    threads = sweep.options.threads
    jobs = args.jobs or max(1, available_cores() // threads)
    kill = args.kill or f"{sweep.trials[0].name}:1"
    result: dict[str, Any] = {
        "sweep": str(args.sweep),
        "tiny": args.tiny,
        "trials": len(sweep.trials),
        "configurations": [v.label for v in sweep.variants],
        "seeds": sweep.options.seeds,
        "threads_per_trial": threads,
        "jobs": jobs,
        "sequential_threads": args.sequential_threads or threads,
        "cpu": _cpu_model(),
        "cores": available_cores(),
        "killed": None if kill == "none" else kill,
        "wall_seconds": {},
    }
    print(f"{len(sweep.trials)} trials, {jobs} at once, {threads} thread(s) each", flush=True)
    cli = [sys.executable, "-m", "bayes_mbrl.cli"]
    for backend in ("local", "ray"):
        if backend in args.skip:
            continue
        env = dict(os.environ)
        env.pop(KILL_ENV, None)
        if backend == "local" and kill != "none":
            env[KILL_ENV] = kill
        cmd = [*cli, "sweep", str(sweep_file), "--backend", backend, "--jobs", str(jobs)]
        cmd += ["--out", str(args.out / backend)]
        seconds = _timed(cmd, env, args.out / f"{backend}.log")
        result["wall_seconds"][backend] = round(seconds, 1)
        records = read_summary(args.out / backend)
        result[f"{backend}_finished"] = sum(r["status"] == "finished" for r in records)
        result[f"{backend}_attempts"] = {r["trial"]: r["attempts"] for r in records}
        print(f"{backend}: {seconds:.1f} s, {result[f'{backend}_finished']} trials finished",
              flush=True)  # fmt: skip
    if "sequential" not in args.skip:
        per_trial = {}
        total = 0.0
        for trial in sweep.trials:
            run_dir = args.out / "sequential" / trial.name
            cmd = [*cli, "run", str(sweep.base), "--seed", str(trial.seed), "--out", str(run_dir)]
            seq_threads = args.sequential_threads or threads
            cmd += ["--no-progress", "--set", f"experiment.threads={seq_threads}"]
            for override in trial.overrides:
                cmd += ["--set", override]
            seconds = _timed(cmd, None, args.out / "sequential.log")
            per_trial[trial.name] = round(seconds, 1)
            total += seconds
        result["wall_seconds"]["sequential"] = round(total, 1)
        result["sequential_seconds_per_trial"] = per_trial
        print(f"sequential: {total:.1f} s", flush=True)
    ran = [k for k in ("local", "ray", "sequential") if k not in args.skip]
    identical: dict[str, bool] = {}
    mismatched: list[str] = []
    for i, a in enumerate(ran):
        for b in ran[i + 1 :]:
            same = True
            for trial in sweep.trials:
                pa, pb = (args.out / x / trial.name / "metrics.csv" for x in (a, b))
                if not (pa.is_file() and pb.is_file() and pa.read_bytes() == pb.read_bytes()):
                    same = False
                    mismatched.append(f"{trial.name}: {a} vs {b}")
            identical[f"{a}_vs_{b}"] = same
    result["identical_metrics"] = identical
    result["mismatched"] = mismatched
    walls = result["wall_seconds"]
    if "sequential" in walls:
        result["speedup_vs_sequential"] = {
            k: round(walls["sequential"] / v, 2) for k, v in walls.items() if k != "sequential"
        }
    text = json.dumps(result, indent=1) + "\n"
    (args.out / "timing.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

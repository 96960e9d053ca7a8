"""Summarize PILCO runs written by ``experiments/pilco_swingup.py --out FILE.json``.

Prints per seed: the trial that first met the task's criterion, the interaction
time used (random rollout included), the success rate of the final policy from
fresh starts, and the policy optimizations' L-BFGS iterations and seconds; then
the totals the issue asks for.

Run: ``python experiments/summarize_pilco.py runs/pilco/cartpole-s*.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    solved, seconds, iters, opt_s, per_iter = 0, [], [], [], []
    for path in args.files:
        run = json.loads(path.read_text())
        trials = run["trials"]
        it = [t["lbfgs_iterations"] for t in trials]
        sec = [t["opt_seconds"] for t in trials]
        iters += it
        opt_s += sec
        per_iter += [s / max(i, 1) for s, i in zip(sec, it, strict=True)]
        ok = run["solved_at_trial"] is not None
        solved += ok
        if ok:
            seconds.append(run["interaction_seconds"])
        print(
            f"{path.name}: seed {run['seed']}: "
            + (
                f"solved at trial {run['solved_at_trial']} after {run['interaction_seconds']} s "
                f"of interaction; final policy succeeds from "
                f"{run.get('eval_success_rate', float('nan')):.0%} of fresh starts"
                if ok
                else f"not solved in {len(trials)} trials"
            )
            + f" | L-BFGS iterations {it}, seconds {sec}"
        )
    print(
        f"solved {solved} of {len(args.files)} seeds; interaction seconds (solved seeds) "
        f"{seconds}, mean {statistics.mean(seconds) if seconds else float('nan'):.1f}; policy "
        f"optimization: {statistics.mean(iters):.0f} L-BFGS iterations and "
        f"{statistics.mean(opt_s):.0f} s on average ({statistics.mean(per_iter):.2f} s per "
        f"iteration; range {min(opt_s):.0f}-{max(opt_s):.0f} s)"
    )


if __name__ == "__main__":
    main()

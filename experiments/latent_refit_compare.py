"""Warm against fresh refits of a latent model, on the data of a latent-MPC run.

Restores a run directory's newest checkpoint (its latent model and transitions),
then fits the model that the next episode would plan with in two ways, each for
``--steps`` gradient steps on every transition of the run:

* ``warm``: continue from the checkpoint's parameters and Adam state
  (``model.refit = "warm"``);
* ``fresh``: a new initialization, new normalizers and a new optimizer
  (``model.refit = "fresh"``);

and prints the training loss (negative ELBO per step, normalized units; the
filtering bound for the filtering encoder) every 50 steps and at the end. The run
directory is not modified (it is copied first).

    bayes-mbrl run pendulum-partial-latent-mpc --seed 1 --out runs/prefix-s1 \\
        --set experiment.episodes=5 --set latent_mpc.diagnostics_every=0
    python experiments/latent_refit_compare.py runs/prefix-s1 --steps 1500
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bayes_mbrl.experiment import Experiment
from bayes_mbrl.runs import read_run_config

__all__ = ["main"]


def fit_once(run: Path, mode: str, steps: int, seed: int, threads: int) -> dict[str, object]:
    """Restore ``run`` into a scratch copy and fit its latent model once."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run, copy)
        config = read_run_config(copy)
        config.model.refit = mode
        config.model.train_steps = steps
        config.model.first_fit_steps = steps
        config.experiment.threads = threads
        experiment = Experiment(config, copy)
        experiment.restore()
        model = experiment.parts.learner
        if not model.fitted:
            raise SystemExit(f"{run}: its checkpoint holds no fitted model yet")
        losses: list[float] = []
        start = time.perf_counter()
        report = model.fit(
            experiment.buffer,
            torch.Generator().manual_seed(seed),
            progress=lambda _e, train, _v: losses.append(train),
        )
        seconds = time.perf_counter() - start
    print(f"{mode}: " + " ".join(f"{v:.3f}" for v in losses), flush=True)
    return {
        "mode": mode,
        "transitions": len(experiment.buffer),
        "final_loss": report.final_train_loss,
        "losses_every_50": losses,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a latent-MPC run directory")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=5, help="seeds the batches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON with both fits")
    args = parser.parse_args(argv)
    rows = [
        fit_once(args.run, mode, args.steps, args.seed, args.threads) for mode in ("warm", "fresh")
    ]
    for r in rows:
        print(f"{r['mode']}: final loss {r['final_loss']:.3f} ({r['seconds']:.0f} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

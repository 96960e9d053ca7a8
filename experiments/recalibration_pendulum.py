"""Held-out calibration of model families on a run's Pendulum-v1 transitions, before
and after the cross-fitted variance recalibration (issue 20).

Loads a run directory (``load_run``: the transitions of every episode before the last
are the training data, the last episode is held out), and for each model kind either
takes the run's own checkpointed model (``--kinds run``) or fits a fresh model of that
kind (``model.kind = KIND`` with the run's other settings, seed 0) on the training
transitions. It prints, per state dimension: the calibration error and the coverage of
the 50% and 90% central intervals before and after
:func:`~bayes_mbrl.uncertainty.cross_fitted_recalibration` (fitted on one half of the
held-out episode, scored on the other), and the two fitted scales (aleatoric,
epistemic) of each half.

Run::

    python experiments/recalibration_pendulum.py runs/default_s0 --kinds run ensemble bnn \\
        --out experiments/recalibration_pendulum.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bayes_mbrl.algorithms.base import build_model
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.experiment import load_run
from bayes_mbrl.models.base import DynamicsModel
from bayes_mbrl.uncertainty import (
    calibration_metrics_from_moments,
    cross_fitted_recalibration,
    function_moments,
)


def evaluate(model: DynamicsModel, held_out: Any, num_draws: int | None) -> dict[str, Any]:
    """Calibration before and after recalibration on ``held_out``."""
    fs = model.posterior_functions(num_draws, torch.Generator().manual_seed(0))
    means, variances = function_moments(fs, held_out.obs, held_out.action)
    y = held_out.next_obs
    before = calibration_metrics_from_moments(means.double(), variances.double(), y.double())
    after, fits = cross_fitted_recalibration(means, variances, y)
    return {
        "calibration_error_before": before.calibration_error.tolist(),
        "calibration_error_after": after.calibration_error.tolist(),
        "coverage_before": {
            f"{lv:g}": c.tolist()
            for lv, c in zip(before.levels.tolist(), before.coverage, strict=True)
        },
        "coverage_after": {
            f"{lv:g}": c.tolist()
            for lv, c in zip(after.levels.tolist(), after.coverage, strict=True)
        },
        "nll_before": before.nll.tolist(),
        "nll_after": after.nll.tolist(),
        "aleatoric_scale": [f.aleatoric_scale.tolist() for f in fits],
        "epistemic_scale": [f.epistemic_scale.tolist() for f in fits],
        "functions": int(means.shape[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kinds", nargs="+", default=["run", "ensemble", "bnn"])
    parser.add_argument("--num-draws", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run = load_run(args.run_dir)
    train = run.train
    buffer = ReplayBuffer(train.obs.shape[1], train.action.shape[1], len(train.obs))
    buffer.add(
        train.obs, train.action, train.reward, train.next_obs, train.terminated, train.truncated
    )
    results: dict[str, Any] = {"run_dir": str(args.run_dir), "train": len(train.obs)}
    for kind in args.kinds:
        if kind == "run":
            model = run.model
        else:
            config = load_config(args.run_dir / "config.toml", [f"model.kind={kind}"])
            model = build_model(config, train.obs.shape[1], train.action.shape[1])
            model.fit(buffer, torch.Generator().manual_seed(0))
        r = evaluate(model, run.held_out, args.num_draws)
        results[kind] = r
        fmt = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        print(
            f"{kind:>9} ({type(model).__name__}, {r['functions']} functions): calibration error "
            f"{fmt(r['calibration_error_before'])} -> {fmt(r['calibration_error_after'])}; "
            f"90% coverage {fmt(r['coverage_before']['0.9'])} -> "
            f"{fmt(r['coverage_after']['0.9'])}; 50% {fmt(r['coverage_before']['0.5'])} -> "
            f"{fmt(r['coverage_after']['0.5'])}; scales aleatoric "
            f"{[fmt(s) for s in r['aleatoric_scale']]}, epistemic "
            f"{[fmt(s) for s in r['epistemic_scale']]}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

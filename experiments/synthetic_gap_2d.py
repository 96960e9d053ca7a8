"""Epistemic uncertainty in a narrow in-between gap, 2-D inputs, heteroscedastic noise.

Issue 20, first must-show. Data: ``s' = s + f(s, a) + eps`` with the smooth
``f(s, a) = sin(s + a / 2) + cos(a) / 2`` and noise ``eps ~ N(0, sigma(s)^2)``,
``sigma(s) = 0.05 + 0.025 (s + 2)`` (0.05 to 0.15 across the square), inputs uniform on
``[-2, 2]^2`` except a diagonal strip ``|s + a - 0.5| / sqrt(2) < 0.5``: a gap of width 1,
about half the length scales an exact GP fits to these data (about 2.0 along ``s`` and
2.4 along ``a``; written to the JSON), with data on both sides.

Families, all through their own API (``fit(ReplayBuffer)``, ``predict``,
``posterior_functions``): the bootstrap ensemble (PETS; Chua et al. 2018), the same
ensemble with randomized prior functions (Osband et al. 2018, ``prior_scale``), the
mean-field BNN (Blundell et al. 2015), SNGP (Liu et al. 2020: spectral-normalized
residual net with a random-feature GP output layer) and the exact GP. Per family and seed:

* ``aleatoric_ratio``: mean predicted aleatoric variance / mean true noise variance at
  fresh inputs inside the data (target [0.75, 1.25]);
* ``gap_ratio``: mean epistemic variance in the gap / inside the data, and
  ``gap_ratio_vs_gp``, that ratio over the exact GP's on the same data (target >= 0.75
  for at least one neural family);
* ``coverage_inside`` / ``coverage_gap``: fraction of fresh noisy transitions inside the
  central 90% interval of the model's predictive mixture
  (:func:`bayes_mbrl.uncertainty.calibration_metrics`; target [0.85, 0.95] both);
* ``function_coverage_inside`` / ``function_coverage_gap`` (a diagnostic without a target
  in the issue): fraction of inputs whose true mean next state lies within
  ``mean +- 1.645 sd`` of the *epistemic* part alone, the 90% credible interval of the
  mean function under a Gaussian approximation. With this noise level the noise dominates
  the predictive intervals, so this is where an over-confident posterior shows.

Run::

    python experiments/synthetic_gap_2d.py --seeds 0 1 2 --out experiments/synthetic_gap_2d.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models import (
    BayesianNeuralNet,
    DynamicsModel,
    ExactGPDynamics,
    ProbabilisticEnsemble,
)
from bayes_mbrl.models.sngp import SNGPDynamics
from bayes_mbrl.uncertainty import calibration_metrics


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds of the data, the initializations and the fits"""
    out: str = "experiments/synthetic_gap_2d.json"
    """the results (JSON)"""
    num_points: int = 2000
    """training transitions"""
    num_test: int = 2000
    """fresh transitions inside the data and (half as many) in the gap"""
    gap_width: float = 1.0
    """width of the diagonal strip without data"""
    hidden: int = 64
    """width of the two hidden layers of the ensembles and the BNN"""
    num_members: int = 5
    prior_scale: float = 1.0
    """beta of the randomized prior functions (normalized-delta units)"""
    max_epochs: int = 200
    patience: int = 15
    bnn_learning_rate: float = 3e-3
    sngp_width: int = 128
    sngp_features: int = 512
    sngp_length_scale: float = 1.0
    num_functions: int = 200
    """function draws of the continuous posteriors (BNN, SNGP, GP) for coverage"""
    families: str = "ensemble,ensemble_prior,bnn,sngp,gp"
    """comma-separated subset"""


GAP_CENTRE = 0.5


def true_mean(x: Tensor) -> Tensor:
    """``f(s, a)`` at ``(N, 2)`` inputs, ``(N, 1)``."""
    s, a = x[:, :1], x[:, 1:]
    return torch.sin(s + 0.5 * a) + 0.5 * torch.cos(a)


def noise_std(x: Tensor) -> Tensor:
    """``sigma(s) = 0.05 + 0.025 (s + 2)``, ``(N, 1)``."""
    return 0.05 + 0.025 * (x[:, :1] + 2)


def in_gap(x: Tensor, width: float) -> Tensor:
    """``(N,)`` whether each input lies in the strip without data."""
    return (x[:, 0] + x[:, 1] - GAP_CENTRE).abs() / math.sqrt(2) < width / 2


def sample(n: int, width: float, gap: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` inputs ``(n, 2)`` (outside the gap, or in it) and noisy next states ``(n, 1)``."""
    parts: list[Tensor] = []
    while sum(len(p) for p in parts) < n:
        x = torch.rand(4 * n, 2, generator=generator) * 4 - 2
        parts.append(x[in_gap(x, width) == gap])
    x = torch.cat(parts)[:n]
    y = x[:, :1] + true_mean(x) + noise_std(x) * torch.randn(n, 1, generator=generator)
    return x, y


def buffer(x: Tensor, y: Tensor) -> ReplayBuffer:
    """Transitions with ``obs = s``, ``action = a``, ``next_obs = y``."""
    n = len(x)
    buf = ReplayBuffer(1, 1, n)
    buf.add(x[:, :1], x[:, 1:], torch.zeros(n), y, torch.zeros(n), torch.zeros(n))
    return buf


def build(name: str, args: Args, seed: int) -> tuple[DynamicsModel, int | None]:
    """A family's model and the functions its analysis draws (None: its own default)."""
    hidden = [args.hidden, args.hidden]
    common = {"max_epochs": args.max_epochs, "patience": args.patience, "seed": seed}
    if name in ("ensemble", "ensemble_prior"):
        beta = args.prior_scale if name == "ensemble_prior" else 0.0
        ens = ProbabilisticEnsemble(
            1, 1, num_members=args.num_members, hidden_sizes=hidden, prior_scale=beta, **common
        )
        return ens, None
    if name == "bnn":
        bnn = BayesianNeuralNet(
            1, 1, hidden_sizes=hidden, learning_rate=args.bnn_learning_rate, **common
        )
        return bnn, args.num_functions
    if name == "sngp":
        sngp = SNGPDynamics(
            1,
            1,
            width=args.sngp_width,
            num_features=args.sngp_features,
            length_scale=args.sngp_length_scale,
            **common,
        )
        return sngp, args.num_functions
    if name == "gp":
        return ExactGPDynamics(1, 1, seed=seed), args.num_functions
    raise ValueError(f"unknown family {name!r}")


def evaluate(
    model: DynamicsModel,
    num_functions: int | None,
    inside: tuple[Tensor, Tensor],
    gap: tuple[Tensor, Tensor],
    seed: int,
) -> dict[str, float]:
    """The ratios from ``predict`` and the 90% coverage of the predictive mixture."""
    xi, xg = inside[0], gap[0]
    p_in = model.predict(xi[:, :1], xi[:, 1:], num_functions)
    p_gap = model.predict(xg[:, :1], xg[:, 1:], num_functions)
    coverage = {}
    for where, (x, y) in (("inside", inside), ("gap", gap)):
        cal = calibration_metrics(
            model,
            x[:, :1],
            x[:, 1:],
            y,
            num_functions,
            torch.Generator().manual_seed(seed),
            levels=(0.9,),
        )
        coverage[where] = float(cal.coverage[0, 0])
    function_coverage = {}
    for where, x, p in (("inside", xi, p_in), ("gap", xg, p_gap)):
        error = (p.mean - x[:, :1] - true_mean(x)).abs()
        covered = error <= 1.6449 * p.epistemic_var.sqrt()
        function_coverage[where] = float(covered.float().mean())
    return {
        "aleatoric_ratio": float(p_in.aleatoric_var.mean() / noise_std(xi).square().mean()),
        "epistemic_inside": float(p_in.epistemic_var.mean()),
        "epistemic_gap": float(p_gap.epistemic_var.mean()),
        "gap_ratio": float(p_gap.epistemic_var.mean() / p_in.epistemic_var.mean()),
        "coverage_inside": coverage["inside"],
        "coverage_gap": coverage["gap"],
        "function_coverage_inside": function_coverage["inside"],
        "function_coverage_gap": function_coverage["gap"],
        "abs_error_inside": float((p_in.mean - xi[:, :1] - true_mean(xi)).abs().mean()),
        "abs_error_gap": float((p_gap.mean - xg[:, :1] - true_mean(xg)).abs().mean()),
    }


def run_seed(args: Args, seed: int) -> dict[str, Any]:
    """Every family on one seed's data."""
    g = torch.Generator().manual_seed(seed)
    x, y = sample(args.num_points, args.gap_width, False, g)
    inside = sample(args.num_test, args.gap_width, False, g)
    gap = sample(args.num_test // 2, args.gap_width, True, g)
    data = buffer(x, y)
    results: dict[str, Any] = {}
    for name in args.families.split(","):
        model, nf = build(name, args, seed)
        start = time.perf_counter()
        report = model.fit(data, torch.Generator().manual_seed(seed))
        fit_seconds = time.perf_counter() - start
        metrics: dict[str, Any] = evaluate(model, nf, inside, gap, seed)
        metrics.update(fit_seconds=fit_seconds, epochs=report.epochs)
        if isinstance(model, ExactGPDynamics):
            ls = model.hyperparameters()["lengthscale"].reshape(-1) * model.input_normalizer.std
            metrics["gp_length_scales"] = [float(v) for v in ls]
        results[name] = metrics
        print(
            f"seed {seed} {name:>14}: aleatoric {metrics['aleatoric_ratio']:.3f} | gap ratio "
            f"{metrics['gap_ratio']:.2f} | 90% coverage inside {metrics['coverage_inside']:.3f} "
            f"gap {metrics['coverage_gap']:.3f} | mean function in its 90% interval inside "
            f"{metrics['function_coverage_inside']:.3f} gap {metrics['function_coverage_gap']:.3f}"
            f" | {report.epochs} epochs, {fit_seconds:.1f} s",
            flush=True,
        )
    if "gp" in results:
        for metrics in results.values():
            metrics["gap_ratio_vs_gp"] = metrics["gap_ratio"] / results["gp"]["gap_ratio"]
    return results


def summarize(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per family: the figures of every seed, their mean, and which targets every seed meets."""
    families = next(iter(per_seed.values())).keys()
    keys = [
        "aleatoric_ratio",
        "gap_ratio",
        "gap_ratio_vs_gp",
        "coverage_inside",
        "coverage_gap",
        "function_coverage_inside",
        "function_coverage_gap",
    ]
    summary: dict[str, Any] = {}
    for fam in families:
        rows = [per_seed[s][fam] for s in per_seed]
        entry: dict[str, Any] = {}
        for k in keys:
            if k in rows[0]:
                vals = [r[k] for r in rows]
                entry[k] = {"per_seed": vals, "mean": sum(vals) / len(vals)}
        entry["aleatoric_ok"] = all(0.75 <= r["aleatoric_ratio"] <= 1.25 for r in rows)
        entry["coverage_ok"] = all(
            0.85 <= r[c] <= 0.95 for r in rows for c in ("coverage_inside", "coverage_gap")
        )
        if "gap_ratio_vs_gp" in rows[0]:
            entry["gap_ok"] = all(r["gap_ratio_vs_gp"] >= 0.75 for r in rows)
        summary[fam] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Args()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, list):
            parser.add_argument(flag, type=int, nargs="+", default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    start = time.perf_counter()
    per_seed = {seed: run_seed(args, seed) for seed in args.seeds}
    out = {
        "args": asdict(args),
        "seeds": per_seed,
        "summary": summarize(per_seed),
        "wall_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

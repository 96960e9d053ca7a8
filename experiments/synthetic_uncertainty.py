"""Aleatoric vs epistemic uncertainty on synthetic 1-D dynamics with a gap in the data.

Dynamics ``s' = s + sin(s) + eps``, ``eps ~ N(0, sigma(s)^2)``, ``sigma(s) = 0.05 + 0.1 |s|``
(known heteroscedastic noise), observed only for ``s in [-3, -1] U [1, 3]``: the gap
``(-1, 1)`` has no data. The action is an irrelevant uniform column (models need
``action_dim >= 1``). Fits a probabilistic ensemble (PETS; Chua et al. 2018) and a
mean-field Bayesian neural network (Blundell et al. 2015, "Weight Uncertainty in Neural
Networks") and the same Bayesian neural network, smaller, sampled by NUTS (Hoffman & Gelman
2014; started at a MAP fit), and reports, per model:

* ``aleatoric_ratio``: mean predicted aleatoric variance / true noise variance, on a grid
  inside the data (target: within 25%, i.e. in [0.75, 1.25]);
* ``gap_epistemic_ratio``: mean epistemic variance in the gap / mean epistemic variance
  inside the data (target: >= 5).

Writes ``metrics.json`` and ``uncertainty.png`` under ``--out``.

Run::

    python experiments/synthetic_uncertainty.py --seed 0 --out runs/synthetic_uncertainty
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.models import DynamicsModel, ProbabilisticEnsemble
from bayes_mbrl.models.bnn import BayesianNeuralNet


@dataclass
class Args:
    seed: int = 0
    """seed of the data, the initializations and the fits"""
    out: str = "runs/synthetic_uncertainty"
    """output folder (metrics.json, uncertainty.png)"""
    num_points: int = 2000
    """transitions in the data set"""
    hidden: int = 64
    """width of the two hidden layers of both models"""
    ensemble_epochs: int = 150
    bnn_epochs: int = 200
    patience: int = 15
    bnn_patience: int = 15
    bnn_learning_rate: float = 1e-2
    num_functions: int = 200
    """BNN weight draws for the predictive moments"""
    models: str = "ensemble,bnn,bnn_nuts"
    """comma-separated subset of the models to fit"""
    nuts_hidden: str = "16"
    """hidden widths of the NUTS BNN, comma-separated (small: NUTS costs a full-data
    forward and backward pass per leapfrog step)"""
    nuts_warmup: int = 300
    nuts_samples: int = 300
    """NUTS samples kept per chain (all of them give the predictive moments)"""
    nuts_chains: int = 1
    nuts_max_tree_depth: int = 6
    nuts_prior_scale: float = 1.0
    nuts_dense_mass: int = 0
    """1: adapt a dense mass matrix"""


def noise_std(x: torch.Tensor) -> torch.Tensor:
    """The true noise standard deviation ``sigma(s) = 0.05 + 0.1 |s|``."""
    return 0.05 + 0.1 * x.abs()


def make_data(n: int, generator: torch.Generator) -> ReplayBuffer:
    """``n`` transitions with ``s`` uniform on ``[-3, -1] U [1, 3]``."""
    u = torch.rand(n, 1, generator=generator) * 4 - 2  # [-2, 2]
    x = u + torch.sign(u)  # [-3, -1] U [1, 3]
    action = torch.rand(n, 1, generator=generator) * 2 - 1
    eps = torch.randn(n, 1, generator=generator)
    next_obs = x + torch.sin(x) + noise_std(x) * eps
    buf = ReplayBuffer(1, 1, n)
    buf.add(x, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    return buf


def evaluate(model: DynamicsModel, num_functions: int | None) -> dict[str, float]:
    """The two ratios on fixed grids inside the data and in the gap."""
    inside = torch.cat([torch.linspace(-2.9, -1.1, 50), torch.linspace(1.1, 2.9, 50)])[:, None]
    gap = torch.linspace(-0.6, 0.6, 25)[:, None]
    p_in = model.predict(inside, torch.zeros_like(inside), num_functions)
    p_gap = model.predict(gap, torch.zeros_like(gap), num_functions)
    true_var = noise_std(inside) ** 2
    return {
        "aleatoric_ratio": float(p_in.aleatoric_var.mean() / true_var.mean()),
        "gap_epistemic_ratio": float(p_gap.epistemic_var.mean() / p_in.epistemic_var.mean()),
        "mean_abs_error_inside": float((p_in.mean - inside - torch.sin(inside)).abs().mean()),
    }


def plot(
    models: dict[str, tuple[DynamicsModel, int | None]], buf: ReplayBuffer, path: Path
) -> None:
    """Data, predictive mean, and +-2 sd epistemic and aleatoric bands per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = buf.all()
    grid = torch.linspace(-4, 4, 300)[:, None]
    fig, grid_axes = plt.subplots(
        1, len(models), figsize=(6 * len(models), 4.5), sharey=True, squeeze=False
    )
    axes = grid_axes[0]
    for ax, (name, (model, nf)) in zip(axes, models.items(), strict=True):
        p = model.predict(grid, torch.zeros_like(grid), nf)
        g, mean = grid[:, 0].numpy(), (p.mean - grid)[:, 0].numpy()
        epi, ale = (
            2 * p.epistemic_var[:, 0].sqrt().numpy(),
            2 * p.aleatoric_var[:, 0].sqrt().numpy(),
        )
        ax.scatter(data.obs[:, 0], (data.next_obs - data.obs)[:, 0], s=2, c="0.6", label="data")
        ax.plot(g, torch.sin(grid)[:, 0].numpy(), "k--", lw=1, label="true mean")
        ax.fill_between(
            g, mean - ale, mean + ale, color="tab:orange", alpha=0.3, label="aleatoric ±2sd"
        )
        ax.fill_between(
            g, mean - epi, mean + epi, color="tab:blue", alpha=0.5, label="epistemic ±2sd"
        )
        ax.plot(g, mean, "tab:blue", lw=1.5, label="predictive mean")
        ax.axvspan(-1, 1, color="0.9", zorder=-1)
        ax.set_title(name)
        ax.set_xlabel("s")
        ax.set_ylim(-2.5, 2.5)
    axes[0].set_ylabel("s' - s")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = make_data(args.num_points, torch.Generator().manual_seed(args.seed))
    hidden = [args.hidden, args.hidden]
    models: dict[str, tuple[DynamicsModel, int | None]] = {
        "ensemble": (
            ProbabilisticEnsemble(
                1,
                1,
                num_members=5,
                hidden_sizes=hidden,
                max_epochs=args.ensemble_epochs,
                patience=args.patience,
                seed=args.seed,
            ),
            None,
        ),
        "bnn": (
            BayesianNeuralNet(
                1,
                1,
                hidden_sizes=hidden,
                max_epochs=args.bnn_epochs,
                patience=args.bnn_patience,
                learning_rate=args.bnn_learning_rate,
                seed=args.seed,
            ),
            args.num_functions,
        ),
        "bnn_nuts": (
            BayesianNeuralNet(
                1,
                1,
                hidden_sizes=[int(h) for h in args.nuts_hidden.split(",")],
                activation="tanh",
                prior_scale=args.nuts_prior_scale,
                inference="nuts",
                num_samples=args.nuts_samples,
                warmup_steps=args.nuts_warmup,
                num_chains=args.nuts_chains,
                max_tree_depth=args.nuts_max_tree_depth,
                dense_mass=bool(args.nuts_dense_mass),
                seed=args.seed,
            ),
            None,
        ),
    }
    models = {k: v for k, v in models.items() if k in args.models.split(",")}
    results: dict[str, dict[str, Any]] = {}
    for name, (model, nf) in models.items():
        start = time.perf_counter()
        report = model.fit(buf, torch.Generator().manual_seed(args.seed))
        metrics: dict[str, Any] = dict(evaluate(model, nf))
        metrics.update(fit_seconds=time.perf_counter() - start, epochs=report.epochs)
        metrics["aleatoric_ok"] = float(0.75 <= metrics["aleatoric_ratio"] <= 1.25)
        metrics["gap_ok"] = float(metrics["gap_epistemic_ratio"] >= 5)
        results[name] = metrics
        nuts = ""
        if isinstance(model, BayesianNeuralNet) and model.nuts_diagnostics:
            diag = model.nuts_diagnostics
            metrics["nuts_diagnostics"] = diag
            nuts = " | NUTS per chain: " + ", ".join(
                f"step {c['step_size']:.2g} accept {c['accept_prob']:.2f} "
                f"leapfrog/sample {c['leapfrog_per_sample']:.0f} div {c['divergences']:.0f}"
                for c in diag
            )
        print(
            f"seed {args.seed} {name:>8}: aleatoric/true var {metrics['aleatoric_ratio']:.3f} "
            "(target [0.75, 1.25]) | "
            f"gap/inside epistemic var {metrics['gap_epistemic_ratio']:.1f} "
            f"(target >= 5) | mean abs error {metrics['mean_abs_error_inside']:.3f} | "
            f"{report.epochs} epochs, {metrics['fit_seconds']:.1f} s{nuts}"
        )
    (out / "metrics.json").write_text(
        json.dumps({"args": asdict(args), "results": results}, indent=2)
    )
    plot(models, buf, out / "uncertainty.png")
    print(f"wrote {out / 'metrics.json'} and {out / 'uncertainty.png'}")


if __name__ == "__main__":
    main()

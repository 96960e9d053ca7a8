"""The latent model's encoders against exact inference on a linear-Gaussian system.

The generative model is fixed to the true position-velocity system
(:meth:`LinearGaussianSSM.position_velocity`: only the position is observed), and only
the recognition network is trained, by the encoder's own objective. Then on fresh
sequences the encoder's marginals are compared with the Kalman filter's and the RTS
smoother's, and its ELBO with the exact log-likelihood.

    python experiments/latent_kalman.py [--steps 1500] [--out experiments/latent_kalman.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from bayes_mbrl.models.latent.kalman import LinearGaussianSSM, kalman_filter, rts_smoother
from bayes_mbrl.models.latent.linear import KnownLinearModel

__all__ = ["compare", "data", "train_encoder"]


def data(ssm: LinearGaussianSSM, n: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randn(n, length, ssm.action_dim, generator=gen, dtype=torch.float64)
    _, obs = ssm.simulate(n, length, actions, gen)
    return obs.float(), actions.float()


def train_encoder(
    model: KnownLinearModel,
    obs: Tensor,
    actions: Tensor,
    steps: int,
    batch: int = 32,
    seed: int = 0,
) -> list[float]:
    """Adam on the encoder's objective (no reward site); returns the loss per 100 steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.encoder_parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses, acc = [], 0.0
    torch.manual_seed(seed)
    for step in range(steps):
        rows = torch.randint(len(obs), (batch,), generator=gen)
        loss = model._loss(obs[rows], actions[rows], None) / (batch * obs.shape[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        acc += float(loss.detach())
        if (step + 1) % 100 == 0:
            losses.append(acc / 100)
            acc = 0.0
    return losses


def compare(model: KnownLinearModel, obs: Tensor, actions: Tensor) -> dict[str, float]:
    """Mean absolute errors of the encoder's marginal means and standard deviations
    against the exact filter (filtering, single_step, deterministic) or smoother
    (smoothing), relative to the exact posterior std, and the ELBO gap in nats/step."""
    ssm = model.ssm
    means, covs = model.posterior_marginals(obs, actions)
    if model.encoder == "smoothing":
        ref = rts_smoother(ssm, obs.double(), actions.double())
        rm, rc = ref.smoothed_means, ref.smoothed_covs
        loglik = ref.log_likelihood
    else:
        ref_f = kalman_filter(ssm, obs.double(), actions.double())
        rm, rc = ref_f.filtered_means, ref_f.filtered_covs
        loglik = ref_f.log_likelihood
    rsd = rc.diagonal(dim1=-2, dim2=-1).sqrt()
    sd = covs.double().diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    err_mean = ((means.double() - rm).abs() / rsd).mean((0, 1))
    err_sd = ((sd - rsd).abs() / rsd).mean((0, 1))
    elbo = model.elbo(obs, actions, None, num_samples=32)
    steps = obs.shape[0] * obs.shape[1]
    return {
        "mean_error_pos_in_sd": float(err_mean[0]),
        "mean_error_vel_in_sd": float(err_mean[1]),
        "sd_rel_error_pos": float(err_sd[0]),
        "sd_rel_error_vel": float(err_sd[1]),
        "exact_loglik_per_step": float(loglik.sum()) / steps,
        "elbo_per_step": float(elbo.sum()) / steps,
        # the velocity's error relative to the exact filter's velocity sd (what an
        # encoder that cannot see the velocity gets wrong)
        "vel_rmse_vs_truth_ratio": float(
            ((means[..., 1].double() - rm[..., 1]).pow(2).mean().sqrt()) / rsd[..., 1].mean()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--encoders", default="filtering,smoothing,single_step,deterministic")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ssm = LinearGaussianSSM.position_velocity()
    train_obs, train_act = data(ssm, 2000, args.length, seed=0)
    test_obs, test_act = data(ssm, 200, args.length, seed=1)
    rows = {}
    for enc in args.encoders.split(","):
        model = KnownLinearModel(ssm, enc)
        start = time.perf_counter()
        losses = train_encoder(model, train_obs, train_act, args.steps)
        row = compare(model, test_obs, test_act)
        row["train_seconds"] = time.perf_counter() - start
        row["final_loss"] = losses[-1]
        rows[enc] = row
        print(enc, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

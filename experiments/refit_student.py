"""Refit a planner's student on a ``policy_distill`` run's labels, offline, and evaluate it.

Separates the student's form from the data: every variant is trained on the same
labelled states (the run's checkpoint, :func:`load_distilled_policy`) and acts from
the same fixed starts (env seeds ``--start-seed`` onwards) as ``distill_policy.py``.

* ``gauss``: the run's student form, a Gaussian trained by the KL of
  :func:`policy_kl` (T = 1), acting with its mean;
* ``mixture``: a mixture of ``--components`` Gaussians trained by the cross-entropy
  ``E_{a ~ N(m, s^2)}[-log pi(a | s)]`` (8 draws from each label per step), acting with
  the mean of its heaviest component: a student that may keep both of the planner's
  choices where a Gaussian averages them.

    python experiments/refit_student.py runs/policy_distill/long40_t1-s0 \\
        --variant gauss:64,64 --variant gauss:256,256 --variant mixture:256,256 \\
        --out experiments/refit_student.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distill_policy import episodes
from torch import Tensor, nn

from bayes_mbrl.algorithms.policy_distill import load_distilled_policy, policy_kl
from bayes_mbrl.envs import get_task
from bayes_mbrl.runs import read_run_config

__all__ = ["main"]


class MixturePolicy(nn.Module):
    """``s -> (log weights, means, log stds)`` of ``k`` Gaussians (one action dim)."""

    def __init__(self, obs: Tensor, k: int, hidden: list[int]) -> None:
        super().__init__()
        sizes = [obs.shape[1], *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], 3 * k)
        self.k = k
        self.register_buffer("obs_mean", obs.mean(0))
        self.register_buffer("obs_std", obs.std(0).clamp_min(1e-3))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (obs - self.obs_mean) / self.obs_std
        for layer in self.layers:
            x = nn.functional.silu(layer(x))
        logit, mean, log_std = self.head(x).split(self.k, -1)
        return logit.log_softmax(-1), mean, log_std.clamp(-7.0, 2.0)


def fit(labels: dict[str, Tensor], kind: str, k: int, hidden: list[int], epochs: int,
        seed: int) -> MixturePolicy:  # fmt: skip
    obs, m, s = labels["obs"], labels["mean"], labels["std"]
    if m.shape[1] != 1:
        raise SystemExit("refit_student.py handles one action dimension")
    torch.manual_seed(seed)
    net = MixturePolicy(obs, 1 if kind == "gauss" else k, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    n, bs = len(obs), min(256, len(obs))
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for lo in range(0, n - bs + 1, bs):
            rows = order[lo : lo + bs]
            log_w, mean, log_std = net(obs[rows])
            if kind == "gauss":
                loss = policy_kl(m[rows], s[rows], mean, log_std, 1.0).mean()
            else:
                a = m[rows] + s[rows] * torch.randn(len(rows), 8, generator=g)
                z = (a[:, :, None] - mean[:, None, :]) / log_std.exp()[:, None, :]
                log_p = -0.5 * z**2 - log_std[:, None, :] - 0.5 * math.log(2 * math.pi)
                loss = -(log_p + log_w[:, None, :]).logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


class HeaviestMean:
    """Acts with the mean of the heaviest component, clipped to the bounds."""

    def __init__(self, net: MixturePolicy, low: float, high: float) -> None:
        self.net, self.low, self.high = net, low, high

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: Any) -> Tensor:
        log_w, mean, _ = self.net(torch.as_tensor(obs, dtype=torch.float32)[None])
        return mean[0, log_w[0].argmax()].clamp(self.low, self.high).reshape(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--variant", action="append", required=True,
                        help="KIND:HIDDEN, e.g. gauss:64,64 or mixture:256,256")  # fmt: skip
    parser.add_argument("--components", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--start-seed", type=int, default=20000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = read_run_config(args.run)
    task = get_task(config.env.id)
    _, labels = load_distilled_policy(args.run)
    starts = list(range(args.start_seed, args.start_seed + args.episodes))
    rows = []
    for variant in args.variant:
        kind, _, hidden = variant.partition(":")
        if kind not in ("gauss", "mixture"):
            raise SystemExit(f"--variant {variant}: the kind is gauss or mixture")
        sizes = [int(h) for h in hidden.split(",")]
        net = fit(labels, kind, args.components, sizes, args.epochs, config.experiment.seed)
        agent = HeaviestMean(net, float(task.action_low[0]), float(task.action_high[0]))
        returns, seconds = episodes(agent, config.env.id, config.env.episode_length, starts)
        row = {"run": str(args.run), "variant": variant, "labels": len(labels["obs"]),
               "returns": [round(r, 1) for r in returns], "mean": float(np.mean(returns)),
               "seconds_per_action": seconds}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

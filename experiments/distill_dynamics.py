"""Distil the default ensemble on Pendulum-v1 data into one network; compare them.

Per seed: ``--episodes`` random episodes of Pendulum-v1 to train on, 2 more held out;
the teacher is the default preset's ensemble (5 members x 3 hidden layers of 200),
the student ``model.kind = "distilled"`` with ``--hidden`` units. Reports

* held-out NLL per transition (raw units): the teacher's mixture over members
  ``-log mean_f N(s' | mu_f, sigma_f^2)``, the student's predictive
  ``N(mu, u_a + u_e)`` (its functions' mixture is exactly that Gaussian);
* Spearman rank correlation between the student's and the teacher's epistemic
  variance (summed over output dimensions) on the held-out inputs and on
  out-of-distribution inputs (angular velocity |theta_dot| in [6, 8], beyond the
  random episodes' range, and any action);
* the ratio of the student's to the teacher's epistemic and aleatoric variances
  (medians) on both input sets;
* seconds for one batched prediction of 70,000 inputs by each (one forward pass of
  the student against one per member).

    python experiments/distill_dynamics.py --seeds 0 1 2 --out experiments/distill_dynamics.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import make_env
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.models.distill import DistilledDynamics

__all__ = ["main"]


def collect(seed: int, episodes: int) -> ReplayBuffer:
    env = make_env("Pendulum-v1", max_episode_steps=200)
    buf = ReplayBuffer(3, 1, 200 * episodes)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        env.action_space.seed(seed * 1000 + ep)
        done = False
        while not done:
            action = env.action_space.sample()
            nxt, reward, term, trunc, _ = env.step(action)
            buf.add(obs, action, reward, nxt, term, trunc)
            obs, done = nxt, term or trunc
    env.close()
    return buf


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@torch.no_grad()
def teacher_nll(teacher: ProbabilisticEnsemble, obs: Any, action: Any, nxt: Any) -> float:
    ll = teacher.log_likelihood(obs, action, nxt)  # (E, N)
    return float(-(torch.logsumexp(ll, 0) - math.log(ll.shape[0])).mean())


@torch.no_grad()
def student_nll(student: DistilledDynamics, obs: Any, action: Any, nxt: Any) -> float:
    p = student.predict(obs, action)
    d = torch.distributions.Normal(p.mean, p.total_var.sqrt())
    return float(-d.log_prob(nxt).sum(-1).mean())


def compare(teacher: Any, student: Any, obs: Any, action: Any) -> dict[str, float]:
    pt, ps = teacher.predict(obs, action), student.predict(obs, action)
    return {
        "spearman_epistemic": spearman(ps.epistemic_var.sum(-1), pt.epistemic_var.sum(-1)),
        "epistemic_ratio_median": float((ps.epistemic_var / pt.epistemic_var).median()),
        "aleatoric_ratio_median": float((ps.aleatoric_var / pt.aleatoric_var).median()),
    }


def timed(fn: Any, repeats: int = 5) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    train = collect(seed, args.episodes)
    held = collect(seed + 100, 2).all()
    cfg = load_config("pendulum-ensemble-mpc", seed=seed)
    opts = {k: getattr(cfg.model, k) for k in ("num_members", "hidden_sizes", "max_epochs")}
    begin = time.perf_counter()
    student = DistilledDynamics(
        3, 1, teacher="ensemble", teacher_options=opts, hidden_sizes=args.hidden,
        temperature=args.temperature, max_epochs=args.student_epochs, seed=seed,
        patience=args.patience, off_data_scale=args.off_data_scale,
    )  # fmt: skip
    student.fit(train, torch.Generator().manual_seed(seed))
    fit_seconds = time.perf_counter() - begin
    teacher = student.teacher
    g = torch.Generator().manual_seed(seed + 7)
    n = 2000
    theta = torch.rand(n, generator=g) * 2 * math.pi
    speed = (6 + 2 * torch.rand(n, generator=g)) * torch.sign(torch.randn(n, generator=g))
    ood_obs = torch.stack([theta.cos(), theta.sin(), speed], 1)
    ood_act = torch.rand(n, 1, generator=g) * 4 - 2
    big_obs, big_act = torch.randn(70_000, 3), torch.randn(70_000, 1)
    row: dict[str, Any] = {
        "seed": seed,
        "train_transitions": len(train),
        "fit_seconds (teacher + student)": round(fit_seconds, 1),
        "nll_teacher": teacher_nll(teacher, held.obs, held.action, held.next_obs),
        "nll_student": student_nll(student, held.obs, held.action, held.next_obs),
        "held_out": compare(teacher, student, held.obs, held.action),
        "out_of_distribution": compare(teacher, student, ood_obs, ood_act),
        "predict_seconds_teacher": timed(lambda: teacher.predict(big_obs, big_act)),
        "predict_seconds_student": timed(lambda: student.predict(big_obs, big_act)),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--student-epochs", type=int, default=2000)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--off-data-scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run(s, args) for s in args.seeds]
    summary = {
        "nll_teacher_mean": float(np.mean([r["nll_teacher"] for r in rows])),
        "nll_student_mean": float(np.mean([r["nll_student"] for r in rows])),
    }
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "rows": rows, "summary": summary}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

"""Rank dynamics models of Pendulum-v1 by PSIS-LOO and held-out NLL (``compare_models``).

Three posteriors over the pendulum's dynamics, each fitted on the same random
episodes: the bootstrap ensemble, the Bayesian neural net (mean-field SVI) and the
user-written grey-box physics model of ``experiments/greybox_pendulum.py`` (unknown
mass and length, SVI). ``compare_models`` ranks them by their mean mixture NLL on
held-out episodes that no model saw, next to ``az.compare``'s PSIS-LOO on the training
transitions. Run it for two seeds: the ranking should not change.

Run: ``python experiments/compare_pendulum_models.py --seed 0`` (and ``--seed 1``)
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bayes_mbrl.data import ReplayBuffer, TransitionBatch
from bayes_mbrl.envs import get_task, make_env
from bayes_mbrl.experiment import load_user_function
from bayes_mbrl.models import BayesianNeuralNet, DynamicsModel, ProbabilisticEnsemble
from bayes_mbrl.models.pyro_dynamics import PyroDynamics
from bayes_mbrl.uncertainty import compare_models, to_inference_data


@dataclass
class Args:
    seed: int = 0
    train_episodes: int = 1
    held_out_episodes: int = 2
    episode_length: int = 200
    num_draws: int = 64
    out: Path | None = None


def random_episodes(seed: int, episodes: int, length: int) -> ReplayBuffer:
    """``episodes`` episodes of uniformly random torques, env reset seeds ``seed * 1000 + e``."""
    task = get_task("Pendulum-v1")
    buffer = ReplayBuffer(task.obs_dim, task.action_dim, episodes * length)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        env = make_env("Pendulum-v1", max_episode_steps=length)
        obs, _ = env.reset(seed=seed * 1000 + e)
        for _ in range(length):
            action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, float(reward), next_obs, terminated, truncated)
            obs = next_obs
        env.close()
    return buffer


def build_models(seed: int) -> dict[str, DynamicsModel]:
    """The three model families, as the experiment configs build them."""
    greybox = load_user_function("experiments/greybox_pendulum.py:pendulum_model", "greybox")
    return {
        "greybox": PyroDynamics(
            greybox, 3, 1, inference="svi", guide="normal", num_steps=1500,
            learning_rate=0.02, seed=seed,
        ),
        "ensemble": ProbabilisticEnsemble(3, 1, hidden_sizes=[200, 200, 200], seed=seed),
        "bnn": BayesianNeuralNet(3, 1, hidden_sizes=[200, 200, 200], seed=seed),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        kind = int if isinstance(default, int) else Path
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(args.seed)
    train = random_episodes(args.seed, args.train_episodes, args.episode_length)
    held_out: TransitionBatch = random_episodes(
        10_000 + args.seed, args.held_out_episodes, args.episode_length
    ).all()
    models = build_models(args.seed)
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(train, gen)
        print(f"fit {name}: {time.perf_counter() - start:.1f} s")

    # the export must carry every group az.summary and az.loo need
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = to_inference_data(models["greybox"], held_out, args.num_draws, gen)
        import arviz as az

        print(az.summary(idata, var_names=["m", "l"], kind="stats"))
        az.loo(idata)
    missing = [str(w.message) for w in caught if "group" in str(w.message).lower()]
    print(f"groups: {list(idata.groups())}; warnings about missing groups: {len(missing)}")

    # PSIS-LOO on the training transitions, and the mixture NLL of the unseen episodes
    table = compare_models(models, train, args.num_draws, gen, held_out=held_out)
    columns = ["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "warning"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[[*columns, "held_out_nll", "held_out_rank"]])
    by_nll = table.sort_values("held_out_rank").index
    print(f"seed {args.seed}: ranking on held-out transitions (NLL): {' > '.join(by_nll)}")
    print(f"seed {args.seed}: ranking by PSIS-LOO on training transitions: "
          f"{' > '.join(table.index)}")  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / f"compare_seed{args.seed}.csv")


if __name__ == "__main__":
    main()

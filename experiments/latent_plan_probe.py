"""Why does latent MPC fail at an episode? Probe the model a run would plan with next.

Restores a latent-MPC run directory (a scratch copy), refits its latent model once
(the fit the next episode would start with), then reports:

* the latent transition's aleatoric variance against the spread of the filtered
  beliefs and their one-step changes, and the members' (epistemic) spread;
* open-loop accuracy of the quantity the planner ranks plans by: from the filtered
  belief at every 10th step of every recorded episode, the 30-step reward sum
  predicted with the recorded actions (members' means, and with sampled noise)
  against the observed sum;
* planned episodes from fixed starts (env seeds that no run uses) under planner
  variants, each with the plan's predicted 30-step value against the realized
  reward sum every 10 steps and ``|theta|`` from ``info["state"]`` (evaluation only);
* with ``--states``, planned stretches of ``--state-steps`` steps from set true states
  ``theta,theta_dot`` (e.g. ``0.1,0``: at rest near the top), which ask whether the
  planner believes the pendulum can be held there.

    python experiments/latent_plan_probe.py runs/prefix-s1 --variants base,noise_free \\
        --starts 7001 7002 7003
    python experiments/latent_plan_probe.py runs/prefix-s1 --variants base,horizon15 \\
        --starts --states 0.1,0 0.3,-1 0.5,-2 --save-model /tmp/s1.pt

``--set model.overshooting=8`` (any ``SECTION.KEY=VALUE``) changes the config for the
refit and the plans. ``--hold`` reports what the model predicts from a pendulum held
at rest at the top. ``--save-model`` keeps the refitted model; ``--load-model`` probes
it again without refitting (the same numbers for the same variant).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.latent_mpc import LatentMPCAgent
from bayes_mbrl.config import dump_config, load_config
from bayes_mbrl.envs import make_env
from bayes_mbrl.experiment import Experiment
from bayes_mbrl.models.latent.model import Sequences
from bayes_mbrl.planning import PLANNERS, RolloutEvaluator, make_objective
from bayes_mbrl.planning.propagation import PROPAGATIONS, TSInf
from bayes_mbrl.runs import read_run_config

__all__ = ["main"]


@PROPAGATIONS.register("ts_inf_noise_free")
class TSInfNoiseFree(TSInf):
    """TS-inf with each member's mean transition (no aleatoric draws)."""

    def step(self, fs: Any, obs: Any, action: Any, generator: Any) -> Any:
        return fs.mean(obs, action)


VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "noise_free": {"propagation": "ts_inf_noise_free"},
    "expectation": {"propagation": "expectation"},
    "pessimistic": {"objective": "mean_minus_std"},
    "iterations10": {"iterations": 10},
    "horizon40": {"horizon": 40},
    "cem_large": {"population": 1000, "iterations": 10},
    "horizon15": {"horizon": 15},
    "horizon20": {"horizon": 20},
    "horizon15_expectation": {"horizon": 15, "propagation": "expectation"},
    "horizon20_expectation": {"horizon": 20, "propagation": "expectation"},
}


@torch.no_grad()
def model_report(model: Any, buffer: Any, horizon: int) -> None:
    episodes = Sequences.episodes(buffer)
    longest = max(b - a for a, b in episodes)
    bounds = [(a, b) for a, b in episodes if b - a == longest]  # stacked: equal lengths
    batch = buffer.all()
    obs = torch.stack([batch.obs[a:b] for a, b in bounds])
    act = torch.stack([batch.action[a:b] for a, b in bounds])
    rew = torch.stack([batch.reward[a:b] for a, b in bounds])
    m, c = model.posterior_marginals(obs, act)
    fs = model.sample_functions(model.num_members)
    z, a = m.reshape(-1, m.shape[-1]), act.reshape(-1, act.shape[-1])
    d = fs(z.expand(fs.n, -1, -1), a.expand(fs.n, -1, -1))
    np.set_printoptions(precision=4, suppress=True)
    print("latent variance of the filtered means   ", z.var(0).numpy())
    print(
        "variance of their one-step changes      ",
        (m[:, 1:] - m[:, :-1]).flatten(0, 1).var(0).numpy(),
    )
    print("transition noise variance (aleatoric)   ", d.variance.mean((0, 1)).numpy())
    print("members' spread of the mean (epistemic) ", d.mean.var(0).mean(0).numpy())
    diag = torch.diagonal(c, dim1=-2, dim2=-1).flatten(0, 1).mean(0)
    print("filter posterior variance               ", diag.numpy())
    reward_fn = model.reward_function()
    rows = []
    steps = obs.shape[1]
    for ep in range(obs.shape[0]):
        for t in range(10, steps - horizon, 10):
            g = torch.Generator().manual_seed(ep * 1000 + t)
            zm = m[ep, t].expand(fs.n, 1, -1).clone()
            zs = zm.clone()
            pm = ps = torch.zeros(fs.n, 1)
            for k in range(horizon):
                ak = act[ep, t + k].expand(fs.n, 1, -1)
                pm, ps = pm + reward_fn(zm, ak, None), ps + reward_fn(zs, ak, None)
                zm, zs = fs.mean(zm, ak), fs.sample(zs, ak, g)
            true = float(rew[ep, t : t + horizon].sum())
            rows.append((true, pm.mean().item(), ps.mean().item(), pm.std().item()))
    r = np.array(rows)
    for name, col in (("members' means", 1), ("with noise", 2)):
        err = r[:, col] - r[:, 0]
        corr = np.corrcoef(r[:, col], r[:, 0])[0, 1]
        print(
            f"{horizon}-step reward sums, {name}: bias {err.mean():.1f}, "
            f"MAE {np.abs(err).mean():.1f}, corr {corr:.3f} (sd of the true sums "
            f"{r[:, 0].std():.1f}, members' sd {r[:, 3].mean():.1f}, {len(r)} windows)"
        )


def _angle(model: Any, z: Tensor) -> Tensor:
    """The angle of the decoded observation mean ``(cos, sin)`` (the partial pendulum)."""
    o = model.decode(z.reshape(-1, z.shape[-1]))
    return torch.atan2(o[:, 1], o[:, 0])


def top_passages(buffer: Any, dt: float, near: float = 0.3, window: int = 4) -> None:
    """How often the recorded episodes pass near the top, and how fast: the angle of
    the observed (noisy) ``(cos, sin)``, unwrapped, its velocity by differences over
    ``window`` steps (noise about 0.05 rad / (window dt))."""
    obs = buffer.all().obs.numpy()
    for ep, (a, b) in enumerate(Sequences.episodes(buffer), 1):
        theta = np.unwrap(np.arctan2(obs[a:b, 1], obs[a:b, 0]))
        vel = (theta[window:] - theta[:-window]) / (window * dt)
        mid = theta[window // 2 : len(theta) - window // 2][: len(vel)]
        top = np.abs((mid + np.pi) % (2 * np.pi) - np.pi) < near
        speed = np.abs(vel[top])
        median = f"{np.median(speed):.1f}" if top.any() else "-"
        print(f"  episode {ep}: {int(top.sum())} steps with |theta| < {near}, median speed "
              f"there {median} rad/s, {int((speed < 2).sum())} slower than 2 rad/s")  # fmt: skip


@torch.no_grad()
def hold_report(exp: Experiment, model: Any, steps: int = 20, ahead: int = 10) -> None:
    """What the model believes about a pendulum held at rest at the top.

    A PD controller on the true state holds the pendulum near the top for ``steps``
    steps while the filter follows the noisy observations; then, from the belief,
    every member predicts ``ahead`` steps under constant torques, against the true
    pendulum from the same state. Also the velocity the belief implies (the decoded
    angle's one-step change under zero torque, averaged over members) as the filter
    sees more of the held pendulum."""
    env = make_env(exp.config.env.id, max_episode_steps=steps + 1)
    env.reset(seed=5)
    env.unwrapped.state = np.array([0.15, 0.0])
    wrapper = env
    while not hasattr(wrapper, "observation"):
        wrapper = wrapper.env
    obs_hist, act_hist = [wrapper.observation(env.unwrapped._get_obs())], []
    for _ in range(steps):
        th, thd = env.unwrapped.state
        th = (th + np.pi) % (2 * np.pi) - np.pi
        u = float(np.clip(-10.0 * th - 2.0 * thd, -2.0, 2.0))
        obs, *_ = env.step(np.array([u], np.float32))
        obs_hist.append(obs)
        act_hist.append([u])
    state, dt = env.unwrapped.state.copy(), float(env.unwrapped.dt)
    env.close()
    print("the recorded episodes near the top:")
    top_passages(exp.buffer, dt)
    fs = model.sample_functions(model.num_members)
    zero = torch.zeros(fs.n, 1, model.action_dim)
    print(f"held at the top {steps} steps: true (theta, theta_dot) = {state.round(3).tolist()}")
    for t in (2, 5, 10, steps + 1):
        b = model.encode(np.array(obs_hist[:t]), np.array(act_hist[: t - 1]))
        now = _angle(model, b.mean[None])
        nxt = _angle(model, fs.mean(b.mean.expand(fs.n, 1, -1).clone(), zero))
        vel = float((nxt - now).mean()) / dt
        print(f"  after {t:2d} observations: decoded theta {float(now):+.3f}, velocity the "
              f"belief implies {vel:+.2f} rad/s (true {state[1]:+.2f})")  # fmt: skip
    b = model.encode(np.array(obs_hist), np.array(act_hist))
    for u in (-2.0, -1.0, 0.0, 1.0, 2.0):
        sim = make_env(exp.config.env.id, max_episode_steps=ahead + 1)
        sim.reset(seed=0)
        sim.unwrapped.state = state.copy()
        z, a = b.mean.expand(fs.n, 1, -1).clone(), torch.full((fs.n, 1, model.action_dim), u)
        for _ in range(ahead):
            z = fs.mean(z, a)
            sim.step(np.array([u], np.float32))
        true = (sim.unwrapped.state[0] + np.pi) % (2 * np.pi) - np.pi
        sim.close()
        print(f"  torque {u:+.0f} for {ahead} steps: true theta {true:+.2f}, members' "
              f"{[round(float(x), 2) for x in _angle(model, z)]}")  # fmt: skip


def planned_episodes(
    exp: Experiment,
    model: Any,
    variant: str,
    starts: list[int],
    states: list[tuple[float, float]] | None = None,
    steps: int | None = None,
) -> None:
    """Planned episodes from env seeds ``starts``, or (``states``) from set true states."""
    cfg = exp.config
    p = copy.deepcopy(cfg.planner)
    for k, v in VARIANTS[variant].items():
        setattr(p, k, v)
    returns = []
    begin = time.perf_counter()
    begins: list[tuple[int, tuple[float, float] | None]] = (
        [(3, s) for s in states] if states else [(s, None) for s in starts]
    )
    for start, state in begins:
        gen = torch.Generator().manual_seed(start)
        planner = PLANNERS[p.kind].from_config(p, exp.task.action_low, exp.task.action_high, gen)
        objective = make_objective(p.objective, p.risk_beta, p.cvar_alpha)
        evaluator = RolloutEvaluator(
            model, model.reward_function(), p.horizon, particles=p.particles,
            propagation=p.propagation, objective=objective, precision=p.precision, generator=gen,
        )  # fmt: skip
        agent = LatentMPCAgent(model, planner, evaluator, "mean", gen)
        env = make_env(cfg.env.id, max_episode_steps=cfg.env.episode_length)
        obs, info = env.reset(seed=start)
        if state is not None:  # the wrapper observes the set state (with its noise)
            env.unwrapped.state = np.array(state, dtype=np.float64)
            wrapper = env
            while not hasattr(wrapper, "observation"):
                wrapper = wrapper.env
            obs = wrapper.observation(env.unwrapped._get_obs())
            info = {"state": env.unwrapped.state.copy()}
        agent.reset()
        values, rewards, thetas = [], [], []
        for _ in range(steps if state is not None and steps else cfg.env.episode_length):
            action = agent.act(obs)
            assert agent.last_plan is not None
            values.append(agent.last_plan.value)
            thetas.append(float(info["state"][0]))
            obs, reward, terminated, truncated, info = env.step(action.numpy().astype(np.float32))
            rewards.append(float(reward))
            if terminated or truncated:
                break
        env.close()
        rew, h = np.array(rewards), p.horizon
        theta = np.abs((np.array(thetas) + np.pi) % (2 * np.pi) - np.pi)
        if state is not None:
            every = 8
            print(f"  {variant} from theta, theta_dot = {state}: {len(rew)} steps, return "
                  f"{rew.sum():.1f}")  # fmt: skip
            print("    plan value", [round(v) for v in values[::every]])
            print("    |theta|   ", theta[::every].round(2).tolist(), flush=True)
        else:
            marks = range(0, len(rew) - h, 10)
            print(f"  {variant} start {start}: return {rew.sum():.1f}")
            print("    predicted", [round(values[t]) for t in marks])
            print("    realized ", [round(float(rew[t : t + h].sum())) for t in marks])
            print("    |theta|  ", theta[::10].round(1).tolist(), flush=True)
        returns.append(rew.sum())
    print(
        f"{variant}: mean return {np.mean(returns):.1f} over {len(begins)} "
        f"{'states' if states else 'starts'} ({time.perf_counter() - begin:.0f} s)",
        flush=True,
    )


def _state(text: str) -> tuple[float, float]:
    theta, theta_dot = (float(x) for x in text.split(","))
    return theta, theta_dot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--variants", default="base", help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--starts", type=int, nargs="*", default=[7001, 7002, 7003])
    parser.add_argument(
        "--states", type=_state, nargs="*", default=[], help="set true states theta,theta_dot"
    )
    parser.add_argument("--state-steps", type=int, default=80)
    parser.add_argument("--save-model", type=Path, help="save the refitted model's state here")
    parser.add_argument("--load-model", type=Path, help="probe this saved state (no refit)")
    parser.add_argument("--no-report", action="store_true", help="skip the model report")
    parser.add_argument(
        "--hold", action="store_true", help="report what the model predicts from a held top"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the run's config for the refit and the plans (e.g. model.overshooting=8)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        copy_dir = Path(scratch) / "run"
        shutil.copytree(args.run, copy_dir)
        config = read_run_config(copy_dir)
        if args.set:
            dump_config(config, Path(scratch) / "probe.toml")
            config = load_config(Path(scratch) / "probe.toml", args.set)
        config.experiment.threads = args.threads
        exp = Experiment(config, copy_dir)
        exp.restore()
        model = exp.parts.learner
        begin = time.perf_counter()
        if args.load_model:
            model.load_state_dict(torch.load(args.load_model, weights_only=False))
        else:
            model.fit(exp.buffer, exp.generator)
            print(f"refit on {len(exp.buffer)} transitions: {time.perf_counter() - begin:.0f} s")
        if args.save_model:
            torch.save(model.state_dict(), args.save_model)
        if not args.no_report:
            model_report(model, exp.buffer, config.planner.horizon)
        if args.hold:
            hold_report(exp, model)
        for variant in args.variants.split(","):
            if args.starts:
                planned_episodes(exp, model, variant, args.starts)
            if args.states:
                planned_episodes(exp, model, variant, [], args.states, args.state_steps)


if __name__ == "__main__":
    main()

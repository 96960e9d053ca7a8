"""PILCO: coordinates, one-step propagation against Monte Carlo, gradients, a task solved."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_mbrl.algorithms.pilco import PILCO, PILCO_TASKS, PILCOTask, StateMap, propagate
from bayes_mbrl.algorithms.policies import LinearPolicy, RBFPolicy
from bayes_mbrl.config import load_config
from bayes_mbrl.envs import make_env
from bayes_mbrl.errors import CheckpointError, ConfigError, DataError
from bayes_mbrl.experiment import (
    Experiment,
    load_checkpoint,
    load_run,
    resume_experiment,
    run_experiment,
)
from bayes_mbrl.planning.moment_matching import SEGP

DT = torch.float64
MC = 100_000


def test_state_map_replaces_cos_sin_pairs_by_angles() -> None:
    smap = StateMap(5, [(2, 3)])  # cart-pole: [x, x_dot, cos, sin, theta_dot]
    assert smap.state_dim == 4 and smap.angle_index == [2]
    theta = torch.tensor([0.3, 3.1, -3.1], dtype=DT)
    obs = torch.stack(
        [torch.ones(3), 2 * torch.ones(3), theta.cos(), theta.sin(), 5 * torch.ones(3)], -1
    )
    state = smap.to_state(obs)
    assert torch.allclose(state[:, 2], theta)
    assert torch.allclose(state[:, [0, 1, 3]], obs[:, [0, 1, 4]])
    # crossing +-pi: the delta is the short way round
    d = smap.deltas(obs[1:2], obs[2:3])
    assert d[0, 2] == pytest.approx(2 * math.pi - 6.2, abs=1e-9)
    # the joint vector [s, sin, cos] holds the observation at obs_in_joint
    mean, _ = smap.with_features(state[0], torch.zeros(4, 4, dtype=DT))
    assert torch.allclose(mean[smap.obs_in_joint], obs[0])
    with pytest.raises(ConfigError, match="distinct"):
        StateMap(3, [(0, 0)])


def random_dynamics_gp(
    g: torch.Generator, n: int = 30, scale: float = 0.3, in_dim: int = 6
) -> SEGP:
    """A GP from [obs (5), action (1)] (or ``in_dim`` inputs without angles) to
    cart-pole state deltas (4): random but tame."""
    x = torch.randn(n, in_dim, generator=g, dtype=DT)
    if in_dim == 6:
        x[:, 2:4] = torch.nn.functional.normalize(x[:, 2:4], dim=-1)
    e = 4
    ls = 1.0 + torch.rand(e, in_dim, generator=g, dtype=DT)
    sv = 0.2 + 0.2 * torch.rand(e, generator=g, dtype=DT)
    noise = 0.01 + 0.01 * torch.rand(e, generator=g, dtype=DT)
    y = scale * torch.randn(e, n, generator=g, dtype=DT)
    r = (x.unsqueeze(0).unsqueeze(-2) - x.unsqueeze(0).unsqueeze(-3)) / ls[:, None, None]
    k = sv[:, None, None] * torch.exp(-0.5 * r.square().sum(-1))
    inv = torch.linalg.inv(k + torch.diag_embed(noise[:, None].expand(e, n)))
    beta = (inv @ y.unsqueeze(-1)).squeeze(-1)
    return SEGP(x, beta, ls, sv, torch.zeros(e, dtype=DT), inv, noise)


def mc_step(
    gp: SEGP, policy: torch.nn.Module, s0: torch.Tensor, to_obs, g: torch.Generator
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """One step of the GP dynamics by simulation: ``s1 = s0 + f(o, u) + noise``, where
    ``f`` is drawn independently at every sample from the GP's marginal predictive."""
    obs = to_obs(s0)
    x = torch.cat([obs, policy(obs)], -1)
    sd = (gp.variance(x) + gp.noise_var).sqrt()
    return s0 + gp(x) + sd * torch.randn(s0.shape[0], 4, generator=g, dtype=DT)


def moments_with_se(s1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    prod = (s1 - s1.mean(0)).unsqueeze(-1) * (s1 - s1.mean(0)).unsqueeze(-2)
    n = math.sqrt(s1.shape[0])
    return s1.mean(0), s1.std(0) / n, prod.mean(0), prod.std(0) / n


def test_one_step_is_exact_when_the_gp_input_is_gaussian() -> None:
    """No angles and a constant action: the GP input is Gaussian, so the next state's
    mean and covariance (cross terms Cov[s, delta] included) are exact."""
    g = torch.Generator().manual_seed(0)
    gp = random_dynamics_gp(g, in_dim=5)
    smap = StateMap(4, [])
    policy = LinearPolicy(4, torch.tensor([-1.0]), torch.tensor([1.0]), init_scale=0.0)
    with torch.no_grad():
        policy.bias.fill_(0.7)
    mean0 = torch.tensor([0.1, -0.2, 0.5, 0.3], dtype=DT)
    cov0 = torch.diag(torch.tensor([0.4, 0.3, 0.5, 0.4], dtype=DT).square())
    target, weight = torch.zeros(4, dtype=DT), torch.eye(4, dtype=DT)
    with torch.no_grad():
        traj = propagate(gp, policy, smap, mean0, cov0, 1, target, weight, 1.0)
        s0 = mean0 + torch.randn(MC, 4, generator=g, dtype=DT) @ cov0.sqrt()
        s1 = mc_step(gp, policy, s0, lambda s: s, g)
    mean, se_mean, cov, se_cov = moments_with_se(s1)
    assert torch.all((traj.state_mean[1] - mean).abs() < 5 * se_mean)
    assert torch.all((traj.state_cov[1] - cov).abs() < 5 * se_cov)
    assert (traj.state_cov[1] - cov0).abs().max() > 20 * se_cov.max()  # the step did something


def test_one_step_through_features_and_policy_is_close_to_monte_carlo() -> None:
    """The full chain (sin/cos features -> RBF policy -> squashing -> GP) treats each
    intermediate joint as Gaussian (PILCO's approximation; every stage alone is exact,
    see test_moment_matching): the first step's moments agree with simulation within
    5 standard errors for the mean and 5% of the largest variance for the covariance."""
    g = torch.Generator().manual_seed(0)
    gp = random_dynamics_gp(g)
    smap = StateMap(5, [(2, 3)])
    centres = torch.randn(10, 5, generator=g, dtype=DT)
    policy = RBFPolicy(5, torch.tensor([-1.0]), torch.tensor([1.0]), centres, 1.0, generator=g)
    with torch.no_grad():
        policy.targets.mul_(10.0)  # a policy that does something
    mean0 = torch.tensor([0.1, -0.2, 0.5, 0.3], dtype=DT)
    cov0 = torch.diag(torch.tensor([0.2, 0.1, 0.3, 0.2], dtype=DT).square())
    task = PILCO_TASKS["bayes_mbrl/CartPoleSwingUp-v0"]
    target = torch.tensor(task.cost_target, dtype=DT)
    weight = torch.tensor(task.cost_weight, dtype=DT)

    def to_obs(s: torch.Tensor) -> torch.Tensor:
        return torch.stack([s[:, 0], s[:, 1], s[:, 2].cos(), s[:, 2].sin(), s[:, 3]], -1)

    with torch.no_grad():
        traj = propagate(gp, policy, smap, mean0, cov0, 1, target, weight, 0.25)
        s0 = mean0 + torch.randn(MC, 4, generator=g, dtype=DT) @ cov0.sqrt()
        s1 = mc_step(gp, policy, s0, to_obs, g)
    mean, se_mean, cov, _ = moments_with_se(s1)
    assert torch.all((traj.state_mean[1] - mean).abs() < 5 * se_mean)
    assert torch.allclose(traj.state_cov[1], cov, atol=0.05 * float(cov.diagonal().max()))
    assert (traj.state_mean[1] - mean0).abs().max() > 20 * se_mean.max()
    assert traj.cost_mean.shape == (1,) and 0.0 < float(traj.cost_mean[0]) < 1.0


def test_gradients_through_a_propagated_trajectory() -> None:
    g = torch.Generator().manual_seed(1)
    gp = random_dynamics_gp(g, n=8)
    smap = StateMap(5, [(2, 3)])
    target = torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0], dtype=DT)
    weight = torch.eye(5, dtype=DT)
    policy = LinearPolicy(5, torch.tensor([-1.0]), torch.tensor([1.0]), generator=g)
    mean0 = torch.zeros(4, dtype=DT)
    cov0 = 0.01 * torch.eye(4, dtype=DT)

    def total(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            policy.weight.copy_(w)
            policy.bias.copy_(b)
        policy.weight.grad = None
        return propagate(gp, policy, smap, mean0, cov0, 3, target, weight, 0.5).expected_return

    # autograd gradient of the policy parameters against central finite differences
    w0, b0 = policy.weight.detach().clone(), policy.bias.detach().clone()
    loss = total(w0, b0)
    loss.backward()
    grad = policy.weight.grad.clone()  # type: ignore[union-attr]
    eps = 1e-6
    for j in range(5):
        dw = torch.zeros_like(w0)
        dw[0, j] = eps
        with torch.no_grad():
            fd = (total(w0 + dw, b0) - total(w0 - dw, b0)) / (2 * eps)
        assert float(grad[0, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


class PointMass:
    """x'' = u on a frictionless track, dt = 0.1, |u| <= 1; the task: get to x = 1."""

    dt = 0.1

    def rollout(self, act, x0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        obs, actions = [x0.copy()], []
        s = x0.copy()
        for _ in range(steps):
            u = np.clip(act(s.astype(np.float32)), -1.0, 1.0)
            s = np.array([s[0] + self.dt * s[1] + 0.5 * self.dt**2 * u[0], s[1] + self.dt * u[0]])
            obs.append(s.copy())
            actions.append(u)
        return np.asarray(obs), np.asarray(actions)


def test_pilco_solves_a_point_mass_task() -> None:
    """From one random rollout, PILCO with a linear policy learns to move a point mass
    to x = 1 and hold it there within three trials."""
    task = PILCOTask(
        env_id="point-mass",
        angle_pairs=[],
        init_mean=[0.0, 0.0],
        init_std=[0.05, 0.05],
        cost_target=[1.0, 0.0],
        cost_weight=[[1.0, 0.0], [0.0, 0.0]],
        cost_width=0.5,
        horizon=25,
        dt=0.1,
        success=lambda obs: bool(np.all(np.abs(obs[-5:, 0] - 1.0) < 0.1)),
        success_text="within 0.1 of x = 1 over the last 5 steps",
    )
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    pilco = PILCO(task, low, high, policy="linear", gp_steps=100, opt_iterations=40, seed=0)
    env = PointMass()
    rng = np.random.default_rng(0)
    obs, act = env.rollout(lambda s: rng.uniform(-1, 1, 1), np.zeros(2), task.horizon)
    pilco.add_rollout(obs, act)
    solved = []
    for _ in range(3):
        pilco.fit_model()
        report = pilco.optimize_policy()
        assert report.final_cost < report.initial_cost
        obs, act = env.rollout(pilco.act, rng.normal(0, 0.05, 2), task.horizon)
        pilco.add_rollout(obs, act)
        solved.append(task.success(obs))
    assert solved[-1], solved
    # the prediction agrees with what happened: the predicted mean ends near x = 1
    traj = pilco.predict()
    assert abs(float(traj.state_mean[-1, 0]) - 1.0) < 0.1


def test_pilco_rejects_bad_rollouts_without_losing_data() -> None:
    task = PILCO_TASKS["bayes_mbrl/PendulumSwingUp-v0"]
    pilco = PILCO(task, torch.tensor([-2.0]), torch.tensor([2.0]), num_basis=5)
    obs = np.zeros((11, 3))
    obs[:, 0] = 1.0
    pilco.add_rollout(obs, np.zeros((10, 1)))
    with pytest.raises(DataError, match="obs"):
        pilco.add_rollout(np.zeros((11, 4)), np.zeros((10, 1)))
    bad = obs.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        pilco.add_rollout(bad, np.zeros((10, 1)))
    assert pilco.inputs.shape == (10, 4) and pilco.targets.shape == (10, 2)
    with pytest.raises(ConfigError, match="policy"):
        PILCO(task, torch.tensor([-2.0]), torch.tensor([2.0]), policy="tree")


def test_pendulum_swingup_env_starts_hanging_down() -> None:
    env = make_env("bayes_mbrl/PendulumSwingUp-v0")
    thetas = []
    for k in range(20):
        obs, _ = env.reset(seed=k)
        thetas.append(math.atan2(obs[1], obs[0]))
    down = np.abs(np.remainder(np.asarray(thetas), 2 * np.pi) - np.pi)
    assert down.max() < 0.5 and env.spec is not None and env.spec.max_episode_steps == 50
    # the dynamics are Pendulum-v1's, two of its steps per action
    reference = make_env("Pendulum-v1")
    reference.reset(seed=0)
    env.reset(seed=0)
    for state in ([np.pi, 0.0], [2.0, -1.5]):
        env.unwrapped.state = np.array(state)
        reference.unwrapped.state = np.array(state)
        u = np.array([1.3], dtype=np.float32)
        obs, reward, *_ = env.step(u)
        _, r1, *_ = reference.step(u)
        ref_obs, r2, *_ = reference.step(u)
        assert np.allclose(obs, ref_obs) and reward == pytest.approx(r1 + r2)


def test_pilco_through_the_runner_and_resume(tmp_path: Path) -> None:
    """``bayes-mbrl run cartpole-swingup-pilco``: a random episode, a PILCO episode
    (GP fit + L-BFGS policy search), checkpointed; resuming after the first episode
    gives the same metrics and policy as the uninterrupted run."""
    overrides = [
        "env.episode_length=12",
        "experiment.episodes=3",
        "experiment.progress=false",
        "pilco.num_basis=6",
        "pilco.opt_iterations=4",
        "model.num_steps=20",
    ]
    config = load_config("cartpole-swingup-pilco", overrides, seed=3)
    full = run_experiment(config, tmp_path / "full")
    rows = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert [r["policy"] for r in rows] == ["random", "pilco", "pilco"]
    assert int(rows[1]["fit_epochs"]) >= 1 and float(rows[1]["train_loss"]) < 12.0
    state = load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt_0003.pt")
    assert set(state["model"]) == {"gp", "policy"}

    # interrupted after episode 2: resume and finish
    config2 = load_config("cartpole-swingup-pilco", [*overrides, "experiment.episodes=2"], seed=3)
    run_experiment(config2, tmp_path / "part")
    text = (tmp_path / "part" / "config.toml").read_text()
    (tmp_path / "part" / "config.toml").write_text(text.replace("episodes = 2", "episodes = 3"))
    resumed = resume_experiment(tmp_path / "part")
    assert resumed.returns == full.returns
    policy_full = load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt_0003.pt")
    policy_part = load_checkpoint(tmp_path / "part" / "checkpoints" / "ckpt_0003.pt")
    for k, v in policy_full["model"]["policy"].items():
        assert torch.equal(v, policy_part["model"]["policy"][k])
    with pytest.raises(CheckpointError, match="run of mode 'pilco', which has no dynamics model"):
        load_run(tmp_path / "full")


def test_pilco_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"model\.kernel"):
        load_config("cartpole-swingup-pilco", ["model.kernel=matern52"])
    with pytest.raises(ConfigError, match=r"model\.kind"):
        load_config("cartpole-swingup-pilco", ["model.kind=ensemble"])
    with pytest.raises(ConfigError, match=r"pilco\.policy"):
        load_config("cartpole-swingup-pilco", ["pilco.policy=tree"])
    config = load_config("cartpole-swingup-pilco", ["env.id=Pendulum-v1"])
    with pytest.raises(ConfigError, match="PILCO task description"):
        Experiment(config, Path("unused"))

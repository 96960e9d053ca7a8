"""Tests of bayes_mbrl.envs: batched rewards vs. real envs, cart-pole physics, errors."""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from bayes_mbrl.envs import (
    CartPoleSwingUpEnv,
    TaskSpec,
    check_continuous_env,
    get_task,
    make_env,
    registered_task_ids,
)
from bayes_mbrl.envs.cartpole_swingup import ENV_ID as SWINGUP_ID
from bayes_mbrl.envs.cartpole_swingup import register_cartpole_swingup
from bayes_mbrl.errors import DataError, EnvError

# Rewards are computed by the env in float64 from its internal state and by the
# torch functions in float32 from the float32 observations, so they agree up to
# float32 round-off of costs of order 1-20.
REWARD_TOL = {"rtol": 1e-5, "atol": 1e-5}

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _rollout(
    env: gymnasium.Env[Any, Any],
    policy: Policy,
    n_steps: int,
    seed: int,
    reset_options: Callable[[int], dict[str, Any] | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Collect ``n_steps`` transitions over as many episodes as it takes."""
    rng = np.random.default_rng(seed)
    episode = 0
    options = reset_options(episode) if reset_options else None
    obs, _ = env.reset(seed=seed, options=options)
    env.action_space.seed(seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "term")}
    for _ in range(n_steps):
        action = np.asarray(policy(obs, rng), dtype=np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows["obs"].append(obs)
        rows["action"].append(action)
        rows["next_obs"].append(next_obs)
        rows["reward"].append(float(reward))
        rows["term"].append(bool(terminated))
        obs = next_obs
        if terminated or truncated:
            episode += 1
            options = reset_options(episode) if reset_options else None
            obs, _ = env.reset(options=options)
    env.close()
    return {
        "obs": torch.as_tensor(np.stack(rows["obs"]), dtype=torch.float32),
        "action": torch.as_tensor(np.stack(rows["action"]), dtype=torch.float32),
        "next_obs": torch.as_tensor(np.stack(rows["next_obs"]), dtype=torch.float32),
        "reward": torch.as_tensor(rows["reward"], dtype=torch.float32),
        "term": torch.as_tensor(rows["term"], dtype=torch.bool),
    }


def _check_batch(task: TaskSpec, batch: dict[str, torch.Tensor]) -> None:
    """The task's reward/termination functions reproduce the env on ``batch``."""
    obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
    reward = task.reward_fn(obs, action, next_obs)
    assert reward.shape == batch["reward"].shape
    assert reward.dtype == torch.float32
    torch.testing.assert_close(reward, batch["reward"], **REWARD_TOL)
    if task.termination_fn is None:
        assert not bool(batch["term"].any())
    else:
        done = task.termination_fn(obs, action, next_obs)
        assert done.dtype == torch.bool
        torch.testing.assert_close(done, batch["term"])
    # Leading batch shapes: (T,) -> (2, T/2) gives the same numbers.
    n = obs.shape[0] // 2 * 2
    reshaped = task.reward_fn(
        obs[:n].reshape(2, n // 2, -1),
        action[:n].reshape(2, n // 2, -1),
        next_obs[:n].reshape(2, n // 2, -1),
    )
    torch.testing.assert_close(reshaped.reshape(-1), reward[:n])


# ------------------------------------------------------------ reward vs. env


def test_pendulum_reward_matches_env() -> None:
    task = get_task("Pendulum-v1")
    env = make_env("Pendulum-v1", max_episode_steps=100)

    def policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Beyond [-2, 2] on purpose: gymnasium clips the torque before the cost.
        return rng.uniform(-3.0, 3.0, size=(1,))

    batch = _rollout(env, policy, n_steps=400, seed=0)
    assert bool((batch["action"].abs() > 2).any())
    _check_batch(task, batch)


def test_mountain_car_reward_and_termination_match_env() -> None:
    task = get_task("MountainCarContinuous-v0")
    env = make_env("MountainCarContinuous-v0", max_episode_steps=300)

    def policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Bang-bang energy pumping (push along the velocity) reaches the goal in
        # ~100 steps; noise and magnitudes above 1 (clipped force, unclipped
        # penalty in gymnasium) exercise the action penalty.
        direction = 1.0 if obs[1] >= 0 else -1.0
        return np.array([direction * rng.uniform(0.6, 1.5) + rng.normal(0.0, 0.1)])

    batch = _rollout(env, policy, n_steps=600, seed=1)
    n_goals = int(batch["term"].sum())
    assert n_goals >= 2, "the controller should reach the goal in several episodes"
    assert float(batch["reward"].max()) > 90.0
    assert bool((batch["action"].abs() > 1).any())
    _check_batch(task, batch)


def test_cartpole_swingup_reward_matches_env() -> None:
    task = get_task(SWINGUP_ID)
    env = make_env(SWINGUP_ID)

    def policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.2, 1.2, size=(1,))

    def reset_options(episode: int) -> dict[str, Any] | None:
        # Every other episode starts near upright so that rewards are far from 0.
        if episode % 2 == 0:
            return None
        return {"state": [0.1 * episode - 0.3, 0.0, math.pi + 0.2 * (episode % 3 - 1), 0.0]}

    batch = _rollout(env, policy, n_steps=320, seed=2, reset_options=reset_options)
    rewards = batch["reward"]
    assert float(rewards.min()) >= 0.0
    assert float(rewards.max()) <= 1.0
    assert float(rewards.max()) > 0.5
    _check_batch(task, batch)


@pytest.mark.parametrize("env_id", registered_task_ids())
def test_task_spec_matches_env(env_id: str) -> None:
    task = get_task(env_id)
    env = make_env(env_id, discrete_ok=task.discrete_actions)
    assert task.env_id == env_id
    assert env.observation_space.shape == (task.obs_dim,)
    if task.discrete_actions:  # one-hot actions
        assert isinstance(env.action_space, spaces.Discrete)
        assert int(env.action_space.n) == task.action_dim
        assert task.action_low.tolist() == [0.0] * task.action_dim
        assert task.action_high.tolist() == [1.0] * task.action_dim
    else:
        assert isinstance(env.action_space, spaces.Box)
        assert env.action_space.shape == (task.action_dim,)
        torch.testing.assert_close(task.action_low, torch.as_tensor(env.action_space.low))
        torch.testing.assert_close(task.action_high, torch.as_tensor(env.action_space.high))
    assert env.spec is not None
    assert task.max_episode_steps == env.spec.max_episode_steps
    env.close()


def test_cartpole_reward_and_termination_match_env() -> None:
    task = get_task("CartPole-v1")
    env = make_env("CartPole-v1", discrete_ok=True)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "term")}
    for _ in range(400):  # random pushes: episodes of 10-40 steps, each ending by a limit
        index = int(rng.integers(2))
        next_obs, reward, terminated, truncated, _ = env.step(index)
        one_hot = np.eye(2, dtype=np.float32)[index]
        assert task.env_action(torch.as_tensor(one_hot)) == index
        for k, v in zip(
            rows, (obs, one_hot, next_obs, float(reward), bool(terminated)), strict=True
        ):
            rows[k].append(v)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    batch = {
        k: torch.as_tensor(np.stack(v) if k in ("obs", "action", "next_obs") else v)
        for k, v in rows.items()
    }
    batch = {k: v.float() if k != "term" else v for k, v in batch.items()}
    assert int(batch["term"].sum()) >= 10
    _check_batch(task, batch)


def test_reward_fns_broadcast_and_check_shapes() -> None:
    task = get_task("Pendulum-v1")
    obs = torch.randn(4, 1, 3)
    action = torch.randn(1, 6, 1)
    assert task.reward_fn(obs, action, obs).shape == (4, 6)
    # the in-place evaluation rounds as the written-out cost does, broadcast or not
    for o, a in ((obs, action), (torch.randn(5, 7, 3) * 4, torch.randn(5, 7, 1) * 3)):
        th, u = torch.atan2(o[..., 1], o[..., 0]), a[..., 0].clamp(-2.0, 2.0)
        cost = th.square() + 0.1 * o[..., 2].square() + 0.001 * u.square()
        assert torch.equal(task.reward_fn(o, a, o), -cost)
    # and it differentiates as that formula does (iLQR and pathwise gradients use it)
    o, a = (torch.randn(6, 3) * 2).requires_grad_(True), torch.randn(6, 1).requires_grad_(True)
    grads = torch.autograd.grad(task.reward_fn(o, a, o).sum(), (o, a))
    th, u = torch.atan2(o[..., 1], o[..., 0]), a[..., 0].clamp(-2.0, 2.0)
    expected = -(th.square() + 0.1 * o[..., 2].square() + 0.001 * u.square())
    for g, e in zip(grads, torch.autograd.grad(expected.sum(), (o, a)), strict=True):
        assert torch.equal(g, e)
    with pytest.raises(DataError, match=r"\(\.\.\., 1\)"):
        task.reward_fn(torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 3))
    mc = get_task("MountainCarContinuous-v0")
    assert mc.termination_fn is not None
    done = mc.termination_fn(torch.randn(3, 2), torch.randn(3, 1), torch.randn(3, 2))
    assert done.shape == (3,)
    assert done.dtype == torch.bool


def test_get_task_returns_fresh_tensors() -> None:
    a, b = get_task(SWINGUP_ID), get_task(SWINGUP_ID)
    a.action_low.fill_(-5.0)
    assert float(b.action_low[0]) == -1.0
    assert get_task(SWINGUP_ID).max_episode_steps == 40
    assert get_task(SWINGUP_ID).termination_fn is None


# ------------------------------------------------------------ cart-pole env


def test_check_env_cartpole_swingup() -> None:
    env = gymnasium.make(SWINGUP_ID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    env.close()
    # Only the "Box observation space ... infinity" warnings are expected: the
    # track and the velocities are genuinely unbounded.
    problems = [
        str(w.message) for w in caught if "infinity. This is probably too" not in str(w.message)
    ]
    assert problems == []


def test_cartpole_registration_is_idempotent() -> None:
    assert SWINGUP_ID in gymnasium.registry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_cartpole_swingup()
        register_cartpole_swingup()
    assert caught == []
    assert gymnasium.spec(SWINGUP_ID).max_episode_steps == 40


def test_cartpole_seeded_reset_is_deterministic() -> None:
    env_a, env_b = CartPoleSwingUpEnv(), CartPoleSwingUpEnv()
    obs_a, _ = env_a.reset(seed=123)
    obs_b, _ = env_b.reset(seed=123)
    np.testing.assert_array_equal(obs_a, obs_b)
    for _ in range(5):
        step_a = env_a.step(np.array([0.3], dtype=np.float32))
        step_b = env_b.step(np.array([0.3], dtype=np.float32))
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1] == step_b[1]
    obs_c, _ = env_a.reset(seed=124)
    assert not np.array_equal(obs_a, obs_c)


def test_cartpole_initial_state_distribution() -> None:
    env = CartPoleSwingUpEnv()
    env.reset(seed=0)
    states = []
    for _ in range(2000):
        env.reset()
        states.append(env.state.copy())
    arr = np.stack(states)
    np.testing.assert_allclose(arr.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(arr.std(axis=0), 0.1, rtol=0.06)
    obs, _ = env.reset(options={"state": [0.0, 0.0, 0.0, 0.0]})
    np.testing.assert_allclose(obs, [0.0, 0.0, 1.0, 0.0, 0.0])


def test_cartpole_energy_conserved_without_friction() -> None:
    env = CartPoleSwingUpEnv(friction=0.0)
    env.reset(options={"state": [0.2, 0.5, 2.0, -1.0]})
    m, big_m, length, g = 0.5, 0.5, 0.6, 9.82

    def energy(s: np.ndarray) -> float:
        _, xd, th, thd = s
        kinetic = (
            0.5 * (big_m + m) * xd**2
            + 0.5 * m * length * math.cos(th) * xd * thd
            + m * length**2 * thd**2 / 6.0
        )
        return kinetic - 0.5 * m * g * length * math.cos(th)

    def momentum(s: np.ndarray) -> float:
        _, xd, th, thd = s
        return (big_m + m) * xd + 0.5 * m * length * math.cos(th) * thd

    e0, p0 = energy(env.state), momentum(env.state)
    assert env.energy() == pytest.approx(e0)
    max_dtheta = 0.0
    theta0 = env.state[2]
    for _ in range(30):  # 3 s: the pole swings through large angles
        env.step(np.zeros(1, dtype=np.float32))
        assert energy(env.state) == pytest.approx(e0, abs=1e-6)
        assert momentum(env.state) == pytest.approx(p0, abs=1e-6)
        max_dtheta = max(max_dtheta, abs(env.state[2] - theta0))
    assert max_dtheta > 1.0


def test_cartpole_friction_decelerates_cart() -> None:
    # Negligible pole mass: x_ddot = -b x_dot / M, so x_dot(t) = x_dot(0) exp(-b t / M).
    env = CartPoleSwingUpEnv(pole_mass=1e-9, friction=0.1)
    env.reset(options={"state": [0.0, 1.0, 0.0, 0.0]})
    for k in range(1, 21):
        env.step(np.zeros(1, dtype=np.float32))
        assert env.state[1] == pytest.approx(math.exp(-0.1 * 0.1 * k / 0.5), rel=1e-6)

    # Full pole mass: horizontal momentum decays (dp/dt = -b x_dot) and energy
    # never increases without force.
    env = CartPoleSwingUpEnv(friction=0.1)
    env.reset(options={"state": [0.0, 1.0, 0.0, 0.0]})
    energies = [env.energy()]
    for _ in range(40):
        env.step(np.zeros(1, dtype=np.float32))
        energies.append(env.energy())
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(energies))
    assert energies[-1] < 0.9 * energies[0] - 0.1 * abs(energies[0])
    frictionless = CartPoleSwingUpEnv(friction=0.0)
    frictionless.reset(options={"state": [0.0, 1.0, 0.0, 0.0]})
    for _ in range(40):
        frictionless.step(np.zeros(1, dtype=np.float32))
    assert env.state[0] < frictionless.state[0]


def test_cartpole_force_moves_cart_and_clips() -> None:
    env = CartPoleSwingUpEnv()
    env.reset(options={"state": [0.0, 0.0, 0.0, 0.0]})
    env.step(np.array([1.0], dtype=np.float32))
    pushed = env.state.copy()
    assert pushed[1] > 0.0
    assert pushed[3] < 0.0  # the pole lags behind the accelerating cart
    env.reset(options={"state": [0.0, 0.0, 0.0, 0.0]})
    env.step(np.array([5.0], dtype=np.float32))
    np.testing.assert_allclose(env.state, pushed)


def test_cartpole_render_rgb_array() -> None:
    env = CartPoleSwingUpEnv(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert isinstance(frame, np.ndarray)
    assert frame.shape == (400, 600, 3)
    assert frame.dtype == np.uint8
    env.close()


def test_cartpole_bad_arguments() -> None:
    with pytest.raises(EnvError, match="pole_length"):
        CartPoleSwingUpEnv(pole_length=0.0)
    with pytest.raises(EnvError, match="render_mode"):
        CartPoleSwingUpEnv(render_mode="video")
    env = CartPoleSwingUpEnv()
    with pytest.raises(EnvError, match="state"):
        env.reset(options={"state": [0.0, 1.0]})
    env.reset(seed=0)
    with pytest.raises(EnvError, match="finite"):
        env.step(np.array([np.nan], dtype=np.float32))


# ------------------------------------------------------------ errors


def test_get_task_unknown_id_suggests_close_match() -> None:
    with pytest.raises(EnvError, match="Pendulum-v2") as info:
        get_task("Pendulum-v2")
    assert "Pendulum-v1" in str(info.value)
    with pytest.raises(EnvError, match=SWINGUP_ID):
        get_task("CartPoleSwingUp-v0")


def test_make_env_unknown_id_suggests_close_match() -> None:
    with pytest.raises(EnvError, match="Pendulum-v1") as info:
        make_env("Pendulum-v2")
    assert not isinstance(info.value, gymnasium.error.Error)
    with pytest.raises(EnvError, match="MountainCarContinuous-v0"):
        make_env("MountainCarContinous-v0")


def test_make_env_bad_kwargs() -> None:
    with pytest.raises(EnvError, match="no_such_option"):
        make_env("Pendulum-v1", no_such_option=1)


def test_check_continuous_env_rejects_discrete_actions() -> None:
    env = gymnasium.make("CartPole-v1")
    with pytest.raises(EnvError, match="Box") as info:
        check_continuous_env(env)
    assert "Discrete(2)" in str(info.value)
    env.close()
    with pytest.raises(EnvError, match="Box"):
        make_env("CartPole-v1")


class _SpacesEnv(gymnasium.Env[Any, Any]):
    """Env stub with given spaces."""

    def __init__(self, observation_space: spaces.Space[Any], action_space: spaces.Space[Any]):
        self.observation_space = observation_space
        self.action_space = action_space


def test_check_continuous_env_rejects_bad_spaces() -> None:
    vector = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    image = spaces.Box(0, 255, shape=(64, 64, 3), dtype=np.uint8)
    check_continuous_env(_SpacesEnv(vector, vector))
    with pytest.raises(EnvError, match="pixel wrapper/latent model"):
        check_continuous_env(_SpacesEnv(image, vector))
    with pytest.raises(EnvError, match="flat Box observation"):
        check_continuous_env(_SpacesEnv(spaces.Dict({"a": vector}), vector))
    with pytest.raises(EnvError, match="bounded"):
        unbounded = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        check_continuous_env(_SpacesEnv(vector, unbounded))
    with pytest.raises(EnvError, match="float"):
        ints = spaces.Box(-3, 3, shape=(2,), dtype=np.int64)
        check_continuous_env(_SpacesEnv(vector, ints))
    with pytest.raises(EnvError, match="1-D"):
        check_continuous_env(_SpacesEnv(vector, spaces.Box(-1.0, 1.0, shape=(2, 2))))


# ------------------------------------------------------------ user envs


class _NoRenderModeEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """An ordinary user env: its constructor takes no ``render_mode``."""

    def __init__(self, goal: float = 0.0) -> None:
        self.goal = goal
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> Any:
        return np.zeros(2, np.float32), 0.0, False, False, {}


NO_RENDER_MODE_ID = "bayes_mbrl_test_envs/NoRenderMode-v0"
if NO_RENDER_MODE_ID not in gymnasium.registry:
    gymnasium.register(NO_RENDER_MODE_ID, entry_point=_NoRenderModeEnv, max_episode_steps=12)


def test_make_env_builds_env_without_render_mode() -> None:
    """What gymnasium.make builds, make_env builds (issue 21, point 1)."""
    reference = gymnasium.make(NO_RENDER_MODE_ID)
    reference.close()
    env = make_env(NO_RENDER_MODE_ID, goal=0.5)
    assert isinstance(env.unwrapped, _NoRenderModeEnv)
    assert env.unwrapped.goal == 0.5
    assert env.spec is not None and env.spec.max_episode_steps == 12
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,)
    env.close()


def test_make_env_render_mode_still_passed_when_asked() -> None:
    env = make_env(SWINGUP_ID, render_mode="rgb_array")
    assert env.unwrapped.render_mode == "rgb_array"
    env.close()
    assert make_env(SWINGUP_ID).unwrapped.render_mode is None
    # asking an env without render_mode for one is a clear error, not a TypeError
    with (
        pytest.warns(UserWarning, match="not in the possible render_modes"),
        pytest.raises(EnvError, match=r"cannot build .*NoRenderMode-v0.*render_mode"),
    ):
        make_env(NO_RENDER_MODE_ID, render_mode="rgb_array")


# ------------------------------------------------------------ the noisy cliff
def test_noisy_cliff_env_matches_its_reward_and_noise() -> None:
    from bayes_mbrl.envs.noisy_cliff import EDGE, ENV_ID, MAX_MOVE, noise_std, noisy_cliff_reward

    task = get_task(ENV_ID)
    env = make_env(ENV_ID)
    rng = np.random.default_rng(0)
    rewards, steps, violations = [], [], 0
    for t in range(800):
        if t % 100 == 0:
            obs, _ = env.reset(seed=t)
        # drift right, then hold around 0.3 (small noise) or 0.95 (large noise)
        target = 0.3 if (t // 100) % 2 else 0.95
        action = np.clip([(target - obs[0]) / MAX_MOVE + rng.normal(0, 0.3)], -1, 1)
        nxt, r, terminated, _, info = env.step(action.astype(np.float32))
        steps.append((obs, action.astype(np.float32), nxt))
        rewards.append(r)
        violations += int(info["violation"])
        assert info["violation"] == bool(nxt[0] > EDGE) and not terminated
        obs = nxt
    o, a, n = (torch.as_tensor(np.stack(z)) for z in zip(*steps, strict=True))
    torch.testing.assert_close(task.reward_fn(o, a, n), torch.tensor(rewards, dtype=torch.float32))
    assert violations > 0
    with pytest.raises(DataError, match=r"next_obs must have shape \(\.\.\., 1\)"):
        task.reward_fn(o, a, torch.zeros(len(o), 2))
    # the step is x + 0.25 a + noise, whose scale is 0.01 far from the edge, 0.1 near it
    scaled = ((n - o - MAX_MOVE * a)[:, 0] / torch.as_tensor(noise_std(o[:, 0].numpy()))).double()
    assert abs(float(scaled.std()) - 1.0) < 0.08 and abs(float(scaled.mean())) < 0.1
    far, near = o[:, 0] < 0.5, o[:, 0] > 0.9
    assert int(far.sum()) > 100 and int(near.sum()) > 100
    env.close()
    # the documented optimum of the expected reward: aim at m = 0.82
    aims = torch.linspace(0.6, 1.0, 81)
    eps = torch.randn(400_000, 1, generator=torch.Generator().manual_seed(0))
    nxt = (aims + torch.as_tensor(noise_std(aims.numpy())).float() * eps)[..., None]
    expected = noisy_cliff_reward(nxt, torch.zeros_like(nxt), nxt).mean(0)
    assert abs(float(aims[expected.argmax()]) - 0.82) <= 0.015

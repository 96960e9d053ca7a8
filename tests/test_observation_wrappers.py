"""Partial and pixel observations of Pendulum: what they show, seeding, stacking, errors."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from bayes_mbrl.envs import (
    OBSERVATION_KINDS,
    PENDULUM_PARTIAL_ID,
    PENDULUM_PIXELS_ID,
    PartialObservation,
    PixelObservation,
    TaskSpec,
    check_continuous_env,
    get_task,
    make_env,
    registered_task_ids,
)
from bayes_mbrl.envs.observations import (
    MAX_EPISODE_STEPS,
    _area_mean,
    _area_plan,
    register_observation_envs,
)
from bayes_mbrl.errors import EnvError

NOISE_STD = 0.05


def _actions(n: int, seed: int) -> np.ndarray:
    """``n`` torques in ``[-2, 2]``, shape ``(n, 1)``, float32."""
    return np.random.default_rng(seed).uniform(-2.0, 2.0, size=(n, 1)).astype(np.float32)


def _run(env: gymnasium.Env[Any, Any], seed: int, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reset with ``seed`` and take ``actions``: observations and true states, reset first."""
    obs, info = env.reset(seed=seed)
    observations, states = [obs], [info["state"]]
    for action in actions:
        obs, _, terminated, truncated, info = env.step(action)
        assert not (terminated or truncated)
        observations.append(obs)
        states.append(info["state"])
    return np.stack(observations), np.stack(states)


def _wrap(angle: np.ndarray | float) -> np.ndarray:
    """Angle in ``[-pi, pi)``."""
    return (np.asarray(angle) + math.pi) % (2 * math.pi) - math.pi


# ----------------------------------------------------------------- partial


def test_partial_observation_is_noisy_cos_sin_of_the_true_angle() -> None:
    env = gymnasium.make(PENDULUM_PARTIAL_ID)
    assert env.observation_space == spaces.Box(-np.inf, np.inf, (2,), np.float32)
    observations, states = [], []
    for seed in range(4):  # 4 episodes of 150 steps: 604 observations, 1208 noise draws
        obs, st = _run(env, seed, _actions(150, seed))
        observations.append(obs)
        states.append(st)
    env.close()
    obs = np.concatenate(observations)
    state = np.concatenate(states)
    assert obs.dtype == np.float32
    assert obs.shape == (604, 2)
    assert state.dtype == np.float64
    assert state.shape == (604, 2)  # (theta, theta_dot)
    err = obs - np.stack([np.cos(state[:, 0]), np.sin(state[:, 0])], axis=1)
    n = err.size
    # E|N(0, s^2)| = s sqrt(2/pi); its sample mean has sd about 0.6 s / sqrt(n)
    expected = NOISE_STD * math.sqrt(2 / math.pi)
    assert abs(np.abs(err).mean() - expected) < 4 * 0.6 * NOISE_STD / math.sqrt(n)
    assert abs(err.mean()) < 4 * NOISE_STD / math.sqrt(n)
    assert abs(err.std() / NOISE_STD - 1) < 0.1
    assert np.abs(err).max() < 5 * NOISE_STD
    # the noise is independent between the two coordinates and over time
    assert abs(np.corrcoef(err[:, 0], err[:, 1])[0, 1]) < 0.15
    assert abs(np.corrcoef(err[:-1, 0], err[1:, 0])[0, 1]) < 0.15
    # the states are the env's: they span the circle and move
    assert np.ptp(_wrap(state[:, 0])) > 5.0
    assert np.abs(state[:, 1]).max() > 1.0


def test_partial_observation_drops_the_velocity() -> None:
    env = PartialObservation(gymnasium.make("Pendulum-v1"), noise_std=0.0)
    assert env.observation_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.reset(seed=0)
    pendulum: Any = env.unwrapped
    views = []
    for velocity in (-6.0, 0.0, 3.0):
        pendulum.state = np.array([0.7, velocity])
        views.append(env.observation(pendulum._get_obs()))
    for view in views:
        np.testing.assert_array_equal(view, views[0])
    np.testing.assert_allclose(views[0], [math.cos(0.7), math.sin(0.7)], atol=1e-6)
    # another choice of coordinates keeps exactly those
    velocity_only = PartialObservation(gymnasium.make("Pendulum-v1"), indices=[2], noise_std=0)
    obs, info = velocity_only.reset(seed=1)
    assert obs.shape == (1,)
    assert obs[0] == pytest.approx(info["state"][1], abs=1e-6)


def test_partial_observation_seeding() -> None:
    actions = _actions(20, seed=7)
    env_a, env_b = gymnasium.make(PENDULUM_PARTIAL_ID), gymnasium.make(PENDULUM_PARTIAL_ID)
    obs_a, state_a = _run(env_a, 3, actions)
    obs_b, state_b = _run(env_b, 3, actions)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(state_a, state_b)
    again, _ = _run(env_a, 3, actions)  # a seeded reset of the same env reproduces them
    np.testing.assert_array_equal(again, obs_a)
    other, _ = _run(env_b, 4, actions)
    assert not np.allclose(other, obs_a, atol=0.1)
    # the same start state but other noise: same seed for the dynamics, not the noise
    noiseless_a = PartialObservation(gymnasium.make("Pendulum-v1"), noise_std=0.0)
    clean, _ = _run(noiseless_a, 3, actions)
    assert not np.array_equal(clean, obs_a)
    assert np.abs(clean - obs_a).max() < 5 * NOISE_STD
    env_a.close()
    env_b.close()


# ------------------------------------------------------------------ pixels


def _centroid_angle(frame: np.ndarray) -> float:
    """Angle of the bright pixels' centroid about the frame centre, ``0`` up,
    counter-clockwise positive (``Pendulum-v1``'s ``theta``)."""
    size = frame.shape[-1]
    rows, cols = np.nonzero(frame > 0.5)
    weights = frame[rows, cols]
    x = np.average(cols + 0.5, weights=weights) - size / 2  # right
    y = size / 2 - np.average(rows + 0.5, weights=weights)  # up
    return math.atan2(-x, y)


def test_pixel_frames_show_the_pendulum_at_its_angle() -> None:
    env = gymnasium.make(PENDULUM_PIXELS_ID)
    assert env.observation_space == spaces.Box(0.0, 1.0, (1024,), np.float32)
    assert env.get_wrapper_attr("frame_shape") == (1, 32, 32)
    frames, thetas = [], []
    for seed in range(4):
        obs, state = _run(env, seed, _actions(12, seed))
        frames.append(obs)
        thetas.append(state[:, 0])
    env.close()
    obs = np.concatenate(frames)
    theta = np.concatenate(thetas)
    assert obs.dtype == np.float32
    assert obs.shape == (52, 1024)
    assert obs.min() >= 0.0
    assert obs.max() <= 1.0
    images = obs.reshape(-1, 32, 32)
    for image in images:
        assert image.max() > 0.7  # the rod (1.0) covers most of some pixel
        assert (image > 0.05).mean() < 0.1  # on a black background: sparse
        assert image[0].max() == 0.0  # nothing near the top or left edge
        assert image[:, 0].max() == 0.0
    errors = np.array(
        [_wrap(_centroid_angle(image) - th) for image, th in zip(images, theta, strict=True)]
    )
    assert np.ptp(_wrap(theta)) > 4.0  # the check covers much of the circle
    assert np.abs(errors).max() < 0.2, errors  # 0.04 measured
    assert np.abs(errors).mean() < 0.05
    # a different angle gives a different frame; the same angle the same frame
    changed = np.abs(np.diff(images, axis=0)).sum(axis=(1, 2))
    moved = np.abs(_wrap(np.diff(theta))) > 0.1
    assert (changed[moved] > 1.0).all()


def test_pixel_frames_leave_out_the_torque_arrow_unless_show_torque() -> None:
    push = np.array([2.0], np.float32)
    obs = {}
    for show in (False, True):
        env = gymnasium.make(PENDULUM_PIXELS_ID, show_torque=show)
        env.reset(seed=5)
        obs[show] = env.step(push)[0]  # the same state either way
        # the full-size image of one state, after two different actions
        pendulum: Any = env.unwrapped
        pendulum.last_u = 2.0
        image_a = env.render()
        pendulum.last_u = -1.0
        image_b = env.render()
        assert image_a.shape == (500, 500, 3)
        assert np.array_equal(image_a, image_b) != show
        env.close()
    assert np.abs(obs[True] - obs[False]).sum() > 2.0  # the arrow adds bright pixels


def test_frame_stack_holds_the_last_frames_oldest_first() -> None:
    actions = _actions(3, seed=11)
    single = gymnasium.make(PENDULUM_PIXELS_ID)
    stacked = gymnasium.make(PENDULUM_PIXELS_ID, frame_stack=3)
    assert stacked.observation_space.shape == (3 * 32 * 32,)
    assert stacked.get_wrapper_attr("frame_shape") == (3, 32, 32)
    f, _ = _run(single, 2, actions)  # f[t]: the frame after t steps
    s, _ = _run(stacked, 2, actions)
    single.close()
    stacked.close()
    s = s.reshape(4, 3, 32, 32)
    expected = [  # reset: three copies of the first frame; then one more frame per step
        [f[0], f[0], f[0]],
        [f[0], f[0], f[1]],
        [f[0], f[1], f[2]],
        [f[1], f[2], f[3]],
    ]
    for t, frames in enumerate(expected):
        np.testing.assert_array_equal(s[t], np.stack(frames).reshape(3, 32, 32))
    assert not np.array_equal(f[1], f[2])  # the frames do differ


def test_pixel_size_64_and_seeding() -> None:
    actions = _actions(2, seed=0)
    env_a = make_env(PENDULUM_PIXELS_ID, size=64)
    env_b = make_env(PENDULUM_PIXELS_ID, size=64)
    obs_a, _ = _run(env_a, 9, actions)
    obs_b, _ = _run(env_b, 9, actions)
    other, _ = _run(env_b, 10, actions)
    env_a.close()
    env_b.close()
    assert obs_a.shape == (3, 64 * 64)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, other)
    # a 64 x 64 frame averages to the 32 x 32 one, up to the different pixel grids
    env_c = make_env(PENDULUM_PIXELS_ID)
    small, _ = _run(env_c, 9, actions)
    env_c.close()
    pooled = obs_a.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)).reshape(3, -1)
    assert np.abs(pooled - small).mean() < 0.01


def test_area_mean_is_exact() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((512, 480), dtype=np.float32)
    plans = _area_plan(512, 32), _area_plan(480, 32)
    out = _area_mean(_area_mean(x, plans[0], axis=0), plans[1], axis=1)
    np.testing.assert_allclose(out, x.reshape(32, 16, 32, 15).mean(axis=(1, 3)), atol=1e-6)
    # a non-integer factor weighs each pixel by its overlap with the output pixel
    x = rng.random((500, 500), dtype=np.float32)
    plan = _area_plan(500, 32)
    edges = np.arange(33) * 500 / 32
    weights = np.clip(
        np.minimum(np.arange(1, 501)[None], edges[1:, None])
        - np.maximum(np.arange(500)[None], edges[:-1, None]),
        0,
        None,
    )
    weights /= weights.sum(axis=1, keepdims=True)
    out = _area_mean(_area_mean(x, plan, axis=0), plan, axis=1)
    np.testing.assert_allclose(out, weights @ x.astype(np.float64) @ weights.T, atol=1e-6)


# ------------------------------------------------------------ tasks, make


@pytest.mark.parametrize(
    ("env_id", "kind", "obs_dim", "frame_shape", "seen"),
    [
        (PENDULUM_PARTIAL_ID, "partial", 2, None, "partial observations"),
        (PENDULUM_PIXELS_ID, "pixels", 1024, (1, 32, 32), "pixels"),
    ],
)
def test_get_task_of_observed_pendulums(
    env_id: str, kind: str, obs_dim: int, frame_shape: tuple[int, int, int] | None, seen: str
) -> None:
    assert env_id in registered_task_ids()
    task = get_task(env_id)
    assert task.env_id == env_id
    assert task.observation == kind
    assert task.frame_shape == frame_shape
    assert (task.obs_dim, task.action_dim) == (obs_dim, 1)
    torch.testing.assert_close(task.action_high, torch.tensor([2.0]))
    torch.testing.assert_close(task.action_low, torch.tensor([-2.0]))
    assert task.max_episode_steps == MAX_EPISODE_STEPS == 200
    assert task.termination_fn is None
    assert task.expected_reward_fn is None
    obs = torch.zeros(4, obs_dim)
    message = (
        rf"{env_id} is observed through {seen}; its reward is not a function of the "
        r"observation: use experiment.mode = 'latent_mpc', whose latent model learns the reward"
    )
    with pytest.raises(EnvError, match=message):
        task.reward_fn(obs, torch.zeros(4, 1), obs)
    again = pickle.loads(pickle.dumps(task))  # the raising reward_fn pickles
    with pytest.raises(EnvError, match="latent_mpc"):
        again.reward_fn(obs, torch.zeros(4, 1), obs)
    # make_env, as the experiment runner calls it
    env = make_env(env_id, max_episode_steps=5)
    check_continuous_env(env)
    assert env.observation_space.shape == (task.obs_dim,)
    assert env.spec is not None
    assert env.spec.id == env_id
    env.reset(seed=0)
    ends = [env.step(np.zeros(1, np.float32))[3] for _ in range(5)]
    assert ends == [False] * 4 + [True]
    env.close()
    default = gymnasium.make(env_id)
    assert default.spec is not None
    assert default.spec.max_episode_steps == 200
    default.close()


def test_taskspec_observation_field() -> None:
    base: dict[str, Any] = {
        "env_id": "Test-v0",
        "obs_dim": 2 * 8 * 8,
        "action_dim": 1,
        "action_low": -1.0,
        "action_high": 1.0,
        "reward_fn": lambda obs, action, next_obs: next_obs.sum(-1),
    }
    assert OBSERVATION_KINDS == ("state", "partial", "pixels")
    plain = TaskSpec(**base)
    assert (plain.observation, plain.frame_shape) == ("state", None)
    assert get_task("Pendulum-v1").observation == "state"
    assert TaskSpec(**base, observation="partial").observation == "partial"
    pixels = TaskSpec(**base, observation="pixels", frame_shape=[2, 8, 8])
    assert pixels.frame_shape == (2, 8, 8)
    with pytest.raises(EnvError, match=r"observation must be one of 'state', 'partial'"):
        TaskSpec(**base, observation="image")
    with pytest.raises(EnvError, match=r"needs frame_shape=\(frame_stack, height, width\)"):
        TaskSpec(**base, observation="pixels")
    with pytest.raises(EnvError, match="frame_shape is only for observation='pixels'"):
        TaskSpec(**base, frame_shape=(2, 8, 8))
    with pytest.raises(EnvError, match="holds 64 values but obs_dim is 128"):
        TaskSpec(**base, observation="pixels", frame_shape=(1, 8, 8))
    with pytest.raises(EnvError, match="three ints >= 1"):
        TaskSpec(**base, observation="pixels", frame_shape=(2, 8.0, 8))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"indices": (0, 3)}, r"index 3 is out of range: .* must be in \[0, 3\)"),
        ({"indices": (-1,)}, r"index -1 is out of range"),
        ({"indices": ()}, "indices is empty"),
        ({"indices": (0, 0)}, "must not repeat"),
        ({"indices": (0, 1.0)}, "indices must be ints"),
        ({"indices": (True,)}, "indices must be ints"),
        ({"indices": "01"}, "indices must be a sequence of ints"),
        ({"noise_std": -0.1}, "noise_std must be a finite number >= 0"),
        ({"noise_std": float("nan")}, "noise_std must be a finite number >= 0"),
        ({"noise_std": "0.1"}, "noise_std must be a finite number >= 0"),
    ],
)
def test_partial_observation_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(EnvError, match=match):
        PartialObservation(gymnasium.make("Pendulum-v1"), **kwargs)
    with pytest.raises(EnvError, match=match):
        make_env(PENDULUM_PARTIAL_ID, **kwargs)


def test_partial_observation_needs_a_flat_box() -> None:
    with pytest.raises(EnvError, match=r"flat \(1-D\) Box observation space"):
        PartialObservation(gymnasium.make("FrozenLake-v1"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 4}, r"size must be an int in \[8, 128\]"),
        ({"size": 256}, r"size must be an int in \[8, 128\]"),
        ({"size": 32.0}, r"size must be an int in \[8, 128\]"),
        ({"frame_stack": 0}, "frame_stack must be an int >= 1"),
        ({"frame_stack": 1.5}, "frame_stack must be an int >= 1"),
    ],
)
def test_pixel_observation_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(EnvError, match=match):
        PixelObservation(gymnasium.make("Pendulum-v1", render_mode="rgb_array"), **kwargs)
    with pytest.raises(EnvError, match=match):
        make_env(PENDULUM_PIXELS_ID, **kwargs)


def test_pixel_observation_needs_rgb_array_rendering() -> None:
    with pytest.raises(EnvError, match=r"render_mode='rgb_array'; got render_mode=None"):
        PixelObservation(gymnasium.make("Pendulum-v1"))
    with pytest.raises(EnvError, match="gain must be a finite number > 0"):
        PixelObservation(gymnasium.make("Pendulum-v1", render_mode="rgb_array"), gain=0.0)
    with pytest.raises(EnvError, match="got render_mode='human'"):
        make_env(PENDULUM_PIXELS_ID, render_mode="human")

    class NoImage(gymnasium.Wrapper[Any, Any, Any, Any]):
        def render(self) -> Any:
            return np.zeros((10, 10))  # not an RGB image

    env = PixelObservation(NoImage(gymnasium.make("Pendulum-v1", render_mode="rgb_array")))
    with pytest.raises(EnvError, match=r"must return an \(H, W, 3\) RGB image.*shape \(10, 10\)"):
        env.reset(seed=0)
    env.close()


def test_registration_is_idempotent() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_observation_envs()
        register_observation_envs()
    assert caught == []
    for env_id in (PENDULUM_PARTIAL_ID, PENDULUM_PIXELS_ID):
        assert gymnasium.spec(env_id).max_episode_steps == 200


def test_state_modes_refuse_partial_and_pixel_tasks_naming_the_latent_modes() -> None:
    """A mode that plans on states cannot act on a task observed otherwise: the run is
    refused when it is built, with the modes that can (and the model kind they need)."""
    import re

    from bayes_mbrl.algorithms.base import build_algorithm
    from bayes_mbrl.config import load_config
    from bayes_mbrl.errors import ConfigError

    for env_id, seen in (
        (PENDULUM_PARTIAL_ID, "partial observations"),
        (PENDULUM_PIXELS_ID, "pixels"),
    ):
        config = load_config(None, [f"env.id={env_id}"])
        with pytest.raises(ConfigError) as err:
            build_algorithm(config, get_task(env_id), torch.Generator().manual_seed(0))
        message = str(err.value)
        assert f"is observed through {seen}" in message
        assert re.search(r"'latent_mpc'.*'latent_ac'|'latent_ac'.*'latent_mpc'", message)
        assert "model.kind = 'latent'" in message

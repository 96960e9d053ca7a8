"""TaskSpec: array-like bounds, optional fields, clear errors, and ``TaskSpec.from_env``."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from torch import Tensor

from bayes_mbrl.envs import TaskSpec, get_task
from bayes_mbrl.errors import BayesMBRLError, EnvError


def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Negative squared distance of ``next_obs`` to the origin, shape ``(...)``."""
    return -next_obs.square().sum(-1)


def spec(**changes: Any) -> TaskSpec:
    """A valid spec (3-D observations, 2-D actions), with ``changes`` applied; the
    optional fields are given explicitly so that only the field under test differs."""
    kwargs: dict[str, Any] = {
        "env_id": "Test-v0",
        "obs_dim": 3,
        "action_dim": 2,
        "action_low": [-1.0, -2.0],
        "action_high": [1.0, 2.0],
        "reward_fn": reward,
        "termination_fn": None,
        "max_episode_steps": None,
    }
    kwargs.update(changes)
    return TaskSpec(**kwargs)


# ------------------------------------------------------------ accepted bounds
@pytest.mark.parametrize(
    "low, high",
    [
        (np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32)),
        (np.array([-1.0, -2.0], np.float64), np.array([1.0, 2.0], np.float64)),
        (np.array([-1.0, -2.0], np.float16), np.array([1.0, 2.0], np.float16)),
        ([-1.0, -2.0], [1.0, 2.0]),
        ((-1, -2), (1, 2)),
        (torch.tensor([-1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 2.0])),
    ],
    ids=["numpy-float32", "numpy-float64", "numpy-float16", "list", "int-tuple", "tensor"],
)
def test_bounds_accept_array_likes(low: Any, high: Any) -> None:
    task = spec(action_low=low, action_high=high)
    for bound, expected in ((task.action_low, [-1.0, -2.0]), (task.action_high, [1.0, 2.0])):
        assert isinstance(bound, Tensor)
        assert bound.dtype == torch.float32
        assert bound.shape == (2,)
        assert bound.tolist() == expected


def test_bounds_are_copies_and_scalars_broadcast() -> None:
    low = np.array([-1.0, -2.0], np.float32)
    task = spec(action_low=low)
    low[0] = 5.0  # the user's array changes; the spec does not
    assert task.action_low.tolist() == [-1.0, -2.0]
    task = spec(action_low=-3.0, action_high=np.float32(4.0))
    assert task.action_low.tolist() == [-3.0, -3.0]
    assert task.action_high.tolist() == [4.0, 4.0]


def test_optional_fields_default_to_none() -> None:
    task = TaskSpec("Test-v0", 3, 2, [-1.0, -2.0], [1.0, 2.0], reward)
    assert task.termination_fn is None
    assert task.max_episode_steps is None
    assert task.expected_reward_fn is None
    assert spec(max_episode_steps=np.int64(50)).max_episode_steps == 50


# ------------------------------------------------------------ clear errors
@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"action_low": [-1.0, -1.0, -1.0]},
            r"action_low must have shape \(2,\) .*got shape \(3,\)",
        ),
        ({"action_high": [[1.0, 2.0]]}, r"action_high must have shape \(2,\) .*got shape \(1, 2\)"),
        ({"action_low": np.array([3.0, -2.0], np.float32)}, r"low 3 >= high 1 at index 0"),
        (
            {"action_low": [-1.0, 2.0]},
            r"action_low must be < action_high .*low 2 >= high 2 at index 1",
        ),
        ({"action_low": [-1.0, float("nan")]}, r"action_low must be finite; got nan at index 1"),
        ({"action_high": [1.0, float("inf")]}, r"action_high must be finite; got inf at index 1"),
        ({"action_high": np.array([1e39, 2.0])}, r"action_high must be finite; got inf at index 0"),
        ({"action_low": ["a", "b"]}, r"action_low must be numbers"),
        ({"action_low": None}, r"action_low must be numbers"),
        ({"obs_dim": 0}, r"obs_dim must be an int >= 1; got 0"),
        ({"action_dim": 2.0}, r"action_dim must be an int >= 1; got 2\.0"),
        ({"reward_fn": None}, r"reward_fn must be a callable \(obs, action, next_obs\)"),
        ({"termination_fn": "done"}, r"termination_fn must be a callable or None; got 'done'"),
        ({"max_episode_steps": 0}, r"max_episode_steps must be an int >= 1; got 0"),
        ({"env_id": 3}, r"env_id must be a str; got 3"),
    ],
    ids=[
        "low-shape",
        "high-shape",
        "low-above-high",
        "low-equals-high",
        "nan",
        "inf",
        "float32-overflow",
        "strings",
        "none",
        "obs-dim",
        "float-dim",
        "reward-fn",
        "termination-fn",
        "max-steps",
        "env-id",
    ],
)
def test_bad_fields_raise_clear_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvError, match=message) as info:
        spec(**changes)
    assert isinstance(info.value, BayesMBRLError)
    if "env_id" not in changes:
        assert str(info.value).startswith("TaskSpec 'Test-v0': ")


def test_float32_bounds_message_is_not_self_contradictory() -> None:
    """The old message said 'must be a float32 tensor of shape (2,); got float32 (2,)'."""
    task = spec(action_low=np.array([-1.0, -2.0], np.float32))
    assert task.action_low.dtype == torch.float32
    with pytest.raises(EnvError) as info:
        spec(action_low=np.array([-1.0, -2.0, -3.0], np.float32))
    assert "(2,)" in str(info.value) and "(3,)" in str(info.value)


# ------------------------------------------------------------ from_env
class PointEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """A 3-D observation, 2-D action Box env; no render_mode."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Box(
            np.array([-1.0, -0.5], np.float32), np.array([1.0, 0.5], np.float32)
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action: np.ndarray) -> Any:
        return np.zeros(3, np.float32), 0.0, False, False, {}


class GridEnv(PointEnv):
    """A discrete-action env."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = spaces.Discrete(4)  # type: ignore[assignment]


POINT_ID = "bayes_mbrl_test_taskspec/Point-v0"
GRID_ID = "bayes_mbrl_test_taskspec/Grid-v0"
for _id, _cls in ((POINT_ID, PointEnv), (GRID_ID, GridEnv)):
    if _id not in gymnasium.registry:
        gymnasium.register(_id, entry_point=_cls, max_episode_steps=25)


def _check_point_spec(task: TaskSpec) -> None:
    assert (task.obs_dim, task.action_dim) == (3, 2)
    assert task.action_low.dtype == torch.float32
    assert task.action_low.tolist() == [-1.0, -0.5]
    assert task.action_high.tolist() == [1.0, 0.5]
    assert task.reward_fn is reward


def test_from_env_reads_a_box_env() -> None:
    env = gymnasium.make(POINT_ID)
    task = TaskSpec.from_env(env, reward)
    _check_point_spec(task)
    assert task.env_id == POINT_ID
    assert task.max_episode_steps == 25
    assert task.termination_fn is None and task.expected_reward_fn is None
    env.close()

    def done(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[..., 0] > 1.0

    by_id = TaskSpec.from_env(POINT_ID, reward, termination_fn=done)
    _check_point_spec(by_id)
    assert by_id.max_episode_steps == 25
    assert by_id.termination_fn is done


def test_from_env_without_registration() -> None:
    task = TaskSpec.from_env(PointEnv(), reward)
    _check_point_spec(task)
    assert task.env_id == "PointEnv"
    assert task.max_episode_steps is None
    limited = TaskSpec.from_env(TimeLimit(PointEnv(), 7), reward, env_id="point")
    assert limited.max_episode_steps == 7
    assert limited.env_id == "point"
    assert TaskSpec.from_env(PointEnv(), reward, max_episode_steps=9).max_episode_steps == 9


def test_from_env_matches_get_task() -> None:
    built_in = get_task("Pendulum-v1")
    task = TaskSpec.from_env("Pendulum-v1", built_in.reward_fn)
    assert (task.env_id, task.obs_dim, task.action_dim) == ("Pendulum-v1", 3, 1)
    assert torch.equal(task.action_low, built_in.action_low)
    assert torch.equal(task.action_high, built_in.action_high)
    assert task.max_episode_steps == built_in.max_episode_steps


def test_from_env_reads_a_discrete_env_as_one_hot_actions() -> None:
    task = TaskSpec.from_env(gymnasium.make(GRID_ID), reward)
    assert task.discrete_actions and (task.obs_dim, task.action_dim) == (3, 4)
    assert task.action_low.tolist() == [0.0] * 4 and task.action_high.tolist() == [1.0] * 4
    assert task.env_action(torch.tensor([0.0, 0.0, 1.0, 0.0])) == 2
    assert TaskSpec.from_env(GRID_ID, reward).discrete_actions
    assert get_task("CartPole-v1").discrete_actions
    with pytest.raises(EnvError, match="discrete actions are one-hot vectors: give action_low = 0"):
        TaskSpec("d", 2, 3, -1.0, 1.0, reward, discrete_actions=True)


def test_from_env_refuses_image_envs() -> None:
    image = PointEnv()
    image.observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    with pytest.raises(
        EnvError, match=r"flat Box observation; got shape \(16, 16, 3\) \(images\?\)"
    ):
        TaskSpec.from_env(image, reward)


def test_from_env_refuses_non_envs() -> None:
    with pytest.raises(
        EnvError, match=r"needs a gymnasium\.Env or a registered gymnasium id; got int"
    ):
        TaskSpec.from_env(3, reward)  # type: ignore[arg-type]
    with pytest.raises(EnvError, match=r"unknown gymnasium env id 'Pendulum-v2'.*'Pendulum-v1'"):
        TaskSpec.from_env("Pendulum-v2", reward)

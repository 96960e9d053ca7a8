"""SAC (stable-baselines3) in the runner, from scratch or from a distilled policy.

* the actor initialized from a Gaussian policy reproduces its mean and spread in env
  units (through SAC's tanh squashing and action scaling);
* SAC's replay buffer holds the run's transitions with actions scaled to [-1, 1];
* the initialized actor acts unchanged for ``init_episodes``, then the critic is
  warmed up and SAC trains at ``updates_per_step``;
* a run resumed from a checkpoint repeats the uninterrupted one;
* SAC's critic learns the value of a known reward (a Monte Carlo check);
* bad input (not a policy_distill run, another task's policy, no trained policy yet,
  a bad option) is a clear error.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_runs import POLICY_DISTILL, SAC, assert_resumes_like_uninterrupted

from bayes_mbrl.algorithms.policy_distill import GaussianPolicy, load_distilled_policy
from bayes_mbrl.algorithms.sac import SACAgent, SACLearner, SACOptions, make_sac
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import get_task
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.experiment import Experiment, run_experiment

SAC_TINY = SAC
DISTILL_TINY = [*POLICY_DISTILL, "experiment.episodes=3"]


def _pendulum_learner(**opts: object) -> SACLearner:
    task = get_task("Pendulum-v1")
    options = SACOptions(hidden_sizes=[64, 64], **opts)  # type: ignore[arg-type]
    return SACLearner(make_sac(task, options, 0), options, task.action_low, task.action_high)


def test_initialized_actor_reproduces_the_gaussian_policy() -> None:
    learner = _pendulum_learner(init_epochs=300, init_policy="x")
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(512, 3, generator=g)
    # a smooth policy inside the bounds [-2, 2], with a state-dependent spread
    mean = 1.5 * torch.tanh(obs[:, :1] - 0.5 * obs[:, 2:])
    std = 0.1 + 0.1 * torch.sigmoid(obs[:, 1:2])
    kl = learner.init_actor(obs, mean, std)
    assert kl < 0.05
    agent = SACAgent(learner, 3, deterministic=True)
    acted = torch.stack([agent.act(o) for o in obs[:64]])
    assert (acted - mean[:64]).abs().max() < 0.15
    # the spread in env units, near the middle of the range (tanh' ~ 1 there)
    with torch.no_grad():
        _, log_std, _ = learner.sac.actor.get_action_dist_params(obs)
    middle = mean.abs()[:, 0] < 0.5
    ratio = (log_std.exp()[middle] * 2.0) / std[middle]  # half range 2
    assert 0.7 < float(ratio.median()) < 1.3


def test_a_policy_that_is_not_finite_is_refused() -> None:
    learner = _pendulum_learner(init_policy="x")
    obs, std = torch.zeros(4, 3), torch.ones(4, 1)
    with pytest.raises(ModelError, match="mean actions are not all finite"):
        learner.init_actor(obs, torch.full((4, 1), math.nan), std)


def test_replay_is_copied_with_scaled_actions_and_updates_follow_the_ratio() -> None:
    learner = _pendulum_learner(updates_per_step=0.5, batch_size=16)
    buf = ReplayBuffer(3, 1, 100, [-2.0], [2.0])
    g = torch.Generator().manual_seed(1)
    for i in range(40):
        o = torch.randn(3, generator=g)
        buf.add(o, [4.0 * i / 39 - 2.0], -float(i), o + 0.1, False, False)
    report = learner.fit(buf)
    sb3 = learner.sac.replay_buffer
    assert sb3 is not None and sb3.size() == 40
    assert torch.allclose(torch.as_tensor(sb3.actions[:40, 0, 0]), torch.linspace(-1, 1, 40))
    assert torch.equal(torch.as_tensor(sb3.observations[:40, 0]), buf.all().obs)
    assert report.epochs == 20 and learner.updates == 20 and learner.sac._n_updates == 20
    for _ in range(10):
        buf.add(torch.zeros(3), [0.0], 0.0, torch.zeros(3), False, False)
    assert learner.fit(buf).epochs == 5 and sb3.size() == 50


def test_critic_learns_the_value_of_a_constant_reward() -> None:
    """Reward -1 at every step, never terminating: Q = -1 / (1 - gamma) - alpha's part;
    with alpha ~ 0 (log_ent_coef fixed very low) the critic converges to -1/(1-gamma)."""
    gamma = 0.8
    learner = _pendulum_learner(gamma=gamma, batch_size=64, learning_rate=3e-3)
    assert learner.sac.log_ent_coef is not None
    with torch.no_grad():
        learner.sac.log_ent_coef.fill_(-20.0)
    learner.sac.ent_coef_optimizer = None  # keep alpha ~ 0
    learner.sac.ent_coef_tensor = torch.tensor(math.exp(-20.0))
    buf = ReplayBuffer(3, 1, 300, [-2.0], [2.0])
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        o = torch.randn(3, generator=g)
        a = torch.rand(1, generator=g) * 4 - 2
        buf.add(o, a, -1.0, torch.randn(3, generator=g), False, False)
    learner.options.updates_per_step = 10.0  # 3000 steps
    learner.sac.tau = 0.05
    learner.fit(buf)
    obs = torch.randn(100, 3, generator=g)
    act = torch.rand(100, 1, generator=g) * 2 - 1
    with torch.no_grad():
        q1, q2 = learner.sac.critic(obs, act)
    assert abs(float(q1.mean()) - (-1.0 / (1.0 - gamma))) < 0.5
    assert abs(float(q2.mean()) - (-1.0 / (1.0 - gamma))) < 0.5


def test_sac_run_resumes_like_the_uninterrupted_one(tmp_path: Path) -> None:
    assert_resumes_like_uninterrupted(load_config(None, SAC_TINY, seed=0), tmp_path)


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("distill") / "run"
    run_experiment(load_config(None, DISTILL_TINY, seed=0), run_dir)
    return run_dir


def test_init_from_a_distilled_run_acts_unchanged_then_trains(
    distill_run: Path, tmp_path: Path
) -> None:
    policy, labels = load_distilled_policy(distill_run, get_task("Pendulum-v1"))
    assert isinstance(policy, GaussianPolicy) and len(labels["obs"]) == 2 * 20
    sets = [*SAC_TINY, f'sac.init_policy="{distill_run}"', "sac.init_episodes=2"]
    exp = Experiment(load_config(None, sets, seed=0), tmp_path / "run")
    learner = exp.parts.learner
    assert isinstance(learner, SACLearner)
    learner.fit(ReplayBuffer(3, 1, 10))  # the first fit initializes the actor
    before = [p.detach().clone() for p in learner.sac.actor.parameters()]
    # the actor follows the distilled policy on its labelled states
    agent = SACAgent(learner, 3, deterministic=True)
    with torch.no_grad():
        mean, _ = policy(labels["obs"])
    acted = torch.stack([agent.act(o) for o in labels["obs"]])
    assert float((acted - mean.clamp(-2, 2)).abs().median()) < 0.2
    config = load_config(None, sets, seed=0)
    rows = run_experiment(config, tmp_path / "ran").metrics
    # fits before planned episodes 1 and 2 leave the actor alone; the third trains
    assert [r["fit_epochs"] for r in rows] == [0, 0, 0, 75]
    ran = Experiment(config, tmp_path / "ran")
    ran.restore()
    trained = ran.parts.learner
    assert isinstance(trained, SACLearner)
    assert trained.warmed_up and trained.updates == 75
    after = list(trained.sac.actor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_bad_init_policies_are_named(distill_run: Path, tmp_path: Path) -> None:
    def build(path: object, env: str = "Pendulum-v1") -> None:
        sets = [*SAC_TINY, f'sac.init_policy="{path}"', f'env.id="{env}"']
        Experiment(load_config(None, sets, seed=0), tmp_path / "x")

    with pytest.raises(ConfigError, match="does not exist"):
        build(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"distilled a policy for Pendulum-v1.*MountainCar"):
        build(distill_run, "MountainCarContinuous-v0")
    # a run of another mode
    mpc_run = tmp_path / "mpc"
    mpc = [s.replace("policy_distill", "mpc") for s in DISTILL_TINY if "policy_distill." not in s]
    run_experiment(load_config(None, [*mpc, "experiment.episodes=1"], seed=0), mpc_run)
    wrong_mode = r"mode = 'mpc'; .* must be a run of experiment\.mode 'policy_distill'"
    with pytest.raises(ConfigError, match=wrong_mode):
        build(mpc_run)
    # a policy_distill run with only its random episode: no policy yet
    early = tmp_path / "early"
    run_experiment(load_config(None, [*DISTILL_TINY, "experiment.episodes=1"], seed=0), early)
    with pytest.raises(ConfigError, match="no trained policy yet"):
        build(early)
    with pytest.raises(ConfigError, match=r"sac\.updates_per_step"):
        load_config(None, [*SAC_TINY, "sac.updates_per_step=0"])

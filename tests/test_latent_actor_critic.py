"""Latent actor-critic (``experiment.mode = "latent_ac"``): λ-returns, imagination over
transition members, learning a known optimal policy and value in a hand-made latent
problem, the state dict, and a whole run with checkpoint and resume."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bayes_mbrl.algorithms import ALGORITHMS
from bayes_mbrl.algorithms.latent_actor_critic import (
    LatentACAgent,
    LatentACOptions,
    LatentActorCritic,
    lambda_returns,
)
from bayes_mbrl.config import load_config
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.experiment import Callback, Experiment, resume_experiment, run_experiment
from bayes_mbrl.models.latent import LatentStateSpaceModel

# ----------------------------------------------------------------------- λ-returns


def test_lambda_returns_match_a_hand_computed_example() -> None:
    rewards = torch.tensor([[1.0], [2.0]])  # (H = 2, B = 1)
    values = torch.tensor([[0.5], [1.0], [3.0]])
    # G_2 = 3; G_1 = 2 + 0.9 (0.5 * 3 + 0.5 * 3) = 4.7; G_0 = 1 + 0.9 (0.5 * 1 + 0.5 * 4.7)
    got = lambda_returns(rewards, values, 0.9, 0.5)
    assert torch.allclose(got, torch.tensor([[3.565], [4.7]]))
    # λ = 1: discounted rewards plus the discounted last value; λ = 0: one-step TD targets
    mc = lambda_returns(rewards, values, 0.9, 1.0)
    assert torch.allclose(mc, torch.tensor([[1 + 0.9 * 2 + 0.81 * 3], [2 + 0.9 * 3]]))
    td = lambda_returns(rewards, values, 0.9, 0.0)
    assert torch.allclose(td, torch.tensor([[1 + 0.9 * 1.0], [2 + 0.9 * 3]]))
    with pytest.raises(ValueError, match="H \\+ 1"):
        lambda_returns(rewards, values[:2], 0.9, 0.5)


# --------------------------------------------------------- a hand-made latent problem

# z' = z + B a (no noise), r = -(Q z^2 + C a^2): a discounted scalar LQR problem whose
# optimal policy a = -K z and value V(z) = -P z^2 follow from the Riccati equation
Q, C, B, GAMMA = 1.0, 0.5, 1.0, 0.8


def riccati() -> tuple[float, float]:
    p = Q
    for _ in range(2000):
        p = Q + GAMMA * p - (GAMMA * B * p) ** 2 / (C + GAMMA * B * B * p)
    return p, GAMMA * B * p / (C + GAMMA * B * B * p)


class LinearTransition(nn.Module):
    """Every member: mean delta ``B a``, log-variance -30 (deterministic)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return B * x[..., 1:2], torch.full_like(x[..., :1], -30.0)


class QuadraticReward(nn.Module):
    def forward(self, z: Tensor, a: Tensor) -> Tensor:
        return -(Q * z[..., 0] ** 2 + C * a[..., 0] ** 2)


def lqr_learner(seed: int = 0, **changes: object) -> LatentActorCritic:
    model = LatentStateSpaceModel(1, 1, latent_dim=1, num_members=2, hidden_sizes=[8], embed_dim=4)
    model.nets.transition = LinearTransition()
    model.nets.reward = QuadraticReward()
    values: dict[str, object] = {
        "horizon": 5,
        "discount": GAMMA,
        "actor_hidden_sizes": [16, 16],
        "critic_hidden_sizes": [16, 16],
        "actor_learning_rate": 3e-3,
        "critic_learning_rate": 1e-2,
        "starts": 64,
        "target_rate": 0.1,
        "init_std": 0.3,
    }
    values.update(changes)
    opts = LatentACOptions(**values)  # type: ignore[arg-type]
    # bounds [-2, 2]: the optimal actions (|a| <= K) are inside, the scaling matters
    return LatentActorCritic(model, torch.tensor([-2.0]), torch.tensor([2.0]), opts, seed=seed)


START_POOL = torch.linspace(-1.0, 1.0, 201).unsqueeze(1)
GRID = torch.tensor([[-0.75], [-0.5], [-0.25], [0.0], [0.25], [0.5], [0.75]])


@torch.no_grad()
def discounted_cost(learner: LatentActorCritic, steps: int = 60) -> float:
    """The true return of the policy's mean action from the grid's states, averaged."""
    z, total = GRID.clone(), torch.zeros(len(GRID))
    for t in range(steps):
        a = learner.policy.mean_action(z)
        total += GAMMA**t * -(Q * z[:, 0] ** 2 + C * a[:, 0] ** 2)
        z = z + B * a
    return float(total.mean())


def test_pathwise_actor_learns_the_lqr_policy_and_the_critic_its_value() -> None:
    p, k = riccati()
    learner = lqr_learner()
    before = discounted_cost(learner)
    report = learner.train(START_POOL, 400, torch.Generator().manual_seed(0))
    optimum = float((-p * GRID[:, 0] ** 2).mean())
    after = discounted_cost(learner)
    assert before < 3 * optimum  # the fresh policy is far off
    assert after == pytest.approx(optimum, rel=0.02)
    with torch.no_grad():
        actions = learner.policy.mean_action(GRID)[:, 0]
        assert torch.allclose(actions, -k * GRID[:, 0], atol=0.05), actions
        values = learner.value(GRID)
    closed_form = -p * GRID[:, 0] ** 2
    assert float((values - closed_form).abs().max()) < 0.12, values
    assert float((values - closed_form).pow(2).mean().sqrt()) < 0.07, values
    assert report.updates == 400 and len(report.actor_losses) == 400 // 25
    assert report.returns[-1] > report.returns[0]


def test_reinforce_actor_improves_the_return() -> None:
    p, _ = riccati()
    learner = lqr_learner(gradient="reinforce")
    before = discounted_cost(learner)
    report = learner.train(START_POOL, 150, torch.Generator().manual_seed(0))
    after = discounted_cost(learner)
    optimum = float((-p * GRID[:, 0] ** 2).mean())
    assert after > before + 0.75 * (optimum - before)  # most of the way
    assert report.returns[-1] > report.returns[0]


def test_imagination_steps_each_block_with_its_member_and_freezes_the_model() -> None:
    model = LatentStateSpaceModel(2, 1, latent_dim=2, num_members=3, hidden_sizes=[8], embed_dim=4)

    class MemberIndex(nn.Module):
        """Member ``e`` moves every latent coordinate by ``e`` per step."""

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            e = torch.arange(x.shape[0], dtype=x.dtype).reshape(-1, 1, 1)
            return e.expand(*x.shape[:2], 2), torch.full((*x.shape[:2], 2), -30.0)

    transition = model.nets.transition
    opts = LatentACOptions(horizon=4, starts=5, actor_hidden_sizes=[8], critic_hidden_sizes=[8])
    learner = LatentActorCritic(model, torch.tensor([-1.0]), torch.tensor([1.0]), opts)
    assert learner._num_starts() == 6  # rounded up to a multiple of the 3 members
    before = {k: v.clone() for k, v in model.nets.state_dict().items()}
    learner.train(torch.randn(10, 2), 3, torch.Generator().manual_seed(0))
    # the actor-critic updates leave the model alone, and its parameters still learn
    after = model.nets.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad and p.grad is None for p in model.nets.parameters())

    model.nets.transition = MemberIndex()
    traj = learner.imagine(torch.zeros(6, 2), torch.Generator().manual_seed(0))
    assert traj.states.shape == (5, 6, 2) and traj.actions.shape == (4, 6, 1)
    assert traj.members.tolist() == [0, 0, 1, 1, 2, 2]
    moved = traj.states[-1, :, 0]
    assert torch.allclose(moved, 4.0 * traj.members.float(), atol=1e-4)
    assert bool((traj.actions.abs() <= 1.0).all())
    model.nets.transition = transition


def test_same_seed_same_parameters() -> None:
    def trained(seed: int) -> dict[str, Tensor]:
        learner = lqr_learner()
        learner.train(START_POOL, 3, torch.Generator().manual_seed(seed))
        return learner.policy.state_dict()

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_state_dict_round_trip_through_weights_only_load() -> None:
    learner = lqr_learner()
    learner.train(START_POOL, 3, torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = lqr_learner(seed=1)  # different parameters until loaded
    assert not torch.equal(fresh.policy(GRID)[0], learner.policy(GRID)[0])
    fresh.load_state_dict(state)
    assert fresh.fits == 1
    for mine, theirs in [
        (learner.policy, fresh.policy),
        (learner.critic, fresh.critic),
        (learner.target_critic, fresh.target_critic),
    ]:
        ours, restored = mine.state_dict(), theirs.state_dict()
        assert all(torch.equal(ours[k], restored[k]) for k in ours)
    assert fresh.actor_optimizer.state_dict()["state"].keys() == (
        learner.actor_optimizer.state_dict()["state"].keys()
    )
    # training continues identically from the restored state
    learner.train(START_POOL, 2, torch.Generator().manual_seed(5))
    fresh.train(START_POOL, 2, torch.Generator().manual_seed(5))
    assert torch.equal(learner.policy(GRID)[0], fresh.policy(GRID)[0])
    # a state of another configuration is refused and nothing changes
    other = lqr_learner(actor_hidden_sizes=[4])
    kept = {k: v.clone() for k, v in other.critic.state_dict().items()}
    with pytest.raises(ModelError, match="does not match"):
        other.load_state_dict(state)
    assert all(torch.equal(kept[k], v) for k, v in other.critic.state_dict().items())


# ---------------------------------------------------------------------- the runner

TINY = [
    'env.id="bayes_mbrl/PendulumPartial-v0"',
    "env.episode_length=20",
    "experiment.episodes=3",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    'experiment.mode="latent_ac"',
    'model.kind="latent"',
    "model.latent_dim=2",
    "model.num_members=2",
    "model.hidden_sizes=[16]",
    "model.embed_dim=8",
    "model.seq_len=8",
    "model.batch_size=4",
    "model.first_fit_steps=50",
    "model.train_steps=50",
    "latent_ac.horizon=3",
    "latent_ac.starts=8",
    "latent_ac.actor_hidden_sizes=[16]",
    "latent_ac.critic_hidden_sizes=[16]",
    "latent_ac.first_fit_updates=30",
    "latent_ac.train_updates=10",
    "latent_ac.diagnostics_every=0",
]


class StopAfter(Callback):
    def __init__(self, episodes: int) -> None:
        self.episodes = episodes

    def _on_episode_end(self, experiment: Experiment, row: dict[str, object]) -> bool:
        return experiment.episodes_done < self.episodes


class Progress(Callback):
    def __init__(self) -> None:
        self.totals: list[int | None] = []
        self.calls: list[list[tuple[int, float, float]]] = []

    def _on_fit_start(self, experiment: Experiment, total: int | None, description: str) -> None:
        self.totals.append(total)
        self.calls.append([])

    def _on_fit_progress(self, experiment: Experiment, step: int, train: float, val: float) -> None:
        self.calls[-1].append((step, train, val))


def test_runs_end_to_end_and_resumes_identically(tmp_path: Path) -> None:
    assert "latent_ac" in ALGORITHMS
    config = load_config(None, TINY, seed=0)
    progress = Progress()
    reference = run_experiment(config, tmp_path / "ref", callbacks=[progress])
    assert len(reference.returns) == 3 and all(math.isfinite(r) for r in reference.returns)
    assert [r["policy"] for r in reference.metrics] == ["random", "latent_ac", "latent_ac"]
    # model: 1 report of 50 steps; actor-critic: ceil(30 / 25) = 2, then ceil(10 / 25) = 1
    assert progress.totals == [3, 2]
    assert [[s for s, _, _ in calls] for calls in progress.calls] == [[0, 1, 2], [0, 1]]
    assert all(math.isnan(val) for calls in progress.calls for _, _, val in calls)
    assert [r["fit_epochs"] for r in reference.metrics] == [0, 3, 2]

    run_dir = tmp_path / "run"
    first = run_experiment(config, run_dir, callbacks=[StopAfter(2)])
    assert len(first.returns) == 2
    resumed = resume_experiment(run_dir, progress=False)
    assert len(resumed.returns) == 3
    assert (run_dir / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    assert (run_dir / "transitions.f32").read_bytes() == (
        tmp_path / "ref" / "transitions.f32"
    ).read_bytes()


def test_latent_mpc_with_a_critic_plans_with_its_value_and_resumes_identically(
    tmp_path: Path,
) -> None:
    """latent_mpc.terminal_value = "critic": the learner is the latent actor-critic, the
    evaluator adds gamma^H v(z_H) of its critic, and a resumed run repeats the reference."""
    tiny = [s for s in TINY if not s.startswith(("experiment.mode", "latent_ac.diagnostics"))] + [
        'experiment.mode="latent_mpc"',
        'latent_mpc.terminal_value="critic"',
        "latent_mpc.diagnostics_every=0",
        "planner.horizon=3",
        "planner.population=16",
        "planner.iterations=2",
        "planner.particles=2",
    ]
    config = load_config(None, tiny, seed=0)
    run_dir = tmp_path / "run"
    first = run_experiment(config, run_dir, callbacks=[StopAfter(2)])
    assert len(first.returns) == 2
    exp = Experiment(config, tmp_path / "probe")
    learner, agent = exp.parts.learner, exp.parts.agent
    assert isinstance(learner, LatentActorCritic)
    evaluator = agent.evaluator
    assert evaluator.discount == config.latent_ac.discount
    z = torch.randn(5, 2)
    assert torch.equal(evaluator.terminal_value(z), learner.value(z))
    reference = run_experiment(config, tmp_path / "ref")
    assert [r["policy"] for r in reference.metrics] == ["random", "latent_mpc", "latent_mpc"]
    assert all(math.isfinite(r) for r in reference.returns)
    resumed = resume_experiment(run_dir, progress=False)
    assert len(resumed.returns) == 3
    assert (run_dir / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    # the critic needs particles: moment matching is refused before anything runs
    with pytest.raises(ConfigError, match="propagation"):
        load_config(None, [*tiny, 'planner.propagation="moment_matching"'])


def test_needs_a_latent_model_and_acts_within_bounds() -> None:
    with pytest.raises(ConfigError, match=r"model\.kind"):
        load_config(None, ['experiment.mode="latent_ac"', 'model.kind="ensemble"'])
    learner = lqr_learner()
    learner.model.fitted = True
    agent = LatentACAgent(learner.model, learner.policy)
    agent.reset()
    a0 = agent.act(torch.tensor([0.3]))
    a1 = agent.act(torch.tensor([0.1]))
    assert a0.shape == (1,) and bool((a0.abs() <= 2.0).all()) and bool((a1.abs() <= 2.0).all())
    assert agent.tracker.last_action is not None and torch.equal(agent.tracker.last_action, a1)
    assert agent.plan_seconds > 0
    agent.reset()
    assert agent.tracker.belief is None and agent.plan_seconds == 0.0

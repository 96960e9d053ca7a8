"""MBPO: branched model rollouts feeding stable-baselines3's SAC, and the runner's
evaluation episodes.

* the rollout-length schedule is the paper's linear one, in environment steps;
* the model buffer is first-in-first-out and keeps the newest transitions on resize;
* branched rollouts start from replay states, follow one function each (TS-inf) and
  stop at a terminal transition;
* SAC's minibatches hold ``real_ratio`` real transitions, the rest imagined;
* the learner refits the model every ``refit_every`` steps, makes
  ``rollouts_per_step`` rollouts and ``updates_per_step`` SAC steps per new step;
* an MBPO run resumed from a checkpoint repeats the uninterrupted one;
* evaluation episodes run from fixed starts where ``eval_every`` says, without
  changing the run;
* MVE's critic targets follow the model for H steps (closed form on a known model),
  stop at termination, and are SAC's own for H = 0; an MVE run resumes exactly.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from test_imagine import known_two_member_ensemble
from tiny_runs import MBPO, SAC, assert_resumes_like_uninterrupted

from bayes_mbrl.algorithms.mbpo import (
    MBPOLearner,
    MBPOOptions,
    MixedSampler,
    TransitionRing,
    branched_rollouts,
    rollout_length,
)
from bayes_mbrl.algorithms.mve import MVELearner, MVEOptions
from bayes_mbrl.algorithms.sac import SACLearner, make_sac
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import TaskSpec, get_task
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.evaluation import evaluation_due
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.models import ProbabilisticEnsemble


def test_rollout_length_follows_the_linear_schedule() -> None:
    schedule = [20.0, 100.0, 1.0, 15.0]
    lengths = [rollout_length(schedule, s) for s in (0, 20, 60, 99, 100, 5000)]
    assert lengths == [1, 1, 8, 14, 15, 15]
    assert rollout_length([0.0, 0.0, 1.0, 1.0], 10_000) == 1
    assert rollout_length([0.0, 0.0, 2.0, 5.0], 1) == 5  # a step schedule


def test_schedule_and_ratio_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"mbpo.rollout_schedule"):
        load_config(None, ["experiment.mode=mbpo", "mbpo.rollout_schedule=[100, 20, 1, 5]"])
    with pytest.raises(ConfigError, match=r"mbpo.real_ratio"):
        load_config(None, ["experiment.mode=mbpo", "mbpo.real_ratio=1.5"])


def _ring_values(ring: TransitionRing) -> list[float]:
    return ring.ordered()["reward"].tolist()


def _rows(values: list[float]) -> dict[str, torch.Tensor]:
    v = torch.tensor(values)
    n = len(values)
    return {
        "obs": v[:, None],
        "action": torch.zeros(n, 1),
        "reward": v,
        "next_obs": v[:, None] + 1,
        "done": torch.zeros(n, dtype=torch.bool),
    }


def test_model_buffer_is_first_in_first_out_and_keeps_the_newest_on_resize() -> None:
    ring = TransitionRing(1, 1, 5)
    ring.add(**_rows([0, 1, 2]))
    ring.add(**_rows([3, 4, 5, 6]))
    assert _ring_values(ring) == [2, 3, 4, 5, 6]
    ring.add(**_rows([7, 8, 9, 10, 11, 12]))  # more than the capacity at once
    assert _ring_values(ring) == [8, 9, 10, 11, 12]
    ring.resize(3)
    assert _ring_values(ring) == [10, 11, 12]
    ring.resize(6)
    ring.add(**_rows([13]))
    assert _ring_values(ring) == [10, 11, 12, 13]
    assert torch.equal(ring.ordered()["next_obs"][:, 0], torch.tensor([11.0, 12, 13, 14]))
    copy = TransitionRing(1, 1)
    copy.load_state_dict(ring.state_dict())
    assert copy.capacity == 6 and _ring_values(copy) == [10, 11, 12, 13]


def test_branched_rollouts_start_from_replay_states_and_stop_at_termination() -> None:
    model = known_two_member_ensemble()  # member 0: s' = s + 1, member 1: s' = s - 1
    task = TaskSpec(
        "Line-v0",
        obs_dim=1,
        action_dim=1,
        action_low=[-1.0],
        action_high=[1.0],
        reward_fn=lambda o, a, n: -(n[..., 0] ** 2),
        termination_fn=lambda o, a, n: n[..., 0] >= 1.5,
    )
    data = ReplayBuffer(1, 1, 10, [-1.0], [1.0])
    data.add(torch.zeros(1), [0.0], 0.0, torch.zeros(1), False, False)  # start 0
    data.add(torch.full((1,), 100.0), [0.0], 0.0, torch.full((1,), 100.0), False, False)
    g = torch.Generator().manual_seed(0)
    out = branched_rollouts(model, task, data, lambda o: torch.zeros(len(o), 1), 400, 3, 2, g)
    starts = out["obs"][:, 0]
    steps = out["next_obs"][:, 0] - starts
    assert torch.allclose(steps.abs(), torch.ones_like(steps), atol=1e-3)  # one member each
    # from 0: +1 -> 1, 2 (terminal, kept), then dropped; -1 -> -1, -2, -3 (all kept)
    # from 100: 101 and 99 are terminal at once
    n0 = int((out["obs"][:, 0].abs() < 0.5).sum())  # first steps from the replay state 0
    n100 = int((out["obs"][:, 0] > 50).sum())
    assert n100 > 0 and n0 > 0
    assert bool((out["next_obs"][out["obs"][:, 0] > 50, 0] - 100).abs().round().eq(1).all())
    kept_up = out["obs"][(steps > 0) & (out["obs"][:, 0] < 50), 0]
    assert set(kept_up.round().tolist()) == {0.0, 1.0}  # no transition from 2 on
    kept_down = out["obs"][(steps < 0) & (out["obs"][:, 0] < 50), 0]
    assert set(kept_down.round().tolist()) == {0.0, -1.0, -2.0}
    # per start from 0: 2 transitions up and 3 down; per start from 100: 1 and 1
    starts_0 = n0 // 2  # each start from 0 has one first step per member
    assert len(kept_up) == 2 * starts_0 and len(kept_down) == 3 * starts_0
    assert 2 * (starts_0 + n100 // 2) == 400  # 200 starts x 2 functions
    assert bool(out["done"].eq(out["next_obs"][:, 0] >= 1.5).all())
    assert torch.allclose(out["reward"], -(out["next_obs"][:, 0] ** 2))


def test_minibatches_hold_the_real_ratio_with_scaled_actions() -> None:
    real = _rows([1.0] * 50)
    real["action"] = torch.full((50, 1), 2.0)  # the upper bound
    imagined = _rows([0.0] * 200)
    imagined["action"] = torch.full((200, 1), -2.0)
    imagined["done"][:] = True
    sampler = MixedSampler(
        real, imagined, 0.25, lambda a: a / 2.0, torch.Generator().manual_seed(0)
    )
    batch = sampler.sample(40)
    assert batch.rewards.shape == (40, 1) and batch.dones.shape == (40, 1)
    assert int(batch.rewards.sum()) == 10  # 25% real
    assert torch.equal(batch.actions[batch.rewards[:, 0] == 1], torch.ones(10, 1))
    assert torch.equal(batch.actions[batch.rewards[:, 0] == 0], -torch.ones(30, 1))
    assert torch.equal(batch.dones[:, 0], batch.rewards[:, 0] == 0)
    empty = {k: v[:0] for k, v in imagined.items()}
    only_real = MixedSampler(real, empty, 0.25, lambda a: a, torch.Generator())
    assert int(only_real.sample(8).rewards.sum()) == 8  # nothing imagined yet


def _pendulum_mbpo(**opts: object) -> MBPOLearner:
    task = get_task("Pendulum-v1")
    options = MBPOOptions(hidden_sizes=[32, 32], batch_size=16, **opts)  # type: ignore[arg-type]
    sac = SACLearner(make_sac(task, options, 0), options, task.action_low, task.action_high)
    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[16], max_epochs=2, seed=0)
    return MBPOLearner(model, sac, task, options, seed=0)


def _pendulum_data(n: int, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(3, 1, 200, [-2.0], [2.0])
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        o = torch.randn(3, generator=g)
        buf.add(o, [float(torch.rand(1, generator=g)) * 4 - 2], -1.0, o * 0.9, False, False)
    return buf


def test_learner_refits_rolls_out_and_updates_on_schedule() -> None:
    learner = _pendulum_mbpo(
        rollouts_per_step=6, updates_per_step=3, refit_every=20, retain_steps=100
    )
    data = _pendulum_data(30)
    report = learner.fit(data)
    assert report.epochs == 2 and learner.refit_at == 30  # the model was fitted
    assert len(learner.model_data) == 30 * 6  # k = 1, Pendulum never terminates
    assert learner.sac.updates == 90 and learner.sac.sac._n_updates == 90
    params = [p.detach().clone() for p in learner.model.net.parameters()]
    more = _pendulum_data(40, seed=1)
    data.add_batch(more.sample(10, torch.Generator().manual_seed(2)))
    report = learner.fit(data)  # 10 new steps < refit_every: the model is kept
    assert report.epochs == 0 and learner.refit_at == 30
    now = learner.model.net.parameters()
    assert all(torch.equal(p, q) for p, q in zip(params, now, strict=True))
    assert len(learner.model_data) == 40 * 6 and learner.sac.updates == 120
    data.add_batch(more.sample(10, torch.Generator().manual_seed(3)))
    assert learner.fit(data).epochs == 2 and learner.refit_at == 50
    # imagined transitions come from real start states
    first = learner.model_data.ordered()["obs"][:180]
    real = data.all().obs[:30]
    assert bool((first[:, None] == real[None]).all(-1).any(1).all())


def test_mbpo_run_resumes_like_the_uninterrupted_one(tmp_path: Path) -> None:
    ref = assert_resumes_like_uninterrupted(load_config(None, MBPO, seed=0), tmp_path)
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    assert [r["eval_at_steps"] for r in rows] == ["", "25", "50", "75"]
    assert all(math.isfinite(float(r["eval_return"])) for r in rows[1:])


def test_evaluation_is_due_when_a_multiple_of_eval_every_is_passed() -> None:
    assert evaluation_due(0, 200, 200) and not evaluation_due(200, 399, 200)
    assert evaluation_due(399, 401, 200) and evaluation_due(5, 6, 0)


def test_evaluation_runs_where_due_and_leaves_the_run_unchanged(tmp_path: Path) -> None:
    plain = run_experiment(load_config(None, SAC, seed=0), tmp_path / "plain")
    evaluated = run_experiment(
        load_config(None, [*SAC, "experiment.eval_episodes=3", "experiment.eval_every=50"], seed=0),
        tmp_path / "eval",
    )
    assert evaluated.returns == plain.returns  # SAC's deterministic actor draws nothing
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    # episodes of 25 steps: evaluated before episode 2 (the first fit, at 25 steps) and
    # before episode 3 (50 steps passed during episode 2), not before episode 4 (75)
    assert [r["eval_at_steps"] for r in rows] == ["", "25", "50", ""]
    assert float(rows[1]["eval_std"]) > 0  # three different starts


# ------------------------------------------------------------------ value expansion
def _line_task(stop: float = 100.0) -> TaskSpec:
    return TaskSpec(
        "Line-v0",
        obs_dim=1,
        action_dim=1,
        action_low=[-1.0],
        action_high=[1.0],
        reward_fn=lambda o, a, n: n[..., 0],
        termination_fn=lambda o, a, n: n[..., 0] >= stop - 0.5,
    )


def _mve_learner(horizon: int, gamma: float = 0.9) -> MVELearner:
    task = _line_task()
    options = MVEOptions(hidden_sizes=[8], batch_size=8, gamma=gamma, horizon=horizon)
    sac = SACLearner(make_sac(task, options, 0), options, task.action_low, task.action_high)
    with torch.no_grad():
        assert sac.sac.log_ent_coef is not None
        sac.sac.log_ent_coef.fill_(-40.0)  # alpha ~ 4e-18: the entropy terms vanish
    return MVELearner(known_two_member_ensemble(), sac, task, options, seed=0)


def test_value_expansion_targets_follow_the_model_and_stop_at_termination() -> None:
    gamma, h = 0.9, 2
    learner = _mve_learner(h, gamma)  # member 0: s' = s + 1, member 1: s' = s - 1
    data = ReplayBuffer(1, 1, 10, [-1.0], [1.0])
    data.add(torch.zeros(1), [0.5], 1.0, torch.full((1,), 10.0), False, False)  # s' = 10
    data.add(torch.zeros(1), [0.5], 2.0, torch.full((1,), 99.0), False, False)  # s' = 99
    data.add(torch.zeros(1), [0.5], 3.0, torch.full((1,), 50.0), True, False)  # terminal
    # (reward of the real step, imagined rewards = next states, the last state, done)
    cases = {
        "10 up": (1.0 + gamma * 11 + gamma**2 * 12, 12.0, 0.0),
        "10 down": (1.0 + gamma * 9 + gamma**2 * 8, 8.0, 0.0),
        "99 up": (2.0 + gamma * 100, 101.0, 1.0),  # 100 terminates: no more reward
        "99 down": (2.0 + gamma * 98 + gamma**2 * 97, 97.0, 0.0),
        "terminal": (3.0, None, 1.0),  # a terminal real transition is not expanded
    }
    seen: set[str] = set()
    for _ in range(20):
        batch = learner.sampler(data, 3).sample(8)
        assert batch.discounts is not None
        assert torch.allclose(batch.discounts, torch.full((8, 1), gamma**3))
        assert torch.allclose(batch.actions, torch.full((8, 1), 0.5))  # SAC's units
        rows = zip(
            batch.rewards[:, 0], batch.next_observations[:, 0], batch.dones[:, 0], strict=True
        )
        for r, nxt, done in rows:
            found = [
                name
                for name, (want, last, ended) in cases.items()
                if abs(float(r) - want) < 1e-3
                and float(done) == ended
                and (last is None or abs(float(nxt) - last) < 1e-3)
            ]
            assert len(found) == 1, (float(r), float(nxt), float(done))
            seen.add(found[0])
    assert seen == set(cases)


def test_value_expansion_of_zero_steps_is_sacs_own_target() -> None:
    learner = _mve_learner(0)
    data = ReplayBuffer(1, 1, 10, [-1.0], [1.0])
    data.add(torch.zeros(1), [1.0], 1.0, torch.full((1,), 10.0), False, False)
    batch = learner.sampler(data, 1).sample(8)
    assert batch.discounts is None  # SB3 uses gamma
    assert torch.equal(batch.next_observations, torch.full((8, 1), 10.0))
    assert torch.equal(batch.rewards, torch.ones(8, 1))


def test_mve_run_resumes_like_the_uninterrupted_one(tmp_path: Path) -> None:
    overrides = [
        s.replace("mbpo", "mve")
        for s in MBPO
        if not s.startswith(("mbpo.rollout", "mbpo.retain", "mbpo.updates"))
    ]
    config = load_config(None, [*overrides, "mve.horizon=2"], seed=0)
    assert_resumes_like_uninterrupted(config, tmp_path)

"""Planner -> policy distillation (``experiment.mode = "policy_distill"``).

* the loss is the Gaussian KL at temperature T (closed form against torch);
* the learner's policy recovers known soft labels (a mean function and a spread);
* CEM and MPPI report the spread of their final action distribution;
* the mode runs end to end: the planner acts for ``teacher_episodes``, then the
  student (DAgger) while every visited state is labelled; behaviour cloning keeps the
  planner acting; a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_runs import POLICY_DISTILL, StopAfter
from torch.distributions import Normal, kl_divergence

from bayes_mbrl.algorithms.policy_distill import (
    GaussianPolicy,
    PolicyDistillLearner,
    PolicyDistillOptions,
    policy_kl,
)
from bayes_mbrl.config import load_config
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import Experiment, resume_experiment, run_experiment
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.options import OptionError
from bayes_mbrl.planning import CEMPlanner, MPPIPlanner


def test_policy_kl_is_the_gaussian_kl_at_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(6, 2, generator=g), torch.rand(6, 2, generator=g) + 0.1
    mu, log_std = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) * 0.3
    for t in (0.5, 1.0, 3.0):
        want = kl_divergence(
            Normal(m, math.sqrt(t) * s), Normal(mu, math.sqrt(t) * log_std.exp())
        ).sum(-1)
        torch.testing.assert_close(policy_kl(m, s, mu, log_std, t), want)


def test_learner_recovers_known_soft_labels() -> None:
    opts = PolicyDistillOptions(epochs=300, hidden_sizes=[32, 32], learning_rate=3e-3)
    model = ProbabilisticEnsemble(2, 1, num_members=2, hidden_sizes=[8])
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = GaussianPolicy(2, 1, [32, 32])
    learner = PolicyDistillLearner(model, policy, opts, low, high, seed=0)
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(500, 2, generator=g) * 2 - 1
    mean = 1.5 * torch.tanh(2 * obs[:, :1] - obs[:, 1:])
    std = 0.1 + 0.3 * obs[:, :1].abs()
    for o, m, s in zip(obs, mean, std, strict=True):
        learner.add_label(o, m, s)
    learner._fit_policy()
    test = torch.rand(200, 2, generator=g) * 2 - 1
    with torch.no_grad():
        mu, log_std = policy(test)
    want_mean = 1.5 * torch.tanh(2 * test[:, :1] - test[:, 1:])
    want_std = 0.1 + 0.3 * test[:, :1].abs()
    assert float((mu - want_mean).abs().mean()) < 0.05
    assert float((log_std.exp() / want_std).log().abs().mean()) < 0.15
    # labels outside the bounds are clipped, a missing spread takes the floor
    learner.add_label(torch.zeros(2), torch.tensor([5.0]), None)
    assert float(learner.labels["mean"][-1]) == 2.0
    assert float(learner.labels["std"][-1]) == pytest.approx(0.05 * 2.0)


@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_planners_report_the_spread_of_their_action_distribution(kind: str) -> None:
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    target = torch.linspace(-0.5, 0.5, 5)[:, None]

    def score(a: torch.Tensor) -> torch.Tensor:
        return -((a - target) ** 2).sum((1, 2))

    spreads = []
    for iterations in (1, 6):
        g = torch.Generator().manual_seed(0)
        planner = (
            CEMPlanner(low, high, 5, 200, iterations, generator=g)
            if kind == "cem"
            else MPPIPlanner(low, high, 5, 200, iterations, temperature=0.05, generator=g)
        )
        result = planner.plan(score)
        assert result.action_std is not None and result.action_std.shape == (5, 1)
        assert bool((result.action_std >= 0).all())
        spreads.append(float(result.action_std.mean()))
    assert spreads[1] < spreads[0]  # the distribution narrows as the search converges


TINY = POLICY_DISTILL


def test_dagger_run_labels_every_state_switches_to_the_student_and_resumes(
    tmp_path: Path,
) -> None:
    config = load_config(None, TINY, seed=0)
    reference = run_experiment(config, tmp_path / "ref")
    assert len(reference.returns) == 5 and all(math.isfinite(r) for r in reference.returns)
    exp = Experiment(config, tmp_path / "ref")
    exp.restore()
    learner = exp.parts.learner
    assert isinstance(learner, PolicyDistillLearner)
    assert learner.episodes == 4 and len(learner.labels["obs"]) == 4 * 20
    assert bool((learner.labels["std"] > 0).all())
    # the planner acted in planned episodes 1-2, the student from 3 on (restored count)
    assert exp.parts.agent.student_acts
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir, callbacks=[StopAfter(3)])
    resume_experiment(run_dir, progress=False)
    assert (run_dir / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()


def test_student_acts_only_with_dagger(tmp_path: Path) -> None:
    for dagger, acts in ((True, True), (False, False)):
        config = load_config(None, [*TINY, f"policy_distill.dagger={str(dagger).lower()}"])
        exp = Experiment(config, tmp_path / f"d{dagger}")
        agent = exp.parts.agent
        for _ in range(3):
            agent.reset()
        assert agent.student_acts is acts
        obs = torch.tensor([1.0, 0.0, 0.0])
        exp.parts.learner.model.fit(_buffer(), torch.Generator().manual_seed(0))
        action = agent.act(obs)
        with torch.no_grad():
            mean, _ = exp.parts.learner.policy(obs)
        assert torch.equal(action, mean.clamp(-2.0, 2.0)) is acts


def _buffer():  # type: ignore[no-untyped-def]
    from bayes_mbrl.data import ReplayBuffer

    buf = ReplayBuffer(3, 1, 50)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        o = torch.randn(3, generator=g)
        a = torch.rand(1, generator=g) * 4 - 2
        buf.add(o, a, 0.0, o + 0.05 * a, False, False)
    return buf


def test_bad_options_are_named() -> None:
    with pytest.raises(OptionError, match="temperature"):
        PolicyDistillOptions(temperature=0.0).check()
    with pytest.raises(ConfigError, match="temperature"):
        load_config(None, [*TINY, "policy_distill.temperature=-1"])
    with pytest.raises(ConfigError, match=r"model\.kind"):
        load_config(None, [*TINY, 'model.kind="latent"'])


def test_guided_labels_start_from_the_students_plan(tmp_path: Path) -> None:
    config = load_config(None, [*TINY, "policy_distill.guided=true"])
    exp = Experiment(config, tmp_path / "g")
    agent, learner = exp.parts.agent, exp.parts.learner
    for _ in range(3):
        agent.reset()
    assert agent.student_acts
    learner.model.fit(_buffer(), torch.Generator().manual_seed(0))
    obs = torch.tensor([1.0, 0.0, 0.3])
    # the student's plan: its action along the model's mean prediction
    plan = agent.student_plan(obs)
    x, want = obs[None], []
    with torch.no_grad():
        for _ in range(5):
            a = learner.policy(x)[0].clamp(-2.0, 2.0)
            want.append(a[0])
            x = learner.model.predict(x, a).mean
    assert torch.allclose(plan, torch.stack(want), atol=1e-6)
    planner = agent.teacher.planner
    seen = []
    optimize = planner._optimize

    def spy(score):  # type: ignore[no-untyped-def]
        seen.append(planner.initial_mean())
        return optimize(score)

    planner._optimize = spy
    agent.act(obs)
    assert torch.allclose(seen[0], 0.75 * plan, atol=1e-6)  # the middle of [-2, 2] is 0
    with pytest.raises(ConfigError, match="warm start must have shape"):
        planner.set_warm_start(torch.zeros(3, 1))


def test_common_noise_labels_are_a_function_of_the_state(tmp_path: Path) -> None:
    config = load_config(None, [*TINY, "policy_distill.common_noise=true"])
    exp = Experiment(config, tmp_path / "c")
    agent, learner = exp.parts.agent, exp.parts.learner
    for _ in range(3):
        agent.reset()
    learner.model.fit(_buffer(), torch.Generator().manual_seed(0))
    run_state = agent.teacher.planner.generator.get_state()
    obs = torch.tensor([0.0, 1.0, 0.5])
    agent.act(obs)
    agent.act(torch.tensor([1.0, 0.0, -0.5]))  # another state between the two
    agent.act(obs)
    lab = learner.labels
    assert torch.equal(lab["mean"][0], lab["mean"][2]) and torch.equal(lab["std"][0], lab["std"][2])
    # the run's own random stream is not touched by the labels
    assert torch.equal(agent.teacher.planner.generator.get_state(), run_state)


def test_student_prior_adds_the_students_log_probability_to_the_reward(
    tmp_path: Path,
) -> None:
    config = load_config(None, [*TINY, "policy_distill.student_prior=0.5"])
    exp = Experiment(config, tmp_path / "p")
    agent, learner = exp.parts.agent, exp.parts.learner
    for _ in range(3):
        agent.reset()
    learner.model.fit(_buffer(), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    obs, act = torch.randn(4, 7, 3, generator=g), torch.rand(4, 7, 1, generator=g) * 4 - 2
    nxt = torch.randn(4, 7, 3, generator=g)
    base = agent.teacher.evaluator.reward_fn
    with torch.no_grad():
        mean, log_std = learner.policy(obs)
    want = base(obs, act, nxt) + 0.5 * Normal(mean, log_std.exp()).log_prob(act).sum(-1)
    got = agent.regularized_reward(base, 0.5)(obs, act, nxt)
    assert torch.allclose(got, want, atol=1e-5)
    # the planner sees it only while planning a label; the evaluator is restored after
    seen = []

    def spy(o, a, n):  # type: ignore[no-untyped-def]
        seen.append(True)
        return base(o, a, n)

    agent.teacher.evaluator.reward_fn = spy
    agent.act(torch.tensor([1.0, 0.0, 0.0]))
    assert seen and agent.teacher.evaluator.reward_fn is spy


def test_guided_and_common_noise_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match=r"common_noise.*guided"):
        load_config(None, [*TINY, "policy_distill.guided=true", "policy_distill.common_noise=true"])

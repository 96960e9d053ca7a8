"""imagine(): batched imagined transitions from the planner's own step, its particle layout,
policies, and the propagation registry the evaluator delegates to."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_planning import A, B, LinearGaussianModel  # s' = A s + B a (+ noise), by hand
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models import (
    DynamicsModel,
    ExactGPDynamics,
    FitReport,
    FunctionSample,
    Predictive,
    ProbabilisticEnsemble,
)
from bayes_mbrl.planning import (
    PROPAGATIONS,
    ImaginedTransitions,
    RolloutEvaluator,
    TSInf,
    belief_step,
    gp_belief_step,
    imagine,
)
from bayes_mbrl.planning.moment_matching import augment, se_gp_moments

F64 = torch.float64


# ------------------------------------------------------------------------- models
def random_ensemble(members: int = 4) -> ProbabilisticEnsemble:
    """A randomly initialized ensemble (distinct members, real noise) on 2-D obs, 1-D actions."""
    model = ProbabilisticEnsemble(2, 1, num_members=members, hidden_sizes=[16], seed=3)
    model.fitted = True
    return model


def known_two_member_ensemble() -> ProbabilisticEnsemble:
    """Member 0: s' = s + 1, member 1: s' = s - 1 (noise std ~3e-7)."""
    model = ProbabilisticEnsemble(1, 1, num_members=2, hidden_sizes=[4], seed=0)
    with torch.no_grad():
        for w in model.net.weights:
            w.zero_()
        for b in model.net.biases:
            b.zero_()
        model.net.biases[-1][0, 0, 0] = 1.0
        model.net.biases[-1][1, 0, 0] = -1.0
        model.net.biases[-1][:, 0, 1] = -30.0
        model.net.min_logvar.fill_(-40.0)
    model.fitted = True
    return model


def reward(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return -next_obs.square().sum(-1) - 0.1 * action.square().sum(-1)


def low(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs[..., 0] < -0.1


# ---------------------------------------------------------- the planner's own numbers
@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1", "expectation"])
def test_imagined_returns_are_the_evaluators_particle_returns(propagation: str) -> None:
    """Same seed, same draws, same noise: imagine()'s rewards give the evaluator's
    particle returns bit for bit (the evaluator runs the same loop)."""
    model = random_ensemble()
    start = torch.tensor([0.3, -0.2])
    actions = 2 * torch.rand(5, 6, 1, generator=torch.Generator().manual_seed(0)) - 1
    for discount, termination in ((1.0, None), (0.9, low)):
        ev = RolloutEvaluator(
            model, reward, 6, particles=8, propagation=propagation, discount=discount,
            termination_fn=termination, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        expected = ev.particle_returns(start, actions)
        out = imagine(
            model, start.expand(5, 2), actions, 6, reward, termination,
            particles=8, propagation=propagation, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        got = out.per_function(out.returns(discount))
        assert got.shape == expected.shape
        assert got.shape == ((5, 1, 1) if propagation == "expectation" else (5, *ev.layout()))
        assert out.per_start(out.returns(discount)).shape == (5, got[0].numel())
        assert torch.equal(got, expected)
        if termination is None:
            assert out.reward is not None
            torch.testing.assert_close(out.per_function(out.reward.sum(0)), expected)
    # the termination did cut some particles short (the masked case has power)
    assert bool((~out.alive()).any()) and bool(out.alive()[0].all())


def test_deterministic_linear_model_gives_the_closed_form_states() -> None:
    model = LinearGaussianModel(A, B, sigma=0.0)
    start = torch.tensor([[1.0, -0.5], [0.0, 2.0], [-1.0, 0.3]])
    gain = torch.tensor([[0.4, 0.8]])
    horizon, particles = 7, 3
    for propagation in ("ts_inf", "ts_1", "expectation"):
        out = imagine(
            model, start, lambda obs: -obs @ gain.T, horizon, reward,
            particles=particles, propagation=propagation,
        )  # fmt: skip
        k = 1 if propagation == "expectation" else particles
        s = start.double()[out.start_index]  # (N, 2)
        closed = []
        for _ in range(horizon):
            s = s @ (A.double() - B.double() @ gain.double()).T
            closed.append(s)
        torch.testing.assert_close(out.next_obs.double(), torch.stack(closed), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.obs[1:], out.next_obs[:-1])
        assert out.obs.shape == (horizon, 3 * k, 2) and out.action.shape == (horizon, 3 * k, 1)
        assert out.reward is not None and out.reward.shape == (horizon, 3 * k)
        torch.testing.assert_close(out.reward, reward(out.obs, out.action, out.next_obs))
        assert not bool(out.done.any())


def test_function_index_follows_the_ts_inf_layout() -> None:
    """Member 0 adds 1, member 1 subtracts 1: each ts_inf particle moves by its own
    member's step at every step; particle n = (g * B + b) * k + j."""
    model = known_two_member_ensemble()
    starts = torch.tensor([[0.0], [10.0], [20.0]])
    out = imagine(model, starts, torch.zeros(3, 5, 1), 5, particles=4, propagation="ts_inf")
    b, k = 3, 2  # 4 particles over 2 members: 2 per member and start
    assert out.layout == (2, b, k) and out.num_particles == 12
    assert out.function_index.tolist() == [0] * (b * k) + [1] * (b * k)
    assert out.start_index.tolist() == [0, 0, 1, 1, 2, 2] * 2
    steps = (out.next_obs - out.obs)[..., 0]  # (H, N)
    sign = 1.0 - 2.0 * out.function_index.float()  # +1 for member 0, -1 for member 1
    torch.testing.assert_close(steps, sign.expand(5, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.obs[0, :, 0], starts[out.start_index, 0])
    # grouped by start: every start has 2 particles on each member, in order q = g * k + j
    final = out.per_start(out.next_obs[-1, :, 0])
    torch.testing.assert_close(
        final, starts + torch.tensor([5.0, 5.0, -5.0, -5.0]), atol=1e-3, rtol=0
    )
    # ts_1 keeps no function: every particle is reassigned at every step
    ts1 = imagine(model, starts, torch.zeros(3, 5, 1), 5, particles=4, propagation="ts_1",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert bool((ts1.function_index == -1).all())
    mixed = (ts1.next_obs - ts1.obs)[..., 0].sign()
    assert bool(((mixed != mixed[:1]).any(0)).float().mean() > 0.5)
    assert bool((mixed.sum(1) == 0).all())  # stratified: half the particles on each member


def test_policy_gets_the_imagined_observations() -> None:
    model = random_ensemble()
    seen: list[Tensor] = []

    def policy(obs: Tensor) -> Tensor:
        seen.append(obs.clone())
        return torch.tanh(obs[:, :1] - obs[:, 1:])

    starts = torch.tensor([[0.5, 0.0], [-0.5, 1.0]])
    out = imagine(model, starts, policy, 4, reward, particles=8,
                  generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert len(seen) == 4 and out.obs.shape == (4, 16, 2)
    for t in range(4):
        assert torch.equal(seen[t], out.obs[t])
        assert torch.equal(out.action[t], torch.tanh(seen[t][:, :1] - seen[t][:, 1:]))
    torch.testing.assert_close(seen[0], starts[out.start_index])
    # noise and functions differ across particles: the policy saw diverging states
    assert float(out.obs[-1].std(0).min()) > 0


def test_imagine_rejects_bad_inputs() -> None:
    model = random_ensemble()
    start = torch.zeros(2, 2)
    with pytest.raises(DataError, match=r"start_obs must have shape \(B, 2\)"):
        imagine(model, torch.zeros(2), torch.zeros(2, 3, 1), 3)
    with pytest.raises(DataError, match=r"actions must have shape .* \(2, 3, 1\)"):
        imagine(model, start, torch.zeros(2, 4, 1), 3)
    with pytest.raises(
        DataError,
        match=r"policy returned shape \(4, 2\), expected \(4, 1\): one action per particle",
    ):
        imagine(model, start, lambda obs: obs, 3, particles=2)
    with pytest.raises(DataError, match="policy raised TypeError"):
        imagine(model, start, lambda obs, extra: obs, 3)
    with pytest.raises(ConfigError, match=r"imagine needs a particle propagation .*beliefs"):
        imagine(model, start, torch.zeros(2, 3, 1), 3, propagation="moment_matching")
    with pytest.raises(ConfigError, match="unknown propagation 'ts_2'"):
        imagine(model, start, torch.zeros(2, 3, 1), 3, propagation="ts_2")
    with pytest.raises(DataError, match="do not divide"):
        imagine(
            model, start, torch.zeros(2, 3, 1), 3, particles=6, functions=model.sample_functions(4)
        )
    out = imagine(model, start, torch.zeros(2, 3, 1), 3)
    assert isinstance(out, ImaginedTransitions) and out.reward is None
    with pytest.raises(ConfigError, match="pass a reward_fn"):
        out.returns()


# ----------------------------------------------------------------- the registry
def test_a_registered_propagation_is_used_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's strategy (here: TS-inf through each function's mean, no noise) is one
    class and its registration; the evaluator and imagine() pick it up by name."""
    monkeypatch.setattr(PROPAGATIONS, "_entries", dict(PROPAGATIONS._entries))

    @PROPAGATIONS.register("ts_inf_mean")
    class NoiselessTSInf(TSInf):
        """Each particle follows its function's mean."""

        calls = 0

        def step(
            self, functions: FunctionSample, obs: Tensor, action: Tensor, generator: Any
        ) -> Tensor:
            NoiselessTSInf.calls += 1
            return functions.mean(obs, action)

    model = known_two_member_ensemble()
    assert "ts_inf_mean" in PROPAGATIONS and "ts_inf_mean" in PROPAGATIONS.names()
    ev = RolloutEvaluator(
        model, lambda o, a, n: n[..., 0], 3, particles=2, propagation="ts_inf_mean"
    )
    returns = ev.particle_returns(torch.zeros(1), torch.zeros(4, 3, 1))
    assert NoiselessTSInf.calls == 3
    assert torch.equal(returns, torch.tensor([[[6.0], [-6.0]]]).expand(4, 2, 1))
    out = imagine(model, torch.zeros(1, 1), torch.zeros(1, 3, 1), 3, particles=2,
                  propagation="ts_inf_mean")  # fmt: skip
    assert NoiselessTSInf.calls == 6 and out.next_obs[-1, :, 0].tolist() == [3.0, -3.0]
    with pytest.raises(ConfigError, match="ts_inf_mean"):
        RolloutEvaluator(model, lambda o, a, n: n[..., 0], 3, propagation="ts_inf_men")


# ------------------------------------------------------------- moment matching
class WrappedGP(DynamicsModel):
    """Not an ExactGPDynamics: a model that only declares the capability."""

    supports_moment_matching = True

    def __init__(self, gp: ExactGPDynamics) -> None:
        self.gp, self.obs_dim, self.action_dim = gp, gp.obs_dim, gp.action_dim

    def se_gp_posterior(self) -> Any:
        return self.gp.se_gp_posterior()

    def fit(self, data: ReplayBuffer, generator: Any = None, progress: Any = None) -> FitReport:
        return self.gp.fit(data, generator)

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        return self.gp.sample_functions(n, generator)

    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        return self.gp.predict(obs, action)

    def log_likelihood(
        self, obs: Tensor, action: Tensor, next_obs: Tensor, num_functions: int | None = None
    ) -> Tensor:
        return self.gp.log_likelihood(obs, action, next_obs, num_functions)


@pytest.fixture(scope="module")
def gp() -> ExactGPDynamics:
    g = torch.Generator().manual_seed(0)
    obs = 3 * torch.rand(60, 2, generator=g) - 1.5
    act = 2 * torch.rand(60, 1, generator=g) - 1
    nxt = torch.stack(
        [obs[:, 0] + 0.2 * obs[:, 1], obs[:, 1] + 0.3 * (act[:, 0] - torch.sin(2 * obs[:, 0]))], -1
    )
    model = ExactGPDynamics(2, 1, kernel="se", training_steps=30, seed=0)
    model.fit_regression(
        torch.cat([obs, act], -1), nxt - obs + 0.02 * torch.randn(60, 2, generator=g), g
    )
    return model


def test_moment_matching_is_reached_through_the_capability(gp: ExactGPDynamics) -> None:
    start, actions = (
        torch.tensor([0.2, -0.1]),
        torch.rand(4, 5, 1, generator=torch.Generator().manual_seed(1)),
    )
    direct = RolloutEvaluator(gp, reward, 5, propagation="moment_matching")
    wrapped = RolloutEvaluator(WrappedGP(gp), reward, 5, propagation="moment_matching")
    assert torch.equal(
        wrapped.particle_returns(start, actions), direct.particle_returns(start, actions)
    )
    for model in (random_ensemble(), ExactGPDynamics(2, 1, kernel="matern52")):
        with pytest.raises(
            ConfigError,
            match=r"got an? \w+.*; use model\.kind = 'gp' with model\.kernel = 'se', or "
            r"another propagation \('ts_inf', 'ts_1', 'expectation'\)",
        ):
            RolloutEvaluator(model, reward, 5, propagation="moment_matching")
    with pytest.raises(ConfigError, match="beliefs need propagation 'moment_matching'"):
        RolloutEvaluator(gp, reward, 5).beliefs(start, actions)


def test_pilcos_joint_step_is_the_augmented_belief(gp: ExactGPDynamics) -> None:
    """gp_belief_step on a joint belief over [s, a] with a state-dependent (correlated)
    action equals appending the GP's delta to the joint by ``augment`` (Stein's lemma for
    every entry) and reading off ``s + delta``; with a deterministic action it is
    :func:`belief_step`."""
    segp = gp.se_gp_posterior()
    g = torch.Generator().manual_seed(4)
    root = 0.3 * torch.randn(3, 3, generator=g, dtype=F64)
    z_s = root @ root.T + 1e-3 * torch.eye(3, dtype=F64)  # [s (2), a (1)] correlated
    z_m = torch.tensor([0.2, -0.4, 0.5], dtype=F64)
    idx = torch.arange(3)
    m, s, cross = gp_belief_step(segp, z_m[:2], z_s[:2, :2], z_m, z_s, z_s[:2])
    aug_m, aug_s = augment(z_m, z_s, idx, lambda mm, ss: se_gp_moments(segp, mm, ss))
    c = aug_s[:2, 3:]
    torch.testing.assert_close(m, aug_m[:2] + aug_m[3:])
    torch.testing.assert_close(s, z_s[:2, :2] + aug_s[3:, 3:] + c + c.T)
    torch.testing.assert_close(cross, z_s[:2, :2] + c)
    # the action's correlation with the state matters: dropping it changes the belief
    _, s0, _ = gp_belief_step(segp, z_m[:2], z_s[:2, :2], z_m, z_s, z_s[:2, :2])
    assert float((s0 - s).abs().max()) > 1e-4
    det = torch.zeros(3, 3, dtype=F64)
    det[:2, :2] = z_s[:2, :2]
    one = belief_step(segp, z_m[:2], z_s[:2, :2], z_m[2:])
    joint = gp_belief_step(segp, z_m[:2], z_s[:2, :2], z_m, det, z_s[:2, :2])
    for a, b in zip(one, joint, strict=True):
        torch.testing.assert_close(a, b)

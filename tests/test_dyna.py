"""Tabular Dyna: the Dyna maze, the Dirichlet tabular model, Dyna-Q / Dyna-Q+ and
posterior sampling."""

from __future__ import annotations

import math

import gymnasium
import pytest
import torch
import torch.nn.functional as F

from bayes_mbrl.algorithms.dyna import (
    PosteriorSamplingAgent,
    TabularDynaQ,
    greedy_path_length,
    run_episodes,
    run_steps,
    value_iteration,
)
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs.dyna_maze import (
    BLOCKING_MAZE,
    DYNA_MAZE,
    ENV_ID,
    SHORTCUT_MAZE,
    MazeDynamics,
    shortest_path_length,
)
from bayes_mbrl.errors import DataError, EnvError
from bayes_mbrl.models import MODELS, check_model
from bayes_mbrl.models.tabular import TabularDynamics, TabularPosterior
from bayes_mbrl.options import OptionError

# ---------------------------------------------------------------- the maze


def test_the_books_mazes_have_the_books_shortest_paths() -> None:
    assert DYNA_MAZE.num_states - len(DYNA_MAZE.walls) == 47
    assert shortest_path_length(DYNA_MAZE) == 14
    # blocking: the short path on the right closes after 1000 steps
    assert shortest_path_length(BLOCKING_MAZE, 999) == 10
    assert shortest_path_length(BLOCKING_MAZE, 1000) == 16
    # shortcut: a shorter path opens after 3000 steps
    assert shortest_path_length(SHORTCUT_MAZE, 2999) == 16
    assert shortest_path_length(SHORTCUT_MAZE, 3000) == 10


def test_the_gymnasium_env_walks_the_same_maze_and_refuses_bad_actions() -> None:
    env = gymnasium.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs == DYNA_MAZE.cell((2, 0))
    table = DYNA_MAZE.step_table()
    # up, up: (1, 0), (0, 0); up again stays; right x6 to (0, 6); right into the wall stays
    path = [0, 0, 0, 3, 3, 3, 3, 3, 3, 3]
    state = obs
    for a in path:
        new, reward, terminated, _, _ = env.step(a)
        assert new == int(table[state, a]) and reward == 0.0 and not terminated
        state = new
    assert state == DYNA_MAZE.cell((0, 6))
    for a in (1, 3, 3, 0, 0):  # down to (1, 6)... blocked by the wall at (1, 7): stays
        state, reward, terminated, _, _ = env.step(a)
    assert state == DYNA_MAZE.cell((0, 6)) and not terminated
    with pytest.raises(EnvError, match=r"not in Discrete\(4\)"):
        env.step(4)
    # a path to the goal ends the episode with reward 1
    env.reset()
    for a in [1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0]:
        state, reward, terminated, _, _ = env.step(a)
        if terminated:
            break
    assert terminated and reward == 1.0 and state == DYNA_MAZE.cell(DYNA_MAZE.goal)


def test_slips_go_sideways_at_the_given_rate() -> None:
    maze = MazeDynamics("dyna", slip=0.3)
    n = 40_000
    start = torch.full((n,), DYNA_MAZE.cell((4, 1)))  # open cell: all moves possible
    nxt, _, _ = maze.step(start, torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(0))
    up, left, right = (DYNA_MAZE.cell(c) for c in ((3, 1), (4, 0), (4, 2)))
    freq = {c: float((nxt == c).float().mean()) for c in (up, left, right)}
    se = math.sqrt(0.15 * 0.85 / n)
    assert abs(freq[up] - 0.7) < 4 * math.sqrt(0.21 / n)
    assert abs(freq[left] - 0.15) < 4 * se and abs(freq[right] - 0.15) < 4 * se
    exact = maze.transition_probabilities()[DYNA_MAZE.cell((4, 1)), 0]
    assert float(exact.sum()) == pytest.approx(1.0)
    assert [float(exact[c]) for c in (up, left, right)] == pytest.approx([0.7, 0.15, 0.15])
    with pytest.raises(EnvError, match="slip must be a probability"):
        MazeDynamics("dyna", slip=1.5)
    with pytest.raises(EnvError, match="unknown maze layout 'dyn'"):
        MazeDynamics("dyn")


# ---------------------------------------------------------------- the tabular model


def _transitions(gen: torch.Generator, n: int, s: int = 4, a: int = 2) -> tuple[torch.Tensor, ...]:
    state = torch.randint(s, (n,), generator=gen)
    action = torch.randint(a, (n,), generator=gen)
    nxt = (state + action + torch.randint(2, (n,), generator=gen)) % s
    reward = torch.randn(n, generator=gen)
    return state, action, reward, nxt


def test_posterior_mean_is_the_empirical_frequency_and_the_dirichlet_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    s, a, r, s2 = _transitions(gen, 500)
    flat = TabularPosterior(4, 2, prior_count=0.0)
    flat.add_all(s, a, r, s2)
    counts = torch.zeros(4, 2, 4, dtype=torch.float64)
    sums = torch.zeros(4, 2, dtype=torch.float64)
    for i in range(500):
        counts[s[i], a[i], s2[i]] += 1
        sums[s[i], a[i]] += float(r[i])
    n = counts.sum(-1)
    assert torch.allclose(flat.mean_transition(), counts / n[..., None])
    assert torch.allclose(flat.mean_reward(), sums / n)
    prior = TabularPosterior(4, 2, prior_count=2.0)
    prior.add_all(s, a, r, s2)
    assert torch.allclose(prior.mean_transition(), (counts + 0.5) / (n[..., None] + 2.0))
    # one at a time gives the same counts as the batched add
    one = TabularPosterior(4, 2, (1,))
    for i in range(500):
        one.update(s[i : i + 1], a[i : i + 1], r[i : i + 1], s2[i : i + 1])
    assert torch.equal(one.counts[0], flat.counts)


def test_drawn_tables_have_the_dirichlet_moments_and_rewards_the_normal_posterior() -> None:
    post = TabularPosterior(3, 1, prior_count=1.5, reward_prior_mean=0.5, reward_prior_std=2.0)
    post.reward_noise = 0.5
    s = torch.zeros(4, dtype=torch.long)
    post.add_all(s, s.clone(), torch.tensor([1.0, 2.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 2]))
    draws = post.sample_transition(20_000, torch.Generator().manual_seed(1))[:, 0, 0]
    conc = torch.tensor([2.5, 1.5, 1.5], dtype=torch.float64)
    c0 = conc.sum()
    mean = conc / c0
    var = mean * (1 - mean) / (c0 + 1)
    assert torch.allclose(draws.mean(0), mean, atol=4 * (var / 20_000).sqrt().max())
    assert torch.allclose(draws.var(0), var, rtol=0.05)
    # Normal-Normal: precision 1/4 + 4 * 4 = 16.25, mean (0.5/4 + 6 * 4) / 16.25
    rewards = post.sample_reward(20_000, torch.Generator().manual_seed(2))[:, 0, 0]
    assert abs(float(post.mean_reward()[0, 0]) - (0.125 + 24) / 16.25) < 1e-12
    assert abs(float(rewards.mean()) - (0.125 + 24) / 16.25) < 4 * (1 / 16.25 / 20_000) ** 0.5
    assert abs(float(rewards.var()) - 1 / 16.25) < 0.05 / 16.25
    # a pair never tried, no prior: stays in place
    bare = TabularPosterior(3, 2)
    assert torch.equal(
        bare.mean_transition()[2, 1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )


def test_forget_one_keeps_the_last_outcome() -> None:
    post = TabularPosterior(3, 1, (1,), forget=1.0)
    z = torch.zeros(1, dtype=torch.long)
    for nxt in (1, 2, 1, 2):
        post.update(z, z, torch.ones(1), torch.tensor([nxt]))
    assert torch.equal(
        post.mean_transition()[0, 0, 0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )
    assert float(post.reward_n[0, 0, 0]) == 1.0


def _tabular_buffer(gen: torch.Generator, n: int = 300) -> ReplayBuffer:
    s, a, r, s2 = _transitions(gen, n)
    buf = ReplayBuffer(4, 2, n)
    buf.add(F.one_hot(s, 4).float(), F.one_hot(a, 2).float(), r, F.one_hot(s2, 4).float(),
            torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))  # fmt: skip
    return buf


def test_tabular_dynamics_keeps_the_protocol_and_splits_variance_in_closed_form() -> None:
    assert MODELS["tabular"] is TabularDynamics
    gen = torch.Generator().manual_seed(3)
    buf = _tabular_buffer(gen)
    model = TabularDynamics(4, 2, prior_count=1.0)
    model.fit(buf)
    batch = buf.all()
    check_model(model, batch.obs[:8], batch.action[:8], batch.next_obs[:8])
    exact = model.predict(batch.obs[:8], batch.action[:8])
    mc = model.predict(batch.obs[:8], batch.action[:8], num_functions=20_000)
    assert torch.allclose(exact.mean, mc.mean, atol=0.01)
    assert torch.allclose(exact.epistemic_var, mc.epistemic_var, atol=0.004)
    assert torch.allclose(exact.aleatoric_var, mc.aleatoric_var, atol=0.004)
    assert torch.allclose(exact.total_var, exact.mean * (1 - exact.mean), atol=1e-6)
    # more data: less epistemic variance, the same aleatoric
    more = TabularDynamics(4, 2, prior_count=1.0)
    more.fit(_tabular_buffer(torch.Generator().manual_seed(3), 3000))
    big = more.predict(batch.obs[:8], batch.action[:8])
    assert bool((big.epistemic_var.sum(-1) < exact.epistemic_var.sum(-1)).all())
    # state_dict round trip
    again = TabularDynamics(4, 2, prior_count=1.0)
    again.load_state_dict(model.state_dict())
    assert torch.equal(
        again.predict(batch.obs, batch.action).mean, model.predict(batch.obs, batch.action).mean
    )


def test_tabular_inputs_that_are_not_one_hot_are_clear_errors() -> None:
    model = TabularDynamics(4, 2)
    buf = ReplayBuffer(4, 2, 4)
    buf.add([0.0, 1.0, 0.0, 0.0], [0.5, 0.5], 0.0, [1.0, 0.0, 0.0, 0.0], False, False)
    with pytest.raises(
        DataError, match=r"actions as one-hot vectors of size 2; row 0 is \[0\.5, 0\.5\]"
    ):
        model.fit(buf)
    with pytest.raises(DataError, match="one_hot"):
        model.predict(torch.zeros(1, 4), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(DataError):
        model.predict(torch.zeros(1, 5), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(OptionError, match="forget"):
        TabularDynamics(4, 2, forget=2.0)


# ---------------------------------------------------------------- Dyna-Q


def _q_learning_reference(steps: int, seed: int) -> tuple[list[int], list[torch.Tensor]]:
    """One-step tabular Q-learning on the Dyna maze, written out: epsilon-greedy with
    the draws of ``epsilon_greedy`` (rand, randint, rand(A) for the tie-break)."""
    gen = torch.Generator().manual_seed(seed)
    table = DYNA_MAZE.step_table()
    start, goal = DYNA_MAZE.cell(DYNA_MAZE.start), DYNA_MAZE.cell(DYNA_MAZE.goal)
    q = torch.zeros(DYNA_MAZE.num_states, 4, dtype=torch.float64)
    state, actions, tables = start, [], []
    for _ in range(steps):
        explore = float(torch.rand(1, generator=gen)) < 0.1
        random_action = int(torch.randint(4, (1,), generator=gen))
        tie = torch.rand(1, 4, generator=gen)[0]
        best = q[state].max()
        candidates = [b for b in range(4) if q[state, b] == best]
        greedy = max(candidates, key=lambda b: float(tie[b]))
        action = random_action if explore else greedy
        nxt = int(table[state, action])
        reward = 1.0 if nxt == goal else 0.0
        target = reward + (0.0 if nxt == goal else 0.95 * float(q[nxt].max()))
        q[state, action] += 0.1 * (target - q[state, action])
        actions.append(action)
        tables.append(q.clone())
        state = start if nxt == goal else nxt
    return actions, tables


def test_dyna_q_without_planning_is_q_learning_step_for_step() -> None:
    steps = 3000
    actions, tables = _q_learning_reference(steps, seed=7)
    gen = torch.Generator().manual_seed(7)
    maze = MazeDynamics("dyna")
    agent = TabularDynaQ(1, maze.num_states, 4, planning_steps=0, generator=gen)
    state = torch.tensor([maze.start])
    for t in range(steps):
        action = agent.act(state)
        assert int(action) == actions[t], f"step {t}"
        nxt, reward, terminal = maze.step(state, action, gen)
        agent.learn(state, action, reward, nxt, terminal)
        assert torch.equal(agent.q[0], tables[t]), f"step {t}"
        state = torch.where(terminal, maze.start, nxt)
    assert float(tables[-1].max()) > 0  # the goal was reached: the check saw learning


def test_dyna_q_with_planning_finds_the_14_step_path_in_a_few_episodes() -> None:
    gen = torch.Generator().manual_seed(0)
    maze = MazeDynamics("dyna")
    lengths = torch.zeros(8, 6, dtype=torch.long)

    def record(ended: torch.Tensor, index: torch.Tensor) -> None:
        lengths[ended, index[ended]] = greedy_path_length(agent.q, maze)[ended]

    agent = TabularDynaQ(8, maze.num_states, 4, planning_steps=50, generator=gen)
    steps = run_episodes(agent, maze, 6, gen, on_episode_end=record)
    # greedy paths after episode 6: the optimal 14 steps (an unvisited detour may remain)
    assert int((lengths[:, -1] == 14).sum()) >= 7 and int(lengths[:, -1].max()) <= 16, lengths
    assert float(steps[:, -2:].float().mean()) < 20  # 14 plus epsilon's detours
    gen = torch.Generator().manual_seed(0)
    plain = TabularDynaQ(8, maze.num_states, 4, planning_steps=0, generator=gen)
    slow = run_episodes(plain, MazeDynamics("dyna"), 6, gen)
    assert float(slow[:, 1:].float().mean()) > 5 * float(steps[:, 1:].float().mean())


def test_dyna_q_plus_plans_with_the_bonus_kappa_sqrt_tau() -> None:
    gen = torch.Generator().manual_seed(0)
    agent = TabularDynaQ(1, 3, 2, planning_steps=0, alpha=1.0, gamma=0.0, kappa=0.5, generator=gen)
    z = torch.zeros(1, dtype=torch.long)
    agent.learn(
        z,
        z,
        torch.tensor([0.25]),
        torch.ones(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.bool),
    )
    agent.steps = 101  # 100 real steps since (0, 0) was tried at step 1
    for _ in range(50):  # only state 0 was visited; both of its actions get planned
        agent._plan_once()
    assert abs(float(agent.q[0, 0, 0]) - (0.25 + 0.5 * 10.0)) < 1e-12
    assert abs(float(agent.q[0, 0, 1]) - 0.5 * math.sqrt(101)) < 1e-12  # untried: stays, r 0


def test_dyna_q_plus_recovers_from_the_blocked_path_faster() -> None:
    rewards = {}
    for kappa in (0.0, 1e-3):
        gen = torch.Generator().manual_seed(0)
        maze = MazeDynamics("blocking")
        agent = TabularDynaQ(
            6, maze.num_states, 4, planning_steps=10, alpha=1.0, kappa=kappa, generator=gen
        )
        cum = run_steps(agent, maze, 2000, gen)
        rewards[kappa] = cum[:, -1] - cum[:, 999]
    assert float(rewards[1e-3].mean()) > float(rewards[0.0].mean()) + 5


# ---------------------------------------------------------------- posterior sampling


def test_value_iteration_matches_a_chain_in_closed_form() -> None:
    # states 0 -> 1 -> 2 (terminal, reward 1 on entering); action 1 moves right, 0 stays
    p = torch.zeros(3, 2, 3, dtype=torch.float64)
    for s in range(3):
        p[s, 0, s] = 1.0
        p[s, 1, min(s + 1, 2)] = 1.0
    r = torch.zeros(3, 2, dtype=torch.float64)
    r[1, 1] = 1.0
    terminal = torch.tensor([False, False, True])
    q = value_iteration(p, r, terminal, gamma=0.9, iterations=500, tol=1e-12)
    assert torch.allclose(q[1], torch.tensor([0.9, 1.0], dtype=torch.float64))
    assert torch.allclose(q[0], torch.tensor([0.81, 0.9], dtype=torch.float64))


def test_posterior_sampling_learns_the_slippery_maze() -> None:
    gen = torch.Generator().manual_seed(0)
    maze = MazeDynamics("dyna", slip=0.2)
    agent = PosteriorSamplingAgent(
        4, maze.num_states, 4, prior_support=maze.neighbours(), generator=gen
    )
    steps = run_episodes(agent, maze, 12, gen)
    # the optimal policy takes about 18.7 steps on average on this maze
    assert float(steps[:, -4:].float().mean()) < 30
    assert float(steps[:, 0].float().mean()) > 100


# ---------------------------------------------------------------- discrete actions in the protocol


def test_a_replay_buffer_takes_discrete_actions_as_indices_or_one_hot() -> None:
    buf = ReplayBuffer(2, 3, 10, discrete_actions=True)
    buf.add([0.0, 1.0], 2, 1.0, [1.0, 1.0], False, False)
    buf.add([[0.0, 1.0], [0.0, 0.0]], [1, 0], [1.0, 0.0], [[1.0, 1.0], [0.0, 0.0]], [0, 0], [0, 0])
    buf.add([0.0, 1.0], [0.0, 1.0, 0.0], 1.0, [1.0, 1.0], False, False)
    assert buf.all().action.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 0]]
    cases = [
        (3, r"action 3 \(transition 0\) is out of range for Discrete\(3\); use an index in 0\.\.2"),
        (1.5, r"discrete action 1\.5 is not an integer"),
        ([0.0, 1.0], r"shape \(2,\); pass an index of Discrete\(3\) .* one-hot vector of size 3"),
        ([0.5, 0.5, 0.0], r"action \[0\.5, 0\.5, 0\.0\] \(transition 0\) is not one-hot"),
    ]
    for action, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            buf.add([0.0, 1.0], action, 1.0, [1.0, 1.0], False, False)
    assert len(buf) == 4  # nothing of a refused add was stored


def test_the_ensemble_learns_cartpole_from_one_hot_actions() -> None:
    from bayes_mbrl.envs import get_task, make_env
    from bayes_mbrl.models import ProbabilisticEnsemble

    task = get_task("CartPole-v1")
    env = make_env("CartPole-v1", discrete_ok=True)
    buf = ReplayBuffer(4, 2, 1500, task.action_low, task.action_high, discrete_actions=True)
    rng = torch.Generator().manual_seed(0)
    obs, _ = env.reset(seed=0)
    while len(buf) < 1500:
        a = int(torch.randint(2, (1,), generator=rng))
        nxt, r, term, trunc, _ = env.step(a)
        buf.add(obs, a, r, nxt, term, trunc)
        obs = nxt if not (term or trunc) else env.reset()[0]
    env.close()
    model = ProbabilisticEnsemble(4, 2, num_members=3, hidden_sizes=[64, 64], max_epochs=60)
    model.fit(buf, torch.Generator().manual_seed(1))
    data = buf.all()
    pred = model.predict(data.obs[-200:], data.action[-200:])
    err = (pred.mean - data.next_obs[-200:]).square().mean(0)
    change = (data.next_obs[-200:] - data.obs[-200:]).square().mean(0)
    # the push direction matters: the velocities' change is predicted, not just the mean
    assert bool((err < 0.05 * change).all()), (err, change)
    flipped = model.predict(data.obs[-200:], 1.0 - data.action[-200:]).mean
    assert float((flipped - pred.mean)[:, 1].abs().mean()) > 0.1


def test_the_tabular_model_goes_to_arviz_like_any_model() -> None:
    import arviz as az

    from bayes_mbrl.uncertainty import to_inference_data

    buf = _tabular_buffer(torch.Generator().manual_seed(4))
    model = TabularDynamics(4, 2)
    model.fit(buf)
    idata = to_inference_data(model, buf, num_draws=200)
    loo = az.loo(idata)
    # 2 possible next states per pair, equally likely: about log(1/2) per transition
    assert abs(float(loo.elpd_loo) / len(buf) - math.log(0.5)) < 0.1

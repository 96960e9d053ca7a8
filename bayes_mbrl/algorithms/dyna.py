"""Tabular Dyna: Dyna-Q and Dyna-Q+ (Sutton & Barto, 2nd ed., Sections 8.2-8.3) and
planning in a drawn model (posterior sampling), for many independent runs at once.

Dyna-Q, per real step ``(s, a, r, s')`` (the book's tabular Dyna-Q)::

    Q(s, a) += alpha * (r + gamma * max_b Q(s', b) - Q(s, a))      # direct RL
    model.update(s, a, r, s')                                      # model learning
    repeat n times:                                                # planning
        s~ <- a random previously observed state
        a~ <- a random action previously taken in s~
        s'~, r~ <- model(s~, a~)
        Q(s~, a~) += alpha * (r~ + gamma * max_b Q(s'~, b) - Q(s~, a~))

The model is a :class:`~bayes_mbrl.models.tabular.TabularPosterior`: with ``forget = 1``
(the default) it keeps each pair's last outcome, the book's deterministic model; with
``forget = 0`` it samples ``s'~`` from the empirical transition frequencies (the
posterior mean with no prior), right for a stochastic maze. A transition into a state
observed as terminal does not bootstrap. Actions are epsilon-greedy with ties broken
at random. **Dyna-Q+** (``kappa > 0``) adds the exploration bonus ``kappa * sqrt(tau)``
to planned rewards, ``tau`` the real steps since the pair was last tried, and (the
book's footnote) also plans actions never tried in a visited state, whose model stays
in place with reward 0.

:class:`PosteriorSamplingAgent` plans differently: it draws one table from the
Dirichlet posterior over next states and the Normal posterior over mean rewards
(Thompson sampling, PSRL), solves it by value iteration and acts greedily in it,
drawing again at every episode start and every ``resample_every`` steps. The prior's
optimism (rewards drawn for untried pairs, jumps the counts have not ruled out) makes
it explore without epsilon.

Every agent holds ``R`` runs in lockstep (``(R, S, A)`` tables, one batched update per
step; no loop over runs), so 30 runs of the book's figures take one pass.
:func:`run_episodes` and :func:`run_steps` drive them on a
:class:`~bayes_mbrl.envs.dyna_maze.MazeDynamics`.

Examples:
    >>> import torch
    >>> from bayes_mbrl.envs.dyna_maze import MazeDynamics
    >>> from bayes_mbrl.algorithms.dyna import TabularDynaQ, run_episodes
    >>> gen = torch.Generator().manual_seed(0)
    >>> maze = MazeDynamics("dyna")
    >>> agent = TabularDynaQ(4, maze.num_states, 4, planning_steps=50, generator=gen)
    >>> steps = run_episodes(agent, maze, episodes=10, generator=gen)
    >>> steps.shape, int(steps[:, -1].float().mean().round())  # the 14-step path
    (torch.Size([4, 10]), 14)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from bayes_mbrl.envs.dyna_maze import MazeDynamics
from bayes_mbrl.models.tabular import TabularPosterior
from bayes_mbrl.options import Options, at_least, greater_than, interval, option

__all__ = [
    "DynaQOptions",
    "PosteriorSamplingAgent",
    "PosteriorSamplingOptions",
    "TabularAgent",
    "TabularDynaQ",
    "epsilon_greedy",
    "greedy_path_length",
    "run_episodes",
    "run_steps",
    "value_iteration",
]


def epsilon_greedy(q: Tensor, epsilon: float, generator: torch.Generator | None = None) -> Tensor:
    """Epsilon-greedy actions with random tie-breaking, one per row of ``q (R, A)``.

    Draws, in this order: ``rand(R)`` (explore?), ``randint(A, (R,))`` (the random
    action), ``rand(R, A)`` (the tie-break among the greedy actions).
    """
    r, a = q.shape
    explore = torch.rand(r, generator=generator) < epsilon
    random_action = torch.randint(a, (r,), generator=generator)
    ties = q == q.max(-1, keepdim=True).values
    greedy = (torch.rand(r, a, generator=generator) * ties).argmax(-1)
    return torch.where(explore, random_action, greedy)


class TabularAgent(Protocol):
    """What :func:`run_episodes` and :func:`run_steps` drive: ``R`` runs in lockstep."""

    num_runs: int

    def begin_episode(self, starting: Tensor) -> None:
        """``starting (R,) bool``: the runs whose new episode starts now."""

    def act(self, state: Tensor) -> Tensor:
        """``(R,)`` long actions at ``(R,)`` long states."""
        ...

    def learn(
        self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor, terminal: Tensor
    ) -> None:
        """Learn from one real step of every run (all ``(R,)``)."""


@dataclass
class DynaQOptions(Options):
    """Dyna-Q's settings; the defaults are the book's Dyna maze (Example 8.1)."""

    planning_steps: int = option(5, at_least(0, "an integer"), "planning updates per real step (n)")
    alpha: float = option(0.1, interval(0.0, 1.0, lo_open=True), "step size")
    gamma: float = option(0.95, interval(0.0, 1.0), "discount")
    epsilon: float = option(0.1, interval(0.0, 1.0), "probability of a random action")
    kappa: float = option(
        0.0, at_least(0), "Dyna-Q+ bonus kappa * sqrt(steps since the pair was tried); 0: Dyna-Q"
    )
    model_forget: float = option(
        1.0, interval(0.0, 1.0), "1: the model keeps each pair's last outcome; 0: all counts"
    )


class TabularDynaQ:
    """Dyna-Q / Dyna-Q+ for ``num_runs`` independent runs (see the module docstring).

    Args:
        num_runs: ``R``.
        num_states: ``S``.
        num_actions: ``A``.
        generator: all randomness (actions, planning draws).

    The arguments from ``planning_steps`` to ``model_forget`` are the fields of
    :class:`DynaQOptions`.

    Attributes:
        q: ``(R, S, A)`` float64 action values.
        model: the runs' :class:`TabularPosterior` (batch ``(R,)``).
    """

    def __init__(
        self,
        num_runs: int,
        num_states: int,
        num_actions: int,
        planning_steps: int = 5,
        alpha: float = 0.1,
        gamma: float = 0.95,
        epsilon: float = 0.1,
        kappa: float = 0.0,
        model_forget: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.options = DynaQOptions.of(
            type(self).__name__,
            planning_steps=planning_steps,
            alpha=alpha,
            gamma=gamma,
            epsilon=epsilon,
            kappa=kappa,
            model_forget=model_forget,
        )
        self.num_runs, self.num_states, self.num_actions = num_runs, num_states, num_actions
        self.generator = generator
        self.q = torch.zeros(num_runs, num_states, num_actions, dtype=torch.float64)
        self.model = TabularPosterior(
            num_states, num_actions, (num_runs,), prior_count=0.0, forget=model_forget
        )
        self.visited = torch.zeros(num_runs, num_states, dtype=torch.bool)
        self.terminal = torch.zeros(num_runs, num_states, dtype=torch.bool)
        self.last_tried = torch.zeros(num_runs, num_states, num_actions, dtype=torch.float64)
        self.steps = 0
        self._runs = torch.arange(num_runs)

    def begin_episode(self, starting: Tensor) -> None:
        """Nothing to do at an episode start."""

    def act(self, state: Tensor) -> Tensor:
        return epsilon_greedy(self.q[self._runs, state], self.options.epsilon, self.generator)

    def _q_update(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, terminal: Tensor) -> None:
        o, runs = self.options, self._runs
        bootstrap = torch.where(terminal, 0.0, self.q[runs, s2].max(-1).values)
        target = r.to(torch.float64) + o.gamma * bootstrap
        self.q[runs, s, a] += o.alpha * (target - self.q[runs, s, a])

    def learn(
        self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor, terminal: Tensor
    ) -> None:
        runs = self._runs
        self._q_update(state, action, reward, next_state, terminal)
        self.steps += 1
        self.model.update(state, action, reward, next_state)
        self.visited[runs, state] = True
        self.terminal[runs, next_state] |= terminal
        self.last_tried[runs, state, action] = float(self.steps)
        for _ in range(self.options.planning_steps):
            self._plan_once()

    def _plan_once(self) -> None:
        o, runs, gen = self.options, self._runs, self.generator
        a_count = self.num_actions
        s = (torch.rand(self.num_runs, self.num_states, generator=gen) * self.visited).argmax(-1)
        allowed = self.model.tried[runs, s]
        if o.kappa > 0:  # Dyna-Q+ also plans the untried actions of a visited state
            allowed = torch.ones_like(allowed)
        a = (torch.rand(self.num_runs, a_count, generator=gen) * allowed).argmax(-1)
        s2 = self.model.sample_next(s, a, gen)
        r = self._mean_reward(s, a)
        if o.kappa > 0:
            r = r + o.kappa * (self.steps - self.last_tried[runs, s, a]).sqrt()
        self._q_update(s, a, r, s2, self.terminal[runs, s2])

    def _mean_reward(self, s: Tensor, a: Tensor) -> Tensor:
        runs = self._runs
        n = self.model.reward_n[runs, s, a]
        return torch.where(n > 0, self.model.reward_sum[runs, s, a] / n.clamp_min(1e-300), 0.0)


def value_iteration(
    transitions: Tensor,
    rewards: Tensor,
    terminal: Tensor,
    gamma: float,
    iterations: int = 200,
    tol: float = 1e-6,
    init: Tensor | None = None,
) -> Tensor:
    """Optimal action values of tabular MDPs, batched.

    Args:
        transitions: ``(*batch, S, A, S)`` next-state distributions.
        rewards: ``(*batch, S, A)`` mean rewards.
        terminal: ``(*batch, S)`` bool: states where the episode ends (no value after).
        gamma: discount.
        iterations: at most this many sweeps (stops earlier once the largest change is
            below ``tol``).
        init: ``(*batch, S, A)`` action values to start from (a warm start), or ``None``
            (zeros).

    Returns:
        ``(*batch, S, A)`` action values.
    """
    if init is None:
        v = torch.zeros(terminal.shape, dtype=transitions.dtype)
    else:
        v = init.to(transitions.dtype).max(-1).values
    q = rewards.to(transitions.dtype).clone()
    live = (~terminal).to(transitions.dtype)
    for _ in range(iterations):
        q = rewards + gamma * torch.einsum("...sat,...t->...sa", transitions, v * live)
        v_new = q.max(-1).values
        done = bool(((v_new - v).abs() < tol).all())
        v = v_new
        if done:
            break
    return q


@dataclass
class PosteriorSamplingOptions(Options):
    """Thompson sampling's settings (see :class:`PosteriorSamplingAgent`); the defaults
    suit rewards in ``[0, 1]`` paid once at a goal, as in the Dyna maze."""

    gamma: float = option(0.95, interval(0.0, 1.0, hi_open=True), "discount of the planner")
    prior_count: float = option(
        1.0, greater_than(0), "Dirichlet prior mass per pair, spread over its possible next states"
    )
    reward_prior_std: float = option(
        0.005, greater_than(0), "prior std of a pair's mean reward (keep it << (1 - gamma) * goal)"
    )
    reward_noise: float = option(0.01, greater_than(0), "std of an observed reward")
    resample_every: int = option(
        1, at_least(1, "an integer"), "draw a new table after this many steps (1: every step)"
    )


class PosteriorSamplingAgent:
    """Posterior sampling (Thompson sampling over tables) for ``num_runs`` runs.

    At each episode start, and every ``resample_every`` steps (by default every step),
    each run draws one table from its :class:`TabularPosterior` (a next-state
    distribution and a mean reward for every pair, prior mean reward 0), solves it with
    :func:`value_iteration` (warm-started from the last solution) and acts greedily
    (random tie-break) in it. States observed as terminal end the drawn MDP too.

    Two settings matter (measured on the slippery Dyna maze, ``experiments/README.md``):
    the prior std of the mean reward must be small next to ``(1 - gamma)`` times the
    goal's value, or a drawn table that pays a hallucinated reward on a self-loop
    outranks the goal and the run wanders; and drawing once per episode lets such a
    table hold the run for thousands of steps (the episode has no time limit), so the
    table is drawn again every few steps. A ``prior_support`` that knows moves are
    local (:meth:`~bayes_mbrl.envs.dyna_maze.MazeDynamics.neighbours`) keeps drawn tables
    from teleporting.

    Args:
        num_runs: ``R``.
        num_states: ``S``.
        num_actions: ``A``.
        prior_support: ``(S, A, S)`` bool, where each pair can lead a priori (see
            :class:`TabularPosterior`; e.g. :meth:`MazeDynamics.neighbours`); ``None``:
            anywhere.
        generator: all randomness.

    The arguments from ``gamma`` to ``resample_every`` are the fields of
    :class:`PosteriorSamplingOptions`.
    """

    def __init__(
        self,
        num_runs: int,
        num_states: int,
        num_actions: int,
        gamma: float = 0.95,
        prior_count: float = 1.0,
        reward_prior_std: float = 0.005,
        reward_noise: float = 0.01,
        resample_every: int = 1,
        prior_support: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.options = PosteriorSamplingOptions.of(
            type(self).__name__,
            gamma=gamma,
            prior_count=prior_count,
            reward_prior_std=reward_prior_std,
            reward_noise=reward_noise,
            resample_every=resample_every,
        )
        self.num_runs, self.num_states, self.num_actions = num_runs, num_states, num_actions
        self.generator = generator
        self.model = TabularPosterior(
            num_states,
            num_actions,
            (num_runs,),
            prior_count=prior_count,
            reward_prior_std=reward_prior_std,
            reward_noise=reward_noise,
            prior_support=prior_support,
        )
        self.terminal = torch.zeros(num_runs, num_states, dtype=torch.bool)
        self.q = torch.zeros(num_runs, num_states, num_actions, dtype=torch.float64)
        self.since_draw = torch.zeros(num_runs, dtype=torch.long)
        self._runs = torch.arange(num_runs)

    def _draw(self, which: Tensor) -> None:
        if not bool(which.any()):
            return
        p = self.model.sample_transition(1, self.generator)[0]
        r = self.model.sample_reward(1, self.generator)[0]
        q = value_iteration(p, r, self.terminal, self.options.gamma, init=self.q)
        self.q = torch.where(which[:, None, None], q, self.q)
        self.since_draw = torch.where(which, 0, self.since_draw)

    def begin_episode(self, starting: Tensor) -> None:
        self._draw(starting)

    def act(self, state: Tensor) -> Tensor:
        self._draw(self.since_draw >= self.options.resample_every)
        self.since_draw += 1
        return epsilon_greedy(self.q[self._runs, state], 0.0, self.generator)

    def learn(
        self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor, terminal: Tensor
    ) -> None:
        self.model.update(state, action, reward, next_state)
        self.terminal[self._runs, next_state] |= terminal


def run_episodes(
    agent: TabularAgent,
    maze: MazeDynamics,
    episodes: int,
    generator: torch.Generator | None = None,
    max_steps: int = 1_000_000,
    on_episode_end: Callable[[Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Run every run of ``agent`` until each has finished ``episodes`` episodes.

    ``on_episode_end(ended, index)``, if given, is called after a step in which some
    runs finished an episode: ``ended (R,) bool`` and ``index (R,) long`` the number of
    that episode (from 0) for those runs (e.g. to record the greedy path then).

    Returns:
        ``(R, episodes)`` long: the steps each episode took.

    Raises:
        RuntimeError: after ``max_steps`` lockstep steps with episodes unfinished.
    """
    r = agent.num_runs
    state = torch.full((r,), maze.start, dtype=torch.long)
    steps = torch.zeros(r, dtype=torch.long)
    finished = torch.zeros(r, dtype=torch.long)
    lengths = torch.zeros(r, episodes, dtype=torch.long)
    agent.begin_episode(torch.ones(r, dtype=torch.bool))
    runs = torch.arange(r)
    for _ in range(max_steps):
        if bool((finished >= episodes).all()):
            return lengths
        action = agent.act(state)
        next_state, reward, terminal = maze.step(state, action, generator)
        agent.learn(state, action, reward, next_state, terminal)
        steps += 1
        record = terminal & (finished < episodes)
        lengths[runs[record], finished[record]] = steps[record]
        if on_episode_end is not None and bool(record.any()):
            on_episode_end(record, finished)
        finished += terminal.long()
        steps = torch.where(terminal, 0, steps)
        state = torch.where(terminal, maze.start, next_state)
        agent.begin_episode(terminal)
    raise RuntimeError(f"run_episodes: {episodes} episodes not finished in {max_steps} steps")


def greedy_path_length(q: Tensor, maze: MazeDynamics, max_len: int = 200) -> Tensor:
    """Steps the greedy policy of each run takes from the start to the goal in the
    maze as it is now, without slips (ties to the lowest action), ``max_len`` if it
    does not get there.

    Args:
        q: ``(R, S, A)`` action values.

    Returns:
        ``(R,)`` long.
    """
    r = q.shape[0]
    runs = torch.arange(r)
    greedy = q.argmax(-1)  # (R, S)
    table = maze.table()
    state = torch.full((r,), maze.start, dtype=torch.long)
    length = torch.full((r,), max_len, dtype=torch.long)
    for t in range(1, max_len + 1):
        state = table[state, greedy[runs, state]]
        reached = (state == maze.goal) & (length == max_len)
        length = torch.where(reached, t, length)
        if bool((length < max_len).all()):
            break
    return length


def run_steps(
    agent: TabularAgent, maze: MazeDynamics, steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """Run every run of ``agent`` for ``steps`` steps (episodes restart at the goal).

    Returns:
        ``(R, steps)`` float: the cumulative reward after each step (the book's
        Figures 8.4 and 8.5).
    """
    r = agent.num_runs
    state = torch.full((r,), maze.start, dtype=torch.long)
    rewards = torch.zeros(r, steps)
    agent.begin_episode(torch.ones(r, dtype=torch.bool))
    for t in range(steps):
        action = agent.act(state)
        next_state, reward, terminal = maze.step(state, action, generator)
        agent.learn(state, action, reward, next_state, terminal)
        rewards[:, t] = reward
        state = torch.where(terminal, maze.start, next_state)
        agent.begin_episode(terminal)
    return rewards.cumsum(1)

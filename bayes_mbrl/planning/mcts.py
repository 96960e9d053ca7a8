"""Monte Carlo tree search (UCT) over posterior function draws, for discrete actions.

One search (one decision) draws ``F`` posterior functions and grows **one tree per
function** (root parallelization, Chaslot et al. 2008), all ``F`` trees in lockstep:

* **Thompson-style draws.** Tree ``f`` plans in function ``f`` alone: its expansions
  and its leaf rollouts all step function ``f``, so every simulated trajectory is a
  trajectory of one consistent posterior function (TS-inf) and the tree's values are
  that function's action values. The decision averages the root's action values over
  the ``F`` trees (the posterior expectation of each first action's value), and the
  functions are drawn anew at every search. One tree per function, rather than one
  tree fed by all of them, keeps the epistemic spread (across trees,
  :attr:`MCTSResult.function_values`) apart from the aleatoric noise (the sampled
  outcomes within a tree), and batches naturally: a model call steps all ``F`` trees
  at once as the ``(F, B, obs_dim)`` input of the
  :class:`~bayes_mbrl.models.base.FunctionSample`.
* **UCT** (Kocsis & Szepesvari 2006): at a node, an untried action first, else
  ``argmax_a Qn(a) + c * sqrt(ln N / n(a))``, ``Qn`` the action value min-max
  normalized over the tree's values so far (as MuZero does: ``c`` then does not depend
  on the reward scale).
* **Sampled next states (chance nodes).** Expanding action ``a`` at a node draws
  ``outcomes`` next states from the tree's function (sparse sampling, Kearns et al.
  2002); equal draws merge, so an action's children are its distinct sampled states
  weighted by how often each was drawn (a deterministic function has one child, a
  tabular model's finite outcomes get their empirical frequencies). A simulation
  follows a child drawn with those weights.
* **Transpositions.** Equal states within a tree are one node (a graph: UCT with
  transpositions), so what a state learned along one path serves every path reaching
  it; with finite states (a maze) the search covers them in a few hundred simulations.
  The depth limit counts the steps of each path.
* **Leaf evaluation.** Every new node gets the mean discounted return of ``rollouts``
  uniformly random rollouts of ``rollout_depth`` steps in its tree's function, all new
  nodes of all trees in one batch (one model call per rollout step). Steps are scored
  by the task's batched reward and termination functions; nothing is earned after a
  terminated step.
* **Backups.** ``backup = "mean"`` (the default) is classic UCT: ``Q(s, a)`` the mean
  of the returns that went through ``(s, a)``. ``backup = "max"`` (MaxUCT, Keller &
  Helmert 2013): ``Q(s, a)`` is the weighted mean over ``a``'s outcomes of ``reward +
  gamma * V(s')``, read from the successors' current values, and ``V(s)`` the largest
  ``Q(s, .)`` (the rollout value until an action is expanded): Bellman backups that
  carry a reward found deep in the tree to the root at once, what a sparse reward (the
  maze's goal) needs. Where every action survives the search's horizon (CartPole),
  max backups tie and the mean's average over the tree's continuations is the better
  guide (``experiments/mcts_cartpole_true.py``).
* **Waves.** Each tree runs ``batch`` simulations per wave: they descend one after the
  other with *virtual visits* (a visit counts at once, its value at the backup), so
  they spread over the tree; then every new action of every tree is expanded in one
  model call and its new nodes evaluated together. ``batch = 1`` is sequential UCT.

The tree is Python objects (a few actions per node); the model is only called on
batches. Shapes: ``F`` functions (trees), ``A`` actions, ``D`` obs_dim, ``M`` outcomes.

Examples:
    >>> import torch
    >>> from bayes_mbrl.envs.dyna_maze import MazeDynamics
    >>> from bayes_mbrl.models.tabular import TabularFunctions
    >>> from bayes_mbrl.planning.mcts import MCTSPlanner
    >>> maze = MazeDynamics("dyna")
    >>> class TrueMaze:                     # the maze's exact dynamics, as one "draw"
    ...     obs_dim, action_dim = maze.num_states, 4
    ...     def sample_functions(self, n, generator=None):
    ...         p = maze.transition_probabilities().expand(n, -1, -1, -1)
    ...         return TabularFunctions(p, torch.zeros(n, maze.num_states, 4))
    >>> def at_goal(obs, action, next_obs):
    ...     return next_obs.argmax(-1) == maze.goal
    >>> planner = MCTSPlanner(TrueMaze(), lambda o, a, n: at_goal(o, a, n).float(), at_goal,
    ...                       functions=1, simulations=100, gamma=0.95, rollout_depth=10,
    ...                       backup="max")
    >>> one_step_below = torch.nn.functional.one_hot(torch.tensor(17), 54).float()  # (1, 8)
    >>> int(planner.plan(one_step_below, torch.Generator().manual_seed(0)).index)  # up
    0
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import OneHotCategorical

from bayes_mbrl.envs import RewardFn, TaskSpec, TerminationFn
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models.base import FunctionSample
from bayes_mbrl.options import Options, at_least, interval, one_of, option
from bayes_mbrl.planning.imagine import checked_reward, checked_termination

__all__ = ["BACKUPS", "FunctionSource", "MCTSOptions", "MCTSPlanner", "MCTSResult"]

BACKUPS = ("max", "mean")
"""How a tree's action values are backed up (:attr:`MCTSOptions.backup`)."""


class FunctionSource(Protocol):
    """What MCTS plans through: anything that draws posterior functions (every
    :class:`~bayes_mbrl.models.base.DynamicsModel`, or a wrapper of known dynamics)."""

    obs_dim: int
    action_dim: int

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """``n`` posterior draws."""
        ...


@dataclass
class MCTSOptions(Options):
    """Settings of :class:`MCTSPlanner` (the ``[mcts]`` section of
    ``experiment.mode = "mcts"``); see :mod:`bayes_mbrl.planning.mcts`."""

    simulations: int = option(
        64, at_least(1, "an integer"), "simulations in each posterior function's tree per decision"
    )
    functions: int = option(
        0,
        at_least(0, "an integer"),
        "posterior functions drawn per decision, one tree each (0: the model's finite "
        "support, e.g. the ensemble's members, else 5)",
    )
    max_depth: int = option(20, at_least(1, "an integer"), "steps of a simulation's path at most")
    rollout_depth: int = option(
        20, at_least(0, "an integer"), "steps of the random rollouts from a new node (0: value 0)"
    )
    rollouts: int = option(4, at_least(1, "an integer"), "random rollouts per new node")
    outcomes: int = option(
        1,
        at_least(1, "an integer"),
        "next states sampled when an action is expanded (its children; equal ones merge)",
    )
    gamma: float = option(0.99, interval(0.0, 1.0, lo_open=True), "discount")
    exploration: float = option(
        1.0, at_least(0), "UCT constant c on min-max normalized action values"
    )
    backup: str = option(
        "mean",
        one_of(BACKUPS),
        "'mean': Monte Carlo means of the returns (UCT); 'max': Bellman backups over the "
        "sampled outcomes (MaxUCT, for sparse rewards)",
    )
    batch: int = option(
        4, at_least(1, "an integer"), "simulations per tree per wave (virtual visits)"
    )


class _Node:
    """A decision node: a state, its value and per-action statistics; equal states of a
    tree are one node (transpositions)."""

    __slots__ = ("edges", "known", "n", "q", "state", "value", "w")

    def __init__(self, state: Tensor, value: float, actions: int) -> None:
        self.state = state  # (D,)
        self.value = value  # the rollout estimate, then (max backups) the largest q
        self.n = [0] * actions  # visits of each action (virtual visits included)
        self.w = [0.0] * actions  # sum of the returns backed up through each action
        self.q = [0.0] * actions  # action values (what UCT and the decision read)
        self.known = [False] * actions  # q[a] holds a backed-up value
        # None: not expanded; []: expansion pending in this wave; else the outcomes
        self.edges: list[list[_Child] | None] = [None] * actions


class _Child:
    """One distinct sampled outcome of an action: the next node, how many of the
    action's draws gave it, and the step's reward and termination."""

    __slots__ = ("node", "reward", "terminal", "weight")

    def __init__(self, node: _Node, weight: int, reward: float, terminal: bool) -> None:
        self.node, self.weight, self.reward, self.terminal = node, weight, reward, terminal


@dataclass
class _Simulation:
    """One descent: its ``(node, action, child)`` steps, and how it ended: at an
    action to expand (``expand = (node, action)``), or at a node or terminated step."""

    path: list[tuple[_Node, int, _Child]]
    expand: tuple[_Node, int] | None


class _Tree:
    """One function's search graph: the root, its nodes by state, and the range of its
    action values (UCT's normalization)."""

    __slots__ = ("bounds", "nodes", "root")

    def __init__(self, obs: Tensor, actions: int) -> None:
        self.root = _Node(obs, 0.0, actions)
        self.nodes = {_key(obs): self.root}
        self.bounds = [math.inf, -math.inf]


@dataclass
class MCTSResult:
    """One search's outcome.

    Attributes:
        action: ``(A,)`` one-hot chosen action.
        index: the chosen action's index (0-d long tensor).
        values: ``(A,)`` root action values averaged over the functions' trees (NaN
            for an action no tree expanded).
        function_values: ``(F, A)`` each tree's root action values (NaN: not expanded).
        visits: ``(F, A)`` root visits of each action in each tree.
    """

    action: Tensor
    index: Tensor
    values: Tensor
    function_values: Tensor
    visits: Tensor


class MCTSPlanner:
    """UCT over posterior function draws for one-hot actions (see the module).

    Args:
        model: draws posterior functions (:class:`FunctionSource`), with ``action_dim``
            the number of discrete actions ``A`` (actions are one-hot).
        reward_fn: batched ``(obs (..., D), action (..., A), next_obs (..., D)) ->
            (...)`` reward (a task's ``reward_fn``).
        termination_fn: batched termination, same arguments, bool ``(...)``; None: the
            task never terminates.

    The arguments from ``simulations`` to ``batch`` are the fields of
    :class:`MCTSOptions`.

    Raises:
        OptionError: a setting is out of its bounds.
        ConfigError: ``model`` draws no functions, or ``reward_fn`` is not callable.
    """

    def __init__(
        self,
        model: FunctionSource,
        reward_fn: RewardFn,
        termination_fn: TerminationFn | None = None,
        simulations: int = 64,
        functions: int = 0,
        max_depth: int = 20,
        rollout_depth: int = 20,
        rollouts: int = 4,
        outcomes: int = 1,
        gamma: float = 0.99,
        exploration: float = 1.0,
        backup: str = "mean",
        batch: int = 4,
    ) -> None:
        self.options: MCTSOptions = MCTSOptions.of(
            type(self).__name__,
            simulations=simulations,
            functions=functions,
            max_depth=max_depth,
            rollout_depth=rollout_depth,
            rollouts=rollouts,
            outcomes=outcomes,
            gamma=gamma,
            exploration=exploration,
            backup=backup,
            batch=batch,
        )
        if not callable(getattr(model, "sample_functions", None)):
            raise ConfigError(
                "MCTSPlanner plans through posterior draws: model must have "
                f"sample_functions(n, generator) (a DynamicsModel); got {type(model).__name__}"
            )
        if not callable(reward_fn):
            raise ConfigError(
                "MCTSPlanner: reward_fn must be a batched callable (obs, action, next_obs) "
                f"-> reward; got {reward_fn!r}"
            )
        self.model = model
        self.reward_fn, self.termination_fn = reward_fn, termination_fn
        self.obs_dim, self.num_actions = int(model.obs_dim), int(model.action_dim)
        hint = int(getattr(model, "num_functions_hint", 0) or 0)
        self.num_functions = self.options.functions or hint or 5

    @classmethod
    def for_task(cls, model: FunctionSource, task: TaskSpec, options: MCTSOptions) -> MCTSPlanner:
        """The planner of ``options`` on a task (its reward and termination functions).

        Raises:
            ConfigError: the task has continuous actions (MCTS branches on a finite set
                of actions), or the model's sizes are not the task's.
        """
        if not task.discrete_actions:
            raise ConfigError(
                f"MCTS branches on a finite set of actions, and {task.env_id!r} has "
                "continuous (Box) actions: use a continuous planner (experiment.mode = "
                "'mpc' with planner.kind = 'cem', 'mppi' or 'random'), or an env with a "
                "Discrete action space (e.g. env.id = 'CartPole-v1')"
            )
        sizes = (task.obs_dim, task.action_dim)
        if sizes != (model.obs_dim, model.action_dim):
            raise ConfigError(
                f"MCTS: the model has (obs_dim, action_dim) = {(model.obs_dim, model.action_dim)}"
                f" but {task.env_id!r} has {sizes}; build the model for the task"
            )
        values = {k: getattr(options, k) for k in MCTSOptions.__dataclass_fields__}
        return cls(model, task.reward_fn, task.termination_fn, **values)

    # ------------------------------------------------------------------ the search
    @torch.inference_mode()
    def plan(self, obs: Tensor, generator: torch.Generator | None = None) -> MCTSResult:
        """Search from ``obs`` and choose an action.

        Args:
            obs: ``(D,)`` current observation (float; one-hot for a tabular model).
            generator: all randomness (function draws, outcomes, rollouts, tie-breaks).

        Returns:
            :class:`MCTSResult`; its ``action`` maximizes the function-averaged root
            value (ties broken at random).

        Raises:
            DataError: ``obs`` is not a finite ``(D,)`` tensor.
        """
        if not isinstance(obs, Tensor) or tuple(obs.shape) != (self.obs_dim,):
            shape = tuple(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
            raise DataError(f"MCTS: obs must be a ({self.obs_dim},) tensor, got {shape}")
        if not bool(torch.isfinite(obs).all()):
            raise DataError(f"MCTS: obs contains NaN or inf: {obs.tolist()}")
        o, a_count = self.options, self.num_actions
        fs = self.model.sample_functions(self.num_functions, generator)
        rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
        trees = [_Tree(obs.float(), a_count) for _ in range(self.num_functions)]
        done = 0
        while done < o.simulations:
            b = min(o.batch, o.simulations - done)
            self._wave(fs, trees, b, rng, generator)
            done += b
        visits = torch.tensor([t.root.n for t in trees], dtype=torch.float32)
        if o.backup == "max":
            for t in trees:  # the root's action values from its successors' latest values
                for a, k in enumerate(t.root.known):
                    if k:
                        t.root.q[a] = self._edge_value(t.root, a)
        known = torch.tensor([t.root.known for t in trees])
        q = torch.where(known, torch.tensor([t.root.q for t in trees]), math.nan)
        mean = torch.where(
            known.any(0), q.nan_to_num(0.0).sum(0) / known.sum(0).clamp_min(1), math.nan
        )
        score = mean.nan_to_num(-math.inf)
        best = torch.nonzero(score == score.max()).flatten().tolist()
        index = best[rng.randrange(len(best))]
        action = torch.nn.functional.one_hot(torch.tensor(index), a_count).float()
        return MCTSResult(action.to(obs.device), torch.tensor(index), mean, q, visits)

    def _select(self, tree: _Tree, rng: random.Random) -> _Simulation:
        """Descend one simulation from the root with virtual visits, until an action to
        expand, a terminated step or the depth limit."""
        path: list[tuple[_Node, int, _Child]] = []
        node = tree.root
        while len(path) < self.options.max_depth:
            a = self._uct_action(node, tree.bounds, rng)
            node.n[a] += 1
            edges = node.edges[a]
            if not edges:  # not expanded, or expanding in this wave
                if edges is None:
                    node.edges[a] = []
                return _Simulation(path, (node, a))
            if len(edges) == 1:
                child = edges[0]
            else:
                child = rng.choices(edges, [c.weight for c in edges])[0]
            path.append((node, a, child))
            if child.terminal:
                break
            node = child.node
        return _Simulation(path, None)

    def _uct_action(self, node: _Node, bound: list[float], rng: random.Random) -> int:
        """UCT's action at ``node``: an untried one first, ties broken at random (a fixed
        order would bias a search whose values tie, e.g. every action survives)."""
        n = node.n
        untried = [a for a, visits in enumerate(n) if visits == 0]
        if untried:
            return untried[0] if len(untried) == 1 else rng.choice(untried)
        lo, hi = bound
        span = hi - lo
        log_n = math.log(sum(n))
        c = self.options.exploration
        live = self.options.backup == "max"
        scores = []
        for a, visits in enumerate(n):
            if not node.known[a]:  # visited in this wave only: a virtual loss
                q = 0.0
            else:
                value = self._edge_value(node, a) if live else node.q[a]
                q = (value - lo) / span if span > 0 else 0.5
            scores.append(q + c * math.sqrt(log_n / visits))
        top = max(scores)
        best = [a for a, score in enumerate(scores) if score >= top - 1e-12]
        return best[0] if len(best) == 1 else rng.choice(best)

    def _wave(
        self,
        fs: FunctionSample,
        trees: list[_Tree],
        b: int,
        rng: random.Random,
        generator: torch.Generator | None,
    ) -> None:
        """``b`` simulations in every tree: select, expand every new action in one
        model call, evaluate the new nodes (batched rollouts), back up."""
        sims = [[self._select(tree, rng) for _ in range(b)] for tree in trees]
        expanding = [
            list({(id(s.expand[0]), s.expand[1]): s.expand for s in row if s.expand}.values())
            for row in sims
        ]
        self._expand(fs, trees, expanding, generator)
        o = self.options
        for tree, row in zip(trees, sims, strict=True):
            touched: list[tuple[_Node, int]] = []
            for sim in row:
                if sim.expand is not None:
                    node, a = sim.expand
                    g = self._edge_value(node, a)
                    touched.append((node, a))
                    self._update(node, a, g)
                elif sim.path and sim.path[-1][2].terminal:
                    g = 0.0
                else:
                    g = (sim.path[-1][2].node if sim.path else tree.root).value
                for node, a, child in reversed(sim.path):
                    g = child.reward + o.gamma * g
                    touched.append((node, a))
                    self._update(node, a, g)
            for node, a in touched:  # the wave's returns are all in
                if o.backup == "mean":
                    node.q[a], node.known[a] = node.w[a] / node.n[a], True
                q = node.q[a]
                tree.bounds[0], tree.bounds[1] = min(tree.bounds[0], q), max(tree.bounds[1], q)

    def _edge_value(self, node: _Node, a: int) -> float:
        """Weighted mean of ``reward + gamma * value`` over the outcomes of ``(node, a)``
        (no value after a terminated step)."""
        total, weight = 0.0, 0
        for child in node.edges[a] or ():
            after = 0.0 if child.terminal else self.options.gamma * child.node.value
            total += child.weight * (child.reward + after)
            weight += child.weight
        return total / weight

    def _update(self, node: _Node, a: int, g: float) -> None:
        """Back up the return ``g`` through ``(node, a)``: ``mean`` accumulates it;
        ``max`` recomputes the node's action values from its outcomes' current values
        (a transposition may have changed them along another path) and its value."""
        if self.options.backup == "mean":
            node.w[a] += g
            visits = sum(node.n)
            node.value += (g - node.value) / (visits + 1)  # the rollout value counts once
            return
        node.known[a] = True
        for b, known in enumerate(node.known):  # the successors' values may have moved
            if known:
                node.q[b] = self._edge_value(node, b)
        node.value = max(q for q, k in zip(node.q, node.known, strict=True) if k)

    def _expand(
        self,
        fs: FunctionSample,
        trees: list[_Tree],
        expanding: list[list[tuple[_Node, int]]],
        generator: torch.Generator | None,
    ) -> None:
        """Draw ``outcomes`` next states of every action to expand, all trees in one
        ``(F, E * M)`` model call; merge equal draws; states new to their tree become
        nodes, valued by :meth:`_rollout_values`."""
        m, a_count = self.options.outcomes, self.num_actions
        e = max(len(row) for row in expanding)
        if e == 0:
            return
        # slot (f, i) holds action i to expand in tree f; unused slots repeat the root
        obs = torch.stack([t.root.state for t in trees]).unsqueeze(1).repeat(1, e, 1)
        act_index = torch.zeros(len(trees), e, dtype=torch.long)
        for f, row in enumerate(expanding):
            for i, (node, a) in enumerate(row):
                obs[f, i], act_index[f, i] = node.state, a
        obs = obs.repeat_interleave(m, dim=1)  # (F, E * M, D)
        act = torch.nn.functional.one_hot(act_index, a_count).to(obs).repeat_interleave(m, dim=1)
        nxt = _sample_next(fs, obs, act, generator)
        reward = checked_reward(self.reward_fn, obs, act, nxt)
        if self.termination_fn is not None:
            end = checked_termination(self.termination_fn, obs, act, nxt)
        else:
            end = torch.zeros(reward.shape, dtype=torch.bool, device=reward.device)
        end = end | ~torch.isfinite(nxt).all(-1)  # a diverged model ends the trajectory
        reward_list, end_list = reward.tolist(), end.tolist()
        new: list[list[tuple[_Node, int]]] = [[] for _ in trees]  # (node, slot)
        for f, row in enumerate(expanding):
            nodes = trees[f].nodes
            for i, (node, a) in enumerate(row):
                children: dict[tuple[bytes, bool], _Child] = {}
                for slot in range(i * m, (i + 1) * m):
                    state, terminal = nxt[f, slot], bool(end_list[f][slot])
                    key = _key(state)
                    if (key, terminal) in children:
                        children[key, terminal].weight += 1
                        continue
                    child_node = nodes.get(key)
                    if child_node is None:
                        child_node = nodes[key] = _Node(state, 0.0, a_count)
                        new[f].append((child_node, slot))
                    children[key, terminal] = _Child(
                        child_node, 1, float(reward_list[f][slot]), terminal
                    )
                node.edges[a] = list(children.values())
        values = self._rollout_values(fs, nxt, [[s for _, s in row] for row in new], generator)
        for f, row in enumerate(new):
            for (child_node, _), value in zip(row, values[f], strict=True):
                child_node.value = value

    def _rollout_values(
        self,
        fs: FunctionSample,
        states: Tensor,
        slots: list[list[int]],
        generator: torch.Generator | None,
    ) -> list[list[float]]:
        """Mean discounted return of ``rollouts`` uniformly random rollouts from the
        states ``states[f, slots[f]]`` (``states`` ``(F, S, D)``), each in tree ``f``'s
        function, all in one ``(F, R * rollouts)`` batch: ``values[f][i]``."""
        o, a_count = self.options, self.num_actions
        r_max = max(len(row) for row in slots)
        if o.rollout_depth == 0 or r_max == 0:
            return [[0.0] * len(row) for row in slots]
        k = o.rollouts
        index = torch.zeros(len(slots), r_max, dtype=torch.long)
        alive = torch.zeros(len(slots), r_max, dtype=torch.bool)
        for f, row in enumerate(slots):
            index[f, : len(row)] = torch.tensor(row, dtype=torch.long)
            alive[f, : len(row)] = True
        index, alive = index.to(states.device), alive.to(states.device)
        state = states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
        state = state.repeat_interleave(k, dim=1)  # (F, R * k, D)
        alive = alive.repeat_interleave(k, dim=1)
        ret = torch.zeros(alive.shape, device=states.device)
        discount = 1.0
        for _ in range(o.rollout_depth):
            drawn = torch.randint(a_count, alive.shape, generator=generator)
            act = torch.nn.functional.one_hot(drawn, a_count).to(state)
            nxt = _sample_next(fs, state, act, generator)
            finite = torch.isfinite(nxt).all(-1)
            r = self.reward_fn(state, act, nxt)
            ret = ret + discount * torch.where(alive & finite, r, 0.0)
            stop = ~finite
            if self.termination_fn is not None:
                stop = stop | self.termination_fn(state, act, nxt)
            alive = alive & ~stop
            state = torch.where(finite.unsqueeze(-1), nxt, state)
            discount *= o.gamma
        mean = ret.view(len(slots), r_max, k).mean(-1).tolist()
        return [mean[f][: len(row)] for f, row in enumerate(slots)]


def _key(state: Tensor) -> bytes:
    """Equal states, equal keys (transpositions)."""
    return state.detach().cpu().numpy().tobytes()


def _sample_next(
    fs: FunctionSample, obs: Tensor, action: Tensor, generator: torch.Generator | None
) -> Tensor:
    """``(F, B, D)`` next states drawn from ``fs`` at ``(F, B, .)`` inputs: a one-hot
    categorical (a tabular model) by inverse CDF from ``generator`` (the generic
    :meth:`FunctionSample.sample` reseeds torch's global RNG per call, which costs more
    than the draw), anything else by the function sample's own ``sample``."""
    if type(fs).sample is FunctionSample.sample:
        dist = fs(obs, action)
        if isinstance(dist, OneHotCategorical):
            cdf = dist.probs.cumsum(-1)
            u = torch.rand(cdf.shape[:-1], generator=generator, dtype=cdf.dtype)
            u = u.to(cdf.device).unsqueeze(-1)
            index = (cdf < u * cdf[..., -1:]).sum(-1).clamp_max(cdf.shape[-1] - 1)
            return torch.nn.functional.one_hot(index, cdf.shape[-1]).to(obs.dtype)
    return fs.sample(obs, action, generator)

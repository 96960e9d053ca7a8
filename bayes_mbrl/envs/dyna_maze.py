"""The Dyna maze of Sutton & Barto (2nd ed., Example 8.1) and its changing variants.

``bayes_mbrl/DynaMaze-v0``: a 6 x 9 grid; the agent starts at ``S``, moves up, down,
left or right (a move into a wall or off the grid leaves it where it is) and the
episode ends with reward +1 when it reaches ``G``; every other step gives 0. With
``gamma = 0.95`` the shortest path (14 steps in the book's maze) is the optimum::

    . . . . . . . X G         X: wall
    . . X . . . . X .
    S . X . . . . X .
    . . X . . . . . .
    . . . . . X . . .
    . . . . . . . . .

Layouts (``layout=``):

- ``"dyna"``: the maze above (Example 8.1, Figure 8.2): 47 free cells.
- ``"blocking"``: Example 8.2 (Figure 8.4): a wall across row 3 with the gap on the
  right; after ``change_at`` environment steps (1000) the gap moves to the left end,
  blocking the short path.
- ``"shortcut"``: Example 8.3 (Figure 8.5): the wall with the gap on the left; after
  3000 steps a second gap opens on the right, a shorter path that a greedy planner
  that never re-explores does not find.

The environment counts its steps across episodes (resets do not restart the count),
as the book's changing mazes do. ``slip`` makes the maze stochastic: with that
probability a move goes to one of the two perpendicular directions instead (each
half as likely), as on a slippery floor.

Observations are the cell index ``row * cols + col`` (``Discrete(rows * cols)``; wall
cells are never observed), actions ``Discrete(4)``: 0 up, 1 down, 2 left, 3 right.
:class:`MazeDynamics` steps many mazes at once in torch (the tabular learners use it
to run many independent runs in lockstep); the gymnasium env is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium
import torch
from gymnasium import spaces
from torch import Tensor

from bayes_mbrl.errors import EnvError

__all__ = [
    "ACTION_MOVES",
    "BLOCKING_MAZE",
    "DYNA_MAZE",
    "ENV_ID",
    "LAYOUTS",
    "SHORTCUT_MAZE",
    "DynaMazeEnv",
    "MazeDynamics",
    "MazeLayout",
    "register_dyna_maze",
    "shortest_path_length",
]

ENV_ID = "bayes_mbrl/DynaMaze-v0"

#: (row, column) offset of each action: 0 up, 1 down, 2 left, 3 right
ACTION_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
#: the two perpendicular actions of each action (where a slip sends the move)
_PERPENDICULAR = ((2, 3), (2, 3), (0, 1), (0, 1))


@dataclass(frozen=True)
class MazeLayout:
    """A grid maze: its size, walls, start and goal, and optionally walls that change.

    Attributes:
        rows, cols: grid size; cells are numbered ``row * cols + col``.
        start, goal: ``(row, col)`` of the start and goal cells.
        walls: ``(row, col)`` cells that cannot be entered.
        changed_walls: the walls after ``change_at`` environment steps, or ``None``
            for a maze that never changes.
        change_at: environment steps (counted across episodes) after which
            ``changed_walls`` apply.
    """

    rows: int
    cols: int
    start: tuple[int, int]
    goal: tuple[int, int]
    walls: frozenset[tuple[int, int]]
    changed_walls: frozenset[tuple[int, int]] | None = None
    change_at: int = 0

    @property
    def num_states(self) -> int:
        """Number of cells, ``rows * cols`` (the size of the state space, walls included)."""
        return self.rows * self.cols

    def cell(self, rc: tuple[int, int]) -> int:
        """Index of the cell ``(row, col)``."""
        return rc[0] * self.cols + rc[1]

    def walls_at(self, env_steps: int) -> frozenset[tuple[int, int]]:
        """The walls in force once ``env_steps`` steps have been taken."""
        if self.changed_walls is not None and env_steps >= self.change_at:
            return self.changed_walls
        return self.walls

    def step_table(self, walls: frozenset[tuple[int, int]] | None = None) -> Tensor:
        """``(S, 4)`` long tensor: the cell each action leads to from each cell (a move
        into a wall or off the grid stays; the goal and wall cells map to themselves)."""
        walls = self.walls if walls is None else walls
        table = torch.arange(self.num_states).unsqueeze(1).repeat(1, 4)
        for r in range(self.rows):
            for c in range(self.cols):
                if (r, c) in walls or (r, c) == self.goal:
                    continue
                for a, (dr, dc) in enumerate(ACTION_MOVES):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < self.rows and 0 <= nc < self.cols and (nr, nc) not in walls:
                        table[self.cell((r, c)), a] = self.cell((nr, nc))
        return table


def _row(r: int, cols: range) -> frozenset[tuple[int, int]]:
    return frozenset((r, c) for c in cols)


DYNA_MAZE = MazeLayout(
    rows=6,
    cols=9,
    start=(2, 0),
    goal=(0, 8),
    walls=frozenset({(1, 2), (2, 2), (3, 2), (4, 5), (0, 7), (1, 7), (2, 7)}),
)
"""Example 8.1's maze (Figure 8.2): the shortest path from ``S`` to ``G`` is 14 steps."""

BLOCKING_MAZE = MazeLayout(
    rows=6,
    cols=9,
    start=(5, 3),
    goal=(0, 8),
    walls=_row(3, range(0, 8)),
    changed_walls=_row(3, range(1, 9)),
    change_at=1000,
)
"""Example 8.2 (Figure 8.4): the gap in the wall moves from the right to the left end."""

SHORTCUT_MAZE = MazeLayout(
    rows=6,
    cols=9,
    start=(5, 3),
    goal=(0, 8),
    walls=_row(3, range(1, 9)),
    changed_walls=_row(3, range(1, 8)),
    change_at=3000,
)
"""Example 8.3 (Figure 8.5): a shorter path opens on the right after 3000 steps."""

LAYOUTS = {"dyna": DYNA_MAZE, "blocking": BLOCKING_MAZE, "shortcut": SHORTCUT_MAZE}
"""The built-in layouts by name (the env's ``layout`` argument)."""


def shortest_path_length(layout: MazeLayout, env_steps: int = 0) -> int:
    """Fewest steps from start to goal with the walls in force after ``env_steps``
    (breadth-first search); raises :class:`EnvError` if the goal cannot be reached."""
    table = layout.step_table(layout.walls_at(env_steps)).tolist()
    start, goal = layout.cell(layout.start), layout.cell(layout.goal)
    frontier, seen, depth = [start], {start}, 0
    while frontier:
        if goal in seen:
            return depth
        depth += 1
        nxt = [t for s in frontier for t in table[s] if t not in seen]
        seen.update(nxt)
        frontier = list(dict.fromkeys(nxt))
    raise EnvError(f"the goal {layout.goal} cannot be reached from the start {layout.start}")


def _layout(layout: str | MazeLayout) -> MazeLayout:
    if isinstance(layout, MazeLayout):
        return layout
    if layout not in LAYOUTS:
        raise EnvError(
            f"unknown maze layout {layout!r}; choose one of {sorted(LAYOUTS)} or pass a MazeLayout"
        )
    return LAYOUTS[layout]


class MazeDynamics:
    """Steps ``R`` copies of a maze at once (runs in lockstep), in torch.

    Args:
        layout: a :class:`MazeLayout` or the name of a built-in one.
        slip: probability that a move goes to a perpendicular direction instead.

    The wall change of a changing maze applies to every copy at once, after
    ``layout.change_at`` calls of :meth:`step` (the copies step together).
    """

    def __init__(self, layout: str | MazeLayout = "dyna", slip: float = 0.0) -> None:
        if not 0.0 <= slip <= 1.0:
            raise EnvError(f"slip must be a probability in [0, 1], got {slip}")
        self.layout = _layout(layout)
        self.slip = float(slip)
        self.tables = [self.layout.step_table(self.layout.walls)]
        if self.layout.changed_walls is not None:
            self.tables.append(self.layout.step_table(self.layout.changed_walls))
        self.start = self.layout.cell(self.layout.start)
        self.goal = self.layout.cell(self.layout.goal)
        self.num_states, self.num_actions = self.layout.num_states, 4
        self.env_steps = 0

    def table(self) -> Tensor:
        """The ``(S, 4)`` step table in force now."""
        changed = self.layout.changed_walls is not None and self.env_steps >= self.layout.change_at
        return self.tables[1 if changed else 0]

    def transition_probabilities(self) -> Tensor:
        """``(S, 4, S)`` float64: the exact next-cell distribution of each cell and action
        now (the intended move with probability ``1 - slip``, each perpendicular one
        with ``slip / 2``), as :meth:`step` samples it."""
        table, cells = self.table(), torch.arange(self.num_states)
        p = torch.zeros(self.num_states, 4, self.num_states, dtype=torch.float64)
        for a in range(4):
            p[cells, a, table[:, a]] += 1.0 - self.slip
            for side in _PERPENDICULAR[a]:
                p[cells, a, table[:, side]] += self.slip / 2
        return p

    def neighbours(self) -> Tensor:
        """``(S, 4, S)`` bool: the cells one move (any action, walls as they are now) can
        reach from each cell, itself included; a prior for a tabular model that knows
        moves are local, not where each action goes."""
        table = self.table()
        support = torch.zeros(self.num_states, 4, self.num_states, dtype=torch.bool)
        cells = torch.arange(self.num_states)
        for b in range(4):
            support[cells, :, table[:, b]] = True
        support[cells, :, cells] = True
        return support

    def step(
        self, state: Tensor, action: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every copy.

        Args:
            state: ``(R,)`` long cell indices.
            action: ``(R,)`` long actions in ``[0, 4)``.
            generator: randomness of the slips (unused when ``slip = 0``).

        Returns:
            ``(next_state (R,) long, reward (R,) float32, terminated (R,) bool)``: reward
            1 and terminated where the goal is reached.
        """
        if self.slip > 0:
            u = torch.rand(action.shape, generator=generator)
            side = torch.rand(action.shape, generator=generator) < 0.5
            perp = torch.tensor(_PERPENDICULAR)[action]
            slipped = torch.where(side, perp[..., 0], perp[..., 1])
            action = torch.where(u < self.slip, slipped, action)
        next_state = self.table()[state, action]
        self.env_steps += 1
        done = next_state == self.goal
        return next_state, done.float(), done


class DynaMazeEnv(gymnasium.Env[Any, Any]):
    """The Dyna maze as a gymnasium env (see the module docstring).

    Args:
        layout: ``"dyna"``, ``"blocking"``, ``"shortcut"`` or a :class:`MazeLayout`.
        slip: probability that a move goes to a perpendicular direction.
        render_mode: ``"ansi"`` (a text picture of the maze) or ``None``.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self, layout: str | MazeLayout = "dyna", slip: float = 0.0, render_mode: str | None = None
    ) -> None:
        self.maze = MazeDynamics(layout, slip)
        self.layout = self.maze.layout
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(self.layout.num_states)
        self.action_space = spaces.Discrete(4)
        self.state = self.maze.start
        self._generator = torch.Generator().manual_seed(0)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._generator.manual_seed(seed)
        self.state = self.maze.start
        return self.state, {}

    def step(self, action: Any) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise EnvError(
                f"DynaMazeEnv: action {action!r} is not in Discrete(4); "
                "use 0 (up), 1 (down), 2 (left) or 3 (right)"
            )
        s, r, done = self.maze.step(
            torch.tensor([self.state]), torch.tensor([int(action)]), self._generator
        )
        self.state = int(s[0])
        return self.state, float(r[0]), bool(done[0]), False, {"env_steps": self.maze.env_steps}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        walls = self.layout.walls_at(self.maze.env_steps)
        lines = []
        for r in range(self.layout.rows):
            row = []
            for c in range(self.layout.cols):
                cell = self.layout.cell((r, c))
                if cell == self.state:
                    row.append("A")
                elif (r, c) == self.layout.goal:
                    row.append("G")
                elif (r, c) in walls:
                    row.append("X")
                else:
                    row.append("S" if (r, c) == self.layout.start else ".")
            lines.append(" ".join(row))
        return "\n".join(lines)


def register_dyna_maze() -> None:
    """Register ``bayes_mbrl/DynaMaze-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="bayes_mbrl.envs.dyna_maze:DynaMazeEnv")

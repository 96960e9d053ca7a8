"""Latent MPC (PlaNet-style): plan in the latent space of a state-space model from the
filtered belief, replan at every step, refit after every episode.

The learner is a :class:`~bayes_mbrl.models.latent.LatentStateSpaceModel`
(``model.kind = "latent"``) fitted on the observed trajectories (partial observations
or frames). At each step the agent updates its belief over the latent state with the
new observation (``q(z_t | o_{1:t}, a_{1:t-1})``: predict through the transition
members with the last action, condition on the observation) and plans from it with
the ``[planner]`` section's optimizer through the ordinary rollout evaluator: the
latent transitions are its functions (TS-inf over ensemble members keeps epistemic
uncertainty apart as everywhere else) and the learned reward model is its reward
function. Nothing in the planner knows it is in a latent space.

The plan starts from the belief's mean (``[latent_mpc] start = "mean"``) or, with
``start = "sample"``, from one draw of the belief per planning call (a cheap way to
let the belief's spread perturb the plans).

With ``terminal_value = "critic"`` (TD-MPC-style; Hansen et al. 2022, and Lowrey et
al.'s POLO), the learner is the latent actor-critic of ``experiment.mode =
"latent_ac"`` (its ``[latent_ac]`` section): after every model fit a critic ``v(z)``
is trained on imagined latent rollouts, and a plan's particles score
``sum_{t<H} gamma^t r_t + gamma^H v(z_H)`` with the critic's discount ``gamma``. Open-loop
predictions in a learned latent space grow ill-conditioned with the horizon (near an
unstable equilibrium such as the pendulum's top, the members' small disagreements
can grow several hundredfold over 30 steps), so a short horizon with a value beyond
it is the remedy this option offers. Measured on the partially observed pendulum
(seed 1, horizon 15) it did not plan better than the horizon-30 preset: this early the
critic values the actor-critic's own, still poor, policy (experiments/README.md).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import ALGORITHMS, Algorithm, AlgorithmParts
from bayes_mbrl.callbacks import Callback
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.models.base import MODELS
from bayes_mbrl.options import Options, at_least, one_of, option
from bayes_mbrl.planning import PLANNERS, Planner, PlanResult, RolloutEvaluator, make_objective

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec
    from bayes_mbrl.experiment import Experiment
    from bayes_mbrl.models.latent import Belief, LatentStateSpaceModel

__all__ = [
    "BeliefTracker",
    "LatentDiagnostics",
    "LatentMPCAgent",
    "LatentMPCAlgorithm",
    "LatentMPCOptions",
    "build_latent_model",
    "check_latent_kind",
]


#: what ``[latent_mpc] terminal_value`` may name
TERMINAL_VALUES = ("none", "critic")


@dataclass
class LatentMPCOptions(Options):
    """Options of latent MPC (the ``[latent_mpc]`` section)."""

    start: str = option(
        "mean", one_of(["mean", "sample"]), "plan from the belief's mean or from one draw of it"
    )
    diagnostics_every: int = option(
        1,
        at_least(0, "an integer"),
        "write latent diagnostics into the run directory every k episodes (0: never)",
    )
    terminal_value: str = option(
        "none",
        one_of(TERMINAL_VALUES),
        "value of the latent state after the horizon: none, or a critic trained on imagined "
        "rollouts with the [latent_ac] options (returns sum gamma^t r_t + gamma^H v(z_H))",
    )


class BeliefTracker:
    """The belief over the latent state along an episode: predict with the last
    action, condition on each new observation (any agent acting through a latent
    model uses one).

    Args:
        model: a fitted latent state-space model.

    Attributes:
        belief: the current :class:`~bayes_mbrl.models.latent.Belief` (None before the
            first observation of an episode).
        last_action: the action taken after the last observation (None before it).
    """

    def __init__(self, model: LatentStateSpaceModel) -> None:
        self.model = model
        self.belief: Belief | None = None
        self.last_action: Tensor | None = None

    def reset(self) -> None:
        """Start of an episode."""
        self.belief, self.last_action = None, None

    def observe(self, obs: np.ndarray | Tensor) -> Belief:
        """Update the belief with a new observation (made after :attr:`last_action`)."""
        model = self.model
        if self.belief is None or self.last_action is None:
            predicted = model.initial_belief()
        else:
            predicted = model.predict_belief(self.belief, self.last_action)
        self.belief = model.update_belief(predicted, obs)
        return self.belief

    def acted(self, action: Tensor) -> None:
        """Record the action taken after the last observation."""
        self.last_action = action


class LatentMPCAgent:
    """Filters a belief over the latent state and plans from it at every step.

    Args:
        model: a fitted latent state-space model.
        planner: any :class:`~bayes_mbrl.planning.Planner`.
        evaluator: the rollout evaluator over ``model`` in latent space.
        start: ``"mean"`` or ``"sample"`` (see the module doc).
        generator: draws the start for ``start = "sample"``.

    Attributes:
        tracker: the :class:`BeliefTracker` (``tracker.belief`` is the current belief).
        plan_seconds: wall time spent filtering and planning since :meth:`reset`.
    """

    def __init__(
        self,
        model: LatentStateSpaceModel,
        planner: Planner,
        evaluator: RolloutEvaluator,
        start: str = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        if planner.horizon != evaluator.horizon:
            raise ConfigError(
                f"planner horizon {planner.horizon} != evaluator horizon {evaluator.horizon}"
            )
        self.model, self.planner, self.evaluator = model, planner, evaluator
        self.start, self.generator = start, generator
        self.tracker = BeliefTracker(model)
        self.last_plan: PlanResult | None = None
        self.plan_seconds = 0.0

    def reset(self) -> None:
        """Start of an episode: forget the belief, the last action and the warm start."""
        self.planner.reset()
        self.tracker.reset()
        self.last_plan = None
        self.plan_seconds = 0.0

    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """Action ``(action_dim,)`` for the newest observation."""
        begin = time.perf_counter()
        belief = self.tracker.observe(obs)
        start = belief.mean
        if self.start == "sample" and bool(belief.cov.abs().sum() > 0):
            chol = torch.linalg.cholesky(belief.cov + 1e-6 * torch.eye(len(start)))
            start = start + chol @ torch.randn(len(start), generator=self.generator)
        self.last_plan = self.planner.plan(self.evaluator.scorer(start))
        action = self.last_plan.actions[0].clone()
        self.planner.advance(1)
        self.tracker.acted(action)
        self.plan_seconds += time.perf_counter() - begin
        return action


class LatentDiagnostics(Callback):
    """Writes the latent model's diagnostics (reconstructions, open-loop predictions,
    metrics) into ``<run>/latent/`` every ``every`` episodes and after the last."""

    def __init__(self, model: LatentStateSpaceModel, every: int) -> None:
        self.model, self.every = model, every

    def _on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        last = row["episode"] == experiment.config.experiment.episodes
        if self.every and self.model.fitted and (row["episode"] % self.every == 0 or last):
            out = Path(experiment.run_dir) / "latent"
            try:
                from bayes_mbrl.models.latent.diagnostics import write_diagnostics

                write_diagnostics(self.model, experiment.buffer, out)
            except Exception as exc:  # diagnostics must never cost the run
                warnings.warn(
                    f"episode {row['episode']}: writing the latent diagnostics into {out} "
                    f"failed ({type(exc).__name__}: {exc}); the run goes on without them",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return True


def check_latent_kind(config: Any) -> tuple[str, Any, str] | None:
    """The problem with ``config.model.kind`` for a mode that acts through a latent
    state-space model (one whose class has ``needs_history``), or None."""
    kind = config.model.kind
    if not getattr(MODELS[kind], "needs_history", False):
        latent = [k for k in MODELS.names() if getattr(MODELS[k], "needs_history", False)]
        return ("model.kind", kind, f"a latent state-space model ({', '.join(latent)})")
    return None


def build_latent_model(config: Any, task: TaskSpec) -> LatentStateSpaceModel:
    """The ``[model]`` latent state-space model for ``task`` (with its ``frame_shape``
    for pixels), seeded by ``experiment.seed``."""
    import dataclasses

    kind = config.model.kind
    options = MODELS.options(kind)
    assert options is not None  # latent families register options
    values = {f.name: getattr(config.model, f.name) for f in dataclasses.fields(options)}
    model = MODELS[kind].from_options(  # type: ignore[call-arg]
        options(**values),
        task.obs_dim,
        task.action_dim,
        seed=config.experiment.seed,
        frame_shape=getattr(task, "frame_shape", None),
    )
    return cast("LatentStateSpaceModel", model)


class LatentMPCAlgorithm(Algorithm):
    """Latent MPC through the ``[model]`` latent state-space model and the ``[planner]``."""

    observations = ("state", "partial", "pixels")

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        problem = check_latent_kind(config)
        if problem is None and config.planner.propagation == "moment_matching":
            return ("planner.propagation", "moment_matching", "a particle propagation")
        return problem

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        model = build_latent_model(config, task)
        p = config.planner
        opts: LatentMPCOptions = config.mode_options
        planner = PLANNERS[p.kind].from_config(p, task.action_low, task.action_high, generator)
        learner: Any = model
        value_kw: dict[str, Any] = {}
        title, fit_description = f"latent ({model.encoder}) + {p.kind}", "latent model SVI"
        if opts.terminal_value == "critic":
            from bayes_mbrl.algorithms.latent_actor_critic import LatentActorCritic, _seed

            ac = config.latent_ac
            learner = LatentActorCritic(
                model, task.action_low, task.action_high, ac, seed=_seed(generator)
            )
            value_kw = {"terminal_value": learner.value, "discount": ac.discount}
            title += " + critic"
            fit_description += ", then a critic in imagination"
        evaluator = RolloutEvaluator(
            model,
            model.reward_function(),
            p.horizon,
            particles=p.particles,
            functions=p.functions,
            propagation=p.propagation,
            objective=make_objective(p.objective, p.risk_beta, p.cvar_alpha),
            precision=p.precision,
            generator=generator,
            **value_kw,
        )
        agent = LatentMPCAgent(model, planner, evaluator, opts.start, generator)
        return AlgorithmParts(
            agent=agent,
            learner=learner,
            model=None,
            title=title,
            fit_description=fit_description,
            notes=[f"planning precision: {evaluator.precision_note}"],
            no_model_reason=(
                "a latent state-space model predicts observations from a belief over its "
                "latent state, not from the previous observation; its diagnostics "
                "(reconstructions, open-loop predictions, metrics.json) are in the run's "
                "latent/ directory"
            ),
            callbacks=[LatentDiagnostics(model, opts.diagnostics_every)],
        )


ALGORITHMS.add(
    "latent_mpc",
    LatentMPCAlgorithm,
    options=LatentMPCOptions,
    summary="plan in a latent state-space model's latent space from the filtered belief "
    "(PlaNet-style; partial observations and pixels)",
)

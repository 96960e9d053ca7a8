"""A learned reward model, for tasks whose config names no reward function.

When ``env.id`` is not a built-in task and ``env.reward_fn`` is empty, the task's reward
is unknown (a :class:`~bayes_mbrl.envs.custom.NoRewardFunction`). The MPC modes then plan
with a :class:`RewardModel`: a Gaussian MLP ``r | s, a, s' ~ N(mu(x), sigma^2(x))`` on
``x = (obs, action, next_obs)``, trained by Gaussian negative log-likelihood on the replay
buffer's rewards each time the dynamics are fitted (:class:`LearnedRewardLearner` fits
both and checkpoints both, so a resumed run continues bit for bit). The planner scores
imagined transitions with its mean, through the same signature as a task's reward
function.

The net is the ensemble's batched Gaussian MLP with one member
(:class:`~bayes_mbrl.models.ensemble.GaussianMLPEnsemble`, its log-variance softly
bounded) and the one early-stopped trainer (:mod:`bayes_mbrl.models.training`); inputs
and rewards are standardized on all the data at every fit, training continues from the
current weights.

Examples:
    >>> import torch
    >>> from bayes_mbrl.data import ReplayBuffer
    >>> buffer = ReplayBuffer(2, 1, capacity=300)
    >>> g = torch.Generator().manual_seed(0)
    >>> obs, action = torch.randn(300, 2, generator=g), torch.rand(300, 1, generator=g)
    >>> buffer.add(obs, action, -obs.square().sum(-1), obs + 0.1 * action,
    ...            torch.zeros(300, dtype=torch.bool), torch.zeros(300, dtype=torch.bool))
    >>> reward = RewardModel(2, 1, RewardModelOptions(max_epochs=5))
    >>> reward.fit(buffer, g).epochs
    5
    >>> reward(obs[:4], action[:4], obs[:4]).shape
    torch.Size([4])
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.distributions import Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.envs.custom import NoRewardFunction
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import DynamicsModel, FitReport, ProgressFn, state_mismatch
from bayes_mbrl.models.ensemble import GaussianMLPEnsemble
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import Options, at_least, greater_than, interval, option, positive_list

if TYPE_CHECKING:
    from bayes_mbrl.envs import RewardFn, TaskSpec

__all__ = [
    "LearnedRewardLearner",
    "RewardModel",
    "RewardModelOptions",
    "planning_reward",
    "reward_model_scores",
]

_INT1 = at_least(1, "an integer")


@dataclass
class RewardModelOptions(Options):
    """Options of :class:`RewardModel`."""

    hidden_sizes: list[int] = option([64, 64], positive_list, "hidden widths of the reward net")
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    weight_decay: float = option(1e-5, at_least(0), "L2 penalty of the weights")
    batch_size: int = option(64, _INT1, "transitions per minibatch")
    max_epochs: int = option(50, _INT1, "epochs per fit at most (early-stopped)")
    patience: int = option(5, _INT1, "epochs without held-out progress before stopping")
    val_fraction: float = option(
        0.1, interval(0.0, 1.0, hi_open=True), "fraction of transitions held out"
    )


class RewardModel:
    """A Gaussian reward net ``r | obs, action, next_obs ~ N(mu, sigma^2)``.

    Args:
        obs_dim: observation size ``D``.
        action_dim: action size ``A``.
        options: sizes and training; the defaults when None.
        seed: seed of the initial weights (drawn on the CPU, the same on every device).
        device: where the net lives and computes (its inputs are moved there, its
            outputs come back on the inputs' device).

    Attributes:
        fitted: whether :meth:`fit` has run.
        last_report: the report of the last fit (None before the first).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        options: RewardModelOptions | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.options = options if options is not None else RewardModelOptions()
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        in_dim = 2 * obs_dim + action_dim
        init = torch.Generator().manual_seed(seed)
        self.net = GaussianMLPEnsemble(in_dim, 1, self.options.hidden_sizes, 1, "silu", init)
        self.input_normalizer = Normalizer(in_dim)
        self.reward_normalizer = Normalizer(1)
        for module in (self.net, self.input_normalizer, self.reward_normalizer):
            module.to(self.device)
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(self.net.weights), "weight_decay": self.options.weight_decay},
                {
                    "params": [*self.net.biases, self.net.max_logvar, self.net.min_logvar],
                    "weight_decay": 0.0,
                },
            ],
            lr=self.options.learning_rate,
        )
        self.fitted = False
        self.last_report: FitReport | None = None

    # ------------------------------------------------------------------ training
    def _features(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """Normalized ``(N, 2D + A)`` inputs of ``(..., D)``, ``(..., A)``, ``(..., D)``."""
        lead = torch.broadcast_shapes(obs.shape[:-1], action.shape[:-1], next_obs.shape[:-1])
        x = torch.cat(
            [
                obs.expand(*lead, self.obs_dim),
                action.expand(*lead, self.action_dim),
                next_obs.expand(*lead, self.obs_dim),
            ],
            -1,
        )
        x = x.reshape(-1, x.shape[-1]).to(self.device, torch.float32)
        return self.input_normalizer.normalize(x)

    def _nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean Gaussian NLL ``(1,)`` of normalized rewards ``y (1, B, 1)`` at ``x (1, B, in)``."""
        mean, logvar = self.net(x)
        return -Normal(mean, (0.5 * logvar).exp()).log_prob(y).mean((-2, -1))

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit to every transition's reward in ``data``, early-stopped on held-out NLL.

        Args:
            data: the transitions.
            generator: source of randomness for the split and the minibatches.
            progress: called as ``progress(epoch, train_loss, val_loss)`` after each epoch.

        Returns:
            Losses are mean Gaussian NLL per transition of standardized rewards.

        Raises:
            DataError: fewer than 2 transitions.
            ModelError: the loss became non-finite (the last good parameters are restored).
        """
        start = time.perf_counter()
        if len(data) < 2:
            raise DataError(f"need at least 2 transitions to fit, got {len(data)}; collect more")
        batch = data.all()
        inputs = torch.cat([batch.obs, batch.action, batch.next_obs], -1).to(self.device)
        rewards = batch.reward.reshape(-1, 1).to(self.device)
        self.input_normalizer.fit(inputs)
        self.reward_normalizer.fit(rewards)
        x = self.input_normalizer.normalize(inputs).unsqueeze(0)
        y = self.reward_normalizer.normalize(rewards).unsqueeze(0)
        train_idx, val_idx = data.split(self.options.val_fraction, generator)
        val_idx = val_idx.to(self.device)
        bs = min(self.options.batch_size, len(train_idx))

        def batches(epoch: int) -> Iterator[Tensor]:
            order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            return (order[lo : lo + bs] for lo in range(0, len(order) - bs + 1, bs))

        def step_loss(rows: Tensor) -> StepLoss:
            rows = rows.to(self.device)
            loss = self._nll(x[:, rows], y[:, rows]).sum()
            bound = 0.01 * (self.net.max_logvar.sum() - self.net.min_logvar.sum())
            return StepLoss(loss + bound, loss.detach(), len(rows))

        def validate() -> Tensor:
            return self._nll(x[:, val_idx], y[:, val_idx])

        report = train_early_stopped(
            list(self.net.parameters()),
            self.optimizer,
            batches,
            step_loss,
            max_epochs=self.options.max_epochs,
            validate=validate if len(val_idx) > 0 else None,
            patience=self.options.patience,
            progress=progress,
            what="reward model fit",
            fix="Check the rewards for extreme values",
        )
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        self.last_report = report
        return report

    # ---------------------------------------------------------------- prediction
    def predict(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of the reward.

        Args:
            obs: ``(..., D)`` observations before the step.
            action: ``(..., A)``.
            next_obs: ``(..., D)``; the leading dimensions broadcast.

        Returns:
            ``(mean, variance)``, each of the broadcast leading shape ``(...)``, in the
            dtype of ``obs``.

        Raises:
            ModelError: not fitted yet.
        """
        if not self.fitted:
            raise ModelError("the reward model has not been fitted; call fit(buffer) first")
        lead = torch.broadcast_shapes(obs.shape[:-1], action.shape[:-1], next_obs.shape[:-1])
        with torch.no_grad():
            mean, logvar = self.net(self._features(obs, action, next_obs).unsqueeze(0))
            scale = self.reward_normalizer.std
            mean = self.reward_normalizer.denormalize(mean[0])
            var = logvar[0].exp() * scale.square()
        out = (mean.reshape(lead), var.reshape(lead))
        return out[0].to(obs.device, obs.dtype), out[1].to(obs.device, obs.dtype)

    def scores(self, obs: Tensor, action: Tensor, next_obs: Tensor, reward: Tensor) -> dict:
        """How well the model predicts ``reward`` at these transitions (see
        :func:`reward_model_scores`)."""
        mean, var = self.predict(obs, action, next_obs)
        return reward_model_scores(mean.double(), var.double(), reward.double())

    def __call__(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """The mean reward ``(...)``: a task reward function (see :data:`RewardFn`) that
        reads the current parameters, so it follows refits."""
        return self.predict(obs, action, next_obs)[0]

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Weights, normalizers and Adam's state (``torch.load(weights_only=True)``-safe)."""
        return {
            "net": self.net.state_dict(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "reward_normalizer": self.reward_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: the state does not fit this model; it keeps its parameters.
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            self._load(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            self._load(backup)
            raise state_mismatch("reward model", exc) from exc

    def _load(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"expected a dict, got {type(state).__name__}")
        fitted = bool(state["fitted"])
        self.net.load_state_dict(state["net"])
        self.input_normalizer.load_state_dict(state["input_normalizer"])
        self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.fitted = fitted


def reward_model_scores(mean: Tensor, var: Tensor, reward: Tensor) -> dict[str, float]:
    """Scores of a Gaussian reward prediction against observed rewards, ``(N,)`` each.

    Returns:
        ``n``; ``mse`` of the mean; ``reward_variance`` (of the observed rewards, what a
        constant prediction would score); ``r2 = 1 - mse / reward_variance``;
        ``nll``: mean Gaussian negative log-likelihood (nats); ``coverage_90``: the
        share of rewards inside the central 90% predictive interval (0.9 when
        calibrated).

    Raises:
        DataError: fewer than 2 rewards, shapes that differ, a value that is not finite
            or a variance that is not positive.
    """
    if mean.shape != reward.shape or var.shape != reward.shape or reward.numel() < 2:
        raise DataError(
            f"reward scores need equal shapes of at least 2 rewards, got mean "
            f"{tuple(mean.shape)}, variance {tuple(var.shape)}, rewards {tuple(reward.shape)}"
        )
    for name, value in (("mean", mean), ("variance", var), ("rewards", reward)):
        if not bool(torch.isfinite(value).all()):
            raise DataError(f"reward scores: the {name} holds NaN or infinite values")
    if not bool((var > 0).all()):
        raise DataError("reward scores: every predictive variance must be > 0")
    err = reward - mean
    mse = float(err.square().mean())
    spread = float(reward.var(unbiased=False))
    z90 = 1.6448536269514722  # the standard normal's 95% quantile
    return {
        "n": int(reward.numel()),
        "mse": mse,
        "reward_variance": spread,
        "r2": 1.0 - mse / spread if spread > 0 else float("nan"),
        "nll": float(-Normal(mean, var.sqrt()).log_prob(reward).mean()),
        "coverage_90": float((err.abs() <= z90 * var.sqrt()).double().mean()),
    }


class LearnedRewardLearner:
    """The learner of an MPC run with a learned reward: fits the dynamics model, then
    the reward model, on the same data, and checkpoints both.

    Args:
        model: the dynamics model.
        reward: the reward model.
    """

    def __init__(self, model: DynamicsModel, reward: RewardModel) -> None:
        self.model, self.reward = model, reward

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit the dynamics (reporting its progress), then the reward model.

        Returns:
            The dynamics fit's report, its ``wall_seconds`` including the reward fit.

        Raises:
            ModelError: either fit diverged (that model keeps its last good parameters).
        """
        report = self.model.fit(data, generator, progress=progress)
        report.wall_seconds += self.reward.fit(data, generator).wall_seconds
        return report

    def progress_total(self) -> int | None:
        """The dynamics fit's (the reward fit reports no progress)."""
        return self.model.progress_total()

    def state_dict(self) -> dict[str, Any]:
        """``{"dynamics": ..., "reward": ...}``."""
        return {"dynamics": self.model.state_dict(), "reward": self.reward.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: the state is not one of a run with a learned reward, or does
                not fit the models.
        """
        if not isinstance(state, dict) or not {"dynamics", "reward"} <= set(state):
            raise ModelError(
                "the checkpoint holds no learned reward model (it was written by a run with "
                "a reward function); load it with the config it was saved with"
            )
        self.model.load_state_dict(state["dynamics"])
        self.reward.load_state_dict(state["reward"])


def planning_reward(
    model: DynamicsModel,
    task: TaskSpec,
    reward_spec: str = "",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[DynamicsModel | LearnedRewardLearner, RewardFn, str]:
    """The learner and reward function an MPC run plans with, and a line for its log.

    Args:
        model: the run's dynamics model.
        task: the task; its reward is learned when it is a
            :class:`~bayes_mbrl.envs.custom.NoRewardFunction`.
        reward_spec: ``env.reward_fn`` of the config ("" when none).
        seed: seed of the reward model's initial weights.
        device: where a reward model plans (the device of the run's model).

    Returns:
        ``(learner, reward_fn, note)``: the model itself and the task's reward, or a
        :class:`LearnedRewardLearner` and its :class:`RewardModel`.
    """
    if isinstance(task.reward_fn, NoRewardFunction):
        reward = RewardModel(task.obs_dim, task.action_dim, seed=seed, device=device)
        note = (
            "reward: learned (a Gaussian reward net on (obs, action, next_obs), refitted with "
            "the dynamics); env.reward_fn = 'file.py:function' plans with yours instead"
        )
        return LearnedRewardLearner(model, reward), reward, note
    if reward_spec:
        return model, task.reward_fn, f"reward: env.reward_fn = {reward_spec!r}"
    return model, task.reward_fn, f"reward: the built-in reward of {task.env_id}"

"""Soft actor-critic (stable-baselines3's SAC) in the runner, optionally started from a
distilled policy: model-based initialization of model-free learning.

``experiment.mode = "sac"`` drives stable-baselines3's :class:`~stable_baselines3.SAC`
(Haarnoja et al. 2018; its networks, losses, entropy tuning and target updates are
used as they are) episode by episode like every other algorithm:

* the agent samples ``a = tanh(mu(s) + sigma(s) * eps)`` (scaled to the action
  bounds) from SAC's actor with the run's own generator;
* before every episode the learner copies the new transitions of the run's replay
  buffer into SAC's and takes ``updates_per_step`` gradient steps per new transition
  (SB3's ``train``), so the ratio of updates to environment steps is SAC's usual one.

**Initialization from a distilled policy** (``sac.init_policy``: the directory of an
``experiment.mode = "policy_distill"`` run, whose planner was distilled into a
Gaussian policy): at the first fit, SAC's actor is fitted to that policy on the states its run
labelled, by the KL between the two Gaussians in SAC's pre-``tanh`` coordinates
(the policy's mean ``m`` in ``[-1, 1]`` units maps to ``atanh(m)`` and its std by
the derivative of ``atanh``); then, before the actor moves, the critic alone takes
``critic_warmup_steps`` gradient steps on the first episodes' data, so that the
first actor updates follow a critic of the initialized policy rather than a random
one (which would undo the initialization).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from bayes_mbrl.algorithms.base import ALGORITHMS, Algorithm, AlgorithmParts
from bayes_mbrl.algorithms.mpc import _obs_tensor
from bayes_mbrl.algorithms.policy_distill import load_distilled_policy, policy_kl
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, ModelError
from bayes_mbrl.models.base import FitReport, ProgressFn
from bayes_mbrl.options import Options, at_least, greater_than, interval, option, positive_list
from bayes_mbrl.planning.noise import colored_noise

if TYPE_CHECKING:
    from stable_baselines3 import SAC

    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "SACAgent",
    "SACAlgorithm",
    "SACCoreOptions",
    "SACLearner",
    "SACOptions",
    "make_sac",
    "squashed_sample",
]

_SQUASH_LIMIT = 0.995  # |a| of a distilled mean in [-1, 1] units is clipped to this before atanh


@dataclass
class SACCoreOptions(Options):
    """SAC's own settings, shared by every mode that trains a SAC (``sac``, ``mbpo``)."""

    hidden_sizes: list[int] = option([256, 256], positive_list, "actor and critic hidden widths")
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size (actor, critics, alpha)")
    actor_learning_rate: float = option(
        0.0, at_least(0.0), "the actor's Adam step size (0: learning_rate)"
    )
    batch_size: int = option(256, at_least(1, "an integer"), "minibatch size")
    gamma: float = option(0.99, interval(0.0, 1.0), "discount")
    tau: float = option(0.005, interval(0.0, 1.0), "target-network averaging rate")
    updates_per_step: float = option(
        1.0, greater_than(0), "gradient steps per new environment step"
    )
    ent_coef_init: float = option(
        1.0, greater_than(0), "initial entropy coefficient alpha (then tuned automatically)"
    )
    noise_beta: float = option(
        0.0,
        at_least(0.0),
        "exploration noise colored over each episode, spectrum 1/f^beta "
        "(0: white, as SAC; 1: pink, which explores MountainCarContinuous)",
    )


@dataclass
class SACOptions(SACCoreOptions):
    """Options of ``experiment.mode = "sac"`` (the ``[sac]`` section): SAC's settings and
    the initialization from a distilled policy."""

    init_policy: str = option(
        "",
        None,
        "directory of a policy_distill run whose distilled policy initializes the actor "
        "('' : SAC from scratch)",
    )
    init_epochs: int = option(
        200, at_least(1, "an integer"), "passes over the distilled policy's states to fit the actor"
    )
    init_noise: float = option(
        0.05,
        at_least(0.0),
        "the actor is also fitted at 4 perturbed copies of each labelled state, "
        "s + init_noise * std(s) * N(0, 1), where the distilled policy is queried too",
    )
    init_episodes: int = option(
        1,
        at_least(0, "an integer"),
        "episodes the initialized actor acts unchanged before the critic's warm-up",
    )
    critic_warmup_steps: int = option(
        2000,
        at_least(0, "an integer"),
        "gradient steps of the critic alone before the initialized actor is updated",
    )


def make_sac(task: TaskSpec, options: SACCoreOptions, seed: int) -> SAC:
    """stable-baselines3's SAC for ``task``'s spaces, with no logging output."""
    import gymnasium
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (task.obs_dim,), np.float32)
    act_space = gymnasium.spaces.Box(
        task.action_low.numpy(), task.action_high.numpy(), (task.action_dim,), np.float32
    )
    sac = SAC(
        "MlpPolicy",
        None,  # type: ignore[arg-type]
        learning_rate=options.learning_rate,
        buffer_size=1,  # replaced below, sized to the data
        learning_starts=0,
        batch_size=options.batch_size,
        tau=options.tau,
        gamma=options.gamma,
        ent_coef=f"auto_{options.ent_coef_init}",
        target_entropy=-float(task.action_dim),  # SB3's "auto" reads it from an env
        policy_kwargs={"net_arch": list(options.hidden_sizes)},
        seed=seed,
        device="cpu",
        verbose=0,
        _init_setup_model=False,
    )
    # the runner steps the env; SAC only needs the spaces
    sac.observation_space, sac.action_space, sac.n_envs = obs_space, act_space, 1
    sac._setup_model()
    if options.actor_learning_rate:
        # SB3 sets every optimizer to learning_rate before each train(); the actor's
        # own rate is set after it
        _set_lr = sac._update_learning_rate

        def update_learning_rate(optimizers: Any) -> None:
            _set_lr(optimizers)
            for group in sac.actor.optimizer.param_groups:
                group["lr"] = options.actor_learning_rate

        sac._update_learning_rate = update_learning_rate  # type: ignore[method-assign]
    sac.set_logger(Logger(folder=None, output_formats=[]))
    return sac


class SACLearner:
    """Copies new transitions into SAC's buffer and trains SAC on them (see the module).

    Args:
        sac: the SB3 model.
        options: :class:`SACOptions`.
        action_low: the task's lower action bounds.
        action_high: the task's upper action bounds.
        seed: seeds the actions, the minibatches and SAC's own sampling.

    Attributes:
        updates: SAC gradient steps taken (the critic warm-up not counted).
        trained_upto: transitions of the run's buffer that SAC has trained on.
    """

    def __init__(
        self,
        sac: SAC,
        options: SACCoreOptions,
        action_low: Tensor,
        action_high: Tensor,
        seed: int = 0,
    ) -> None:
        self.sac, self.options = sac, options
        self.low, self.high = action_low.float(), action_high.float()
        self.generator = torch.Generator().manual_seed(seed + 53)
        self._torch_rng = _seeded_torch_state(seed + 59)
        self._np_rng: Any = np.random.RandomState(seed + 61).get_state()  # SB3's generator
        self.trained_upto = 0
        self.updates = 0
        self.warmed_up = not isinstance(options, SACOptions) or not options.init_policy
        self.fits = 0
        #: ``(obs, mean, std)`` of a distilled policy the actor is fitted to at the first
        #: fit (set by the algorithm; a restored learner has it in its parameters)
        self.pending_init: tuple[Tensor, Tensor, Tensor] | None = None
        self._copied = 0
        self._capacity = 0

    # ------------------------------------------------------------------ scaling
    def scale(self, action: Tensor) -> Tensor:
        """Env units -> SAC's ``[-1, 1]``."""
        return 2.0 * (action - self.low) / (self.high - self.low) - 1.0

    def unscale(self, action: Tensor) -> Tensor:
        """SAC's ``[-1, 1]`` -> env units."""
        return self.low + 0.5 * (action + 1.0) * (self.high - self.low)

    # -------------------------------------------------------------- initializing
    def init_actor(self, obs: Tensor, mean: Tensor, std: Tensor) -> float:
        """Fit SAC's actor to the Gaussian policy ``N(mean, std^2)`` (env units) on ``obs``.

        Returns the final mean KL per state.

        Raises:
            ModelError: the policy's outputs or the states are not finite.
        """
        for name, t in (("states", obs), ("mean actions", mean), ("action stds", std)):
            if not bool(torch.isfinite(t).all()):
                raise ModelError(
                    f"the distilled policy's {name} are not all finite; SAC's actor cannot "
                    "be fitted to them (retrain the policy_distill run or drop sac.init_policy)"
                )
        half = (self.high - self.low) / 2
        m = self.scale(mean).clamp(-_SQUASH_LIMIT, _SQUASH_LIMIT)
        target_mean = torch.atanh(m)
        target_std = (std / half) / (1.0 - m**2)  # d atanh(m) / dm = 1 / (1 - m^2)
        actor = self.sac.actor
        optimizer = torch.optim.Adam(actor.parameters(), lr=self.options.learning_rate)
        n, bs = len(obs), min(self.options.batch_size, len(obs))
        kl = math.nan
        for _ in range(self._init_options().init_epochs):
            order = torch.randperm(n, generator=self.generator)
            total = 0.0
            for lo in range(0, n - bs + 1, bs):
                rows = order[lo : lo + bs]
                mu, log_std, _ = actor.get_action_dist_params(obs[rows])
                loss = policy_kl(target_mean[rows], target_std[rows], mu, log_std, 1.0).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            kl = total / (n // bs * bs)
        return kl

    def _init_options(self) -> SACOptions:
        """The options of the initialization (only a learner started from a distilled
        policy, which has them, is not warmed up)."""
        assert isinstance(self.options, SACOptions)
        return self.options

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Copy the new transitions, then ``updates_per_step`` SAC steps per new one."""
        start = time.perf_counter()
        if self.pending_init is not None:  # the first fit: initialize the actor
            self.init_actor(*self.pending_init)
            self.pending_init = None
        self.fits += 1
        if not self.warmed_up and self.fits <= self._init_options().init_episodes:
            # the initialized actor first collects episodes of its own, on which
            # (with the random episodes) the critic is warmed up at the next fit
            return FitReport(wall_seconds=time.perf_counter() - start)
        self._sync(data)
        steps = round((len(data) - self.trained_upto) * self.options.updates_per_step)
        self.train(steps)
        self.trained_upto = len(data)
        if progress is not None:
            progress(1, math.nan, math.nan)
        return FitReport(epochs=max(steps, 0), wall_seconds=time.perf_counter() - start)

    def train(self, steps: int) -> None:
        """``steps`` SAC gradient steps on ``sac.replay_buffer`` (after the critic's
        warm-up, when it is due), with the learner's own random states: SB3 samples
        its minibatches from numpy's global generator and its actions from torch's,
        which are saved and restored around the updates so that runs resume exactly."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            np_state = np.random.get_state()  # noqa: NPY002
            np.random.set_state(self._np_rng)  # noqa: NPY002
            try:
                if not self.warmed_up:
                    self._critic_warmup(self._init_options().critic_warmup_steps)
                    self.warmed_up = True
                if steps > 0:
                    self.sac.train(gradient_steps=steps, batch_size=self.options.batch_size)
            finally:
                self._np_rng = np.random.get_state()  # noqa: NPY002
                np.random.set_state(np_state)  # noqa: NPY002
                self._torch_rng = torch.get_rng_state()
        self.updates += max(steps, 0)

    def _sync(self, data: ReplayBuffer) -> None:
        """Make SAC's replay buffer hold exactly the run's transitions, in order."""
        from stable_baselines3.common.buffers import ReplayBuffer as SB3Buffer

        if data.capacity != self._capacity:
            sac = self.sac
            sac.replay_buffer = SB3Buffer(
                data.capacity,
                sac.observation_space,
                sac.action_space,
                device="cpu",
                n_envs=1,
                handle_timeout_termination=False,
            )
            self._capacity, self._copied = data.capacity, 0
        batch = data.all()
        buffer = self.sac.replay_buffer
        assert buffer is not None
        for i in range(self._copied, len(data)):
            buffer.add(
                batch.obs[i : i + 1].numpy(),
                batch.next_obs[i : i + 1].numpy(),
                self.scale(batch.action[i : i + 1]).numpy(),
                batch.reward[i : i + 1].numpy(),
                batch.terminated[i : i + 1].numpy(),
                [{}],
            )
        self._copied = len(data)

    def _critic_warmup(self, steps: int) -> None:
        """``steps`` soft Bellman updates of the critic alone (SAC's critic loss)."""
        from stable_baselines3.common.utils import polyak_update

        sac = self.sac
        buffer = sac.replay_buffer
        assert buffer is not None and sac.log_ent_coef is not None
        critic, target = sac.critic, sac.critic_target
        for _ in range(steps):
            d = buffer.sample(self.options.batch_size)
            with torch.no_grad():
                next_a, next_logp = sac.actor.action_log_prob(d.next_observations)
                q_next = torch.cat(target(d.next_observations, next_a), dim=1).min(1, True).values
                alpha = sac.log_ent_coef.exp()
                y = d.rewards + (1 - d.dones) * sac.gamma * (q_next - alpha * next_logp[:, None])
            loss = 0.5 * sum(F.mse_loss(q, y) for q in critic(d.observations, d.actions))
            critic.optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            critic.optimizer.step()
            polyak_update(critic.parameters(), target.parameters(), sac.tau)

    def progress_total(self) -> int | None:
        return 1

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        sac = self.sac
        assert sac.log_ent_coef is not None  # alpha is tuned (ent_coef = "auto_...")
        state: dict[str, Any] = {
            "policy": sac.policy.state_dict(),
            "actor_optimizer": sac.actor.optimizer.state_dict(),
            "critic_optimizer": sac.critic.optimizer.state_dict(),
            "log_ent_coef": sac.log_ent_coef.detach().clone(),
            "ent_coef_optimizer": sac.ent_coef_optimizer.state_dict(),  # type: ignore[union-attr]
            "n_updates": sac._n_updates,
            "updates": self.updates,
            "trained_upto": self.trained_upto,
            "warmed_up": self.warmed_up,
            "fits": self.fits,
            "generator": self.generator.get_state(),
            "torch_rng": self._torch_rng.clone(),
        }
        _, keys, pos, has_gauss, gauss = self._np_rng
        state["np_rng"] = {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sac = self.sac
        sac.policy.load_state_dict(state["policy"])
        sac.actor.optimizer.load_state_dict(state["actor_optimizer"])
        sac.critic.optimizer.load_state_dict(state["critic_optimizer"])
        with torch.no_grad():
            sac.log_ent_coef.copy_(state["log_ent_coef"])  # type: ignore[union-attr]
        sac.ent_coef_optimizer.load_state_dict(state["ent_coef_optimizer"])  # type: ignore[union-attr]
        sac._n_updates = int(state["n_updates"])
        self.updates = int(state["updates"])
        self.trained_upto = int(state["trained_upto"])
        self.warmed_up = bool(state["warmed_up"])
        self.fits = int(state["fits"])
        self.pending_init = None  # the restored actor was initialized before it was saved
        self.generator.set_state(state["generator"])
        self._torch_rng = state["torch_rng"].clone()
        r = state["np_rng"]
        keys = r["keys"].numpy().astype(np.uint32)
        self._np_rng = ("MT19937", keys, r["pos"], r["has_gauss"], r["gauss"])
        self._copied = 0  # the buffer is rebuilt from the run's transitions at the next fit
        self._capacity = 0


def squashed_sample(
    actor: Any, obs: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """A sample of SAC's squashed Gaussian policy at ``obs (N, obs_dim)``, drawn with
    ``generator``: the action in SAC's ``[-1, 1]`` units ``(N, action_dim)`` and its
    log-density ``(N,)`` (SB3's: the Gaussian's minus ``log(1 - tanh(u)^2 + 1e-6)``)."""
    mu, log_std, _ = actor.get_action_dist_params(obs)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device)
    u = mu + log_std.exp() * eps
    action = torch.tanh(u)
    gaussian = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
    return action, (gaussian - torch.log(1 - action**2 + 1e-6)).sum(-1)


def _seeded_torch_state(seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.get_rng_state()


class SACAgent:
    """Samples from SAC's squashed Gaussian actor (``deterministic``: its mean).

    Args:
        learner: the SAC learner (its actor, bounds and generator).
        obs_dim: observation size.
        deterministic: act with ``tanh(mu)``.
        noise_beta: the actor's noise ``eps`` is colored noise with spectrum
            ``1 / f**noise_beta`` over the episode (0: white, SAC's own; 1: pink).
        episode_length: steps per episode (the length of a colored sequence).
    """

    def __init__(
        self,
        learner: SACLearner,
        obs_dim: int,
        deterministic: bool = False,
        noise_beta: float = 0.0,
        episode_length: int = 1,
    ) -> None:
        self.learner, self.obs_dim, self.deterministic = learner, obs_dim, deterministic
        self.noise_beta, self.episode_length = noise_beta, episode_length
        self.plan_seconds = 0.0
        self._noise: Tensor | None = None
        self._step = 0

    def reset(self) -> None:
        self.plan_seconds = 0.0
        self._step = 0
        if self.noise_beta > 0 and not self.deterministic:
            a = int(self.learner.low.shape[0])
            shape = (a, self.episode_length)
            self._noise = colored_noise(self.noise_beta, shape, self.learner.generator).T

    def _eps(self, shape: torch.Size) -> Tensor:
        if self._noise is None:
            return torch.randn(shape, generator=self.learner.generator)
        eps = self._noise[min(self._step, len(self._noise) - 1)]
        self._step += 1
        return eps

    @torch.no_grad()
    def action_distribution(self, obs: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """The actor's mean action ``tanh(mu)`` in env units and its spread there
        (``sigma`` through the derivative of tanh and the action scaling)."""
        mu, log_std, _ = self.learner.sac.actor.get_action_dist_params(
            _obs_tensor(obs, self.obs_dim)[None]
        )
        squashed = torch.tanh(mu[0])
        half = (self.learner.high - self.learner.low) / 2
        return self.learner.unscale(squashed), log_std[0].exp() * half * (1 - squashed**2)

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        start = time.perf_counter()
        o = _obs_tensor(obs, self.obs_dim)
        mu, log_std, _ = self.learner.sac.actor.get_action_dist_params(o[None])
        u = mu[0]
        if not self.deterministic:
            u = u + log_std[0].exp() * self._eps(u.shape)
        action = self.learner.unscale(torch.tanh(u))
        self.plan_seconds += time.perf_counter() - start
        return torch.minimum(torch.maximum(action, self.learner.low), self.learner.high)


class SACAlgorithm(Algorithm):
    """SAC (stable-baselines3), from scratch or from a distilled policy (see the module)."""

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: SACOptions = config.sac
        seed = config.experiment.seed
        sac = make_sac(task, opts, seed)
        learner = SACLearner(sac, opts, task.action_low, task.action_high, seed)
        title = "SAC"
        if opts.init_policy:
            path = Path(opts.init_policy)
            try:
                policy, labels = load_distilled_policy(path, task)
            except ConfigError as exc:
                raise ConfigError(f"sac.init_policy = {opts.init_policy!r}: {exc}") from None
            obs = labels["obs"]
            g = torch.Generator().manual_seed(seed + 67)
            noise = opts.init_noise * obs.std(0)
            copies = [obs + noise * torch.randn(obs.shape, generator=g) for _ in range(4)]
            obs = torch.cat([obs, *copies])
            with torch.no_grad():
                mean, log_std = policy(obs)
            learner.pending_init = (obs, mean, log_std.exp())
            title = f"SAC from the distilled policy of {path.name}"
        agent = SACAgent(
            learner,
            task.obs_dim,
            noise_beta=opts.noise_beta,
            episode_length=config.env.episode_length,
        )
        return AlgorithmParts(
            agent=agent,
            learner=learner,
            model=None,
            eval_agent=SACAgent(learner, task.obs_dim, deterministic=True),
            title=title,
            fit_description="SAC updates",
            no_model_reason="SAC is model-free",
        )


ALGORITHMS.add(
    "sac",
    SACAlgorithm,
    options=SACOptions,
    summary="stable-baselines3's SAC, from scratch or initialized from a distilled policy",
)

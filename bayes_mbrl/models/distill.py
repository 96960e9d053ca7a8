"""Posterior distillation: one network trained on a teacher's predictive distribution.

An ensemble costs ``E`` forward passes per input wherever the whole posterior is
needed, a BNN or a GP more. :class:`DistilledDynamics` trains a single student on
the *soft labels* of any model of the protocol (the teacher: an ensemble, a BNN, a
GP, a user's Pyro model), not on the observed next states. Per input ``x = (s, a)``
the teacher gives (:meth:`~bayes_mbrl.models.base.DynamicsModel.predict`) the mixture
mean ``m(x)``, its epistemic variance ``v_e(x)`` (the spread of the functions' means)
and its aleatoric variance ``v_a(x)`` (their mean noise variance); the student has
three heads, ``mu(x)``, ``u_a(x)`` and ``u_e(x)``, and total variance ``u = u_a + u_e``.

Loss per input and output dimension, in normalized delta units, at temperature ``T``::

    KL( N(m, T v) || N(mu, T u) )  +  D(v_a, u_a)  +  D(v_e, u_e)
    D(p, q) = (p / q - 1 - log(p / q)) / 2           # the KL of two zero-mean Gaussians

``v = v_a + v_e``. Raising both Gaussians to ``1 / T`` (a Gaussian's analogue of a
softmax at temperature ``T``) scales the mean term by ``1 / T`` and leaves the
variance terms alone: ``T > 1`` weighs matching the teacher's uncertainty over its
mean, ``T < 1`` the other way. With ``labels = "samples"`` the first term is the
negative log-likelihood of ``label_functions`` draws of the teacher's next state (one
per function) under ``N(mu, T u)`` instead.

The inputs are the data's ``(s, a)`` and as many *off-data* inputs (each data input
moved by Gaussian noise of ``off_data_scale`` normalized units), labelled by the
teacher too, so the epistemic head learns where the teacher does not know.

As a posterior over functions, function ``i`` is
``f_i(s, a) = s + mu(x) + sqrt(u_e(x)) * eps_i`` with noise ``N(0, u_a(x))`` and
``eps_i ~ N(0, I)`` drawn once per function: a function keeps its direction of
model error along a whole trajectory (TS-inf), the spread across functions is the
student's epistemic variance and one forward pass serves every particle.
:meth:`DistilledDynamics.predict` returns the three heads directly.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import Normalizer, ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import (
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    Predictive,
    ProgressFn,
)
from bayes_mbrl.models.ensemble import ACTIVATIONS, LOG_2PI, fit_delta_normalizers
from bayes_mbrl.models.training import StepLoss, train_early_stopped
from bayes_mbrl.options import (
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)

__all__ = ["DistilledDynamics", "DistilledFunctionSample", "DistilledOptions", "distill"]

#: variances below this (normalized units) are treated as this in the loss
MIN_VAR = 1e-8


def _registered_teacher(kind: Any) -> str | None:
    if not isinstance(kind, str) or kind not in MODELS:
        return f"a registered model.kind other than 'distilled' ({MODELS.expected(str(kind))})"
    if kind == "distilled":
        return "a model kind other than 'distilled' (a student cannot teach itself)"
    if getattr(MODELS[kind], "needs_history", False):
        return "a model of states, not a latent model (it has no one-step predictive)"
    return None


def _table(value: Any) -> str | None:
    return None if isinstance(value, dict) else "a table of the teacher's options"


@dataclass
class DistilledOptions(Options):
    """Options of :class:`DistilledDynamics` (``model.kind = "distilled"``)."""

    teacher: str = option("ensemble", _registered_teacher, "model.kind of the teacher")
    teacher_options: dict[str, Any] = option(
        {}, _table, "the teacher's options (a TOML table; omitted ones take their defaults)"
    )
    hidden_sizes: list[int] = option([200, 200], positive_list, "the student's hidden widths")
    activation: str = option("silu", one_of(list(ACTIVATIONS)), "hidden-layer activation")
    temperature: float = option(
        1.0, greater_than(0), "T: the mean term of the loss is scaled by 1/T (see the module)"
    )
    labels: str = option(
        "moments",
        one_of(("moments", "samples")),
        "soft labels: the teacher's moments, or draws of its next state",
    )
    label_functions: int = option(
        20,
        at_least(2, "an integer"),
        "teacher functions per labelled input (an ensemble uses all its members)",
    )
    off_data: float = option(
        1.0, at_least(0.0), "off-data inputs per data input, labelled by the teacher"
    )
    off_data_scale: float = option(
        1.0, greater_than(0), "std of the noise that moves data inputs off the data"
    )
    learning_rate: float = option(1e-3, greater_than(0), "Adam step size")
    weight_decay: float = option(1e-5, at_least(0), "L2 penalty on the weights")
    batch_size: int = option(256, at_least(1, "an integer"), "minibatch size")
    max_epochs: int = option(2000, at_least(1, "an integer"), "upper bound on student epochs")
    patience: int = option(
        200, at_least(1, "an integer"), "epochs without a held-out improvement before stopping"
    )
    val_fraction: float = option(
        0.1, interval(0.0, 0.5, hi_open=True), "fraction of the inputs held out"
    )


class _Student(nn.Module):
    """An MLP ``x -> (mean, log u_a, log u_e)`` in normalized units."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        sizes = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], 3 * out_dim)
        self.activation = activation
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = act(layer(x))
        mean, log_a, log_e = self.head(x).split(self.out_dim, dim=-1)
        return mean, log_a.clamp(-20.0, 10.0), log_e.clamp(-20.0, 10.0)


@torch.no_grad()
def _heads(
    student: _Student, input_normalizer: Normalizer, delta_normalizer: Normalizer,
    obs: Tensor, action: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The student's next-state mean and aleatoric and epistemic variances, raw units."""
    mean, log_a, log_e = student(input_normalizer.normalize(torch.cat([obs, action], dim=-1)))
    scale = delta_normalizer.std
    return obs + delta_normalizer.denormalize(mean), log_a.exp() * scale**2, log_e.exp() * scale**2


class DistilledFunctionSample(FunctionSample):
    """``n`` functions of a distilled student: ``f_i(s, a) = s + mu + sqrt(u_e) eps_i``
    with noise ``N(0, u_a)``; one forward pass of the student for all of them.

    Args:
        student: a copy of the trained student (normalized units).
        input_normalizer: a copy of the model's input normalizer.
        delta_normalizer: a copy of the model's delta normalizer.
        eps: ``(n, obs_dim)`` each function's standard-normal direction of model error.
    """

    def __init__(
        self,
        student: _Student,
        input_normalizer: Normalizer,
        delta_normalizer: Normalizer,
        eps: Tensor,
    ) -> None:
        self.student = student
        self.input_normalizer = input_normalizer
        self.delta_normalizer = delta_normalizer
        self.eps = eps
        self.n = int(eps.shape[0])
        self.obs_dim = int(eps.shape[1])

    def heads(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Next-state mean, aleatoric and epistemic variances (raw units) at ``(..., dim)``."""
        return _heads(self.student, self.input_normalizer, self.delta_normalizer, obs, action)

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        if obs.dim() != 3 or obs.shape[0] != self.n or obs.shape[-1] != self.obs_dim:
            raise DataError(
                f"expected obs of shape ({self.n}, B, {self.obs_dim}), got {tuple(obs.shape)}"
            )
        mean, var_a, var_e = self.heads(obs, action)
        loc = mean + var_e.sqrt() * self.eps[:, None, :]
        return Independent(Normal(loc, var_a.sqrt(), validate_args=False), 1)

    def latents(self) -> dict[str, Tensor]:
        """Each function's direction of model error, ``(n, obs_dim)``."""
        return {"eps": self.eps}


@MODELS.register(
    "distilled",
    options=DistilledOptions,
    summary="one network distilled from any model's predictive (soft labels at temperature "
    "T), with aleatoric and epistemic variance heads",
)
class DistilledDynamics(DynamicsModel):
    """A student network distilled from a teacher model (see the module docstring).

    Args:
        obs_dim: observation size.
        action_dim: action size.
        teacher: a :class:`DynamicsModel` of the same sizes (used as it is; :meth:`fit`
            fits it first when ``fit_teacher``), or a registered ``model.kind``.
        teacher_options: options of the teacher kind (when ``teacher`` is a kind).
        fit_teacher: whether :meth:`fit` fits the teacher on the data before distilling
            (True for a teacher built from its kind; pass False to distill a model
            fitted elsewhere).
        seed: seeds the student's and the teacher's initialization.

    The arguments from ``hidden_sizes`` to ``val_fraction`` are the fields of
    :class:`DistilledOptions`.

    Raises:
        OptionError: an option is out of bounds (a temperature <= 0, an unknown teacher).
        DataError: the teacher's sizes differ from ``obs_dim``/``action_dim``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        teacher: DynamicsModel | str = "ensemble",
        teacher_options: Mapping[str, Any] = MappingProxyType({}),
        hidden_sizes: Sequence[int] = (200, 200),
        activation: str = "silu",
        temperature: float = 1.0,
        labels: str = "moments",
        label_functions: int = 20,
        off_data: float = 1.0,
        off_data_scale: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 256,
        max_epochs: int = 2000,
        patience: int = 200,
        val_fraction: float = 0.1,
        fit_teacher: bool | None = None,
        seed: int = 0,
    ) -> None:
        given = isinstance(teacher, DynamicsModel)
        values: dict[str, Any] = {
            "hidden_sizes": list(hidden_sizes),
            "activation": activation,
            "temperature": temperature,
            "labels": labels,
            "label_functions": label_functions,
            "off_data": off_data,
            "off_data_scale": off_data_scale,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "max_epochs": max_epochs,
            "patience": patience,
            "val_fraction": val_fraction,
        }
        if given:  # a teacher object: record its registered kind, if it has one
            self.options: DistilledOptions = DistilledOptions.of(type(self).__name__, **values)
            kinds = [k for k in MODELS.names() if MODELS[k] is type(teacher)]
            self.options.teacher = kinds[0] if kinds else type(teacher).__name__
        else:
            self.options = DistilledOptions.of(
                type(self).__name__,
                teacher=teacher,
                teacher_options=dict(teacher_options),
                **values,
            )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        if isinstance(teacher, DynamicsModel):
            self.teacher = teacher
        else:
            opts_cls = MODELS.options(teacher)
            given_opts = self.options.teacher_options
            names = [f.name for f in dataclasses.fields(opts_cls)] if opts_cls else []
            unknown = sorted(set(given_opts) - set(names))
            if unknown:
                raise ConfigError(
                    f"model.teacher_options has {', '.join(map(repr, unknown))}, not an option "
                    f"of the teacher kind {teacher!r}; its options are {', '.join(names)}"
                )
            opts = opts_cls(**given_opts) if opts_cls else None
            self.teacher = MODELS[teacher].from_options(opts, obs_dim, action_dim, seed=seed)  # type: ignore[arg-type]
        if (self.teacher.obs_dim, self.teacher.action_dim) != (obs_dim, action_dim):
            raise DataError(
                f"the teacher {type(self.teacher).__name__} models observations of size "
                f"{self.teacher.obs_dim} and actions of size {self.teacher.action_dim}; the "
                f"student was asked for {obs_dim} and {action_dim}: distil a teacher of this task"
            )
        self.fit_teacher = (not given) if fit_teacher is None else fit_teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.student = _Student(
                obs_dim + action_dim, obs_dim, self.options.hidden_sizes, self.options.activation
            )
        self.input_normalizer = Normalizer(obs_dim + action_dim)
        self.delta_normalizer = Normalizer(obs_dim)
        self.optimizer = torch.optim.Adam(
            self.student.parameters(),
            lr=self.options.learning_rate,
            weight_decay=self.options.weight_decay,
        )
        self.fitted = False
        self.last_teacher_report: FitReport | None = None

    @classmethod
    def from_options(
        cls, options: Any, obs_dim: int, action_dim: int, seed: int = 0
    ) -> DistilledDynamics:
        return cls(obs_dim, action_dim, **dataclasses.asdict(options), seed=seed)

    # ------------------------------------------------------------------ labels
    @torch.no_grad()
    def _labels(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """The teacher's soft labels at normalized inputs ``x (N, in)``, in normalized
        delta units: ``mean``, ``var_a``, ``var_e`` ``(N, D)`` and (for ``labels =
        "samples"``) ``draws (K, N, D)``."""
        raw = self.input_normalizer.denormalize(x)
        obs, action = raw[:, : self.obs_dim], raw[:, self.obs_dim :]
        if self.teacher.num_functions_hint:  # a finite posterior: every function
            fs = self.teacher.posterior_functions(None, generator)
        else:
            fs = self.teacher.sample_functions(self.options.label_functions, generator)
        out: dict[str, list[Tensor]] = {"mean": [], "var_a": [], "var_e": [], "draws": []}
        dm, ds = self.delta_normalizer.mean, self.delta_normalizer.std
        for lo in range(0, len(x), 4096):
            o, a = obs[lo : lo + 4096], action[lo : lo + 4096]
            d = fs.at(o, a)
            p = Predictive.from_function_moments(d.mean, d.variance)
            out["mean"].append((p.mean - o - dm) / ds)
            out["var_a"].append(p.aleatoric_var / ds**2)
            out["var_e"].append(p.epistemic_var / ds**2)
            if self.options.labels == "samples":
                draws = fs.sample(o.expand(fs.n, -1, -1), a.expand(fs.n, -1, -1), generator)
                out["draws"].append((draws - o - dm) / ds)
        res = {k: torch.cat(v, dim=-2) for k, v in out.items() if v}
        for key, value in res.items():
            if not bool(torch.isfinite(value).all()):
                raise ModelError(
                    f"the teacher {type(self.teacher).__name__} gave non-finite soft labels "
                    f"({key}); check its fit before distilling"
                )
        return res

    def _check_teacher(self) -> None:
        try:
            self.teacher.sample_functions(1)
        except ModelError as exc:
            raise ModelError(
                f"cannot distil from an unfitted teacher ({exc}); fit the teacher first or "
                "build the student with fit_teacher=True"
            ) from exc

    # ------------------------------------------------------------------- loss
    def _loss(self, x: Tensor, lab: dict[str, Tensor]) -> Tensor:
        """Mean loss per input (summed over output dimensions)."""
        t = self.options.temperature
        mu, log_a, log_e = self.student(x)
        u_a, u_e = log_a.exp(), log_e.exp()
        u = u_a + u_e
        v_a, v_e = lab["var_a"].clamp_min(MIN_VAR), lab["var_e"].clamp_min(MIN_VAR)
        if self.options.labels == "samples":
            draws = lab["draws"]
            fit = 0.5 * ((draws - mu) ** 2 / (t * u) + torch.log(t * u) + LOG_2PI).mean(0)
        else:
            v = v_a + v_e
            fit = 0.5 * (v / u + (lab["mean"] - mu) ** 2 / (t * u) - 1.0 + torch.log(u / v))
        split = _variance_divergence(v_a, u_a) + _variance_divergence(v_e, u_e)
        return (fit + split).sum(-1).mean()

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit the teacher (when ``fit_teacher``), label the data's inputs and as many
        off-data inputs with its predictive, and train the student on those labels,
        early-stopped on held-out inputs. Later fits continue from the current student.

        Raises:
            DataError: fewer than 2 transitions, or sizes that do not match.
            ModelError: the teacher is not fitted (and ``fit_teacher`` is False), its
                labels are not finite, or the student's loss diverged.
        """
        start = time.perf_counter()
        if len(data) < 2:
            raise DataError(f"need at least 2 transitions to fit, got {len(data)}; collect more")
        if data.obs_dim != self.obs_dim or data.action_dim != self.action_dim:
            raise DataError(
                f"the student models observations of size {self.obs_dim} and actions of size "
                f"{self.action_dim}; the buffer holds {data.obs_dim} and {data.action_dim}"
            )
        teacher_epochs = 0
        if self.fit_teacher:
            self.last_teacher_report = self.teacher.fit(data, generator, progress)
            teacher_epochs = self.last_teacher_report.epochs
        self._check_teacher()
        x_data, _ = fit_delta_normalizers(data, self.input_normalizer, self.delta_normalizer)
        n_off = round(self.options.off_data * len(x_data))
        if n_off:
            rows = torch.randint(len(x_data), (n_off,), generator=generator)
            noise = torch.randn(n_off, x_data.shape[1], generator=generator)
            x_all = torch.cat([x_data, x_data[rows] + self.options.off_data_scale * noise])
        else:
            x_all = x_data
        labels = self._labels(x_all, generator)
        n = len(x_all)
        perm = torch.randperm(n, generator=generator)
        n_val = int(self.options.val_fraction * n) if n >= 10 else 0
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        bs = min(self.options.batch_size, len(train_idx))

        def pick(idx: Tensor) -> dict[str, Tensor]:
            return {k: (v[:, idx] if k == "draws" else v[idx]) for k, v in labels.items()}

        def batches(epoch: int) -> Iterator[Tensor]:
            order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            return (order[lo : lo + bs] for lo in range(0, len(order) - bs + 1, bs))

        def step_loss(rows: Tensor) -> StepLoss:
            loss = self._loss(x_all[rows], pick(rows))
            return StepLoss(loss, loss.detach(), len(rows))

        def validate() -> Tensor:
            with torch.no_grad():
                return self._loss(x_all[val_idx], pick(val_idx)).reshape(1)

        def student_progress(epoch: int, train: float, val: float) -> None:
            if progress is not None:
                progress(teacher_epochs + epoch, train, val)

        report = train_early_stopped(
            list(self.student.parameters()),
            self.optimizer,
            batches,
            step_loss,
            max_epochs=self.options.max_epochs,
            validate=validate if n_val else None,
            patience=self.options.patience,
            progress=student_progress,
            what="distillation",
            fix="Lower model.learning_rate or check the teacher's predictions",
        )
        self.fitted = True
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int | None:
        teacher = self.teacher.progress_total() if self.fit_teacher else 0
        return None if teacher is None else teacher + self.options.max_epochs

    # -------------------------------------------------------------- functions
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("the distilled model has not been fitted; call fit(buffer) first")

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        """``n`` functions, each with its own direction of model error ``eps_i``."""
        self._require_fitted()
        if n < 1:
            raise DataError(f"number of functions must be >= 1, got {n}")
        eps = torch.randn(n, self.obs_dim, generator=generator)
        return DistilledFunctionSample(
            copy.deepcopy(self.student).eval().requires_grad_(False),
            copy.deepcopy(self.input_normalizer),
            copy.deepcopy(self.delta_normalizer),
            eps,
        )

    @torch.no_grad()
    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        """The three heads in one forward pass (``num_functions`` is not needed)."""
        self._require_fitted()
        self.check_inputs(obs, action)
        mean, var_a, var_e = _heads(
            self.student, self.input_normalizer, self.delta_normalizer, obs.float(), action.float()
        )
        return Predictive(mean=mean, epistemic_var=var_e, aleatoric_var=var_a)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Student, normalizers, optimizer and the teacher's state."""
        return {
            "student": self.student.state_dict(),
            "input_normalizer": self.input_normalizer.state_dict(),
            "delta_normalizer": self.delta_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "teacher": self.teacher.state_dict(),
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: the state does not fit this model (the model is left unchanged).
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            self.student.load_state_dict(state["student"])
            self.input_normalizer.load_state_dict(state["input_normalizer"])
            self.delta_normalizer.load_state_dict(state["delta_normalizer"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.teacher.load_state_dict(state["teacher"])
            fitted = bool(state["fitted"])
        except (KeyError, RuntimeError, ValueError, TypeError, ModelError) as exc:
            self.student.load_state_dict(backup["student"])
            self.input_normalizer.load_state_dict(backup["input_normalizer"])
            self.delta_normalizer.load_state_dict(backup["delta_normalizer"])
            self.optimizer.load_state_dict(backup["optimizer"])
            self.teacher.load_state_dict(backup["teacher"])
            raise ModelError(
                f"saved distilled model does not match this configuration ({exc}); load it "
                "with the config it was saved with (the model was left unchanged)"
            ) from exc
        self.fitted = fitted


def _variance_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``KL(N(0, p) || N(0, q)) = (p / q - 1 - log(p / q)) / 2``, elementwise."""
    r = p / q
    return 0.5 * (r - 1.0 - torch.log(r))


def distill(
    teacher: DynamicsModel, data: ReplayBuffer, seed: int = 0, **options: Any
) -> DistilledDynamics:
    """Distil a fitted ``teacher`` into a student on the inputs of ``data``.

    Args:
        teacher: any fitted model of the protocol.
        data: the transitions whose inputs are labelled (plus off-data inputs).
        seed: seeds the student and the off-data inputs.
        options: :class:`DistilledOptions` (``temperature``, ``hidden_sizes``, ...).

    Raises:
        ModelError: the teacher is not fitted.
        DataError: the data do not match the teacher's sizes.
    """
    student = DistilledDynamics(
        teacher.obs_dim, teacher.action_dim, teacher=teacher, fit_teacher=False, seed=seed,
        **options,
    )  # fmt: skip
    student._check_teacher()
    student.fit(data, torch.Generator().manual_seed(seed))
    return student

"""The run store: everything a run directory holds, apart from the loop that fills it.

A run directory holds:

- ``config.toml``: the resolved configuration;
- ``transitions.f32``: every transition, appended and flushed as it is collected
  (raw float32 rows, see :class:`TransitionLog`), so a killed run loses none;
- ``metrics.csv``: one row per episode (:data:`METRIC_FIELDS`), deterministic given
  config and seed;
- ``timings.csv``: wall-clock seconds per episode (:data:`TIMING_FIELDS`; kept apart:
  they vary);
- ``learning_curve.png``: return per episode (written by a callback);
- ``checkpoints/ckpt_NNNN.pt``: after each episode, written atomically: the learner's
  state, RNG state, counters and the metrics so far, serialized by ``torch.save`` and
  wrapped with its SHA-256 (:func:`save_checkpoint`). Reading (:func:`load_checkpoint`)
  uses ``torch.load(weights_only=True)`` only, so a crafted file cannot run code (it is
  refused with :class:`~bayes_mbrl.errors.UnsafeCheckpointError`), and a truncated or
  corrupted file fails its checksum; :meth:`RunStore.read_checkpoint` then falls back
  to the previous checkpoint with a warning.

:func:`load_run` loads a run's newest fitted dynamics model and its data for analysis.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickletools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_mbrl import __version__
from bayes_mbrl.algorithms.base import build_algorithm
from bayes_mbrl.config import CONFIG_HEADER, Config, dump_config, load_config
from bayes_mbrl.data import TransitionBatch
from bayes_mbrl.envs.custom import build_task
from bayes_mbrl.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from bayes_mbrl.models import DynamicsModel
from bayes_mbrl.models.reward import RewardModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "METRIC_FIELDS",
    "TIMING_FIELDS",
    "LoadedRun",
    "RunStore",
    "TransitionLog",
    "check_run_dir",
    "load_checkpoint",
    "load_run",
    "read_run_config",
    "save_checkpoint",
]

CONFIG_FILE = "config.toml"
"""File whose presence marks a directory as a run directory."""
CHECKPOINT_FORMAT = 2
"""2: a SHA-256-checked payload (:func:`save_checkpoint`); format 1 (plain) is still read."""
_READABLE_FORMATS = (1, 2)
_CHECKPOINT_KEYS = (
    "num_transitions",
    "episodes_done",
    "model",
    "model_fitted_once",
    "rng_torch",
    "metrics",
)
METRIC_FIELDS = (
    "episode",
    "policy",
    "env_steps",
    "return",
    "fit_epochs",
    "train_loss",
    "val_loss",
    "eval_at_steps",
    "eval_return",
    "eval_std",
)
"""Columns of ``metrics.csv``: deterministic given config and seed (byte-identical
across runs and resumes on CPU). ``eval_return`` and ``eval_std`` are the mean and
standard deviation of the evaluation episodes' returns of the policy fitted on the
first ``eval_at_steps`` environment steps, just before the episode (empty where none
ran; see :mod:`bayes_mbrl.evaluation`)."""
TIMING_FIELDS = ("episode", "plan_seconds", "fit_seconds", "episode_seconds", "threads")
"""Columns of ``timings.csv``: wall-clock seconds, which vary from run to run, and the
torch threads the episode ran with (empty for episodes of runs written before it was
recorded)."""


# ------------------------------------------------------------------------ files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain containers) atomically with its SHA-256.

    The file is ``torch.save({"format_version", "sha256", "payload"})`` where
    ``payload`` is ``torch.save(state)`` as bytes: loadable with
    ``torch.load(weights_only=True)`` at both levels.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapper = {
        "format_version": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    out = io.BytesIO()
    torch.save(wrapper, out)
    atomic_write_bytes(Path(path), out.getvalue())


_TORCH_ADVICE = ("weights_only", "weights only", "file an issue", "documentation of torch.load")
"""Phrases of torch's own advice in its load errors: never relayed (its advice, retry with
``weights_only=False``, runs the code of a crafted file)."""


def _torch_reason(exc: BaseException) -> str:
    """The cause in one of torch's load errors, without torch's advice (see _TORCH_ADVICE)."""
    kept: list[str] = []
    for line in str(exc).splitlines():
        for sentence in re.split(r"(?<=\.)\s+", line.strip()):
            if sentence and not any(a in sentence.lower() for a in _TORCH_ADVICE):
                kept.append(sentence)
    reason = kept[0] if kept else "no message"
    return f"{type(exc).__name__}: {reason[:200]}"


def _pickle_imports(raw: bytes) -> list[str]:
    """The globals (``module.name``) a raw pickle imports, found by reading its opcodes
    (nothing is unpickled); [] when ``raw`` is not a pickle that imports any."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle, or a truncated one: whatever was read so far
        pass
    return found


def _unsafe(path: Path, culprit: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} holds pickled Python objects that would run code when loaded "
        f"({culprit[:200]}); bayes_mbrl loads checkpoints with weights_only=True "
        "and refused it. Delete the file unless you trust and know its origin"
    )


def _safe_torch_load(data: bytes | Path, path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a file or bytes, its errors turned into
    ours: :class:`UnsafeCheckpointError` for a pickle that imports a global (a
    ``torch.save`` file or a raw pickle alike), else :class:`CheckpointError`."""
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a raw pickle before refusing it
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(source, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError / EOFError / zip errors
        # the weights-only unpickler names the global a crafted torch.save file imports
        named = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if named:
            raise _unsafe(path, f"it imports {named.group(1)}") from None
        # a raw pickle (not torch.save's zip) is refused before its globals are read
        try:
            raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        except OSError:
            raw = b""
        imports = [] if raw.startswith(b"PK") else _pickle_imports(raw)
        if imports:
            raise _unsafe(path, f"it imports {', '.join(dict.fromkeys(imports))}") from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({_torch_reason(exc)}); it is truncated or "
            "corrupted"
        ) from None


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a format-1 file).

    Raises:
        UnsafeCheckpointError: the file would execute code when unpickled.
        CheckpointError: the file is truncated or corrupted (unreadable, or its
            SHA-256 does not match), or of an unknown format.
    """
    path = Path(path)
    outer = _safe_torch_load(path, path)
    if not isinstance(outer, dict) or outer.get("format_version") not in _READABLE_FORMATS:
        version = outer.get("format_version") if isinstance(outer, dict) else None
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this bayes_mbrl reads "
            f"{list(_READABLE_FORMATS)}"
        )
    if outer["format_version"] == 1:
        return dict(outer)
    payload = outer.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path} fails its SHA-256 check; the file is corrupted")
    state = _safe_torch_load(payload, path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    return state


class TransitionLog:
    """Append-only file of transitions, one float32 row each, flushed per row.

    Row layout: ``obs (obs_dim) | action (action_dim) | reward | next_obs (obs_dim) |
    terminated | truncated | episode``. A partly written last row (a kill during
    the write) is ignored on reading and cut off before appending.

    Args:
        path: the file.
        obs_dim: observation size.
        action_dim: action size.
    """

    def __init__(self, path: Path, obs_dim: int, action_dim: int) -> None:
        self.path, self.obs_dim, self.action_dim = path, obs_dim, action_dim
        self.width = 2 * obs_dim + action_dim + 4
        self._file: io.BufferedWriter | None = None

    def read(self) -> np.ndarray:
        """All complete rows, ``(rows, width)`` float32."""
        if not self.path.exists():
            return np.zeros((0, self.width), dtype=np.float32)
        raw = np.fromfile(self.path, dtype=np.float32)
        rows = raw.size // self.width
        return raw[: rows * self.width].reshape(rows, self.width)

    def open(self, keep_rows: int) -> None:
        """Open for appending after the first ``keep_rows`` complete rows."""
        size = keep_rows * self.width * 4
        mode = "r+b" if self.path.exists() else "wb"
        f = open(self.path, mode)  # kept open for the run
        f.truncate(size)
        f.seek(size)
        self._file = f  # type: ignore[assignment]

    def append(self, row: np.ndarray) -> None:
        """Write and flush one row."""
        assert self._file is not None, "TransitionLog.open() first"
        self._file.write(row.astype(np.float32).tobytes())
        self._file.flush()

    def close(self) -> None:
        """Close the file (fsync first)."""
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def split_row(self, row: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(obs, action, reward, next_obs, terminated, truncated, episode)`` of a row or rows."""
        d, a = self.obs_dim, self.action_dim
        return (
            row[..., :d],
            row[..., d : d + a],
            row[..., d + a],
            row[..., d + a + 1 : 2 * d + a + 1],
            row[..., 2 * d + a + 1] > 0.5,
            row[..., 2 * d + a + 2] > 0.5,
            row[..., 2 * d + a + 3],
        )


# ------------------------------------------------------------------------ the store
class RunStore:
    """Reads and writes one run directory (see the module docstring).

    Args:
        run_dir: the directory.
        obs_dim: observation size (the transition log's row layout).
        action_dim: action size.
        checkpoint_keep: checkpoints kept (older ones are deleted).
    """

    def __init__(
        self, run_dir: Path, obs_dim: int, action_dim: int, checkpoint_keep: int = 2
    ) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_keep = checkpoint_keep
        self.log = TransitionLog(self.run_dir / "transitions.f32", obs_dim, action_dim)

    @property
    def checkpoint_dir(self) -> Path:
        """``run_dir/checkpoints``."""
        return self.run_dir / "checkpoints"

    def checkpoint_path(self, episodes_done: int) -> Path:
        """``checkpoints/ckpt_NNNN.pt`` after ``episodes_done`` episodes."""
        return self.checkpoint_dir / f"ckpt_{episodes_done:04d}.pt"

    def create(self, config: Config) -> None:
        """Create the directory, write the config and open the transition log (new runs).

        Raises:
            CheckpointError: the directory already holds a run.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / CONFIG_FILE).exists():
            raise CheckpointError(
                f"{self.run_dir} already contains a run; resume it with "
                f"'bayes-mbrl resume {self.run_dir}' or choose another directory"
            )
        self.checkpoint_dir.mkdir(exist_ok=True)
        dump_config(config, self.run_dir / CONFIG_FILE)
        self.log.open(keep_rows=0)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``run_dir/name`` atomically (plots and other outputs of callbacks)."""
        atomic_write_bytes(self.run_dir / name, data)

    def write_metrics(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write ``metrics.csv`` and ``timings.csv`` from the episode rows."""
        for name, fields in (("metrics.csv", METRIC_FIELDS), ("timings.csv", TIMING_FIELDS)):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row.get(k, "")) for k in fields})
            atomic_write_bytes(self.run_dir / name, buf.getvalue().encode())

    def write_checkpoint(self, episodes_done: int, state: dict[str, Any]) -> None:
        """Write the checkpoint after ``episodes_done`` episodes (``state`` holds the
        keys in ``_CHECKPOINT_KEYS``; versions are added) and delete old ones."""
        full = {
            "format_version": CHECKPOINT_FORMAT,
            "bayes_mbrl_version": __version__,
            "torch_version": str(torch.__version__),
            **state,
        }
        save_checkpoint(self.checkpoint_path(episodes_done), full)
        for old in sorted(self.checkpoint_dir.glob("ckpt_*.pt"))[: -self.checkpoint_keep]:
            old.unlink(missing_ok=True)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's contents (None when there is none).

        A truncated or corrupted checkpoint is skipped with a warning and the previous
        one is used.

        Raises:
            UnsafeCheckpointError: a checkpoint would run code when unpickled.
            CheckpointError: a checkpoint lacks required keys.
        """
        for path in sorted(self.checkpoint_dir.glob("ckpt_*.pt"), reverse=True):
            try:
                state = load_checkpoint(path)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as exc:
                warnings.warn(f"{exc}; using the previous checkpoint", RuntimeWarning, stacklevel=2)
                continue
            missing = [k for k in _CHECKPOINT_KEYS if k not in state]
            if missing:
                raise CheckpointError(
                    f"{path} is missing {missing}; it was not written by bayes_mbrl or is "
                    "damaged. Remove it to resume from the previous checkpoint"
                )
            return state
        return None


def check_run_dir(run_dir: Path | str) -> None:
    """Check that ``run_dir`` is a directory written by bayes_mbrl.

    A run directory holds a ``config.toml`` that bayes_mbrl wrote: it begins with
    :data:`~bayes_mbrl.config.CONFIG_HEADER`, or (a config edited by hand) has the
    run's ``checkpoints/`` or ``transitions.f32`` beside it. Both are written when
    the run starts, so a run killed before its first checkpoint passes.

    Raises:
        CheckpointError: the directory does not exist, has no ``config.toml``, or its
            ``config.toml`` is some other program's file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{run_dir} is not a run directory (it has no {CONFIG_FILE}); "
            "start a new run with 'bayes-mbrl run'"
        )
    try:
        with config_path.open("r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc.strerror or exc}") from exc
    has_run_files = (run_dir / "checkpoints").is_dir() or (run_dir / "transitions.f32").is_file()
    if first != CONFIG_HEADER and not has_run_files:
        raise CheckpointError(
            f"{run_dir} is not a bayes_mbrl run directory: its {CONFIG_FILE} was not written "
            f"by bayes_mbrl (it does not begin with {CONFIG_HEADER!r}, and there is no "
            "checkpoints/ or transitions.f32 beside it); start a new run with 'bayes-mbrl run'"
        )


def read_run_config(run_dir: Path | str) -> Config:
    """The configuration of a run directory (checked by :func:`check_run_dir` first).

    Raises:
        CheckpointError: ``run_dir`` is not a bayes_mbrl run directory.
        ConfigError: its ``config.toml`` is not a valid configuration.
    """
    check_run_dir(run_dir)
    return load_config(Path(run_dir) / CONFIG_FILE)


def read_run_config_of(run_dir: Path | str, modes: Sequence[str], role: str) -> Config:
    """The configuration of ``run_dir``, which is used as ``role`` (e.g. "a teacher")
    and must be a run of one of ``modes``.

    Raises:
        ConfigError: ``run_dir`` is not a run directory, or a run of another mode.
    """
    try:
        config = read_run_config(run_dir)
    except CheckpointError as exc:
        raise ConfigError(f"{role} {run_dir}: {exc}") from None
    mode = config.experiment.mode
    if mode not in modes:
        raise ConfigError(
            f"{role} {run_dir} is a run of experiment.mode = {mode!r}; {role} must be a run "
            f"of experiment.mode {' or '.join(repr(m) for m in modes)}"
        )
    return config


@dataclass
class LoadedRun:
    """A run's fitted model and its data, for analysis (``bayes-mbrl analyze``).

    Attributes:
        config: the run's configuration.
        model: the model of the newest readable checkpoint.
        train: transitions of every episode before the last one.
        held_out: transitions of the last finished episode; the checkpointed
            model was fitted before it was collected, so they are unseen data.
        episodes_done: episodes finished at that checkpoint.
        reward_model: the reward model the run learned and planned with (a task whose
            config names no ``env.reward_fn``), None when the run used the task's own.
    """

    config: Config
    model: DynamicsModel
    train: TransitionBatch
    held_out: TransitionBatch
    episodes_done: int
    reward_model: RewardModel | None = None


def load_run(run_dir: Path | str) -> LoadedRun:
    """Load a run directory's newest fitted model and split its transitions for analysis.

    Args:
        run_dir: a directory written by :func:`run_experiment`.

    Raises:
        CheckpointError: not a run directory, no readable checkpoint, or no model
            fitted yet (only random episodes so far).
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    config.experiment.device = "cpu"  # analysis runs on the CPU, wherever the run ran
    task = build_task(config.env, check=False)
    parts = build_algorithm(config, task, torch.Generator().manual_seed(config.experiment.seed))
    if parts.model is None:
        raise CheckpointError(
            f"{run_dir} is a run of mode {config.experiment.mode!r}, which has no dynamics "
            f"model of the observations to analyze ({parts.no_model_reason or 'none given'}); "
            "analyze runs of the MPC modes"
        )
    store = RunStore(run_dir, task.obs_dim, task.action_dim)
    state = store.read_checkpoint()
    if state is None:
        raise CheckpointError(
            f"{run_dir} has no readable checkpoint yet; let the run finish an episode first"
        )
    if not state["model_fitted_once"]:
        raise CheckpointError(
            f"{run_dir}: no model has been fitted yet (only random episodes so far); "
            "analyze the run after its first planned episode"
        )
    parts.learner.load_state_dict(state["model"])
    model = parts.model
    rows = store.log.read()[: int(state["num_transitions"])]
    o, a, r, no, te, tr, ep = store.log.split_row(rows)
    last = ep == ep.max()

    def batch(mask: np.ndarray) -> TransitionBatch:
        return TransitionBatch(
            torch.from_numpy(o[mask].copy()),
            torch.from_numpy(a[mask].copy()),
            torch.from_numpy(r[mask].copy()),
            torch.from_numpy(no[mask].copy()),
            torch.from_numpy(te[mask].copy()),
            torch.from_numpy(tr[mask].copy()),
        )

    reward = getattr(parts.learner, "reward", None)
    reward_model = reward if isinstance(reward, RewardModel) else None
    return LoadedRun(config, model, batch(~last), batch(last), state["episodes_done"], reward_model)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

"""Command line interface: ``bayes-mbrl run | resume | analyze | presets | components``.

Examples::

    bayes-mbrl presets
    bayes-mbrl components                           # model kinds, planners, modes, ...
    bayes-mbrl run                                  # the default preset
    bayes-mbrl run mountaincar-ensemble-mpc --seed 3 --set planner.horizon=40
    bayes-mbrl run my_experiment.toml --out runs/try1 --no-progress
    bayes-mbrl resume runs/try1
    bayes-mbrl analyze runs/try1                    # uncertainty report of the run

Errors a user can cause (:class:`~bayes_mbrl.errors.BayesMBRLError`, and operating
system errors such as a full disk or a denied permission) are printed as one line
``bayes-mbrl: error: ...`` and give exit status 2, as do usage errors. Ctrl-C gives
exit status 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bayes_mbrl.config import (
    DEFAULT_PRESET,
    list_presets,
    load_config,
    source_name,
)
from bayes_mbrl.errors import BayesMBRLError, CheckpointError, ConfigError

__all__ = ["main"]

PROG = "bayes-mbrl"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
CONFIG_FILE = "config.toml"
"""File whose presence marks a directory as a run directory."""


def _build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Bayesian model-based reinforcement learning experiments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="start a new experiment",
        description="Start a new experiment from a preset or a TOML config file. "
        f"The model kinds, modes, planners, propagations and objectives a config may name, "
        f"with their options, are listed by '{PROG} components'.",
    )
    run.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG_OR_PRESET",
        help=f"preset name (see '{PROG} presets') or path to a TOML file "
        f"(default: {DEFAULT_PRESET})",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set planner.horizon=20 (repeatable; "
        "VALUE is a TOML value, bare words are strings)",
    )
    run.add_argument("--seed", type=int, default=None, help="override experiment.seed")
    run.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="run directory (default: runs/<preset-or-file>-seed<N>-<timestamp>)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted experiment",
        description="Continue an experiment from the last checkpoint in its run directory.",
    )
    resume.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    resume.add_argument("--no-progress", action="store_true", help="hide progress bars")
    resume.set_defaults(func=_cmd_resume)

    analyze = sub.add_parser(
        "analyze",
        help="write the uncertainty report of a run",
        description="Load a run's newest fitted model and its transitions and write the "
        "uncertainty report into RUN_DIR/analysis: predictive bands (epistemic and aleatoric "
        "apart), calibration curve, posterior plot, summary.csv and the ArviZ InferenceData "
        "(netCDF). The last episode's transitions, collected after the model's last fit, "
        "are the held-out data.",
    )
    analyze.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    analyze.add_argument(
        "--num-draws",
        type=int,
        default=None,
        metavar="N",
        help="posterior draws for the analysis (default: the model's own choice)",
    )
    analyze.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="default: RUN_DIR/analysis"
    )
    analyze.set_defaults(func=_cmd_analyze)

    presets = sub.add_parser(
        "presets", help="list the embedded presets", description="List the embedded presets."
    )
    presets.set_defaults(func=_cmd_presets)

    components = sub.add_parser(
        "components",
        help="list the registered model kinds, planners, propagations, objectives and modes",
        description="List every registered component with its config key and, for model "
        "kinds and modes, its options (defaults and help). Components of your own modules "
        "appear when the modules are named with --plugin (experiment.plugins in a config).",
    )
    components.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of yours to import first: path/to/file.py or package.module",
    )
    components.set_defaults(func=_cmd_components)
    return parser


def _default_run_dir(name: str, seed: int) -> Path:
    """Return ``runs/<name>-seed<seed>-<YYYYmmdd-HHMMSS>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-seed{seed}-{stamp}"


def _interrupted(run_dir: Path) -> int:
    """Tell the user how to continue after Ctrl-C; return the exit status."""
    if (run_dir / CONFIG_FILE).is_file():
        print(
            f"\n{PROG}: interrupted; continue the run with: {PROG} resume {run_dir}",
            file=sys.stderr,
        )
    else:
        print(f"\n{PROG}: interrupted before the run was saved", file=sys.stderr)
    return EXIT_INTERRUPTED


def _report(result_dir: Path, returns: Sequence[float]) -> None:
    """Print a short summary of a finished run."""
    if returns:
        shown = ", ".join(f"{r:.1f}" for r in returns)
        print(f"episode returns: {shown}")
        print(f"best return: {max(returns):.1f}, last return: {returns[-1]:.1f}")
    print(f"results written to {result_dir}")


def _run_and_report(run_dir: Path, run: Callable[[], Any]) -> int:
    """Run (or resume) a run, print its summary; Ctrl-C says how to resume."""
    try:
        result = run()
    except KeyboardInterrupt:
        return _interrupted(run_dir)
    _report(result.run_dir, result.returns)
    return 0


def _check_out_dir(out: Path) -> None:
    """Raise ConfigError unless ``out`` can be a directory: it and each existing parent
    are directories (nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; pick another --out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"--out {out}: {parent} is a file, not a directory; pick another --out"
                )
            break


def _cmd_run(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl run``: build the config, pick the run directory, run."""
    config = load_config(args.config, args.overrides, seed=args.seed)
    if args.no_progress:
        config = dataclasses.replace(
            config, experiment=dataclasses.replace(config.experiment, progress=False)
        )
    run_dir: Path = args.out or _default_run_dir(source_name(args.config), config.experiment.seed)
    _check_out_dir(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"{run_dir} already contains a run; continue it with "
            f"'{PROG} resume {run_dir}' or pick another --out"
        )

    from bayes_mbrl.experiment import run_experiment

    print(f"run directory: {run_dir}")
    return _run_and_report(run_dir, lambda: run_experiment(config, run_dir))


def _cmd_resume(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl resume``: check the run directory, continue the run."""
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} is not a run directory (it has no {CONFIG_FILE}); "
            f"start a new run with '{PROG} run'"
        )

    from bayes_mbrl.experiment import resume_experiment

    progress = False if args.no_progress else None
    return _run_and_report(run_dir, lambda: resume_experiment(run_dir, progress=progress))


def _cmd_analyze(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl analyze``: load the run's model and data, write the report."""
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if args.num_draws is not None and args.num_draws < 2:
        raise ConfigError(f"--num-draws must be at least 2, got {args.num_draws}")

    import torch

    from bayes_mbrl.experiment import load_run
    from bayes_mbrl.uncertainty import uncertainty_report

    out: Path = args.out or run_dir / "analysis"
    _check_out_dir(out)
    run = load_run(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(run.config.experiment.seed)
    written = uncertainty_report(
        run.model, run.train, run.held_out, out, generator=generator, num_draws=args.num_draws
    )
    print(
        f"model: {run.config.model.kind} after {run.episodes_done} episodes; "
        f"{len(run.train)} training and {len(run.held_out)} held-out transitions"
    )
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl presets``: print each preset with its description."""
    presets = list_presets()
    width = max((len(name) for name in presets), default=0)
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {description}{mark}")
    return 0


def _cmd_components(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl components``: print every registry with its entries."""
    from bayes_mbrl.registry import import_plugins

    import_plugins(args.plugins, "--plugin")
    print(components_help(), end="")
    return 0


def components_help() -> str:
    """Every registry's entries as text: names, summaries and, for model kinds and
    modes, their options with defaults and help."""
    import dataclasses

    from bayes_mbrl.algorithms import ALGORITHMS
    from bayes_mbrl.models import MODELS
    from bayes_mbrl.options import option_docs
    from bayes_mbrl.planning import OBJECTIVES, PLANNERS, PROPAGATIONS

    out: list[str] = []
    for registry in (MODELS, ALGORITHMS, PLANNERS, PROPAGATIONS, OBJECTIVES):
        out.append(f"{registry.key} ({registry.what}s):")
        for entry in registry.entries():
            out.append(f"  {entry.name}: {entry.summary}")
            if entry.options is not None and dataclasses.fields(entry.options):
                section = "model" if registry is MODELS else entry.name
                docs = option_docs(entry.options)
                for f in dataclasses.fields(entry.options):
                    value: Any = f.default
                    if value is dataclasses.MISSING and callable(f.default_factory):
                        value = f.default_factory()
                    doc = docs.get(f.name, "")
                    out.append(
                        f"      {section}.{f.name} = {value!r}" + (f": {doc}" if doc else "")
                    )
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayes-mbrl`` console script.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 on a usage or user error, 130 when
        interrupted.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        status: int = args.func(args)
    except BayesMBRLError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # permission denied, disk full, ...: the user's to fix, no traceback
        where = f" {exc.filename!r}" if exc.filename else ""
        print(
            f"{PROG}: error: cannot read or write{where}: {exc.strerror or exc}; check the "
            "path, its permissions and the free disk space",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    raise SystemExit(main())

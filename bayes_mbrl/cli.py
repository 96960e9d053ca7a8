"""Command line interface:
``bayes-mbrl run | resume | analyze | presets | config | components | sweep | compare``.

Examples::

    bayes-mbrl presets
    bayes-mbrl config                               # every config key: type, default, bounds
    bayes-mbrl config pendulum-gp-mpc --toml        # a preset's resolved TOML
    bayes-mbrl components                           # model kinds, planners, modes, ...
    bayes-mbrl run                                  # the default preset
    bayes-mbrl run mountaincar-ensemble-mpc --seed 3 --set planner.horizon=40
    bayes-mbrl run my_experiment.toml --out runs/try1 --no-progress
    bayes-mbrl resume runs/try1
    bayes-mbrl resume runs/try1 --episodes 40          # a finished run, 40 episodes in all
    bayes-mbrl analyze runs/try1                    # uncertainty report of the run
    bayes-mbrl sweep experiments/sweep_pendulum.toml --jobs 2   # configurations x seeds
    bayes-mbrl compare runs/sweep_pendulum --threshold -200    # curves, IQM, P(improvement)

Errors a user can cause (:class:`~bayes_mbrl.errors.BayesMBRLError`, and operating
system errors such as a full disk or a denied permission) are printed as one line
``bayes-mbrl: error: ...`` and give exit status 2, as do usage errors. Ctrl-C gives
exit status 130 and says how to resume. Warnings of bayes_mbrl (a damaged checkpoint
skipped on resume) print as one line ``bayes-mbrl: warning: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bayes_mbrl.config import (
    DEFAULT_PRESET,
    KeyReference,
    config_reference,
    config_text,
    list_presets,
    load_config,
    source_name,
)
from bayes_mbrl.errors import BayesMBRLError, ConfigError

__all__ = ["format_reference", "main"]

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
    resume.add_argument(
        "--episodes",
        type=int,
        metavar="N",
        help="extend the run to N episodes in all (at least its saved total)",
    )
    resume.add_argument(
        "--device",
        metavar="DEVICE",
        help="go on on this experiment.device (e.g. cpu for a run started on a GPU)",
    )
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
        "presets",
        help="list the embedded presets",
        description=f"List the embedded presets; '--show NAME' prints one's resolved TOML "
        f"(the same as '{PROG} config NAME --toml').",
    )
    presets.add_argument(
        "--show", default=None, metavar="NAME", help="print the resolved TOML of preset NAME"
    )
    presets.set_defaults(func=_cmd_presets)

    config = sub.add_parser(
        "config",
        help="the config reference: every key with its type, default, bounds and meaning",
        description="Print every key of a configuration, section by section, with its type, "
        "value, default, bounds and meaning, read from the options of the config's sections: "
        "[model] shows the options of the config's model.kind (or of --kind), and each mode "
        "that has options has its own section. With --toml, print the resolved configuration "
        "as TOML instead, as 'run' writes it to RUN_DIR/config.toml.",
    )
    config.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG_OR_PRESET",
        help=f"preset name or path to a TOML file (default: {DEFAULT_PRESET})",
    )
    config.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, as for 'run' (repeatable)",
    )
    config.add_argument(
        "--kind",
        default=None,
        metavar="KIND",
        help="show the [model] options of this model kind (the same as --set model.kind=KIND)",
    )
    config.add_argument(
        "--toml", action="store_true", help="print the resolved configuration as TOML"
    )
    _add_plugin_option(config)
    config.set_defaults(func=_cmd_config)

    tasks = sub.add_parser(
        "distill-tasks",
        help="distil several tasks' teacher runs into one multi-task policy",
        description="Distil finished runs (one per task: policy_distill, sac, pilco or mpc "
        "runs) into one policy with a task input, by DAgger and the weighted "
        "log-probability objective, and evaluate it against each teacher. Writes "
        "student.pt, report.json and returns.png into --out.",
    )
    tasks.add_argument("teachers", nargs="+", type=Path, metavar="TEACHER_RUN")
    tasks.add_argument("--out", type=Path, required=True, metavar="DIR")
    tasks.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the distillation, e.g. --set rounds=10 (repeatable; "
        "VALUE is a TOML value)",
    )
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--threads", type=int, default=1, help="torch threads")
    tasks.set_defaults(func=_cmd_distill_tasks)

    components = sub.add_parser(
        "components",
        help="list the registered model kinds, planners, propagations, objectives and modes",
        description="List every registered component with its config key and, for model "
        "kinds and modes, its options (defaults and help). Components of your own modules "
        "appear when the modules are named with --plugin (experiment.plugins in a config).",
    )
    _add_plugin_option(components)
    components.set_defaults(func=_cmd_components)
    _add_sweep_commands(sub)
    return parser


def _add_plugin_option(parser: argparse.ArgumentParser) -> None:
    """``--plugin MODULE`` (repeatable): the user's registering modules to import first."""
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of yours to import first: path/to/file.py or package.module",
    )


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

    return _run_and_report(
        run_dir, lambda: run_experiment(config, run_dir, callbacks=[_announce_run_dir()])
    )


def _announce_run_dir() -> Any:
    """A callback printing ``run directory: DIR`` once the run has created it (a run
    that fails before, e.g. on a bad env id, prints nothing of it), then the
    algorithm's notes (:attr:`~bayes_mbrl.algorithms.base.AlgorithmParts.notes`)."""
    from bayes_mbrl.callbacks import Callback

    class AnnounceRunDir(Callback):
        def _on_run_start(self, experiment: Any) -> None:
            print(f"run directory: {experiment.run_dir}", flush=True)
            for note in experiment.parts.notes:
                print(note, flush=True)

    return AnnounceRunDir()


def _cmd_resume(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl resume``: check the run directory, continue the run."""
    run_dir: Path = args.run_dir
    from bayes_mbrl.runs import check_run_dir

    check_run_dir(run_dir)

    from bayes_mbrl.experiment import resume_experiment

    progress = False if args.no_progress else None
    return _run_and_report(
        run_dir,
        lambda: resume_experiment(
            run_dir,
            progress=progress,
            callbacks=[_announce_run_dir()],
            episodes=args.episodes,
            device=args.device,
        ),
    )


def _cmd_analyze(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl analyze``: load the run's model and data, write the report."""
    run_dir: Path = args.run_dir
    from bayes_mbrl.runs import check_run_dir

    check_run_dir(run_dir)
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
    if run.reward_model is not None:  # the run learned its reward: score it the same way
        h = run.held_out
        scores = run.reward_model.scores(h.obs, h.action, h.next_obs, h.reward)
        written["reward_model"] = out / "reward_model.json"
        written["reward_model"].write_text(json.dumps(scores, indent=1) + "\n")
        print(
            f"learned reward on the held-out episode: MSE {scores['mse']:.4g} against the "
            f"rewards' variance {scores['reward_variance']:.4g} (R^2 {scores['r2']:.3f}), "
            f"90% interval coverage {scores['coverage_90']:.3f}"
        )
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl presets``: print each preset with its description, or with
    ``--show NAME`` the resolved TOML of one."""
    presets = list_presets()
    if args.show is not None:
        if args.show not in presets:
            load_config(args.show)  # its error names the close matches
            raise ConfigError(
                f"{args.show!r} is not an embedded preset; presets are {', '.join(presets)} "
                f"(a file is shown by '{PROG} config FILE --toml')"
            )
        print(config_text(load_config(args.show)), end="")
        return 0
    width = max((len(name) for name in presets), default=0)
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {description}{mark}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl config``: print the config reference, or the resolved TOML."""
    from bayes_mbrl.registry import import_plugins

    import_plugins(args.plugins, "--plugin")
    overrides = list(args.overrides)
    if args.kind is not None:
        overrides.append(f"model.kind={args.kind}")
    config = load_config(args.config, overrides)
    if args.toml:
        print(config_text(config), end="")
    else:
        print(format_reference(config_reference(config), source_name(args.config)), end="")
    return 0


def _toml_value(value: Any) -> str:
    """``value`` as written in TOML (and in ``--set``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def format_reference(rows: Sequence[KeyReference], source: str = DEFAULT_PRESET) -> str:
    """The config reference as text: for each section its meaning, then each key as
    ``key = value  (type; bounds; default D)`` and its meaning on the next line (the
    default is shown where the value differs from it)."""
    out = [
        f"# configuration keys of {source}: key = value  (type; accepted values; default)",
        f"# change one with --set KEY=VALUE; see '{PROG} config --help'",
    ]
    section = None
    for r in rows:
        name = r.key.split(".", 1)[0]
        if name != section:
            section = name
            out += ["", f"[{name}]  {r.section_doc}"]
        details = [r.type] + ([r.bounds] if r.bounds else [])
        if r.value != r.default:
            details.append(f"default {_toml_value(r.default)}")
        out.append(f"  {r.key} = {_toml_value(r.value)}  ({'; '.join(details)})")
        if r.doc:
            out.append(f"      {r.doc}")
    return "\n".join(out) + "\n"


def _cmd_distill_tasks(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl distill-tasks``: load the teachers, distil, write the report."""
    import torch

    from bayes_mbrl.algorithms.multitask_distill import (
        MultiTaskDistillOptions,
        distill_tasks,
        load_teacher,
        write_report,
    )
    from bayes_mbrl.config import _parse_override

    values = {}
    for text in args.overrides:
        _, key, value = _parse_override(f"distill.{text}")
        values[key] = value
    options = MultiTaskDistillOptions.of("distill-tasks --set", **values)
    _check_out_dir(args.out)
    torch.set_num_threads(args.threads)
    teachers = [load_teacher(path, args.threads) for path in args.teachers]
    for t in teachers:
        print(f"teacher: {t.run_dir} ({t.mode} on {t.task.env_id})", flush=True)
    student, report = distill_tasks(teachers, options, args.seed, log=print)
    write_report(args.out, student, report, teachers, options, args.seed)
    for env_id, e in report.get("evaluation", {}).items():
        print(
            f"{env_id}: student {e['student_mean']:.1f}, teacher {e['teacher_mean']:.1f} "
            f"(within 10%: {e['within_10_percent']})"
        )
    print(f"results written to {args.out}")
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


def _add_sweep_commands(sub: Any) -> None:
    """The ``sweep`` and ``compare`` subcommands."""
    from bayes_mbrl.sweeps.runner import BACKENDS

    sweep = sub.add_parser(
        "sweep",
        help="run configurations x seeds from a sweep file, locally or on Ray",
        description="Run every trial (configuration x seed) of a sweep TOML into its own "
        "run directory OUT/<label>-s<seed>, on a local process pool or as Ray tasks. The "
        "whole sweep is validated before any trial starts; a failed trial is retried "
        "(resuming its run directory) and reported in OUT/sweep.json and OUT/sweep.csv; "
        "running the same command again skips finished trials and resumes the others. "
        "Exit status 1 when a trial failed after its retries.",
    )
    sweep.add_argument("sweep_file", type=Path, metavar="SWEEP.toml", help="the sweep file")
    sweep.add_argument("--backend", choices=BACKENDS, default="local", help="default: local")
    sweep.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (ray backend; default: start a local Ray)",
    )
    sweep.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="trials at once (default: the sweep's jobs; 0: cores / threads locally, "
        "no limit on Ray)",
    )
    sweep.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="default: the sweep's out"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="validate and list the trials, run nothing"
    )
    sweep.set_defaults(func=_cmd_sweep)

    compare = sub.add_parser(
        "compare",
        help="compare configurations across seeds: curves, IQM, P(improvement), thresholds",
        description="Group runs by configuration (a sweep directory's finished trials by "
        "their label) and write into --out: learning curves per episode and per env step "
        "with bootstrap bands over seeds, the interquartile mean of the runs' scores with a "
        "stratified bootstrap interval, the probability of improvement of every pair of "
        "configurations, and with --threshold the steps-to-threshold tables (PNG and CSV).",
    )
    compare.add_argument(
        "paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR", help="runs or sweep dirs"
    )
    compare.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="default: SWEEP_DIR/compare for one sweep directory (required otherwise)",
    )
    compare.add_argument(
        "--threshold",
        dest="thresholds",
        type=float,
        action="append",
        default=[],
        metavar="R",
        help="a metric value for the steps-to-threshold table (repeatable)",
    )
    compare.add_argument(
        "--metric", default="return", help="metrics.csv column (default: return; or eval_return)"
    )
    compare.add_argument(
        "--last",
        type=int,
        default=3,
        metavar="N",
        help="a run's score is its mean metric over its last N episodes (default 3)",
    )
    compare.add_argument("--reps", type=int, default=2000, help="bootstrap replicates")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    compare.set_defaults(func=_cmd_compare)


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl sweep``: validate the sweep, run its trials, print the summary."""
    from bayes_mbrl.sweeps import load_sweep, run_sweep

    sweep = load_sweep(args.sweep_file)
    out: Path = args.out or sweep.default_out()
    _check_out_dir(out)
    print(
        f"sweep {sweep.name}: {len(sweep.variants)} configurations x "
        f"{len(sweep.options.seeds)} seeds = {len(sweep.trials)} trials into {out}",
        flush=True,
    )
    if args.dry_run:
        for trial in sweep.trials:
            print(f"  {trial.name}: {'; '.join(trial.overrides) or '(the base)'}")
        return 0
    try:
        result = run_sweep(
            sweep,
            args.backend,
            jobs=args.jobs,
            out=out,
            address=args.address,
            log=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        print(
            f"\n{PROG}: interrupted; run the same command again to resume the sweep",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    failed = result.failed
    print(
        f"{len(result.records) - len(failed)} of {len(result.records)} trials finished in "
        f"{result.wall_seconds:.0f} s; summary: {out / 'sweep.csv'}"
    )
    for record in failed:
        print(f"  {record['trial']}: {record['status']}: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Run ``bayes-mbrl compare``: the curves and tables of runs across seeds."""
    from bayes_mbrl.sweeps import compare_runs

    out: Path | None = args.out
    if out is None:
        if len(args.paths) != 1 or not (args.paths[0] / "sweep.json").is_file():
            raise ConfigError("--out is required unless the one path is a sweep directory")
        out = args.paths[0] / "compare"
    _check_out_dir(out)
    result = compare_runs(
        args.paths,
        out,
        thresholds=args.thresholds,
        metric=args.metric,
        last=args.last,
        reps=args.reps,
        seed=args.seed,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(result.table(), end="")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


def _from_bayes_mbrl(filename: str) -> bool:
    """True when a warning was raised in bayes_mbrl's own code."""
    import bayes_mbrl

    package = Path(bayes_mbrl.__file__).resolve().parent
    try:
        return Path(filename).resolve().is_relative_to(package)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show bayes_mbrl's warnings as one line ``bayes-mbrl: warning: ...`` on stderr
    (no file:line and source line, which read like a traceback); other warnings, and
    the filters (``-W``, ``PYTHONWARNINGS``), are left as they are."""
    shown = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if _from_bayes_mbrl(filename):
            text = " ".join(str(message).split())
            print(f"{PROG}: warning: {text}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = shown


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
        with _one_line_warnings():
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

"""Summarize ``bayes-mbrl distill-tasks`` outputs: the student against each teacher.

Reads ``report.json`` from each output directory (one per seed) and prints, per task
and seed, the mean evaluation return of the student and of the teacher from the same
fixed starts, the student's as a fraction of the teacher's, and whether the student
is within 10% of the teacher (``student >= teacher - 0.1 |teacher|``). Writes them to
``--out`` and, with ``--plot``, a bar chart of student and teacher per task and seed.

    python experiments/multitask_summary.py runs/multitask/s0 runs/multitask/s1 \\
        runs/multitask/s2 --out experiments/multitask.json --plot experiments/multitask.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main"]


def rows_of(out_dir: Path) -> list[dict[str, Any]]:
    report = json.loads((out_dir / "report.json").read_text())
    rows = []
    for env_id, e in report["evaluation"].items():
        rows.append(
            {
                "dir": str(out_dir),
                "seed": report["seed"],
                "task": env_id,
                "teacher": report["teachers"][report["tasks"].index(env_id)],
                "labels": report["labels"][env_id],
                "student_mean": round(e["student_mean"], 2),
                "teacher_mean": round(e["teacher_mean"], 2),
                "within_10_percent": e["within_10_percent"],
                "student_returns": e["student_returns"],
                "teacher_returns": e["teacher_returns"],
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r["task"] == task]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [r["teacher_mean"] for r in mine], 0.4, label="teacher")
        ax.bar([i + 0.2 for i in x], [r["student_mean"] for r in mine], 0.4, label="student")
        ax.set_xticks(list(x), [f"seed {r['seed']}" for r in mine])
        ax.set_title(task, fontsize=9)
    axes[0][0].set_ylabel("mean return, 10 fixed starts")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("one multi-task student against each task's teacher", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    rows = [row for d in args.dirs for row in rows_of(d)]
    for r in rows:
        print(
            f"seed {r['seed']} {r['task']:>32}: student {r['student_mean']:8.1f}  teacher "
            f"{r['teacher_mean']:8.1f}  within 10%: {r['within_10_percent']}"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"dirs": [str(d) for d in args.dirs], "rows": rows}, indent=1)
        )
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()

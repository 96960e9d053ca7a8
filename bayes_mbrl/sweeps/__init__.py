"""Sweeps over configurations x seeds, run on a process pool or on Ray, and sound
comparisons of their runs across seeds.

- :mod:`~bayes_mbrl.sweeps.spec`: the sweep file (:func:`load_sweep`), validated whole
  before anything runs;
- :mod:`~bayes_mbrl.sweeps.runner`: :func:`run_sweep` on the ``local`` or ``ray``
  backend, with retries, resume and a summary (``sweep.json`` / ``sweep.csv``);
- :mod:`~bayes_mbrl.sweeps.trial`: one trial, the same function on every backend;
- :mod:`~bayes_mbrl.sweeps.stats`: interquartile mean, stratified bootstrap intervals,
  probability of improvement, bootstrap bands of learning curves;
- :mod:`~bayes_mbrl.sweeps.compare`: :func:`compare_runs`, the figures and tables of
  ``bayes-mbrl compare``.
"""

from bayes_mbrl.sweeps.compare import Comparison, compare_runs
from bayes_mbrl.sweeps.runner import BACKENDS, SUMMARY_FIELDS, SweepResult, read_summary, run_sweep
from bayes_mbrl.sweeps.spec import Sweep, SweepOptions, Trial, Variant, load_sweep, sweep_from_dict

__all__ = [
    "BACKENDS",
    "SUMMARY_FIELDS",
    "Comparison",
    "Sweep",
    "SweepOptions",
    "SweepResult",
    "Trial",
    "Variant",
    "compare_runs",
    "load_sweep",
    "read_summary",
    "run_sweep",
    "sweep_from_dict",
]

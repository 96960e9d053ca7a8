"""``python -m bayes_mbrl.sweeps SPEC.json RESULT.json``: one trial in this process (the
local backend starts one such process per trial attempt).

Writes RESULT.json: the trial's record, or ``{"status": "failed", "error": ...}``
(the traceback goes to stderr, the trial's log). Exit status 0 when the trial
finished, 1 when it failed.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from bayes_mbrl.runs import atomic_write_bytes
from bayes_mbrl.sweeps.trial import run_trial


def main(argv: list[str]) -> int:
    """Run the trial of ``argv[0]`` (a spec file), write its outcome to ``argv[1]``."""
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        outcome = run_trial(spec)
        status = 0
    except Exception as exc:  # reported to the sweep, which retries
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        status = 1
    atomic_write_bytes(result_path, json.dumps(outcome).encode())
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

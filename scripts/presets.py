"""Rewrite the embedded presets with every configuration key, or add a preset.

Presets write every key out (``tests/test_config.py`` checks it), so a new option
means rewriting them all; the first line of each (its description) is kept::

    python scripts/presets.py                       # rewrite every preset
    python scripts/presets.py --new pendulum-mbpo --from pendulum-sac \\
        --description "Pendulum-v1: MBPO ..." --set experiment.mode=mbpo ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bayes_mbrl.config import config_text, load_config

PRESETS = Path(__file__).resolve().parents[1] / "bayes_mbrl" / "presets"


def body(name: str, overrides: list[str] | None = None) -> str:
    """The TOML of preset ``name`` with ``overrides``, without the header comment."""
    text = config_text(load_config(name, overrides or []))
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).lstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new", help="name of a preset to add")
    parser.add_argument("--from", dest="base", default="pendulum-ensemble-mpc")
    parser.add_argument("--description", default="")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.new:
        if not args.description:
            parser.error("--new needs --description (the preset's first line)")
        path = PRESETS / f"{args.new}.toml"
        path.write_text(f"# {args.description}\n{body(args.base, args.set)}")
        print(f"wrote {path}")
        return
    for path in sorted(PRESETS.glob("*.toml")):
        first = path.read_text().splitlines()[0]
        path.write_text(f"{first}\n{body(path.stem)}")
        print(f"rewrote {path.name}")


if __name__ == "__main__":
    main()

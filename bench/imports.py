"""Start-up cost: ``import saga`` and ``saga --help`` beside the import of a bare Celery app with
kombu and redis-py, each in a fresh interpreter, interleaved round by round so machine load falls
on all three alike. Standalone: ``python -m bench.imports [--rounds N]``.

Every worker process and every CLI call pays the import; the target is ``import saga`` at most
2x the bare Celery app (at 0.1.0 it was 3.1x: SQLAlchemy and Alembic loaded with no archive).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: What each figure runs, in a fresh interpreter.
COMMANDS: dict[str, list[str]] = {
    "import saga": [sys.executable, "-c", "import saga"],
    "saga --help": [str(Path(sys.executable).with_name("saga")), "--help"],
    "bare Celery app": [
        sys.executable,
        "-c",
        "import celery, kombu, redis; celery.Celery('bare', broker='redis://127.0.0.1:6379/0')",
    ],
}
#: ``import saga`` / the bare Celery app must stay at or under this.
IMPORT_RATIO_MAX = 2.0
#: Modules that must not load on ``import saga`` without an archive configured.
HEAVY = ("sqlalchemy", "alembic", "flower")


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_modules_loaded() -> list[str]:
    """Which of :data:`HEAVY` a fresh ``import saga`` loads (should be none)."""
    probe = f"import sys, saga; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    return [m for m in out.split(",") if m]


def import_figures(rounds: int = 9) -> dict[str, Any]:
    """Median, min and max seconds of each command over ``rounds`` interleaved rounds (one warm-up
    round first, not counted), the ratios to the bare Celery app, and the heavy modules loaded."""
    for cmd in COMMANDS.values():
        _seconds(cmd)
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, cmd in COMMANDS.items():
            samples[name].append(_seconds(cmd))
    figures = {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for name, v in samples.items()
    }
    bare = figures["bare Celery app"]["median_s"]
    ratio = figures["import saga"]["median_s"] / bare
    return {
        "rounds": rounds,
        "seconds": figures,
        "ratio_import": ratio,
        "ratio_help": figures["saga --help"]["median_s"] / bare,
        "heavy_loaded": heavy_modules_loaded(),
        "target": {"value": ratio, "limit": IMPORT_RATIO_MAX, "holds": ratio <= IMPORT_RATIO_MAX},
    }


def markdown(section: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    rows = [
        "| start-up (fresh interpreter) | median s | min–max s | / bare Celery app |",
        "| --- | ---: | ---: | ---: |",
    ]
    bare = section["seconds"]["bare Celery app"]["median_s"]
    for name, f in section["seconds"].items():
        rows.append(
            f"| `{name}` | {f['median_s']:.3f} | {f['min_s']:.3f}–{f['max_s']:.3f} | {f['median_s'] / bare:.2f}x |"
        )
    holds = "yes" if section["target"]["holds"] else "no"
    rows.append(f"\n`import saga` <= {IMPORT_RATIO_MAX}x the bare Celery app: {holds} ({section['rounds']} rounds)")
    rows.append(f"heavy modules loaded by `import saga`: {', '.join(section['heavy_loaded']) or 'none'}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the start-up figures (and their JSON with ``--json``)."""
    p = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    section = import_figures(args.rounds)
    print(json.dumps(section, indent=2) if args.json else markdown(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())

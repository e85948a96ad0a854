"""``python -m bench.summarize A.json B.json C.json``: the figures the README quotes, over several
``make bench`` runs (``--json`` of each): the median, the range, and in how many runs each target
held. A target holds only when it held in every run.

Figures a run did not measure (a skipped section, no PostgreSQL) are left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .report import TARGETS

Figure = Callable[[dict[str, Any]], float | None]


def _path(*keys: str) -> Figure:
    def read(result: dict[str, Any]) -> float | None:
        node: Any = result
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None

    return read


def _memory(name: str) -> Figure:
    def read(result: dict[str, Any]) -> float | None:
        rows = {row["name"]: row["bytes_per_run"] for row in result.get("memory_per_run", [])}
        value = rows.get(name)
        return None if value is None else float(value)

    return read


def _dialect(section: str, dialect: str, key: str) -> Figure:
    def read(result: dict[str, Any]) -> float | None:
        for row in result.get("archive", {}).get(section, []):
            if row.get("dialect") == dialect and row.get(key) is not None:
                return float(row[key])
        return None

    return read


#: Raw figures quoted next to the targets: name -> how to read it from one run's JSON.
FIGURES: dict[str, Figure] = {
    "saga runs/s": _path("saga", "runs_per_s"),
    "chain runs/s": _path("chain", "runs_per_s"),
    "saga latency p50, ms": _path("saga", "latency", "p50_ms"),
    "chain latency p50, ms": _path("chain", "latency", "p50_ms"),
    "saga commands per step": _path("saga", "commands_per_step"),
    "chain commands per step": _path("chain", "commands_per_step"),
    "saga/chain worker CPU per run": _path("ratios", "worker_cpu_per_run"),
    "bytes per run, 5 steps x 200 B": _memory("mem5"),
    "bytes per run, 5 steps x 10 KB": _memory("mem5big"),
    "bytes per run, 30 steps x 200 B": _memory("mem30"),
    "recovery p50, s": _path("recovery", "p50_s"),
    "group: saga/chord throughput": _path("group", "ratios", "throughput"),
    "group: saga/chord latency p50": _path("group", "ratios", "latency_p50"),
    "group: saga runs/s": _path("group", "saga", "runs_per_s"),
    "group: chord runs/s": _path("group", "chord", "runs_per_s"),
    "group: saga latency p50, ms": _path("group", "saga", "latency", "p50_ms"),
    "group: chord latency p50, ms": _path("group", "chord", "latency", "p50_ms"),
    "waiting: idle wait() commands/s": _path("waiters", "idle", "wait", "commands_per_s", "median"),
    "waiting: idle wait_async() commands/s": _path("waiters", "idle", "wait_async", "commands_per_s", "median"),
    "waiting: idle polling loop commands/s": _path("waiters", "idle", "poll", "commands_per_s", "median"),
    "waiting: wait() p50, ms": _path("waiters", "latency", "wait", "p50_ms", "median"),
    "waiting: wait_async() p50, ms": _path("waiters", "latency", "wait_async", "p50_ms", "median"),
    "waiting: polling loop p50, ms": _path("waiters", "latency", "poll", "p50_ms", "median"),
    "archive: SQLite archived runs/s": _dialect("throughput", "sqlite", "archived_runs_per_s"),
    "archive: PostgreSQL archived runs/s": _dialect("throughput", "postgresql", "archived_runs_per_s"),
    "archive: bytes per run after archiving": _path("archive", "memory", "bytes_per_run"),
    "archive: lag p95, s": _path("archive", "lag", "p95_s"),
}


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _spread(values: Sequence[float]) -> str:
    return f"{_num(statistics.median(values))} ({_num(min(values))}-{_num(max(values))})"


def _commit(result: dict[str, Any]) -> str:
    meta = result.get("meta", {})
    return f"{meta.get('commit', 'unknown')}{' with local changes' if meta.get('dirty') else ''}"


def summary(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table: every target and figure measured in at least one run, with its median
    and range over the runs, and for a target how many runs it held in."""
    lines = [
        f"Over {len(results)} runs (commits: {', '.join(sorted({_commit(r) for r in results}))}):",
        "",
        "| figure | median (range) | runs | target holds in |",
        "| --- | ---: | ---: | --- |",
    ]
    for key, text in TARGETS.items():
        rows = [r["targets"][key] for r in results if key in r.get("targets", {})]
        values = [float(row["value"]) for row in rows if row["value"] is not None]
        if not values:
            continue
        held = sum(1 for row in rows if row["holds"])
        lines.append(f"| {text} | {_spread(values)} | {len(values)} | {held} of {len(rows)} |")
    for name, read in FIGURES.items():
        values = [v for v in (read(r) for r in results) if v is not None]
        if values:
            lines.append(f"| {name} | {_spread(values)} | {len(values)} | |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of the runs named on the command line; 2 when one cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files written by make bench (--json)")
    args = parser.parse_args(argv)
    try:
        results = [json.loads(path.read_text()) for path in args.runs]
    except (OSError, ValueError) as exc:
        print(f"bench.summarize: cannot read a run: {exc}", file=sys.stderr)
        return 2
    print(summary(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

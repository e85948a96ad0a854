"""What the ``saga`` command prints for people: rich tables of runs, states, histories, events
and dead letters, and the data shaping behind them (payload changes between versions)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core import Event, SagaState, Status, dead_letter_history
from ..errors import visible

#: Line width when stdout is not a terminal (and ``COLUMNS`` is not set): wide enough that a
#: table row stays on one line, for grep and awk.
PIPE_WIDTH = 4096

_STATUS_STYLE = {
    Status.PENDING: "cyan",
    Status.RUNNING: "cyan",
    Status.COMPENSATING: "yellow",
    Status.COMPLETED: "green",
    Status.COMPENSATED: "yellow",
    Status.FAILED: "red",
}
# event fields every event carries; the events table shows the others as details
_EVENT_FIELDS = ("type", "run_id", "version", "at", "step", "name")


def console() -> Console:
    """A console for stdout (wide when piped)."""
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=PIPE_WIDTH if piped else None)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def shown(value: object) -> str:
    """Untrusted text for a rich table or line: its control characters escaped (ESC as ``\\x1b``,
    a line feed as ``\\n``: :func:`~saga.errors.visible`) and its rich markup taken literally."""
    return escape(visible(str(value)))


def _compact(value: Any, limit: int = 80) -> str:
    text = visible(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(at: str, precision: int = 19) -> str:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM:SS`` (19) or with milliseconds (23)."""
    return shown(at[:precision].replace("T", " ")) if at else "-"


def _status(status: Status) -> str:
    return f"[{_STATUS_STYLE[status]}]{status.value}[/]"


def error_text(state: SagaState, attempts: bool = False) -> str:
    """A run's error on one line: ``<type> at <step>: <message>`` (with the attempt count)."""
    e = state.error
    if e is None:
        return ""
    tries = f" (after {e.attempts} attempt{'s' if e.attempts != 1 else ''})" if attempts else ""
    return f"{e.type} at {e.name}: {e.message}{tries}"


def run_record(events: Sequence[Mapping[str, Any]], version: int) -> dict[str, Any]:
    """What ``saga show`` adds to a run's state from its events up to ``version``, each key only
    when there is something: ``compensation_failures`` (each compensation that gave up: its
    entry, step, attempts, error, and ``status`` — open, retried, dropped or resolved — with the
    ``resolution`` its closing event gave), ``retry_of`` (the run and dead-letter entry this run
    was started again from) and ``retried_as`` (the runs started again from this one's entries)."""
    seen = [e for e in events if e.get("version", 0) <= version]
    record: dict[str, Any] = {}
    failures = [
        {
            "entry_id": e["id"],
            "step": e.get("step"),
            "attempts": e.get("attempts"),
            "error_type": e.get("error_type"),
            "error_message": e.get("error_message"),
            "at": e.get("at"),
            "status": e["status"],
            "resolution": str((e["closed_by"] or {}).get("reason") or ""),
            "by_operator": bool(e["operator_after"]) and e["status"] == "resolved",
        }
        for e in dead_letter_history(seen)
        if e.get("kind") == "compensation"
    ]
    if failures:
        record["compensation_failures"] = failures
    if seen and isinstance(seen[0].get("retry_of"), Mapping):
        record["retry_of"] = dict(seen[0]["retry_of"])
    retried = [
        {"run_id": e.get("new_run_id"), "entry_id": e.get("entry_id")} for e in seen if e["type"] == "saga.retried"
    ]
    if retried:
        record["retried_as"] = retried
    return record


def _record_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The lines of :func:`run_record` under a run's error in ``saga show``."""
    rows: list[tuple[str, str]] = []
    for f in record.get("compensation_failures", ()):
        n = f["attempts"]
        times = f"{n} time{'s' if n != 1 else ''}"
        head = f"compensation of {f['step']} failed {times} ({f['error_type']}: {f['error_message']})"
        if f["status"] == "open":
            tail = f"open: dead letter {f['entry_id']}"
        elif f["by_operator"]:
            tail = f"resolved by an operator: {f['resolution']}"
        else:
            tail = f"{f['status']}" + (f": {f['resolution']}" if f["resolution"] else "")
        rows.append(("compensation", shown(f"{head}, {tail}")))
    if "retry_of" in record:
        link = record["retry_of"]
        rows.append(("retry of", shown(f"{link.get('run_id')} (dead letter {link.get('entry_id')})")))
    for link in record.get("retried_as", ()):
        rows.append(("retried as", shown(f"{link['run_id']} (dead letter {link['entry_id']})")))
    return rows


def payload_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What changed from one payload to the next.

    ``{"added": {key: new}, "removed": {key: old}, "changed": {key: {"old": old, "new": new}}}``,
    each sorted by key.
    """
    return {
        "added": {k: after[k] for k in sorted(after.keys() - before.keys())},
        "removed": {k: before[k] for k in sorted(before.keys() - after.keys())},
        "changed": {
            k: {"old": before[k], "new": after[k]}
            for k in sorted(before.keys() & after.keys())
            if before[k] != after[k]
        },
    }


def history_entries(history: Sequence[SagaState]) -> list[dict[str, Any]]:
    """Every version with the payload changes from the version before (from nothing for v1)."""
    entries: list[dict[str, Any]] = []
    previous: Mapping[str, Any] = {}
    for state in history:
        entries.append(
            {
                "version": state.version,
                "status": state.status.value,
                "current_step": state.current_step,
                "at": state.updated_at,
                "changes": payload_changes(previous, state.payload),
            }
        )
        previous = state.payload
    return entries


def _changes_text(changes: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"+ {k} = {_compact(v, 60)}" for k, v in changes["added"].items()]
    lines += [f"- {k} (was {_compact(v, 60)})" for k, v in changes["removed"].items()]
    lines += [f"~ {k}: {_compact(v['old'], 30)} -> {_compact(v['new'], 30)}" for k, v in changes["changed"].items()]
    return "\n".join(shown(line) for line in lines) if lines else "[dim]no change[/]"


def _event_details(event: Mapping[str, Any]) -> str:
    """The fields of an event beyond the common ones, as ``key=value`` (``--json`` has them whole)."""
    parts = []
    for key, value in event.items():
        if key in _EVENT_FIELDS:
            continue
        if key == "hash" and isinstance(value, str):
            text = value[:12] + "…"
        elif key == "error" and isinstance(value, Mapping):
            text = f"{value.get('type')}: {value.get('message')}"
        elif key == "entry" and isinstance(value, Mapping):
            text = str(value.get("id"))
        elif isinstance(value, str):
            text = value if len(value) <= 80 else value[:79] + "…"
        else:
            text = _compact(value)
        parts.append(f"{key}={text}")
    return shown(" ".join(parts))


#: The columns both ``saga list`` tables (Redis, the archive) begin with, meaning the same in
#: both: ``def`` is the version of the saga's definition the run runs under, ``version`` the run's
#: own version (how many transitions it committed), ``step`` where a moving run is (the index of
#: its current step) or, for any other run, the step it failed at, by name (``-``: none failed,
#: e.g. a completed or a cancelled run).
LIST_COLUMNS = ("run", "saga", "def", "status", "step", "version")


def step_cell(status: Status, current_step: int, failed_step: str | None) -> str:
    """The ``step`` column of a listing: a pending or running run's current step index; the
    name of the step any other run failed at; ``-`` when none failed."""
    if status in (Status.PENDING, Status.RUNNING):
        return str(current_step)
    return shown(failed_step) if failed_step else "-"


def print_runs(runs: Sequence[SagaState], parked: Mapping[str, str] | None = None, more: str = "") -> None:
    """The runs table of ``saga list`` (or ``no runs``); with ``parked`` (run id -> reason), a
    column says why each run waits; with ``more``, the command that reads the next page."""
    out = console()
    if not runs:
        out.print("no runs")
        return
    columns = [*LIST_COLUMNS, "updated", "last checkpoint", "error"]
    table = _table(*columns, *(["parked because"] if parked is not None else []))
    for s in runs:
        last = s.checkpoints[-1].name if s.checkpoints else "-"
        row = [
            shown(s.id),
            shown(s.saga),
            str(s.definition_version),
            _status(s.status),
            step_cell(s.status, s.current_step, s.error.name if s.error else None),
            str(s.version),
            _when(s.updated_at),
            shown(last),
            shown(error_text(s)),
        ]
        if parked is not None:
            row.append(shown(parked.get(s.id, "")))
        table.add_row(*row)
    out.print(table)
    if more:
        out.print(visible(f"more runs: saga list --cursor {more} (with the same filters)"), markup=False)


def print_stats(rows: Sequence[Mapping[str, Any]]) -> None:
    """``saga stats``: runs per saga version and status."""
    out = console()
    if not rows:
        out.print("no runs")
        return
    statuses = [s.value for s in Status]
    table = _table("saga", "version", *statuses, "parked", "unfinished")
    for row in rows:
        counts = [str(row[k]) for k in (*statuses, "parked", "unfinished")]
        table.add_row(shown(str(row["saga"])), str(row["version"]), *counts)
    out.print(table)


def print_failing_steps(steps: Sequence[tuple[str, str, int]]) -> None:
    """``saga stats`` with an archive: the steps where runs fail most."""
    out = console()
    if not steps:
        out.print("no failed steps")
        return
    table = _table("saga", "failing step", "runs")
    for saga, step, n in steps:
        table.add_row(shown(saga), shown(step), str(n))
    out.print(table)


def print_archived_runs(runs: Sequence[Any], more: str | None) -> None:
    """``saga list`` from the archive: one row per run, and how to get the next page."""
    out = console()
    if not runs:
        out.print("no runs")
        return
    table = _table(*LIST_COLUMNS, "tags", "started")
    for r in runs:
        table.add_row(
            shown(r.run_id),
            shown(r.saga),
            str(r.definition_version),
            _status(Status(r.status)),
            step_cell(Status(r.status), r.current_step, r.failed_step),
            str(r.version),
            shown(" ".join(f"{k}={v}" for k, v in sorted(r.tags.items())) or "-"),
            _when(r.created_at),
        )
    out.print(table)
    if more:
        out.print(visible(f"more runs: saga list --cursor {more} (with the same filters)"), markup=False)


def print_feed_status(rows: Sequence[Any], parked: Sequence[Mapping[str, Any]]) -> None:
    """``saga archive status``: each bucket's feed depth and lag, and the parked entries."""
    out = console()
    table = _table("bucket", "waiting", "oldest, s", "parked")
    for r in rows:
        table.add_row(str(r.bucket), str(r.depth), f"{r.oldest_age_seconds:.1f}", str(r.parked))
    out.print(table)
    waiting = sum(r.depth for r in rows)
    lag = max((r.oldest_age_seconds for r in rows), default=0.0)
    out.print(f"{waiting} feed entries waiting; the oldest is {lag:.1f} s old", markup=False)
    for p in parked:
        out.print(visible(f"parked: run {p.get('run_id') or '?'} entry {p.get('id')}: {p.get('reason')}"), markup=False)


def print_state(
    state: SagaState,
    latest_version: int,
    flower: Mapping[str, str] | None = None,
    record: Mapping[str, Any] | None = None,
) -> None:
    """``saga show``: the state's fields, payload and checkpoints; with ``record`` (:func:`run_record`),
    the compensations that gave up and how each was settled, and the retry links, under its
    error; with ``flower`` (``first_task``, ``tasks`` and ``search``), where Flower shows the
    run's tasks."""
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    which = "latest" if state.version == latest_version else f"latest is {latest_version}"
    rows = (
        ("run", shown(state.id)),
        ("saga", shown(state.saga)),
        ("status", _status(state.status)),
        ("version", f"{state.version} ({which})"),
        ("current step", str(state.current_step)),
        ("created", _when(state.created_at, 23)),
        ("updated", _when(state.updated_at, 23)),
        ("error", shown(error_text(state, attempts=True)) or "-"),
    )
    for label, value in (*rows, *_record_rows(record or {})):
        grid.add_row(label, value)
    if flower:
        grid.add_row("flower", shown(f"{flower['first_task']}  (the run's first task)"))
        grid.add_row("", shown(f"{flower['tasks']}  (search: {flower['search']})"))
    out.print(grid)
    out.print("\n[bold]payload[/]")
    # JSON writes a string's line breaks as \n already; its structure's line breaks stay
    text = json.dumps(state.payload, indent=2, sort_keys=True, ensure_ascii=False)
    out.print("\n".join(visible(line) for line in text.split("\n")), markup=False)
    out.print("\n[bold]checkpoints[/]")
    if not state.checkpoints:
        out.print("none")
        return
    table = _table("step", "name", "committed", "payload hash")
    for c in state.checkpoints:
        table.add_row(str(c.step), shown(c.name), _when(c.at, 23), shown(c.hash))
    out.print(table)


def print_history(entries: Sequence[Mapping[str, Any]]) -> None:
    """``saga history``: every version with its payload changes."""
    table = _table("version", "at", "status", "step", "payload changes")
    for e in entries:
        table.add_row(
            str(e["version"]),
            _when(e["at"], 23),
            _status(Status(e["status"])),
            str(e["current_step"]),
            _changes_text(e["changes"]),
        )
    console().print(table)


def print_events(log: Sequence[Event]) -> None:
    """``saga events``: one row an event."""
    table = _table("version", "at", "event", "step", "details")
    for e in log:
        step = f"{e['step']} {e.get('name', '')}" if "step" in e else ""
        table.add_row(
            str(e.get("version", "")),
            _when(e.get("at", ""), 23),
            shown(str(e.get("type", ""))),
            shown(step),
            _event_details(e),
        )
    console().print(table)


def event_line(event: Mapping[str, Any], saga: str) -> str:
    """One event of ``saga tail`` on one line: time, run (its first 8 characters, a prefix
    every command takes), saga, version, type, step and the details ``saga events`` shows."""
    run_id = str(event.get("run_id", ""))
    step = f" {event['step']} {event.get('name', '')}".rstrip() if "step" in event else ""
    details = _event_details(event)
    return (
        f"{_when(str(event.get('at', '')), 23)}  {shown(run_id[:8])}  {shown(saga)}  "
        f"v{event.get('version', '?')}  {shown(str(event.get('type', '')))}{shown(step)}"
        + (f"  {details}" if details else "")
    )


def print_lines(lines: Sequence[str]) -> None:
    """Print lines of :func:`event_line` (rich markup), flushed at once (for a live tail)."""
    out = console()
    for line in lines:
        out.print(line, soft_wrap=True)
    out.file.flush()


def print_dead_letters(entries: Sequence[Mapping[str, Any]], more: str = "") -> None:
    """``saga dlq list``: one row an entry (or the queue is empty); with ``more``, the command
    that reads the next page."""
    out = console()
    if not entries:
        out.print("the dead-letter queue is empty")
        return
    table = _table("entry", "saga", "kind", "step", "error", "attempts", "at")
    for e in entries:
        table.add_row(
            shown(str(e.get("id"))),
            shown(str(e.get("saga"))),
            shown(str(e.get("kind"))),
            shown(str(e.get("step"))),
            shown(f"{e.get('error_type')}: {e.get('error_message')}"),
            str(e.get("attempts")),
            _when(str(e.get("at", ""))),
        )
    out.print(table)
    if more:
        out.print(visible(f"more entries: saga dlq list --cursor {more}"), markup=False)

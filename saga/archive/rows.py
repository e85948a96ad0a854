"""What the archive holds of a run, as plain values: the rows a copied run makes, a listing's
rows, queries and cursors. No I/O and no SQL (the tables and statements are
:mod:`saga.archive.tables`, the connections :mod:`saga.archive.sql`).

A run's rows: one in ``saga_runs`` (its latest state), one per event in ``saga_events`` (the
event dict itself, at its 0-based position ``seq``), one per tag, one per checkpoint, and one per
dead-letter entry its events record — ``saga.dead_lettered`` opens an entry (the dead letters of a
forward step, of a compensation and of a run that cannot be trusted all come that way), and
``saga.retried``, ``saga.resumed`` with an ``entry_id`` (a compensation retried),
``saga.dead_letter_dropped`` and ``saga.dead_letter_resolved`` (the run's end settled it) close it.
A run row carries the storage format that wrote it
(:data:`saga.core.STORAGE_FORMAT`). Times are microseconds since the epoch
(:func:`saga.codec.micros`), turned back into the run's exact strings by :func:`saga.codec.iso`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..core import STORAGE_FORMAT, TERMINAL, Event, EventType, SagaState, Status, iso, micros
from ..errors import ActionRefused, cut

#: Dead-letter statuses: an entry is open until an operator retries or drops it, or the run's end
#: resolves it (a compensation entry of a run that ended compensated).
OPEN, RETRIED, DROPPED, RESOLVED = "open", "retried", "dropped", "resolved"


@dataclass(frozen=True)
class RunCopy:
    """One run as the archiver read it from Redis: its state rebuilt from ``events`` (its whole
    log, oldest first, JSON-able dicts), and the bucket it lives in."""

    state: SagaState
    events: Sequence[Event]
    bucket: int


@dataclass(frozen=True)
class ArchivedRun:
    """One run in a listing: its latest archived state, times as the run's ISO-8601 UTC strings."""

    run_id: str
    saga: str
    definition_version: int
    status: str
    version: int
    current_step: int
    created_at: str
    updated_at: str
    finished_at: str | None
    failed_step: str | None
    error_type: str | None
    error_message: str | None
    tags: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON object (a copy: changing it changes nothing here)."""
        return {**asdict(self), "tags": dict(self.tags)}


@dataclass(frozen=True)
class RunQuery:
    """Which runs a listing wants: every condition given must hold (tags: all of them).

    ``since`` (inclusive) and ``until`` (exclusive) bound ``created_at``; a naive datetime is
    taken as UTC. ``cursor`` is a previous page's :attr:`RunPage.cursor` ("" for the first page).
    """

    status: Sequence[str] = ()
    saga: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    failed_step: str | None = None
    definition_version: int | None = None
    limit: int = 50
    cursor: str = ""


@dataclass(frozen=True)
class RunPage:
    """One page of a listing, newest first; ``cursor`` reads the next page (None: no more).

    ``cursors`` holds, for each run of the page, the cursor of the listing after it (so a caller
    can resume from any run it showed); the last one differs from ``cursor`` only in that
    ``cursor`` is None when nothing follows.
    """

    runs: list[ArchivedRun]
    cursor: str | None
    cursors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ArchiveStats:
    """Counts over the archive: runs by (saga, definition version, status), sorted; and the
    steps runs failed at most, as (saga, step, runs), most first, at most ten."""

    runs: list[tuple[str, int, str, int]]
    failing_steps: list[tuple[str, str, int]]


class RunRows:
    """The rows a batch writes, table by table."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.tags: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []

    def add(self, copy: RunCopy, held_events: int | None) -> None:
        """The rows of ``copy``, given how many of its events are stored (None: not the run)."""
        s, run_id = copy.state, copy.state.id
        created = micros(s.created_at)
        self.runs.append(
            {
                "run_id": run_id,
                "saga": safe_text(s.saga),
                "definition_version": s.definition_version,
                "status": s.status.value,
                "version": s.version,
                "current_step": s.current_step,
                "created_at": created,
                "updated_at": micros(s.updated_at),
                "finished_at": micros(s.updated_at) if s.status.terminal else None,
                "failed_step": safe_text(s.error.name) if s.error else None,
                "error_type": safe_text(s.error.type) if s.error else None,
                "error_message": safe_text(s.error.message) if s.error else None,
                "tags": dict(s.tags),
                "payload": s.payload,
                "event_count": len(copy.events),
                "bucket": copy.bucket,
                "format": STORAGE_FORMAT,
            }
        )
        new = list(enumerate(copy.events))[held_events or 0 :]
        self.events += [
            {"run_id": run_id, "seq": i, "type": str(e["type"]), "at": micros(e["at"]), "data": e} for i, e in new
        ]
        if held_events is None:
            self.tags += [
                {"run_id": run_id, "key": safe_text(k), "value": safe_text(v), "created_at": created}
                for k, v in s.tags.items()
            ]
        self.checkpoints += [
            {"run_id": run_id, "step": c.step, "name": safe_text(c.name), "at": micros(c.at), "hash": c.hash}
            for c in s.checkpoints
        ]
        if any(touches_dead_letter(e) for _, e in new):
            self.dead_letters += dead_letter_rows(copy.events)


def touches_dead_letter(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` opens or closes a dead-letter entry."""
    kind = event["type"]
    return kind == EventType.SAGA_DEAD_LETTERED or (kind in _RESOLVED and "entry_id" in event)


#: Events that take a dead-letter entry off the queue (with ``entry_id``), and what they make it.
_RESOLVED = {
    EventType.SAGA_RETRIED: RETRIED,
    EventType.SAGA_RESUMED: RETRIED,  # a compensation retried from its entry
    EventType.SAGA_DEAD_LETTER_DROPPED: DROPPED,
    EventType.SAGA_DEAD_LETTER_RESOLVED: RESOLVED,
}


def dead_letter_rows(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The dead-letter entries a run's events record, each with its status as of the last event."""
    entries: dict[str, dict[str, Any]] = {}
    for event in events:
        kind = event["type"]
        entry = event.get("entry")
        if kind == EventType.SAGA_DEAD_LETTERED and isinstance(entry, Mapping) and "id" in entry:
            entries[str(entry["id"])] = {
                "entry_id": str(entry["id"]),
                "run_id": str(entry.get("run_id", event["run_id"])),
                "saga": safe_text(entry.get("saga", "")),
                "step": safe_text(entry.get("step", event.get("name", ""))),
                "kind": str(entry.get("kind", "")),
                "error_type": safe_text(entry.get("error_type")),
                "error_message": safe_text(entry.get("error_message")),
                "attempts": int(entry.get("attempts", 0)),
                "at": micros(entry.get("at") or event["at"]),
                "status": OPEN,
                "data": dict(entry),
            }
        elif kind in _RESOLVED and event.get("entry_id") in entries:
            entries[event["entry_id"]]["status"] = _RESOLVED[EventType(kind)]
    return list(entries.values())


def rank(copy: RunCopy) -> tuple[int, int]:
    """How far a copy of a run goes: (version, events); a higher one is newer."""
    return copy.state.version, len(copy.events)


def safe_text(value: Any) -> Any:
    """A string PostgreSQL can store (no NUL character); other values as they are."""
    return value.replace("\x00", "\\x00") if isinstance(value, str) else value


def archived_run(row: Mapping[Any, Any]) -> ArchivedRun:
    """A listing's run from its ``saga_runs`` row."""
    finished = row["finished_at"]
    return ArchivedRun(
        run_id=row["run_id"],
        saga=row["saga"],
        definition_version=row["definition_version"],
        status=row["status"],
        version=row["version"],
        current_step=row["current_step"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
        finished_at=None if finished is None else iso(finished),
        failed_step=row["failed_step"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        tags=dict(row["tags"] or {}),
    )


def parse_statuses(given: Sequence[str], *, terminal_only: bool) -> list[str]:
    """``given`` as status values; :class:`ActionRefused` for a name that is not a status, or (with
    ``terminal_only``) one that is not terminal."""
    chosen: list[str] = []
    for name in given:
        try:
            status = Status(name)
        except ValueError:
            raise ActionRefused(f"{cut(name, 40)!r} is not a status: use one of {', '.join(Status)}") from None
        if terminal_only and not status.terminal:
            raise ActionRefused(
                f"only finished runs are purged, and {status.value} is not finished: use {', '.join(sorted(TERMINAL))}"
            )
        chosen.append(status.value)
    return chosen


def micros_of(moment: datetime) -> int:
    """Microseconds since the epoch of ``moment`` (naive: UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return micros(moment.astimezone(UTC).isoformat())


def encode_cursor(run: ArchivedRun) -> str:
    """The opaque cursor of the page after ``run`` (its created_at and run id)."""
    raw = json.dumps([micros(run.created_at), run.run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(created_at µs, run id) of a cursor :func:`encode_cursor` made; :class:`ActionRefused` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, run_id = json.loads(raw)
        if isinstance(at, int) and not isinstance(at, bool) and isinstance(run_id, str):
            return at, run_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise ActionRefused(f"{cut(cursor, 40)!r} is not a listing cursor: pass the cursor a page returned, or none")

"""The tables of the SQL archive (SQLAlchemy Core, one schema for SQLite and PostgreSQL), and the
statements over them that do not depend on what a connection finds.

The migrations in ``saga/archive/migrations`` create exactly these tables (a test compares them); this
module is what the archive's statements are written against, and what an application that keeps
its own Alembic revisions may autogenerate from (:data:`metadata`).

Choices, and why:

- Times are ``BIGINT`` microseconds since the epoch (:func:`saga.codec.micros`), not ``TIMESTAMP``:
  they compare and index the same on both dialects, carry no time zone to get wrong, and go back
  to the run's exact ISO-8601 strings with :func:`saga.codec.iso`.
- Columns read back as written — event bodies, payloads, dead-letter entries — are ``JSON``
  (text on SQLite, ``json`` on PostgreSQL, which keeps the text exactly: key order, number
  spelling). Only ``saga_runs.tags``, which is searched, is ``JSONB`` on PostgreSQL (with a GIN
  ``jsonb_path_ops`` index, on that dialect only).
- Searching by tag goes through ``saga_run_tags``: one row per (run, tag) with the run's
  ``created_at`` copied in, so the index ``(key, value, created_at, run_id)`` yields the newest
  runs with a tag, in listing order, by a range scan on either dialect.
- No foreign keys: rows of a run are written and purged together by the archive, in one
  transaction, and inserts do not pay for checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .rows import OPEN, RunQuery, micros_of, parse_statuses

#: Every table of the archive (``alembic_version`` aside, which Alembic keeps).
metadata = sa.MetaData()

#: Kept as written, exactly (``json`` on PostgreSQL).
EXACT_JSON = sa.JSON()
#: Searched (``jsonb`` on PostgreSQL).
SEARCH_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: One row per run: its latest state as the archive last copied it.
runs = sa.Table(
    "saga_runs",
    metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("saga", sa.String(), nullable=False),
    sa.Column("definition_version", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("current_step", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.BigInteger(), nullable=False),
    sa.Column("finished_at", sa.BigInteger(), nullable=True),
    sa.Column("failed_step", sa.String(), nullable=True),
    sa.Column("error_type", sa.Text(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("tags", SEARCH_JSON, nullable=False),
    sa.Column("payload", EXACT_JSON, nullable=False),
    sa.Column("event_count", sa.Integer(), nullable=False),
    sa.Column("bucket", sa.Integer(), nullable=False),
    #: the storage format that wrote the row (:data:`saga.core.STORAGE_FORMAT`; revision 0002)
    sa.Column("format", sa.Integer(), nullable=False, server_default="1"),
)
sa.Index("ix_saga_runs_status_created", runs.c.status, runs.c.created_at, runs.c.run_id)
sa.Index("ix_saga_runs_saga_created", runs.c.saga, runs.c.created_at, runs.c.run_id)
sa.Index("ix_saga_runs_created", runs.c.created_at, runs.c.run_id)
sa.Index("ix_saga_runs_failed_step", runs.c.failed_step, runs.c.created_at, runs.c.run_id)
sa.Index("ix_saga_runs_finished", runs.c.finished_at)
sa.Index(
    "ix_saga_runs_tags_gin",
    runs.c.tags,
    postgresql_using="gin",
    postgresql_ops={"tags": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")

#: One row per tag of a run, for searching by tag.
run_tags = sa.Table(
    "saga_run_tags",
    metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("value", sa.String(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
)
sa.Index("ix_saga_run_tags_lookup", run_tags.c.key, run_tags.c.value, run_tags.c.created_at, run_tags.c.run_id)

#: Every event of every run; ``seq`` is the event's 0-based position in the run's log.
events = sa.Table(
    "saga_events",
    metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("at", sa.BigInteger(), nullable=False),
    sa.Column("data", EXACT_JSON, nullable=False),
)

#: The committed forward steps of each run.
checkpoints = sa.Table(
    "saga_checkpoints",
    metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("step", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("at", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

#: Every dead-letter entry a run recorded, and what became of it (open, retried, dropped, resolved).
dead_letters = sa.Table(
    "saga_dead_letters",
    metadata,
    sa.Column("entry_id", sa.String(300), primary_key=True),
    sa.Column("run_id", sa.String(255), nullable=False),
    sa.Column("saga", sa.String(), nullable=False),
    sa.Column("step", sa.String(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("error_type", sa.Text(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("at", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("data", EXACT_JSON, nullable=False),
)
sa.Index("ix_saga_dead_letters_run", dead_letters.c.run_id)
sa.Index("ix_saga_dead_letters_status_at", dead_letters.c.status, dead_letters.c.at)

#: The tables holding rows of a run, each with its ``run_id`` column (the run table last).
RUN_TABLES = (events, checkpoints, run_tags, dead_letters, runs)


# --- statements ---------------------------------------------------------------------------------


def insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's INSERT into ``table``, the one with ON CONFLICT (SQLite or PostgreSQL)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def held(run_ids: Sequence[str]) -> sa.Select[Any]:
    """(run_id, version, event_count) of those of ``run_ids`` already archived."""
    return sa.select(runs.c.run_id, runs.c.version, runs.c.event_count).where(runs.c.run_id.in_(list(run_ids)))


def run_upsert(dialect: str) -> Any:
    """Insert a run, or update its row to this copy only if the copy is newer: a higher
    (version, event_count), compared in the database, so two writers cannot move it back."""
    stmt = insert(dialect, runs)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[runs.c.run_id],
        set_={c.name: new[c.name] for c in runs.c if c.name != "run_id"},
        where=sa.or_(
            runs.c.version < new.version,
            sa.and_(runs.c.version == new.version, runs.c.event_count < new.event_count),
        ),
    )


def insert_new(dialect: str, table: sa.Table) -> Any:
    """Insert rows, leaving alone those whose key is already there."""
    return insert(dialect, table).on_conflict_do_nothing()


def dead_letter_upsert(dialect: str) -> Any:
    """Insert dead-letter entries; an open one takes the status a copy gives it (never back to open)."""
    stmt = insert(dialect, dead_letters)
    return stmt.on_conflict_do_update(
        index_elements=[dead_letters.c.entry_id],
        set_={"status": stmt.excluded.status},
        where=sa.and_(dead_letters.c.status == OPEN, stmt.excluded.status != OPEN),
    )


def events_of(run_id: str) -> sa.Select[Any]:
    """The event dicts of a run, oldest first."""
    return sa.select(events.c.data).where(events.c.run_id == run_id).order_by(events.c.seq)


def format_of(run_id: str) -> sa.Select[Any]:
    """The storage format of a run's row (no row: none)."""
    return sa.select(runs.c.format).where(runs.c.run_id == run_id)


def ids_with_prefix(prefix: str, limit: int, dialect: str) -> sa.Select[Any]:
    """Up to ``limit`` run ids that start with ``prefix``, sorted. Exact on both dialects (the
    first characters compared with ``substr``, case-sensitively); on SQLite, whose text compares
    by code point (``BINARY``), a range ``prefix <= run_id < the next prefix`` makes it a range
    scan of the primary key. PostgreSQL's default collation does not order by code point (it
    ignores a ``-`` at first), so there the range would miss ids: it gets ``run_id LIKE
    'prefix%'`` instead, which an index in the C collation (or ``text_pattern_ops``) serves."""
    conds: list[sa.ColumnElement[bool]] = [sa.func.substr(runs.c.run_id, 1, len(prefix)) == prefix]
    if dialect == "sqlite":
        conds.append(runs.c.run_id >= prefix)
        if ord(prefix[-1]) < 0x10FFFF:
            conds.append(runs.c.run_id < prefix[:-1] + chr(ord(prefix[-1]) + 1))
    else:
        conds.append(runs.c.run_id.startswith(prefix, autoescape=True))
    return sa.select(runs.c.run_id).where(*conds).order_by(runs.c.run_id).limit(limit)


def tag_sample(key: str, value: str, bound: int) -> sa.Select[Any]:
    """How many runs have tag ``key=value``, counted up to ``bound`` (an index range scan)."""
    some = sa.select(run_tags.c.run_id).where(run_tags.c.key == key, run_tags.c.value == value).limit(bound)
    return sa.select(sa.func.count()).select_from(some.subquery())


def listing(query: RunQuery, after: tuple[int, str] | None, driver: tuple[str, str] | None) -> sa.Select[Any]:
    """The runs ``query`` wants after cursor ``after``, newest first, one more than its limit.

    With tags, ``driver`` is the tag the listing scans (its rarest): its index gives the runs
    with it in listing order, each joined to its run by primary key and kept if its other tags
    (by primary key too) and the other conditions hold.
    """
    conds: list[sa.ColumnElement[bool]] = []
    if query.status:
        conds.append(runs.c.status.in_(parse_statuses(query.status, terminal_only=False)))
    if query.saga is not None:
        conds.append(runs.c.saga == query.saga)
    if query.failed_step is not None:
        conds.append(runs.c.failed_step == query.failed_step)
    if query.definition_version is not None:
        conds.append(runs.c.definition_version == query.definition_version)
    if driver is not None:
        scan = run_tags.alias("scan")
        stmt = sa.select(runs).select_from(scan.join(runs, runs.c.run_id == scan.c.run_id))
        conds += [scan.c.key == driver[0], scan.c.value == driver[1]]
        conds += [_has_tag(scan.c.run_id, k, v) for k, v in query.tags.items() if k != driver[0]]
        created, run_id = scan.c.created_at, scan.c.run_id
    else:
        stmt, created, run_id = sa.select(runs), runs.c.created_at, runs.c.run_id
    if query.since is not None:
        conds.append(created >= micros_of(query.since))
    if query.until is not None:
        conds.append(created < micros_of(query.until))
    if after is not None:
        conds.append(sa.tuple_(created, run_id) < sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
    return stmt.where(*conds).order_by(created.desc(), run_id.desc()).limit(query.limit + 1)


def _has_tag(run_id: sa.ColumnElement[str], key: str, value: str) -> sa.ColumnElement[bool]:
    other = run_tags.alias()
    return sa.exists().where(other.c.run_id == run_id, other.c.key == key, other.c.value == value)


def run_counts(since_us: int | None) -> sa.Select[Any]:
    """(saga, definition_version, status, runs), sorted, of the runs created since ``since_us``."""
    by = (runs.c.saga, runs.c.definition_version, runs.c.status)
    return sa.select(*by, sa.func.count()).where(*_window(since_us)).group_by(*by).order_by(*by)


def failing_steps(since_us: int | None, top: int = 10) -> sa.Select[Any]:
    """(saga, step, runs) of the ``top`` steps most runs created since ``since_us`` failed at."""
    n = sa.func.count().label("n")
    return (
        sa.select(runs.c.saga, runs.c.failed_step, n)
        .where(
            runs.c.failed_step.is_not(None),
            sa.or_(runs.c.error_type.is_(None), runs.c.error_type != "Rejected"),
            *_window(since_us),
        )
        .group_by(runs.c.saga, runs.c.failed_step)
        .order_by(n.desc(), runs.c.saga, runs.c.failed_step)
        .limit(top)
    )


def _window(since_us: int | None) -> list[sa.ColumnElement[bool]]:
    return [] if since_us is None else [runs.c.created_at >= since_us]


def finished_before(cutoff_us: int, statuses: Sequence[str], batch: int) -> sa.Select[Any]:
    """Up to ``batch`` ids of runs of ``statuses`` that finished before ``cutoff_us``, oldest first."""
    return (
        sa.select(runs.c.run_id)
        .where(runs.c.finished_at < cutoff_us, runs.c.status.in_(list(statuses)))
        .order_by(runs.c.finished_at)
        .limit(batch)
    )


def deletes(run_ids: Sequence[str]) -> list[sa.Delete]:
    """Statements deleting every row of ``run_ids``, the run rows last."""
    return [sa.delete(table).where(table.c.run_id.in_(list(run_ids))) for table in RUN_TABLES]


def count(table: sa.Table) -> sa.Select[Any]:
    """How many rows ``table`` has."""
    return sa.select(sa.func.count()).select_from(table)

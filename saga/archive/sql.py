"""The durable SQL archive of runs (SQLAlchemy 2: SQLite embedded, or PostgreSQL).

The archiver copies runs from Redis here in batches (:meth:`Archive.write`); reads of a run that
left Redis fall through to :meth:`Archive.events`; operators search it (:meth:`Archive.find_runs`,
:meth:`Archive.stats`) and trim it (:meth:`Archive.purge`). The tables and statements are in
:mod:`saga.archive.tables`, the rows a run makes in :mod:`saga.archive.rows`; the schema is
created and upgraded by the Alembic migrations shipped in ``saga/archive/migrations``
(:meth:`Archive.upgrade`, ``saga db upgrade``).

Every failure to reach the database is an :class:`~saga.errors.ArchiveUnavailable` with a
one-line message (password masked); a table missing is an
:class:`~saga.errors.ArchiveSchemaMismatch`; a row the database refuses while writing is an
:class:`ArchiveRowRefused`. Only this module, :mod:`saga.archive.tables` and the migrations import
SQLAlchemy; only this module and the migrations import Alembic.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..core import TERMINAL, Event, checked_format
from ..errors import (
    ActionRefused,
    ArchiveSchemaMismatch,
    ArchiveUnavailable,
    RunNotFound,
    SagaError,
    SettingsError,
    cut,
)
from ..settings import redact
from . import tables as t
from .rows import (
    ArchivedRun,
    ArchiveStats,
    RunCopy,
    RunPage,
    RunQuery,
    RunRows,
    archived_run,
    decode_cursor,
    encode_cursor,
    micros_of,
    parse_statuses,
    rank,
)

#: The drivers the archive runs on, by the URL's driver name (a bare ``postgresql`` is psycopg 3).
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_USE = "use sqlite:///runs.db or postgresql+psycopg://user@host/db"
#: Where the migrations are, inside the installed package.
MIGRATIONS = "saga.archive:migrations"
#: How many runs of a tag a listing counts, at most, to pick the rarest tag to scan.
_PROBE = 2000
#: Taken by ``upgrade`` on PostgreSQL (a transaction-scoped advisory lock): one upgrader at a time.
_UPGRADE_LOCK = 0x5A6A_0001


class ArchiveRowRefused(SagaError):
    """The database refused a row of a batch (a constraint, a value it cannot store): nothing of
    the batch was written. The archiver splits the batch to find the run and parks it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Archive:
    """The SQL archive at ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``).

    Guarantees: nothing connects until first use (a URL of another database is a one-line
    :class:`~saga.errors.SettingsError` at once); :meth:`write` is idempotent and never moves a
    run backwards; database trouble is an :class:`~saga.errors.ArchiveUnavailable` with one line
    naming the URL, password masked. Safe to share between threads.
    """

    def __init__(self, url: str) -> None:
        self._url = _parse(url)
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def url_for_humans(self) -> str:
        """The archive's URL with any password masked."""
        return redact(self._url.render_as_string(hide_password=True))

    # --- schema -------------------------------------------------------------------------------

    def upgrade(self) -> str:
        """Apply every migration up to head (a new SQLite file is created, not a missing
        directory); returns the head revision. On PostgreSQL: in one transaction, one upgrader
        at a time."""
        config = _alembic_config()
        with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return head_revision()

    def revision(self) -> str | None:
        """The schema revision the archive is at (None: no schema yet)."""
        with self._begin() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def check_schema(self) -> None:
        """Return if the archive is at the schema this saga needs, else raise
        :class:`~saga.errors.ArchiveSchemaMismatch` saying to run ``saga db upgrade``."""
        current, head = self.revision(), head_revision()
        if current != head:
            raise ArchiveSchemaMismatch(
                f"the archive at {self.url_for_humans} has schema {current or 'none'}, this saga needs {head}: "
                "run `saga db upgrade`"
            )

    # --- writing ------------------------------------------------------------------------------

    def write(self, copies: Sequence[RunCopy]) -> None:
        """Copy runs in one transaction: the whole batch is written, or none of it.

        Idempotent and never backwards: a run's row moves only to a copy with a higher
        (version, event count); only events past those stored are inserted; a run given twice
        counts once, at its newest copy. :class:`ArchiveRowRefused` when the database refuses a
        row (nothing of the batch written).
        """
        latest: dict[str, RunCopy] = {}
        for copy in copies:
            kept = latest.get(copy.state.id)
            if kept is None or rank(copy) > rank(kept):
                latest[copy.state.id] = copy
        if not latest:
            return
        with self._begin(write=True) as conn:
            stored = {row.run_id: (row.version, row.event_count) for row in conn.execute(t.held(list(latest)))}
            rows = RunRows()
            for run_id, copy in latest.items():
                held = stored.get(run_id)
                if held is None or held < rank(copy):
                    rows.add(copy, None if held is None else held[1])
            if not rows.runs:
                return
            dialect = conn.dialect.name
            conn.execute(t.run_upsert(dialect), rows.runs)
            for table, values in ((t.events, rows.events), (t.run_tags, rows.tags), (t.checkpoints, rows.checkpoints)):
                if values:
                    conn.execute(t.insert_new(dialect, table), values)
            if rows.dead_letters:
                conn.execute(t.dead_letter_upsert(dialect), rows.dead_letters)

    # --- reading ------------------------------------------------------------------------------

    def events(self, run_id: str) -> list[Event]:
        """Every archived event of the run, oldest first, equal to the events written;
        :class:`~saga.errors.RunNotFound` if the run is not archived,
        :class:`~saga.errors.StorageFormatTooNew` if its row is of a newer storage format."""
        with self._begin() as conn:
            stored = conn.execute(t.format_of(run_id)).scalar_one_or_none()
            checked_format(run_id, stored)
            found: list[Event] = list(conn.execute(t.events_of(run_id)).scalars())
        if not found:
            raise RunNotFound(run_id)
        return found

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` ids of archived runs that start with ``prefix`` (not empty), sorted:
        a range scan of the primary key (:func:`saga.archive.tables.ids_with_prefix`)."""
        if not prefix:
            raise ActionRefused("a run id prefix cannot be empty")
        with self._begin() as conn:
            return list(conn.execute(t.ids_with_prefix(prefix, limit, conn.dialect.name)).scalars())

    def find_runs(self, query: RunQuery) -> RunPage:
        """One page of the runs ``query`` wants, newest first (created_at, then run id, both
        descending); following the cursors lists each such run exactly once.
        :class:`~saga.errors.ActionRefused` for an unknown status, a limit under 1 or a bad cursor."""
        if query.limit < 1:
            raise ActionRefused(f"a listing's limit must be at least 1, got {query.limit}")
        after = decode_cursor(query.cursor) if query.cursor else None
        parse_statuses(query.status, terminal_only=False)
        with self._begin() as conn:
            driver = self._rarest(conn, query.tags) if query.tags else None
            if driver == ("", ""):
                return RunPage([], None)
            found = [archived_run(row) for row in conn.execute(t.listing(query, after, driver)).mappings()]
        runs = found[: query.limit]
        cursors = [encode_cursor(run) for run in runs]
        return RunPage(runs, cursors[-1] if len(found) > query.limit else None, cursors)

    def _rarest(self, conn: Connection, tags: Mapping[str, str]) -> tuple[str, str]:
        """The tag with the fewest runs (counted up to a bound), for a listing to scan by its
        index; ("", "") when one of the tags has no run at all."""
        if len(tags) == 1:
            return next(iter(tags.items()))
        counted: list[tuple[int, str, str]] = []
        for key, value in tags.items():
            n = int(conn.execute(t.tag_sample(key, value, _PROBE)).scalar_one())
            if n == 0:
                return "", ""
            counted.append((n, key, value))
        _, key, value = min(counted)
        return key, value

    def stats(self, since: datetime | None = None) -> ArchiveStats:
        """Run counts by saga, definition version and status, and the ten steps most runs failed
        at, over the runs created since ``since`` (all runs without it)."""
        since_us = None if since is None else micros_of(since)
        with self._begin() as conn:
            runs = [(s, int(v), st, int(n)) for s, v, st, n in conn.execute(t.run_counts(since_us))]
            steps = [(s, step, int(n)) for s, step, n in conn.execute(t.failing_steps(since_us))]
        return ArchiveStats(runs, steps)

    def run_count(self) -> int:
        """How many runs the archive holds."""
        with self._begin() as conn:
            return int(conn.execute(t.count(t.runs)).scalar_one())

    def event_count(self) -> int:
        """How many events the archive holds."""
        with self._begin() as conn:
            return int(conn.execute(t.count(t.events)).scalar_one())

    # --- trimming -----------------------------------------------------------------------------

    def purge(self, older_than: datetime, statuses: Sequence[str] = (), batch: int = 1000) -> int:
        """Delete the finished runs (of ``statuses``; every terminal one by default) that finished
        before ``older_than``, with every row of theirs, ``batch`` runs per transaction; returns
        how many. :class:`~saga.errors.ActionRefused` for a status that is not terminal (a run
        still moving is never purged) or a batch under 1."""
        chosen = parse_statuses(statuses, terminal_only=True) if statuses else sorted(TERMINAL)
        if batch < 1:
            raise ActionRefused(f"a purge batch must be at least 1 run, got {batch}")
        pick, purged = t.finished_before(micros_of(older_than), chosen, batch), 0
        while True:
            with self._begin() as conn:
                ids = list(conn.execute(pick).scalars())
                for delete in t.deletes(ids) if ids else ():
                    conn.execute(delete)
            purged += len(ids)
            if len(ids) < batch:
                return purged

    # --- connections --------------------------------------------------------------------------

    def dispose(self) -> None:
        """Close every pooled connection (the archive connects again on next use)."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = _engine(self._url)
            return self._engine

    @contextmanager
    def _begin(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; database errors become ours."""
        try:
            with self._get_engine().begin() as conn:
                yield conn
        except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
            if write:
                raise ArchiveRowRefused(f"the archive refused a row ({self._reason(exc)})") from None
            raise self._unavailable(exc) from None
        except sa_exc.DBAPIError as exc:
            if _missing_table(exc):
                self.check_schema()  # raises the mismatch, saying what to do
            raise self._unavailable(exc) from None
        except (sa_exc.StatementError, TypeError, ValueError, LookupError) as exc:
            if not write:
                raise
            # a value no row can hold (not JSON, not UTF-8, a time that is not one): refused before the database saw it
            cause = exc.orig if isinstance(exc, sa_exc.StatementError) else exc
            raise ArchiveRowRefused(
                f"the archive cannot store a value ({type(cause).__name__}: {cut(str(cause), 120)})"
            ) from None

    def _reason(self, exc: sa_exc.DBAPIError) -> str:
        lines = str(exc.orig).strip().splitlines()
        reason = " ".join(lines[0].split()) if lines else type(exc.orig).__name__
        password = self._url.password
        if password:
            reason = reason.replace(str(password), "***")
        return cut(reason)

    def _unavailable(self, exc: sa_exc.DBAPIError) -> ArchiveUnavailable:
        return ArchiveUnavailable(
            f"the archive at {self.url_for_humans} does not answer ({self._reason(exc)}): check SAGA_ARCHIVE_URL"
        )


def _missing_table(exc: sa_exc.DBAPIError) -> bool:
    return "no such table" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "42P01"


def _parse(url: str) -> URL:
    """``url`` checked and with its driver (psycopg 3 for PostgreSQL); a one-line SettingsError."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        shown = redact(url)
        raise SettingsError(f"SAGA_ARCHIVE_URL {cut(shown, 80)!r} is not a database URL: {_USE}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        shown = redact(parsed.render_as_string(hide_password=True))
        raise SettingsError(
            f"SAGA_ARCHIVE_URL {cut(shown, 80)!r} names {parsed.drivername}, not a database the archive runs on: {_USE}"
        )
    return parsed.set(drivername=driver)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _engine(url: URL) -> Engine:
    """An engine for ``url``: SQLite in WAL mode (readers never block the archiver) waiting up
    to 15 s for a lock; PostgreSQL giving up on a connection after 5 s, pinging pooled ones."""
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, json_serializer=_json, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    _create_private(url)
    engine = sa.create_engine(url, json_serializer=_json, connect_args={"timeout": 15})

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def _create_private(url: URL) -> None:
    """Create the file of an SQLite archive that does not exist yet readable by its owner only
    (0600: every payload and tag is in it); SQLite creates its ``-wal``, ``-shm`` and ``-journal``
    files with the database file's mode. An existing file is left as it is, and a file that
    cannot be created is left for SQLite to report."""
    path = url.database or ""
    if path in ("", ":memory:") or path.startswith("file:") or url.query.get("uri"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("path_separator", "os")
    return config


_heads: list[str] = []


def head_revision() -> str:
    """The newest schema revision of the migrations shipped with this saga."""
    if not _heads:
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        if head is None:
            raise ArchiveSchemaMismatch("this saga ships no archive migrations: reinstall it")
        _heads.append(head)
    return _heads[0]


__all__ = [
    "Archive",
    "ArchiveRowRefused",
    "ArchiveStats",
    "ArchivedRun",
    "RunCopy",
    "RunPage",
    "RunQuery",
    "head_revision",
]

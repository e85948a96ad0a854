"""The archiver: copies runs named by the archive feed into the SQL archive.

A thread in each worker, with one elected archiver per store at a time (a lock in Redis that
expires if its holder dies, like the watchdog's), or ``saga archive run`` as a process of its
own. Each batch: read the oldest feed entries, read the runs they name (their whole event
logs), write them to SQL in one transaction, let the finished ones expire from Redis after the
hot retention, then delete the entries. Every step is idempotent, so a crash anywhere means the
next archiver copies the same runs again, harmlessly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence

from ..core import Status, rebuild
from ..errors import ArchiveSchemaMismatch, ArchiveUnavailable, SagaError, StorageFormatTooNew, StoreUnavailable
from ..settings import Settings
from ..store import RedisStore
from .feed import ArchiveFeed, FeedEntry
from .sql import Archive, ArchiveRowRefused, RunCopy

logger = logging.getLogger(__name__)

#: Statuses whose runs leave Redis once archived.
_LEAVING = frozenset({Status.COMPLETED, Status.COMPENSATED})


class Archiver:
    """Copies the runs of ``store`` named by its feed into ``archive``.

    Guarantees: a feed entry is deleted only after the SQL transaction holding its run
    committed; a finished run's keys start to expire only after that too, and only if the run
    did not move since it was read; an entry that cannot be copied (malformed, or a row the
    database refuses) is parked in its bucket with the reason and logged with the run id,
    and the rest of the feed goes on.
    """

    def __init__(self, store: RedisStore, archive: Archive, settings: Settings) -> None:
        self.store = store
        self.archive = archive
        self.feed = ArchiveFeed(store)
        self.settings = settings
        self.batch = settings.archive_batch
        self.interval = settings.watchdog_interval or 0.5
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_checked = False
        self._trouble = ""

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Archive in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run_forever, name="saga-archiver", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch."""
        self._stop.set()

    def run_forever(self) -> None:
        """Archive while elected, until :meth:`stop`; every trouble is logged once and waited out."""
        while not self._stop.is_set():
            delay = self.interval
            try:
                if self.elected() and self.run_batch() >= self.batch:
                    delay = 0.0
                self._report("")
            except (ArchiveUnavailable, ArchiveSchemaMismatch, StoreUnavailable) as exc:
                self._report(str(exc))
                delay = max(self.interval, 5.0)
            except Exception:
                logger.exception("archiver: a batch failed; retrying")
                delay = max(self.interval, 5.0)
            if delay:
                self._stop.wait(delay)

    def drain(self, timeout: float = 60.0) -> int:
        """Copy until the feed is empty (waiting for the lock if another archiver holds it);
        returns how many entries were handled."""
        deadline = time.monotonic() + timeout
        while not self.elected():
            if time.monotonic() > deadline:
                raise SagaError(f"another archiver has held the lock for {timeout:.0f} s: it is archiving already")
            time.sleep(0.2)
        handled = 0
        while (n := self.run_batch()) > 0:
            handled += n
            self.elected()
        return handled

    def elected(self) -> bool:
        """Take or keep the store's archiver lock; False while another archiver holds it."""
        lock_ms = int(max(self.interval * 6, 10.0) * 1000)
        return self.store.indexes.hold_lock(self.store.keyspace.global_keys.archiver, self.owner, lock_ms)

    def _report(self, trouble: str) -> None:
        if trouble != self._trouble:
            if trouble:
                logger.warning("archiver: %s; runs keep moving in Redis and the feed waits", trouble)
            else:
                logger.info("archiver: archiving")
            self._trouble = trouble

    # --- one batch ----------------------------------------------------------------------------

    def run_batch(self) -> int:
        """Copy the runs named by one batch of feed entries; returns how many entries it handled
        (0: the feed is empty)."""
        if not self._schema_checked:
            self.archive.check_schema()
            self._schema_checked = True
        entries = self.feed.read(self.batch)
        if not entries:
            return 0
        malformed = [e for e in entries if not e.run_id]
        for e in malformed:
            logger.error("archiver: malformed feed entry %s in bucket %d parked: %r", e.entry_id, e.bucket, e.fields)
        self.feed.park(malformed, "malformed feed entry")
        by_run: dict[str, list[FeedEntry]] = {}
        for e in entries:
            if e.run_id:
                by_run.setdefault(e.run_id, []).append(e)
        copies, refused = self._copies(by_run)
        written, rows_refused = self._write(copies)
        refused += rows_refused
        for run_id, reason in refused:
            logger.error("archiver: run %s not archived, its feed entries parked: %s", run_id, reason)
            self.feed.park(by_run[run_id], reason)
        finished = [(c.state.id, c.state.version, len(c.events)) for c in written if c.state.status in _LEAVING]
        self.feed.expire_archived(finished, self.settings.hot_retention_seconds * 1000)
        bad = {run_id for run_id, _ in refused}
        self.feed.ack([e for run_id, es in by_run.items() if run_id not in bad for e in es])
        return len(entries)

    def _copies(self, by_run: dict[str, list[FeedEntry]]) -> tuple[list[RunCopy], list[tuple[str, str]]]:
        """Each named run as it is now (none for a run that left Redis: nothing more to copy)."""
        run_ids = list(by_run)
        copies: list[RunCopy] = []
        refused: list[tuple[str, str]] = []
        for run_id, events in zip(run_ids, self.feed.runs(run_ids), strict=True):
            if isinstance(events, StorageFormatTooNew):  # a newer saga wrote it: neither copied nor expired
                refused.append((run_id, str(events)))
                continue
            if not events:
                continue
            try:
                copies.append(RunCopy(rebuild(events), events, by_run[run_id][0].bucket))
            except Exception as exc:  # a log that does not fold is an operator's case, not a loop
                refused.append((run_id, f"its events do not fold ({type(exc).__name__}: {exc})"))
        return copies, refused

    def _write(self, copies: Sequence[RunCopy]) -> tuple[list[RunCopy], list[tuple[str, str]]]:
        """Write ``copies``; when the database refuses a row, split the batch until the refused
        runs are alone, and write the rest. Returns (written, [(run id, reason)])."""
        if not copies:
            return [], []
        try:
            self.archive.write(copies)
            return list(copies), []
        except ArchiveRowRefused as exc:
            if len(copies) == 1:
                return [], [(copies[0].state.id, f"the archive refused it: {exc}")]
        half = len(copies) // 2
        first, first_refused = self._write(copies[:half])
        second, second_refused = self._write(copies[half:])
        return first + second, first_refused + second_refused

"""The store's operations over many runs: the watchdog's work list and election lock, the parked
runs, the dead-letter queue, listing runs by status (and by the time they entered it), runs by an
id prefix, event counts.

Every cross-run index is split over the buckets (:mod:`saga.store.schema`); reading one merges the
buckets' pieces in one pipelined round trip per page, so its cost follows the page asked for,
not the number of runs. :class:`Indexes` shares its store's :class:`~saga.store.Keyspace`
(connection, scripts, key names) with :class:`~saga.store.RedisStore` (one run's operations),
which holds it as ``store.indexes``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import cast

from ..core import JSONObject, Status
from ..errors import EntryNotFound, SagaError
from .keyspace import Keyspace
from .schema import BucketKeys, ParkedRun

#: Statuses whose runs leave the store when their retention ends (their index entries with them).
EXPIRING = (Status.COMPLETED, Status.COMPENSATED)


@dataclass
class _Source:
    """One bucket's piece of an index, read a page at a time."""

    key: str
    rows: deque[tuple[str, float]] = field(default_factory=deque)
    offset: int = 0
    done: bool = False


@dataclass(frozen=True)
class DeadLetterPage:
    """A page of the dead-letter queue, oldest first. Each entry carries its own ``cursor`` (the
    page after it starts there); ``cursor`` is the last one's when more entries follow, else ''."""

    entries: list[JSONObject]
    cursor: str


class Indexes:
    """The operations over many runs of one store (see the module), on its ``keyspace``."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    # --- reading an index over the buckets ---------------------------------------------------

    def _merged(
        self, keys: Sequence[str], *, newest_first: bool, page: int, low: str = "-inf", high: str = "+inf"
    ) -> Iterator[tuple[str, float]]:
        """The members of the sorted sets ``keys`` with scores in [low, high], merged in score
        order (newest first: highest first), read a page per set at a time, only when needed."""
        sources = [_Source(key) for key in keys]
        while True:
            empty = [s for s in sources if not s.rows and not s.done]
            if empty:
                with self.keyspace.guarded():
                    pipe = self.keyspace.client.pipeline(transaction=False)
                    for s in empty:
                        if newest_first:
                            pipe.zrevrangebyscore(s.key, high, low, start=s.offset, num=page, withscores=True)
                        else:
                            pipe.zrangebyscore(s.key, low, high, start=s.offset, num=page, withscores=True)
                    pages = cast(list[list[tuple[str, float]]], pipe.execute())
                for s, rows in zip(empty, pages, strict=True):
                    s.rows.extend(rows)
                    s.offset += len(rows)
                    s.done = len(rows) < page
            live = [s for s in sources if s.rows]
            if not live:
                return
            pick = max if newest_first else min
            source = pick(live, key=lambda s: (s.rows[0][1], s.rows[0][0]))
            yield source.rows.popleft()

    def _page(self, limit: int) -> int:
        """How many members to read per bucket for a page of ``limit``: about twice a bucket's
        share, so a page usually takes one round trip."""
        return max(2 * limit // self.keyspace.buckets + 1, 8)

    def _each_bucket(self, names: Iterable[str]) -> list[str]:
        return [getattr(b, name) for b in self.keyspace.every_bucket for name in names]

    # --- listing runs ------------------------------------------------------------------------

    def newest_runs(self, statuses: Iterable[Status], limit_hint: int = 50) -> Iterator[str]:
        """Ids of the runs in ``statuses``, the latest to enter its status first, read lazily
        (``limit_hint``: how many the caller expects to take)."""
        for run_id, _ in self.newest_entries(statuses, limit_hint):
            yield run_id

    def newest_entries(
        self, statuses: Iterable[Status], limit_hint: int = 50, *, low: float | None = None, high: float | None = None
    ) -> Iterator[tuple[str, float]]:
        """(run id, when it entered its status) of the runs in ``statuses`` that entered it
        between ``low`` and ``high`` (seconds since the epoch, inclusive), newest first, lazily."""
        keys = [b.status(s) for s in statuses for b in self.keyspace.every_bucket]
        bounds = {"low": "-inf" if low is None else repr(low), "high": "+inf" if high is None else repr(high)}
        return self._merged(keys, newest_first=True, page=self._page(limit_hint), **bounds)

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` ids of listed runs (any status) that start with ``prefix``, sorted: a
        ZSCAN of every status index, so it reads every listed run's id at worst."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        found: set[str] = set()
        with self.keyspace.guarded():
            for key in [b.status(s) for b in self.keyspace.every_bucket for s in Status]:
                found.update(run_id for run_id, _ in self.keyspace.client.zscan_iter(key, match=pattern, count=1000))
                if len(found) >= limit:
                    break
        return sorted(found)[:limit]

    def event_counts(self, run_ids: Sequence[str]) -> list[int]:
        """How many events each run has (0 for no such run), in one round trip."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.llen(self.keyspace.keys(run_id).events)
            return cast(list[int], pipe.execute()) if run_ids else []

    def forget_runs(self, run_ids: Sequence[str]) -> None:
        """Drop index entries of runs whose keys are gone (their retention ended)."""
        if not run_ids:
            return
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in run_ids:
                b = self.keyspace.bucket_keys(run_id)
                for status in Status:
                    pipe.zrem(b.status(status), run_id)
                pipe.zrem(b.active, run_id)
                pipe.zrem(b.parked, run_id)
            pipe.execute()

    def trim_finished(self, before: float) -> int:
        """Drop the listing entries of completed and compensated runs that finished before
        ``before`` (their keys have expired by then); returns how many."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for b in self.keyspace.every_bucket:
                for status in EXPIRING:
                    pipe.zremrangebyscore(b.status(status), "-inf", before)
            return sum(cast(list[int], pipe.execute()))

    def count_runs(self, status: Status) -> int:
        """How many runs are listed in ``status``."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for b in self.keyspace.every_bucket:
                pipe.zcard(b.status(status))
            return sum(cast(list[int], pipe.execute()))

    # --- the watchdog ------------------------------------------------------------------------

    def schedule(self, run_id: str, at: float) -> None:
        """Have the watchdog look at an unfinished run at ``at`` (seconds since the epoch). Only a
        run still on the watchdog's list is moved (``ZADD XX``): one whose terminal commit took
        it off while the watchdog looked at it stays off."""
        with self.keyspace.guarded():
            self.keyspace.client.zadd(self.keyspace.bucket_keys(run_id).active, {run_id: at}, xx=True)

    def deadline(self, run_id: str) -> float | None:
        """When the watchdog looks at a run next (None: it is not watched)."""
        with self.keyspace.guarded():
            return self.keyspace.client.zscore(self.keyspace.bucket_keys(run_id).active, run_id)

    def forget_active(self, run_id: str) -> None:
        """Stop watching a run (it is terminal)."""
        with self.keyspace.guarded():
            self.keyspace.client.zrem(self.keyspace.bucket_keys(run_id).active, run_id)

    def due(self, now: float, limit: int = 100) -> list[str]:
        """Unfinished runs whose progress deadline is ``now`` or earlier, oldest deadline first."""
        merged = self._merged(self._each_bucket(["active"]), newest_first=False, page=self._page(limit), high=repr(now))
        return [run_id for run_id, _ in islice(merged, limit)]

    def active_depth(self) -> int:
        """How many unfinished runs the watchdog watches."""
        return self._cardinality("active")

    def hold_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend the lock at ``key`` for ``owner``; False if another owner holds it."""
        with self.keyspace.guarded():
            if self.keyspace.client.set(key, owner, nx=True, px=ttl_ms):
                return True
            if self.keyspace.client.get(key) == owner:
                self.keyspace.client.pexpire(key, ttl_ms)
                return True
        return False

    # --- parked runs -------------------------------------------------------------------------

    def forget_parked(self, run_ids: Sequence[str]) -> None:
        """Take runs off the parked runs (they were resumed, unwound or finished)."""
        if run_ids:
            with self.keyspace.guarded():
                pipe = self.keyspace.client.pipeline(transaction=False)
                for run_id in run_ids:
                    pipe.zrem(self.keyspace.bucket_keys(run_id).parked, run_id)
                pipe.execute()

    def parked(self, limit: int = 100) -> list[ParkedRun]:
        """Parked runs, longest parked first, as their meta says (runs no longer parked are left
        out, and their stale index entries removed)."""
        merged = self._merged(self._each_bucket(["parked"]), newest_first=False, page=self._page(limit))
        ids = [run_id for run_id, _ in islice(merged, limit)]
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hmget(self.keyspace.keys(run_id).meta, ["saga", "sv", "fingerprint", "parked"])
            rows = pipe.execute() if ids else []
        found, stale = [], []
        for run_id, (saga, sv, fingerprint, reason) in zip(ids, rows, strict=True):
            if reason is None:
                stale.append(run_id)
            else:
                found.append(ParkedRun(run_id, saga or "", int(sv or 1), fingerprint or "", reason))
        self.forget_parked(stale)
        return found

    def parked_depth(self) -> int:
        """How many runs the parked index holds."""
        return self._cardinality("parked")

    # --- dead letters ------------------------------------------------------------------------

    def _entry_bucket(self, entry_id: str) -> BucketKeys:
        """An entry id is ``<run id>.<version>``: it lives in its run's bucket."""
        run_id, _, version = entry_id.rpartition(".")
        if not run_id or not version.isdigit():
            raise EntryNotFound(entry_id)
        return self.keyspace.bucket_keys(run_id)

    def dead_letter(self, entry_id: str) -> JSONObject:
        """One dead-letter entry; :class:`EntryNotFound` if it is not in the queue."""
        with self.keyspace.guarded():
            raw = self.keyspace.client.hget(self._entry_bucket(entry_id).dlq, entry_id)
        if raw is None:
            raise EntryNotFound(entry_id)
        entry: JSONObject = json.loads(cast(str, raw))
        return entry

    def remove_dead_letter(self, entry_id: str) -> None:
        """Take an entry off the queue (the run's own record of it stays)."""
        b = self._entry_bucket(entry_id)
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            pipe.hdel(b.dlq, entry_id)
            pipe.zrem(b.dlq_index, entry_id)
            pipe.execute()

    def dead_letter_depth(self) -> int:
        """How many entries wait in the dead-letter queue."""
        return self._cardinality("dlq_index")

    def dead_letter_page(self, limit: int = 100, cursor: str = "") -> DeadLetterPage:
        """Up to ``limit`` dead-letter entries, oldest first, after ``cursor`` (from the previous
        page; '' = from the oldest)."""
        low, after = "-inf", (float("-inf"), "")
        if cursor:
            score, _, last = cursor.partition("/")
            try:
                after = (float(score), last)
            except ValueError:
                raise SagaError(
                    f"not a dead-letter cursor: {cursor!r}; pass the one the previous page printed"
                ) from None
            low = score
        merged = self._merged(self._each_bucket(["dlq_index"]), newest_first=False, page=self._page(limit), low=low)
        picked: list[tuple[str, float]] = []
        for entry_id, at in merged:
            if (at, entry_id) <= after:
                continue
            picked.append((entry_id, at))
            if len(picked) > limit:
                break
        more = len(picked) > limit
        picked = picked[:limit]
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for entry_id, _ in picked:
                pipe.hget(self._entry_bucket(entry_id).dlq, entry_id)
            raw = cast(list[str | None], pipe.execute()) if picked else []
        entries = [
            {**json.loads(r), "cursor": f"{at!r}/{entry_id}"}
            for (entry_id, at), r in zip(picked, raw, strict=True)
            if r is not None
        ]
        return DeadLetterPage(entries, entries[-1]["cursor"] if more and entries else "")

    def dead_letters(self) -> list[JSONObject]:
        """Every dead-letter entry, oldest first."""
        entries: list[JSONObject] = []
        cursor = ""
        while True:
            page = self.dead_letter_page(500, cursor)
            entries += [{k: v for k, v in entry.items() if k != "cursor"} for entry in page.entries]
            if not page.cursor:
                return entries
            cursor = page.cursor

    def _cardinality(self, index: str) -> int:
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for key in self._each_bucket([index]):
                pipe.zcard(key)
            return sum(cast(list[int], pipe.execute()))

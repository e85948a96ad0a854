"""The store's connection and key layout, and its operations over many runs: the watchdog's work
list and election lock, the parked runs, the dead-letter queue, listing runs by status (and by
the time they entered it), runs by an id prefix, event counts.

Every cross-run index is split over the buckets (:mod:`saga.store.schema`); reading one merges the
buckets' pieces in one pipelined round trip per page, so its cost follows the page asked for,
not the number of runs. :class:`~saga.store.RedisStore` (one run's operations) builds on
:class:`BucketedStore`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import islice
from typing import cast

from redis.cluster import RedisCluster
from redis.commands.core import Script

from ..core import JSONObject, Status
from ..errors import EntryNotFound, SagaError, SettingsError
from .connection import Client, connect, guard, load_script, redact
from .schema import BucketKeys, GlobalKeys, ParkedRun, RunKeys, bucket_of, run_keys

#: The scripts in ``saga/store/lua/``.
SCRIPTS = ("create", "begin", "commit", "record", "renew", "note", "park", "archived")
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


class BucketedStore:
    """A connection to one Redis or Redis Cluster, laid out in ``buckets`` buckets under
    ``prefix``, and the operations that concern many runs.

    The connection opens on first use: it detects a cluster, and checks that the store was laid
    out with this many buckets (recording it if the store is new) — a mismatch raises
    :class:`SettingsError`, because runs are found by their bucket.
    """

    def __init__(self, url: str, *, prefix: str, retries: int, buckets: int) -> None:
        if not 1 <= buckets <= 16384:
            raise SettingsError(f"SAGA_BUCKETS must be between 1 and 16384, got {buckets}")
        self.url = url
        self.prefix = prefix
        self.retries = retries
        self.buckets = buckets
        self.global_keys = GlobalKeys.under(prefix)
        self._bucket_keys = [BucketKeys.of(prefix, b) for b in range(buckets)]
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}

    @property
    def client(self) -> Client:
        """The Redis (or Redis Cluster) client, connected and checked on first use."""
        if self._client is None:
            with self.guarded():
                client = connect(self.url, self.retries)
                self._check_layout(client)
                self._scripts = {name: load_script(client, name) for name in SCRIPTS}
                self._client = client
        return self._client

    def _check_layout(self, client: Client) -> None:
        key = self.global_keys.config
        pipe = client.pipeline(transaction=False)
        pipe.hsetnx(key, "buckets", self.buckets)
        pipe.hget(key, "buckets")
        stored = int(pipe.execute()[1])
        if stored != self.buckets:
            raise SettingsError(
                f"SAGA_BUCKETS is {self.buckets} but the store at {redact(self.url)} (prefix {self.prefix!r}) "
                f"was laid out with {stored}; set SAGA_BUCKETS={stored} on every worker and client"
            )

    @property
    def on_cluster(self) -> bool:
        """Whether the store is a Redis Cluster."""
        return isinstance(self.client, RedisCluster)

    def script(self, name: str) -> Script:
        """A script of ``saga/store/lua/``, registered on the client."""
        self.client  # noqa: B018 - connects and loads the scripts on first use
        return self._scripts[name]

    def guarded(self) -> AbstractContextManager[None]:
        """A context in which this store's connection errors become :class:`StoreUnavailable`
        (for the other Redis adapters that share its client)."""
        return guard(self.url)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with self.guarded():
            self.client.ping()

    def bucket(self, run_id: str) -> int:
        """The bucket run ``run_id`` lives in."""
        return bucket_of(run_id, self.buckets)

    def keys(self, run_id: str) -> RunKeys:
        """The keys of one run."""
        return run_keys(self.prefix, self.bucket(run_id), run_id)

    def bucket_keys(self, run_id: str) -> BucketKeys:
        """The index keys of the bucket run ``run_id`` lives in."""
        return self._bucket_keys[self.bucket(run_id)]

    @property
    def every_bucket(self) -> Sequence[BucketKeys]:
        """The index keys of every bucket, bucket 0 first (``every_bucket[k]`` is bucket ``k``)."""
        return self._bucket_keys

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
                with self.guarded():
                    pipe = self.client.pipeline(transaction=False)
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
        return max(2 * limit // self.buckets + 1, 8)

    def _each_bucket(self, names: Iterable[str]) -> list[str]:
        return [getattr(b, name) for b in self._bucket_keys for name in names]

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
        keys = [b.status(s) for s in statuses for b in self._bucket_keys]
        bounds = {"low": "-inf" if low is None else repr(low), "high": "+inf" if high is None else repr(high)}
        return self._merged(keys, newest_first=True, page=self._page(limit_hint), **bounds)

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` ids of listed runs (any status) that start with ``prefix``, sorted: a
        ZSCAN of every status index, so it reads every listed run's id at worst."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        found: set[str] = set()
        with self.guarded():
            for key in [b.status(s) for b in self._bucket_keys for s in Status]:
                found.update(run_id for run_id, _ in self.client.zscan_iter(key, match=pattern, count=1000))
                if len(found) >= limit:
                    break
        return sorted(found)[:limit]

    def event_counts(self, run_ids: Sequence[str]) -> list[int]:
        """How many events each run has (0 for no such run), in one round trip."""
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.llen(self.keys(run_id).events)
            return cast(list[int], pipe.execute()) if run_ids else []

    def forget_runs(self, run_ids: Sequence[str]) -> None:
        """Drop index entries of runs whose keys are gone (their retention ended)."""
        if not run_ids:
            return
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                b = self.bucket_keys(run_id)
                for status in Status:
                    pipe.zrem(b.status(status), run_id)
                pipe.zrem(b.active, run_id)
                pipe.zrem(b.parked, run_id)
            pipe.execute()

    def trim_finished(self, before: float) -> int:
        """Drop the listing entries of completed and compensated runs that finished before
        ``before`` (their keys have expired by then); returns how many."""
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for b in self._bucket_keys:
                for status in EXPIRING:
                    pipe.zremrangebyscore(b.status(status), "-inf", before)
            return sum(cast(list[int], pipe.execute()))

    def count_runs(self, status: Status) -> int:
        """How many runs are listed in ``status``."""
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for b in self._bucket_keys:
                pipe.zcard(b.status(status))
            return sum(cast(list[int], pipe.execute()))

    # --- the watchdog ------------------------------------------------------------------------

    def schedule(self, run_id: str, at: float) -> None:
        """Have the watchdog look at an unfinished run at ``at`` (seconds since the epoch). Only a
        run still on the watchdog's list is moved (``ZADD XX``): one whose terminal commit took
        it off while the watchdog looked at it stays off."""
        with self.guarded():
            self.client.zadd(self.bucket_keys(run_id).active, {run_id: at}, xx=True)

    def deadline(self, run_id: str) -> float | None:
        """When the watchdog looks at a run next (None: it is not watched)."""
        with self.guarded():
            return self.client.zscore(self.bucket_keys(run_id).active, run_id)

    def forget_active(self, run_id: str) -> None:
        """Stop watching a run (it is terminal)."""
        with self.guarded():
            self.client.zrem(self.bucket_keys(run_id).active, run_id)

    def due(self, now: float, limit: int = 100) -> list[str]:
        """Unfinished runs whose progress deadline is ``now`` or earlier, oldest deadline first."""
        merged = self._merged(self._each_bucket(["active"]), newest_first=False, page=self._page(limit), high=repr(now))
        return [run_id for run_id, _ in islice(merged, limit)]

    def active_depth(self) -> int:
        """How many unfinished runs the watchdog watches."""
        return self._cardinality("active")

    def hold_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend the lock at ``key`` for ``owner``; False if another owner holds it."""
        with self.guarded():
            if self.client.set(key, owner, nx=True, px=ttl_ms):
                return True
            if self.client.get(key) == owner:
                self.client.pexpire(key, ttl_ms)
                return True
        return False

    # --- parked runs -------------------------------------------------------------------------

    def forget_parked(self, run_ids: Sequence[str]) -> None:
        """Take runs off the parked runs (they were resumed, unwound or finished)."""
        if run_ids:
            with self.guarded():
                pipe = self.client.pipeline(transaction=False)
                for run_id in run_ids:
                    pipe.zrem(self.bucket_keys(run_id).parked, run_id)
                pipe.execute()

    def parked(self, limit: int = 100) -> list[ParkedRun]:
        """Parked runs, longest parked first, as their meta says (runs no longer parked are left
        out, and their stale index entries removed)."""
        merged = self._merged(self._each_bucket(["parked"]), newest_first=False, page=self._page(limit))
        ids = [run_id for run_id, _ in islice(merged, limit)]
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hmget(self.keys(run_id).meta, ["saga", "sv", "fingerprint", "parked"])
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
        return self.bucket_keys(run_id)

    def dead_letter(self, entry_id: str) -> JSONObject:
        """One dead-letter entry; :class:`EntryNotFound` if it is not in the queue."""
        with self.guarded():
            raw = self.client.hget(self._entry_bucket(entry_id).dlq, entry_id)
        if raw is None:
            raise EntryNotFound(entry_id)
        entry: JSONObject = json.loads(cast(str, raw))
        return entry

    def remove_dead_letter(self, entry_id: str) -> None:
        """Take an entry off the queue (the run's own record of it stays)."""
        b = self._entry_bucket(entry_id)
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
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
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
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
        with self.guarded():
            pipe = self.client.pipeline(transaction=False)
            for key in self._each_bucket([index]):
                pipe.zcard(key)
            return sum(cast(list[int], pipe.execute()))

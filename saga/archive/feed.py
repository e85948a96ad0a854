"""The archive feed: one Redis stream per bucket, appended by the scripts that commit a
transition (while an archive is configured), read and acknowledged by the archiver.

An entry names a run whose record changed; the archiver copies the run as it is when it reads
it, so several entries for one run collapse into one copy. Entries are deleted (``XDEL``) only
after the SQL transaction that copied their runs committed: a crash in between leaves them in the
stream for the next archiver, and the copy is idempotent. An entry that cannot be copied moves to
its bucket's parked list, with the reason, for an operator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from ..core import Event, Status
from ..errors import StorageFormatTooNew
from ..store import RedisStore


@dataclass(frozen=True)
class FeedEntry:
    """One feed entry: the bucket and stream id it came from, and the run it names ('' when the
    entry is malformed)."""

    bucket: int
    entry_id: str
    run_id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class FeedStatus:
    """One bucket's feed: entries waiting, the age of the oldest, entries parked."""

    bucket: int
    depth: int
    oldest_age_seconds: float
    parked: int


class ArchiveFeed:
    """The archive feed of one store's buckets."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        #: the store's connection, scripts and key names
        self.keyspace = store.keyspace

    def read(self, batch: int) -> list[FeedEntry]:
        """About ``batch`` of the oldest entries, spread over the buckets, in one round trip."""
        buckets = self.keyspace.every_bucket
        per_bucket = max(8, math.ceil(batch / len(buckets)))
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for b in buckets:
                pipe.xrange(b.feed, "-", "+", count=per_bucket)
            replies = cast(list[list[tuple[str, dict[str, str]]]], pipe.execute())
        return [
            FeedEntry(b.bucket, entry_id, fields.get("r", "") if len(fields) == 1 else "", fields)
            for b, rows in zip(buckets, replies, strict=True)
            for entry_id, fields in rows
        ]

    def runs(self, run_ids: Sequence[str]) -> list[list[Event] | StorageFormatTooNew]:
        """The whole event log of each run ([] for a run no longer in Redis), in one round trip;
        in place of a run whose record is of a newer storage format, its refusal."""
        return self.store.reads.read_logs(run_ids)

    def ack(self, entries: Sequence[FeedEntry]) -> None:
        """Delete copied entries from their streams."""
        if not entries:
            return
        by_bucket: dict[int, list[str]] = {}
        for e in entries:
            by_bucket.setdefault(e.bucket, []).append(e.entry_id)
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for bucket, ids in by_bucket.items():
                pipe.xdel(self.keyspace.every_bucket[bucket].feed, *ids)
            pipe.execute()

    def park(self, entries: Sequence[FeedEntry], reason: str) -> None:
        """Move entries that cannot be copied to their bucket's parked list, with ``reason``."""
        if not entries:
            return
        now = time.time()
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for e in entries:
                keys = self.keyspace.every_bucket[e.bucket]
                record = {"id": e.entry_id, "run_id": e.run_id, "fields": e.fields, "reason": reason, "at": now}
                pipe.rpush(keys.feed_parked, json.dumps(record, ensure_ascii=False))
                pipe.xdel(keys.feed, e.entry_id)
            pipe.execute()

    def parked(self) -> list[dict[str, object]]:
        """Every parked entry, bucket by bucket, oldest first."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for b in self.keyspace.every_bucket:
                pipe.lrange(b.feed_parked, 0, -1)
            replies = cast(list[list[str]], pipe.execute())
        return [cast(dict[str, object], json.loads(raw)) for rows in replies for raw in rows]

    def expire_archived(self, copied: Sequence[tuple[str, int, int]], ttl_ms: int) -> int:
        """Let each copied (run id, version, event count) leave Redis ``ttl_ms`` from now, if it
        is finished and still exactly as copied (see archived.lua); returns how many."""
        if not copied:
            return 0
        script = self.keyspace.script("archived")
        expiring = 0
        with self.keyspace.guarded():
            for run_id, version, count in copied:
                k, b = self.keyspace.keys(run_id), self.keyspace.bucket_keys(run_id)
                keys = [k.meta, k.events, b.status(Status.COMPLETED), b.status(Status.COMPENSATED)]
                expiring += int(script(keys=keys, args=[version, count, ttl_ms, run_id]))
        return expiring

    def lag(self) -> list[tuple[int, int, float]]:
        """(bucket, depth, age of the oldest entry in seconds) per bucket, for the metrics."""
        return [(s.bucket, s.depth, s.oldest_age_seconds) for s in self.status()]

    def status(self) -> list[FeedStatus]:
        """Each bucket's feed depth, the age of its oldest entry and its parked entries."""
        buckets = self.keyspace.every_bucket
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for b in buckets:
                pipe.xlen(b.feed)
                pipe.xrange(b.feed, "-", "+", count=1)
                pipe.llen(b.feed_parked)
            replies = pipe.execute()
        now_ms = time.time() * 1000
        out = []
        for i, b in enumerate(buckets):
            depth, first, parked = replies[3 * i : 3 * i + 3]
            age = max(0.0, (now_ms - int(first[0][0].split("-")[0])) / 1000) if first else 0.0
            out.append(FeedStatus(b.bucket, int(depth), age, int(parked)))
        return out

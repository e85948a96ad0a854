"""The store's cross-run indexes: the watchdog's work list, its election lock, the parked runs,
the dead-letter queue and the listing of runs. :class:`~saga.store.RedisStore` has these
operations (it is built from this mixin); they are apart because they concern many runs, while
``store.py`` concerns one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from .connection import Client
from .errors import EntryNotFound
from .schema import GlobalKeys, ParkedRun, RunKeys
from .state import JSONObject


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class IndexOperations:
    """The operations on the indexes shared by every run under one key prefix."""

    client: Client
    global_keys: GlobalKeys

    def keys(self, run_id: str) -> RunKeys:
        """The keys of one run (the store's)."""
        raise NotImplementedError

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _index_dead_letter(self, entry: Mapping[str, Any]) -> None:
        g = self.global_keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(g.dlq, entry["id"], _dumps(entry))
        pipe.zadd(g.dlq_index, {entry["id"]: time.time()})
        pipe.execute()

    def forget_parked(self, run_ids: Sequence[str]) -> None:
        """Take runs off the parked index (they were resumed, unwound or finished)."""
        if run_ids:
            with self._guard():
                self.client.zrem(self.global_keys.parked, *run_ids)

    def parked(self, limit: int = 100) -> list[ParkedRun]:
        """Parked runs, longest parked first, as their meta says (runs no longer parked are
        left out, and their stale index entries removed)."""
        with self._guard():
            ids = cast(list[str], self.client.zrange(self.global_keys.parked, 0, limit - 1))
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

    def schedule(self, run_id: str, at: float) -> None:
        """Have the watchdog look at an unfinished run at ``at`` (seconds since the epoch)."""
        with self._guard():
            self.client.zadd(self.global_keys.active, {run_id: at})

    def forget_active(self, run_id: str) -> None:
        """Stop watching a run (it is terminal)."""
        with self._guard():
            self.client.zrem(self.global_keys.active, run_id)

    def due(self, now: float, limit: int = 100) -> list[str]:
        """Unfinished runs whose progress deadline is ``now`` or earlier, oldest deadline first."""
        with self._guard():
            ids = cast(list[str], self.client.zrangebyscore(self.global_keys.active, "-inf", now, 0, limit))
        return ids

    def hold_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend the lock at ``key`` for ``owner``; False if another owner holds it."""
        with self._guard():
            if self.client.set(key, owner, nx=True, px=ttl_ms):
                return True
            if self.client.get(key) == owner:
                self.client.pexpire(key, ttl_ms)
                return True
        return False

    def dead_letter(self, entry_id: str) -> JSONObject:
        """One dead-letter entry; :class:`EntryNotFound` if it is not in the queue."""
        with self._guard():
            raw = self.client.hget(self.global_keys.dlq, entry_id)
        if raw is None:
            raise EntryNotFound(entry_id)
        entry: JSONObject = json.loads(raw)
        return entry

    def remove_dead_letter(self, entry_id: str) -> None:
        """Take an entry off the queue (the run's own record of it stays)."""
        g = self.global_keys
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(g.dlq, entry_id)
            pipe.zrem(g.dlq_index, entry_id)
            pipe.execute()

    def parked_depth(self) -> int:
        """How many runs the parked index holds."""
        with self._guard():
            return int(self.client.zcard(self.global_keys.parked))

    def dead_letter_depth(self) -> int:
        """How many entries wait in the dead-letter queue."""
        with self._guard():
            return int(self.client.zcard(self.global_keys.dlq_index))

    def dead_letters(self) -> list[JSONObject]:
        """Every dead-letter entry, oldest first."""
        g = self.global_keys
        with self._guard():
            ids = cast(list[str], self.client.zrange(g.dlq_index, 0, -1))
            raw = self.client.hmget(g.dlq, ids) if ids else []
        return [json.loads(r) for r in raw if r is not None]

    def run_ids(self, limit: int | None = None) -> list[str]:
        """Run ids, newest first."""
        stop = -1 if limit is None else limit - 1
        with self._guard():
            ids = cast(list[str], self.client.zrevrange(self.global_keys.runs, 0, stop))
        return ids

"""Reads that fall through the tiers: Redis (the hot tier) first, then the SQL archive for a run
that has left Redis. Both tiers hold a run's events, and every view of a run — its latest state,
any version, its history — is folded from them the same way, so a run reads the same from
either tier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core import Event, SagaState, codec, rebuild
from .errors import RunNotFound
from .store import RedisStore

if TYPE_CHECKING:
    from .archive import Archive


class Tiers:
    """The reads of one run over a store and, when one is configured, an archive.

    Guarantees: each read returns what the same read of the store returned while the run was
    in Redis (states with payloads of their own); :class:`RunNotFound` only when neither tier
    has the run.
    """

    def __init__(self, store: RedisStore, archive: Archive | None) -> None:
        self.store = store
        self.archive = archive

    def get(self, run_id: str) -> SagaState:
        """The run's latest state."""
        try:
            return self.store.reads.get(run_id)
        except RunNotFound:
            return rebuild(self._archived(run_id))

    def events(self, run_id: str) -> list[Event]:
        """Every event of the run, oldest first."""
        try:
            return self.store.reads.events(run_id)
        except RunNotFound:
            return self._archived(run_id)

    def history(self, run_id: str) -> list[SagaState]:
        """The run at every version, oldest first."""
        return codec.history(self.events(run_id))

    def at_version(self, run_id: str, version: int) -> SagaState:
        """The run at one version."""
        return codec.at_version(run_id, self.events(run_id), version)

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> tuple[list[str], bool]:
        """Up to ``limit`` ids of runs that start with ``prefix`` in either tier (the runs listed
        in Redis, and the archived ones: a finished run leaves Redis once archived), sorted, and
        whether more may match (a tier had ``limit`` of them)."""
        found = self.store.indexes.ids_with_prefix(prefix, limit=limit)
        more = len(found) >= limit
        if self.archive is not None:
            archived = self.archive.ids_with_prefix(prefix, limit=limit)
            more = more or len(archived) >= limit
            found = sorted(set(found) | set(archived))
        return found[:limit], more or len(found) > limit

    def _archived(self, run_id: str) -> list[Event]:
        if self.archive is None:
            raise RunNotFound(run_id)
        try:
            return self.archive.events(run_id)
        except RunNotFound:
            raise RunNotFound(run_id, searched="Redis or the archive") from None

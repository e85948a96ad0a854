"""Operator actions on the SQL archive: search, statistics, the feed's lag, purge, migrations.

Each takes ``registry`` (the default registry when not given) and uses that registry's store and
archive. An action that needs the archive while none is configured raises
:class:`~saga.errors.SettingsError` saying to set ``SAGA_ARCHIVE_URL``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .. import archive as archive_tier
from ..archive import ArchiveFeed, ArchiveStats, FeedStatus, RunPage, RunQuery
from ..core import Status, policy
from ..errors import SagaError, SettingsError
from ..registry import Registry, default_registry

if TYPE_CHECKING:
    from ..archive import Archive, Archiver

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _registry(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def archive_of(registry: Registry | None = None) -> Archive:
    """The registry's archive; :class:`SettingsError` when none is configured."""
    archive = _registry(registry).archive
    if archive is None:
        raise SettingsError("no archive is configured: set SAGA_ARCHIVE_URL (see README 'The archive')")
    return archive


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A moment from an ISO date or time (``2026-11-01``, ``2026-11-01T12:00:00Z``; UTC unless
    it says otherwise) or a span back from now (``90s``, ``30m``, ``2h``, ``7d``, ``2w``)."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SagaError(f"{text!r} is not a date: give an ISO date or time (2026-11-01) or a span (2h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def find_runs(
    *,
    status: str | Sequence[str] = (),
    saga: str | None = None,
    tags: Mapping[str, str] | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    failed_step: str | None = None,
    version: int | None = None,
    limit: int = 50,
    cursor: str = "",
    registry: Registry | None = None,
) -> RunPage:
    """Archived runs, newest first, matching every filter given: status (one or several), saga,
    tags (all of them), started since/until (a datetime, an ISO date or a span like ``7d``), the
    step where they failed, the saga's definition version. At most ``limit`` per page; pass the
    page's ``cursor`` to get the next one (None: there is none)."""
    statuses = [status] if isinstance(status, str) else list(status)
    known = {s.value for s in Status}
    for s in statuses:
        if s not in known:
            raise SagaError(f"unknown status {s!r}; one of: {', '.join(sorted(known))}")
    query = RunQuery(
        status=statuses,
        saga=saga,
        tags=dict(tags or {}),
        since=parse_when(since) if isinstance(since, str) else since,
        until=parse_when(until) if isinstance(until, str) else until,
        failed_step=failed_step,
        definition_version=version,
        limit=limit,
        cursor=cursor,
    )
    return archive_of(registry).find_runs(query)


def archive_stats(since: datetime | str | None = None, *, registry: Registry | None = None) -> ArchiveStats:
    """Archived runs counted by saga, definition version and status, and the steps where runs
    fail most, for runs started since ``since`` (all when None)."""
    moment = parse_when(since) if isinstance(since, str) else since
    return archive_of(registry).stats(moment)


def feed_status(registry: Registry | None = None) -> list[FeedStatus]:
    """Each bucket's archive feed: entries waiting, age of the oldest, entries parked."""
    reg = _registry(registry)
    archive_of(reg)
    return ArchiveFeed(reg.store).status()


def parked_feed_entries(registry: Registry | None = None) -> list[dict[str, object]]:
    """Feed entries the archiver could not copy, with why."""
    return ArchiveFeed(_registry(registry).store).parked()


def purge(older_than_days: float, statuses: Sequence[str] = (), *, registry: Registry | None = None) -> int:
    """Delete archived runs that finished more than ``older_than_days`` days ago (only those
    with one of ``statuses`` when given; never an unfinished run), in batches; returns how
    many."""
    if older_than_days < 0:
        raise SagaError("--older-than must be a number of days >= 0")
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    return archive_of(registry).purge(cutoff, list(statuses))


def upgrade(registry: Registry | None = None) -> str:
    """Bring the archive's tables to this version's schema; returns the revision."""
    return archive_of(registry).upgrade()


def archiver(registry: Registry | None = None) -> Archiver:
    """An archiver over the registry's store and archive (``saga archive run``)."""
    reg = _registry(registry)
    return archive_tier.Archiver(reg.store, archive_of(reg), reg.settings)


def version_rows(summary: ArchiveStats, registry: Registry | None = None) -> list[dict[str, object]]:
    """The archive's counts as ``saga stats`` rows: ``saga``, ``version``, one count per
    status, ``parked`` (from Redis) and ``unfinished``."""
    counts: Counter[tuple[str, int, str]] = Counter({(s, v, st): n for s, v, st, n in summary.runs})
    parked = Counter((p.saga, p.definition_version) for p in _registry(registry).store.indexes.parked(limit=10_000))
    return policy.version_rows(counts, parked)

"""saga.archive: its face (the names other packages use)."""

from . import tables
from .archiver import Archiver
from .feed import ArchiveFeed, FeedStatus
from .sql import Archive, ArchivedRun, ArchiveRowRefused, ArchiveStats, RunCopy, RunPage, RunQuery, head_revision
from .tables import listing, metadata

__all__ = [
    "Archive",
    "ArchiveFeed",
    "ArchiveRowRefused",
    "ArchiveStats",
    "ArchivedRun",
    "Archiver",
    "FeedStatus",
    "RunCopy",
    "RunPage",
    "RunQuery",
    "head_revision",
    "listing",
    "metadata",
    "tables",
]

"""saga.archive: the SQL tier (history and search), the extra ``saga[archive]``.

Its face loads SQLAlchemy and Alembic only when a name that needs them is first used
(:class:`Archive`, :class:`Archiver`, :func:`head_revision`, the table definitions), so
``import saga`` stays light without an archive. Without the extra installed, that first use
raises :class:`~saga.errors.SettingsError` naming the ``pip install`` to run. The archive feed
(Redis) and the row types (plain dataclasses) load eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import SettingsError
from ..settings import ARCHIVE_LIBRARIES
from .feed import ArchiveFeed, FeedStatus
from .rows import ArchivedRun, ArchiveStats, RunCopy, RunPage, RunQuery

if TYPE_CHECKING:
    from . import tables
    from .archiver import Archiver
    from .sql import Archive, ArchiveRowRefused, head_revision
    from .tables import listing, metadata

#: What to run when they are missing.
INSTALL_HINT = "pip install 'saga[archive]' (or 'saga[postgres]' for PostgreSQL)"

#: Names loaded on first use, and the module of each.
_LAZY = {
    "Archive": "sql",
    "ArchiveRowRefused": "sql",
    "head_revision": "sql",
    "Archiver": "archiver",
    "listing": "tables",
    "metadata": "tables",
}


def require_extra(what: str = "the archive") -> None:
    """Raise :class:`SettingsError` with the ``pip install`` to run if SQLAlchemy or Alembic is missing."""
    try:
        importlib.import_module(f"{__name__}.sql")  # loads SQLAlchemy and Alembic
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ARCHIVE_LIBRARIES:
            raise SettingsError(f"{what} needs {exc.name}, which is not installed: {INSTALL_HINT}") from None
        raise


def __getattr__(name: str) -> Any:
    # ``from . import tables`` inside the package asks for the attribute before the submodule is
    # bound, so each name loads its own module only (never the whole package: no cycle)
    module = "tables" if name == "tables" else _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_extra()
    loaded = importlib.import_module(f"{__name__}.{module}")
    return loaded if name == "tables" else getattr(loaded, name)


__all__ = [
    "Archive",
    "ArchiveFeed",
    "ArchiveRowRefused",
    "ArchiveStats",
    "ArchivedRun",
    "Archiver",
    "FeedStatus",
    "INSTALL_HINT",
    "RunCopy",
    "RunPage",
    "RunQuery",
    "head_revision",
    "listing",
    "metadata",
    "require_extra",
    "tables",
]

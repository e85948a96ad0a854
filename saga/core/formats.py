"""Which storage format wrote a record, and whether this saga reads it. No I/O.

Every run record carries the number of the storage format that wrote it: the ``format`` field
of the run's meta hash in Redis (written by ``create.lua`` with the run) and the ``format``
column of its ``saga_runs`` row in the archive. Every format after 1 also writes it into the
run's snapshot (a ``format`` key of the snapshot's JSON object), so that a batch of snapshots (a
listing, the watchdog's scan) is checked without a command per run for its meta hash; a format-1
snapshot has no such key. A record without one was written before the
field existed, by format 1. A reader meets a format newer than :data:`STORAGE_FORMAT` only when
a newer saga wrote the record: it refuses it with :class:`~saga.errors.StorageFormatTooNew` and
never rewrites it (the newer saga owns it). The golden fixtures in ``tests/golden`` hold records
of every format this saga reads; a change of layout adds a format, and keeps reading the old
ones (or migrates them).
"""

from __future__ import annotations

from ..errors import StorageFormatTooNew

#: The storage format this saga writes, and the newest it reads. Format 1: the layout of
#: ARCHITECTURE.md's "Key layout" and the archive's tables at revision 0002.
STORAGE_FORMAT = 1

#: The name of the field (Redis meta hash) and column (archive run row) that hold it.
FORMAT_FIELD = "format"


def checked_format(run_id: str, stored: object) -> int:
    """The storage format of run ``run_id``'s record, given the stored value of its format field
    (None or '' for a record without one: format 1); :class:`StorageFormatTooNew` if this saga
    does not read it (a newer format, or a value that is no format at all)."""
    if stored is None or stored == "":
        return 1
    text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else str(stored)
    number = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= number <= STORAGE_FORMAT:
        raise StorageFormatTooNew(run_id, text, STORAGE_FORMAT)
    return number

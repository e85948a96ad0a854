"""Every error this library raises, under one root.

    SagaError
    ├── SagaDefinitionError     a saga or step declared wrongly (bad name, no steps, ...)
    ├── SettingsError           a SAGA_* environment variable that cannot be used
    ├── InvalidPayload          a payload or step output that is not a JSON object
    ├── KeyConflict             start() with a key already used by a run with another payload
    ├── RunNotFound             no run with that id (never started, or past retention)
    ├── EntryNotFound           no dead-letter entry with that id
    ├── StoreUnavailable        Redis cannot be reached
    │   └── StoreFull           Redis refuses writes: it is at maxmemory
    ├── BrokerUnavailable       the Celery broker cannot be reached to send a task
    ├── CheckpointCorrupted     a stored checkpoint's hash does not match its payload
    ├── DefinitionMismatch      a run was started with another definition of its saga
    ├── SagaTimeout             wait() ran out of time (also a builtin TimeoutError)
    ├── ActionRefused           an operator action that does not apply to the run as it is now
    ├── DeadlineExceeded        a run's deadline passed before it finished: it was compensated
    └── PermanentError          raised by step code: give up now, do not retry
        ├── InvalidOutput       a step returned, but what it returned cannot be used
        ├── OutputConflict      two members of a parallel group wrote the same payload key
        └── Rejected            an expected business outcome: compensate, no dead letter

Every message is one line that says what to do about it; untrusted values in it (run ids,
messages) are cut to a sane length by :func:`cut`.
"""

from __future__ import annotations

#: How long an untrusted value (a run id, an error message, a payload excerpt) may be in a log
#: line or an error message.
CUT = 200


def cut(value: object, limit: int = CUT) -> str:
    """``value`` as text of at most ``limit`` characters (``…`` marks a cut), safe to log: lone
    surrogates are escaped."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SagaError(Exception):
    """Root of every error raised by this library."""


class SagaDefinitionError(SagaError):
    """A saga or one of its steps is declared in a way that cannot run."""


class SettingsError(SagaError):
    """A ``SAGA_*`` setting is missing or malformed."""


class InvalidPayload(SagaError):
    """A payload or a step's return value is not a JSON object."""


class KeyConflict(SagaError):
    """``start()`` was given a key that an existing run was started with, and another payload.

    The same key with the same payload returns the existing run's id and starts nothing; a key
    names one business operation, so a different payload under it is a mistake to fix.
    """

    def __init__(self, saga: str, key: str, run_id: str) -> None:
        super().__init__(saga, key, run_id)
        self.saga, self.key, self.run_id = saga, key, run_id

    def __str__(self) -> str:
        return (
            f"saga {self.saga!r} already has run {self.run_id} started with key {self.key!r} and another "
            "payload; use a new key for a new operation, or the same payload to get that run back"
        )


class RunNotFound(SagaError):
    """No run with this id exists in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"no saga run with id {cut(self.run_id)!r} (check the id; finished runs expire after retention)"


class EntryNotFound(SagaError):
    """No dead-letter entry with this id exists."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(entry_id)
        self.entry_id = entry_id

    def __str__(self) -> str:
        return f"no dead-letter entry with id {cut(self.entry_id)!r} (list them with `saga dlq list`)"


class StoreUnavailable(SagaError):
    """The coordinator's Redis cannot be reached."""


class StoreFull(StoreUnavailable):
    """The coordinator's Redis refuses writes because it reached ``maxmemory`` (with the
    ``noeviction`` policy a store must have). Nothing was written; it works again once memory
    is freed or ``maxmemory`` raised."""


class ArchiveUnavailable(SagaError):
    """The SQL archive (``SAGA_ARCHIVE_URL``) cannot be reached or refused a statement; runs keep
    moving in Redis and the archiver catches up once it answers."""


class ArchiveSchemaMismatch(SagaError):
    """The archive's tables are at another schema revision than this version of saga needs;
    ``saga db upgrade`` applies the migrations."""


class BrokerUnavailable(SagaError):
    """The Celery broker could not take a task message (the run itself is saved)."""


class CheckpointCorrupted(SagaError):
    """A checkpoint's stored hash does not verify against the stored payload."""


class DefinitionMismatch(SagaError):
    """The run was started under a different definition of its saga than this process has."""


class SagaTimeout(SagaError, TimeoutError):
    """``Saga.wait`` gave up before the run reached a terminal status."""


class ActionRefused(SagaError):
    """An operator action (resume, cancel, dead-letter retry or drop) refused for the run's
    current state; the message says what the run is and what can be done instead."""


class PermanentError(SagaError):
    """Raise from a step or compensation to give up at once, without retries.

    A step that raises it goes straight to the dead-letter queue and its saga compensates.
    """


class Rejected(PermanentError):
    """Raise from a step to reject the request as a normal business outcome (insufficient
    funds, an address we do not ship to): the saga compensates at once, like a permanent
    failure, but records no dead letter — nothing needs an operator. The run ends
    ``compensated`` with an error of type ``Rejected`` and a ``saga.rejected`` event. A
    subclass of :class:`PermanentError`, so code that catches that catches this too; raised
    from a compensation it is a permanent failure of the compensation."""


class InvalidOutput(PermanentError):
    """A step's body returned, but its return value cannot be merged into the payload (not a
    JSON object). The body ran to its end, so its effect may have happened: a step declared
    with ``compensate_on_failure=True`` has its own compensation run for it."""


class OutputConflict(PermanentError):
    """Two members of one parallel group returned the same payload key: members must write
    disjoint keys. The member that committed second gives up (its own compensation runs only
    if it was declared with ``compensate_on_failure=True``), and the group unwinds."""


class DeadlineExceeded(SagaError):
    """The error type recorded on a run whose deadline passed before it finished: nothing new
    ran forward after it, and the run's committed steps were compensated. Not raised by the
    library; its name is the ``type`` of the run's ``error``."""

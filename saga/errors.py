"""Every error this library raises, under one root.

    SagaError
    ├── SagaDefinitionError     a saga or step declared wrongly (bad name, no steps, ...)
    ├── SettingsError           a SAGA_* setting that cannot be used (or one that is missing)
    ├── InvalidPayload          start() given a payload, tags, key or deadline that breaks the rules
    ├── KeyConflict             start() with a key already used by a run with another payload
    ├── RunNotFound             no run with that id (never started, or past retention)
    ├── EntryNotFound           no dead-letter entry with that id
    ├── StoreUnavailable        Redis cannot be reached
    │   └── StoreFull           Redis refuses writes: it is at maxmemory
    ├── ArchiveUnavailable      the SQL archive cannot be reached or refused a statement
    ├── ArchiveSchemaMismatch   the archive's tables need `saga db upgrade`
    ├── SagaTimeout             wait() ran out of time (also a builtin TimeoutError)
    ├── ActionRefused           an operator action or query that does not apply as asked
    ├── BrokerUnavailable       (internal) the Celery broker could not take a task message
    ├── CheckpointCorrupted     (internal) recorded on a run whose checkpoint does not verify
    ├── StorageFormatTooNew     a run's record was written by a newer storage format than this saga reads
    └── PermanentError          raised by step code: give up now, do not retry
        ├── InvalidOutput       a step returned, but what it returned cannot be used
        ├── OutputConflict      two members of a parallel group wrote the same payload key
        └── Rejected            an expected business outcome: compensate, no dead letter

Every class ``saga`` exports is raised for the reason its docstring gives, which also says what
to do about it: to the caller of a library call or ``saga`` command, or (``PermanentError`` and
its subclasses) in step code, where it ends the step's attempts and its name becomes the run's
``error.type``. The classes marked *(internal)* are not exported: they never reach a caller (the
engine handles them, or records their name as a run's ``error.type``). A run's ``error.type``
may also be ``DeadlineExceeded``: the name recorded on a run whose deadline passed, not a class.
The ``saga`` command maps these errors to its exit codes (:mod:`saga.cli`).

Every message is one line that says what to do about it; untrusted values in it (run ids,
messages) are cut to a sane length by :func:`cut`.
"""

from __future__ import annotations

#: How long an untrusted value (a run id, an error message, a payload excerpt) may be in a log
#: line or an error message.
CUT = 200


#: What :func:`visible` writes for each character a terminal or a log reader would act on: the
#: C0 controls (``\n``, ``\r``, ``\t``, ``\x1b`` ...), DEL and the C1 controls, the Unicode line
#: and paragraph separators, and the bidirectional overrides and isolates.
_CONTROLS: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def visible(text: str) -> str:
    """``text`` with every control character written as its escape (ESC as ``\\x1b``, a line
    feed as ``\\n``): untrusted text that cannot clear a terminal, recolour it, or start a line
    of its own in a log or a listing. Other characters are kept."""
    return text.translate(_CONTROLS)


def cut(value: object, limit: int = CUT) -> str:
    """``value`` as text of at most ``limit`` characters (``…`` marks a cut), safe to log: lone
    surrogates and control characters are escaped (:func:`visible`)."""
    text = value if isinstance(value, str) else repr(value)
    text = visible(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SagaError(Exception):
    """Root of every error raised by this library."""


class SagaDefinitionError(SagaError):
    """A saga or one of its steps is declared in a way that cannot run: raised where it is
    declared (``Saga(...)``, ``@saga.step``, ``@step.compensate``; a name and version declared
    twice in one registry), when a saga with no steps is started, or when a run needs a saga or
    version this process does not define. Fix the declaration, or import the module that defines
    the saga (``--app``); the message names what is wrong."""


class SettingsError(SagaError):
    """A ``SAGA_*`` setting is malformed or unknown, or one an action needs is missing
    (``SAGA_ARCHIVE_URL`` for a read of the archive): raised when the settings are read from the
    environment (``Settings.from_env``: the default registry on first use, a worker, the
    ``saga`` command) or when the archive or a store is opened with them. Fix the setting the
    message names; nothing was done."""


class InvalidPayload(SagaError):
    """``start()`` (or ``start_async()``) was given a payload that breaks the rules (not a JSON
    object, not JSON-serializable, NaN, a lone surrogate, too deep or over
    ``SAGA_MAX_PAYLOAD_BYTES``), or tags, a start key or a deadline that cannot be used. Nothing
    was written; fix the input, the message names the rule broken. (A step's return value that
    breaks them fails the step with :class:`InvalidOutput` instead.)"""


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
    """No run with this id (or start key) exists in Redis or the archive: raised by the reads of
    a run (``get``, ``events``, ``find``, ``wait``) and the operator actions on one. It was
    never started, or it finished and expired after retention; check the id."""

    def __init__(self, run_id: str, searched: str = "") -> None:
        super().__init__(run_id)
        self.run_id = run_id
        #: where the run was looked for, when both tiers were ("Redis or the archive")
        self.searched = searched

    def __str__(self) -> str:
        if self.searched:
            return (
                f"no saga run with id {cut(self.run_id)!r} in {self.searched} (check the id; a run leaves the "
                "archive only when `saga archive purge` removes it)"
            )
        return f"no saga run with id {cut(self.run_id)!r} (check the id; finished runs expire after retention)"


class EntryNotFound(SagaError):
    """No dead-letter entry with this id is in the queue: raised by ``saga dlq retry`` / ``drop``
    (and the functions behind them). It was retried, dropped or resolved already (``detail``
    then says which, from its run's events), or the id is wrong; list the entries with
    ``saga dlq list``."""

    def __init__(self, entry_id: str, detail: str = "") -> None:
        super().__init__(*((entry_id, detail) if detail else (entry_id,)))
        self.entry_id = entry_id
        self.detail = detail

    def __str__(self) -> str:
        if self.detail:  # the run's events say what closed the entry
            return f"no dead-letter entry with id {cut(self.entry_id)!r} in the queue: {self.detail}"
        return f"no dead-letter entry with id {cut(self.entry_id)!r} (list them with `saga dlq list`)"


class StoreUnavailable(SagaError):
    """The coordinator's Redis cannot be reached (after the connection retries), or
    ``SAGA_REDIS_URL`` names no usable Redis: raised by any call that reads or writes the store.
    Check ``SAGA_REDIS_URL`` and that Redis is up, then retry."""


class StoreFull(StoreUnavailable):
    """The coordinator's Redis refuses writes because it reached ``maxmemory`` (with the
    ``noeviction`` policy a store must have). Nothing was written; it works again once memory
    is freed or ``maxmemory`` raised."""


class ArchiveUnavailable(SagaError):
    """The SQL archive (``SAGA_ARCHIVE_URL``) cannot be reached or refused a statement: raised by
    a read that goes to the archive (``find_runs``, ``get`` of an archived run, ``saga list
    --since``). Check the database and retry; runs keep moving in Redis and the archiver
    catches up once it answers."""


class ArchiveSchemaMismatch(SagaError):
    """The archive's tables are at another schema revision than this version of saga needs:
    raised when the archive is read or written. Run ``saga db upgrade`` (it applies the
    migrations)."""


class StorageFormatTooNew(SagaError):
    """Raised when a run's stored record — its meta hash in Redis, or its row in the archive —
    names a storage format newer than this saga reads (:data:`saga.core.STORAGE_FORMAT`): a
    newer saga wrote it. Nothing is written to the record; upgrade saga where this was raised."""

    def __init__(self, run_id: str, stored: str, known: int) -> None:
        super().__init__(run_id, stored, known)
        self.run_id, self.stored, self.known = run_id, stored, known

    def __str__(self) -> str:
        return (
            f"run {cut(self.run_id)}: stored by storage format {cut(self.stored, 20)}; "
            f"this saga reads formats up to {self.known}: upgrade saga on this machine"
        )


class BrokerUnavailable(SagaError):
    """*(internal, not exported)* The Celery broker could not take a task message. It never
    reaches a caller: the engine logs it (the run itself is saved) and a worker's watchdog sends
    the step again once ``SAGA_DISPATCH_TIMEOUT`` passes."""


class CheckpointCorrupted(SagaError):
    """*(internal, not exported)* Never raised to a caller: the error recorded on a run (its
    ``error.type``, and its dead letter's ``error_type``) when a resume finds that its last
    checkpoint's stored hash does not verify against the stored payload. The run fails instead
    of moving on with damaged data; ``saga verify RUN`` shows what no longer matches."""


class SagaTimeout(SagaError, TimeoutError):
    """``Saga.wait`` / ``wait_async`` (or a wait of :mod:`saga.testing`) gave up after its
    ``timeout`` before the run reached a terminal status. The run goes on: wait again, or look
    at it with ``saga show RUN``. Also a builtin :class:`TimeoutError`."""


class ActionRefused(SagaError):
    """An operator action does not apply to the run as it is now, or a query's input cannot be
    used: raised by ``saga resume`` / ``cancel`` / ``compensate`` / ``dlq retry`` / ``dlq drop``
    (and the :mod:`saga.control` functions behind them) for, e.g., a resume or cancel of a
    finished run, a run leased by a live attempt, a drop without a reason; and by
    :func:`~saga.find_runs` and the archive's listing and purge for a status, cursor or limit
    that cannot be used. Nothing was changed; the message says what the run is and what to do
    instead. The ``saga`` command exits with ``EXIT_REFUSED`` (6)."""


class PermanentError(SagaError):
    """Raise from a step or compensation to give up at once, without retries.

    A step that raises it goes straight to the dead-letter queue and its saga compensates: the
    run ends ``compensated`` with an error of this type. A compensation that raises it is
    dead-lettered and the run ends ``failed``, waiting for an operator (``saga dlq retry``).
    The library raises its subclasses :class:`InvalidOutput` and :class:`OutputConflict` itself,
    in the worker, never to the caller of ``start()``.
    """


class Rejected(PermanentError):
    """Raise from a step to reject the request as a normal business outcome (insufficient
    funds, an address we do not ship to): the saga compensates at once, like a permanent
    failure, but records no dead letter — nothing needs an operator. The run ends
    ``compensated`` with an error of type ``Rejected`` and a ``saga.rejected`` event. A
    subclass of :class:`PermanentError`, so code that catches that catches this too; raised
    from a compensation it is a permanent failure of the compensation."""


class InvalidOutput(PermanentError):
    """Raised in the worker when a step's body returned, but its return value cannot be merged
    into the payload (not a JSON object or None, or breaking the rules of
    :class:`InvalidPayload`): a permanent failure of the step (dead letter, the saga
    compensates; the run's ``error.type`` is ``InvalidOutput``). The body ran to its end, so its
    effect may have happened: a step declared with ``compensate_on_failure=True`` has its own
    compensation run for it. Fix the step to return a JSON object."""


class OutputConflict(PermanentError):
    """Raised in the worker when two members of one parallel group returned the same payload
    key: members must write disjoint keys. The member that committed second gives up (its own
    compensation runs only if it was declared with ``compensate_on_failure=True``), and the
    group unwinds; the run's ``error.type`` is ``OutputConflict``. Fix the members to return
    keys of their own."""

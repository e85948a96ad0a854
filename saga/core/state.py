"""What a run is: its state, its events, and how events make the state. No I/O.

A run's record is its event log. :func:`apply` folds one event into a :class:`SagaState`; it is
the only function that changes a state, and :func:`rebuild` uses it over a whole log, so a
stored snapshot and the log cannot disagree. What *happens next* to a run — the events a
success, failure, cancel or resume produces — is decided in :mod:`saga.core.decide`.

Events are plain JSON objects: ``type`` (an :class:`EventType`), ``run_id``, ``version`` (the
version of the snapshot they belong to), ``at`` (ISO-8601 UTC), ``step`` and ``name`` where a
step is concerned, plus fields of their own. An event that moves the run sets ``status`` and/or
``current_step``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

Event = dict[str, Any]
JSONObject = dict[str, Any]


class Status(StrEnum):
    """Where a run is. The last three are terminal: nothing runs for them any more."""

    PENDING = "pending"  # started; no step has committed yet
    RUNNING = "running"  # steps run forward
    COMPENSATING = "compensating"  # a step gave up; compensations run backwards
    COMPLETED = "completed"  # every step committed
    COMPENSATED = "compensated"  # every committed step with a compensation was undone
    FAILED = "failed"  # a compensation gave up, or the run cannot be trusted: an operator acts

    @property
    def terminal(self) -> bool:
        """True for completed, compensated and failed."""
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.COMPENSATED, Status.FAILED})


class Direction(StrEnum):
    """Which way a task moves a run: a forward step, or a compensation."""

    FORWARD = "forward"
    COMPENSATION = "compensation"


class EventType(StrEnum):
    """Every event name a run's log can hold."""

    SAGA_STARTED = "saga.started"
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_RETRYING = "step.retrying"  # also a compensation's retry, with direction: compensation
    STEP_FAILED = "step.failed"
    COMPENSATION_STARTED = "compensation.started"
    COMPENSATION_SUCCEEDED = "compensation.succeeded"
    COMPENSATION_FAILED = "compensation.failed"
    SAGA_COMPLETED = "saga.completed"
    SAGA_COMPENSATED = "saga.compensated"
    SAGA_FAILED = "saga.failed"
    SAGA_DEAD_LETTERED = "saga.dead_lettered"
    SAGA_RESUMED = "saga.resumed"
    SAGA_CANCELLED = "saga.cancelled"
    SAGA_RETRIED = "saga.retried"
    SAGA_DEAD_LETTER_DROPPED = "saga.dead_letter_dropped"
    SAGA_PARKED = "saga.parked"  # no worker here has the definition the run needs: it waits
    SAGA_COMPENSATION_REQUESTED = "saga.compensation_requested"  # an operator unwinds the run
    SAGA_MESSAGE_REJECTED = "saga.message_rejected"  # a malformed message naming the run was dropped
    SAGA_REJECTED = "saga.rejected"  # a step raised Rejected: compensate, no dead letter
    GROUP_COMPENSATED = "group.compensated"  # every committed member of a group was undone
    SAGA_DEADLINE_EXCEEDED = "saga.deadline_exceeded"  # the run's deadline passed: compensate
    SAGA_DEAD_LETTER_RESOLVED = "saga.dead_letter_resolved"  # the run's end settled an entry


#: Events whose ``error`` field becomes the run's error. A ``compensation.failed`` event with
#: ``keeps_run_error`` (every one written since it existed) sets ``compensation_error`` instead:
#: the run's error stays the failure that made it unwind; one without it (an older run) sets the
#: error as it did when it was written, so old runs fold to the state they stored.
_ERROR_EVENTS = frozenset(
    {EventType.STEP_FAILED, EventType.COMPENSATION_FAILED, EventType.SAGA_FAILED, EventType.SAGA_DEADLINE_EXCEEDED}
)


@dataclass(frozen=True)
class Checkpoint:
    """One committed forward step: its index, name, commit time and the payload hash after it."""

    step: int
    name: str
    at: str
    hash: str


@dataclass(frozen=True)
class StepError:
    """Why a step or compensation gave up."""

    step: int
    name: str
    type: str
    message: str
    attempts: int


@dataclass(frozen=True)
class SagaState:
    """A snapshot of one run at one version.

    ``version`` is 1 after ``start()`` and grows by one with every committed transition.
    ``definition_version`` is the version of the saga's definition the run started with, and
    runs under to its end. ``current_step`` is the 0-based index of the step being run (or
    compensated); it equals the number of steps once a run has completed. ``compensated`` holds
    the indexes of the steps whose compensation committed; ``began``, the group members an unwind
    found begun, not committed (they may have acted: undone too). ``payload`` is a plain JSON object (a ``dict``):
    ``json.dumps(state.payload)`` and ``json.dumps(state.to_dict())`` work. Every read of a run
    returns a state of its own, so changing the dict you received changes nothing stored and no
    other caller's copy.
    """

    id: str
    saga: str
    version: int
    current_step: int
    status: Status
    payload: JSONObject
    checkpoints: tuple[Checkpoint, ...] = ()
    error: StepError | None = None
    created_at: str = ""
    updated_at: str = ""
    definition_version: int = 1
    compensated: tuple[int, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    deadline_at: str = ""
    began: tuple[int, ...] = ()
    compensation_error: StepError | None = None

    def to_dict(self) -> JSONObject:
        """The snapshot as a JSON object (the stored form); :meth:`from_dict` reads it back."""
        deadline = {"deadline_at": self.deadline_at} if self.deadline_at else {}
        return {
            "id": self.id,
            "saga": self.saga,
            "version": self.version,
            "current_step": self.current_step,
            "status": self.status.value,
            "payload": dict(self.payload),
            "checkpoints": [vars(c) for c in self.checkpoints],
            "error": None if self.error is None else vars(self.error),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "definition_version": self.definition_version,
            "compensated": list(self.compensated),
            "tags": dict(self.tags),
            **deadline,
            **({"began": list(self.began)} if self.began else {}),
            **({"compensation_error": vars(self.compensation_error)} if self.compensation_error else {}),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text; ``SagaState.from_dict(json.loads(text))`` reads it back."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SagaState:
        """Inverse of :meth:`to_dict`."""
        error = data.get("error")
        trouble = data.get("compensation_error")
        return cls(
            id=data["id"],
            saga=data["saga"],
            version=int(data["version"]),
            current_step=int(data["current_step"]),
            status=Status(data["status"]),
            payload=dict(data["payload"]),
            checkpoints=tuple(Checkpoint(**c) for c in data.get("checkpoints", ())),
            error=None if error is None else StepError(**error),
            created_at=data.get("created_at", ""),
            updated_at=data.get("updated_at", ""),
            definition_version=int(data.get("definition_version", 1)),
            compensated=tuple(data.get("compensated", ())),
            tags=dict(data.get("tags") or {}),
            deadline_at=data.get("deadline_at") or "",
            began=tuple(data.get("began") or ()),
            compensation_error=None if trouble is None else StepError(**trouble),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SagaState):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.id, self.version))

    @property
    def direction(self) -> Direction:
        """Which way the task at the cursor moves the run: compensating runs undo, others go forward."""
        return Direction.COMPENSATION if self.status is Status.COMPENSATING else Direction.FORWARD

    @property
    def committed_steps(self) -> tuple[int, ...]:
        """Indexes of the forward steps that committed, in order."""
        return tuple(c.step for c in self.checkpoints)


@dataclass(frozen=True)
class Transition:
    """What a decision produced: events to append, and the state after them."""

    state: SagaState
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Shape:
    """The part of a saga definition a run depends on: step names, which can be undone, and
    which are undone also when they themselves give up (``compensate_on_failure``).

    A run records its shape when it starts, so what it must undo is known from the run itself.
    """

    steps: tuple[str, ...]
    compensable: tuple[bool, ...]
    compensate_on_failure: tuple[bool, ...] = ()
    groups: tuple[str, ...] = ()

    def undo_own_failure(self, index: int) -> bool:
        """Whether step ``index``'s compensation runs when that step itself gives up."""
        flags = self.compensate_on_failure
        return index < len(flags) and flags[index] and self.compensable[index]

    def group_of(self, index: int) -> str:
        """The parallel group step ``index`` belongs to ('' for a step that runs alone)."""
        return self.groups[index] if 0 <= index < len(self.groups) else ""

    def stage(self, index: int) -> range:
        """The steps that run together with step ``index``: its group's members (consecutive
        steps of one group name), or the step alone."""
        group = self.group_of(index)
        if not group:
            return range(index, index + 1)
        start, stop = index, index + 1
        while start > 0 and self.group_of(start - 1) == group:
            start -= 1
        while stop < len(self.steps) and self.group_of(stop) == group:
            stop += 1
        return range(start, stop)

    def to_list(self) -> list[list[Any]]:
        """The shape as JSON-able lists (the flag list only when a flag is set or a group is
        declared, the group list only when a group is: a shape from before either existed keeps
        its fingerprint)."""
        lists: list[list[Any]] = [list(self.steps), list(self.compensable)]
        grouped = any(self.groups)
        if any(self.compensate_on_failure) or grouped:
            flags = self.compensate_on_failure or (False,) * len(self.steps)
            lists.append(list(flags))
        if grouped:
            lists.append(list(self.groups))
        return lists

    @classmethod
    def from_list(cls, lists: Sequence[Sequence[Any]]) -> Shape:
        """Inverse of :meth:`to_list`."""
        flags = tuple(bool(f) for f in lists[2]) if len(lists) > 2 else ()
        groups = tuple(str(g) for g in lists[3]) if len(lists) > 3 else ()
        return cls(tuple(lists[0]), tuple(bool(c) for c in lists[1]), flags, groups)

    @cached_property
    def fingerprint(self) -> str:
        """A stable digest of the shape; a run moves only under a definition of the same one."""
        text = json.dumps(self.to_list(), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StepContext:
    """What a step or compensation body knows about the attempt it runs in.

    ``idempotency_key`` is the same for one run, step and direction across every retry and
    redelivery: hand it to an external API and its effect happens once.
    """

    run_id: str
    saga: str
    step: str
    index: int
    attempt: int
    idempotency_key: str
    direction: Direction = Direction.FORWARD


#: A step body: gets a copy of the payload, returns a JSON object to merge into it (or None);
#: an ``async def`` body is awaited.
StepFunction = Callable[[dict[str, Any], StepContext], "dict[str, Any] | None | Awaitable[dict[str, Any] | None]"]
#: A compensation body: gets a copy of the payload; its return value is ignored (awaited if async).
CompensationFunction = Callable[[dict[str, Any], StepContext], "None | Awaitable[None]"]


# --- helpers -------------------------------------------------------------------------------


def now_iso() -> str:
    """The current time, ISO-8601 UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(at: str) -> float:
    """Seconds since the epoch of a time written by :func:`now_iso`."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The canonical JSON text of a payload, the one checkpoint hashes are taken over (sorted
    keys, no spaces, non-ASCII as it is; NaN and Infinity refused with ``ValueError``)."""
    return json.dumps(dict(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def payload_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``payload``."""
    return text_hash(canonical_json(payload))


def text_hash(text: str) -> str:
    """sha256 hex of ``text`` in UTF-8: a payload's hash, given its canonical JSON."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_copy(value: JSONObject) -> JSONObject:
    """A deep copy of a JSON object, sharing nothing with it: what each step body gets."""
    copied: JSONObject = json.loads(json.dumps(value))
    return copied


def describe_error(error: BaseException, limit: int = 2000) -> tuple[str, str]:
    """An exception as (type name, message cut to ``limit`` characters, lone surrogates escaped),
    as events record it."""
    message = str(error).encode("utf-8", "backslashreplace").decode("utf-8")
    return type(error).__name__, message[:limit]


# --- applying events -------------------------------------------------------------------------


def apply(state: SagaState | None, event: Mapping[str, Any]) -> SagaState:
    """Fold one event into a state. The only place where events change a state; it never
    changes the payload dict of ``state`` (a step's output makes a new one)."""
    kind = event["type"]
    if kind == EventType.SAGA_STARTED:
        return SagaState(
            id=event["run_id"],
            saga=event["saga"],
            version=event["version"],
            current_step=0,
            status=Status.PENDING,
            payload=dict(event["payload"]),
            created_at=event["at"],
            updated_at=event["at"],
            definition_version=int(event.get("definition_version", 1)),
            tags=dict(event.get("tags") or {}),
            deadline_at=event.get("deadline_at") or "",
        )
    if state is None:
        raise ValueError(f"event {kind!r} before saga.started")
    if event["version"] < state.version:
        return state  # a note read at an older version, appended after a newer commit
    changes: dict[str, Any] = {}
    if event["version"] != state.version:
        changes.update(version=event["version"], updated_at=event["at"])
    if kind == EventType.STEP_SUCCEEDED:
        changes["payload"] = {**state.payload, **event.get("output", {})}
        changes["checkpoints"] = (
            *state.checkpoints,
            Checkpoint(event["step"], event["name"], event["at"], event["hash"]),
        )
    if kind == EventType.COMPENSATION_SUCCEEDED:
        changes["compensated"] = (*state.compensated, event["step"])
    if event.get("began"):  # members an unwind found begun, not committed: undone too
        changes["began"] = tuple(sorted({*state.began, *event["began"]}))
    if kind == EventType.COMPENSATION_FAILED and event.get("keeps_run_error") and "error" in event:
        changes["compensation_error"] = StepError(**event["error"])
    elif kind in _ERROR_EVENTS and "error" in event:
        changes["error"] = StepError(**event["error"])
    if "status" in event:
        changes["status"] = Status(event["status"])
    if "current_step" in event:
        changes["current_step"] = event["current_step"]
    return replace(state, **changes) if changes else state


def fold(state: SagaState | None, events: Iterable[Mapping[str, Any]]) -> SagaState:
    """Apply events in order."""
    for event in events:
        state = apply(state, event)
    if state is None:
        raise ValueError("no events to fold")
    return state


def rebuild(events: Sequence[Mapping[str, Any]]) -> SagaState:
    """The state a run's whole event log describes."""
    return fold(None, events)

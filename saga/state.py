"""The pure state machine: what a run is, and what happens to it next.

Nothing here does I/O. A *decision* function looks at a :class:`SagaState` and returns the
:class:`Transition` it causes: the events to append, and the state those events produce. The
state is always ``fold(previous, events)``, computed by :func:`apply`, the same function that
:func:`rebuild` uses over the whole event log, so a stored snapshot and the log cannot disagree.

Events are plain JSON objects: ``type``, ``run_id``, ``version`` (the version of the snapshot
they belong to), ``at`` (ISO-8601 UTC), ``step`` and ``name`` where a step is concerned, plus
fields of their own. An event that moves the run sets ``status`` and/or ``current_step``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any

from .errors import InvalidPayload

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
    """An immutable snapshot of one run at one version.

    ``version`` is 1 after ``start()`` and grows by one with every committed transition.
    ``current_step`` is the 0-based index of the step being run (or compensated); it equals the
    number of steps once a run has completed. ``payload`` is read-only.
    """

    id: str
    saga: str
    version: int
    current_step: int
    status: Status
    payload: Mapping[str, Any]
    checkpoints: tuple[Checkpoint, ...] = ()
    error: StepError | None = None
    created_at: str = ""
    updated_at: str = ""

    def to_dict(self) -> JSONObject:
        """The snapshot as a JSON object (the stored form)."""
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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SagaState:
        """Inverse of :meth:`to_dict`."""
        error = data.get("error")
        return cls(
            id=data["id"],
            saga=data["saga"],
            version=int(data["version"]),
            current_step=int(data["current_step"]),
            status=Status(data["status"]),
            payload=MappingProxyType(dict(data["payload"])),
            checkpoints=tuple(Checkpoint(**c) for c in data.get("checkpoints", ())),
            error=None if error is None else StepError(**error),
            created_at=data.get("created_at", ""),
            updated_at=data.get("updated_at", ""),
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
    """The part of a saga definition a run depends on: step names and which can be undone."""

    steps: tuple[str, ...]
    compensable: tuple[bool, ...]

    @cached_property
    def fingerprint(self) -> str:
        """A stable digest of the shape; a run refuses to move under a different one."""
        text = json.dumps([list(self.steps), list(self.compensable)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- helpers -------------------------------------------------------------------------------


def now_iso() -> str:
    """The current time, ISO-8601 UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(at: str) -> float:
    """Seconds since the epoch of a time written by :func:`now_iso`."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The canonical JSON text of a payload, the one checkpoint hashes are taken over."""
    return json.dumps(dict(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def payload_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``payload``."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def require_json_object(value: object, what: str) -> JSONObject:
    """Return ``value`` as a plain dict if it is a JSON-serializable object, else raise."""
    if not isinstance(value, dict):
        raise InvalidPayload(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serializable: {exc}") from None
    loaded: JSONObject = json.loads(text)
    return loaded


def retry_delay(attempt: int, backoff: float, backoff_max: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter over
    ``min(backoff_max, backoff * 2**(attempt-1))``."""
    ceiling = min(backoff_max, backoff * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


# --- applying events -------------------------------------------------------------------------


def apply(state: SagaState | None, event: Mapping[str, Any]) -> SagaState:
    """Fold one event into a state. The only place where events change a state."""
    kind = event["type"]
    if kind == "saga.started":
        return SagaState(
            id=event["run_id"],
            saga=event["saga"],
            version=event["version"],
            current_step=0,
            status=Status.PENDING,
            payload=MappingProxyType(dict(event["payload"])),
            created_at=event["at"],
            updated_at=event["at"],
        )
    if state is None:
        raise ValueError(f"event {kind!r} before saga.started")
    changes: dict[str, Any] = {}
    if event["version"] != state.version:
        changes.update(version=event["version"], updated_at=event["at"])
    if kind == "step.succeeded":
        merged = {**state.payload, **event.get("output", {})}
        changes["payload"] = MappingProxyType(merged)
        changes["checkpoints"] = (
            *state.checkpoints,
            Checkpoint(event["step"], event["name"], event["at"], event["hash"]),
        )
    if kind in ("step.failed", "compensation.failed", "saga.failed") and "error" in event:
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


# --- decisions --------------------------------------------------------------------------------


class _Builder:
    """Collects the events of one transition, stamping run id, version and time."""

    def __init__(self, state: SagaState | None, run_id: str, bump: bool, at: str) -> None:
        self.run_id = run_id
        self.version = (state.version if state else 0) + (1 if bump else 0)
        self.at = at
        self.events: list[Event] = []

    def add(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "run_id": self.run_id, "version": self.version, "at": self.at, **fields})


def _step(shape: Shape, index: int) -> dict[str, Any]:
    return {"step": index, "name": shape.steps[index]}


def _transition(state: SagaState | None, b: _Builder) -> Transition:
    return Transition(fold(state, b.events), b.events)


def decide_start(run_id: str, saga: str, payload: JSONObject, at: str | None = None) -> Transition:
    """A new run: version 1, pending, cursor on step 0."""
    b = _Builder(None, run_id, bump=True, at=at or now_iso())
    b.add("saga.started", saga=saga, payload=payload)
    return _transition(None, b)


def started_event(run_id: str, shape: Shape, direction: Direction, index: int, at: str | None = None) -> Event:
    """The ``step.started`` / ``compensation.started`` event of an attempt, without the two fields
    only the store knows when it takes the lease: ``attempt`` and ``version``. It changes nothing
    in the snapshot."""
    kind = "step.started" if direction is Direction.FORWARD else "compensation.started"
    return {"type": kind, "run_id": run_id, "at": at or now_iso(), **_step(shape, index)}


def note_event(state: SagaState, kind: str, at: str | None = None, **fields: Any) -> Event:
    """An event that changes nothing in the snapshot (a resume, an operator's note), at the
    state's version."""
    b = _Builder(state, state.id, bump=False, at=at or now_iso())
    b.add(kind, **fields)
    return b.events[0]


def resumed_event(state: SagaState, shape: Shape, reason: str, at: str | None = None) -> Event:
    """``saga.resumed``: the run goes on at its cursor from this version."""
    return note_event(state, "saga.resumed", at, **_step(shape, state.current_step),
                      direction=state.direction.value, reason=reason, from_version=state.version)


def decide_step_succeeded(
    state: SagaState, shape: Shape, index: int, output: JSONObject | None, at: str | None = None
) -> Transition:
    """Step ``index`` committed: merge its output, checkpoint, move on (a pending run becomes
    running) or complete."""
    at = at or now_iso()
    b = _Builder(state, state.id, bump=True, at=at)
    out = output or {}
    digest = payload_hash({**state.payload, **out})
    last = index + 1 == len(shape.steps)
    moves: dict[str, Any] = {"current_step": index + 1}
    if state.status is Status.PENDING and not last:
        moves["status"] = Status.RUNNING.value
    b.add("step.succeeded", **_step(shape, index), output=out, hash=digest, **moves)
    if last:
        b.add("saga.completed", status=Status.COMPLETED.value)
    return _transition(state, b)


def decide_retry(
    state: SagaState, shape: Shape, direction: Direction, index: int, attempt: int,
    error: BaseException, delay: float, at: str | None = None,
) -> Event:
    """An attempt failed and will be tried again after ``delay`` seconds (event only).

    Compensation retries are ``step.retrying`` events too, with ``direction: compensation``.
    """
    b = _Builder(state, state.id, bump=False, at=at or now_iso())
    b.add("step.retrying", **_step(shape, index), direction=direction.value, attempt=attempt,
          delay=round(delay, 3), **_describe(error))
    return b.events[0]


def _describe(error: BaseException) -> dict[str, str]:
    return {"error_type": type(error).__name__, "error_message": str(error)[:2000]}


def dead_letter_entry(
    state: SagaState, name: str, direction: Direction, index: int, error: BaseException,
    attempts: int, at: str,
) -> JSONObject:
    """The dead-letter entry recorded when a step or compensation gives up.

    Its id is ``<run id>.<version that records it>``: unique, and stable if the commit is retried.
    """
    return {
        "id": f"{state.id}.{state.version + 1}",
        "run_id": state.id,
        "saga": state.saga,
        "step": name,
        "index": index,
        "kind": direction.value,
        "error_type": type(error).__name__,
        "error_message": str(error)[:2000],
        "attempts": attempts,
        "at": at,
    }


def _error_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The ``error`` field of a state, from the dead-letter entry of the same failure."""
    return {"step": entry["index"], "name": entry["step"], "type": entry["error_type"],
            "message": entry["error_message"], "attempts": entry["attempts"]}


def next_compensation(state: SagaState, shape: Shape, below: int) -> int | None:
    """The highest committed step under ``below`` that defines a compensation, if any."""
    for index in sorted(state.committed_steps, reverse=True):
        if index < below and shape.compensable[index]:
            return index
    return None


def decide_step_gave_up(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int,
    at: str | None = None,
) -> tuple[Transition, JSONObject]:
    """Step ``index`` gave up: dead-letter it, then unwind (or end compensated if nothing to undo)."""
    at = at or now_iso()
    entry = dead_letter_entry(state, shape.steps[index], Direction.FORWARD, index, error, attempts, at)
    b = _Builder(state, state.id, bump=True, at=at)
    b.add("step.failed", **_step(shape, index), error=_error_of(entry))
    target = next_compensation(state, shape, below=index)
    if target is None:
        b.add("saga.dead_lettered", **_step(shape, index), entry=entry)
        b.add("saga.compensated", status=Status.COMPENSATED.value)
    else:
        b.add("saga.dead_lettered", **_step(shape, index), entry=entry,
              status=Status.COMPENSATING.value, current_step=target)
    return _transition(state, b), entry


def decide_compensation_succeeded(
    state: SagaState, shape: Shape, index: int, at: str | None = None
) -> Transition:
    """Compensation ``index`` committed: move to the next one down, or end compensated."""
    b = _Builder(state, state.id, bump=True, at=at or now_iso())
    target = next_compensation(state, shape, below=index)
    if target is None:
        b.add("compensation.succeeded", **_step(shape, index))
        b.add("saga.compensated", status=Status.COMPENSATED.value)
    else:
        b.add("compensation.succeeded", **_step(shape, index), current_step=target)
    return _transition(state, b)


def decide_compensation_gave_up(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int,
    at: str | None = None,
) -> tuple[Transition, JSONObject]:
    """Compensation ``index`` gave up: the unwind is stuck; the run fails and waits for an operator."""
    at = at or now_iso()
    entry = dead_letter_entry(state, shape.steps[index], Direction.COMPENSATION, index, error, attempts, at)
    b = _Builder(state, state.id, bump=True, at=at)
    b.add("compensation.failed", **_step(shape, index), error=_error_of(entry))
    b.add("saga.dead_lettered", **_step(shape, index), entry=entry)
    b.add("saga.failed", status=Status.FAILED.value)
    return _transition(state, b), entry


def decide_fail(
    state: SagaState, step_name: str, error: BaseException, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """The run cannot be trusted to move (corrupt checkpoint, definition drift): it fails and is
    dead-lettered, so an operator sees it."""
    at = at or now_iso()
    entry = dead_letter_entry(state, step_name, state.direction, state.current_step, error, 0, at)
    b = _Builder(state, state.id, bump=True, at=at)
    b.add("saga.dead_lettered", step=state.current_step, name=step_name, entry=entry)
    b.add("saga.failed", status=Status.FAILED.value, error=_error_of(entry))
    return _transition(state, b), entry


def decide_cancel(state: SagaState, shape: Shape, reason: str, at: str | None = None) -> Transition:
    """An operator cancels a pending or running run: unwind the committed steps."""
    b = _Builder(state, state.id, bump=True, at=at or now_iso())
    target = next_compensation(state, shape, below=state.current_step)
    if target is None:
        b.add("saga.cancelled", reason=reason)
        b.add("saga.compensated", status=Status.COMPENSATED.value)
    else:
        b.add("saga.cancelled", reason=reason, status=Status.COMPENSATING.value, current_step=target)
    return _transition(state, b)


def decide_retry_compensation(
    state: SagaState, shape: Shape, index: int, entry_id: str, at: str | None = None
) -> Transition:
    """An operator retries a stuck compensation: the failed run unwinds again from ``index``."""
    b = _Builder(state, state.id, bump=True, at=at or now_iso())
    b.add("saga.resumed", **_step(shape, index), direction=Direction.COMPENSATION.value,
          reason="dead letter retried", entry_id=entry_id, from_version=state.version,
          status=Status.COMPENSATING.value, current_step=index)
    return _transition(state, b)

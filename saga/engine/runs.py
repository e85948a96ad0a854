"""What happens to a whole run, beyond one step's commit: starting it (with its deadline),
resuming it (a parallel group's members one by one), cancelling it, expiring it at its
deadline, parking it, failing it, and an operator's unwind. Every transition goes through
:func:`saga.engine.commit_and_follow`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ..core import (
    Direction,
    SagaState,
    Status,
    Transition,
    codec,
    cut,
    decide,
    now_iso,
    parse_iso,
    policy,
    stages,
    validated,
    validated_tags,
)
from ..errors import CheckpointCorrupted, InvalidPayload, KeyConflict, RunNotFound, SagaDefinitionError
from ..store import CommitOptions, CommitResult, CreateOutcome, Message, ParkOutcome, RedisStore, lane_id
from . import metrics
from .commit import Runtime, commit_and_follow, dispatch, next_message, send_step, settle_group

#: Namespace of run ids derived from (saga, start key).
_KEY_NAMESPACE = uuid.UUID("5a6a0000-0000-4000-8000-000000000000")
#: The longest start key.
MAX_KEY = 1000


def run_id_for_key(saga: str, key: str) -> str:
    """The id of the run of saga ``saga`` started with business key ``key`` (the same in every
    process: a run started with a key can be looked up by it)."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{saga}\0{key}"))


@dataclass(frozen=True)
class NewRun:
    """A run about to be written: its start transition, and what :meth:`RedisStore.create`
    takes beside it. Built by :func:`prepare_start`, written by a sync or an async store."""

    rt: Runtime
    key: str | None
    start: Transition
    check_at: float
    message: Message | None
    deadline: float | None

    @property
    def run_id(self) -> str:
        """The new run's id."""
        return self.start.state.id


def prepare_start(
    rt: Runtime,
    payload: object,
    key: str | None,
    tags: object = None,
    deadline: object = None,
    retry_of: Mapping[str, str] | None = None,
) -> NewRun:
    """Check a start's arguments and build version 1 of the run (nothing written yet).
    ``deadline``: seconds from now after which the run, if not finished, is compensated;
    ``retry_of``: the run and dead-letter entry a run started again from a dead letter retries."""
    shape = rt.definition.shape
    if not shape.steps:
        raise SagaDefinitionError(f"saga {rt.name!r} has no steps; declare them with @saga.step")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY):
        raise InvalidPayload(f"the start key must be a string of 1 to {MAX_KEY} characters, got {cut(key, 40)}")
    s = rt.settings
    body = validated(payload, "the saga payload", max_bytes=s.max_payload_bytes, max_depth=s.max_payload_depth)
    run_tags = validated_tags(tags)
    seconds = validated_deadline(deadline)
    run_id = run_id_for_key(rt.name, key) if key is not None else str(uuid.uuid4())
    at = now_iso()
    deadline_at = _later(at, seconds) if seconds is not None else ""
    start = decide.decide_start(
        run_id,
        rt.name,
        body,
        at,
        definition_version=rt.definition.version,
        tags=run_tags,
        deadline_at=deadline_at,
        retry_of=retry_of,
    )
    until = parse_iso(deadline_at) if deadline_at else None
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    if until is not None:
        check_at = min(check_at, until)
    return NewRun(rt, key, start, check_at, next_message(rt, start.state), until)


def started(new: NewRun, outcome: CreateOutcome) -> bool:
    """What a start does once the store answered ``outcome``: raise :class:`KeyConflict` for a
    key started with another payload; return whether the first step's message is still to be
    sent (the store did not push it in its script)."""
    if outcome is CreateOutcome.CONFLICT:
        raise KeyConflict(new.rt.name, new.key or "", new.run_id)
    return outcome is CreateOutcome.CREATED and new.message is None


def start_run(
    rt: Runtime,
    payload: object,
    key: str | None,
    tags: object = None,
    deadline: object = None,
    retry_of: Mapping[str, str] | None = None,
) -> str:
    """Write version 1 of a new run under ``rt``'s definition and send its first step; returns
    the run id. ``deadline``: seconds from now after which the run, if not finished, is
    compensated (None: no deadline); ``retry_of``: see :func:`prepare_start`.

    With ``key`` the run id is derived from (saga, key), so a second start with the same key and
    payload writes nothing and returns the same id, also when processes race; with another
    payload it raises :class:`~saga.errors.KeyConflict`.
    """
    new = prepare_start(rt, payload, key, tags, deadline, retry_of)
    outcome = rt.store.create(
        rt.definition.shape, new.start, key, check_at=new.check_at, message=new.message, deadline=new.deadline
    )
    if started(new, outcome):
        dispatch(rt, new.start.state, first=True)
    return new.run_id


#: The longest deadline a run may have: 100 years, in seconds (a later time cannot be written).
MAX_DEADLINE_SECONDS = 100 * 365 * 24 * 3600


def validated_deadline(deadline: object) -> float | None:
    """A run's deadline in seconds from its start: a number more than 0 and at most
    :data:`MAX_DEADLINE_SECONDS` (not a bool, NaN or infinite), or None; :class:`InvalidPayload`
    saying the allowed range otherwise."""
    if deadline is None:
        return None
    allowed = f"a deadline must be a number of seconds, more than 0 and at most {MAX_DEADLINE_SECONDS} (100 years)"
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise InvalidPayload(f"{allowed}, got {cut(deadline, 40)}")
    if not 0 < deadline <= MAX_DEADLINE_SECONDS:  # NaN is refused too: it compares false
        shown = cut(deadline, 40) if isinstance(deadline, float) or abs(deadline) < 10**40 else "a longer number"
        raise InvalidPayload(f"{allowed}, got {shown}")
    return float(deadline)


def _later(at: str, seconds: float) -> str:
    """The ISO-8601 time ``seconds`` after ``at``."""
    return codec.iso(codec.micros(at) + round(seconds * 1_000_000))


def expire(rt: Runtime, state: SagaState, *, by_name: bool = False, undo_running: bool = False) -> bool:
    """The run's deadline passed while it went forward: commit ``saga.deadline_exceeded``,
    fencing every attempt that runs now (its result is discarded), and unwind its committed
    steps. ``by_name``: ``rt`` holds the run's recorded definition only (no worker here
    defines it), so its compensations run by step name, as for an operator's unwind.
    A step at the cursor whose attempt began and may have acted is compensated too: with
    ``undo_running``, or as the run's events show (:func:`saga.stages.unrecorded`, read here:
    e.g. a killed attempt's step, when a resumed delivery finds the deadline passed) — at a
    parallel group, every such member, with the committed ones."""
    shape = rt.definition.shape
    began = stages.unrecorded(rt.store.reads.events(state.id), shape, state.current_step)
    transition = decide.decide_deadline_exceeded(state, shape, undo_running=undo_running, began=began)
    options = CommitOptions(fence_all=True, watch=rt.group_lanes(state), operator_unwind=by_name)
    result = commit_and_follow(rt, state, transition, options)
    if result.applied:
        metrics.run_expired(rt.name)
        rt.log(state.id).warning("deadline %s passed: fenced and unwinding", state.deadline_at)
    return result.applied


def fail_run(rt: Runtime, state: SagaState, step_name: str, error: Exception) -> bool:
    """End a run that cannot be trusted to move: ``failed``, with a dead letter saying why."""
    transition, entry = decide.decide_fail(state, step_name, error)
    result = commit_and_follow(rt, state, transition, CommitOptions(dead_entry=entry))
    rt.log(state.id, step_name).error("run failed: %s", error)
    return result.applied


def park(store: RedisStore, state: SagaState, reason: str, log: logging.LoggerAdapter[logging.Logger]) -> bool:
    """Park a run this process cannot move (its definition is missing or differs): it waits,
    untouched, with a ``saga.parked`` event saying why, until a worker with its definition
    resumes it. True when it was parked now."""
    outcome = store.park(state, decide.parked_event(state, reason), reason)
    if outcome is ParkOutcome.PARKED:
        metrics.run_parked(state.saga)
        log.warning("parked: %s", reason)
    return outcome is ParkOutcome.PARKED


def compensate(rt: Runtime, state: SagaState, reason: str) -> CommitResult:
    """An operator's unwind: compensate the run's committed steps not compensated yet, newest
    first, through their compensation tasks by name; refused while an attempt holds a lease
    (any member's, at a parallel group). At a parallel group, its members that began and may
    have acted without a record are compensated too, and every lane is fenced."""
    shape = rt.definition.shape
    members = shape.stage(state.current_step) if rt.in_group(state.current_step) else range(0)
    lanes = tuple(lane_id(d.value, i) for i in members for d in Direction)
    began = stages.unrecorded(rt.store.reads.events(state.id), shape, state.current_step) if lanes else []
    transition = decide.decide_compensate(state, shape, reason, began=began)
    options = CommitOptions(refuse_while_leased=True, operator_unwind=True, watch=lanes, fence_all=bool(lanes))
    result = commit_and_follow(rt, state, transition, options)
    if result.applied:
        rt.store.indexes.forget_parked([state.id])
        rt.log(state.id).warning("compensation requested by an operator: %s", reason)
    return result


def retry_compensation(rt: Runtime, state: SagaState, index: int, entry_id: str) -> bool:
    """Unwind a failed run again from compensation ``index`` (an operator retried its dead
    letter). False when the run moved meanwhile."""
    transition = decide.decide_retry_compensation(state, rt.definition.shape, index, entry_id)
    return commit_and_follow(rt, state, transition).applied


def resume(rt: Runtime, run_id: str, reason: str) -> SagaState | None:
    """Resume ``run_id`` at its cursor, unless something is moving it already.

    A run started under another definition than ``rt``'s is parked, not moved. A last checkpoint
    whose hash does not verify fails the run, with a dead letter. Otherwise ``saga.resumed`` is
    appended with a new fencing token (so a late attempt of the old lease cannot commit), the
    run leaves the parked runs, and the task at the cursor is sent. Returns the state resumed
    from, or None when the run was not resumed.
    """
    store = rt.store
    state = store.reads.get(run_id)
    if state.status.terminal:
        store.indexes.forget_active(run_id)
        return None
    step_name = rt.step_name(state.current_step)
    log = rt.log(run_id, step_name)
    shape = rt.definition.shape
    stored = store.reads.progress(run_id).fingerprint
    if stored != shape.fingerprint:
        why = policy.drift_reason(rt.name, state.definition_version, stored, shape.fingerprint)
        park(store, state, why, log)
        return None
    problem = policy.checkpoint_problem(state)
    if problem:
        fail_run(rt, state, step_name, CheckpointCorrupted(problem + "; not resumed"))
        return None
    if rt.in_group(state.current_step):
        return _resume_members(rt, state, reason)
    event = decide.resumed_event(state, shape, reason)
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    ok, detail = store.note_events(
        state, [event], expected_version=state.version, require_idle=True, fence=True, unpark=True, check_at=check_at
    )
    if not ok:
        log.info("not resumed (%s): the run is moving", detail)
        return None
    dispatch(rt, state)
    metrics.resumed(rt.name, policy.resume_cause(reason))
    log.warning("resumed from version %d (%s)", state.version, reason)
    return state


def _resume_members(rt: Runtime, state: SagaState, reason: str) -> SagaState | None:
    """Resume the members due at the parallel group at the run's cursor whose lane is idle, each
    with a ``saga.resumed`` event naming it and a new fence for its lane; a group whose unwind
    has nothing left to send is settled. Members that committed, or run, are left alone."""
    shape = rt.definition.shape
    due = stages.lanes_due(state, shape)
    if not due:
        return state if settle_group(rt, state) else None
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    resumed = []
    for index in due:
        event = decide.resumed_event(state, shape, reason, index=index)
        ok, _ = rt.store.note_events(
            state,
            [event],
            expected_version=state.version,
            require_idle=True,
            fence=True,
            unpark=True,
            check_at=check_at,
            lane=lane_id(state.direction.value, index),
        )
        if ok:
            send_step(rt, state, index, state.direction)
            resumed.append(shape.steps[index])
    if not resumed:
        return None
    metrics.resumed(rt.name, policy.resume_cause(reason))
    rt.log(state.id).warning("resumed %s from version %d (%s)", ", ".join(resumed), state.version, reason)
    return state


def settle_if_unwinding(rt: Runtime, run_id: str, index: int) -> None:
    """A member that may no longer begin (its group unwinds) may have been the last thing the
    group's unwind waited for: settle the group if nothing is left to do in it."""
    try:
        state = rt.store.reads.get(run_id)
    except RunNotFound:
        return
    if state.status is Status.COMPENSATING and state.current_step == rt.definition.shape.stage(index).start:
        settle_group(rt, state)

"""Operator actions on runs and dead letters; each CLI command is one call into this module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import state as sm
from .definition import default_store, find_saga
from .errors import RunNotFound, SagaError
from .recovery import checkpoint_problem
from .recovery import resume as resume_run
from .state import Direction, SagaState, Status
from .tasks import apply_cancel, dispatch

if TYPE_CHECKING:
    from .store import RedisStore


def load_app(path: str) -> None:
    """Import ``path`` (as ``celery -A path`` would) so the sagas it defines are known here."""
    try:
        importlib.import_module(path)
    except ImportError as exc:
        raise SagaError(f"cannot import {path!r} ({exc}); pass the module that defines your sagas with --app") from None


def _store(store: RedisStore | None) -> RedisStore:
    return store if store is not None else default_store()


def list_runs(*, status: str | None = None, saga: str | None = None, limit: int = 50,
              store: RedisStore | None = None) -> list[SagaState]:
    """Runs, newest first, filtered by status and saga name; at most ``limit``."""
    st = _store(store)
    if status is not None and status not in {s.value for s in Status}:
        raise SagaError(f"unknown status {status!r}; one of: {', '.join(s.value for s in Status)}")
    found: list[SagaState] = []
    ids = st.run_ids()
    for start in range(0, len(ids), 500):
        for state in st.snapshots(ids[start : start + 500]):
            if state is None or (status and state.status.value != status) or (saga and state.saga != saga):
                continue
            found.append(state)
            if len(found) >= limit:
                return found
    return found


def verify(run_id: str, *, store: RedisStore | None = None) -> list[str]:
    """Problems with a run's records: [] when the state rebuilt from its events equals the stored
    state, versions run 1..n without gaps, and every checkpoint hash verifies."""
    st = _store(store)
    problems: list[str] = []
    stored = st.get(run_id)
    rebuilt = sm.rebuild(st.events(run_id))
    if rebuilt != stored:
        a, b = rebuilt.to_dict(), stored.to_dict()
        fields = sorted(k for k in a if a[k] != b.get(k))
        problems.append(f"state rebuilt from events differs from the stored state in: {', '.join(fields)}")
    history = st.history(run_id)
    versions = [s.version for s in history]
    if versions != list(range(1, len(history) + 1)):
        problems.append(f"versions are not 1..{len(history)} without gaps: {versions}")
    # only a step's commit changes the payload, so every version must match its last checkpoint
    for snap in history:
        problem = checkpoint_problem(snap)
        if problem:
            problems.append(f"at version {snap.version}, {problem}")
    return problems


def resume(run_id: str, *, reason: str = "operator", store: RedisStore | None = None) -> SagaState:
    """Resume an unfinished run at its cursor (see :func:`saga.recovery.resume`)."""
    st = _store(store)
    state = st.get(run_id)
    if state.status.terminal:
        raise SagaError(f"run {run_id} is {state.status.value}; only an unfinished run can be resumed")
    saga = find_saga(state.saga)
    if resume_run(saga, run_id, reason) is None:
        after = st.get(run_id)
        if after.status is Status.FAILED:
            raise SagaError(f"run {run_id} could not be resumed and failed: {after.error and after.error.message}")
        raise SagaError(f"run {run_id} is being run right now (its lease is live); nothing to resume")
    return st.get(run_id)


def cancel(run_id: str, *, reason: str = "operator", store: RedisStore | None = None) -> SagaState:
    """Stop a run's forward progress and compensate the steps that committed.

    If a step is running, the cancel is recorded and applied when that step commits (its effect
    then committed, so it is compensated too). Returns the state after the request.
    """
    st = _store(store)
    state = st.get(run_id)
    if state.status is not Status.PENDING and state.status is not Status.RUNNING:
        raise SagaError(f"run {run_id} is {state.status.value}; only a pending or running run can be cancelled")
    saga = find_saga(state.saga)
    if not apply_cancel(saga, state, reason):
        st.request_cancel(run_id, reason)
    return st.get(run_id)


def retry_dead_letter(entry_id: str, *, store: RedisStore | None = None) -> str:
    """Act on a dead-letter entry and take it off the queue; returns the run id that goes on.

    A compensation entry of a failed run continues the unwind at that compensation. A forward
    entry of a compensated run starts a new run with the original input, linked to the old one.
    """
    st = _store(store)
    entry = st.dead_letter(entry_id)
    try:
        state = st.get(entry["run_id"])
    except RunNotFound:
        raise SagaError(f"run {entry['run_id']} of entry {entry_id} has expired; drop the entry instead") from None
    saga = find_saga(state.saga)
    if entry["kind"] == Direction.COMPENSATION.value and state.status is Status.FAILED:
        moved = sm.decide_retry_compensation(state, saga.shape, int(entry["index"]), entry_id)
        if not st.commit(state, moved).applied:
            raise SagaError(f"run {state.id} changed meanwhile; try again")
        st.remove_dead_letter(entry_id)
        dispatch(saga, moved.state)
        return state.id
    if entry["kind"] == Direction.FORWARD.value and state.status is Status.COMPENSATED:
        original = st.events(state.id)[0]["payload"]
        new_id = saga.start(original, key=f"retry:{entry_id}")
        st.note(state.id, [sm.note_event(state, "saga.retried", entry_id=entry_id, new_run_id=new_id)])
        st.remove_dead_letter(entry_id)
        return new_id
    raise SagaError(f"entry {entry_id} ({entry['kind']}) cannot be retried while run {state.id} is "
                    f"{state.status.value}")


def drop_dead_letter(entry_id: str, *, reason: str, store: RedisStore | None = None) -> None:
    """Take an entry off the queue without acting on it; the reason is recorded as an event."""
    st = _store(store)
    entry = st.dead_letter(entry_id)
    if not reason.strip():
        raise SagaError("a reason is required to drop a dead-letter entry")
    try:
        state = st.get(entry["run_id"])
        st.note(state.id, [sm.note_event(state, "saga.dead_letter_dropped", entry_id=entry_id, reason=reason)])
    except RunNotFound:
        pass  # the run expired; the entry goes all the same
    st.remove_dead_letter(entry_id)


__all__ = ["cancel", "drop_dead_letter", "list_runs", "load_app", "resume", "retry_dead_letter", "verify"]

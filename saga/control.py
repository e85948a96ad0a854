"""Operator actions on runs and dead letters; each CLI command is one call into this module.

Every action takes ``registry`` (the default registry when not given) and uses exactly one
store: that registry's. What an action decides is asked of :mod:`saga.decide`; what it commits
goes through :mod:`saga.engine`. A refusal raises :class:`~saga.errors.ActionRefused` with a
message saying what the run is and what can be done instead.
"""

from __future__ import annotations

import importlib

from . import decide, engine, policy
from .errors import ActionRefused, RunNotFound, SagaError
from .registry import Registry, default_registry
from .state import EventType, JSONObject, SagaState, Status, rebuild


def load_app(path: str) -> None:
    """Import ``path`` (as ``celery -A path`` would) so the sagas it defines are known here."""
    try:
        importlib.import_module(path)
    except ImportError as exc:
        raise SagaError(f"cannot import {path!r} ({exc}); pass the module that defines your sagas with --app") from None


def _registry(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def list_runs(
    *, status: str | None = None, saga: str | None = None, limit: int = 50, registry: Registry | None = None
) -> list[SagaState]:
    """Runs, newest first, filtered by status and saga name; at most ``limit``."""
    store = _registry(registry).store
    if status is not None and status not in {s.value for s in Status}:
        raise SagaError(f"unknown status {status!r}; one of: {', '.join(s.value for s in Status)}")
    found: list[SagaState] = []
    ids = store.run_ids()
    for start in range(0, len(ids), 500):
        for state in store.snapshots(ids[start : start + 500]):
            if state is None or (status and state.status.value != status) or (saga and state.saga != saga):
                continue
            found.append(state)
            if len(found) >= limit:
                return found
    return found


def verify(run_id: str, *, registry: Registry | None = None) -> list[str]:
    """Problems with a run's records (see :func:`saga.policy.verify_records`); [] when it verifies."""
    store = _registry(registry).store
    stored = store.get(run_id)
    return policy.verify_records(stored, rebuild(store.events(run_id)), store.history(run_id))


def resume(run_id: str, *, reason: str = "operator", registry: Registry | None = None) -> SagaState:
    """Resume an unfinished run at its cursor (see :func:`saga.engine.resume`)."""
    reg = _registry(registry)
    state = reg.store.get(run_id)
    if state.status.terminal:
        raise ActionRefused(f"run {run_id} is {state.status.value}; only an unfinished run can be resumed")
    if engine.resume(reg.runtime_for(state.saga), run_id, reason) is None:
        after = reg.store.get(run_id)
        if after.status is Status.FAILED:
            message = after.error.message if after.error else ""
            raise ActionRefused(f"run {run_id} could not be resumed and failed: {message}")
        raise ActionRefused(f"run {run_id} is being run right now (its lease is live); nothing to resume")
    return reg.store.get(run_id)


def cancel(run_id: str, *, reason: str = "operator", registry: Registry | None = None) -> SagaState:
    """Stop a run's forward progress and compensate the steps that committed.

    If a step is running, the cancel is recorded and applied when that step commits (its effect
    then committed, so it is compensated too). Returns the state after the request.
    """
    reg = _registry(registry)
    state = reg.store.get(run_id)
    if state.status is not Status.PENDING and state.status is not Status.RUNNING:
        raise ActionRefused(f"run {run_id} is {state.status.value}; only a pending or running run can be cancelled")
    if not engine.cancel_now(reg.runtime_for(state.saga), state, reason):
        reg.store.request_cancel(run_id, reason)
    return reg.store.get(run_id)


def dead_letters(registry: Registry | None = None) -> list[JSONObject]:
    """Every dead-letter entry of every saga in the registry's store, oldest first."""
    return _registry(registry).store.dead_letters()


def retry_dead_letter(entry_id: str, *, registry: Registry | None = None) -> str:
    """Act on a dead-letter entry and take it off the queue; returns the run id that goes on.

    A compensation entry of a failed run continues the unwind at that compensation. A forward
    entry of a compensated run starts a new run with the original input, linked to the old one.
    """
    reg = _registry(registry)
    store = reg.store
    entry = store.dead_letter(entry_id)
    try:
        state = store.get(entry["run_id"])
    except RunNotFound:
        raise ActionRefused(f"run {entry['run_id']} of entry {entry_id} has expired; drop the entry instead") from None
    action = policy.dead_letter_action(entry, state)
    if isinstance(action, policy.Refuse):
        raise ActionRefused(action.reason)
    rt = reg.runtime_for(state.saga)
    if isinstance(action, policy.ContinueUnwind):
        if not engine.retry_compensation(rt, state, action.index, entry_id):
            raise ActionRefused(f"run {state.id} changed meanwhile; try again")
        store.remove_dead_letter(entry_id)
        return state.id
    original = store.events(state.id)[0]["payload"]
    new_id = engine.start_run(rt, original, key=f"retry:{entry_id}")
    store.note_events(
        state.id, [decide.note_event(state, EventType.SAGA_RETRIED, entry_id=entry_id, new_run_id=new_id)]
    )
    store.remove_dead_letter(entry_id)
    return new_id


def drop_dead_letter(entry_id: str, *, reason: str, registry: Registry | None = None) -> None:
    """Take an entry off the queue without acting on it; the reason is recorded as an event."""
    store = _registry(registry).store
    entry = store.dead_letter(entry_id)
    if not reason.strip():
        raise ActionRefused("a reason is required to drop a dead-letter entry")
    try:
        state = store.get(entry["run_id"])
        note = decide.note_event(state, EventType.SAGA_DEAD_LETTER_DROPPED, entry_id=entry_id, reason=reason)
        store.note_events(state.id, [note])
    except RunNotFound:
        pass  # the run expired; the entry goes all the same
    store.remove_dead_letter(entry_id)


__all__ = [
    "cancel",
    "dead_letters",
    "drop_dead_letter",
    "list_runs",
    "load_app",
    "resume",
    "retry_dead_letter",
    "verify",
]

"""Operator actions on runs and dead letters; each CLI command is one call into this module.

Every action takes ``registry`` (the default registry when not given) and uses exactly one
store: that registry's. What an action decides is asked of :mod:`saga.core.decide`; what it commits
goes through :mod:`saga.engine.commit`. A refusal raises :class:`~saga.errors.ActionRefused` with a
message saying what the run is and what can be done instead.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from itertools import islice

from ..core import EventType, JSONObject, SagaState, Status, dead_letter_history, decide, policy, rebuild
from ..engine import commit as engine
from ..engine import runs
from ..errors import ActionRefused, EntryNotFound, RunNotFound, SagaError
from ..registry import Registry, default_registry
from ..store import CommitReason, DeadLetterPage


def load_app(path: str) -> None:
    """Import ``path`` (as ``celery -A path`` would) so the sagas it defines are known here."""
    try:
        importlib.import_module(path)
    except ImportError as exc:
        raise SagaError(f"cannot import {path!r} ({exc}); pass the module that defines your sagas with --app") from None


def _registry(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing shows: by status, saga name, definition version."""

    status: str | None = None
    saga: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in {s.value for s in Status}:
            raise SagaError(f"unknown status {self.status!r}; one of: {', '.join(s.value for s in Status)}")

    def matches(self, state: SagaState) -> bool:
        """Whether ``state`` passes every filter given."""
        return (
            (self.status is None or state.status.value == self.status)
            and (self.saga is None or state.saga == self.saga)
            and (self.version is None or state.definition_version == self.version)
        )


def list_runs(
    *,
    status: str | None = None,
    saga: str | None = None,
    version: int | None = None,
    parked: bool = False,
    limit: int = 50,
    registry: Registry | None = None,
) -> list[SagaState]:
    """Runs, newest first (parked ones: longest parked first), filtered by status, saga name and
    definition version; at most ``limit``."""
    store = _registry(registry).store
    wanted = RunFilter(status, saga, version)
    if parked:
        candidates = iter([p.run_id for p in store.indexes.parked(limit=10_000)])
    else:
        candidates = store.indexes.newest_runs([Status(status)] if status else list(Status), limit_hint=limit)
    found: list[SagaState] = []
    while len(found) < limit:
        ids = list(islice(candidates, limit - len(found)))
        if not ids:
            break
        states = store.reads.snapshots(ids)
        store.indexes.forget_runs([run_id for run_id, state in zip(ids, states, strict=True) if state is None])
        found += [state for state in states if state is not None and wanted.matches(state)]
    return found


def parked_reasons(registry: Registry | None = None) -> dict[str, str]:
    """Run id -> why it is parked, for the parked runs."""
    return {p.run_id: p.reason for p in _registry(registry).store.indexes.parked(limit=10_000)}


def stats(registry: Registry | None = None) -> list[dict[str, object]]:
    """How many runs each saga version has, by status, and how many of them are parked: rows of
    ``saga``, ``version``, one count per status, ``parked`` and ``unfinished`` (a version whose
    ``unfinished`` is 0 has no run left to drain)."""
    store = _registry(registry).store
    counts: Counter[tuple[str, int, str]] = Counter()
    for status in Status:
        runs = store.indexes.newest_runs([status], limit_hint=1000)
        while ids := list(islice(runs, 1000)):
            for label in store.reads.labels(ids):
                if label is not None:
                    counts[(*label, status.value)] += 1
    parked = Counter((p.saga, p.definition_version) for p in store.indexes.parked(limit=10_000))
    return policy.version_rows(counts, parked)


def verify(run_id: str, *, registry: Registry | None = None) -> list[str]:
    """Problems with a run's records (see :func:`saga.policy.verify_records`); [] when it verifies."""
    store = _registry(registry).tiers
    stored = store.get(run_id)
    return policy.verify_records(stored, rebuild(store.events(run_id)), store.history(run_id))


def resume(run_id: str, *, reason: str = "operator", registry: Registry | None = None) -> SagaState:
    """Resume an unfinished run at its cursor (see :func:`saga.engine.resume`)."""
    reg = _registry(registry)
    state = reg.store.reads.get(run_id)
    if state.status.terminal:
        raise ActionRefused(f"run {run_id} is {state.status.value}; only an unfinished run can be resumed")
    parked = reg.store.reads.progress(run_id).parked
    if parked and reg.find(state.saga, state.definition_version) is None:
        raise ActionRefused(f"run {run_id} stays parked: {parked}")
    if runs.resume(reg.runtime_for(state.saga, state.definition_version), run_id, reason) is None:
        after = reg.store.reads.get(run_id)
        if after.status is Status.FAILED:
            message = after.error.message if after.error else ""
            raise ActionRefused(f"run {run_id} could not be resumed and failed: {message}")
        parked = reg.store.reads.progress(run_id).parked
        if parked:
            raise ActionRefused(f"run {run_id} stays parked: {parked}")
        raise ActionRefused(f"run {run_id} is being run right now (its lease is live); nothing to resume")
    return reg.store.reads.get(run_id)


def cancel(run_id: str, *, reason: str = "operator", registry: Registry | None = None) -> SagaState:
    """Stop a run's forward progress and compensate the steps that committed.

    If a step is running, the cancel is recorded and its lease is renewed no more: if the step
    commits within its lease, the cancel is applied then (its effect committed, so it is
    compensated too); if it hangs, its lease lapses and the watchdog cancels the run within one
    lease period, fencing the attempt so it can never commit. Returns the state after the
    request.
    """
    reg = _registry(registry)
    state = reg.store.reads.get(run_id)
    if state.status is not Status.PENDING and state.status is not Status.RUNNING:
        raise ActionRefused(f"run {run_id} is {state.status.value}; only a pending or running run can be cancelled")
    if not engine.cancel_now(reg.runtime_for(state.saga, state.definition_version), state, reason):
        reg.store.request_cancel(run_id, reason)
    return reg.store.reads.get(run_id)


def compensate(run_id: str, *, reason: str = "operator", registry: Registry | None = None) -> SagaState:
    """Unwind an unfinished, parked or failed run: compensate exactly its committed steps not
    compensated yet, newest first, each through its compensation task by name and once (dedup
    marks as for any compensation); the run ends ``compensated``.

    The compensations may come from any loaded version of the saga (a step's compensation is
    found by the step's name), so a run whose own version was removed can still be unwound.
    Refused, naming them, when a compensation the run needs is in no loaded definition; and
    while an attempt holds the run's lease.
    """
    reg = _registry(registry)
    store = reg.store
    state = store.reads.get(run_id)
    if state.status in (Status.COMPLETED, Status.COMPENSATED):
        raise ActionRefused(
            f"run {run_id} is {state.status.value}; only an unfinished, parked or failed run can be compensated"
        )
    own = reg.find(state.saga, state.definition_version)
    shape = store.reads.shape(run_id) or (own.shape if own is not None else None)
    if shape is None:
        raise ActionRefused(
            f"run {run_id} recorded no definition and version {state.definition_version} of saga {state.saga!r} "
            "is not loaded; import the module that defines it with --app"
        )
    missing = [
        name for name in decide.compensations_due(state, shape) if reg.compensation_named(state.saga, name) is None
    ]
    if missing:
        raise ActionRefused(
            f"run {run_id} cannot be compensated here: no loaded definition of saga {state.saga!r} has a "
            f"compensation for step(s) {', '.join(missing)}; import the module that defines them with --app"
        )
    result = runs.compensate(reg.stored_runtime(state.saga, state.definition_version, shape), state, reason)
    if not result.applied:
        if result.reason is CommitReason.LEASED:
            raise ActionRefused(
                f"run {run_id} is being run right now (its lease is live); `saga cancel` unwinds it after that "
                "step, or compensate it once the attempt ends"
            )
        raise ActionRefused(f"run {run_id} changed meanwhile ({result.reason}); try again")
    return store.reads.get(run_id)


def dead_letters(registry: Registry | None = None) -> list[JSONObject]:
    """Every dead-letter entry of every saga in the registry's store, oldest first."""
    return _registry(registry).store.indexes.dead_letters()


def dead_letter_page(limit: int = 100, cursor: str = "", *, registry: Registry | None = None) -> DeadLetterPage:
    """Up to ``limit`` dead-letter entries, oldest first, from ``cursor`` on (an entry's
    ``cursor``: the page goes on after it); the page's ``cursor`` reads the next one."""
    return _registry(registry).store.indexes.dead_letter_page(limit, cursor)


def retry_dead_letter(entry_id: str, *, registry: Registry | None = None) -> str:
    """Act on a dead-letter entry and take it off the queue; returns the run id that goes on.

    A compensation entry of a failed run continues the unwind at that compensation. A forward
    entry of a compensated run starts a new run with the original input and tags, linked both
    ways: the new run's ``saga.started`` has ``retry_of`` (run and entry), the original records
    ``saga.retried`` with ``new_run_id``. Every refusal names the command that would work.
    """
    reg = _registry(registry)
    store = reg.store
    try:
        entry = store.indexes.dead_letter(entry_id)
    except EntryNotFound:
        closed = _closed_entry(reg, entry_id)
        if closed:
            raise EntryNotFound(entry_id, closed) from None
        raise
    drop = f"drop the entry with `saga dlq drop {entry_id} --reason TEXT`"
    try:
        state = store.reads.get(entry["run_id"])
    except RunNotFound:
        raise ActionRefused(
            f"run {entry['run_id']} of entry {entry_id} has expired: nothing to retry; {drop}"
        ) from None
    action = policy.dead_letter_action(entry, state)
    if isinstance(action, policy.Refuse):
        raise ActionRefused(action.reason)
    rt = reg.runtime_for(state.saga, state.definition_version)
    again = f"run {state.id} changed meanwhile; try `saga dlq retry {entry_id}` again"
    if isinstance(action, policy.ContinueUnwind):
        if not runs.retry_compensation(rt, state, action.index, entry_id):
            raise ActionRefused(again)
        store.indexes.remove_dead_letter(entry_id)
        return state.id
    original = store.reads.events(state.id)[0]["payload"]
    link = {"run_id": state.id, "entry_id": entry_id}
    new_id = runs.start_run(rt, original, key=f"retry:{entry_id}", tags=dict(state.tags) or None, retry_of=link)
    store.note_events(state, [decide.note_event(state, EventType.SAGA_RETRIED, entry_id=entry_id, new_run_id=new_id)])
    store.indexes.remove_dead_letter(entry_id)
    return new_id


def _closed_entry(reg: Registry, entry_id: str) -> str:
    """What closed ``entry_id``, when its run's events show it was retried, dropped or resolved
    (so it is no longer in the queue); '' when they do not."""
    run_id = entry_id.rsplit(".", 1)[0]
    try:
        history = dead_letter_history(reg.tiers.events(run_id))
    except SagaError:
        return ""
    for entry in history:
        closed = entry["closed_by"]
        if entry["id"] == entry_id and closed is not None:
            why = f" ({closed['reason']})" if closed.get("reason") else ""
            return f"it was {entry['status']}{why}; nothing to retry (`saga show {run_id}` shows the run)"
    return ""


def drop_dead_letter(entry_id: str, *, reason: str, registry: Registry | None = None) -> None:
    """Take an entry off the queue without acting on it; the reason is recorded as an event."""
    store = _registry(registry).store
    entry = store.indexes.dead_letter(entry_id)
    if not reason.strip():
        raise ActionRefused(
            f"a reason is required to drop a dead-letter entry: `saga dlq drop {entry_id} --reason TEXT`"
        )
    try:
        state = store.reads.get(entry["run_id"])
        note = decide.note_event(state, EventType.SAGA_DEAD_LETTER_DROPPED, entry_id=entry_id, reason=reason)
        store.note_events(state, [note])
    except RunNotFound:
        pass  # the run expired; the entry goes all the same
    store.indexes.remove_dead_letter(entry_id)


__all__ = [
    "RunFilter",
    "cancel",
    "compensate",
    "dead_letters",
    "drop_dead_letter",
    "list_runs",
    "load_app",
    "parked_reasons",
    "resume",
    "retry_dead_letter",
    "stats",
    "verify",
]

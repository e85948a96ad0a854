"""The policies: pure answers to the questions the engine, the watchdog and operator actions ask.

- retry or give up (:func:`retry_policy`);
- what the watchdog does with a run that has not moved (:func:`triage`; which message it waits
  for: :func:`queued_since`; why it is resumed: :func:`resume_reason`), and why a run is parked
  (:func:`missing_reason`, :func:`drift_reason`);
- when the watchdog must look at a run next (:func:`next_check_at`, :func:`dispatch_check_at`);
- how long a run's keys are kept (:func:`retention_ms`);
- which dead-letter action applies (:func:`dead_letter_action`);
- whether a run's records verify (:func:`checkpoint_problem`, :func:`verify_records`).

The caller gathers the facts, asks here, and carries out the answer; no I/O happens here, so
every policy is tested in milliseconds without Redis (``tests/test_policy.py``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from .state import Direction, EventType, SagaState, Status, parse_iso, payload_hash

# --- retry or give up ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How a step retries: ``max_retries`` after the first attempt, with full-jitter exponential
    backoff ``uniform(0, min(backoff_max, backoff * 2**(attempt-1)))`` seconds."""

    max_retries: int
    backoff: float
    backoff_max: float


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds; the lease is handed to the retry for ``hold_ms``."""

    delay: float
    hold_ms: int


@dataclass(frozen=True)
class GiveUp:
    """No retry: dead-letter the step and unwind."""


def retry_delay(attempt: int, backoff: float, backoff_max: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter over
    ``min(backoff_max, backoff * 2**(attempt-1))``."""
    ceiling = min(backoff_max, backoff * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


def retry_policy(
    error: BaseException, attempt: int, policy: RetryPolicy, lease_seconds: float, rng: random.Random | None = None
) -> Retry | GiveUp:
    """Whether failed attempt ``attempt`` (1-based) is retried: never after a
    :class:`~saga.PermanentError`, else while ``attempt <= max_retries``. A retry holds the run's
    lease through its backoff and one lease more, so nothing else takes the step meanwhile."""
    if isinstance(error, PermanentError) or attempt > policy.max_retries:
        return GiveUp()
    delay = retry_delay(attempt, policy.backoff, policy.backoff_max, rng)
    return Retry(delay=delay, hold_ms=int((delay + lease_seconds) * 1000))


# --- the watchdog's questions ----------------------------------------------------------------


@dataclass(frozen=True)
class Resume:
    """Resume the run at its cursor now; ``reason`` goes into the ``saga.resumed`` event."""

    reason: str


@dataclass(frozen=True)
class LookAgain:
    """Nothing to do yet: look at the run again at ``at`` (seconds since the epoch)."""

    at: float


@dataclass(frozen=True)
class Forget:
    """The run is finished (or gone): take it off the watchdog's list."""


@dataclass(frozen=True)
class Expire:
    """The run's deadline passed while it went forward: fence whatever runs, and unwind it."""


@dataclass(frozen=True)
class CancelNow:
    """An operator asked to cancel the run and no attempt holds it any more (a hung attempt's
    lease is not renewed once a cancel is asked): cancel it now."""

    reason: str


@dataclass(frozen=True)
class Park:
    """The run would be resumed, but this process lacks its definition: park it, saying why."""

    reason: str


#: How long after a lease could have ended the watchdog looks at its run: a renewal or commit
#: sent just before the end still lands first.
LEASE_MARGIN = 0.25


#: The head of a resume's reason when the attempt at the cursor began and its lease lapsed
#: without a commit: its worker died, or stopped renewing (a paused or partitioned worker).
LEASE_EXPIRED = "lease expired"
#: The head of a resume's reason when the message the run waits for was not begun within
#: ``SAGA_DISPATCH_TIMEOUT`` of being sent (or of a retry's due time): lost, or still queued.
NOT_BEGUN = "message not begun within SAGA_DISPATCH_TIMEOUT"


@dataclass(frozen=True)
class Queued:
    """A message sent after the last attempt at the run's cursor began, and not begun since: a
    retry (``attempt`` > 0, the attempt its message carries), due at ``since`` (its
    ``step.retrying`` event's time plus its delay), or a resume's message (``attempt`` 0), sent
    at ``since``. It may wait in the broker (a countdown, then a queue) for as long as a first
    attempt's message may."""

    since: float
    attempt: int = 0


@dataclass(frozen=True)
class Liveness:
    """What the watchdog knows of an unfinished run it is looking at."""

    missing: str  # why this process cannot move the run ('' when it has the run's definition)
    lease_live: bool  # an attempt (or a retry's backoff) holds the run's lease
    began: bool  # an attempt at the cursor began (it took the lease at least once)
    parked: bool = False  # the run waits for a worker with its definition
    lease_left: float = 0.0  # seconds the live lease has left
    cancel: str = ""  # the reason an operator gave to cancel the run, while it waits for its attempt
    attempt: int = 0  # the attempts begun at the cursor (the last one's number, for a step alone)
    queued: Queued | None = None  # a retry's or a resume's message not begun (see queued_since)

    @property
    def known(self) -> bool:
        """This process has the definition the run needs."""
        return not self.missing

    @property
    def running(self) -> bool:
        """The last thing that happened at the cursor is an attempt that began (and may have
        acted): not a retry or a resume waiting for its message to begin."""
        return self.began and self.queued is None


def triage(
    state: SagaState | None, facts: Liveness, *, now: float, lease_seconds: float, dispatch_timeout: float
) -> Resume | LookAgain | Forget | Park | Expire | CancelNow:
    """What the watchdog does with a run past its progress deadline.

    - finished or expired: forget it;
    - past its own deadline while going forward: expire it (whatever holds it, whoever defines
      it);
    - an operator asked to cancel it and no attempt holds it: cancel it;
    - parked: resume it (``definition available``) once this process has its definition and no
      attempt holds it; else look again after ``dispatch_timeout``;
    - a live lease (an attempt, or a retry's backoff): look again just after that lease could end;
    - a message not begun — the step sent by the last commit with no attempt begun, a retry
      scheduled after the last attempt failed, or a resume's message — less than
      ``dispatch_timeout`` after it was sent (a retry: after it was due): a queue may be long;
      look again when that time is up. A queued message is watched by the dispatch timeout, a
      running attempt by its lease;
    - otherwise it must be resumed, saying why (:data:`LEASE_EXPIRED`: an attempt began and let
      its lease lapse; :data:`NOT_BEGUN`: the message was lost, or dropped by a worker that did
      not know it, or is queued longer than ``dispatch_timeout``) — or, when this process lacks
      the run's definition, parked, saying why.
    """
    if state is None or state.status.terminal:
        return Forget()
    if past_deadline(state, now):
        return Expire()
    verdict = _triage(state, facts, now=now, lease_seconds=lease_seconds, dispatch_timeout=dispatch_timeout)
    deadline = deadline_of(state)
    if isinstance(verdict, LookAgain) and deadline is not None and state.status in (Status.PENDING, Status.RUNNING):
        return LookAgain(min(verdict.at, deadline))  # the deadline is enforced on time, whatever runs
    return verdict


def _triage(
    state: SagaState, facts: Liveness, *, now: float, lease_seconds: float, dispatch_timeout: float
) -> Resume | LookAgain | Park | CancelNow:
    if facts.cancel and not facts.lease_live and state.status in (Status.PENDING, Status.RUNNING):
        return CancelNow(facts.cancel)
    if facts.parked:
        if facts.known and not facts.lease_live:
            return Resume("definition available")
        return LookAgain(now + dispatch_timeout)
    if facts.lease_live:
        return LookAgain(now + min(facts.lease_left, lease_seconds) + LEASE_MARGIN)
    if not facts.running:
        sent = facts.queued.since if facts.queued is not None else parse_iso(state.updated_at)
        if now < sent + dispatch_timeout:
            return LookAgain(sent + dispatch_timeout)
    if not facts.known:
        return Park(facts.missing)
    return Resume(resume_reason(facts))


def resume_reason(facts: Liveness) -> str:
    """Why the watchdog resumes a run with these facts: its head (:func:`resume_cause`) says
    which — an attempt that died (:data:`LEASE_EXPIRED`) or a message that was lost
    (:data:`NOT_BEGUN`) — and the rest which attempt or message."""
    if facts.running:
        which = f"attempt {facts.attempt}" if facts.attempt else "the attempt"
        return f"{LEASE_EXPIRED}: the worker running {which} stopped renewing its lease"
    if facts.queued is None:
        return f"{NOT_BEGUN}: lost or still queued"
    if facts.queued.attempt:
        return f"{NOT_BEGUN}: lost or still queued (attempt {facts.queued.attempt}, a retry)"
    return f"{NOT_BEGUN}: lost or still queued (sent by a resume)"


def resume_cause(reason: str) -> str:
    """A resume's reason without its details (the text before the first ``": "``): the
    ``reason`` label of ``saga_resumes_total``, so that label takes a few values only."""
    return reason.partition(": ")[0]


def queued_since(events: Sequence[Mapping[str, Any]], direction: Direction, steps: Sequence[int]) -> Queued | None:
    """The message a run at ``steps`` (the step at its cursor, or the members of the parallel
    group due there) in ``direction`` waits for, if it was sent after the last attempt there
    began, from the run's ``events``: for each step, its latest ``step.retrying`` or
    ``saga.resumed`` with no attempt begun (``step.started`` / ``compensation.started``) after it.

    None when an attempt of any of them began after the last such message (that attempt runs,
    or died: its lease tells which), or none of them has one (the message of the last commit,
    sent at the snapshot's time). Otherwise the latest of them (every message sent before it
    has had at least as long to begin)."""
    started = EventType.STEP_STARTED if direction is Direction.FORWARD else EventType.COMPENSATION_STARTED
    ended = (
        (EventType.STEP_SUCCEEDED, EventType.STEP_FAILED)
        if direction is Direction.FORWARD
        else (EventType.COMPENSATION_SUCCEEDED, EventType.COMPENSATION_FAILED)
    )
    latest: Queued | None = None
    for index in steps:
        for event in reversed(events):
            if event.get("step") != index:
                continue
            kind = event["type"]
            if kind == started:
                return None
            if kind in ended:
                break
            if kind == EventType.STEP_RETRYING and event.get("direction") == direction.value:
                found = Queued(parse_iso(event["at"]) + float(event.get("delay", 0)), int(event["attempt"]) + 1)
            elif kind == EventType.SAGA_RESUMED and event.get("direction") == direction.value:
                found = Queued(parse_iso(event["at"]))
            else:
                continue
            if latest is None or found.since > latest.since:
                latest = found
            break
    return latest


def missing_reason(saga: str, version: int, versions_here: Sequence[int]) -> str:
    """Why a process cannot move a run of ``saga`` started under definition ``version``."""
    if not versions_here:
        return f"no worker here defines saga {saga!r}; start a worker that imports it"
    have = ", ".join(str(v) for v in sorted(versions_here))
    return (
        f"no worker here has version {version} of saga {saga!r} (here: {have}); deploy version {version} "
        f"beside the new one until its runs drain, or unwind the run with `saga compensate`"
    )


def drift_reason(saga: str, version: int, stored: str, here: str) -> str:
    """Why a run started under definition fingerprint ``stored`` is not moved by one with ``here``."""
    return (
        f"run started under version {version} of saga {saga!r} with definition {stored}, but version "
        f"{version} here is {here}: a changed definition needs a new version number (Saga(..., version=N))"
    )


def next_check_at(status: Status, now: float, lease_seconds: float, deadline: float | None = None) -> float | None:
    """When the watchdog must look at a run that just committed a transition to ``status``: once
    the next attempt's lease could have lapsed, or at the run's ``deadline`` if that comes first
    and the run still goes forward; None for a finished run (off the list)."""
    if status.terminal:
        return None
    at = lease_check_at(now, lease_seconds)
    if deadline is not None and status in (Status.PENDING, Status.RUNNING):
        return min(at, deadline)
    return at


def compensated_cause(state: SagaState) -> str:
    """Why a compensated run was unwound, as metrics count it: ``rejected`` (a step raised
    Rejected, an expected outcome), ``deadline``, ``cancelled`` (an operator), or ``failure``
    (a step gave up; it has a dead letter). '' for any other status."""
    if state.status is not Status.COMPENSATED:
        return ""
    kind = state.error.type if state.error is not None else ""
    return {"Rejected": "rejected", "DeadlineExceeded": "deadline", "": "cancelled"}.get(kind, "failure")


def deadline_of(state: SagaState) -> float | None:
    """The run's deadline, seconds since the epoch (None: it has none)."""
    return parse_iso(state.deadline_at) if state.deadline_at else None


def past_deadline(state: SagaState, now: float) -> bool:
    """Whether the run still goes forward past its deadline (a run that unwinds already, or is
    finished, is never subject to it: compensations have no deadline)."""
    deadline = deadline_of(state)
    return deadline is not None and now >= deadline and state.status in (Status.PENDING, Status.RUNNING)


#: How long an attempt waits out a store that is unreachable or full before it leaves the run to
#: the watchdog (its lease then lapses, and the run is resumed once the store takes writes).
STORE_WAIT_SECONDS = 600.0


def store_retry_delay(tries: int) -> float:
    """Seconds to wait before writing again after the store refused ``tries`` times in a row:
    0.2 s doubling to 5 s."""
    return float(min(0.2 * 2 ** (tries - 1), 5.0))


def lease_check_at(now: float, lease_seconds: float) -> float:
    """When the watchdog must look at a run whose attempt just took its lease: once that lease
    could have lapsed (the heartbeat renews it while the body runs)."""
    return now + lease_seconds + LEASE_MARGIN


def finished_kept_seconds(retention_seconds: int, hot_retention_seconds: int, *, archived: bool) -> int:
    """How long a finished run stays listed in Redis: its hot retention with an archive (the
    archive lists it after that), its retention without."""
    return hot_retention_seconds if archived else retention_seconds


def dispatch_check_at(now: float, dispatch_timeout: float) -> float:
    """When the watchdog must look at a run whose step was just sent (at start, or on a resume)."""
    return now + dispatch_timeout


def retention_ms(status: Status, retention_seconds: int, *, archived: bool = False) -> int:
    """How long a run's keys are kept after a transition to ``status``: ``retention_seconds`` for
    completed and compensated runs; 0 (no expiry) otherwise — a failed run waits for an operator.
    With an archive, 0 as well: the archiver lets the run expire once it holds it."""
    if not archived and status in (Status.COMPLETED, Status.COMPENSATED):
        return retention_seconds * 1000
    return 0


# --- operator questions ----------------------------------------------------------------------


@dataclass(frozen=True)
class ContinueUnwind:
    """Retry a stuck compensation: the failed run unwinds again from step ``index``."""

    index: int


@dataclass(frozen=True)
class StartAgain:
    """A forward step gave up and the run was compensated: start a new run with its input."""


@dataclass(frozen=True)
class Refuse:
    """The entry cannot be retried while its run is as it is; ``reason`` says why."""

    reason: str


def dead_letter_action(entry: Mapping[str, Any], state: SagaState) -> ContinueUnwind | StartAgain | Refuse:
    """Which action ``saga dlq retry`` takes for ``entry`` of the run in ``state``; a refusal
    says what the run is and the command that would work."""
    run, status, entry_id = state.id, state.status, entry["id"]
    if entry["kind"] == Direction.COMPENSATION.value and status is Status.FAILED:
        return ContinueUnwind(int(entry["index"]))
    if entry["kind"] == Direction.FORWARD.value and status is Status.COMPENSATED:
        return StartAgain()
    drop = f"drop the entry with `saga dlq drop {entry_id} --reason TEXT`"
    if status is Status.COMPLETED or (status is Status.COMPENSATED and entry["kind"] == Direction.COMPENSATION.value):
        return Refuse(f"run {run} is {status.value}: nothing to retry; {drop}")
    if status is Status.FAILED:  # a forward entry: what the run did is not undone yet
        return Refuse(
            f"run {run} is failed: undo what it did first with `saga compensate {run}`, "
            f"then retry the entry to start it again (or {drop})"
        )
    return Refuse(
        f"run {run} is {status.value}: it is still moving; follow it with `saga tail {run}` and act on the "
        f"entry once it is finished (`saga resume {run}` if it is stuck)"
    )


def checkpoint_problem(state: SagaState) -> str | None:
    """Why the run's last checkpoint does not verify against its payload, or None if it does."""
    if not state.checkpoints:
        return None
    last = state.checkpoints[-1]
    actual = payload_hash(state.payload)
    if last.hash != actual:
        return (
            f"checkpoint of step {last.step} ({last.name}) does not match its payload: hash "
            f"{last.hash[:12]}… but the stored payload hashes to {actual[:12]}…"
        )
    return None


def verify_records(stored: SagaState, rebuilt: SagaState, history: Sequence[SagaState]) -> list[str]:
    """Problems with a run's records: [] when the state rebuilt from its events equals the stored
    state, versions run 1..n without gaps, and every version matches its last checkpoint (only a
    step's commit changes the payload)."""
    problems: list[str] = []
    if rebuilt != stored:
        a, b = rebuilt.to_dict(), stored.to_dict()
        fields = sorted(k for k in a if a[k] != b.get(k))
        problems.append(f"state rebuilt from events differs from the stored state in: {', '.join(fields)}")
    versions = [s.version for s in history]
    if versions != list(range(1, len(history) + 1)):
        problems.append(f"versions are not 1..{len(history)} without gaps: {versions}")
    for snap in history:
        problem = checkpoint_problem(snap)
        if problem:
            problems.append(f"at version {snap.version}, {problem}")
    return problems


def version_rows(
    counts: Mapping[tuple[str, int, str], int], parked: Mapping[tuple[str, int], int]
) -> list[dict[str, object]]:
    """``saga stats`` rows from run counts by (saga, version, status) and parked runs by (saga,
    version): ``saga``, ``version``, one count per status, ``parked`` and ``unfinished`` (a
    version whose ``unfinished`` is 0 has no run left to drain)."""
    rows: list[dict[str, object]] = []
    for saga, version in sorted({(s, v) for s, v, _ in counts}):
        row: dict[str, object] = {"saga": saga, "version": version}
        row.update({status.value: counts.get((saga, version, status.value), 0) for status in Status})
        row["parked"] = parked.get((saga, version), 0)
        row["unfinished"] = sum(counts.get((saga, version, s.value), 0) for s in Status if not s.terminal)
        rows.append(row)
    return rows

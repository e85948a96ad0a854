"""One delivered message: what a worker does with a step or compensation task of one run.

A :class:`Delivery` goes: ``begin`` (dedup mark, lease, fencing token; the run's watchdog
deadline moves a lease ahead) -> the body, its lease renewed by the heartbeat -> the transition
:mod:`saga.core.decide` chooses -> one commit (:func:`saga.engine.commit_and_follow`) -> the next task
sent. A failed attempt is retried as :func:`saga.policy.retry_policy` says: a ``step.retrying``
event and the same task sent again with a countdown, or, once it gives up, a dead letter and the
unwind. A run started under another definition is parked, never failed.

An ``async def`` body is awaited on an event loop of the worker thread's own, kept from one call
to the next (so clients bound to a loop can be reused); a sync body is called as it is.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from ..core import (
    CompensationFunction,
    Direction,
    JSONObject,
    SagaState,
    Status,
    StepContext,
    StepFunction,
    Transition,
    call_problem,
    cut,
    decide,
    json_copy,
    merged_text,
    policy,
    text_hash,
    validated,
)
from ..errors import InvalidOutput, InvalidPayload, OutputConflict, Rejected, StorageFormatTooNew, StoreUnavailable
from ..settings import Settings
from ..store import BeginOutcome, CommitOptions, CommitReason, CommitResult, lane_id
from ..transport import COMMITTED, Ending, gave_up, not_begun, skipped, will_retry
from . import metrics
from .commit import Runtime, commit_and_follow, dispatch, send_step
from .runs import expire, park, settle_if_unwinding


class StepDefinition(Protocol):
    """What a delivery needs of a declared step: its bodies and its retry policy."""

    @property
    def name(self) -> str:
        """The step's name, unique in its saga."""
        ...

    @property
    def index(self) -> int:
        """The step's 0-based position in its saga."""
        ...

    @property
    def fn(self) -> StepFunction:
        """The forward body."""
        ...

    @property
    def compensation(self) -> CompensationFunction | None:
        """The compensation body, if the step can be undone."""
        ...

    def retry_policy(self, settings: Settings) -> policy.RetryPolicy:
        """The step's retry policy, its own overrides over ``settings``' defaults."""
        ...


T = TypeVar("T")


class _StoreWaitOver(Exception):
    """The store stayed unreachable or full past the wait: the run is left to the watchdog."""


@dataclass(frozen=True)
class Attempt:
    """What ``begin`` granted a delivery: the run as it is, the fencing token, the attempt number."""

    state: SagaState
    token: str
    number: int


class _Loops(threading.local):
    """One event loop per worker thread (and process), made on first use."""

    loop: asyncio.AbstractEventLoop | None = None
    pid: int = 0


_loops = _Loops()


def _await(awaitable: Awaitable[Any]) -> Any:
    """Run an async body to its end on this thread's event loop."""
    if _loops.loop is None or _loops.loop.is_closed() or _loops.pid != os.getpid():
        _loops.loop, _loops.pid = asyncio.new_event_loop(), os.getpid()
    return _loops.loop.run_until_complete(awaitable)


class Delivery:
    """One delivered message: step ``step`` of run ``run_id`` in ``direction``, as attempt
    ``attempt`` says the message. :meth:`run` never raises for a business failure: every
    outcome is committed to the store (or the commit is refused and logged).

    ``by_name``: a compensation run for an operator's unwind under another version's step of
    the same name; ``rt`` then holds the run's own recorded definition.
    """

    def __init__(
        self,
        rt: Runtime,
        step: StepDefinition,
        direction: Direction,
        run_id: str,
        attempt: int,
        *,
        by_name: bool = False,
    ) -> None:
        self.rt = rt
        self.step = step
        self.direction = direction
        self.run_id = run_id
        self.attempt = attempt
        self.by_name = by_name
        steps = rt.definition.shape.steps
        self.index = steps.index(step.name) if by_name and step.name in steps else step.index
        #: a member of a parallel group runs in a lane of its own (lease, fence, attempts)
        self.lane = lane_id(direction.value, self.index) if rt.in_group(self.index) else ""
        self.log = rt.log(str(run_id), step.name)

    def run(self) -> Ending:
        """Begin, run the body, commit what happened (see the module's docstring); returns how
        the delivery ended (the Celery task's state: :class:`~saga.tasks.End`)."""
        problem = call_problem(self.run_id, self.attempt)
        if problem:
            self.log.error("malformed message: %s; dropped to the log", problem)
            return skipped(f"malformed message: {problem}")
        try:
            granted = self._waiting("begin", self._begin)
            if granted is not None:
                self._attempt(granted)
        except _StoreWaitOver as exc:
            self.log.error("%s; the watchdog resumes the run once the store takes writes again", exc)
            self.ending = gave_up(exc, self.attempt)
        return self.ending

    def _attempt(self, granted: Attempt) -> None:
        """Run the body, and everything after it that decides its result, as one attempt: a
        failure anywhere in it (the body, its output's validation, hashing, the commit) counts as
        this attempt's failure — but for a store that is unreachable or full, which is waited out."""
        rt, step = self.rt, self.step
        if granted.state.status is Status.PENDING and granted.number == 1:
            metrics.run_started(rt.name)
        ctx = StepContext(
            self.run_id,
            rt.name,
            step.name,
            self.index,
            granted.number,
            f"{self.run_id}:{step.name}:{self.direction.value}",
            self.direction,
        )
        rt.heartbeat.hold(rt.store, self.run_id, granted.token, rt.lease_ms, self.log, self.lane)
        began = time.perf_counter()
        try:
            try:
                output = self._body(json_copy(granted.state.payload), ctx)
                transition = self._transition_for(granted.state, output)
            except Exception as exc:  # every failure of user code is recorded; none escapes to Celery
                self._failed(granted, exc, time.perf_counter() - began)
                return
            metrics.step_finished(rt.name, step.name, self.direction.value, time.perf_counter() - began, "succeeded")
            try:
                self._commit(granted, transition, output)
            except (_StoreWaitOver, StoreUnavailable):
                raise
            except Exception as exc:  # a commit that cannot be made is this attempt's failure
                self._failed(granted, exc, time.perf_counter() - began)
        finally:
            rt.heartbeat.release(self.run_id, granted.token)

    def _waiting(self, what: str, write: Callable[[], T]) -> T:
        """``write()``; while the store is unreachable or full, wait and try again, one log line
        per refused write, without using the step's retries — until
        :data:`~saga.policy.STORE_WAIT_SECONDS` pass."""
        started, tries = time.monotonic(), 0
        while True:
            try:
                return write()
            except StoreUnavailable as exc:
                tries += 1
                delay = policy.store_retry_delay(tries)
                if time.monotonic() - started + delay > policy.STORE_WAIT_SECONDS:
                    raise _StoreWaitOver(f"gave up the {what} after {tries} refusals: {exc}") from None
                self.log.warning("the store refused the %s (%s); trying again in %.1f s", what, exc, delay)
                time.sleep(delay)

    def _begin(self) -> Attempt | None:
        rt = self.rt
        shape = rt.definition.shape
        try:
            begin = rt.store.begin(
                self.run_id,
                self.direction,
                self.index,
                attempt=self.attempt,
                lease_ms=rt.lease_ms,
                fingerprint="" if self.by_name else shape.fingerprint,
                check_at=policy.lease_check_at(time.time(), rt.settings.lease_seconds),
                lane=self.lane,
                cursor=shape.stage(self.index).start,
            )
        except StorageFormatTooNew as exc:  # a newer saga wrote the run: it moves it, not this worker
            self.log.error("%s; message ignored, the run left as it is", exc)
            self.ending = skipped(str(exc))
            return None
        state = begin.state
        self.ending = not_begun(begin.outcome)  # until the attempt's result is recorded
        if begin.outcome is BeginOutcome.MISSING:
            self.log.error("no such run (expired or never started); message ignored")
            return None
        if begin.outcome in (BeginOutcome.BUSY, BeginOutcome.STALE):
            self.log.info("%s: another attempt holds the run or its cursor moved on; skipping", begin.outcome)
            if begin.outcome is BeginOutcome.STALE and self.lane and self.direction is Direction.FORWARD:
                settle_if_unwinding(rt, self.run_id, self.index)
            return None
        if begin.outcome is BeginOutcome.EXPIRED:
            if state is not None:
                self.log.warning("the run's deadline has passed: not begun; unwinding the run")
                expire(rt, state)
            return None
        if state is None:  # a completed or compensated run keeps no snapshot: nothing runs for it
            self.log.info("the run has finished; skipping (%s)", begin.outcome)
            return None
        if begin.outcome is BeginOutcome.DONE:
            self.log.info("already committed: skipping the body (duplicate delivery)")
            if begin.idle and not state.status.terminal:
                dispatch(rt, state)  # make sure the run moves on; a duplicate is deduplicated too
            return None
        if begin.outcome is BeginOutcome.DRIFT:
            if self.by_name:
                why = policy.missing_reason(rt.name, state.definition_version, [])
            else:
                why = policy.drift_reason(
                    rt.name, state.definition_version, begin.stored_fingerprint, shape.fingerprint
                )
            park(rt.store, state, why, self.log)
            return None
        return Attempt(state, begin.token, begin.attempt)

    def _body(self, payload: dict[str, Any], ctx: StepContext) -> Any:
        step = self.step
        if self.direction is Direction.COMPENSATION:
            assert step.compensation is not None
            done = step.compensation(payload, ctx)
            if inspect.isawaitable(done):
                _await(done)
            return None
        output: Any = step.fn(payload, ctx)
        if output is not None and not isinstance(output, dict) and inspect.isawaitable(output):
            output = _await(output)
        return output

    def _conflict(self, state: SagaState, out: JSONObject) -> None:
        """Raise :class:`~saga.errors.OutputConflict` when another member of this step's group
        committed an output with a key of ``out``."""
        shape = self.rt.definition.shape
        stage = shape.stage(self.index)
        if not out or not any(i in stage for i in state.committed_steps):
            return
        for event in self.rt.store.reads.events(self.run_id):
            other = event.get("step", -1)
            if event["type"] != "step.succeeded" or other == self.index or other not in stage:
                continue
            common = sorted(set(event.get("output", {})) & set(out))
            if common:
                raise OutputConflict(
                    f"members {shape.steps[other]!r} and {self.step.name!r} of group {shape.group_of(self.index)!r} "
                    f"both write {', '.join(map(repr, common))}: members of a group must return disjoint keys"
                )

    def _transition_for(self, state: SagaState, output: Any) -> Transition:
        """The transition a body's result makes: a compensation's is its success; a step's output
        must pass the one validator (and the payload it leaves, the size limit), exactly as the
        hash and the store encode it, else :class:`~saga.InvalidOutput`; a member of a parallel
        group must not write a key a sibling wrote (:class:`~saga.errors.OutputConflict`)."""
        shape, index = self.rt.definition.shape, self.index
        if self.direction is Direction.COMPENSATION:
            return decide.decide_compensation_succeeded(state, shape, index)
        s = self.rt.settings
        what = f"the return value of step {self.step.name!r}"
        try:
            out = (
                {}
                if output is None
                else validated(output, what, max_bytes=s.max_payload_bytes, max_depth=s.max_payload_depth)
            )
            text = merged_text(state.payload, out, what, max_bytes=s.max_payload_bytes)
        except InvalidPayload as exc:
            raise InvalidOutput(
                f"{exc}; the body ran to its end, so its effect may have happened "
                "(declare the step with compensate_on_failure=True to undo it)"
            ) from None
        if self.lane:
            self._conflict(state, out)
        return decide.decide_step_succeeded(state, shape, index, out, digest=text_hash(text))

    def _committed(
        self, state: SagaState, decision: Callable[[SagaState], tuple[Transition, CommitOptions]], what: str
    ) -> CommitResult:
        """Commit the transition ``decision`` makes of ``state``. A member of a parallel group
        decides again on the run as it is now when a sibling's commit moved the version (its
        lane's fence still guards it); a step alone never has to."""
        for _ in range(16):
            result = self._waiting(what, partial(self._commit_decided, state, decision))
            if result.applied or result.reason is not CommitReason.VERSION or not self.lane:
                return result
            state = self.rt.store.reads.get(self.run_id)
        return result

    def _commit_decided(
        self, state: SagaState, decision: Callable[[SagaState], tuple[Transition, CommitOptions]]
    ) -> CommitResult:
        transition, options = decision(state)
        return commit_and_follow(self.rt, state, transition, options)

    def _commit(self, granted: Attempt, transition: Transition, output: Any) -> None:
        self.rt.heartbeat.committing(self.run_id, granted.token)
        mark = f"{self.direction.value}:{self.index}"
        options = CommitOptions(token=granted.token, dedup_mark=mark, release=True, lane=self.lane)
        first = transition

        def decision(state: SagaState) -> tuple[Transition, CommitOptions]:
            return (first if state is granted.state else self._transition_for(state, output)), options

        result = self._committed(granted.state, decision, "commit")
        self.ending = COMMITTED if result.applied else skipped(f"commit refused ({result.reason}): superseded")
        if not result.applied:
            self.log.warning(
                "commit refused (%s): this attempt lost its lease or was superseded; result discarded", result.reason
            )

    def _failed(self, granted: Attempt, exc: Exception, seconds: float) -> None:
        rt, step = self.rt, self.step
        rt.heartbeat.committing(self.run_id, granted.token)  # a retry or a give-up ends this lease
        state, n, index = granted.state, granted.number, self.index
        verdict = policy.retry_policy(exc, n, step.retry_policy(rt.settings), rt.settings.lease_seconds)
        retrying = isinstance(verdict, policy.Retry)
        outcome = "retrying" if retrying else "failed"
        if isinstance(exc, Rejected) and self.direction is Direction.FORWARD:
            outcome = "rejected"
        metrics.step_finished(rt.name, step.name, self.direction.value, seconds, outcome)
        shape = rt.definition.shape
        if isinstance(verdict, policy.Retry):
            event = decide.decide_retry(state, shape, self.direction, index, n, exc, verdict.delay)
            hold = f"backoff:{n + 1}"
            recorded = self._waiting(
                "retry", lambda: rt.store.record_retry(state, granted.token, [event], hold, verdict.hold_ms, self.lane)
            )
            if not recorded:
                self.log.warning("lost the lease before recording a retry; leaving the run to its holder")
                return
            self.log.info(
                "attempt %d failed (%s: %s); retrying in %.2fs", n, type(exc).__name__, cut(exc), verdict.delay
            )
            send_step(rt, state, index, self.direction, attempt=n + 1, countdown=verdict.delay)
            self.ending = will_retry(exc, n, verdict.delay)
            return
        rejected = self.direction is Direction.FORWARD and isinstance(exc, Rejected)
        if rejected:
            self.log.info("rejected: %s", cut(exc))
        else:
            self.log.error("gave up after %d attempt(s): %s: %s", n, type(exc).__name__, cut(exc))

        def decision(now: SagaState) -> tuple[Transition, CommitOptions]:
            entry: JSONObject | None = None
            if rejected:
                transition = decide.decide_step_rejected(now, shape, index, exc, n)
            elif self.direction is Direction.FORWARD:
                transition, entry = decide.decide_step_gave_up(now, shape, index, exc, n)
            else:
                transition, entry = decide.decide_compensation_gave_up(now, shape, index, exc, n)
            return transition, CommitOptions(token=granted.token, release=True, dead_entry=entry, lane=self.lane)

        result = self._committed(state, decision, "commit of the failure")
        self.ending = gave_up(exc, n, rejected) if result.applied else skipped(f"commit refused ({result.reason})")
        if not result.applied:
            self.log.warning("commit of the failure refused (%s); result discarded", result.reason)


def deliver(
    rt: Runtime, step: StepDefinition, direction: Direction, run_id: str, attempt: int, *, by_name: bool = False
) -> Ending:
    """Handle one delivered message (see :class:`Delivery`); returns how it ended."""
    return Delivery(rt, step, direction, run_id, attempt, by_name=by_name).run()

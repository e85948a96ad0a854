"""The Celery glue: the only module that imports celery or kombu.

It configures apps for correctness, registers the task of each step and compensation, sends
task messages, and connects to worker signals. It knows nothing of what a task does: the
handler it registers is given to it.

Every saga task is consumed through :class:`GuardedStrategy`, which checks each message before
Celery turns it into a request (see :func:`message_problem`). A message that is not a well-formed
saga call — any body, any headers, any content type — is rejected without requeue and reported
through ``on_poison`` (a log line, a metric, an event on the run when one can be named), and the
worker goes on consuming. This holds for every body shape because nothing of the message is used
before the check, and the check itself only inspects: whatever Celery would raise later while
building the request is raised inside the guard and caught there, broker connection errors
excepted (those are Celery's to handle). Rejecting never loses a run: the run's record is in
the store, and the watchdog sends its step again.

A task ends in the state its delivery's outcome gives (:class:`End`), once the saga recorded it:
SUCCESS, RETRY (``Retry`` raised: Celery acks and sends nothing), FAILURE (:class:`AttemptFailed`,
acked) or IGNORED (``Ignore``, acked, and a ``task-ignored`` event). Messages carry readable
keyword arguments (:func:`call_kwargs`) and the run id as root id, so Flower shows a run in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from celery import Celery, signals
from celery import current_app as _current_app
from celery.exceptions import Ignore, Retry
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

from ..core import Direction, call_problem, cut, readable_run_id
from ..errors import BrokerUnavailable, SagaError
from ..settings import Settings
from ..store import BeginOutcome

logger = logging.getLogger(__name__)

#: Reports a rejected message: (task name, why, the run id it names or None).
PoisonHandler = Callable[[str, str, "str | None"], None]


class End(StrEnum):
    """How one delivery of a saga task ended; each becomes the Celery task's state (what Flower
    shows), after the saga has recorded the outcome itself."""

    COMMITTED = "SUCCESS"  # the body ran and its result was committed: the task returns
    RETRYING = "RETRY"  # the attempt failed and the saga sent the next one: ``Retry`` raised
    GAVE_UP = "FAILURE"  # the attempt failed for good (a dead letter, the unwind): ``AttemptFailed``
    SKIPPED = "IGNORED"  # nothing ran: a duplicate, a stale or busy run, a parked one: ``Ignore``


@dataclass(frozen=True)
class Ending:
    """How one delivery ended (:class:`End`), why (one line, shown by Flower), and for a retry
    the delay before the next attempt, which the saga has already sent."""

    end: End = End.COMMITTED
    why: str = ""
    delay: float | None = None


#: A delivery whose result was committed.
COMMITTED = Ending()

#: Why a delivery ran no body (or its result was not recorded), by what ``begin`` answered.
_NOT_BEGUN = {
    BeginOutcome.RUN: "superseded: the attempt lost its lease before its result was recorded",
    BeginOutcome.DONE: "a duplicate delivery: this step is committed already",
    BeginOutcome.BUSY: "another attempt of this step holds the run",
    BeginOutcome.STALE: "the run has moved past this step, or finished",
    BeginOutcome.DRIFT: "the run was started under another definition: parked",
    BeginOutcome.MISSING: "no such run",
    BeginOutcome.EXPIRED: "the run's deadline has passed: not begun, the run unwinds",
}


def skipped(why: str) -> Ending:
    """A delivery that ran nothing, or whose result was discarded: IGNORED."""
    return Ending(End.SKIPPED, why)


def not_begun(outcome: BeginOutcome) -> Ending:
    """A delivery that ``begin`` did not let run (for ``RUN``: one whose attempt then lost its lease)."""
    return skipped(_NOT_BEGUN.get(outcome, str(outcome)))


def will_retry(exc: BaseException, attempt: int, delay: float) -> Ending:
    """Attempt ``attempt`` failed with ``exc``; the next one is sent, ``delay`` seconds on: RETRY."""
    return Ending(End.RETRYING, f"attempt {attempt} failed: {type(exc).__name__}: {cut(str(exc))}", delay)


def gave_up(exc: BaseException, attempts: int, rejected: bool = False) -> Ending:
    """The step or compensation gave up after ``attempts`` (or the step rejected): FAILURE."""
    what = "rejected" if rejected else f"gave up after {attempts} attempt(s)"
    return Ending(End.GAVE_UP, f"{what}: {type(exc).__name__}: {cut(str(exc))}")


class AttemptFailed(SagaError):
    """An attempt of a saga task failed (it will be retried, or it gave up): raised to Celery
    only so that the task's state says so. The saga recorded the failure before; Celery logs it
    as expected (one INFO line, no traceback), acknowledges the message, and never retries it."""


class SagaRequest(Request):  # type: ignore[misc]
    """Celery's request of a saga task, which also reports a skipped delivery (``Ignore``) with a
    ``task-ignored`` event — when task events are on — so that monitors (Flower) show it as
    IGNORED, neither a success nor a failure. Celery itself acknowledges the message."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """Celery's handling, then the ``task-ignored`` event for a skipped delivery."""
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # unwrapped from billiard's ExceptionWithTraceback
        if isinstance(exc, Ignore):
            self.send_event("task-ignored", exception=repr(exc))


#: Celery options of every saga task: at-least-once delivery, no result backend; an attempt
#: that fails ends the task in FAILURE (expected, so no traceback is logged) and is acked.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "acks_on_failure": True,  # a failed attempt is recorded by the saga: never redelivered
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": None,  # the saga counts attempts itself, across redeliveries too
    "serializer": "json",
    "shared": False,  # a saga's tasks belong to its app, not to every app made later
    "throws": (AttemptFailed,),
    "Request": SagaRequest,
}

#: A task handler: (run id, attempt, definition version) -> how the delivery ended (None: committed).
Handler = Callable[[str, int, int], Ending | None]


def call_kwargs(run_id: str, saga: str, step: str, direction: Direction, attempt: int, version: int) -> dict[str, Any]:
    """The keyword arguments of a saga task message: the attempt and definition version the
    handler reads, and, for people reading it (Flower's search: ``kwargs:run=<run id>``), the run,
    saga, step and direction. Never the payload."""
    return {
        "run": run_id,
        "saga": saga,
        "step": step,
        "direction": direction.value,
        "attempt": attempt,
        "version": version,
    }


def task_name(saga: str, step: str, direction: Direction) -> str:
    """``saga.<saga>.<step>`` for a step, ``saga.<saga>.<step>.compensate`` for its compensation."""
    name = f"saga.{saga}.{step}"
    return name if direction is Direction.FORWARD else f"{name}.compensate"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings saga tasks rely on: JSON only, late acks, one message prefetched,
    tasks of a lost worker requeued, no result backend needed."""
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        # a channel error (e.g. a broker Redis at maxmemory refusing the consumer's bookkeeping)
        # restarts the consumer instead of killing the worker
        "broker_channel_error_retry": True,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {"visibility_timeout": 3600},
    }


def create_app(name: str, settings: Settings, **overrides: Any) -> Celery:
    """A Celery app configured by :func:`celery_config`, plus ``overrides``."""
    app = Celery(name)
    app.conf.update({**celery_config(settings), **overrides})
    return app


def current_app() -> Any:
    """Celery's current app, for sagas declared without an app."""
    return _current_app._get_current_object()


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "task": (str,),
    "shadow": (str, type(None)),
    "root_id": (str, type(None)),
    "parent_id": (str, type(None)),
    "group": (str, type(None)),
    "argsrepr": (str, type(None)),
    "kwargsrepr": (str, type(None)),
    "ignore_result": (bool, type(None)),
    "retries": (int, type(None)),
    "eta": (str, type(None)),
    "expires": (str, type(None)),
    "timelimit": (list, tuple, type(None)),
}
_EMBED_LINKS = ("callbacks", "errbacks", "chain", "chord")


def _header_problem(headers: dict[str, Any]) -> str | None:
    for field, types in _HEADER_TYPES.items():
        value = headers.get(field)
        if not isinstance(value, types):
            return f"header {field!r} is {cut(value, 40)}"
    for field in ("eta", "expires"):
        if headers.get(field) is not None:
            try:
                datetime.fromisoformat(headers[field])
            except ValueError:
                return f"header {field!r} is not an ISO-8601 time: {cut(headers[field], 40)}"
    limits = headers.get("timelimit")
    if limits is not None and (len(limits) != 2 or not all(v is None or isinstance(v, int | float) for v in limits)):
        return f"header 'timelimit' is {cut(limits, 40)}"
    return None


def message_problem(message: Any, body: Any) -> tuple[str | None, str | None]:
    """What makes ``message`` not a well-formed call of a saga task (None if nothing), and the
    run id it names if one can be read. ``body`` is what Celery decoded already (protocol 1), or
    None (protocol 2: the body is decoded here)."""
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers or body is not None:
        return "not a task message of Celery's protocol 2", None
    problem = _header_problem(headers)
    payload = message.decode()  # refuses a content type the app does not accept
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return f"the body is not [args, kwargs, embed]: {cut(payload, 60)}", None
    args, kwargs, embed = payload
    run_id = readable_run_id(args[0]) if isinstance(args, list | tuple) and args else None
    if problem:
        return problem, run_id
    if not isinstance(args, list | tuple) or len(args) != 1:
        return f"the arguments are not [run_id]: {cut(args, 60)}", run_id
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return f"the keyword arguments are not an object: {cut(kwargs, 60)}", run_id
    if embed is not None and (not isinstance(embed, dict) or any(embed.get(link) for link in _EMBED_LINKS)):
        return "the message links other tasks (callbacks, errbacks, chain or chord)", run_id
    if kwargs.get("run", args[0]) != args[0]:
        return f"the keyword 'run' names another run than the first argument: {cut(kwargs['run'], 60)}", run_id
    return call_problem(args[0], kwargs.get("attempt", 1), kwargs.get("version", 1)), run_id


class GuardedStrategy:
    """Celery's default strategy for one saga task, behind :func:`message_problem`: a message
    that is not a well-formed saga call (or that Celery cannot turn into a request) is rejected
    without requeue and reported to ``on_poison``; the consumer goes on."""

    def __init__(self, on_poison: PoisonHandler) -> None:
        self.on_poison = on_poison

    def __call__(self, task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
        """Build the message handler of ``task`` for ``consumer`` (Celery calls this once)."""
        handle = default_strategy(task, app, consumer, **options)
        connection_errors = consumer.connection_errors

        def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
            run_id: str | None = None
            try:
                problem, run_id = message_problem(message, body)
                if problem is None:
                    return handle(message, body, ack, reject, callbacks, **kw)
            except connection_errors:
                raise
            except Exception as exc:  # whatever Celery cannot read: a decode error, a shape it chokes on
                problem = f"{type(exc).__name__}: {exc}"
            self.on_poison(task.name, cut(problem), run_id)
            if not message.acknowledged:
                message.reject_log_error(logger, connection_errors, requeue=False)
            return None

        return task_message_handler


def end_task(ending: Ending) -> None:
    """End the running Celery task as ``ending`` says: return (SUCCESS), or raise ``Retry``
    (RETRY: Celery acks the message and sends nothing, the saga sent the next attempt),
    :class:`AttemptFailed` (FAILURE, acked) or ``Ignore`` (acked; IGNORED for monitors)."""
    if ending.end is End.RETRYING:
        raise Retry(ending.why, AttemptFailed(ending.why), when=ending.delay)
    if ending.end is End.GAVE_UP:
        raise AttemptFailed(ending.why)
    if ending.end is End.SKIPPED:
        raise Ignore(ending.why)


def register_task(app: Any, name: str, handler: Handler, doc: str, on_poison: PoisonHandler) -> Any:
    """Register task ``name`` on ``app``; a message ``(run_id, attempt=n, version=v)`` calls
    ``handler(run_id, n, v)``, and the task ends as the handler's :class:`Ending` says
    (:func:`end_task`; an eager call always returns). Keyword arguments it does not know (the
    readable ones of :func:`call_kwargs` among them) are ignored, so a message from a newer
    deployment still reaches an older worker; a message that is not a saga call at all never
    reaches it (:class:`GuardedStrategy`)."""

    def run(task: Any, run_id: str, attempt: int = 1, version: int = 1, **_: Any) -> None:
        ending = handler(run_id, attempt, version)
        if ending is not None and not task.request.is_eager:
            end_task(ending)

    run.__name__ = name.replace(".", "_").replace("-", "_")
    run.__doc__ = doc
    return app.task(name=name, Strategy=GuardedStrategy(on_poison), **TASK_OPTIONS)(run)


#: How long after its soft time limit a step's worker child is killed (the hard limit).
HARD_LIMIT_GRACE = 5.0


def limit_time(task: Any, seconds: float) -> None:
    """Give ``task`` Celery's soft time limit ``seconds`` (the body gets
    ``SoftTimeLimitExceeded``) and a hard limit :data:`HARD_LIMIT_GRACE` later (the pool child
    is killed). Prefork pools enforce them; the lease fences a killed attempt."""
    task.soft_time_limit = seconds
    task.time_limit = seconds + HARD_LIMIT_GRACE


def send(
    app: Any,
    name: str,
    run_id: str,
    kwargs: dict[str, Any],
    *,
    countdown: float | None = None,
    queue: str = "",
    task_id: str | None = None,
) -> None:
    """Publish one message of task ``name`` for a run — the run id first, ``kwargs`` (see
    :func:`call_kwargs`) — through the task object when ``app`` has it (so eager mode applies),
    else by name. Its root task id is the run id, so every task of a run has the same root; its
    parent is the task running in this thread, if any (Celery's rule). ``task_id``: its own id
    (a new one when None).

    Raises :class:`~saga.errors.BrokerUnavailable` when the broker cannot take it.
    """
    options: dict[str, Any] = {"root_id": run_id}
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown
    if task_id:
        options["task_id"] = task_id
    task = app.tasks.get(name)
    try:
        if task is not None:
            task.apply_async(args=(run_id,), kwargs=kwargs, **options)
        else:
            app.send_task(name, args=(run_id,), kwargs=kwargs, **options)
    except Exception as exc:  # unreachable, full, refusing: the run is saved; the watchdog resends
        raise BrokerUnavailable(f"{type(exc).__name__}: {cut(exc)}") from exc


def on_worker_signal(app: Any, name: str, handler: Callable[..., None]) -> None:
    """Call ``handler(**kwargs)`` on Celery worker signal ``name`` (``worker_init``,
    ``worker_ready``, ``worker_shutting_down``) for the workers of ``app`` only: the signal's
    sender, a worker or its consumer, carries its app."""

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is app:
            handler(**kwargs)

    getattr(signals, name).connect(receiver, weak=False)


def on_process_signal(name: str, handler: Callable[..., None]) -> None:
    """Call ``handler(**kwargs)`` on a Celery signal whose sender names no app
    (``worker_process_shutdown``, sent in a pool child with its pid; ``worker_shutdown``)."""
    getattr(signals, name).connect(handler, weak=False)


def point_at_broker(app: Any, broker_url: str) -> None:
    """Point an app's publishing at another broker, dropping its pooled connections."""
    app.conf.broker_url = broker_url
    app._after_fork()  # what Celery does in a forked child: forget the connection pools

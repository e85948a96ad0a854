"""Task messages the store pushes itself: when the broker is the store's own Redis, the message of
the next task is built here and pushed by the commit script, in the same round trip as the commit
(no second round trip, and no moment where a committed step has no message).

The message must be exactly what Celery and kombu's Redis transport would have pushed. The first
message of a task (per thread, app and queue) is built by Celery itself, published through a
kombu channel that keeps the message instead of sending it (:class:`_CaptureChannel`); it is the
template. Every later message copies the template and sets what differs from one message to the
next, as Celery sets it: the task id (also the correlation id), the parent task, the argument
reprs, the delivery tag and the body. Every message of a run has the run id as its root id, so
a run's tasks share one root whoever sent them (a worker, the watchdog, the CLI). Where a
template cannot be trusted to say everything — ``before_task_publish``/``after_task_publish``
receivers (they may add headers per message), parent priority inherited — every message is
built by Celery, still without sending.
``tests/test_messages.py`` compares both with what a real publish pushes.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from queue import Empty
from typing import Any

from celery import signals
from celery.utils.saferepr import saferepr
from kombu.connection import Connection
from kombu.transport import virtual
from kombu.utils.json import dumps as kombu_dumps

from ..store import Message

logger = logging.getLogger(__name__)

#: The links a saga task's body carries: none.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def json_dumps(value: Any) -> str:
    """JSON text as kombu writes it (its encoder, its separators)."""
    return str(kombu_dumps(value))  # type: ignore[no-untyped-call]


def broker_url(app: Any) -> str:
    """The broker URL ``app`` publishes to ('' when it has none set)."""
    return str(app.conf.broker_url or "")


class _NotCapturable(Exception):
    """The message goes through an exchange the capture cannot route as the broker would."""


class _Capture(threading.local):
    """What this thread's capture channel took last: (queue, message)."""

    taken: tuple[str, dict[str, Any]] | None = None


_captured = _Capture()


class _CaptureChannel(virtual.Channel):
    """A virtual channel that routes, serialises and encodes a message exactly as kombu's virtual
    transports (Redis among them) do, then keeps it instead of sending it. Only the anonymous
    exchange (what Celery uses for a direct queue) is routed; anything else is refused."""

    do_restore = False

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        if exchange:
            raise _NotCapturable(f"exchange {exchange!r}")
        super().basic_publish(message, exchange, routing_key, **kwargs)  # type: ignore[no-untyped-call]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        _captured.taken = (queue, message)

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        raise _NotCapturable(f"fanout exchange {exchange!r}")

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        raise Empty()

    def _size(self, queue: str) -> int:
        return 0

    def _purge(self, queue: str) -> int:
        return 0

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        return None

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        return None


class _CaptureTransport(virtual.Transport):
    Channel = _CaptureChannel
    driver_type = driver_name = "saga-capture"

    def driver_version(self) -> str:
        return "1"


class _PerThread(threading.local):
    """This thread's capture producer per app, and its templates per (app, task, queue)."""

    def __init__(self) -> None:
        self.producers: dict[int, Any] = {}
        self.templates: dict[tuple[int, str, str], tuple[str, dict[str, Any]]] = {}


_local = _PerThread()
_warned: list[str] = []  # a failure to build a message is logged once per process


def captured(
    app: Any, name: str, run_id: str, kwargs: dict[str, Any], queue: str, task_id: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The (queue, message) Celery would publish for task ``name`` of ``app`` (root id: the run
    id; ``task_id``, or a new one) — routed, serialised and encoded by Celery and kombu
    themselves — or None when it goes through an exchange."""
    producer = _local.producers.get(id(app))
    if producer is None:
        producer = app.amqp.Producer(Connection(transport=_CaptureTransport), auto_declare=False)  # type: ignore[no-untyped-call]
        _local.producers[id(app)] = producer
    options: dict[str, Any] = {"root_id": run_id}
    if queue:
        options["queue"] = queue
    if task_id:
        options["task_id"] = task_id
    task = app.tasks.get(name)
    _captured.taken = None
    try:
        if task is not None:  # as tasks.send does: the task's own options (ignore_result, ...) apply
            task.apply_async(args=(run_id,), kwargs=kwargs, producer=producer, **options)
        else:
            app.send_task(name, args=(run_id,), kwargs=kwargs, producer=producer, **options)
    except _NotCapturable:
        return None
    taken, _captured.taken = _captured.taken, None
    return taken


def from_template(
    app: Any, template: dict[str, Any], run_id: str, kwargs: dict[str, Any], task_id: str | None = None
) -> dict[str, Any]:
    """A message like ``template`` for ``run_id`` and ``kwargs``, with what Celery sets anew for
    every message: the task id (``task_id``, or a new one), the root id (the run id), the parent
    task if one runs, argument reprs, delivery tag, body."""
    task_id = task_id or str(uuid.uuid4())
    parent = app.current_worker_task
    args = (run_id,)
    amqp, levels = app.amqp, app.conf.task_repr_maxlevels
    headers = {
        **template["headers"],
        "id": task_id,
        "root_id": run_id,
        "parent_id": parent.request.id if parent else None,
        "argsrepr": saferepr(args, amqp.argsrepr_maxsize, maxlevels=levels),
        "kwargsrepr": kwargs_repr(kwargs, amqp.kwargsrepr_maxsize, levels),
    }
    properties = {**template["properties"], "correlation_id": task_id, "delivery_tag": str(uuid.uuid4())}
    body = base64.b64encode(json_dumps((args, kwargs, _EMBED)).encode("utf-8")).decode("ascii")
    return {**template, "body": body, "headers": headers, "properties": properties}


def kwargs_repr(kwargs: dict[str, Any], maxsize: int, levels: int) -> str:
    """``saferepr(kwargs)``, the text Celery puts in a message's ``kwargsrepr``: ``repr`` when it
    is the same text (flat, plain strings and whole numbers, no quote or escape that the two
    write differently, well under the size limit), about thirty times faster."""
    text = repr(kwargs)
    plain = all(type(v) in (str, int) for v in kwargs.values())
    if plain and len(text) < maxsize // 2 and "\\" not in text and '"' not in text:
        return text
    return str(saferepr(kwargs, maxsize, maxlevels=levels))


def _per_message(app: Any) -> bool:
    """Whether every message must be built by Celery (a template cannot say all of it)."""
    return bool(
        app.conf.task_inherit_parent_priority
        or signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
    )


def redis_message(
    app: Any, name: str, run_id: str, kwargs: dict[str, Any], *, queue: str = "", task_id: str | None = None
) -> Message | None:
    """The message ``tasks.send`` would publish for a run (same ``kwargs``, same ``task_id`` or a
    new one), as kombu's Redis transport would push it, but not sent: a commit script pushes it,
    with the commit it follows.

    None when this app's messages cannot be pushed that way: an eager app, ``task-sent`` events
    on, a priority, an exchange other than the anonymous one (custom routing), or any failure to
    build it (logged once): the caller then sends the message itself after the commit.
    """
    conf = app.conf
    if conf.task_always_eager or conf.task_send_sent_event:
        return None
    key = (id(app), name, queue)
    try:
        if _per_message(app):
            taken = captured(app, name, run_id, kwargs, queue, task_id)
        elif key in _local.templates:
            queue_name, template = _local.templates[key]
            taken = (queue_name, from_template(app, template, run_id, kwargs, task_id))
        else:
            taken = captured(app, name, run_id, kwargs, queue, task_id)
            if taken is not None:
                _local.templates[key] = taken
    except Exception as exc:
        if not _warned:
            _warned.append(name)
            logger.warning("task messages are sent after each commit, not with it: %s: %s", type(exc).__name__, exc)
        return None
    if taken is None or taken[1]["properties"].get("priority"):
        return None
    prefix = (conf.broker_transport_options or {}).get("global_keyprefix", "")
    return Message(f"{prefix}{taken[0]}", json_dumps(taken[1]))

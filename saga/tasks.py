"""The Celery glue: the only module that imports celery or kombu.

It configures apps for correctness, registers the task of each step and compensation, sends
task messages, and connects to worker signals. It knows nothing of what a task does: the
handler it registers is given to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery import current_app as _current_app
from kombu.exceptions import OperationalError

from .errors import BrokerUnavailable
from .settings import Settings
from .state import Direction

#: Celery options of every saga task: at-least-once delivery, no result backend.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": None,  # the saga counts attempts itself, across redeliveries too
    "serializer": "json",
    "shared": False,  # a saga's tasks belong to its app, not to every app made later
}

#: A task handler: (run id, attempt, definition version) -> None.
Handler = Callable[[str, int, int], None]


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


def register_task(app: Any, name: str, handler: Handler, doc: str) -> Any:
    """Register task ``name`` on ``app``; a message ``(run_id, attempt=n, version=v)`` calls
    ``handler(run_id, n, v)``. Keyword arguments it does not know are ignored, so a message from
    a newer deployment still reaches an older worker."""

    def run(task: Any, run_id: str, attempt: int = 1, version: int = 1, **_: Any) -> None:
        handler(run_id, attempt, version)

    run.__name__ = name.replace(".", "_").replace("-", "_")
    run.__doc__ = doc
    return app.task(name=name, **TASK_OPTIONS)(run)


def send(
    app: Any,
    name: str,
    run_id: str,
    *,
    version: int = 1,
    attempt: int = 1,
    countdown: float | None = None,
    queue: str = "",
) -> None:
    """Publish one message of task ``name`` for a run (the run id first, so Flower finds it by
    id), through the task object when ``app`` has it (so eager mode applies), else by name.
    ``attempt`` and the run's definition ``version`` travel as keyword arguments when not 1.

    Raises :class:`~saga.errors.BrokerUnavailable` when the broker cannot take it.
    """
    options: dict[str, Any] = {}
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown
    kwargs = {key: value for key, value in (("attempt", attempt), ("version", version)) if value != 1}
    task = app.tasks.get(name)
    try:
        if task is not None:
            task.apply_async(args=(run_id,), kwargs=kwargs, **options)
        else:
            app.send_task(name, args=(run_id,), kwargs=kwargs, **options)
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(str(exc)) from exc


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

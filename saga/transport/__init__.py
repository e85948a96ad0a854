"""saga.transport: its face (the names other packages use)."""

from . import messages, tasks
from .messages import captured, from_template, kwargs_repr, redis_message
from .tasks import (
    COMMITTED,
    Ending,
    call_kwargs,
    create_app,
    gave_up,
    not_begun,
    point_at_broker,
    send,
    skipped,
    will_retry,
)

__all__ = [
    "COMMITTED",
    "Ending",
    "call_kwargs",
    "captured",
    "create_app",
    "from_template",
    "gave_up",
    "kwargs_repr",
    "messages",
    "not_begun",
    "point_at_broker",
    "redis_message",
    "send",
    "skipped",
    "tasks",
    "will_retry",
]

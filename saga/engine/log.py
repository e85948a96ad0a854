"""Log lines about a run: its id, saga and step in the text and as record attributes.

Untrusted text never forges a line: the run's identity, the message and every text argument
(a step's exception message above all) have their control characters escaped (``\\n``,
``\\r``, ``\\x1b``: :func:`~saga.errors.visible`), so one call is one line of the log.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from ..errors import cut, visible


def _safe(arg: object) -> object:
    """A log argument that cannot break its line: text and exceptions as escaped text."""
    if isinstance(arg, str):
        return visible(arg)
    if isinstance(arg, BaseException):
        return visible(str(arg))
    return arg


class RunLog(logging.LoggerAdapter[logging.Logger]):
    """Log lines that carry run id, saga and step: in the text, and as record attributes
    (``%(run_id)s``, ``%(saga)s``, ``%(step)s``) for structured formatters. A logger of the
    whole run (``step`` empty: a compensation started by an operator, the watchdog parking a
    run) leaves ``step=`` out of the text; the attribute stays, empty."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the message with the run's identity and add it to the record's attributes."""
        e = dict(self.extra or {})
        kwargs["extra"] = {**e, **kwargs.get("extra", {})}
        text = visible(msg) if isinstance(msg, str) else msg
        step = f" step={cut(e.get('step'))}" if e.get("step") else ""  # a line about the whole run names no step
        return f"[run={cut(e.get('run_id'), 80)} saga={cut(e.get('saga'))}{step}] {text}", kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log ``msg`` % ``args`` with text arguments escaped (every level's method comes here)."""
        super().log(level, msg, *(_safe(a) for a in args), **kwargs)


def run_logger(logger: logging.Logger, run_id: str, saga: str, step: str) -> RunLog:
    """``logger``, with every line carrying the run's identity (an untrusted run id cut short)."""
    return RunLog(logger, {"run_id": run_id, "saga": saga, "step": step})

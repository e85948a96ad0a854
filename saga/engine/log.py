"""Log lines about a run: its id, saga and step in the text and as record attributes."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from ..errors import cut


class RunLog(logging.LoggerAdapter[logging.Logger]):
    """Log lines that carry run id, saga and step: in the text, and as record attributes
    (``%(run_id)s``, ``%(saga)s``, ``%(step)s``) for structured formatters."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the message with the run's identity and add it to the record's attributes."""
        e = dict(self.extra or {})
        kwargs["extra"] = {**e, **kwargs.get("extra", {})}
        return f"[run={cut(e.get('run_id'), 80)} saga={e.get('saga')} step={e.get('step')}] {msg}", kwargs


def run_logger(logger: logging.Logger, run_id: str, saga: str, step: str) -> RunLog:
    """``logger``, with every line carrying the run's identity (an untrusted run id cut short)."""
    return RunLog(logger, {"run_id": run_id, "saga": saga, "step": step})

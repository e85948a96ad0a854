"""saga.engine: its face (the names other packages use)."""

from . import commit, metrics, runs
from .commit import Runtime, SagaDefinition, StoredDefinition
from .delivery import StepDefinition, deliver
from .heartbeat import Heartbeat
from .log import run_logger
from .metrics import ArchiveGauges
from .runs import park
from .watchdog import Watchdog, stuck_seconds

__all__ = [
    "ArchiveGauges",
    "Heartbeat",
    "Runtime",
    "SagaDefinition",
    "StepDefinition",
    "StoredDefinition",
    "Watchdog",
    "commit",
    "deliver",
    "metrics",
    "park",
    "run_logger",
    "runs",
    "stuck_seconds",
]

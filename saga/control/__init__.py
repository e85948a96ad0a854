"""saga.control: its face (the names other packages use)."""

from . import archive, runs
from .archive import find_runs
from .runs import dead_letters

__all__ = [
    "archive",
    "dead_letters",
    "find_runs",
    "runs",
]

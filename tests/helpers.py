"""Helpers several test modules share (conftest holds fixtures only)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from saga import Settings
from saga.testing import worker_env

ROOT = Path(__file__).resolve().parents[1]

#: (metric sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample a Prometheus endpoint serves now ({} while it does not answer)."""
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


#: Apply an effect once per idempotency key and record the order of first applications, in one
#: script: a Redis restart between the two writes would keep the effect and lose its place.
_APPLY_ONCE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
return 0
"""


def apply_once(client: Any, effects: str, order: str, idempotency_key: str, what: str) -> None:
    """A test ledger's effect ``what``, applied once per ``idempotency_key`` in the hash
    ``effects``, its first application appended to the list ``order`` (same slot on a cluster)."""
    client.eval(_APPLY_ONCE, 2, effects, order, idempotency_key, what)


def saga_cli(settings: Settings, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m saga ARGS`` as an operator runs it: from the repository root, with ``settings``
    (and ``env``) in its environment; ``timeout`` catches a hang."""
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=worker_env(settings, **env),
        timeout=timeout,
    )

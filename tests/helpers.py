"""Helpers several test modules share (conftest holds fixtures only)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from saga import Settings
from saga.registry import default_registry
from saga.testing import configured, free_port, start_worker_process, stop_process_group, worker_env

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


@contextmanager
def archiving_worker(
    settings: Settings, name: str, queue: str, archive_url: str, hot_seconds: int
) -> Iterator[Settings]:
    """``settings`` with a key prefix of its own, ``queue`` for every step, an archive at
    ``archive_url`` (its tables made by ``saga db upgrade``, as an operator makes them) and runs
    kept ``hot_seconds`` in Redis after it; the default registry configured with them, and a
    ``celery -A workers`` worker that archives, stopped on exit."""
    mine = settings.replace(
        key_prefix=f"{name}{uuid.uuid4().hex[:6]}",
        step_queue=queue,
        compensation_queue=queue,
        archive_url=archive_url,
        hot_retention_seconds=hot_seconds,
        watchdog_interval=0.2,
    )
    with configured(default_registry(), mine):
        upgraded = saga_cli(mine, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        proc = start_worker_process(
            "workers", worker_env(mine), name=f"{name}{free_port()}", pool="threads", queues=queue, cwd=ROOT
        )
        try:
            yield mine
        finally:
            stop_process_group(proc)

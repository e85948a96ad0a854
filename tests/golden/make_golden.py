"""Make the golden fixtures: records of storage format 1 as saga writes them today.

    .venv/bin/python -m tests.golden.make_golden

It starts a private ``redis-server``, runs real sagas through a real (in-thread) Celery worker —
a run that completes (with a start key, tags and a deadline), one compensated after a step gave
up (its dead-letter entry included), one rejected, one failed (its compensation gave up too), one
through a parallel group, and one parked — and writes:

- ``redis_format1.json``: every key under the store's prefix, ``key -> [type, value]`` (a hash
  as an object, a list as an array, a sorted set as ``[member, score]`` pairs, a string as
  text), readable and diffable, plus ``runs``: which run is which case;
- ``archive_format1.json``: the rows the archive writes for those runs (``Archive.write`` of
  each run as the archiver copies it, into a SQLite archive), table by table.

The fixtures are records as deployed data holds them: written before records carried their
format. So the code of today writes them, then this script strips what format 1 records never
had: the ``format`` field of each run's meta hash, and the ``format`` column of each run row (a
database upgraded to revision 0002 gives those rows format 1 by its server default).

When to regenerate: only when adding a new storage format — and then keep these files (make
new ones beside them, e.g. ``redis_format2.json``), because data of every format saga reads is
still out there. Never regenerate to make ``tests/test_storage_format.py`` pass: a failure there
means the code no longer reads records that are deployed; fix the code, or migrate those records.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from saga import PermanentError, Rejected, Saga, Settings, Status, StepContext
from saga.archive import Archive, RunCopy, metadata
from saga.core import FORMAT_FIELD, rebuild
from saga.engine import park, run_logger
from saga.registry import Registry
from saga.store import Client, connect
from saga.testing import RedisServer, configured, in_thread_worker

HERE = Path(__file__).resolve().parent
REDIS_FILE = HERE / "redis_format1.json"
ARCHIVE_FILE = HERE / "archive_format1.json"
#: The store's key prefix in the fixtures.
PREFIX = "saga"

registry = Registry()
app = registry.create_app("golden")
RETRY: dict[str, Any] = {"max_retries": 1, "retry_backoff": 0.01, "retry_backoff_max": 0.02}

order = Saga("golden_order", app=app, registry=registry)


@order.step(**RETRY)
def reserve(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"reserved": payload["sku"]}


@reserve.compensate
def release(payload: dict[str, Any], ctx: StepContext) -> None:
    return None


@order.step(**RETRY)
def charge(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if payload.get("reject"):
        raise Rejected("insufficient funds")
    return {"charged": payload["amount"]}


@charge.compensate
def refund(payload: dict[str, Any], ctx: StepContext) -> None:
    if payload.get("refund_fails"):
        raise PermanentError("the refund was refused by the bank")


@order.step(**RETRY)
def ship(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if payload.get("ship_fails"):
        raise PermanentError("no carrier serves this address")
    return {"shipped": True}


fanout = Saga("golden_fanout", app=app, registry=registry)


@fanout.step(**RETRY)
def pick(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"picked": True}


@fanout.step(group="prepare", **RETRY)
def pack(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"packed": True}


@pack.compensate
def unpack(payload: dict[str, Any], ctx: StepContext) -> None:
    return None


@fanout.step(group="prepare", **RETRY)
def label(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"labelled": True}


@fanout.step(**RETRY)
def dispatch(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"dispatched": True}


def make_runs(settings: Settings) -> dict[str, str]:
    """Run every case; returns run id by case."""
    runs: dict[str, str] = {}
    expected: dict[str, Status] = {}
    with configured(registry, settings, app), in_thread_worker(app, concurrency=4):
        cases: list[tuple[str, Saga, dict[str, Any], dict[str, Any], Status]] = [
            (
                "completed",
                order,
                {"sku": "sku-1", "amount": 12},
                {"key": "order-1", "tags": {"customer": "c-1"}, "deadline": 3600.0},
                Status.COMPLETED,
            ),
            ("compensated", order, {"sku": "sku-2", "amount": 5, "ship_fails": True}, {}, Status.COMPENSATED),
            ("rejected", order, {"sku": "sku-3", "amount": 7, "reject": True}, {}, Status.COMPENSATED),
            (
                "failed",
                order,
                {"sku": "sku-4", "amount": 9, "ship_fails": True, "refund_fails": True},
                {},
                Status.FAILED,
            ),
            ("group", fanout, {"order": "o-5"}, {"tags": {"customer": "c-5"}}, Status.COMPLETED),
        ]
        for case, saga, payload, start, status in cases:
            runs[case] = saga.start(payload, **start)
            expected[case] = status
        for case, run_id in runs.items():
            saga = fanout if case == "group" else order
            got = saga.wait(run_id, timeout=60).status
            if got is not expected[case]:
                raise SystemExit(f"golden: run {case} ended {got}, expected {expected[case]}")
    with configured(registry, settings, app):  # no worker: the run waits at its first step, and is parked
        run_id = order.start({"sku": "sku-6", "amount": 3})
        store = registry.store
        state = store.reads.get(run_id)
        log = run_logger(logging.getLogger(__name__), run_id, state.saga, "")
        if not park(store, state, "golden: a worker without this definition", log):
            raise SystemExit("golden: the parked run could not be parked")
        runs["parked"] = run_id
    return runs


def dump_redis(redis: Client, prefix: str) -> dict[str, list[Any]]:
    """Every key under ``prefix``: key -> [type, value]."""
    client: Any = redis  # a client decoding replies: every value is text
    out: dict[str, list[Any]] = {}
    for key in sorted(client.scan_iter(f"{prefix}:*")):
        kind = client.type(key)
        value: Any
        if kind == "hash":
            value = dict(sorted(client.hgetall(key).items()))
        elif kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "zset":
            value = [[member, score] for member, score in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "stream":
            value = [[entry_id, fields] for entry_id, fields in client.xrange(key)]
        else:
            raise SystemExit(f"golden: key {key} has type {kind}, which this dump does not know")
        out[key] = [kind, value]
    return out


def strip_format(records: dict[str, list[Any]], prefix: str) -> None:
    """Drop the format field of each run's meta hash (``P:{k}:r:R``): format 1 records have none."""
    for key, (kind, value) in records.items():
        if kind == "hash" and key.startswith(f"{prefix}:{{") and ":r:" in key:
            value.pop(FORMAT_FIELD, None)


def dump_archive(settings: Settings, run_ids: list[str], where: Path) -> dict[str, list[dict[str, Any]]]:
    """The archive's rows of ``run_ids``, copied as the archiver copies them, table by table
    (the run rows without their ``format`` column)."""
    store = registry.store_for(settings)
    url = f"sqlite:///{where / 'golden.db'}"
    archive = Archive(url)
    archive.upgrade()
    copies = []
    for run_id in run_ids:
        events = store.reads.events(run_id)
        copies.append(RunCopy(rebuild(events), events, store.keyspace.bucket(run_id)))
    archive.write(copies)
    archive.dispose()
    engine = sa.create_engine(url)
    tables: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            order_by = list(table.primary_key.columns)
            rows = [dict(row) for row in conn.execute(sa.select(table).order_by(*order_by)).mappings()]
            if table.name == "saga_runs":
                for row in rows:
                    del row[FORMAT_FIELD]
            tables[table.name] = rows
    engine.dispose()
    return tables


def main() -> int:
    """Make both fixtures (see the module)."""
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(redis_url=server.url, lease_seconds=2, metrics_port=0, key_prefix=PREFIX)
        runs = make_runs(settings)
        client = connect(server.url, retries=0)
        records = dump_redis(client, PREFIX)
        client.close()
        strip_format(records, PREFIX)
        rows = dump_archive(settings, list(runs.values()), Path(tmp))
    note = "storage format 1, as deployed (no format field); made by tests/golden/make_golden.py: read its docstring"
    _write(REDIS_FILE, {"note": note, "format": 1, "prefix": PREFIX, "runs": runs, "keys": records})
    _write(ARCHIVE_FILE, {"note": note, "format": 1, "runs": runs, "tables": rows})
    print(f"wrote {REDIS_FILE.name} ({len(records)} keys), {ARCHIVE_FILE.name} ({sum(map(len, rows.values()))} rows)")
    return 0


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())

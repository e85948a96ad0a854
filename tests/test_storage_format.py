"""Stored data carries its storage format, and this saga keeps reading what is deployed.

The golden fixtures (``tests/golden``, made by ``tests/golden/make_golden.py``: read its docstring
before touching them) are records of storage format 1 as deployed: Redis keys and archive rows
written before records named their format. Every test here loads them into a Redis server and a
SQLite archive of its own and reads them with today's code; a record edited to a newer format is
refused with one line naming both formats, and left exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from saga import RunNotFound, Saga, Settings, Status, StepContext, StorageFormatTooNew
from saga.archive import Archive, RunCopy, RunQuery, metadata
from saga.core import FORMAT_FIELD, STORAGE_FORMAT, Direction, rebuild
from saga.registry import Registry
from saga.store import Client, RedisStore, connect
from saga.testing import RedisServer, configured, worker_env

GOLDEN = Path(__file__).resolve().parent / "golden"
REDIS_GOLDEN = json.loads((GOLDEN / "redis_format1.json").read_text())
ARCHIVE_GOLDEN = json.loads((GOLDEN / "archive_format1.json").read_text())
RUNS: dict[str, str] = REDIS_GOLDEN["runs"]
PREFIX: str = REDIS_GOLDEN["prefix"]
ROOT = Path(__file__).resolve().parents[1]

#: What each golden run is.
STATUS = {
    "completed": Status.COMPLETED,
    "compensated": Status.COMPENSATED,
    "rejected": Status.COMPENSATED,
    "failed": Status.FAILED,
    "group": Status.COMPLETED,
    "parked": Status.PENDING,
}
REFUSED = "stored by storage format 2; this saga reads formats up to 1: upgrade saga on this machine"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server of this module's own (whatever the suite's store is)."""
    with RedisServer() as private:
        yield private


@pytest.fixture
def client(server: RedisServer) -> Iterator[Client]:
    """A client of the module's server, emptied, holding exactly the golden Redis records."""
    c = connect(server.url, retries=0)
    c.flushall()
    load_redis(c, REDIS_GOLDEN["keys"])
    yield c
    c.close()


@pytest.fixture
def store(server: RedisServer, client: Client) -> RedisStore:
    """Today's store over the golden records."""
    return RedisStore(server.url, prefix=PREFIX, retries=0)


def load_redis(client: Client, keys: dict[str, list[Any]]) -> None:
    """Write a dump of ``key -> [type, value]`` (the golden format) into Redis."""
    pipe = client.pipeline(transaction=False)
    for key, (kind, value) in keys.items():
        if kind == "hash":
            pipe.hset(key, mapping=value)
        elif kind == "string":
            pipe.set(key, value)
        elif kind == "list":
            pipe.rpush(key, *value)
        elif kind == "zset":
            pipe.zadd(key, {member: score for member, score in value})
        elif kind == "set":
            pipe.sadd(key, *value)
        elif kind == "stream":
            for entry_id, fields in value:
                pipe.xadd(key, fields, id=entry_id)
        else:
            raise AssertionError(f"the golden dump has a key of type {kind}")
    pipe.execute()


def every_key(client: Client) -> dict[str, bytes | None]:
    """Every key of the server and its DUMP: the exact bytes Redis holds."""
    return {key: client.dump(key) for key in sorted(client.scan_iter("*"))}


def with_format(client: Client, store: RedisStore, run_id: str, stored: str) -> None:
    """The run's record as a saga of format ``stored`` writes it: the meta hash's field, and the
    snapshot's own ``format`` key where the run keeps a snapshot (every format after 1 writes both)."""
    keys = store.keyspace.keys(run_id)
    client.hset(keys.meta, FORMAT_FIELD, stored)
    snapshot = client.get(keys.snapshot)
    if snapshot is not None and stored not in ("", "1"):
        client.set(keys.snapshot, json.dumps({**json.loads(snapshot), FORMAT_FIELD: stored}), keepttl=True)


# --- the fixtures are what deployed data is ---------------------------------------------------


def test_the_golden_records_are_format_1_without_the_field() -> None:
    assert REDIS_GOLDEN["format"] == ARCHIVE_GOLDEN["format"] == 1 == STORAGE_FORMAT
    metas = {k: v for k, (kind, v) in REDIS_GOLDEN["keys"].items() if kind == "hash" and ":r:" in k}
    assert sorted(k.rsplit(":", 1)[1] for k in metas) == sorted(RUNS.values())
    assert all(FORMAT_FIELD not in meta for meta in metas.values())
    assert all(FORMAT_FIELD not in row for row in ARCHIVE_GOLDEN["tables"]["saga_runs"])
    assert set(RUNS) == set(STATUS)


# --- today's code reads them ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(STATUS))
def test_each_golden_run_reads(store: RedisStore, case: str) -> None:
    run_id = RUNS[case]
    state = store.reads.get(run_id)
    assert (state.id, state.status) == (run_id, STATUS[case])
    events = store.reads.events(run_id)
    assert events[0]["type"] == "saga.started" and all(e["run_id"] == run_id for e in events)
    assert rebuild(events) == state
    history = store.reads.history(run_id)
    assert [s.version for s in history] == list(range(1, state.version + 1))
    assert history[-1] == state
    assert store.reads.at_version(run_id, 1) == history[0]
    assert store.reads.snapshots([run_id]) == [state]
    assert store.reads.meta(run_id)["saga"] == state.saga
    assert asyncio.run(store.aio.get(run_id)) == state
    assert asyncio.run(store.aio.events(run_id)) == events


def test_the_golden_runs_hold_what_their_steps_did(store: RedisStore) -> None:
    done = store.reads.get(RUNS["completed"])
    assert done.payload == {"sku": "sku-1", "amount": 12, "reserved": "sku-1", "charged": 12, "shipped": True}
    assert done.tags == {"customer": "c-1"} and [c.name for c in done.checkpoints] == ["reserve", "charge", "ship"]
    group = store.reads.get(RUNS["group"])
    assert {"picked", "packed", "labelled", "dispatched"} <= set(group.payload)
    assert store.reads.get(RUNS["compensated"]).error is not None
    rejected = store.reads.get(RUNS["rejected"])
    assert rejected.error is not None and rejected.error.type == "Rejected"
    assert store.reads.get(RUNS["failed"]).error is not None


def test_listings_and_dead_letters_find_the_golden_runs(store: RedisStore) -> None:
    completed = list(store.indexes.newest_runs([Status.COMPLETED]))
    assert sorted(completed) == sorted([RUNS["completed"], RUNS["group"]])
    assert list(store.indexes.newest_runs([Status.FAILED])) == [RUNS["failed"]]
    assert sorted(store.indexes.newest_runs([Status.COMPENSATED])) == sorted([RUNS["compensated"], RUNS["rejected"]])
    parked = store.indexes.parked()
    assert [p.run_id for p in parked] == [RUNS["parked"]]
    assert parked[0].reason == store.reads.progress(RUNS["parked"]).parked
    letters = store.indexes.dead_letters()
    assert {e["run_id"] for e in letters} == {RUNS["compensated"], RUNS["failed"]}
    for entry in letters:
        assert store.indexes.dead_letter(str(entry["id"])) == entry
    assert sorted(store.indexes.due(time.time() + 10**9)) == [RUNS["parked"]]


def test_the_cli_shows_a_golden_run(server: RedisServer, client: Client) -> None:
    out = saga_cli(server.url, "show", RUNS["completed"], "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"


# --- new records name their format ------------------------------------------------------------


def test_a_new_run_records_the_format_it_was_written_in(server: RedisServer, client: Client) -> None:
    registry = Registry()
    app = registry.create_app("storage_format")
    probe = Saga("storage_format_probe", app=app, registry=registry)

    @probe.step()
    def only(payload: dict[str, Any], ctx: StepContext) -> None:
        return None

    settings = Settings(redis_url=server.url, metrics_port=0, key_prefix=PREFIX)
    with configured(registry, settings, app):
        run_id = probe.start({"n": 1})  # no worker: the record as start() wrote it
        store = registry.store
        assert client.hget(store.keyspace.keys(run_id).meta, FORMAT_FIELD) == str(STORAGE_FORMAT)
        assert store.reads.get(run_id).status is Status.PENDING


# --- a newer format is refused, and left as it is ---------------------------------------------


@pytest.mark.parametrize("case", ["completed", "parked", "failed"])
def test_a_newer_format_is_refused_and_never_rewritten(client: Client, store: RedisStore, case: str) -> None:
    run_id = RUNS[case]
    fingerprint = client.hget(store.keyspace.keys(run_id).meta, "fingerprint")
    with_format(client, store, run_id, "2")
    before = every_key(client)
    reads: dict[str, Callable[[], object]] = {
        "get": lambda: store.reads.get(run_id),
        "events": lambda: store.reads.events(run_id),
        "history": lambda: store.reads.history(run_id),
        "at_version": lambda: store.reads.at_version(run_id, 1),
        "snapshots": lambda: store.reads.snapshots([RUNS["group"], run_id]),
        "logs": lambda: store.reads.logs([run_id]),
        "meta": lambda: store.reads.meta(run_id),
        "progress": lambda: store.reads.progress(run_id),
        "aio.get": lambda: asyncio.run(store.aio.get(run_id)),
        "aio.events": lambda: asyncio.run(store.aio.events(run_id)),
        "begin": lambda: store.begin(
            run_id,
            Direction.FORWARD,
            0,
            attempt=1,
            lease_ms=5000,
            fingerprint=str(fingerprint),
            check_at=time.time() + 60,
        ),
    }
    for name, read in reads.items():
        with pytest.raises(StorageFormatTooNew) as refused:
            read()
        message = str(refused.value)
        assert message == f"run {run_id}: {REFUSED}", name
        assert (refused.value.stored, refused.value.known) == ("2", 1)
    assert every_key(client) == before  # byte for byte: nothing read it into a rewrite


def test_a_batch_read_refuses_only_the_newer_run(client: Client, store: RedisStore) -> None:
    with_format(client, store, RUNS["failed"], "2")
    ids = [RUNS["completed"], RUNS["failed"], RUNS["parked"]]
    states = store.reads.read_snapshots(ids)
    assert isinstance(states[1], StorageFormatTooNew)
    assert states[0] == store.reads.get(RUNS["completed"]) and states[2] == store.reads.get(RUNS["parked"])
    logs = store.reads.read_logs(ids)
    assert isinstance(logs[1], StorageFormatTooNew)
    assert logs[0] == store.reads.events(RUNS["completed"])


@pytest.mark.parametrize("stored", ["1", ""])
def test_format_1_named_or_not_reads(client: Client, store: RedisStore, stored: str) -> None:
    run_id = RUNS["parked"]
    expected = store.reads.get(run_id)
    with_format(client, store, run_id, stored)
    assert store.reads.get(run_id) == expected
    assert store.reads.events(run_id)


def test_a_value_that_is_no_format_is_refused(client: Client, store: RedisStore) -> None:
    with_format(client, store, RUNS["completed"], "x9")
    with pytest.raises(StorageFormatTooNew, match="stored by storage format x9; this saga reads formats up to 1"):
        store.reads.get(RUNS["completed"])


def test_the_cli_refuses_a_newer_format_in_one_line(server: RedisServer, client: Client, store: RedisStore) -> None:
    run_id = RUNS["parked"]
    with_format(client, store, run_id, "2")
    before = every_key(client)
    out = saga_cli(server.url, "show", run_id)
    assert out.returncode != 0
    assert out.stderr.splitlines() == [f"error: run {run_id}: {REFUSED}"], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert every_key(client) == before


def saga_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m saga ARGS`` against the store at ``url``."""
    settings = Settings(redis_url=url, broker_url=url, key_prefix=PREFIX, metrics_port=0)
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=worker_env(settings),
        timeout=60,
    )


# --- the archive --------------------------------------------------------------------------------


def load_archive(url: str) -> None:
    """Insert the golden archive rows (as format 1 wrote them: no format column)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            rows = ARCHIVE_GOLDEN["tables"][table.name]
            if rows:
                conn.execute(table.insert(), rows)
    engine.dispose()


def run_formats(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {row.run_id: row.format for row in conn.execute(sa.text("SELECT run_id, format FROM saga_runs"))}
    engine.dispose()
    return found


def golden_events(run_id: str) -> list[dict[str, Any]]:
    rows = [r for r in ARCHIVE_GOLDEN["tables"]["saga_events"] if r["run_id"] == run_id]
    return [r["data"] for r in sorted(rows, key=lambda r: r["seq"])]


def test_the_golden_archive_rows_read_back_at_head(tmp_path: Path, store: RedisStore) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    archive = Archive(url)
    archive.upgrade()
    load_archive(url)
    assert run_formats(url) == {run_id: 1 for run_id in RUNS.values()}
    for case, run_id in RUNS.items():
        events = archive.events(run_id)
        assert events == golden_events(run_id)
        state = rebuild(events)
        assert state.status is STATUS[case]
        assert state == store.reads.get(run_id)  # the same run, whichever tier it is read from
    listed = archive.find_runs(RunQuery(limit=50)).runs
    assert sorted(r.run_id for r in listed) == sorted(RUNS.values())
    assert {r.run_id for r in archive.find_runs(RunQuery(tags={"customer": "c-5"})).runs} == {RUNS["group"]}
    archive.dispose()


def test_an_archive_at_0001_upgrades_and_its_rows_are_format_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", "saga.archive:migrations")
    config.set_main_option("path_separator", "os")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    load_archive(url)  # the rows as an archive at 0001 holds them
    archive = Archive(url)
    assert archive.revision() == "0001"
    assert archive.upgrade() == "0002"
    assert run_formats(url) == {run_id: 1 for run_id in RUNS.values()}
    for run_id in RUNS.values():
        assert archive.events(run_id) == golden_events(run_id)
    archive.dispose()


def test_archived_rows_carry_the_current_format(tmp_path: Path, store: RedisStore) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    archive = Archive(url)
    archive.upgrade()
    events = store.reads.events(RUNS["completed"])
    archive.write([RunCopy(rebuild(events), events, store.keyspace.bucket(RUNS["completed"]))])
    assert run_formats(url) == {RUNS["completed"]: STORAGE_FORMAT}
    archive.dispose()


def test_a_newer_archive_row_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    archive = Archive(url)
    archive.upgrade()
    load_archive(url)
    run_id = RUNS["failed"]
    engine = sa.create_engine(url)

    def rows() -> list[Any]:
        with engine.connect() as conn:
            return [
                tuple(row)
                for table in metadata.sorted_tables
                for row in conn.execute(sa.select(table).where(table.c.run_id == run_id))
            ]

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE saga_runs SET format = 2 WHERE run_id = :r"), {"r": run_id})
    before = rows()
    with pytest.raises(StorageFormatTooNew) as refused:
        archive.events(run_id)
    assert str(refused.value) == f"run {run_id}: {REFUSED}"
    assert rows() == before
    assert archive.events(RUNS["completed"]) == golden_events(RUNS["completed"])
    with pytest.raises(RunNotFound):
        archive.events("never-archived")
    engine.dispose()
    archive.dispose()

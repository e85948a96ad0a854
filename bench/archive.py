"""The SQL archive's figures: ``make bench`` takes them after the hot tier's, and
``python -m bench.archive`` takes them alone (writing ``bench/results/archive*.json``).

Each part has a redis-server and a prefork worker (``bench.app:saga_app``, concurrency 2) of its
own, with ``SAGA_HOT_RETENTION_SECONDS=2`` so finished runs leave Redis within the benchmark:

1. **Archiver throughput against saga throughput.** Workers with ``SAGA_ARCHIVE_URL`` set (the
   feed on) and ``SAGA_ARCHIVER=false``: ``runs`` noop5 runs fired at once, timed from the first
   start to the last completion (the runs' latest ``updated_at``: the store's ``active`` index can
   empty later, see :func:`timed_runs`) — the saga throughput of this phase, feed on — leave a
   backlog in the feed; then ``Archiver.drain()`` in this process copies it, timed: archived
   runs/s. Once into SQLite, once into PostgreSQL (a schema of its own, dropped after) when there
   is one; a warm-up drain before each (connection, schema check) is not timed.
2. **Feed lag under load.** Workers with the archiver thread on (default interval): ``runs``
   runs fired at once while ``ArchiveFeed.status()`` is sampled every 100 ms from the first start
   until the archive holds every run completed and the feed is empty; lag = the oldest entry's
   age, the largest over the buckets.
3. **Redis bytes per finished run after archiving.** Around (2): ``INFO memory`` ``used_memory``
   less ``mem_clients_normal`` (the connections' query and output buffers, which follow traffic,
   not runs; the raw delta is kept too) before the runs (every bucket warmed up, the warm-up
   runs archived and gone, their listing entries tidied) and once every run key
   (``<prefix>:{b}:[rels]:<id>``) is gone, divided by ``runs``; then again after the tidy the
   watchdog does once a minute (``trim_finished``), which drops the finished runs' entries in the
   status index.
4. **Listing by tag over a big archive.** ``list_runs`` synthetic finished runs inserted straight
   into ``saga_runs`` and ``saga_run_tags`` (executemany, chunks of 20,000; no events, which a
   listing never reads): one customer among ``list_runs / 10`` and one of 5 regions per run,
   uniformly; 5 % compensated, 1 % failed, the rest completed; created over the last 30 days.
   Then ``Archive.find_runs(tags={"customer": c}, status=["compensated"], limit=20)`` for 50
   random customers (after 5 untimed calls), and ``python -m saga list --tag customer=c --status
   compensated --limit 20 --json`` once (wall time, Python start-up included). SQLite and
   PostgreSQL (``ANALYZE`` after the fill, as autovacuum would); nothing kept afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from saga.archive import Archive, ArchiveFeed, Archiver, RunQuery, tables
from saga.core import STORAGE_FORMAT, Status, micros
from saga.registry import default_registry
from saga.settings import Settings
from saga.store import BucketKeys, RedisStore
from saga.testing import RedisServer, configured

from .measure import (
    BENCH_DIR,
    RESULTS,
    WARMUP_RUNS,
    BenchError,
    SagaVariant,
    own_cpu,
    percentile,
    redis_cpu,
    run_section,
    section_env,
)
from .procs import Worker
from .report import archive_table, archive_targets

#: Where PostgreSQL is looked for when ``BENCH_ARCHIVE_PG_URL`` does not say.
PG_ENV = "BENCH_ARCHIVE_PG_URL"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: ``SAGA_HOT_RETENTION_SECONDS`` of every worker here (the default is an hour).
HOT_RETENTION_S = 2
LAG_INTERVAL_S = 0.1
LIST_CALLS = 50
LIST_WARMUP_CALLS = 5
FILL_CHUNK = 20_000
FILL_DAYS = 30
#: SQLite page cache of the fill's own connection (its indexes are written in random order); the
#: archive's connections that are timed keep SQLite's default.
FILL_SQLITE_CACHE_KIB = 256 * 1024
REGIONS = ("eu", "us", "apac", "latam", "mea")
SEED = 20261125


@dataclass(frozen=True)
class Database:
    """One database the archive figures are taken on."""

    dialect: str
    url: str


# --- databases -----------------------------------------------------------------------------------


def postgres_base(skip: bool = False) -> tuple[str | None, str]:
    """The PostgreSQL URL to use (None: none) and why: ``BENCH_ARCHIVE_PG_URL`` when set (it must
    answer), else :data:`PG_DEFAULT` when 127.0.0.1:5432 answers and lets us in."""
    if skip:
        return None, "skipped (--skip-archive-pg)"
    given = os.environ.get(PG_ENV, "")
    url = given or PG_DEFAULT
    if not given:
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
        except OSError:
            return None, "not measured: nothing answers on 127.0.0.1:5432 and BENCH_ARCHIVE_PG_URL is unset"
    url = _psycopg(url)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        if given:
            raise BenchError(f"{PG_ENV} does not answer: {reason}") from None
        return None, f"not measured: {sa.make_url(url).render_as_string(hide_password=True)} refused ({reason})"
    return url, sa.make_url(url).render_as_string(hide_password=True)


def _psycopg(url: str) -> str:
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@contextmanager
def pg_schema(base: str, purpose: str) -> Iterator[str]:
    """A URL of ``base``'s database whose tables go to a fresh schema of this benchmark's own
    (``search_path``), dropped with everything in it on the way out."""
    schema = f"bench_archive_{purpose}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = sa.create_engine(base)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield (
                sa.make_url(base)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def database(stack: ExitStack, folder: Path, dialect: str, pg: str | None, purpose: str) -> Database:
    """An empty archive upgraded to the archive's schema: a SQLite file in ``folder``, or a fresh
    schema of PostgreSQL ``pg`` (dropped when ``stack`` closes)."""
    if dialect == "sqlite":
        db = Database("sqlite", f"sqlite:///{folder / f'{purpose}.db'}")
    elif pg is not None:
        db = Database("postgresql", stack.enter_context(pg_schema(pg, purpose)))
    else:
        raise BenchError("no PostgreSQL to measure on")
    archive = Archive(db.url)
    try:
        archive.upgrade()
    finally:
        archive.dispose()
    return db


def dialects(pg: str | None) -> list[str]:
    """The databases measured: SQLite, and PostgreSQL when there is one."""
    return ["sqlite"] if pg is None else ["sqlite", "postgresql"]


# --- the saga side: a redis-server and a worker with the archive configured ----------------------


def worker_env(base: Mapping[str, str], redis_url: str, archive_url: str, *, archiver: bool) -> dict[str, str]:
    """The benchmark's environment pointed at ``redis_url``, with the archive at ``archive_url``."""
    env = dict(base)
    env.update(
        {
            "SAGA_REDIS_URL": redis_url,
            "SAGA_BROKER_URL": redis_url,
            "BENCH_CHAIN_REDIS_URL": redis_url,
            "SAGA_METRICS_PORT": "0",
            "SAGA_ARCHIVE_URL": archive_url,
            "SAGA_ARCHIVER": "true" if archiver else "false",
            "SAGA_HOT_RETENTION_SECONDS": str(HOT_RETENTION_S),
        }
    )
    return env


@contextmanager
def saga_side(
    base_env: Mapping[str, str], archive_url: str, *, archiver: bool, log: Path, concurrency: int
) -> Iterator[tuple[SagaVariant, Settings]]:
    """A private Redis and a worker of ``bench.app:saga_app`` (its output in ``log``) with the
    archive at ``archive_url``; this process's default registry runs with the same settings
    inside the block. Every bucket has had a run (:func:`warm_every_bucket`) before it yields."""
    with ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        server.start()
        env = worker_env(base_env, server.url, archive_url, archiver=archiver)
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("SAGA_")})
        os.environ.setdefault("BENCH_CHAIN_REDIS_URL", server.url)  # bench.app reads it on import
        app = importlib.import_module("bench.app")
        log.write_bytes(b"")
        worker = Worker("bench.app:saga_app", env, log, concurrency=concurrency)
        stack.callback(worker.stop)
        worker.start()
        stack.enter_context(configured(default_registry(), settings, app.saga_app))
        variant = SagaVariant(server.url, worker, app.noop5)
        stack.callback(variant.close)
        warm_every_bucket(variant, timeout=120)
        yield variant, settings


def warm_every_bucket(v: SagaVariant, timeout: float) -> int:
    """Run :data:`WARMUP_RUNS` runs at a time until every bucket has had one (its shapes hash and
    its feed stream exist, which a bucket makes once); how many runs it took."""
    store = v.saga.store
    done = 0
    while True:
        done += WARMUP_RUNS
        fire_and_wait(v, WARMUP_RUNS, timeout)
        keys = [
            k
            for b in range(store.keyspace.buckets)
            for k in (BucketKeys.of(store.keyspace.prefix, b).shapes, BucketKeys.of(store.keyspace.prefix, b).feed)
        ]
        if store.keyspace.client.exists(*keys) == len(keys):
            return done
        if done >= 50 * WARMUP_RUNS:
            raise BenchError(f"after {done} warm-up runs, some bucket still has had none")


def fire_and_wait(v: SagaVariant, runs: int, timeout: float) -> list[str]:
    """Start ``runs`` runs at once and wait until none is unfinished (the store's ``active``
    index is empty); their ids. (No check of each run here: with the archiver on, a finished run
    may have left Redis already.)"""
    if not v.worker.alive():
        raise BenchError(f"the archive worker is not running; its log ends with:\n{v.worker.log_tail()}")
    handles: list[str] = v.fire(runs)
    try:
        v.wait_all(handles, timeout)
    except BenchError as exc:
        raise BenchError(f"{exc}; the archive worker's log ends with:\n{v.worker.log_tail()}") from None
    return handles


def timed_runs(v: SagaVariant, runs: int, timeout: float) -> tuple[float, float]:
    """Start ``runs`` runs at once, wait until none is unfinished and check that each completed
    (they must still be in Redis: the archiver is off); the seconds from the first start to the
    last completion (the latest ``updated_at`` of the runs), and to the moment the benchmark saw
    the store's ``active`` index empty, which can come later: an entry the watchdog re-adds
    (``schedule``) while the run completes stays until the watchdog looks at it again."""
    t0 = time.time()
    handles = fire_and_wait(v, runs, timeout)
    seen = time.time() - t0
    last = 0.0
    for i in range(0, len(handles), 200):
        chunk = handles[i : i + 200]
        for run_id, state in zip(chunk, v.saga.store.reads.snapshots(chunk), strict=True):
            if state is None or state.status.value != "completed":
                raise BenchError(f"saga run {run_id} is {state.status.value if state else 'missing'}")
            last = max(last, micros(state.updated_at) / 1e6)
    return last - t0, seen


def count_rows(engine: sa.Engine, statement: sa.Select[Any]) -> int:
    """One number from the archive's database (the benchmark's own connection, not the archive's)."""
    with engine.connect() as conn:
        return int(conn.execute(statement).scalar_one() or 0)


#: Watchdog interventions recorded in the runs' logs: how many runs were dispatched again.
RESUMES = sa.select(sa.func.count()).select_from(tables.events).where(tables.events.c.type == "saga.resumed")


@contextmanager
def disposing(engine: sa.Engine) -> Iterator[sa.Engine]:
    """``engine``, disposed of on the way out."""
    try:
        yield engine
    finally:
        engine.dispose()


def feed_depth(feed: ArchiveFeed) -> int:
    """Entries waiting in the feed, over every bucket."""
    return sum(s.depth for s in feed.status())


def run_keys_left(store: RedisStore) -> int:
    """How many keys of runs (meta, events, lease, snapshot) are in the store (``SCAN``, which
    also reclaims expired keys it meets)."""
    pattern = f"{store.keyspace.prefix}:{{*}}:[rels]:*"
    return sum(1 for _ in store.keyspace.client.scan_iter(match=pattern, count=1000))


def memory_info(client: Any) -> dict[str, int]:
    """The ``INFO memory`` fields that say where Redis's memory is, and the number of keys."""
    info: dict[str, Any] = client.info("memory")
    fields = ("used_memory", "used_memory_dataset", "used_memory_overhead", "mem_clients_normal")
    return {**{f: int(info[f]) for f in fields}, "keys": int(client.dbsize())}


def per_run(before: Mapping[str, int], after: Mapping[str, int], runs: int) -> dict[str, float]:
    """``used_memory`` between two :func:`memory_info` readings per run: all of it, the clients'
    query and output buffers (``mem_clients_normal``: connections' traffic, not runs), and the
    difference (``bytes_per_run``, the figure)."""
    used = (after["used_memory"] - before["used_memory"]) / runs
    clients = (after["mem_clients_normal"] - before["mem_clients_normal"]) / runs
    return {
        "bytes_per_run": round(used - clients, 1),
        "used_memory_per_run": round(used, 1),
        "client_buffers_per_run": round(clients, 1),
        "dataset_per_run": round((after["used_memory_dataset"] - before["used_memory_dataset"]) / runs, 1),
    }


def wait_until(what: str, condition: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll ``condition()`` until it is true; the seconds waited. :class:`BenchError` on timeout."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{what}: not the case after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


# --- 1. archiver throughput ----------------------------------------------------------------------


def throughput_figures(
    base_env: Mapping[str, str], runs: int, folder: Path, pg: str | None, logs: Path, concurrency: int
) -> list[dict[str, Any]]:
    """Saga runs/s (feed on, archiver off) and then archived runs/s of a drain of their backlog,
    for each database (see the module)."""
    rows: list[dict[str, Any]] = []
    timeout = max(60.0, runs * 0.12)
    with ExitStack() as stack:
        dbs = [database(stack, folder, dialect, pg, "drain") for dialect in dialects(pg)]
        v, settings = stack.enter_context(
            saga_side(
                base_env, dbs[0].url, archiver=False, log=logs / "archive-drain-worker.log", concurrency=concurrency
            )
        )
        feed = ArchiveFeed(v.saga.store)
        for db in dbs:
            archive, engine = Archive(db.url), sa.create_engine(db.url)
            try:
                archiver = Archiver(v.saga.store, archive, settings)
                fire_and_wait(v, WARMUP_RUNS, timeout)
                archiver.drain()  # untimed: connects, checks the schema, copies the warm-up's runs
                held, resumed = archive.run_count(), count_rows(engine, RESUMES)
                to_last, seen = timed_runs(v, runs, timeout)
                entries = feed_depth(feed)
                cpu0, rcpu0 = own_cpu(), redis_cpu(v.redis)
                t0 = time.perf_counter()
                handled = archiver.drain()
                seconds = time.perf_counter() - t0
                cpu, rcpu = own_cpu() - cpu0, redis_cpu(v.redis) - rcpu0
                archived = archive.run_count() - held
                resumed = count_rows(engine, RESUMES) - resumed
            finally:
                archive.dispose()
                engine.dispose()
            if archived != runs or handled != entries:
                raise BenchError(
                    f"{db.dialect}: {archived} runs archived of {runs}, {handled} feed entries of {entries}"
                )
            row = {
                "dialect": db.dialect,
                "runs": runs,
                "saga_runs_per_s": round(runs / to_last, 2),
                "saga_seconds": round(to_last, 2),
                "saga_seen_done_after_s": round(seen, 2),
                "watchdog_resumes": resumed,
                "feed_entries": entries,
                "drain_seconds": round(seconds, 3),
                "archived_runs_per_s": round(runs / seconds, 1),
                "ratio": round(to_last / seconds, 2),
                "archiver_cpu_ms_per_run": round(cpu * 1000 / runs, 3),
                "redis_cpu_ms_per_run": round(rcpu * 1000 / runs, 3),
                "batch": settings.archive_batch,
            }
            rows.append(row)
            print(
                f"  {db.dialect}: saga {row['saga_runs_per_s']:.1f} runs/s ({runs} runs in {to_last:.1f} s, feed on; "
                f"{resumed} watchdog resumes); drain of "
                f"{entries} feed entries: {seconds:.2f} s = {row['archived_runs_per_s']:.1f} runs/s "
                f"= {row['ratio']:.2f}x the saga (archiver CPU {row['archiver_cpu_ms_per_run']:.2f} ms/run)",
                flush=True,
            )
    return rows


# --- 2 and 3. feed lag under load, and Redis bytes once archived runs left --------------------------


class LagSampler:
    """Samples the feed every :data:`LAG_INTERVAL_S` in a thread: (``time.monotonic()``, lag =
    oldest entry's age over the buckets, entries waiting)."""

    def __init__(self, store: RedisStore) -> None:
        self.feed = ArchiveFeed(store)
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-feed-lag", daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        t0 = time.monotonic()
        tick = t0
        try:
            while not self._stop.is_set():
                status = self.feed.status()
                lag = max((s.oldest_age_seconds for s in status), default=0.0)
                self.samples.append((time.monotonic(), lag, sum(s.depth for s in status)))
                tick += LAG_INTERVAL_S
                self._stop.wait(max(0.0, tick - time.monotonic()))
        except Exception as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> list[tuple[float, float, int]]:
        self._stop.set()
        self._thread.join()
        if self.failure is not None:
            raise BenchError(f"sampling the feed failed: {self.failure}")
        return self.samples


def lag_and_memory(
    base_env: Mapping[str, str], runs: int, folder: Path, logs: Path, concurrency: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The feed's lag while ``runs`` runs go at full speed with the archiver thread on, and the
    Redis bytes they leave once archived and gone (see the module)."""
    timeout = max(60.0, runs * 0.12)
    gone_timeout = HOT_RETENTION_S + 60.0
    with ExitStack() as stack:
        url = database(stack, folder, "sqlite", None, "lag").url
        v, settings = stack.enter_context(
            saga_side(base_env, url, archiver=True, log=logs / "archive-lag-worker.log", concurrency=concurrency)
        )
        store = v.saga.store
        feed = ArchiveFeed(store)
        wait_until(
            "warm-up runs archived and gone",
            lambda: feed_depth(feed) == 0 and run_keys_left(store) == 0,
            gone_timeout,
        )
        store.indexes.trim_finished(time.time() - HOT_RETENTION_S)  # the watchdog's tidy: none listed before
        time.sleep(0.3)  # let the server's cron resize its tables after the warm-up's keys left
        completed = sa.select(sa.func.count()).select_from(tables.runs).where(tables.runs.c.status == "completed")
        engine = stack.enter_context(disposing(sa.create_engine(url)))
        held = count_rows(engine, completed)
        sampler = LagSampler(store).start()  # before the baseline: its connection is in both
        try:
            time.sleep(LAG_INTERVAL_S)
            info_before = memory_info(v.redis)
            listed_before = store.indexes.count_runs(Status.COMPLETED)
            fired, fired_wall = time.monotonic(), time.time()
            v.fire(runs)
            wait_until(
                "every run completed, archived, and the feed empty",
                lambda: count_rows(engine, completed) - held >= runs and feed_depth(feed) == 0,
                timeout,
                LAG_INTERVAL_S,
            )
            emptied = time.time()
        finally:
            samples = [(at - fired, lag, depth) for at, lag, depth in sampler.stop() if at >= fired]
        last = count_rows(engine, sa.select(sa.func.max(tables.runs.c.finished_at))) / 1e6
        seconds, tail = last - fired_wall, emptied - last
        wait_until("every run key gone", lambda: run_keys_left(store) == 0, gone_timeout, 0.1)
        gone = time.time() - emptied
        time.sleep(0.3)
        info_after = memory_info(v.redis)
        keys_left = run_keys_left(store)
        active_left = store.indexes.active_depth()
        listed = store.indexes.count_runs(Status.COMPLETED) - listed_before
        feed_left = feed_depth(feed)
        trimmed = store.indexes.trim_finished(time.time() - HOT_RETENTION_S)
        time.sleep(0.3)
        info_tidied = memory_info(v.redis)
    lags = [lag for _, lag, _ in samples]
    lag = {
        "runs": runs,
        "saga_runs_per_s": round(runs / seconds, 2),
        "interval_s": LAG_INTERVAL_S,
        "samples": len(samples),
        "window_s": round(samples[-1][0], 2) if samples else 0.0,
        "feed_empty_after_last_run_s": round(tail, 2),
        "p50_s": round(percentile(lags, 50), 3),
        "p95_s": round(percentile(lags, 95), 3),
        "max_s": round(max(lags), 3),
        "max_depth": max(depth for *_, depth in samples),
        "archiver_interval_s": settings.watchdog_interval or 0.5,
        "batch": settings.archive_batch,
    }
    memory = {
        "runs": runs,
        "hot_retention_seconds": HOT_RETENTION_S,
        "run_keys_left": keys_left,
        "keys_gone_after_feed_empty_s": round(gone, 2),
        "status_index_entries_left": listed,
        "feed_entries_left": feed_left,
        "active_entries_left": active_left,
        "tidied_entries": trimmed,
        **per_run(info_before, info_after, runs),
        "after_tidy": per_run(info_before, info_tidied, runs),
        "info": {"before": info_before, "after": info_after, "after_tidy": info_tidied},
    }
    print(
        f"  feed lag over {len(samples)} samples ({lag['window_s']:g} s; {runs} runs at "
        f"{lag['saga_runs_per_s']:.1f} runs/s, archiver thread on): p50 {lag['p50_s']:.2f} s, "
        f"p95 {lag['p95_s']:.2f} s, max {lag['max_s']:.2f} s, deepest {lag['max_depth']} entries",
        flush=True,
    )
    print(
        f"  Redis after every run key left ({gone:.1f} s after the feed emptied): "
        f"{memory['bytes_per_run']:+.1f} bytes per run (used_memory {memory['used_memory_per_run']:+.1f}, of "
        f"which client buffers {memory['client_buffers_per_run']:+.1f}), {listed} status index entries left; "
        f"after the watchdog's tidy: {memory['after_tidy']['bytes_per_run']:+.1f} bytes per run",
        flush=True,
    )
    return lag, memory


# --- 4. listing by tag over a big archive --------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _inserts(engine: sa.Engine) -> tuple[str, str]:
    """The INSERTs of ``saga_runs`` and ``saga_run_tags``, compiled from the archive's table objects
    for the driver's named parameters (rows are given as dicts with the JSON already serialized,
    which spares SQLAlchemy's per-row processing: half of the fill's time)."""
    runs, tags = (str(table.insert().compile(dialect=engine.dialect)) for table in (tables.runs, tables.run_tags))
    return runs, tags


def fill(url: str, total: int, watched: set[str], seed: int = SEED) -> dict[str, Any]:
    """Insert ``total`` synthetic finished runs (see the module) in chunks of :data:`FILL_CHUNK`;
    the counts, and the compensated runs of each customer in ``watched``."""
    rng = random.Random(seed)
    customers = max(total // 10, 1)
    now_us = micros(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    span_us = FILL_DAYS * 86_400_000_000
    start_us = now_us - span_us
    counts = {"completed": 0, "compensated": 0, "failed": 0}
    compensated: dict[str, int] = dict.fromkeys(watched, 0)
    engine = sa.create_engine(url, paramstyle="named" if url.startswith("sqlite") else None)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _cache(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA cache_size=-{FILL_SQLITE_CACHE_KIB}")  # the fill's only

    insert_runs, insert_tags = _inserts(engine)
    try:
        for first in range(0, total, FILL_CHUNK):
            runs: list[dict[str, Any]] = []
            tags: list[dict[str, Any]] = []
            for i in range(first, min(first + FILL_CHUNK, total)):
                created = start_us + int((i + rng.random()) * span_us / total)
                customer = f"c-{rng.randrange(customers):06d}"
                region = REGIONS[rng.randrange(len(REGIONS))]
                roll = rng.random()
                status = "compensated" if roll < 0.05 else "failed" if roll < 0.06 else "completed"
                counts[status] += 1
                if status == "compensated" and customer in compensated:
                    compensated[customer] += 1
                run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                failed_step = None if status == "completed" else "charge"
                finished = created + 850_000
                runs.append(
                    {
                        "run_id": run_id,
                        "saga": "order",
                        "definition_version": 1,
                        "status": status,
                        "version": {"completed": 9, "compensated": 11, "failed": 8}[status],
                        "current_step": 4 if status == "completed" else 1,
                        "created_at": created,
                        "updated_at": finished,
                        "finished_at": finished,
                        "failed_step": failed_step,
                        "error_type": None if failed_step is None else "CardDeclined",
                        "error_message": None if failed_step is None else "card declined by the issuer",
                        "tags": _json({"customer": customer, "region": region}),
                        "payload": _json(
                            {"order": f"o-{i}", "customer": customer, "amount": round(rng.uniform(5, 500), 2)}
                        ),
                        "event_count": {"completed": 10, "compensated": 14, "failed": 9}[status],
                        "bucket": i % 16,
                        "format": STORAGE_FORMAT,
                    }
                )
                tags.append({"run_id": run_id, "key": "customer", "value": customer, "created_at": created})
                tags.append({"run_id": run_id, "key": "region", "value": region, "created_at": created})
            with engine.begin() as conn:
                conn.exec_driver_sql(insert_runs, runs)
                conn.exec_driver_sql(insert_tags, tags)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE saga_runs"))
                conn.execute(sa.text("ANALYZE saga_run_tags"))
    finally:
        engine.dispose()
    return {"customers": customers, **counts, "watched_compensated": compensated}


def cli_list(url: str, customer: str, redis_url: str) -> tuple[float, int]:
    """``python -m saga list --tag customer=… --status compensated --limit 20 --json``: its wall
    time in ms and the runs it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update({"SAGA_ARCHIVE_URL": url, "SAGA_REDIS_URL": redis_url})
    args = [sys.executable, "-m", "saga", "list", "--tag", f"customer={customer}", "--status", "compensated"]
    args += ["--limit", "20", "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=BENCH_DIR.parent)
    ms = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        raise BenchError(f"saga list exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return ms, len(json.loads(done.stdout))


def listing_figures(total: int, folder: Path, pg: str | None, redis_url: str) -> list[dict[str, Any]]:
    """``saga list --tag customer=… --status compensated --limit 20`` over ``total`` archived
    runs, for each database (see the module)."""
    rows: list[dict[str, Any]] = []
    customers = max(total // 10, 1)
    rng = random.Random(SEED + 1)
    picked = [f"c-{n:06d}" for n in rng.sample(range(customers), min(customers, LIST_CALLS + LIST_WARMUP_CALLS + 1))]
    warm, timed, cli_customer = picked[:LIST_WARMUP_CALLS], picked[LIST_WARMUP_CALLS:-1], picked[-1]
    for dialect in dialects(pg):
        with ExitStack() as stack:
            db = database(stack, folder, dialect, pg, "list")
            t0 = time.monotonic()
            filled = fill(db.url, total, set(picked))
            fill_s = time.monotonic() - t0
            archive = Archive(db.url)
            try:
                for customer in warm:
                    archive.find_runs(RunQuery(tags={"customer": customer}, status=["compensated"], limit=20))
                times = []
                for customer in timed:
                    t1 = time.perf_counter()
                    page = archive.find_runs(RunQuery(tags={"customer": customer}, status=["compensated"], limit=20))
                    times.append((time.perf_counter() - t1) * 1000)
                    expected = min(filled["watched_compensated"][customer], 20)
                    if len(page.runs) != expected or any(r.status != "compensated" for r in page.runs):
                        raise BenchError(
                            f"{dialect}: {customer} listed {len(page.runs)} compensated runs, not {expected}"
                        )
            finally:
                archive.dispose()
            cli_ms, cli_rows = cli_list(db.url, cli_customer, redis_url)
            if cli_rows != min(filled["watched_compensated"][cli_customer], 20):
                raise BenchError(f"{dialect}: saga list printed {cli_rows} runs")
            for leftover in folder.glob("list.db*"):  # the 1M-run file and its WAL: gone before the next
                leftover.unlink()
        row = {
            "dialect": dialect,
            "runs": total,
            "customers": filled["customers"],
            "compensated": filled["compensated"],
            "failed": filled["failed"],
            "fill_seconds": round(fill_s, 1),
            "calls": len(times),
            "warmup_calls": len(warm),
            "p50_ms": round(statistics.median(times), 2),
            "max_ms": round(max(times), 2),
            "runs_per_call": round(statistics.fmean(min(filled["watched_compensated"][c], 20) for c in timed), 2),
            "cli_ms": round(cli_ms, 1),
            "cli_runs": cli_rows,
        }
        rows.append(row)
        print(
            f"  {dialect}: filled {total:,} runs in {fill_s:.1f} s; find_runs p50 {row['p50_ms']:g} ms, "
            f"max {row['max_ms']:g} ms ({len(times)} customers); `saga list` CLI {cli_ms:.0f} ms wall",
            flush=True,
        )
    return rows


# --- all of it -----------------------------------------------------------------------------------


def archive_figures(
    base_env: Mapping[str, str],
    *,
    runs: int,
    list_runs: int,
    concurrency: int = 2,
    skip_pg: bool = False,
    logs: Path = RESULTS,
) -> dict[str, Any]:
    """Every figure of the module, as the ``archive`` section of the results."""
    began = time.monotonic()
    pg, pg_note = postgres_base(skip_pg)
    print(f"  PostgreSQL: {pg_note}", flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="saga-bench-archive-") as tmp:
        folder = Path(tmp)
        print(f"  archiver throughput ({runs} runs fired at once, then a drain of their feed backlog)...", flush=True)
        throughput = throughput_figures(base_env, runs, folder, pg, logs, concurrency)
        print(f"  feed lag and Redis bytes per run ({runs} runs, archiver thread on)...", flush=True)
        lag, memory = lag_and_memory(base_env, runs, folder, logs, concurrency)
        print(f"  saga list --tag customer=... --status compensated over {list_runs:,} archived runs...", flush=True)
        listing = listing_figures(list_runs, folder, pg, base_env.get("SAGA_REDIS_URL", "redis://127.0.0.1:1/0"))
    return {
        "postgresql": pg_note,
        "hot_retention_seconds": HOT_RETENTION_S,
        "runs": runs,
        "list_runs": list_runs,
        "concurrency": concurrency,
        "throughput": throughput,
        "lag": lag,
        "memory": memory,
        "listing": listing,
        "seconds": round(time.monotonic() - began, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.archive``: the archive's figures alone (a table, and a JSON file)."""

    p = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="saga runs of the throughput and lag parts (default 2000; quick 200)")
    p.add_argument("--archive-runs", type=int, help="archived runs under the listing (default 1000000; quick 20000)")
    p.add_argument("--skip-archive-pg", action="store_true", help="SQLite only, even when PostgreSQL answers")
    p.add_argument("--lease", type=float, default=2.0, help="SAGA_LEASE_SECONDS of the workers (default 2)")
    p.add_argument("--quick", action="store_true", help="small counts (writes bench/results/archive-quick.json)")
    p.add_argument("--json", type=Path, help="where to write the figures (default bench/results/archive.json)")
    args = p.parse_args(argv)
    runs = args.runs or (200 if args.quick else 2000)
    list_runs = args.archive_runs or (20_000 if args.quick else 1_000_000)
    if runs < 1 or list_runs < LIST_CALLS + LIST_WARMUP_CALLS + 1:
        p.error(f"--runs must be positive and --archive-runs at least {LIST_CALLS + LIST_WARMUP_CALLS + 1}")
    out = args.json or RESULTS / ("archive-quick.json" if args.quick else "archive.json")
    base = section_env(args.lease, SAGA_METRICS_PORT="0")
    default_registry().configure(Settings(metrics_port=0))
    print(f"archive benchmark: {runs} saga runs, a listing over {list_runs:,} archived runs", flush=True)

    def measure() -> dict[str, Any]:
        section = archive_figures(base, runs=runs, list_runs=list_runs, skip_pg=args.skip_archive_pg)
        return {"archive": section, "targets": archive_targets(section)}

    return run_section(out, measure, archive_table, RESULTS)


if __name__ == "__main__":
    sys.exit(main())

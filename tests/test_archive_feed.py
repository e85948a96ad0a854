"""The archive feed under trouble: the database down, an archiver SIGKILLed mid-batch, a
malformed feed entry and a row the database refuses.

Here the worker does not archive (SAGA_ARCHIVER=false): the runs it moves leave a backlog in the
feed, which the tests hand to ``saga archive run`` processes — the standalone archiver. The
archive is SQLite in a temporary folder (taking its folder away is a real outage; the SQL itself
is covered on both dialects by test_archive_sql.py and test_archive.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from saga import Settings, Status
from saga.archive import Archive
from saga.registry import default_registry
from saga.store import BucketKeys, Client, bucket_of, run_keys
from saga.testing import configured, free_port, start_worker_process, stop_process_group, wait_for, worker_env
from tests.helpers import saga_cli

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "saga-archive-feed-tests"


@dataclass
class Manual:
    """This module's settings, its database folder and archive."""

    settings: Settings
    folder: Path
    archive: Archive


@pytest.fixture(scope="module")
def manual(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manual]:
    folder = tmp_path_factory.mktemp("feed") / "db"
    folder.mkdir()
    mine = settings.replace(
        key_prefix=f"feed{uuid.uuid4().hex[:6]}",
        step_queue=QUEUE,
        compensation_queue=QUEUE,
        archive_url=f"sqlite:///{folder / 'archive.db'}",
        archiver=False,
        hot_retention_seconds=600,
        watchdog_interval=0.2,
    )
    with configured(default_registry(), mine):
        assert saga(mine, "db", "upgrade").returncode == 0
        proc = start_worker_process(
            "workers", worker_env(mine), name=f"feed{free_port()}", pool="threads", queues=QUEUE, cwd=ROOT
        )
        archive = Archive(mine.archive_url)
        try:
            yield Manual(mine, folder, archive)
        finally:
            archive.dispose()
            stop_process_group(proc)


@pytest.fixture(scope="module")
def order(manual: Manual) -> Any:
    from workers.orders import order

    return order


def saga(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return saga_cli(settings, *args, timeout=120, **env)


def archiver_process(settings: Settings, **env: str) -> subprocess.Popen[str]:
    """``saga archive run`` (the standalone archiver) as a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "saga", "archive", "run"],
        cwd=ROOT,
        env=worker_env(settings, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finished_runs(order: Any, n: int, **payload: Any) -> dict[str, list[dict[str, Any]]]:
    """Start ``n`` orders, wait for them, and return each run's events as Redis holds them."""
    run_ids = [order.start({"order_id": i, "amount": 5 + i, **payload}) for i in range(n)]
    for run_id in run_ids:
        assert order.wait(run_id, timeout=60).status.terminal
    return {run_id: order.events(run_id) for run_id in run_ids}


def archived_counts(manual: Manual, run_ids: list[str]) -> tuple[int, int]:
    """(runs, events) the archive holds for ``run_ids``, counted in SQL."""
    engine = sa.create_engine(manual.settings.archive_url)
    try:
        with engine.connect() as conn:
            ids: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
            runs = conn.execute(
                sa.text("SELECT count(*) FROM saga_runs WHERE run_id IN :ids").bindparams(ids), {"ids": run_ids}
            )
            events = conn.execute(
                sa.text("SELECT count(*) FROM saga_events WHERE run_id IN :ids").bindparams(ids), {"ids": run_ids}
            )
            return int(runs.scalar_one()), int(events.scalar_one())
    finally:
        engine.dispose()


def feed_depth(settings: Settings) -> int:
    status = json.loads(saga(settings, "archive", "status", "--json").stdout)
    return sum(int(b["depth"]) for b in status["buckets"])


def ttl_ms(client: Client, settings: Settings, run_id: str) -> int:
    meta = run_keys(settings.key_prefix, bucket_of(run_id, settings.buckets), run_id).meta
    return int(client.pttl(meta))


def test_with_the_database_down_runs_finish_and_nothing_leaves_redis_unarchived(
    order: Any, manual: Manual, redis_client: Client
) -> None:
    s = manual.settings
    archiver = archiver_process(s)
    try:
        # Given the archive's database goes away while an archiver runs
        offline = manual.folder.with_name("db-offline")
        manual.folder.rename(offline)
        try:
            # When runs move meanwhile
            runs = finished_runs(order, 10)
            # Then they finish in Redis, the feed keeps them, and none may expire un-archived
            assert feed_depth(s) >= 10
            assert all(ttl_ms(redis_client, s, run_id) == -1 for run_id in runs)
            assert archiver.poll() is None  # the running archiver waits it out
        finally:
            offline.rename(manual.folder)
        # and once the database is back, the archiver catches up by itself
        run_ids = list(runs)
        wait_for(lambda: archived_counts(manual, run_ids)[0] == len(run_ids), 60, "the archiver to catch up")
        wait_for(lambda: feed_depth(s) == 0, 60, "the feed to drain")
        for run_id, events in runs.items():
            assert manual.archive.events(run_id) == events
            assert ttl_ms(redis_client, s, run_id) > 0  # archived, so now it may leave Redis
    finally:
        archiver.send_signal(signal.SIGTERM)
        _, log = archiver.communicate(timeout=30)
    # and it said so, once, in one line, without a traceback
    assert len([line for line in log.splitlines() if "does not answer" in line]) == 1, log
    assert "Traceback" not in log


def test_an_unreachable_database_is_one_line_and_exit_4(manual: Manual) -> None:
    s = manual.settings
    down = saga(s, "archive", "run", "--once", SAGA_ARCHIVE_URL=f"sqlite:///{manual.folder / 'nowhere' / 'x.db'}")
    assert down.returncode == 4 and len(down.stderr.splitlines()) == 1 and "SAGA_ARCHIVE_URL" in down.stderr


def test_an_archiver_killed_mid_batch_loses_nothing_and_copies_nothing_twice(order: Any, manual: Manual) -> None:
    s = manual.settings
    # Given a backlog of finished runs
    runs = finished_runs(order, 150)
    run_ids = list(runs)
    assert archived_counts(manual, run_ids) == (0, 0)
    # When an archiver copying small batches is SIGKILLed part-way
    first = archiver_process(s, SAGA_ARCHIVE_BATCH="10")
    wait_for(lambda: archived_counts(manual, run_ids)[0] >= 20, 60, "the first archiver to copy some runs")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    copied, _ = archived_counts(manual, run_ids)
    assert copied < len(run_ids), "the archiver finished before it was killed: nothing was tested"
    # and another archiver takes over
    second = saga(s, "archive", "run", "--once")
    assert second.returncode == 0, second.stderr
    # Then the archive holds every run once and every event once, exactly as Redis has them
    assert archived_counts(manual, run_ids) == (len(run_ids), sum(len(e) for e in runs.values()))
    for run_id, events in runs.items():
        assert manual.archive.events(run_id) == events
    assert feed_depth(s) == 0


def test_a_malformed_entry_or_a_refused_row_is_parked_and_the_rest_goes_on(
    order: Any, manual: Manual, redis_client: Client
) -> None:
    s = manual.settings
    # Given a malformed feed entry, and a database that refuses one run's row
    bucket = BucketKeys.of(s.key_prefix, 0)
    junk = redis_client.xadd(bucket.feed, {"what": "not a run"})
    runs = finished_runs(order, 3, fail_at="charge_payment")
    poison, *fine = list(runs)
    engine = sa.create_engine(s.archive_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TRIGGER refuse_poison BEFORE INSERT ON saga_runs WHEN NEW.run_id = '{poison}' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
        )
    try:
        # When the archiver runs
        out = saga(s, "archive", "run", "--once")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_poison"))
        engine.dispose()
    # Then both are logged and parked for an operator, and every other run is archived
    assert out.returncode == 0, out.stderr
    assert poison in out.stderr and "malformed" in out.stderr
    status = json.loads(saga(s, "archive", "status", "--json").stdout)
    parked_runs = {p["run_id"] for p in status["parked"]}
    assert poison in parked_runs and any(p["id"] == junk for p in status["parked"])
    assert archived_counts(manual, fine)[0] == len(fine)
    # and the refused run is not lost: it stays in Redis, with no expiry
    assert order.get(poison).status is Status.COMPENSATED and ttl_ms(redis_client, s, poison) == -1

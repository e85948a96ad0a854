"""The SQL archive end to end, with live archiving: a real worker subprocess moves runs in the
test Redis and its archiver thread copies them into a real database (SQLite in a temporary
folder, or the PostgreSQL TEST_ARCHIVE_URL names); a finished run leaves Redis a few seconds
after it was archived (SAGA_HOT_RETENTION_SECONDS=3), and reads the same from the archive.

The module has a key prefix, a queue and a worker of its own.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga import InvalidPayload, RunNotFound, Settings, Status, find_runs
from saga.archive import ArchiveFeed
from saga.cli import EXIT_PARTIAL
from saga.core import decide
from saga.engine import ArchiveGauges
from saga.registry import default_registry
from saga.store import BucketKeys, Client, bucket_of, run_keys
from saga.testing import wait_for
from tests.helpers import archiving_worker, saga_cli

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "saga-archive-tests"
HOT_SECONDS = 3


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """This module's settings (archive on, short hot retention), its tables created with
    ``saga db upgrade``, and a worker that archives."""
    folder = tmp_path_factory.mktemp("archive")
    url = os.environ.get("TEST_ARCHIVE_URL") or f"sqlite:///{folder / 'archive.db'}"
    with archiving_worker(settings, "arch", QUEUE, url, HOT_SECONDS) as mine:
        yield mine


@pytest.fixture(scope="module")
def order(live: Settings) -> Any:
    from workers.orders import order

    return order


saga = saga_cli


def saga_json(settings: Settings, *args: str) -> Any:
    out = saga(settings, *args, "--json")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return json.loads(out.stdout)


def in_redis(client: Client, settings: Settings, run_id: str) -> bool:
    """Whether any key of the run is still in Redis."""
    keys = run_keys(settings.key_prefix, bucket_of(run_id, settings.buckets), run_id)
    return bool(client.exists(*keys))


def finished_in_archive(run_ids: list[str], **filters: Any) -> bool:
    """Whether the archive lists every run of ``run_ids`` as finished (under ``filters``)."""
    rows = find_runs(limit=1000, **filters).runs
    done = {r.run_id for r in rows if Status(r.status).terminal}
    return set(run_ids) <= done


def orders(order: Any, customer: str, *fail_at: str | None) -> list[str]:
    """Start one order per ``fail_at`` (None: it completes) for ``customer``; wait for all."""
    ids = []
    for i, step in enumerate(fail_at):
        payload: dict[str, Any] = {"order_id": i, "amount": 10 + i}
        if step:
            payload["fail_at"] = step
        ids.append(order.start(payload, tags={"customer": customer, "region": "eu"}))
    for run_id in ids:
        assert order.wait(run_id, timeout=30).status.terminal
    return ids


def test_a_finished_run_reads_the_same_after_it_left_redis(order: Any, live: Settings, redis_client: Client) -> None:
    # Given a completed and a compensated run, read while they are in Redis
    ok, bad = orders(order, f"c-{uuid.uuid4().hex[:8]}", None, "create_shipment")
    hot = {
        run_id: (order.get(run_id), order.history(run_id), order.events(run_id), order.rebuild(run_id))
        for run_id in (ok, bad)
    }
    # When they have been archived and their hot retention has passed
    wait_for(
        lambda: not in_redis(redis_client, live, ok) and not in_redis(redis_client, live, bad),
        30,
        "both to leave Redis",
    )
    # (their listing entries in Redis went with them: listings read the archive now)
    for run_id, status in ((ok, "completed"), (bad, "compensated")):
        bucket = BucketKeys.of(live.key_prefix, bucket_of(run_id, live.buckets))
        assert redis_client.zscore(bucket.status(status), run_id) is None
    # Then every read gives what it gave from Redis, through the API and the CLI
    for run_id, (state, history, events, rebuilt) in hot.items():
        assert order.get(run_id) == state and order.rebuild(run_id) == state == rebuilt
        assert order.history(run_id) == history
        assert order.events(run_id) == events
        assert json.dumps(order.get(run_id).to_dict()) == json.dumps(state.to_dict())
        assert saga_json(live, "show", run_id) == state.to_dict()
        assert saga_json(live, "show", run_id, "--version", "2") == history[1].to_dict()
        assert saga_json(live, "events", run_id) == json.loads(json.dumps(events))
        assert len(saga_json(live, "history", run_id)) == len(history)
        assert saga_json(live, "verify", run_id) == {"run_id": run_id, "ok": True, "problems": []}
    assert hot[bad][0].status is Status.COMPENSATED and hot[bad][0].tags["region"] == "eu"
    # and a run neither tier has is still one clear line
    missing = saga(live, "show", "no-such-run")
    assert missing.returncode == 3 and "no-such-run" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_a_prefix_names_a_run_that_left_redis_and_says_where_it_looked(
    order: Any, live: Settings, redis_client: Client
) -> None:
    # Given a finished run archived and gone from Redis (and from its status indexes)
    [done] = orders(order, f"c-{uuid.uuid4().hex[:8]}", None)
    wait_for(lambda: not in_redis(redis_client, live, done), 30, "the run to leave Redis")
    prefix = done[:8]
    # Then its prefix is taken wherever a run id is, as in Redis
    assert saga_json(live, "show", prefix)["id"] == done
    assert saga_json(live, "events", prefix) == json.loads(json.dumps(order.events(done)))
    assert saga_json(live, "verify", prefix) == {"run_id": done, "ok": True, "problems": []}
    tailed = saga(live, "tail", prefix, "--json")
    assert tailed.returncode == 0, tailed.stderr
    assert [json.loads(line)["type"] for line in tailed.stdout.splitlines()][-1] == "saga.completed"
    # a prefix no run has says both tiers were searched, and blames no retention
    missing = saga(live, "show", "zzzzzzzz")
    assert missing.returncode == 3, missing.stderr
    assert missing.stderr == "error: no run starts with 'zzzzzzzz' (in Redis or the archive)\n"
    whole = saga(live, "show", "zzzzzzzz-0000-0000-0000-000000000000")
    assert whole.returncode == 3 and "in Redis or the archive" in whole.stderr and "retention" not in whole.stderr
    # and a prefix shared by a run in Redis and one in the archive is ambiguous: exit 6, how many
    twin = done[:12] + "-ffff-" + uuid.uuid4().hex[:17]
    start = decide.decide_start(twin, "order", {"order_id": 1, "amount": 1})
    assert order.store.create(order.shape, start, None, check_at=time.time() + 300) == "created"
    try:
        shared = saga(live, "show", done[:12])
        assert shared.returncode == 6, shared.stderr
        assert f"'{done[:12]}' matches 2 runs: give more characters" in shared.stderr
        assert len(shared.stderr.splitlines()) == 1
        assert saga_json(live, "show", done[:16])["id"] == done
    finally:
        redis_client.delete(*run_keys(live.key_prefix, bucket_of(twin, live.buckets), twin))


def test_tags_are_on_the_state_and_the_started_event_and_are_checked_first(order: Any, live: Settings) -> None:
    key = f"k-{uuid.uuid4().hex}"
    for bad in ({"customer": 42}, {"": "x"}, ["customer"], {str(i): "v" for i in range(17)}):
        with pytest.raises(InvalidPayload, match="tag"):
            order.start({"order_id": 1, "amount": 1}, key=key, tags=bad)
    # nothing was written by the refused starts: the same key now starts a run with its own tags
    run_id = order.start({"order_id": 1, "amount": 1}, key=key, tags={"customer": "c-1"})
    state = order.wait(run_id, timeout=30)
    assert state.tags == {"customer": "c-1"}
    assert order.events(run_id)[0]["tags"] == {"customer": "c-1"}
    assert json.loads(json.dumps(state.to_dict()))["tags"] == {"customer": "c-1"}


def test_list_searches_the_archive_by_tag_status_time_and_failed_step(order: Any, live: Settings) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    ok1, bad, ok2 = orders(order, customer, None, "create_shipment", None)
    orders(order, f"other-{customer}", "create_shipment")
    tag = f"customer={customer}"
    wait_for(lambda: finished_in_archive([ok1, bad, ok2], tags={"customer": customer}), 30, "the runs archived")

    def ids(*args: str) -> list[str]:
        return [row["run_id"] for row in saga_json(live, "list", "--tag", tag, *args)]

    assert ids() == [ok2, bad, ok1]  # newest first
    assert ids("--status", "compensated") == [bad]
    assert ids("--failed-step", "create_shipment") == [bad]
    assert ids("--tag", "region=eu", "--status", "completed") == [ok2, ok1]
    assert ids("--tag", "region=us") == []
    assert ids("--since", "1h") == [ok2, bad, ok1] and ids("--until", "2000-01-01") == []
    # keyset pages: every run once, in order
    seen, cursor = [], ""
    while True:
        page = saga_json(live, "list", "--tag", tag, "--limit", "1", *(["--cursor", cursor] if cursor else []))
        if not page:
            break
        seen.append(page[0]["run_id"])
        cursor = page[0]["cursor"]
    assert seen == [ok2, bad, ok1]
    # the Python API answers the same
    page = find_runs(tags={"customer": customer}, status="compensated")
    assert [r.run_id for r in page.runs] == [bad] and page.runs[0].failed_step == "create_shipment"
    table = saga(live, "list", "--tag", tag)
    assert table.returncode == 0 and bad in table.stdout and "create_shipment" in table.stdout
    # with the columns of the listing without an archive: def(inition version), step (the failed
    # one by name, "-" when none), the run's own version
    header, *rows = table.stdout.splitlines()
    assert header.split()[:6] == ["run", "saga", "def", "status", "step", "version"]
    cells = {line.split()[0]: line.split() for line in rows if line.split()}
    assert cells[bad][2:6] == ["1", "compensated", "create_shipment", str(order.get(bad).version)]
    assert cells[ok1][2:6] == ["1", "completed", "-", str(order.get(ok1).version)]


def test_list_says_when_redis_is_down_and_whether_the_archive_alone_is_complete(order: Any, live: Settings) -> None:
    # Given archived runs, and a CLI whose Redis (with a password in its URL) does not answer
    customer = f"c-{uuid.uuid4().hex[:8]}"
    ids = orders(order, customer, None)
    wait_for(lambda: finished_in_archive(ids), 30, "the run to be archived")
    down = live.replace(redis_url="redis://:hunter2@127.0.0.1:1/0", broker_url="redis://127.0.0.1:1/0")
    # When it lists every run: the archive answers, one line of stderr says Redis did not and
    # that runs still moving may be missing; exit 7 (EXIT_PARTIAL)
    listed = saga(down, "list", "--tag", f"customer={customer}", "--json")
    assert listed.returncode == EXIT_PARTIAL == 7, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ids
    [line] = listed.stderr.splitlines()
    assert line.startswith("warning: Redis does not answer (cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "comes from the SQL archive alone" in line and "may be incomplete" in line and "hunter2" not in line
    # and a listing of finished runs only is complete from the archive: exit 0, still the warning
    finished = saga(down, "list", "--tag", f"customer={customer}", "--status", "completed")
    assert finished.returncode == 0, finished.stderr
    assert ids[0] in finished.stdout
    [line] = finished.stderr.splitlines()
    assert line.startswith("warning: Redis does not answer") and "listing is complete" in line
    # while with Redis up, nothing is said
    assert saga(live, "list", "--tag", f"customer={customer}").stderr == ""


def test_stats_counts_runs_and_names_the_steps_that_fail(order: Any, live: Settings) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    run_ids = orders(order, customer, "charge_payment", None)
    wait_for(lambda: finished_in_archive(run_ids, tags={"customer": customer}), 30, "the runs archived")
    stats = saga_json(live, "stats", "--since", "1h")
    [row] = [r for r in stats["runs"] if r["saga"] == "order" and r["version"] == 1]
    assert row["compensated"] >= 1 and row["completed"] >= 1
    assert any(
        f["saga"] == "order" and f["step"] == "charge_payment" and f["runs"] >= 1 for f in stats["failing_steps"]
    )


def test_archive_status_shows_each_bucket_and_drains(order: Any, live: Settings) -> None:
    run_ids = orders(order, f"c-{uuid.uuid4().hex[:8]}", None)

    def drained() -> dict[str, Any] | None:
        status: dict[str, Any] = saga_json(live, "archive", "status")
        return status if sum(b["depth"] for b in status["buckets"]) == 0 else None

    status = wait_for(drained, 30, "the feed to drain")
    assert status is not None and len(status["buckets"]) == live.buckets and status["parked"] == []
    assert finished_in_archive(run_ids)


def test_purge_removes_old_finished_runs_of_a_status_only(order: Any, live: Settings, redis_client: Client) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    ok, bad = orders(order, customer, None, "create_shipment")
    wait_for(lambda: not in_redis(redis_client, live, bad), 30, "the run to leave Redis")
    purged = saga_json(live, "archive", "purge", "--older-than", "0", "--status", "compensated")
    assert purged == {"purged": purged["purged"], "hot_retention_seconds": HOT_SECONDS} and purged["purged"] >= 1
    assert [r.run_id for r in find_runs(tags={"customer": customer}).runs] == [ok]
    with pytest.raises(RunNotFound):
        order.get(bad)
    # a purge of a run still in Redis says it stays there (found by show, not by list) until it expires
    fresh = orders(order, customer, "create_shipment")[0]
    wait_for(lambda: finished_in_archive([fresh]), 30, "the run to be archived")
    told = saga(live, "archive", "purge", "--older-than", "0", "--status", "compensated")
    assert told.returncode == 0, told.stderr
    assert told.stdout.splitlines()[1] == (
        f"Redis is not purged: a finished run stays there SAGA_HOT_RETENTION_SECONDS ({HOT_SECONDS} s) after it "
        "was archived, so until then `saga show` still finds a purged run while `saga list` (the archive) does not"
    )
    assert fresh not in [r.run_id for r in find_runs(tags={"customer": customer}).runs]
    refused = saga(live, "archive", "purge", "--older-than", "0", "--status", "running")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1


def test_without_an_archive_search_options_say_what_to_set(settings: Settings) -> None:
    plain = settings.replace(archive_url="")
    for args in (["list", "--tag", "a=b"], ["stats", "--since", "1d"], ["archive", "status"], ["db", "upgrade"]):
        out = saga(plain, *args)
        assert out.returncode != 0 and "SAGA_ARCHIVE_URL" in out.stderr and len(out.stderr.splitlines()) == 1


def test_the_feed_lag_is_exported_per_bucket(order: Any, live: Settings) -> None:
    orders(order, f"c-{uuid.uuid4().hex[:8]}", None)
    gauges = {m.name: m for m in ArchiveGauges(ArchiveFeed(default_registry().store).lag).collect()}
    assert set(gauges) == {"saga_archive_feed_depth", "saga_archive_lag_seconds"}
    for metric in gauges.values():
        assert sorted(int(s.labels["bucket"]) for s in metric.samples) == list(range(live.buckets))
        assert all(s.value >= 0 for s in metric.samples)

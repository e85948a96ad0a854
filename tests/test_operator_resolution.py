"""What an operator's fix leaves behind, end to end: a run whose compensation gave up while its
service was down, unwound by ``saga compensate`` once it is back, keeps blaming the step that
failed (its state, ``saga show``, the archive's failed step, ``saga stats``), shows the
compensation's trouble apart, and resolves that compensation's dead letter; a dead letter of a
run already resolved is refused with the command that works; a forward entry retried starts a
run with the original's input and tags, the two runs linked both ways.

A ``celery -A workers worker`` subprocess moves the runs in the suite's Redis (a key prefix and
queue of this module's own), and its archiver copies them into SQLite in a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from saga import Settings, Status, find_runs
from saga.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED
from saga.registry import default_registry
from saga.store import BucketKeys, Client, bucket_of
from saga.testing import wait_for
from tests.helpers import archiving_worker, saga_cli

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "saga-resolution-tests"


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """This module's settings (an archive of its own; runs stay in Redis a minute after it), its
    tables created with ``saga db upgrade``, and a worker that archives."""
    folder = tmp_path_factory.mktemp("resolution")
    with archiving_worker(settings, "res", QUEUE, f"sqlite:///{folder / 'archive.db'}", 60) as mine:
        yield mine


@pytest.fixture(scope="module")
def order(live: Settings) -> Any:
    from workers.orders import order

    return order


saga = saga_cli


def saga_json(settings: Settings, *args: str) -> Any:
    out = saga(settings, *args, "--json")
    assert out.returncode == EXIT_OK, out.stderr
    return json.loads(out.stdout)


def refused(out: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused command."""
    assert out.returncode == EXIT_REFUSED, (out.returncode, out.stdout, out.stderr)
    [line] = out.stderr.splitlines()
    assert line.startswith("error: ") and "unexpected" not in line
    return line


def entries_of(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """The run's entries in the dead-letter queue."""
    return [e for e in saga_json(settings, "dlq", "list") if e["run_id"] == run_id]


def archived(settings: Settings, run_ids: list[str], status: Status, **filters: Any) -> bool:
    """Whether the archive lists every run of ``run_ids`` in ``status``, with its latest events."""
    rows = {r.run_id: r for r in find_runs(limit=1000, **filters).runs}
    return all(r in rows and rows[r].status == status.value for r in run_ids)


def dead_letter_rows(settings: Settings, run_id: str) -> dict[str, tuple[str, str]]:
    """The archive's dead-letter rows of a run: entry id -> (kind, status)."""
    engine = sa.create_engine(settings.archive_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT entry_id, kind, status FROM saga_dead_letters WHERE run_id = :r"), {"r": run_id}
            )
            return {entry: (kind, status) for entry, kind, status in rows}
    finally:
        engine.dispose()


def failed_after_an_outage(order: Any, down: Path, customer: str) -> tuple[str, list[dict[str, Any]]]:
    """A run whose create_shipment gives up and whose refund gives up too (its service is down
    while ``down`` exists): failed, with a forward and a compensation dead letter."""
    down.touch()
    payload = {"order_id": 7, "amount": 30, "fail_at": "create_shipment", "outage": {"charge_payment": str(down)}}
    run_id = order.start(payload, tags={"customer": customer})
    state = order.wait(run_id, timeout=60)
    assert state.status is Status.FAILED, state
    return run_id, entries_of(default_registry().settings, run_id)


def test_an_unwind_after_a_failed_compensation_keeps_the_failed_step_and_resolves_its_dead_letter(
    order: Any, live: Settings, tmp_path: Path
) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    run_id, entries = failed_after_an_outage(order, tmp_path / "refunds-down", customer)
    by_kind = {e["kind"]: e for e in entries}
    assert set(by_kind) == {"forward", "compensation"}
    forward, stuck = by_kind["forward"], by_kind["compensation"]
    assert (forward["step"], stuck["step"]) == ("create_shipment", "charge_payment")
    failed = order.get(run_id)
    # the run failed at create_shipment: its compensation's failure does not take its place
    assert failed.error is not None and (failed.error.name, failed.error.type) == ("create_shipment", "PermanentError")
    assert failed.compensation_error is not None and failed.compensation_error.name == "charge_payment"
    shown = saga(live, "show", run_id).stdout
    assert "PermanentError at create_shipment" in shown
    assert f"compensation of charge_payment failed {stuck['attempts']} times" in shown and "open: dead letter" in shown

    # When the refund service is back and an operator unwinds the run
    (tmp_path / "refunds-down").unlink()
    out = saga(live, "compensate", run_id)
    assert out.returncode == EXIT_OK, out.stderr
    done = order.wait(run_id, timeout=60)

    # Then the run is compensated and still blames create_shipment, in every view
    assert done.status is Status.COMPENSATED
    assert done.error == failed.error and done.compensation_error == failed.compensation_error
    assert order.rebuild(run_id) == done
    assert saga_json(live, "verify", run_id)["ok"] is True
    show = saga_json(live, "show", run_id)
    assert show["error"]["name"] == "create_shipment"
    [trouble] = show["compensation_failures"]
    assert (trouble["entry_id"], trouble["step"], trouble["status"]) == (stuck["id"], "charge_payment", "resolved")
    text = saga(live, "show", run_id).stdout
    error_line = next(line for line in text.splitlines() if line.startswith("error"))
    assert "PermanentError at create_shipment" in error_line and "charge_payment" not in error_line
    assert (
        f"compensation of charge_payment failed {stuck['attempts']} times (ServiceUnavailable: charge_payment "
        "service is down" in text
    )
    assert "resolved by an operator: the run ended compensated after `saga compensate`" in text
    # the compensation's dead letter is resolved, recorded as such; the forward one stays for a retry
    assert [e["id"] for e in entries_of(live, run_id)] == [forward["id"]]
    resolved = [e for e in order.events(run_id) if e["type"] == "saga.dead_letter_resolved"]
    assert [e["entry_id"] for e in resolved] == [stuck["id"]]
    # retrying the resolved entry says what became of it, in one line: it is not in the queue
    out = saga(live, "dlq", "retry", stuck["id"])
    assert out.returncode == EXIT_NOT_FOUND and len(out.stderr.splitlines()) == 1, out.stderr
    assert f"entry with id '{stuck['id']}' in the queue: it was resolved (the run ended compensated" in out.stderr

    # and the archive agrees: failed step, failing steps, dead-letter rows
    wait_for(lambda: archived(live, [run_id], Status.COMPENSATED, tags={"customer": customer}), 30, "archived")
    wait_for(lambda: dead_letter_rows(live, run_id).get(stuck["id"], ("", ""))[1] == "resolved", 30, "the row resolved")
    assert dead_letter_rows(live, run_id) == {
        forward["id"]: ("forward", "open"),
        stuck["id"]: ("compensation", "resolved"),
    }
    listed = saga_json(live, "list", "--tag", f"customer={customer}", "--failed-step", "create_shipment")
    assert [r["run_id"] for r in listed] == [run_id]
    assert saga_json(live, "list", "--tag", f"customer={customer}", "--failed-step", "charge_payment") == []
    failing = saga_json(live, "stats", "--since", "1h")["failing_steps"]
    assert {(f["saga"], f["step"]) for f in failing} == {("order", "create_shipment")}


def test_a_dead_letter_left_behind_by_a_resolved_run_is_refused_with_the_command_that_works(
    order: Any, live: Settings, tmp_path: Path, redis_client: Client
) -> None:
    run_id, entries = failed_after_an_outage(order, tmp_path / "refunds-down", f"c-{uuid.uuid4().hex[:8]}")
    [stuck] = [e for e in entries if e["kind"] == "compensation"]
    (tmp_path / "refunds-down").unlink()
    assert saga(live, "compensate", run_id).returncode == EXIT_OK
    assert order.wait(run_id, timeout=60).status is Status.COMPENSATED
    # an entry a resolved run still has in the queue (left by a version that did not resolve it)
    bucket = BucketKeys.of(live.key_prefix, bucket_of(run_id, live.buckets))
    redis_client.hset(bucket.dlq, stuck["id"], json.dumps({k: v for k, v in stuck.items() if k != "cursor"}))
    redis_client.zadd(bucket.dlq_index, {stuck["id"]: 1.0})

    line = refused(saga(live, "dlq", "retry", stuck["id"]))
    assert line == (
        f"error: run {run_id} is compensated: nothing to retry; drop the entry with "
        f"`saga dlq drop {stuck['id']} --reason TEXT`"
    )
    assert saga(live, "dlq", "drop", stuck["id"], "--reason", "refunded after the outage").returncode == EXIT_OK
    assert stuck["id"] not in [e["id"] for e in entries_of(live, run_id)]


def test_a_retried_forward_entry_starts_a_run_with_the_same_input_and_tags_linked_both_ways(
    order: Any, live: Settings
) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    payload = {"order_id": 9, "amount": 12, "fail_at": "create_shipment"}
    run_id = order.start(payload, tags={"customer": customer, "region": "eu"})
    assert order.wait(run_id, timeout=60).status is Status.COMPENSATED
    [entry] = entries_of(live, run_id)

    retried = saga_json(live, "dlq", "retry", entry["id"])
    new_id = retried["run_id"]
    assert retried["new_run"] is True and new_id != run_id
    new = order.wait(new_id, timeout=60)

    assert new.tags == {"customer": customer, "region": "eu"}
    assert order.events(new_id)[0]["payload"] == payload
    link = {"run_id": run_id, "entry_id": entry["id"]}
    assert order.events(new_id)[0]["retry_of"] == link
    assert saga_json(live, "show", new_id)["retry_of"] == link
    assert saga_json(live, "show", run_id)["retried_as"] == [{"run_id": new_id, "entry_id": entry["id"]}]
    assert f"retry of      {run_id} (dead letter {entry['id']})" in saga(live, "show", new_id).stdout
    assert f"retried as    {new_id} (dead letter {entry['id']})" in saga(live, "show", run_id).stdout
    # a search by the customer finds both runs
    wait_for(lambda: archived(live, [run_id, new_id], new.status, tags={"customer": customer}), 30, "archived")
    listed = saga_json(live, "list", "--tag", f"customer={customer}")
    assert {r["run_id"] for r in listed} == {run_id, new_id}

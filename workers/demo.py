"""`make demo`: the example order saga, end to end, on an embedded default.

Uses the Redis at SAGA_REDIS_URL if one answers, else starts a private one. Starts a real
prefork worker, runs four orders with a live view — one completes, one compensates, one
exhausts its retries into the dead-letter queue, one loses its worker mid-step and resumes —
prints each run's timeline, books a trip whose flight, hotel and car are booked in parallel (a
group), lists the orders from the SQL archive (SQLite in ``.saga-demo/``
unless SAGA_ARCHIVE_URL names another), and stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from saga import ArchivedRun, SagaTimeout, Status
from saga.control import archive as archive_ops
from saga.core import parse_iso
from saga.registry import default_registry
from saga.settings import DEFAULT_REDIS_URL, Settings
from saga.testing import (
    RedisServer,
    answers,
    point_at_broker,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
from workers.app import app
from workers.booking import trip
from workers.orders import order

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=None if sys.stdout.isatty() else 160)

ORDERS: list[tuple[str, dict[str, Any]]] = [
    ("completes", {"order_id": 101, "amount": 30}),
    ("compensates", {"order_id": 102, "amount": 45, "fail_at": "create_shipment"}),
    ("retries, gives up", {"order_id": 103, "amount": 12, "flaky": {"charge_payment": 99}}),
    ("worker killed mid-step", {"order_id": 104, "amount": 80, "sleep": {"charge_payment": 30}}),
]


def start_worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    """A `celery -A workers worker` process in its own process group."""
    return start_worker_process("workers", env, name=name, loglevel="ERROR", cwd=ROOT, concurrency=4)


def view(rows: list[tuple[str, str]]) -> Table:
    """The live progress table."""
    table = Table(title="saga demo: the order saga (reserve_inventory -> charge_payment -> create_shipment)")
    for col in ("order", "scenario", "status", "step", "version", "last event"):
        table.add_column(col)
    for scenario, run_id in rows:
        state = order.get(run_id)
        last = order.events(run_id)[-1]
        step = order.steps[state.current_step].name if state.current_step < len(order.steps) else "-"
        colour = {"completed": "green", "compensated": "yellow", "failed": "red"}.get(state.status.value, "cyan")
        table.add_row(
            str(state.payload["order_id"]),
            scenario,
            f"[{colour}]{state.status.value}[/]",
            step,
            str(state.version),
            f"{last['type']} {last.get('name', '')}",
        )
    return table


def timeline(run_id: str, saga: Any = order) -> None:
    """Print a run's events, one a line."""
    events = saga.events(run_id)
    t0 = events[0]["at"]
    what = events[0]["payload"].get("order_id") or events[0]["payload"].get("trip_id")
    console.print(f"\n[bold]run {run_id}[/] ({saga.name} {what})")
    for e in events:
        extra = ""
        if e["type"] == "step.retrying":
            extra = f"attempt {e['attempt']} failed: {e['error_message']}"
        elif e["type"] == "saga.resumed":
            extra = f"{e['reason']}, from version {e['from_version']}"
        elif e["type"] == "step.failed":
            extra = f"{e['error']['type']}: {e['error']['message']}"
        offset = (parse_iso(e["at"]) - parse_iso(t0)) * 1000
        console.print(f"  v{e['version']:<2} +{offset:>7.0f} ms  {e['type']:<24} {e.get('name', ''):<18} {extra}")


def book_trip() -> str | None:
    """Book a trip: quote, then flight, hotel and car at once (a parallel group), then pay; print
    its timeline and how far the members overlapped. Returns its run id (None if it failed)."""
    console.print(f"\n[bold]A parallel booking[/]: {escape('quote -> [book_flight | book_hotel | book_car] -> pay')}")
    run_id = trip.start({"trip_id": 7, "nights": 2, "sleep": {"book_flight": 0.4, "book_hotel": 0.4, "book_car": 0.4}})
    try:
        state = trip.wait(run_id, timeout=60)
    except SagaTimeout as exc:
        console.print(f"[red]{exc}[/]")
        return None
    timeline(run_id, trip)
    spans: dict[str, list[float]] = {}
    for e in trip.events(run_id):
        if e["type"] in ("step.started", "step.succeeded") and e["name"].startswith("book_"):
            spans.setdefault(e["name"], []).append(parse_iso(e["at"]))
    overlap = min(s[-1] for s in spans.values()) - max(s[0] for s in spans.values())
    console.print(
        f"  parallel booking {state.status.value}: the 3 members ran at the same time for {overlap * 1000:.0f} ms; "
        f"payload {sorted(k for k in state.payload if k in ('flight', 'hotel', 'car', 'paid'))}"
    )
    return run_id


def archived_runs(customer: str) -> list[ArchivedRun]:
    """The demo's runs as the archive lists them, once the workers' archiver copied all four
    finished (else [])."""
    runs = archive_ops.find_runs(tags={"customer": customer}).runs
    return runs if len(runs) == len(ORDERS) and all(Status(r.status).terminal for r in runs) else []


def main() -> int:
    """Run the demo; returns the exit status."""
    url = os.environ.get("SAGA_REDIS_URL", DEFAULT_REDIS_URL)
    embedded: RedisServer | None = None
    if not answers(url):
        embedded = RedisServer(appendonly=True).start()
        url = embedded.url
        console.print(f"No Redis answers at SAGA_REDIS_URL; started an embedded one at {url}")
    else:
        console.print(f"Using the Redis at {url}")
    # the demo's defaults (a short lease, no metrics port), under what the environment says
    (ROOT / ".saga-demo").mkdir(exist_ok=True)
    demo_defaults = {
        "SAGA_LEASE_SECONDS": "3",
        "SAGA_METRICS_PORT": "0",
        "SAGA_ARCHIVE_URL": f"sqlite:///{ROOT / '.saga-demo' / 'archive.db'}",
    }
    settings = Settings.from_env({**demo_defaults, **os.environ, "SAGA_REDIS_URL": url})
    lease = settings.lease_seconds
    # `python -m workers.demo` imported the workers package, and so made its app, before the
    # Redis was chosen: configure the registry and point the app's publishing at it
    default_registry().configure(settings)
    point_at_broker(app, settings.broker_url)
    env = worker_env(settings)
    revision = archive_ops.upgrade()
    console.print(f"Archive: {settings.archive_url} (schema {revision})")
    customer = f"demo-{int(time.time())}"

    workers = [start_worker(env, "demo1")]
    rows: list[tuple[str, str]] = []
    try:
        with Live(console=console, refresh_per_second=8) as live:
            for scenario, payload in ORDERS:
                rows.append((scenario, order.start(payload, tags={"customer": customer})))
            killed_at = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                live.update(view(rows))
                victim = order.get(rows[3][1])
                if killed_at is None and victim.current_step == 1 and victim.status.value == "running":
                    time.sleep(0.5)  # let charge_payment get well under way
                    stop_process_group(workers.pop(), signal.SIGKILL)
                    killed_at = time.monotonic()
                    live.console.print(
                        f"[red]SIGKILLed the worker while order 104 was in charge_payment; "
                        f"a new worker resumes it once the {lease}s lease expires[/]"
                    )
                    workers.append(start_worker(env, "demo2"))
                if all(order.get(rid).status.terminal for _, rid in rows):
                    live.update(view(rows))
                    break
                time.sleep(0.1)
            else:
                console.print("[red]the demo timed out waiting for the runs to finish[/]")
                return 1
        for _, run_id in rows:
            timeline(run_id)
        booked = book_trip()
        if booked is None:
            return 1
        console.print("\n[bold]Dead-letter queue[/]")
        for entry in order.store.indexes.dead_letters():
            if entry["run_id"] in {rid for _, rid in rows}:
                console.print(
                    f"  {entry['id']}  {entry['kind']:<12} {entry['step']:<16} "
                    f"{entry['error_type']}: {entry['error_message']} ({entry['attempts']} attempts)"
                )
        try:
            archived = wait_for(lambda: archived_runs(customer), timeout=60, what="the workers to archive the runs")
        except SagaTimeout as exc:
            console.print(f"[red]{exc}: see `saga archive status`[/]")
            return 1
        console.print(f"\n[bold]The archive[/]: saga list --tag customer={customer}")
        for run in archived:
            console.print(
                f"  {run.run_id}  {run.status:<12} failed at {run.failed_step or '-':<16} started {run.created_at}"
            )
        console.print("\n[bold]Look further[/] (with Redis running at SAGA_REDIS_URL):")
        note = "   # the embedded one stops with the demo" if embedded else ""
        console.print(f"  export SAGA_REDIS_URL={url}{note}")
        console.print(f"  export SAGA_ARCHIVE_URL={settings.archive_url}")
        console.print(
            f"  .venv/bin/saga list --tag customer={customer}\n  .venv/bin/saga show {rows[3][1]}\n"
            f"  .venv/bin/saga events {rows[1][1]}\n  .venv/bin/saga dlq list"
        )
        # README 'Flower': the credentials from the environment (not on the command line, where `ps`
        # shows them), every endpoint closed by config/flowerconfig.py, listening on 127.0.0.1 only
        console.print(
            "  export FLOWER_USER=... FLOWER_PASSWORD=...     # your own\n"
            '  FLOWER_BASIC_AUTH="$FLOWER_USER:$FLOWER_PASSWORD" .venv/bin/celery -A workers flower '
            "--conf=config/flowerconfig.py --address=127.0.0.1",
            markup=False,
        )
        return 0
    finally:
        for proc in workers:
            stop_process_group(proc)
        if embedded is not None:
            embedded.close()


if __name__ == "__main__":
    raise SystemExit(main())

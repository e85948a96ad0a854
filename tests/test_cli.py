"""The ``saga`` command line, run as a real ``python -m saga`` subprocess against the test Redis
and a real ``celery -A workers worker`` subprocess, plus a few in-process CliRunner checks.

The worker of this module listens on a queue of its own (SAGA_STEP_QUEUE and
SAGA_COMPENSATION_QUEUE are set for the module), so no other worker of the suite takes its tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from saga import SagaState, Settings, Status
from saga.cli import (
    EXIT_ERROR,
    EXIT_FAILED_CHECK,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    cli,
    exit_code_for,
    history_entries,
    payload_changes,
)
from saga.control import runs as control
from saga.core import decide
from saga.errors import (
    ActionRefused,
    EntryNotFound,
    KeyConflict,
    RunNotFound,
    SagaError,
    SettingsError,
    StoreUnavailable,
)
from saga.registry import Registry, default_registry
from saga.store import Client
from saga.testing import configured, free_port, start_worker_process, stop_process_group, wait_for, worker_env

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "saga-cli-tests"
UNREACHABLE = "redis://127.0.0.1:1/0"


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_queue(settings: Settings) -> Iterator[Settings]:
    """Route this module's steps and compensations to a queue only its worker reads."""
    with configured(default_registry(), settings.replace(step_queue=QUEUE, compensation_queue=QUEUE)) as mine:
        yield mine


@pytest.fixture(scope="module")
def worker_process(own_queue: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A workers worker`` (threads pool) on this module's queue, stopped as a process group."""
    env = worker_env(own_queue)
    proc = start_worker_process("workers", env, name=f"cli{free_port()}", pool="threads", queues=QUEUE, cwd=ROOT)
    try:
        yield proc
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def order(worker_process: subprocess.Popen[bytes]) -> Any:
    """The example order saga, with a worker running it."""
    from workers.orders import order

    return order


@pytest.fixture(scope="module")
def runs(order: Any) -> dict[str, str]:
    """One completed and one compensated order (started in that order)."""
    ok = order.start({"order_id": 1, "amount": 30})
    bad = order.start({"order_id": 2, "amount": 45, "fail_at": "create_shipment"})
    assert order.wait(ok, timeout=30).status is Status.COMPLETED
    assert order.wait(bad, timeout=30).status is Status.COMPENSATED
    return {"completed": ok, "compensated": bad}


def saga(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m saga ARGS`` with the settings of this process's registry (and ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=worker_env(default_registry().settings, **(env or {})),
        timeout=timeout,
    )


def invoke(*args: str) -> Result:
    """Run the CLI in this process, on a registry of its own configured from the suite's settings."""
    return CliRunner(env=default_registry().settings.to_env()).invoke(cli, list(args), obj=Registry())


def saga_json(*args: str) -> Any:
    """Run a command with ``--json``; it must succeed with JSON on stdout and nothing on stderr."""
    out = saga(*args, "--json")
    assert out.returncode == EXIT_OK, out.stderr
    assert out.stderr == ""
    return json.loads(out.stdout)


def assert_one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with ``code`` and exactly one ``error: ...`` line on stderr."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def failed_order(order: Any, order_id: int) -> tuple[str, str]:
    """A compensated order and the id of its dead-letter entry."""
    run_id = order.start({"order_id": order_id, "fail_at": "create_shipment"})
    assert order.wait(run_id, timeout=30).status is Status.COMPENSATED
    [entry] = [e for e in saga_json("dlq", "list") if e["run_id"] == run_id]
    return run_id, entry["id"]


def event_types(order: Any, run_id: str) -> list[str]:
    return [e["type"] for e in order.events(run_id)]


# --- reading -------------------------------------------------------------------------------------


def test_list_shows_runs_newest_first_and_filters_them(runs: dict[str, str]) -> None:
    # all runs of the saga, newest first
    listed = [s["id"] for s in saga_json("list", "--saga", "order")]
    assert listed.index(runs["compensated"]) < listed.index(runs["completed"])
    # filtered by status
    completed = saga_json("list", "--status", "completed")
    assert runs["completed"] in [s["id"] for s in completed]
    assert runs["compensated"] not in [s["id"] for s in completed]
    assert {s["status"] for s in completed} == {"completed"}
    # another saga's name matches nothing
    assert saga_json("list", "--saga", "no-such-saga") == []
    # at most --limit
    assert len(saga_json("list", "--limit", "1")) == 1
    # and a table for people
    out = saga("list", "--saga", "order")
    assert out.returncode == EXIT_OK
    assert runs["completed"] in out.stdout and "compensated" in out.stdout
    assert "PermanentError at create_shipment" in out.stdout
    # its columns mean what the archive's listing's mean: def(inition version), the step a finished
    # run failed at by name ("-": none did), the run's own version
    header, *rows = out.stdout.splitlines()
    assert header.split()[:6] == ["run", "saga", "def", "status", "step", "version"]
    cells = {line.split()[0]: line.split() for line in rows if line.split()}
    version = {status: str(saga_json("show", run_id)["version"]) for status, run_id in runs.items()}
    assert cells[runs["compensated"]][2:6] == ["1", "compensated", "create_shipment", version["compensated"]]
    assert cells[runs["completed"]][2:6] == ["1", "completed", "-", version["completed"]]


def test_show_gives_the_state_at_the_latest_version_and_at_any_version(order: Any, runs: dict[str, str]) -> None:
    run_id = runs["completed"]
    latest = saga_json("show", run_id)
    assert latest == order.get(run_id).to_dict()
    assert [c["name"] for c in latest["checkpoints"]] == ["reserve_inventory", "charge_payment", "create_shipment"]
    # time travel: version 1 is the run as started
    first = saga_json("show", run_id, "--version", "1")
    assert first["version"] == 1 and first["status"] == "pending"
    assert first["payload"] == {"order_id": 1, "amount": 30} and first["checkpoints"] == []
    # the table shows checkpoints with their hashes, and the error of a compensated run
    out = saga("show", run_id)
    assert out.returncode == EXIT_OK
    assert latest["checkpoints"][-1]["hash"] in out.stdout and "create_shipment" in out.stdout
    out = saga("show", runs["compensated"])
    assert "PermanentError at create_shipment" in out.stdout
    # a version past the last one is not found
    past = saga("show", run_id, "--version", str(latest["version"] + 1))
    assert f"has versions 1..{latest['version']}" in assert_one_line_error(past, EXIT_NOT_FOUND)


def test_history_lists_every_version_with_its_payload_changes(order: Any, runs: dict[str, str]) -> None:
    run_id = runs["completed"]
    entries = saga_json("history", run_id)
    assert [e["version"] for e in entries] == list(range(1, order.get(run_id).version + 1))
    assert entries[0]["changes"] == {"added": {"amount": 30, "order_id": 1}, "removed": {}, "changed": {}}
    added = [key for e in entries for key in e["changes"]["added"]]
    assert added == ["amount", "order_id", "reservation_id", "charge_id", "charged", "shipment_id"]
    assert all(not e["changes"]["removed"] and not e["changes"]["changed"] for e in entries)
    assert entries[-1]["status"] == "completed" and entries[-1]["current_step"] == 3
    out = saga("history", run_id)
    assert out.returncode == EXIT_OK and "+ reservation_id" in out.stdout
    # compensations change the status and cursor, not the payload
    assert "no change" in saga("history", runs["compensated"]).stdout


def test_events_prints_the_run_s_events_as_stored(order: Any, runs: dict[str, str]) -> None:
    run_id = runs["compensated"]
    assert saga_json("events", run_id) == order.events(run_id)
    out = saga("events", run_id)
    assert out.returncode == EXIT_OK
    for kind in ("saga.started", "step.failed", "saga.dead_lettered", "compensation.succeeded", "saga.compensated"):
        assert kind in out.stdout


def test_verify_passes_for_an_untouched_run_and_fails_for_a_tampered_one(order: Any, redis_client: Client) -> None:
    # Given a completed run
    run_id = order.start({"order_id": 3, "amount": 10})
    order.wait(run_id, timeout=30)
    # Then it verifies
    out = saga("verify", run_id)
    assert out.returncode == EXIT_OK and out.stdout.startswith("ok: ")
    assert saga_json("verify", run_id) == {"run_id": run_id, "ok": True, "problems": []}
    # When its recorded start payload is changed behind the library's back
    key = order.store.keyspace.keys(run_id).events
    started = json.loads(redis_client.lindex(key, 0) or "[]")
    payload = next(field for field in started if isinstance(field, dict) and field.get("amount") == 10)
    payload["amount"] = 1000
    redis_client.lset(key, 0, json.dumps(started))
    # Then verify fails with exit 1 and says which checkpoint no longer matches
    out = saga("verify", run_id)
    assert out.returncode == EXIT_FAILED_CHECK
    assert "does not verify" in out.stdout and "at version 2, checkpoint of step 0" in out.stdout
    assert "does not match its payload" in out.stdout
    as_json = saga("verify", run_id, "--json")
    assert as_json.returncode == EXIT_FAILED_CHECK
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and any("payload" in p for p in report["problems"])


def test_dlq_list_shows_the_entry_of_a_step_that_gave_up(runs: dict[str, str]) -> None:
    [entry] = [e for e in saga_json("dlq", "list") if e["run_id"] == runs["compensated"]]
    assert entry["kind"] == "forward" and entry["step"] == "create_shipment"
    assert entry["error_type"] == "PermanentError" and entry["saga"] == "order"
    out = saga("dlq", "list")
    assert out.returncode == EXIT_OK and entry["id"] in out.stdout and "create_shipment refused order 2" in out.stdout


def test_dlq_list_pages_through_every_entry_once(order: Any) -> None:
    # Given at least two dead-letter entries
    failed_order(order, 11)
    failed_order(order, 12)
    everything = [e["id"] for e in saga_json("dlq", "list")]
    assert len(everything) >= 2
    # When an operator reads it in pages of about a third of it (the queue is the module's, so
    # other tests' entries are in it too: a page of one would mean a CLI call per entry),
    # following each page's cursor
    size = max(1, len(everything) // 3)
    seen: list[str] = []
    cursor = ""
    while True:
        page = saga_json("dlq", "list", "--limit", str(size), *(["--cursor", cursor] if cursor else []))
        if not page:
            break
        assert len(page) <= size
        seen += [entry["id"] for entry in page]
        cursor = page[-1]["cursor"]
    # Then the pages hold every entry once, in the order of the full listing
    assert seen == everything
    # and the table says how to get the next page
    table = saga("dlq", "list", "--limit", "1")
    assert table.returncode == EXIT_OK and "more entries: saga dlq list --cursor" in table.stdout


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["show"], ["history"], ["events"], ["verify"], ["cancel"], ["resume"]])
def test_an_unknown_run_is_one_line_and_exit_3(command: list[str]) -> None:
    run_id = str(uuid.uuid4())
    line = assert_one_line_error(saga(*command, run_id), EXIT_NOT_FOUND)
    assert run_id in line


@pytest.mark.parametrize("command", [["dlq", "retry", "nope.1"], ["dlq", "drop", "nope.1", "--reason", "x"]])
def test_an_unknown_dead_letter_entry_is_one_line_and_exit_3(command: list[str]) -> None:
    assert "nope.1" in assert_one_line_error(saga(*command), EXIT_NOT_FOUND)


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--status", "bogus"],
        ["list", "--limit", "0"],
        ["list", "--bogus"],
        ["show"],
        ["show", "x", "--version", "zero"],
        ["lst"],
        ["dlq", "drop", "x"],
        ["--bogus", "list"],
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(args: list[str]) -> None:
    line = assert_one_line_error(saga(*args), EXIT_USAGE)
    assert "--help" in line


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["dlq", "list"], ["cancel", "x"]])
def test_an_unreachable_redis_is_one_line_exit_4_and_quick(command: list[str]) -> None:
    started = time.monotonic()
    out = saga("--redis-url", UNREACHABLE, *command)
    assert time.monotonic() - started < 8
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in assert_one_line_error(out, EXIT_UNAVAILABLE)


def test_a_secret_in_the_query_string_of_the_redis_url_never_shows() -> None:
    out = saga("--redis-url", f"{UNREACHABLE}?password=TOPSECRET", "list")
    line = assert_one_line_error(out, EXIT_UNAVAILABLE)
    assert "TOPSECRET" not in out.stderr and f"{UNREACHABLE}?password=***" in line


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["--redis-url", "redis://:TOPSECRET@127.0.0.1:abc/0"], {}, "SAGA_REDIS_URL"),
        ([], {"SAGA_REDIS_URL": "redis://127.0.0.1:abc/0?password=TOPSECRET"}, "SAGA_REDIS_URL"),
        ([], {"SAGA_BROKER_URL": "redis://u:TOPSECRET@127.0.0.1:abc/0"}, "SAGA_BROKER_URL"),
    ],
)
def test_a_url_with_a_port_that_is_not_a_number_is_refused_in_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], variable: str
) -> None:
    out = saga(*args, "list", env=env)
    line = assert_one_line_error(out, EXIT_REFUSED)
    assert line.startswith(f"error: {variable} ") and "is not a number" in line and "use redis://" in line
    assert "unexpected" not in line and "TOPSECRET" not in out.stderr


def test_an_unexpected_error_is_one_line_unless_debug(redis_client: Client) -> None:
    # Given a snapshot that is not JSON at all
    run_id = f"garbled-{uuid.uuid4()}"
    keys = default_registry().store.keyspace.keys(run_id)
    redis_client.hset(keys.meta, "fingerprint", "0")
    redis_client.set(keys.snapshot, "not json")
    try:
        line = assert_one_line_error(saga("show", run_id), EXIT_ERROR)
        assert "unexpected JSONDecodeError" in line and "--debug" in line
        debug = saga("--debug", "show", run_id)
        assert debug.returncode == EXIT_ERROR
        assert "Traceback" in debug.stderr and debug.stderr.splitlines()[-1].startswith("error: JSONDecodeError")
    finally:
        redis_client.delete(keys.meta, keys.snapshot)


def test_saga_app_comes_from_the_environment_and_a_bad_one_is_one_line(runs: dict[str, str]) -> None:
    # SAGA_APP is a setting like the others: the library's settings accept it
    assert saga("list", "--limit", "1", env={"SAGA_APP": "workers"}).returncode == EXIT_OK
    line = assert_one_line_error(saga("resume", runs["completed"], env={"SAGA_APP": "no_such_module"}), EXIT_REFUSED)
    assert "cannot import app module 'no_such_module' (searched: " in line


# --- acting --------------------------------------------------------------------------------------


def test_cancel_of_a_run_blocked_in_a_slow_step_ends_compensated(order: Any) -> None:
    # Given a run whose charge_payment takes 3 s
    run_id = order.start({"order_id": 4, "amount": 20, "sleep": {"charge_payment": 3}})
    wait_for(
        lambda: any(e["type"] == "step.started" and e["name"] == "charge_payment" for e in order.events(run_id)),
        what="charge_payment to start",
    )
    # When an operator cancels it
    out = saga("cancel", run_id)
    # Then the cancel is recorded now and applied when the step commits: everything is undone
    assert out.returncode == EXIT_OK, out.stderr
    assert "cancel requested" in out.stdout
    state = order.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED
    types = event_types(order, run_id)
    assert "saga.cancelled" in types and "create_shipment" not in [c.name for c in state.checkpoints]
    assert [e["name"] for e in order.events(run_id) if e["type"] == "compensation.succeeded"] == [
        "charge_payment",
        "reserve_inventory",
    ]
    # and a finished run cannot be cancelled
    assert "only a pending or running run" in assert_one_line_error(saga("cancel", run_id), EXIT_REFUSED)


def test_resume_sends_a_never_dispatched_run_on_its_way(order: Any) -> None:
    # Given a run written to the store whose first step was never sent (a crash in between)
    start = decide.decide_start(str(uuid.uuid4()), "order", {"order_id": 5, "amount": 7})
    assert order.store.create(order.shape, start, None, check_at=time.time() + 30) == "created"
    # When an operator resumes it
    out = saga("resume", start.state.id, "--json")
    # Then it runs to the end
    assert out.returncode == EXIT_OK, out.stderr
    assert json.loads(out.stdout)["id"] == start.state.id
    assert order.wait(start.state.id, timeout=30).status is Status.COMPLETED
    [resumed] = [e for e in order.events(start.state.id) if e["type"] == "saga.resumed"]
    assert resumed["reason"] == "operator"
    # and a finished run cannot be resumed
    assert "only an unfinished run" in assert_one_line_error(saga("resume", start.state.id), EXIT_REFUSED)


def test_dlq_retry_of_a_compensated_run_starts_a_new_linked_run(order: Any) -> None:
    # Given a compensated run and its dead-letter entry
    run_id, entry_id = failed_order(order, 6)
    # When an operator retries the entry
    result = saga_json("dlq", "retry", entry_id)
    # Then a new run starts with the original input, linked from the old run
    new_id = result["run_id"]
    assert result == {"entry_id": entry_id, "run_id": new_id, "new_run": True} and new_id != run_id
    shown = saga_json("show", new_id)
    assert shown["saga"] == "order" and shown["payload"]["order_id"] == 6
    [retried] = [e for e in order.events(run_id) if e["type"] == "saga.retried"]
    assert retried["entry_id"] == entry_id and retried["new_run_id"] == new_id
    # and the entry has left the queue
    assert entry_id not in [e["id"] for e in saga_json("dlq", "list")]
    assert_one_line_error(saga("dlq", "retry", entry_id), EXIT_NOT_FOUND)
    order.wait(new_id, timeout=30)  # it fails again (same input); let it settle before the module ends


def test_dlq_drop_records_the_reason_and_removes_the_entry(order: Any) -> None:
    run_id, entry_id = failed_order(order, 7)
    out = saga("dlq", "drop", entry_id, "--reason", "refunded by hand")
    assert out.returncode == EXIT_OK, out.stderr
    assert entry_id in out.stdout
    assert entry_id not in [e["id"] for e in saga_json("dlq", "list")]
    [dropped] = [e for e in order.events(run_id) if e["type"] == "saga.dead_letter_dropped"]
    assert dropped["entry_id"] == entry_id and dropped["reason"] == "refunded by hand"


def test_acting_commands_use_the_settings_the_workers_use(order: Any, redis_client: Client) -> None:
    # Given a failed run: its compensation gave up and waits in the dead-letter queue
    run_id = order.start({"order_id": 9, "fail_at": "create_shipment", "fail_compensation": "charge_payment"})
    assert order.wait(run_id, timeout=30).status is Status.FAILED
    [entry] = [e for e in saga_json("dlq", "list") if e["run_id"] == run_id and e["kind"] == "compensation"]
    # When an operator retries it where the settings say a 50 s lease (and compensations go to a
    # queue nobody reads, so nothing moves the run meanwhile)
    parked = "saga-cli-nobody-reads-this"
    before = time.time()
    out = saga("dlq", "retry", entry["id"], env={"SAGA_LEASE_SECONDS": "50", "SAGA_COMPENSATION_QUEUE": parked})
    assert out.returncode == EXIT_OK, out.stderr
    # Then the watchdog deadline written is a 50 s lease away, as a worker with those settings writes it
    due = order.store.indexes.deadline(run_id)
    assert due is not None and due - before > 45
    # and the run goes on once its message is sent where the module's worker reads
    redis_client.delete(parked)
    assert saga("resume", run_id).returncode == EXIT_OK
    assert order.wait(run_id, timeout=30).status is Status.FAILED  # its compensation still fails


# --- in process ----------------------------------------------------------------------------------


def test_payload_changes_reports_added_removed_and_changed_keys() -> None:
    assert payload_changes({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == {
        "added": {"d": 4},
        "removed": {"c": 3},
        "changed": {"b": {"old": 2, "new": 5}},
    }
    assert payload_changes({}, {}) == {"added": {}, "removed": {}, "changed": {}}


def test_history_entries_start_from_an_empty_payload() -> None:
    v1 = decide.decide_start("r1", "s", {"x": 1}).state
    v2 = SagaState.from_dict({**v1.to_dict(), "version": 2, "payload": {"x": 2, "y": True}})
    assert history_entries([v1, v2]) == [
        {
            "version": 1,
            "status": "pending",
            "current_step": 0,
            "at": v1.updated_at,
            "changes": {"added": {"x": 1}, "removed": {}, "changed": {}},
        },
        {
            "version": 2,
            "status": "pending",
            "current_step": 0,
            "at": v1.updated_at,
            "changes": {"added": {"y": True}, "removed": {}, "changed": {"x": {"old": 1, "new": 2}}},
        },
    ]


def test_errors_map_to_named_exit_codes() -> None:
    assert exit_code_for(RunNotFound("x")) == exit_code_for(EntryNotFound("x")) == EXIT_NOT_FOUND == 3
    assert exit_code_for(StoreUnavailable("down")) == EXIT_UNAVAILABLE == 4
    assert exit_code_for(ActionRefused("finished")) == exit_code_for(SagaError("refused")) == EXIT_REFUSED == 6
    assert exit_code_for(SettingsError("bad")) == exit_code_for(KeyConflict("s", "k", "r")) == EXIT_REFUSED
    assert exit_code_for(ValueError()) == exit_code_for(KeyError("x")) == EXIT_ERROR == 5
    assert (EXIT_OK, EXIT_FAILED_CHECK, EXIT_USAGE, EXIT_PARTIAL) == (0, 1, 2, 7)


def test_help_lists_every_command() -> None:
    out = invoke("--help")
    assert out.exit_code == EXIT_OK
    for command in ("list", "show", "history", "events", "tail", "verify", "resume", "cancel", "dlq"):
        assert command in out.stdout
    dlq = invoke("dlq", "--help")
    assert all(c in dlq.stdout for c in ("list", "retry", "drop"))


def test_in_process_errors_are_one_line_with_their_exit_codes() -> None:
    missing = invoke("show", "no-such-run")  # 8 characters or more: taken as a prefix
    assert missing.exit_code == EXIT_NOT_FOUND and missing.stdout == ""
    assert missing.stderr == (
        "error: no run starts with 'no-such-run' (in Redis; without an archive a finished run leaves it after "
        "SAGA_RETENTION_SECONDS)\n"
    )
    whole = "00000000-0000-0000-0000-000000000000"
    missing = invoke("show", whole)
    assert missing.exit_code == EXIT_NOT_FOUND and missing.stdout == ""
    assert (
        missing.stderr == f"error: no saga run with id '{whole}' (check the id; finished runs expire after retention)\n"
    )
    bad = invoke("list", "--limit", "-1")
    assert bad.exit_code == EXIT_USAGE and len(bad.stderr.splitlines()) == 1
    down = invoke("--redis-url", UNREACHABLE, "dlq", "list")
    assert down.exit_code == EXIT_UNAVAILABLE and down.stderr.startswith("error: cannot reach Redis")


def test_an_unexpected_exception_in_process_hints_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> list[Any]:
        raise ValueError("boom")

    monkeypatch.setattr(control, "stats", boom)
    out = invoke("stats")
    assert out.exit_code == EXIT_ERROR
    assert out.stderr == (
        "error: unexpected ValueError: boom (a bug: rerun with --debug to see the traceback, and report it)\n"
    )
    debug = invoke("--debug", "stats")
    assert debug.exit_code == EXIT_ERROR and "Traceback" in debug.stderr and "ValueError: boom" in debug.stderr


def test_an_empty_listing_says_so() -> None:
    out = invoke("list", "--saga", "no-such-saga")
    assert out.exit_code == EXIT_OK and out.stdout == "no runs\n"
    as_json = invoke("list", "--saga", "no-such-saga", "--json")
    assert json.loads(as_json.stdout) == []

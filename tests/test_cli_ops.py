"""The operator's rough edges of the ``saga`` command, against real processes: ``saga tail`` (one
run, or every run of a saga, stopped with SIGINT), ``saga list`` paged by cursor and bounded by
start time, run id prefixes, ``saga show --key`` and its Flower link, ``saga cancel --json``,
and ``--app`` imported from the current directory by the real ``saga`` console script.

Everything runs on a private redis-server, with a ``celery -A workers worker`` subprocess on a
queue of this module's own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga import Saga, SagaState, Settings, Status
from saga.cli import EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from saga.core import decide
from saga.registry import default_registry
from saga.store import connect
from saga.testing import RedisServer, configured, free_port, start_worker_process, stop_process_group, wait_for
from saga.testing import worker_env as env_of
from workers.app import app
from workers.booking import trip as trip_saga
from workers.orders import order as order_saga

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "saga-cli-ops-tests"
#: A queue no worker reads: a run started with it waits, pending, until an operator resumes it.
HOLD = "saga-cli-ops-hold"
#: The ``saga`` console script of this environment (not ``python -m saga``, which puts the
#: current directory on sys.path by itself).
SAGA_SCRIPT = Path(sys.executable).parent / "saga"

#: A saga declared here and, identically, in a module written to a temporary folder for the CLI.
PROBE_SOURCE = """
from saga import Saga, StepContext
from workers.app import app

probe = Saga("cli_ops_probe", app=app)


@probe.step()
def only(payload: dict, ctx: StepContext) -> None:
    return None
"""
probe = Saga("cli_ops_probe", app=app)


@probe.step()
def only(payload: dict[str, Any], ctx: Any) -> None:
    return None


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ops_settings(settings: Settings) -> Iterator[Settings]:
    """This module's settings: a private Redis (store and broker), steps on this module's queue."""
    with RedisServer() as server:
        yield settings.replace(redis_url=server.url, broker_url=server.url, step_queue=QUEUE, compensation_queue=QUEUE)


@pytest.fixture(scope="module")
def order(ops_settings: Settings) -> Iterator[Saga]:
    """The example order saga, run by a worker subprocess, this process configured alike."""
    proc = start_worker_process(
        "workers", env_of(ops_settings), name=f"cliops{free_port()}", pool="threads", queues=QUEUE, cwd=ROOT
    )
    try:
        with configured(default_registry(), ops_settings, app):
            yield order_saga
    finally:
        stop_process_group(proc)


def saga(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m saga ARGS`` with this process's settings (and ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env_of(default_registry().settings, **(env or {})),
        timeout=60,
    )


def saga_json(*args: str, env: dict[str, str] | None = None) -> Any:
    out = saga(*args, "--json", env=env)
    assert out.returncode == EXIT_OK, out.stderr
    return json.loads(out.stdout)


def one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


class Tail:
    """``saga tail ARGS`` running in the background, its output in files (as through a pipe:
    block-buffered unless the command flushes)."""

    def __init__(self, folder: Path, *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "stdout", folder / "stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "saga", "tail", *args],
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env_of(default_registry().settings),
            )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def started(self) -> bool:
        """Whether the tail of many runs says it follows them."""
        return "following new events" in self.err.read_text()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def of(self, run_id: str) -> list[dict[str, Any]]:
        """The events printed for ``run_id``."""
        return [e for e in self.events() if e["run_id"] == run_id]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def with_saga(events: list[dict[str, Any]], name: str = "order") -> list[dict[str, Any]]:
    """Events as ``saga tail --json`` prints them: each with its run's saga name."""
    return [{"saga": name, **e} for e in events]


def terminal(saga_: Saga, run_id: str) -> SagaState | None:
    state = saga_.get(run_id)
    return state if state.status.terminal else None


def held(order: Saga, payload: dict[str, Any]) -> str:
    """A run whose first step was sent to a queue nobody reads: it waits, pending."""
    with configured(default_registry(), default_registry().settings.replace(step_queue=HOLD), app):
        return order.start(payload)


# --- saga tail -----------------------------------------------------------------------------------


def test_tail_of_a_run_prints_its_events_then_follows_it_to_the_end(order: Saga, tmp_path: Path) -> None:
    # Given a run that waits, pending (its first step went to a queue nobody reads)
    run_id = held(order, {"order_id": 1, "amount": 5})
    # When an operator tails it (by a prefix of its id)
    tail = Tail(tmp_path, run_id[:8], "--json")
    try:
        # Then its events so far are printed, and the tail keeps following
        wait_for(lambda: tail.lines(), what="the tail to print the run's start")
        assert [e["type"] for e in tail.events()] == ["saga.started"]
        assert tail.proc.poll() is None
        # and once the run moves, the tail prints every new event and ends with the run
        assert saga("resume", run_id).returncode == EXIT_OK
        assert tail.proc.wait(timeout=30) == EXIT_OK
        assert tail.of(run_id) == with_saga(order.events(run_id))
        assert order.get(run_id).status is Status.COMPLETED
    finally:
        tail.stop()
    # and a finished run's tail prints its events for people, and ends at once
    out = saga("tail", run_id)
    assert out.returncode == EXIT_OK, out.stderr
    assert out.stdout.count("\n") == len(order.events(run_id))
    assert all(line.split()[2] == run_id[:8] for line in out.stdout.splitlines())
    assert "saga.completed" in out.stdout and "step.succeeded 2 create_shipment" in out.stdout


def test_tail_of_a_saga_follows_its_new_runs_until_ctrl_c(order: Saga, tmp_path: Path) -> None:
    # Given a tail of the order saga (as JSON), and one for people
    as_json = Tail(tmp_path / "json", "--saga", "order", "--json")
    for_people = Tail(tmp_path / "people", "--saga", "order")
    try:
        for tail in (as_json, for_people):
            wait_for(tail.started, what="the tail to start")
        # When runs of the saga start and end, and a run of another saga too
        ok = order.start({"order_id": 2, "amount": 10})
        bad = order.start({"order_id": 3, "amount": 10, "fail_at": "create_shipment"})
        with configured(default_registry(), default_registry().settings.replace(step_queue=HOLD), app):
            other = trip_saga.start({"trip_id": 1})
        assert wait_for(lambda: terminal(order, ok)) and wait_for(lambda: terminal(order, bad))
        # Then the tail prints every event of each run of the saga as it is committed
        wait_for(lambda: as_json.of(ok) == with_saga(order.events(ok)), what="the completed run's events")
        wait_for(lambda: as_json.of(bad) == with_saga(order.events(bad)), what="the compensated run's events")
        assert other not in {e["run_id"] for e in as_json.events()}
        wait_for(lambda: "saga.compensated" in for_people.out.read_text(), what="the table tail")
        # and Ctrl-C ends it quietly with 130
        for tail in (as_json, for_people):
            tail.proc.send_signal(signal.SIGINT)
            assert tail.proc.wait(timeout=15) == EXIT_INTERRUPTED
            err = tail.err.read_text()
            assert "Traceback" not in err and "Aborted" not in err
        people = for_people.out.read_text()
        assert ok[:8] in people and bad[:8] in people and "PermanentError" in people
        assert other[:8] not in people
    finally:
        as_json.stop()
        for_people.stop()


def test_tail_of_an_unknown_run_or_with_both_a_run_and_a_saga_is_one_line(order: Saga) -> None:
    missing = str(uuid.uuid4())
    assert missing[:8] in one_line_error(saga("tail", missing[:8]), EXIT_NOT_FOUND)
    assert missing in one_line_error(saga("tail", missing), EXIT_NOT_FOUND)
    assert "not both" in one_line_error(saga("tail", missing, "--saga", "order"), EXIT_USAGE)


# --- saga list -----------------------------------------------------------------------------------


def test_list_pages_with_a_cursor_and_filters_by_start_time(order: Saga) -> None:
    # Given runs started one after the other
    before = [order.start({"order_id": 10 + i, "amount": 1}) for i in range(3)]
    after = [order.start({"order_id": 20 + i, "amount": 1}) for i in range(2)]
    wait_for(lambda: all(terminal(order, r) for r in before + after), what="the runs to finish")
    everything = [s["id"] for s in saga_json("list", "--saga", "order", "--limit", "1000")]
    assert set(before + after) <= set(everything)
    # When an operator reads the listing two runs at a time, following each page's cursor
    seen: list[str] = []
    cursor = ""
    while True:
        page = saga_json("list", "--saga", "order", "--limit", "2", *(["--cursor", cursor] if cursor else []))
        seen += [s["id"] for s in page]
        if len(page) < 2:
            break
        cursor = page[-1]["cursor"]
    # Then the pages hold every run once, in the order of the whole listing
    assert seen == everything
    table = saga("list", "--saga", "order", "--limit", "2")
    assert table.returncode == EXIT_OK and "more runs: saga list --cursor" in table.stdout
    # and --since (inclusive) and --until bound the start time: an ISO time, or a span back from now
    iso = order.get(after[0]).created_at
    since = [s["id"] for s in saga_json("list", "--saga", "order", "--since", iso)]
    until = [s["id"] for s in saga_json("list", "--saga", "order", "--until", iso)]
    assert set(after) <= set(since) and not set(before) & set(since)
    assert set(before) <= set(until) and not set(after) & set(until)
    assert set(before + after) <= {s["id"] for s in saga_json("list", "--since", "1h")}
    # and a bad cursor or date is one line
    assert "not a listing cursor" in one_line_error(saga("list", "--cursor", "nonsense"), EXIT_REFUSED)
    assert "is not a date" in one_line_error(saga("list", "--since", "yesterday"), EXIT_REFUSED)
    assert "--parked" in one_line_error(saga("list", "--parked", "--since", "1h"), EXIT_REFUSED)


# --- run id prefixes, show --key, Flower ---------------------------------------------------------


def test_a_unique_prefix_of_a_run_id_is_taken_wherever_a_run_id_is(order: Saga) -> None:
    run_id = order.start({"order_id": 30, "amount": 3})
    wait_for(lambda: terminal(order, run_id))
    prefix = run_id[:8]
    assert saga_json("show", prefix)["id"] == run_id
    assert saga_json("events", prefix) == order.events(run_id)
    assert len(saga_json("history", prefix)) == order.get(run_id).version
    assert saga_json("verify", prefix)["run_id"] == run_id
    # an acting command names the run it found (here, to refuse: the run is finished)
    assert run_id in one_line_error(saga("cancel", prefix), EXIT_REFUSED)
    assert run_id in one_line_error(saga("resume", prefix), EXIT_REFUSED)
    # a prefix shorter than 8 characters is not looked up
    assert run_id[:7] in one_line_error(saga("show", run_id[:7]), EXIT_NOT_FOUND)
    # a prefix no run has says so, and where it looked (no archive here: Redis, and for how long)
    line = one_line_error(saga("events", "zzzzzzzz"), EXIT_NOT_FOUND)
    assert line.startswith("error: no run starts with 'zzzzzzzz' (in Redis; ") and "SAGA_RETENTION_SECONDS" in line


def test_an_ambiguous_prefix_is_one_line_with_the_number_of_runs(order: Saga) -> None:
    # Given two runs whose ids share their first 9 characters
    shared = uuid.uuid4().hex[:8] + "-"
    ids = [shared + str(uuid.uuid4())[9:] for _ in range(2)]
    for run_id in ids:
        start = decide.decide_start(run_id, "order", {"order_id": 31, "amount": 1})
        assert order.store.create(order.shape, start, None, check_at=time.time() + 300) == "created"
    # Then the shared prefix names neither, and a longer one names one
    line = one_line_error(saga("show", shared), EXIT_REFUSED)
    assert f"run id prefix {shared!r} matches 2 runs: give more characters" in line
    assert saga_json("show", ids[0][:14])["id"] == ids[0]


def test_show_by_business_key_and_with_the_flower_link(order: Saga) -> None:
    key = f"order-{uuid.uuid4()}"
    run_id = order.start({"order_id": 40, "amount": 2}, key=key)
    assert saga_json("show", "--key", key, "--saga", "order")["id"] == run_id
    line = one_line_error(saga("show", "--key", "no-such-key", "--saga", "order"), EXIT_NOT_FOUND)
    assert "no run of saga 'order' was started with key 'no-such-key'" in line
    assert "--saga" in one_line_error(saga("show", "--key", key), EXIT_USAGE)
    assert "RUN" in one_line_error(saga("show"), EXIT_USAGE)
    # With SAGA_FLOWER_URL, show says where Flower lists the run's tasks
    flower = {"SAGA_FLOWER_URL": "http://flower.internal:5555/ops/"}
    shown = saga_json("show", run_id, env=flower)
    assert shown["flower"] == {
        "first_task": f"http://flower.internal:5555/ops/task/{run_id}",
        "tasks": "http://flower.internal:5555/ops/tasks",
        "search": f"kwargs:run={run_id}",
    }
    table = saga("show", run_id, env=flower).stdout
    assert f"http://flower.internal:5555/ops/task/{run_id}" in table
    assert "http://flower.internal:5555/ops/tasks" in table and f"kwargs:run={run_id}" in table
    # (both find what the messages carry: a run's first task has the run id as its task id, and
    # every task has it as keyword `run`)
    waiting = held(order, {"order_id": 41, "amount": 2})
    client = connect(default_registry().settings.redis_url, retries=0)
    try:
        sent = [json.loads(raw)["headers"] for raw in client.lrange(HOLD, 0, -1)]
    finally:
        client.close()
    [headers] = [h for h in sent if h["root_id"] == waiting]
    assert headers["id"] == waiting and f"'run': '{waiting}'" in headers["kwargsrepr"]
    assert "flower" not in saga_json("show", run_id)


# --- cancel --json -------------------------------------------------------------------------------


def test_cancel_json_says_whether_it_took_effect_or_waits_for_the_running_step(order: Saga) -> None:
    # A run in a slow step: the cancel waits for that step
    busy = order.start({"order_id": 50, "amount": 20, "sleep": {"charge_payment": 3}})
    wait_for(lambda: any(e["type"] == "step.started" and e["name"] == "charge_payment" for e in order.events(busy)))
    waiting = saga_json("cancel", busy)
    assert waiting["run_id"] == busy and waiting["outcome"] == "cancel_requested"
    assert waiting["status"] == "running" and waiting["waits_for"] == ["charge_payment"]
    assert order.wait(busy, timeout=30).status is Status.COMPENSATED
    # A run no step is running for: the cancel takes effect at once
    idle = held(order, {"order_id": 51, "amount": 20})
    done = saga_json("cancel", idle)
    assert done["outcome"] == "cancelled" and done["waits_for"] == []
    assert done["status"] in ("compensating", "compensated")
    assert order.wait(idle, timeout=30).status is Status.COMPENSATED


# --- --app from the current directory ------------------------------------------------------------


def test_app_is_imported_from_the_current_directory_by_the_console_script(order: Saga, tmp_path: Path) -> None:
    # Given a module defining a saga, in a folder of its own, and a run of that saga waiting
    (tmp_path / "probe_sagas.py").write_text(PROBE_SOURCE)
    start = decide.decide_start(str(uuid.uuid4()), "cli_ops_probe", {"n": 1})
    assert probe.store.create(probe.shape, start, None, check_at=time.time() + 300) == "created"
    env = {**env_of(default_registry().settings, SAGA_STEP_QUEUE=HOLD), "PYTHONPATH": str(ROOT)}

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SAGA_SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)

    # When the operator runs `saga --app probe_sagas resume` from that folder
    out = run("--app", "probe_sagas", "resume", start.state.id, cwd=tmp_path)
    # Then the module is imported from there, and the run is resumed by its definition
    assert out.returncode == EXIT_OK, out.stderr
    assert [e["type"] for e in probe.events(start.state.id)][-1] == "saga.resumed"
    # and from another folder the error names the module and where it was looked for
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = one_line_error(run("--app", "probe_sagas:app", "resume", start.state.id, cwd=elsewhere), EXIT_REFUSED)
    assert f"cannot import app module 'probe_sagas' (searched: {elsewhere}, " in line
    assert "No module named 'probe_sagas'" in line
    # and a module that is found but fails to import says so
    (elsewhere / "broken_sagas.py").write_text("import no_such_dependency\n")
    line = one_line_error(run("--app", "broken_sagas", "resume", start.state.id, cwd=elsewhere), EXIT_REFUSED)
    assert "app module 'broken_sagas' was found but importing it failed: No module named 'no_such_dependency'" in line

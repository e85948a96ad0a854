"""A run's timeline in Flower, with true task states, and Flower answering nothing without its
credentials — against a private redis-server, a real prefork worker of the example app
(``celery -A workers worker -E``) and a real Flower started as the README says
(``FLOWER_BASIC_AUTH=... celery -A workers flower --conf=config/flowerconfig.py``)."""

from __future__ import annotations

import ast
import base64
import json
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from saga import Settings, Status
from saga.core import Direction
from saga.registry import default_registry
from saga.store import connect_node
from saga.testing import RedisServer, configured, free_port, stop_process_group, wait_for, worker_env
from saga.transport import call_kwargs, send
from workers.app import app
from workers.orders import order

ROOT = Path(__file__).resolve().parents[1]
#: Made up for this run: no credentials are written down anywhere.
USER, PASSWORD = "ops", secrets.token_urlsafe(16)
#: A payload value that must never reach Flower.
SECRET = f"card-{secrets.token_hex(8)}"


def flower_command(port: int) -> list[str]:
    """The README's command (``celery -A workers flower ...``), on a free port."""
    conf = "--conf=config/flowerconfig.py"
    return [sys.executable, "-m", "celery", "-A", "workers", "flower", conf, "--address=127.0.0.1", f"--port={port}"]


@dataclass
class Stack:
    url: str
    broker: str
    worker_log: Path


def request(url: str, auth: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    """(status, body) of one HTTP request (status 0: no answer)."""
    req = urllib.request.Request(url, method=method)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("flower")
    port = free_port()
    with RedisServer() as redis:
        mine = settings.replace(redis_url=redis.url, broker_url=redis.url, watchdog_interval=0, metrics_port=0)
        env = worker_env(mine)
        flower_env = {**env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
        with open(folder / "flower.log", "wb") as out:
            flower = subprocess.Popen(
                flower_command(port), env=flower_env, cwd=ROOT, start_new_session=True, stdout=out, stderr=out
            )
        name = f"flowerw{port}"
        worker_args = ["worker", "-E", "--pool=prefork", "-c", "2", "--loglevel=INFO", "-n", f"{name}@%h"]
        with open(folder / "worker.log", "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", *worker_args, "--without-gossip", "--without-mingle"],
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            with configured(default_registry(), mine, app):
                # Flower hears the worker's events (its heartbeats) once both run
                online = re.compile(rf'flower_worker_online\{{worker="{name}@[^"]+"\}} 1\.0')
                wait_for(
                    lambda: online.search(request(f"{url}/metrics", f"{USER}:{PASSWORD}")[1].decode()),
                    timeout=60,
                    what="Flower to see the worker",
                )
                yield Stack(url, redis.url, folder / "worker.log")
        finally:
            stop_process_group(worker)
            stop_process_group(flower)


PATHS = ["/", "/tasks", "/task/x", "/api/tasks", "/api/workers", "/metrics", "/healthcheck", "/static/css/flower.css"]


def test_no_flower_endpoint_answers_without_its_credentials(stack: Stack) -> None:
    for path in [*PATHS, "/login", "/no-such-page"]:
        assert request(stack.url + path)[0] == 401, path
        assert request(stack.url + path, f"{USER}:wrong")[0] == 401, path
        assert request(stack.url + path, f"{USER}:")[0] == 401, path
    assert request(f"{stack.url}/api/task/revoke/x", method="POST")[0] == 401
    for path in PATHS[:2] + PATHS[3:]:
        assert request(stack.url + path, f"{USER}:{PASSWORD}")[0] == 200, path


def compose_flower_command(port: int) -> list[str]:
    """docker-compose.yml's Flower command, its variables set, on a free local port."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    values = {"FLOWER_USER": USER, "FLOWER_PASSWORD": PASSWORD}
    args = [re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: values[m.group(1)], str(a)) for a in service["command"]]
    assert args[0] == "celery" and "$" not in " ".join(args)
    return [sys.executable, "-m", *args, f"--port={port}", "--address=127.0.0.1"]


def test_the_compose_files_flower_answers_nothing_without_its_credentials(settings: Settings) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY config/flowerconfig.py ./config/flowerconfig.py" in dockerfile  # what --conf names, in WORKDIR
    port = free_port()
    with RedisServer() as redis:  # Flower turns task events on: not in the suite's worker
        env = worker_env(settings.replace(redis_url=redis.url, broker_url=redis.url, metrics_port=0))
        env.pop("FLOWER_BASIC_AUTH", None)
        flower = subprocess.Popen(
            compose_flower_command(port),
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            assert wait_for(lambda: request(f"{url}/metrics")[0], timeout=60, what="Flower to answer") == 401
            for path in PATHS:
                assert request(url + path)[0] == 401, path
            assert request(f"{url}/metrics", f"{USER}:{PASSWORD}")[0] == 200
        finally:
            stop_process_group(flower)


def test_flower_with_this_configuration_refuses_to_start_without_credentials(settings: Settings) -> None:
    env = worker_env(settings.replace(redis_url="redis://127.0.0.1:1/0", broker_url="redis://127.0.0.1:1/0"))
    env.pop("FLOWER_BASIC_AUTH", None)
    done = subprocess.run(flower_command(free_port()), env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.decode().strip().splitlines()[-1].startswith("Flower needs basic auth")


def flower_tasks(stack: Stack, search: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"search": search, "sort_by": "received"})
    status, body = request(f"{stack.url}/api/tasks?{query}", f"{USER}:{PASSWORD}")
    assert status == 200
    return list(cast(dict[str, dict[str, Any]], json.loads(body)).values())


def timeline(stack: Stack, run_id: str, expected: int) -> list[dict[str, Any]]:
    """The run's tasks as Flower lists them (by ``kwargs:run=<id>``, in order received), once
    it lists ``expected`` of them, each in a final state."""
    final = {"SUCCESS", "FAILURE", "RETRY", "IGNORED"}

    def listed() -> list[dict[str, Any]]:
        found = flower_tasks(stack, f"kwargs:run={run_id}")
        return found if len(found) == expected and all(t["state"] in final for t in found) else []

    return wait_for(listed, timeout=60, what=f"Flower to list the {expected} tasks of run {run_id}")


def step_of(task: dict[str, Any]) -> tuple[str, str]:
    name = str(task["name"])
    return (
        name.removesuffix(".compensate").split(".")[-1],
        "compensation" if name.endswith(".compensate") else "forward",
    )


def test_a_runs_tasks_are_found_by_its_id_in_order_with_their_true_states(stack: Stack) -> None:
    ok = order.start({"order_id": 1, "amount": 30, "card": SECRET})
    bad = order.start({"order_id": 2, "fail_at": "create_shipment", "card": SECRET})
    flaky = order.start({"order_id": 3, "flaky": {"charge_payment": 1}, "card": SECRET})
    assert order.wait(ok, timeout=60).status is Status.COMPLETED
    assert order.wait(bad, timeout=60).status is Status.COMPENSATED
    assert order.wait(flaky, timeout=60).status is Status.COMPLETED
    # a duplicate delivery of a committed step (the last step's mark outlives the run)
    send(app, "saga.order.create_shipment", ok, call_kwargs(ok, "order", "create_shipment", Direction.FORWARD, 1, 1))

    expected = {
        ok: [
            ("saga.order.reserve_inventory", "SUCCESS"),
            ("saga.order.charge_payment", "SUCCESS"),
            ("saga.order.create_shipment", "SUCCESS"),
            ("saga.order.create_shipment", "IGNORED"),
        ],
        bad: [
            ("saga.order.reserve_inventory", "SUCCESS"),
            ("saga.order.charge_payment", "SUCCESS"),
            ("saga.order.create_shipment", "FAILURE"),
            ("saga.order.charge_payment.compensate", "SUCCESS"),
            ("saga.order.reserve_inventory.compensate", "SUCCESS"),
        ],
        flaky: [
            ("saga.order.reserve_inventory", "SUCCESS"),
            ("saga.order.charge_payment", "RETRY"),
            ("saga.order.charge_payment", "SUCCESS"),
            ("saga.order.create_shipment", "SUCCESS"),
        ],
    }
    for run_id, want in expected.items():
        tasks = timeline(stack, run_id, len(want))
        assert [(t["name"], t["state"]) for t in tasks] == want
        attempts: dict[str, int] = {}
        for i, task in enumerate(tasks):
            step, direction = step_of(task)
            attempts[task["name"]] = attempt = attempts.get(task["name"], 0) + 1
            if task["state"] == "IGNORED":
                attempt = 1  # the duplicate of attempt 1
            kwargs = ast.literal_eval(task["kwargs"])
            assert kwargs == {
                "run": run_id,
                "saga": "order",
                "step": step,
                "direction": direction,
                "attempt": attempt,
                "version": 1,
            }
            assert ast.literal_eval(task["args"]) == (run_id,)
            # one root per run: its first task, whose id is the run id; each task's parent sent it
            assert task["root_id"] == run_id
            if i == 0:
                assert (task["uuid"], task["parent_id"]) == (run_id, None)
            elif task["state"] != "IGNORED":  # the duplicate was sent by this test, not by a task
                assert task["parent_id"] == tasks[i - 1]["uuid"]
        assert request(f"{stack.url}/task/{run_id}", f"{USER}:{PASSWORD}")[0] == 200

    why = {t["state"]: t["exception"] for run_id in expected for t in flower_tasks(stack, f"kwargs:run={run_id}")}
    assert "gave up after 1 attempt(s): PermanentError: create_shipment refused order 2" in why["FAILURE"]
    assert "attempt 1 failed: ServiceUnavailable: charge_payment service unavailable" in why["RETRY"]
    assert "a duplicate delivery: this step is committed already" in why["IGNORED"]
    assert [t["name"] for t in flower_tasks(stack, "state:IGNORED")] == ["saga.order.create_shipment"]

    # secrets stay out of Flower: no payload in any task's arguments
    everything = flower_tasks(stack, "")
    assert len(everything) == sum(len(want) for want in expected.values())
    assert SECRET not in json.dumps(everything)

    # no message delivered twice: one task-received event per task, and nothing left unacked
    metrics = request(f"{stack.url}/metrics", f"{USER}:{PASSWORD}")[1].decode()
    received = re.findall(r'flower_events_total\{task="([^"]+)",type="task-received",[^}]*\} (\d+)\.0', metrics)
    assert sum(int(n) for _, n in received) == len(everything)
    with connect_node(stack.broker) as broker:
        wait_for(lambda: broker.hlen("unacked") == 0, timeout=30, what="every message to be acknowledged")
        assert broker.llen("celery") == 0
    log = stack.worker_log.read_text()
    assert "Traceback" not in log
    assert log.count("raised expected: AttemptFailed") == 1  # the give-up: one INFO line, no traceback

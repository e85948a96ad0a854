"""The deployment files: docker-compose.yml (checked statically: no Docker engine runs in CI),
config/, and Flower really refusing requests without its basic auth."""

from __future__ import annotations

import base64
import importlib
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga import Settings
from saga.cli import cli
from saga.testing import free_port, stop_process_group, wait_for, worker_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def test_the_default_deployment_has_redis_workers_and_flower(compose: dict[str, Any]) -> None:
    assert {"redis", "worker", "flower"} <= set(compose["services"])
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists(), name


def test_every_command_names_something_that_exists(compose: dict[str, Any]) -> None:
    import celery.bin.celery

    for name, service in compose["services"].items():
        if "command" not in service:
            assert "image" in service, f"{name}: neither a command nor an image"
            continue
        cmd = command(service)
        if cmd[0] == "saga":
            assert cmd[1] in cli.commands, f"{name}: saga {cmd[1]}"
        elif cmd[0] == "celery":
            module = cmd[cmd.index("-A") + 1]
            assert hasattr(importlib.import_module(module), "app"), f"{name}: {module} has no Celery app"
            subcommand = next(a for a in cmd[cmd.index("-A") + 2 :] if not a.startswith("-"))
            if subcommand == "flower":
                importlib.import_module("flower")  # the flower package provides `celery flower`
            else:
                assert subcommand in celery.bin.celery.celery.commands, f"{name}: celery {subcommand}"
        elif cmd[0] == "redis-server":
            mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}
            assert (ROOT / mounted[cmd[1]]).is_file(), f"{name}: {cmd[1]} is not mounted from the repo"
        elif "image" in service and cmd[0].startswith("--config.file="):  # the image's own entry point
            mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}
            folder, _, file = cmd[0].removeprefix("--config.file=").rpartition("/")
            assert (ROOT / mounted[folder] / file).is_file(), f"{name}: {cmd[0]} is not mounted from the repo"
        else:
            pytest.fail(f"{name}: unexpected command {cmd}")


def test_redis_keeps_an_append_only_file() -> None:
    conf = (ROOT / "config" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)


def test_flower_takes_basic_auth_from_the_environment_and_no_credentials_are_written_down(
    compose: dict[str, Any],
) -> None:
    flower = " ".join(command(compose["services"]["flower"]))
    assert "--basic-auth=${FLOWER_USER:?" in flower and ":${FLOWER_PASSWORD:?" in flower
    assert all(p.startswith("127.0.0.1:") for p in compose["services"]["flower"]["ports"])
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "config" / "saga.env.example").read_text()
    assert not re.search(r"FLOWER_(USER|PASSWORD)=\S", text)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)  # no user:password@ in any URL


def test_workers_get_the_store_url(compose: dict[str, Any]) -> None:
    assert "SAGA_REDIS_URL" in compose["services"]["worker"]["environment"]


def test_workers_archive_to_postgres_after_the_migration_ran(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "postgresql+psycopg://" in services["worker"]["environment"]["SAGA_ARCHIVE_URL"]
    assert command(services["migrate"]) == ["saga", "db", "upgrade"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "${POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_the_example_env_file_lists_only_known_settings() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (ROOT / "config" / "saga.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    saga_vars = {k: v for k, v in pairs.items() if k.startswith("SAGA_")}
    settings = Settings.from_env(saga_vars)  # raises on an unknown name or a bad value
    assert settings.broker_url == settings.redis_url
    assert set(saga_vars) == {"SAGA_" + f.upper() for f in Settings.model_fields}


def test_flower_refuses_requests_without_its_credentials(settings: Settings) -> None:
    port = free_port()
    env = worker_env(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=ops:s3cret",
        ],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/workers"

    def status(auth: str | None) -> int:
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            return int(urllib.request.urlopen(request, timeout=2).status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    try:
        assert wait_for(lambda: status(None), timeout=30, what="Flower to answer") == 401
        assert status("ops:wrong") == 401
        assert status("ops:s3cret") == 200
    finally:
        stop_process_group(proc)


def test_metrics_prometheus_and_grafana_take_credentials_from_the_environment_and_stay_local(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    worker = services["worker"]["environment"]
    assert worker["SAGA_METRICS_USER"] and worker["SAGA_METRICS_PASSWORD_FILE"] == "/run/secrets/metrics_password"
    assert compose["secrets"]["metrics_password"] == {"environment": "METRICS_PASSWORD"}
    assert "metrics_password" in services["prometheus"]["secrets"]
    assert "${GRAFANA_PASSWORD:?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert "ports" not in services["worker"]  # metrics reach Prometheus on the compose network only

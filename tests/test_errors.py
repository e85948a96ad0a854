"""The error tree says what happens: every exception ``saga`` exports is met by a user-level
action for the reason its docstring gives, and the ``saga`` command tells a refusal (exit 6)
apart from an unexpected error (exit 5).

The sagas here run on the in-memory tier (``memory://``: steps inline, no worker), on a registry
of this module's own, so the tests are fast and touch nothing the rest of the suite uses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import saga
from saga import (
    ActionRefused,
    RedisStore,
    Saga,
    SagaDefinitionError,
    SagaError,
    SagaState,
    Settings,
    Status,
    StepContext,
    find_runs,
)
from saga.cli import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE, cli, exit_code_for
from saga.control import runs as control
from saga.core import decide
from saga.registry import Registry
from saga.testing import RedisServer, configured

#: This module, as ``--app`` imports it: the CLI finds its sagas here.
APP_MODULE = __name__
MEMORY = "memory://errors"

registry = Registry()
app = registry.create_app("errors")

shop = Saga("errors_shop", app=app, registry=registry)


@shop.step()
def reserve(payload: dict[str, Any], ctx: StepContext) -> Any:
    if payload.get("fail") == "permanent":
        raise saga.PermanentError("out of stock for good")
    if payload.get("fail") == "rejected":
        raise saga.Rejected("insufficient funds")
    if payload.get("fail") == "output":
        return ["not", "an", "object"]
    return {"reserved": True}


@reserve.compensate
def release(payload: dict[str, Any], ctx: StepContext) -> None:
    return None


@shop.step()
def charge(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"charged": True}


fanout = Saga("errors_fanout", app=app, registry=registry)


@fanout.step(group="quotes")
def flight(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"price": 100}


@fanout.step(group="quotes")
def hotel(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"price": 80}  # the same key as flight: members must write disjoint keys


@pytest.fixture
def memory() -> Iterator[Settings]:
    """This module's registry on the in-memory tier (a server of its own name)."""
    with configured(registry, Settings(redis_url=MEMORY, metrics_port=0), app) as settings:
        yield settings


def unfinished(on: Saga) -> str:
    """A run written to the store whose first step was never sent: it stays pending."""
    start = decide.decide_start(str(uuid.uuid4()), on.name, {"n": 1})
    assert on.store.create(on.shape, start, None, check_at=time.time() + 300) == "created"
    return start.state.id


def archived_registry(url: str) -> Registry:
    """A registry of its own with an archive at ``url``."""
    return Registry().configure(Settings(redis_url=f"memory://errors-{uuid.uuid4().hex[:8]}", archive_url=url))


# --- raised to the caller: (the action, what the message says) -----------------------------------


def _definition(tmp_path: Path) -> None:
    Saga("not a name!", app=app, registry=registry)  # a saga declared wrongly


def _settings(tmp_path: Path) -> None:
    Settings.from_env({"SAGA_LEASE_SECONDS": "-1"})  # a SAGA_* variable that cannot be used


def _payload(tmp_path: Path) -> None:
    shop.start({"amount": float("nan")})  # start() with a payload breaking the rules


def _key(tmp_path: Path) -> None:
    key = f"order-{uuid.uuid4()}"
    shop.start({"n": 1}, key=key)
    shop.start({"n": 2}, key=key)  # the same key, another payload


def _run(tmp_path: Path) -> None:
    shop.get("no-such-run")


def _entry(tmp_path: Path) -> None:
    control.drop_dead_letter("no-such.1", reason="handled by hand", registry=registry)


def _store(tmp_path: Path) -> None:
    RedisStore("redis://127.0.0.1:1/0", retries=0).reads.get("x")  # a Redis that does not answer


def _store_full(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        store = RedisStore(server.url, retries=0)
        full = Saga("errors_full", app=app, registry=Registry(), store=store)

        @full.step()
        def only(payload: dict[str, Any], ctx: StepContext) -> None:
            return None

        store.keyspace.client.config_set("maxmemory-policy", "noeviction")
        store.keyspace.client.config_set("maxmemory", 1)
        full.start({"n": 1})  # Redis at maxmemory refuses the write
    finally:
        server.close()


def _archive_unavailable(tmp_path: Path) -> None:
    find_runs(registry=archived_registry(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"))


def _archive_schema(tmp_path: Path) -> None:
    find_runs(registry=archived_registry(f"sqlite:///{tmp_path / 'fresh.db'}"))  # never upgraded


def _timeout(tmp_path: Path) -> None:
    shop.wait(unfinished(shop), timeout=0.2)  # a run that does not end in time


def _refused(tmp_path: Path) -> None:
    control.resume(shop.start({"n": 1}), registry=registry)  # resume of a completed run


def _format(tmp_path: Path) -> None:
    run_id = shop.start({"n": 1})
    shop.store.keyspace.client.hset(shop.store.keyspace.keys(run_id).meta, "format", "99")  # as a newer saga writes it
    shop.get(run_id)


def _root(tmp_path: Path) -> None:
    find_runs(status="bogus", registry=registry)  # a plain SagaError: the root itself


RAISED: dict[str, tuple[Callable[[Path], None], str]] = {
    "SagaDefinitionError": (_definition, "must be letters, digits"),
    "SettingsError": (_settings, "SAGA_LEASE_SECONDS"),
    "InvalidPayload": (_payload, "not JSON-serializable"),
    "KeyConflict": (_key, "another payload"),
    "RunNotFound": (_run, "no saga run with id 'no-such-run'"),
    "EntryNotFound": (_entry, "no dead-letter entry with id 'no-such.1'"),
    "StoreUnavailable": (_store, "cannot reach Redis"),
    "StoreFull": (_store_full, "maxmemory"),
    "ArchiveUnavailable": (_archive_unavailable, "SAGA_ARCHIVE_URL"),
    "ArchiveSchemaMismatch": (_archive_schema, "saga db upgrade"),
    "SagaTimeout": (_timeout, "still pending"),
    "ActionRefused": (_refused, "only an unfinished run can be resumed"),
    "StorageFormatTooNew": (_format, "upgrade saga"),
    "SagaError": (_root, "unknown status 'bogus'"),
}

#: Raised by step code (or by the library in the worker, for what a step returned): the run ends
#: with an error of that type. (the saga, its payload, the status the run ends with)
RECORDED: dict[str, tuple[Saga, dict[str, Any], Status]] = {
    "PermanentError": (shop, {"fail": "permanent"}, Status.COMPENSATED),
    "Rejected": (shop, {"fail": "rejected"}, Status.COMPENSATED),
    "InvalidOutput": (shop, {"fail": "output"}, Status.COMPENSATED),
    "OutputConflict": (fanout, {}, Status.COMPENSATED),
}


def exported_errors() -> set[str]:
    return {
        name
        for name in saga.__all__
        if isinstance(getattr(saga, name), type) and issubclass(getattr(saga, name), BaseException)
    }


def test_every_exported_exception_has_a_user_level_action_here() -> None:
    assert exported_errors() == set(RAISED) | set(RECORDED)
    assert all(issubclass(getattr(saga, name), SagaError) for name in exported_errors())


def test_errors_nothing_raises_are_not_exported() -> None:
    for gone in ("DefinitionMismatch", "DeadlineExceeded", "CheckpointCorrupted", "BrokerUnavailable"):
        assert gone not in saga.__all__ and not hasattr(saga, gone)


@pytest.mark.usefixtures("memory")
@pytest.mark.parametrize("name", sorted(RAISED))
def test_a_user_level_action_raises_it(name: str, tmp_path: Path) -> None:
    action, says = RAISED[name]
    with pytest.raises(getattr(saga, name)) as raised:
        action(tmp_path)
    if name == "SagaError":
        assert type(raised.value) is SagaError
    message = str(raised.value)
    assert says in message and "\n" not in message


@pytest.mark.usefixtures("memory")
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_step_code_raising_it_ends_the_run_with_that_error(name: str) -> None:
    on, payload, status = RECORDED[name]
    state = on.get(on.start(payload))
    assert state.status is status
    assert state.error is not None and state.error.type == name and state.error.attempts == 1
    dead = [d for d in saga.dead_letters(registry) if d["run_id"] == state.id]
    assert [d["error_type"] for d in dead] == ([] if name == "Rejected" else [name])


# --- the command line: refused (6) or unexpected (5) ---------------------------------------------


def invoke(*args: str) -> Result:
    """Run the CLI in this process on this module's registry (its settings from the environment)."""
    return CliRunner(env=registry.settings.to_env()).invoke(cli, ["--app", APP_MODULE, *args], obj=registry)


def one_line_error(out: Result, code: int) -> str:
    assert out.exit_code == code, (out.exit_code, out.stdout, out.stderr)
    [line] = out.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in out.stderr
    return line


@pytest.mark.usefixtures("memory")
def test_a_refused_action_exits_6_with_one_line() -> None:
    done = shop.start({"n": 1})
    assert shop.get(done).status is Status.COMPLETED
    # resume and cancel of a completed run are refused: the run is as it was
    line = one_line_error(invoke("resume", done), EXIT_REFUSED)
    assert f"run {done} is completed; only an unfinished run can be resumed" in line
    line = one_line_error(invoke("cancel", done), EXIT_REFUSED)
    assert "only a pending or running run can be cancelled" in line
    assert shop.get(done).status is Status.COMPLETED
    # and a dead-letter drop without a reason too, while an unknown entry is not found
    failed = shop.start({"fail": "permanent"})
    [entry] = [d for d in saga.dead_letters(registry) if d["run_id"] == failed]
    assert "a reason is required" in one_line_error(invoke("dlq", "drop", entry["id"], "--reason", " "), EXIT_REFUSED)
    one_line_error(invoke("dlq", "drop", "no-such.1", "--reason", "x"), EXIT_NOT_FOUND)
    # while an unfinished run is resumed
    waiting = unfinished(shop)
    assert invoke("resume", waiting).exit_code == EXIT_OK
    assert shop.get(waiting).status is Status.COMPLETED


@pytest.mark.usefixtures("memory")
def test_an_unexpected_exception_exits_5_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> SagaState:
        raise KeyError("checkpoints")

    monkeypatch.setattr(control, "resume", broken)
    line = one_line_error(invoke("resume", unfinished(shop)), EXIT_ERROR)
    assert line == (
        "error: unexpected KeyError: 'checkpoints' (a bug: rerun with --debug to see the traceback, and report it)"
    )


def test_every_library_error_but_not_found_and_unavailable_is_a_refusal() -> None:
    not_found, unavailable = {"RunNotFound", "EntryNotFound"}, {"StoreUnavailable", "StoreFull", "ArchiveUnavailable"}
    for name in exported_errors():
        error = getattr(saga, name)
        expected = EXIT_NOT_FOUND if name in not_found else EXIT_UNAVAILABLE if name in unavailable else EXIT_REFUSED
        assert exit_code_for(error.__new__(error)) == expected, name  # (__new__: whatever its arguments)
    assert exit_code_for(ActionRefused("finished")) == EXIT_REFUSED == 6
    assert exit_code_for(SagaDefinitionError("bad")) == EXIT_REFUSED
    assert exit_code_for(RuntimeError("boom")) == exit_code_for(KeyError("x")) == EXIT_ERROR == 5

"""The pytest plugin as a user meets it: a user's saga module and test file, written into a fresh
folder and run by ``pytest`` in a process of its own, with the plugin loaded from its entry point
(``pytest11: saga``) and nothing of this suite's set-up.

The user's files below are the README's "Testing your sagas" example.
"""

from __future__ import annotations

from typing import Any

import pytest

# --- the user's files --------------------------------------------------------------------------

SHOP = '''
"""shop.py: the user's sagas. Settings are read when the plugin's fixtures apply them, not here."""
import time

from saga import PermanentError, Saga, create_app

app = create_app("shop")
checkout = Saga("plugin_checkout", app=app)


@checkout.step
def reserve(payload, ctx):
    return {"reserved": payload["sku"]}


@reserve.compensate
def release(payload, ctx):
    pass


@checkout.step(max_retries=2, retry_backoff=0.01)
def charge(payload, ctx):
    if payload.get("card") == "declined":
        raise PermanentError("card declined")
    if payload.get("slow") and ctx.attempt == 1:
        time.sleep(60)  # the crash test kills the worker meanwhile
    return {"charged": payload["amount"], "attempt": ctx.attempt}
'''

TEST_SHOP = '''
"""test_shop.py: runs on a private redis-server with an in-thread worker, or with
--saga-store=memory in memory, steps inline, no worker at all."""
from saga import Status

from shop import app, checkout


def test_checkout_charges(saga_worker, run_saga):
    saga_worker(app)  # an in-thread worker (None on the in-memory tier)
    state = run_saga(checkout, {"sku": "book", "amount": 12})
    assert state.status is Status.COMPLETED
    assert state.payload == {"sku": "book", "amount": 12, "reserved": "book", "charged": 12, "attempt": 1}


def test_a_declined_card_releases_the_stock(saga_worker, run_saga):
    saga_worker(app)
    state = run_saga(checkout, {"sku": "book", "amount": 12, "card": "declined"})
    assert state.status is Status.COMPENSATED
    assert [c.name for c in state.checkpoints][-1] == "reserve"
'''

TEST_CRASH = '''
"""test_crash.py: a worker process killed in the middle of a step; another start of it finishes
the run (the watchdog resumes it once the lease lapses)."""
from saga import Status
from saga.testing import wait_for

from shop import checkout


def test_a_killed_worker_loses_no_run(saga_worker_process, saga_registry):
    worker = saga_worker_process("shop")
    run_id = checkout.start({"sku": "book", "amount": 12, "slow": True})
    began = lambda: any(e["type"] == "step.started" and e["name"] == "charge" for e in checkout.events(run_id))
    wait_for(began, timeout=60, what="the charge to begin")
    worker.kill()      # SIGKILL: the attempt dies with its lease held
    worker.restart()
    state = checkout.wait(run_id, timeout=60)
    assert state.status is Status.COMPLETED and state.payload["attempt"] == 2
'''

TEST_INLINE = '''
"""test_inline.py: on the in-memory tier a run has ended when start() returns."""
from saga import Status

from shop import app, checkout


def test_start_runs_every_step_inline(saga_registry, request):
    assert "saga_redis" not in request.fixturenames  # no server was started
    assert app.conf.task_always_eager
    run_id = checkout.start({"sku": "pen", "amount": 3})
    assert checkout.get(run_id).status is Status.COMPLETED
'''

TEST_DOCKER = """
import pytest


@pytest.mark.docker
def test_needs_docker():
    raise AssertionError("ran without a Docker engine")
"""


@pytest.fixture
def shop(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(shop=SHOP)
    return pytester


def test_a_users_saga_runs_on_a_private_redis_with_an_in_thread_worker(shop: pytest.Pytester) -> None:
    shop.makepyfile(test_shop=TEST_SHOP)
    result = shop.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_same_tests_run_in_memory_with_no_server_and_no_worker(shop: pytest.Pytester) -> None:
    shop.makepyfile(test_shop=TEST_SHOP, test_inline=TEST_INLINE)
    shop.makeini("[pytest]\nsaga_store = memory\n")  # or --saga-store=memory
    result = shop.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_a_killable_worker_process_crashes_and_restarts(shop: pytest.Pytester) -> None:
    shop.makepyfile(test_crash=TEST_CRASH)
    result = shop.runpytest_subprocess("-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=1)


def test_a_crash_test_is_skipped_on_the_in_memory_tier(shop: pytest.Pytester) -> None:
    shop.makepyfile(test_crash=TEST_CRASH)
    result = shop.runpytest_subprocess("-p", "no:cacheprovider", "--saga-store=memory", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*worker processes need saga_store=redis*"])


def test_the_docker_marker_skips_when_no_engine_answers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # nothing listens there
    pytester.makepyfile(test_docker=TEST_DOCKER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no Docker engine answers*the suite needs no Docker*"])


@pytest.mark.docker
def test_pytest_celerys_docker_setup_answers_a_ping(celery_setup: Any) -> None:
    """The optional Docker smoke test, on pytest-celery's container fixtures: skipped (by the
    plugin's ``docker`` marker) where no Docker engine answers."""
    assert celery_setup.ready(ping=True)

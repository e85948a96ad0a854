"""Task messages pushed by the commit scripts (the broker is the store's Redis): byte for byte what
Celery and kombu would push themselves, pushed exactly when the commit applies."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from celery import Celery
from celery._state import _task_stack
from celery.utils.saferepr import saferepr

from saga import RedisStore, Settings
from saga.core import Direction, Shape, decide
from saga.store import Client, CommitOptions, Message, connect_node
from saga.testing import RedisServer
from saga.transport import call_kwargs, captured, create_app, from_template, kwargs_repr, redis_message, send

SHAPE = Shape(("a", "b"), (False, False))
#: What differs between two messages of the same task: a new task id, a new delivery tag.
FRESH = {("headers", "id"), ("properties", "correlation_id"), ("properties", "delivery_tag")}


def kw(run_id: str, attempt: int = 1, version: int = 1) -> dict[str, Any]:
    return call_kwargs(run_id, "s", "a", Direction.FORWARD, attempt, version)


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def app(broker: RedisServer) -> Celery:
    app = create_app(f"m{uuid.uuid4().hex[:6]}", Settings(redis_url=broker.url))

    def a(self: Any, run_id: str, **kwargs: Any) -> None:
        return None

    app.task(name="saga.s.a", bind=True, ignore_result=True, acks_late=True, shared=False)(a)
    return app


def published(broker: RedisServer, send_it: Any, queue: str = "celery") -> dict[str, Any]:
    """The message a real publish (kombu's Redis transport) pushes."""
    with connect_node(broker.url) as client:
        client.delete(queue)
        send_it()
        [raw] = cast(list[str], client.lrange(queue, 0, -1))
        client.delete(queue)
    message: dict[str, Any] = json.loads(raw)
    return message


def differences(a: dict[str, Any], b: dict[str, Any]) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out |= {(key, *rest) for rest in differences(x, y)}
        elif x != y:
            out.add((key,))
    return out


@pytest.mark.parametrize("version,queue", [(1, ""), (3, "saga-steps")])
def test_a_built_message_is_the_one_celery_would_publish(
    app: Celery, broker: RedisServer, version: int, queue: str
) -> None:
    kwargs = kw("run-1", version=version)
    real = published(broker, lambda: send(app, "saga.s.a", "run-1", kwargs, queue=queue), queue or "celery")
    first = redis_message(app, "saga.s.a", "run-1", kwargs, queue=queue)  # built by Celery
    again = redis_message(app, "saga.s.a", "run-1", kwargs, queue=queue)  # from its template
    assert first is not None and again is not None
    assert first.key == again.key == (queue or "celery")
    for built in (first, again):
        message = json.loads(built.body)
        assert differences(real, message) == FRESH
        assert message["headers"]["id"] == message["properties"]["correlation_id"]
        assert (message["headers"]["root_id"], message["headers"]["parent_id"]) == ("run-1", None)


def test_every_message_names_its_run_saga_step_direction_and_attempt_and_never_the_payload(
    app: Celery, broker: RedisServer
) -> None:
    kwargs = call_kwargs("run-7", "s", "a", Direction.COMPENSATION, 3, 2)
    real = published(broker, lambda: send(app, "saga.s.a", "run-7", kwargs))
    built = redis_message(app, "saga.s.a", "run-7", kwargs)
    assert built is not None
    for message in (real, json.loads(built.body)):
        headers = message["headers"]
        assert headers["kwargsrepr"] == (
            "{'run': 'run-7', 'saga': 's', 'step': 'a', 'direction': 'compensation', 'attempt': 3, 'version': 2}"
        )
        assert (headers["task"], headers["argsrepr"], headers["root_id"]) == ("saga.s.a", "('run-7',)", "run-7")


@pytest.mark.parametrize(
    "value", ["run-1", "it's", 'say "hi"', "a\\b", "a\nb", "é ü 中", "x" * 2000, 7, True, None, 1.5, ["a"], {"k": "v"}]
)
def test_the_fast_kwargs_repr_is_celerys_saferepr(value: Any) -> None:
    kwargs = {"run": "r", "value": value, "attempt": 1}
    assert kwargs_repr(kwargs, 1024, 3) == saferepr(kwargs, 1024, maxlevels=3)


def test_the_first_message_of_a_run_has_the_run_id_as_its_task_id(app: Celery, broker: RedisServer) -> None:
    redis_message(app, "saga.s.a", "run-0", kw("run-0"))  # the template exists: the next is built from it
    real = published(broker, lambda: send(app, "saga.s.a", "run-2", kw("run-2"), task_id="run-2"))
    built = redis_message(app, "saga.s.a", "run-2", kw("run-2"), task_id="run-2")
    assert built is not None
    message = json.loads(built.body)
    assert differences(real, message) == {("properties", "delivery_tag")}
    assert message["headers"]["id"] == message["headers"]["root_id"] == "run-2"


def test_the_template_sets_the_parent_task_as_celery_does(app: Celery) -> None:
    template = captured(app, "saga.s.a", "run-0", kw("run-0"), "")
    assert template is not None

    # a worker runs a task (what Celery's tracer pushes), which sends the next one
    parent = app.tasks["saga.s.a"]
    parent.push_request(id="parent-id", root_id="run-1", called_directly=False)
    _task_stack.push(parent)
    try:
        message = from_template(app, template[1], "run-1", kw("run-1"))
        real = captured(app, "saga.s.a", "run-1", kw("run-1"), "")
    finally:
        _task_stack.pop()
        parent.pop_request()
    assert real is not None
    assert (message["headers"]["parent_id"], message["headers"]["root_id"]) == ("parent-id", "run-1")
    assert differences(real[1], message) == FRESH


def test_an_eager_app_or_sent_events_are_left_to_a_real_publish(app: Celery) -> None:
    app.conf.task_send_sent_event = True
    assert redis_message(app, "saga.s.a", "run-1", kw("run-1")) is None
    app.conf.task_send_sent_event, app.conf.task_always_eager = False, True
    assert redis_message(app, "saga.s.a", "run-1", kw("run-1")) is None


def test_a_commit_pushes_its_message_only_when_it_applies(broker: RedisServer) -> None:
    store = RedisStore(broker.url, prefix=f"t{uuid.uuid4().hex[:6]}")
    start = decide.decide_start(str(uuid.uuid4()), "s", {"n": 1})
    queue = f"q{uuid.uuid4().hex[:6]}"
    assert store.create(SHAPE, start, None, check_at=time.time() + 30, message=Message(queue, "first")) == "created"
    moved = decide.decide_step_succeeded(start.state, SHAPE, 0, None)
    refused = store.commit(moved.state, moved, check_at=time.time() + 30, message=Message(queue, "stale"))
    applied = store.commit(start.state, moved, CommitOptions(), check_at=time.time() + 30, message=Message(queue, "b"))
    client: Client = connect_node(broker.url)
    assert (refused.applied, applied.applied) == (False, True)
    assert client.lrange(queue, 0, -1) == ["b", "first"]  # LPUSH: the consumer pops from the right
    assert store.pushes_messages(broker.url) and not store.pushes_messages(broker.url.rsplit("/", 1)[0] + "/1")

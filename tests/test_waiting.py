"""Push-based waiting: the commit that ends a run tells its bucket's channel (PUBLISH; SPUBLISH
on a cluster), and ``wait()`` is woken by that notification, not by polling. Real Redis (or the
suite's cluster with TEST_STORE=cluster), the suite's in-process worker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from saga import RedisStore, SagaTimeout, Status
from saga.registry import default_registry
from saga.store import FALLBACK_POLL, Waiters, connect, connect_node, node_url, subscriptions
from saga.testing import RedisServer, wait_for
from tests.sagas import client, trip

pytestmark = pytest.mark.usefixtures("worker")


class Listener:
    """A raw subscriber of every bucket's channel, as a user's own process could be."""

    def __init__(self, store: RedisStore) -> None:
        self.heard: list[str] = []
        self._plan = subscriptions(
            store.keyspace.url, store.keyspace.client, [b.done for b in store.keyspace.every_bucket]
        )
        self._pubsubs: list[Any] = []
        self._nodes: list[Any] = []
        for sub in self._plan:
            node: Any = connect_node(sub.url) if sub.sharded else connect(sub.url, retries=0)
            pubsub = node.pubsub()
            for channel in sub.channels:  # a sharded channel per SSUBSCRIBE: one slot each
                (pubsub.ssubscribe if sub.sharded else pubsub.subscribe)(channel)
                assert pubsub.get_message(timeout=10)["type"] in ("subscribe", "ssubscribe")
            self._pubsubs.append(pubsub)
            self._nodes.append(node)  # a client that is collected closes its pub/sub connection

    def drain(self) -> list[str]:
        for pubsub in self._pubsubs:
            while (message := pubsub.get_message(timeout=0.05)) is not None:
                self.heard.append(message["data"])
        return self.heard

    def close(self) -> None:
        for pubsub in self._pubsubs:
            pubsub.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    heard = Listener(default_registry().store)
    yield heard
    heard.close()


def test_the_commit_that_ends_a_run_notifies_its_bucket_channel_once(listener: Listener) -> None:
    done = trip.start({"n": 1})
    undone = trip.start({"fail_at": "car"})
    assert trip.wait(done).status is Status.COMPLETED
    assert trip.wait(undone).status is Status.COMPENSATED
    wait_for(lambda: {done, undone} <= set(listener.drain()), what="both notifications")
    # one notification per run, whatever number of commits it took (a run has 5 to 9)
    assert listener.drain().count(done) == 1 and listener.drain().count(undone) == 1


def test_wait_is_woken_by_the_notification_not_by_polling() -> None:
    gate = f"gate:{uuid.uuid4().hex}"
    run_id = trip.start({"block": {"hotel": gate}})
    store = default_registry().store
    waiters = store.waiters
    result: list[Any] = []
    waiting = threading.Thread(target=lambda: result.append(trip.wait(run_id, timeout=120)))
    waiting.start()
    wait_for(lambda: waiters.live, what="the waiters' subscription")
    # while it waits, the waiter reads its run only every FALLBACK_POLL seconds: a run that ends
    # now is seen well before that only if the notification woke it
    assert FALLBACK_POLL >= 30
    client().rpush(gate, "go")
    waiting.join(timeout=FALLBACK_POLL / 2)
    assert not waiting.is_alive(), "wait() was not woken by the run's notification"
    assert result[0].status is Status.COMPLETED and result[0] == trip.get(run_id)


def test_wait_gives_up_with_a_timeout_error_on_a_run_that_does_not_end() -> None:
    gate = f"gate:{uuid.uuid4().hex}"
    run_id = trip.start({"block": {"flight": gate}})
    with pytest.raises(SagaTimeout, match=f"run {run_id} still (running|pending) at step 0"):
        trip.wait(run_id, timeout=0.3)
    client().rpush(gate, "go")
    assert trip.wait(run_id).status is Status.COMPLETED


def test_waiters_reconnect_after_a_redis_restart_and_wake_on_the_next_notification() -> None:
    with RedisServer(appendonly=True) as server:
        store = RedisStore(server.url, prefix="waits", retries=2, buckets=4)
        waiters = Waiters(
            subscriptions(store.keyspace.url, store.keyspace.client, [b.done for b in store.keyspace.every_bucket])
        )
        try:
            with waiters.watching("run-1") as woken:
                assert waiters.live
                server.restart(kill=True)
                wait_for(woken.is_set, what="waiters woken when their subscription dropped")
                wait_for(lambda: waiters.live, timeout=30, what="the subscription back")
                woken.clear()
                connect(server.url, retries=2).publish(store.keyspace.bucket_keys("run-1").done, "run-1")
                wait_for(woken.is_set, what="the notification after the restart")
        finally:
            waiters.close()


def test_a_node_url_keeps_credentials_and_tls() -> None:
    assert node_url("rediss+cluster://u:p@a:1/0?ssl_cert_reqs=none", "b", 2) == "rediss://u:p@b:2?ssl_cert_reqs=none"
    assert node_url("redis://a:1/3", "b", 2) == "redis://b:2"

"""saga.store: its face (the names other packages use)."""

from . import memory
from .connection import Client, answers, connect, connect_node
from .indexes import DeadLetterPage, Indexes
from .keyspace import Keyspace
from .notify import FALLBACK_POLL, Waiters, node_url, subscriptions
from .schema import (
    PLAIN_COMMIT,
    Begin,
    BeginOutcome,
    BucketKeys,
    CommitOptions,
    CommitReason,
    CommitResult,
    CreateOutcome,
    Message,
    ParkOutcome,
    bucket_of,
    lane_id,
    run_keys,
)
from .writes import RedisStore

__all__ = [
    "Begin",
    "BeginOutcome",
    "BucketKeys",
    "Client",
    "CommitOptions",
    "CommitReason",
    "CommitResult",
    "CreateOutcome",
    "DeadLetterPage",
    "FALLBACK_POLL",
    "Indexes",
    "Keyspace",
    "Message",
    "PLAIN_COMMIT",
    "ParkOutcome",
    "RedisStore",
    "Waiters",
    "answers",
    "bucket_of",
    "connect",
    "connect_node",
    "lane_id",
    "memory",
    "node_url",
    "run_keys",
    "subscriptions",
]

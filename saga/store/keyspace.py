"""The store's keyspace: its connection, opened on first use, its scripts and its key names.

One :class:`Keyspace` per store, shared by its parts: the operations of one run
(:class:`~saga.store.RedisStore`), the operations over many runs (:class:`~saga.store.Indexes`)
and the asyncio side (:mod:`saga.store.aio`). Nothing here reads or writes a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from redis.cluster import RedisCluster
from redis.commands.core import Script

from ..errors import SettingsError
from ..settings import redact
from .connection import Client, connect, guard, load_script
from .schema import BucketKeys, GlobalKeys, RunKeys, bucket_of, run_keys

#: The scripts in ``saga/store/lua/``.
SCRIPTS = ("create", "begin", "commit", "record", "renew", "note", "park", "archived")


class Keyspace:
    """A connection to one Redis or Redis Cluster, laid out in ``buckets`` buckets under
    ``prefix``: the client, the scripts and every key's name.

    The connection opens on first use: it detects a cluster, and checks that the store was laid
    out with this many buckets (recording it if the store is new) — a mismatch raises
    :class:`SettingsError`, because runs are found by their bucket.
    """

    def __init__(self, url: str, *, prefix: str, retries: int, buckets: int) -> None:
        if not 1 <= buckets <= 16384:
            raise SettingsError(f"SAGA_BUCKETS must be between 1 and 16384, got {buckets}")
        self.url = url
        self.prefix = prefix
        self.retries = retries
        self.buckets = buckets
        self.global_keys = GlobalKeys.under(prefix)
        self._bucket_keys = [BucketKeys.of(prefix, b) for b in range(buckets)]
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}

    @property
    def client(self) -> Client:
        """The Redis (or Redis Cluster) client, connected and checked on first use."""
        if self._client is None:
            with self.guarded():
                client = connect(self.url, self.retries)
                self._check_layout(client)
                self._scripts = {name: load_script(client, name) for name in SCRIPTS}
                self._client = client
        return self._client

    def _check_layout(self, client: Client) -> None:
        key = self.global_keys.config
        pipe = client.pipeline(transaction=False)
        pipe.hsetnx(key, "buckets", self.buckets)
        pipe.hget(key, "buckets")
        stored = int(pipe.execute()[1])
        if stored != self.buckets:
            raise SettingsError(
                f"SAGA_BUCKETS is {self.buckets} but the store at {redact(self.url)} (prefix {self.prefix!r}) "
                f"was laid out with {stored}; set SAGA_BUCKETS={stored} on every worker and client"
            )

    @property
    def on_cluster(self) -> bool:
        """Whether the store is a Redis Cluster."""
        return isinstance(self.client, RedisCluster)

    def script(self, name: str) -> Script:
        """A script of ``saga/store/lua/``, registered on the client."""
        self.client  # noqa: B018 - connects and loads the scripts on first use
        return self._scripts[name]

    def guarded(self) -> AbstractContextManager[None]:
        """A context in which this store's connection errors become :class:`StoreUnavailable`
        (for the other Redis adapters that share its client)."""
        return guard(self.url)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with self.guarded():
            self.client.ping()

    def bucket(self, run_id: str) -> int:
        """The bucket run ``run_id`` lives in."""
        return bucket_of(run_id, self.buckets)

    def keys(self, run_id: str) -> RunKeys:
        """The keys of one run."""
        return run_keys(self.prefix, self.bucket(run_id), run_id)

    def bucket_keys(self, run_id: str) -> BucketKeys:
        """The index keys of the bucket run ``run_id`` lives in."""
        return self._bucket_keys[self.bucket(run_id)]

    @property
    def every_bucket(self) -> Sequence[BucketKeys]:
        """The index keys of every bucket, bucket 0 first (``every_bucket[k]`` is bucket ``k``)."""
        return self._bucket_keys

"""The registry: the one object that holds a process's mutable state.

It owns the settings (read from ``SAGA_*`` variables on first use unless configured), the sagas
declared in the process (by name and version; a second declaration of both raises), the Celery
task of each step name (one per app, shared by every version), one store per Redis URL and key
prefix, one archive per URL, the lease heartbeat, and which apps' workers are hooked. What a
worker does with that state (routing each message to its run's version, the watchdog, the
worker hooks) is :mod:`saga.worker`. Sagas bind to the default registry unless given another
one; tests and the CLI configure a registry explicitly (:meth:`Registry.configure`,
:func:`use_registry`) instead of editing the environment.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from . import archive as archive_tier
from .core import Shape
from .engine import Heartbeat, Runtime, SagaDefinition, StepDefinition, StoredDefinition
from .errors import SagaDefinitionError
from .settings import Settings
from .store import RedisStore, memory
from .tiers import Tiers
from .transport import tasks

if TYPE_CHECKING:
    from .archive import Archive

#: Connection retries of a store: an unreachable Redis is retried with backoff for a few seconds.
STORE_RETRIES = 8


class RegisteredSaga(SagaDefinition, Protocol):
    """What the registry holds of a declared saga."""

    @property
    def app(self) -> Any:
        """The Celery app the saga's tasks are registered on."""
        ...

    def runtime(self) -> Runtime:
        """The saga bound to its store, settings and heartbeat."""
        ...

    def find_step(self, name: str) -> StepDefinition | None:
        """The step called ``name``, if this definition has one."""
        ...


class Registry:
    """A process's sagas, settings, stores and worker hooks.

    Guarantees: one saga per name and version (declaring both twice raises
    :class:`SagaDefinitionError`); one Celery task per step name and app, whatever the versions;
    one store (one connection pool) per Redis URL and key prefix; each Celery app's workers are
    hooked once, however many sagas it carries.
    """

    def __init__(self, settings: Settings | None = None, *, store_retries: int = STORE_RETRIES) -> None:
        self._settings = settings
        self._store_retries = store_retries
        self._sagas: dict[str, dict[int, RegisteredSaga]] = {}
        self._tasks: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._stores: dict[tuple[str, str, int, int, bool], RedisStore] = {}
        self._archives: dict[str, Archive] = {}
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.RLock()
        self.heartbeat = Heartbeat()
        #: Grows with every :meth:`configure`; sagas rebuild their runtime when it changes.
        self.generation = 0

    # --- settings and stores ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings of this registry: as configured, else ``SAGA_*`` variables read once."""
        with self._lock:
            if self._settings is None:
                self._settings = Settings.from_env()
            return self._settings

    def configure(self, settings: Settings | None = None, *, store_retries: int | None = None) -> Registry:
        """Use ``settings`` from now on (None: read ``SAGA_*`` variables again on next use);
        sagas without settings of their own follow. Returns the registry."""
        with self._lock:
            self._settings = settings
            if store_retries is not None:
                self._store_retries = store_retries
            self.generation += 1
        return self

    def store_for(self, settings: Settings) -> RedisStore:
        """The store ``settings`` name, shared by every saga that uses it."""
        feed = bool(settings.archive_url)
        key = (settings.redis_url, settings.key_prefix, self._store_retries, settings.buckets, feed)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = RedisStore(
                    settings.redis_url,
                    prefix=settings.key_prefix,
                    retries=self._store_retries,
                    buckets=settings.buckets,
                    feed=feed,
                )
                self._stores[key] = store
            return store

    def archive_for(self, settings: Settings) -> Archive | None:
        """The SQL archive ``settings`` name (None without ``SAGA_ARCHIVE_URL``), shared by every
        saga that uses it; connected on first use."""
        if not settings.archive_url:
            return None
        with self._lock:
            archive = self._archives.get(settings.archive_url)
            if archive is None:
                archive = self._archives[settings.archive_url] = archive_tier.Archive(settings.archive_url)
            return archive

    def tiers_for(self, settings: Settings) -> Tiers:
        """Reads of runs over the store and archive ``settings`` name (see :class:`Tiers`)."""
        return Tiers(self.store_for(settings), self.archive_for(settings))

    @property
    def archive(self) -> Archive | None:
        """The archive this registry's settings name, if any."""
        return self.archive_for(self.settings)

    @property
    def tiers(self) -> Tiers:
        """Reads that fall through from this registry's store to its archive."""
        return self.tiers_for(self.settings)

    @property
    def store(self) -> RedisStore:
        """The store this registry's settings name: the one every operator action uses."""
        return self.store_for(self.settings)

    # --- sagas -----------------------------------------------------------------------------

    def add(self, saga: RegisteredSaga) -> None:
        """Register a newly declared saga; a name and version already declared in this registry
        raise :class:`SagaDefinitionError`."""
        with self._lock:
            versions = self._sagas.setdefault(saga.name, {})
            if saga.version in versions:
                raise SagaDefinitionError(
                    f"version {saga.version} of saga {saga.name!r} is already declared in this process; give each "
                    "saga its own name, and a changed definition a new version (Saga(..., version=N))"
                )
            versions[saga.version] = saga

    def find(self, name: str, version: int | None = None) -> RegisteredSaga | None:
        """Version ``version`` of saga ``name`` (the highest declared when None), or None."""
        versions = self._sagas.get(name, {})
        if not versions:
            return None
        return versions.get(max(versions) if version is None else version)

    def get(self, name: str, version: int | None = None) -> RegisteredSaga:
        """Like :meth:`find`, but :class:`SagaDefinitionError` when this process has none."""
        found = self.find(name, version)
        if found is not None:
            return found
        if name in self._sagas:
            have = ", ".join(str(v) for v in self.versions(name))
            raise SagaDefinitionError(
                f"version {version} of saga {name!r} is not defined in this process (versions here: {have}); "
                "import the module that defines it (e.g. --app workers)"
            )
        known = ", ".join(sorted(self._sagas)) or "none"
        raise SagaDefinitionError(
            f"saga {name!r} is not defined in this process (known: {known}); "
            "import the module that defines it (e.g. --app workers)"
        )

    def versions(self, name: str) -> list[int]:
        """The versions of saga ``name`` declared here, lowest first."""
        return sorted(self._sagas.get(name, {}))

    def sagas(self) -> list[RegisteredSaga]:
        """Every saga (every version) declared in this registry."""
        return [saga for versions in self._sagas.values() for saga in versions.values()]

    def runtimes(self) -> list[Runtime]:
        """Every saga bound to what it runs with (what the watchdog scans)."""
        return [saga.runtime() for saga in self.sagas()]

    def runtime_for(self, name: str, version: int | None = None) -> Runtime:
        """Version ``version`` (the highest when None) of saga ``name`` bound to this registry's
        store: how operator actions reach it, so one action uses exactly one store."""
        runtime = self.get(name, version).runtime()
        if runtime.store is self.store:
            return runtime
        return Runtime(runtime.definition, self.store, runtime.settings, runtime.heartbeat)

    def compensation_named(self, saga: str, step: str) -> StepDefinition | None:
        """The step called ``step`` with a compensation, from the highest version of ``saga``
        that has one: how a run is unwound by name when its own version is not loaded."""
        for version in reversed(self.versions(saga)):
            found = self._sagas[saga][version].find_step(step)
            if found is not None and found.compensation is not None:
                return found
        return None

    def stored_runtime(self, name: str, version: int, shape: Shape) -> Runtime:
        """A run's recorded definition (``shape``), bound like the highest declared version of
        ``name`` and to this registry's store: what an operator's unwind by name runs under."""
        rt = self.get(name).runtime()
        return Runtime(StoredDefinition(name, version, shape, rt.definition.app), self.store, rt.settings, rt.heartbeat)

    # --- worker state (what saga.worker keeps here) -----------------------------------------

    def tasks_of(self, app: Any) -> dict[str, Any]:
        """The Celery tasks registered on ``app`` so far, by task name (see :func:`saga.worker.task_for`)."""
        with self._lock:
            return self._tasks.setdefault(app, {})

    def first_hook(self, app: Any) -> bool:
        """True the first time it is asked for ``app``: its workers are hooked once (see
        :func:`saga.worker.hook_workers`), however many sagas it carries."""
        with self._lock:
            if app in self._hooked:
                return False
            self._hooked.add(app)
            return True

    def create_app(self, name: str = "saga", **overrides: Any) -> Any:
        """A Celery app configured from this registry's settings (see :func:`celery_config`)."""
        return create_app(name, self.settings, **overrides)


# The default is the one module-level object: a settable slot, as dramatiq's global broker.
_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The registry sagas bind to unless given another one (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def set_default_registry(registry: Registry | None) -> Registry | None:
    """Make ``registry`` the default for sagas declared from now on (None: a fresh one on next
    use); returns the previous default."""
    global _default
    with _default_lock:
        previous, _default = _default, registry
    return previous


@contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """``with use_registry(r):`` sagas declared inside bind to ``r``; the default is restored after."""
    previous = set_default_registry(registry)
    try:
        yield registry
    finally:
        set_default_registry(previous)


def get_settings() -> Settings:
    """The settings of the default registry."""
    return default_registry().settings


def default_store() -> RedisStore:
    """The store named by the default registry's settings."""
    return default_registry().store


def celery_config(settings: Settings | None = None) -> dict[str, Any]:
    """The Celery settings saga tasks rely on: JSON only, late acks, one message prefetched,
    tasks of a lost worker requeued, no result backend needed (``settings``: the default
    registry's when not given); on the in-memory tier, eager mode (``memory.EAGER_CONFIG``)."""
    return tasks.celery_config(s := settings or get_settings()) | memory.tier_config(s.redis_url)


def create_app(name: str = "saga", settings: Settings | None = None, **overrides: Any) -> Any:
    """A Celery app configured by :func:`celery_config`, plus ``overrides``."""
    return tasks.create_app(name, s := settings or get_settings(), **{**memory.tier_config(s.redis_url), **overrides})

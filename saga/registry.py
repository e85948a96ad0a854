"""The registry: the one object that holds a process's mutable state.

It owns the settings (read from ``SAGA_*`` variables on first use unless configured), the sagas
declared in the process (by name and version; a second declaration of both raises), the Celery
task of each step name (one per app, shared by every version), one store per Redis URL and key
prefix, the lease heartbeat, and the hooks that make each Celery app's workers run a watchdog
and serve metrics. Each delivered message is routed here to the version its run started with.
Sagas bind to the default registry unless given another one; tests and the CLI configure a
registry explicitly (:meth:`Registry.configure`, :func:`use_registry`) instead of editing the
environment.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from .archive import Archive, ArchiveFeed, Archiver
from .core import Direction, EventType, Shape, call_problem, decide, policy
from .engine import (
    Heartbeat,
    Runtime,
    SagaDefinition,
    StepDefinition,
    StoredDefinition,
    Watchdog,
    deliver,
    metrics,
    park,
    run_logger,
)
from .errors import RunNotFound, SagaDefinitionError, StoreUnavailable
from .settings import Settings
from .store import RedisStore, memory
from .tiers import Tiers
from .transport import tasks

logger = logging.getLogger(__name__)

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
                archive = self._archives[settings.archive_url] = Archive(settings.archive_url)
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
        """Register a newly declared saga and hook its app's workers; a name and version already
        declared in this registry raise :class:`SagaDefinitionError`."""
        with self._lock:
            versions = self._sagas.setdefault(saga.name, {})
            if saga.version in versions:
                raise SagaDefinitionError(
                    f"version {saga.version} of saga {saga.name!r} is already declared in this process; give each "
                    "saga its own name, and a changed definition a new version (Saga(..., version=N))"
                )
            versions[saga.version] = saga
        self.hook_workers(saga.app)

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

    # --- tasks -----------------------------------------------------------------------------

    def task_for(self, app: Any, saga: str, step: str, direction: Direction) -> Any:
        """The Celery task of step ``step`` of ``saga`` in ``direction`` on ``app``, registered
        on first use; its messages are routed by :meth:`deliver`, whatever the version."""
        name = tasks.task_name(saga, step, direction)
        with self._lock:
            known = self._tasks.setdefault(app, {})
            if name not in known:
                what = "Step" if direction is Direction.FORWARD else "Compensation of step"

                def handle(run_id: str, attempt: int, version: int) -> tasks.Ending:
                    return self.deliver(saga, step, direction, run_id, attempt, version)

                doc = f"{what} {step!r} of saga {saga!r}."
                known[name] = tasks.register_task(app, name, handle, doc, self.reject_message)
            return known[name]

    def reject_message(self, task: str, why: str, run_id: str | None) -> None:
        """Report a malformed message rejected for ``task``: one log line, a count, and a
        ``saga.message_rejected`` event on the run it names, when that run exists."""
        metrics.poison_message(task)
        logger.error("rejected a message for %s, not requeued: %s", task, why)
        if run_id is None:
            return
        try:
            state = self.store.get(run_id)
            event = decide.note_event(state, EventType.SAGA_MESSAGE_REJECTED, task=task, reason=why)
            self.store.note_events(state, [event])
        except (RunNotFound, StoreUnavailable):
            pass  # no such run, or no store now: the log line and the count say it

    def deliver(
        self, saga: str, step: str, direction: Direction, run_id: str, attempt: int, version: int
    ) -> tasks.Ending:
        """Route one delivered message to the definition its run started with (``version``), and
        say how it ended. Without that definition here, a compensation may still run by name for
        an operator's unwind (under the shape the run recorded); any other message parks the run."""
        log = run_logger(logger, str(run_id), saga, step)
        problem = call_problem(run_id, attempt, version)
        if problem:
            log.error("malformed message: %s; dropped to the log", problem)
            return tasks.skipped(f"malformed message: {problem}")
        definition = self.find(saga, version)
        found = definition.find_step(step) if definition is not None else None
        if definition is not None and found is not None:
            return deliver(definition.runtime(), found, direction, run_id, attempt)
        rt = self.get(saga).runtime()
        try:
            state = rt.store.get(run_id)
        except RunNotFound:
            log.error("no such run (expired or never started); message ignored")
            return tasks.skipped("no such run")
        by_name = self.compensation_named(saga, step) if direction is Direction.COMPENSATION else None
        shape = rt.store.shape(run_id) if by_name is not None else None
        if by_name is not None and shape is not None:
            return deliver(self.stored_runtime(saga, version, shape), by_name, direction, run_id, attempt, by_name=True)
        why = policy.missing_reason(saga, version, self.versions(saga))
        if definition is not None:
            stored = rt.store.progress(run_id).fingerprint
            why = policy.drift_reason(saga, version, stored, definition.shape.fingerprint)
        park(rt.store, state, why, log)
        return tasks.skipped(f"parked: {why}")

    # --- workers ---------------------------------------------------------------------------

    def watchdog(self) -> Watchdog:
        """A watchdog over this registry's sagas (started by each worker; tests call ``scan()``)."""
        return Watchdog(self.runtimes, self.settings)

    def hook_workers(self, app: Any) -> None:
        """Once per Celery app: its workers run a watchdog and serve metrics, as this registry's
        settings say (``SAGA_WATCHDOG_INTERVAL``, ``SAGA_METRICS_PORT``; 0 turns either off)."""
        with self._lock:
            if app in self._hooked:
                return
            self._hooked.add(app)
        folders: list[str] = []
        dogs: list[Watchdog | Archiver] = []

        def on_init(**_: Any) -> None:  # before the pool forks
            if self.settings.metrics_port:
                folder = metrics.prepare_multiprocess()
                if folder:
                    folders.append(folder)

        def on_ready(**_: Any) -> None:
            s = self.settings
            if s.watchdog_interval > 0:
                dogs.append(self.watchdog())
                dogs[-1].start()
            archive = self.archive_for(s)
            if archive is not None and s.archiver:
                dogs.append(Archiver(self.store, archive, s))
                dogs[-1].start()
            if s.metrics_port:
                reads = {"saga_dead_letters": self.store.dead_letter_depth, "saga_parked_runs": self.store.parked_depth}
                lag = ArchiveFeed(self.store).lag if s.archive_url else None
                auth = {"user": s.metrics_user, "password_file": s.metrics_password_file}
                metrics.serve(s.metrics_port, reads, lag, **auth)

        def on_stop(**_: Any) -> None:
            for dog in dogs:
                dog.stop()

        def on_child_exit(pid: int | None = None, **_: Any) -> None:
            metrics.mark_child_dead(pid)

        def on_shutdown(**_: Any) -> None:
            while folders:
                metrics.remove_folder(folders.pop())

        tasks.on_worker_signal(app, "worker_init", on_init)
        tasks.on_worker_signal(app, "worker_ready", on_ready)
        tasks.on_process_signal("worker_shutting_down", on_stop)
        tasks.on_process_signal("worker_process_shutdown", on_child_exit)
        tasks.on_process_signal("worker_shutdown", on_shutdown)

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

"""The definition API: a :class:`Saga` is an ordered list of steps, each a Celery task with an
optional compensating task, plus the calls that start and inspect its runs."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from celery import Celery
from celery import current_app as celery_current_app

from . import state as sm
from .errors import SagaDefinitionError, SagaTimeout
from .settings import Settings, get_settings
from .state import Direction, Event, JSONObject, SagaState, Shape
from .store import RedisStore

StepFunction = Callable[[dict[str, Any], "StepContext"], "dict[str, Any] | None"]
CompensationFunction = Callable[[dict[str, Any], "StepContext"], None]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_KEY_NAMESPACE = uuid.UUID("5a6a0000-0000-4000-8000-000000000000")


@dataclass(frozen=True)
class StepContext:
    """What a step or compensation body knows about the attempt it runs in.

    ``idempotency_key`` is the same for one run, step and direction across every retry and
    redelivery: hand it to an external API and its effect happens once.
    """

    run_id: str
    saga: str
    step: str
    index: int
    attempt: int
    idempotency_key: str
    direction: Direction = Direction.FORWARD


class Step:
    """One step of a saga: a forward function and, optionally, its compensation.

    The decorated name refers to this object, so ``@reserve.compensate`` declares the undo.
    Calling it calls the forward function directly (handy in unit tests).
    """

    def __init__(self, saga: Saga, index: int, name: str, fn: StepFunction, *, max_retries: int | None,
                 retry_backoff: float | None, retry_backoff_max: float | None) -> None:
        self.saga = saga
        self.index = index
        self.name = name
        self.fn = fn
        self.compensation: CompensationFunction | None = None
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._retry_backoff_max = retry_backoff_max
        self.task_name = f"saga.{saga.name}.{name}"
        self.compensation_task_name = f"{self.task_name}.compensate"
        self.task: Any = saga._register(self, Direction.FORWARD)
        self.compensation_task: Any = None
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt before the step gives up."""
        return self._max_retries if self._max_retries is not None else self.saga.settings.max_retries

    @property
    def retry_backoff(self) -> float:
        """Base of the exponential backoff, in seconds."""
        return self._retry_backoff if self._retry_backoff is not None else self.saga.settings.retry_backoff

    @property
    def retry_backoff_max(self) -> float:
        """Cap of the exponential backoff, in seconds."""
        if self._retry_backoff_max is not None:
            return self._retry_backoff_max
        return self.saga.settings.retry_backoff_max

    def compensate(self, fn: CompensationFunction) -> CompensationFunction:
        """Declare the compensation of this step; it runs if a later step gives up."""
        if self.compensation is not None:
            raise SagaDefinitionError(f"step {self.name!r} of saga {self.saga.name!r} already has a compensation")
        self.compensation = fn
        self.compensation_task = self.saga._register(self, Direction.COMPENSATION)
        self.saga._shape = None
        return fn

    def task_for(self, direction: Direction) -> Any:
        """The Celery task that runs this step in ``direction``."""
        return self.task if direction is Direction.FORWARD else self.compensation_task

    def __call__(self, payload: dict[str, Any], ctx: StepContext) -> dict[str, Any] | None:
        return self.fn(payload, ctx)

    def __repr__(self) -> str:
        return f"<Step {self.saga.name}.{self.name} #{self.index}>"


class Saga:
    """A named, ordered list of steps registered as Celery tasks on ``app``.

    Steps run in declaration order. Declare every step (in every process: clients and workers)
    before starting runs: a run records the definition's fingerprint and refuses to move under
    another one.
    """

    def __init__(self, name: str, app: Celery | None = None, *, store: RedisStore | None = None,
                 settings: Settings | None = None) -> None:
        if not _NAME.match(name):
            raise SagaDefinitionError(f"saga name {name!r} must be letters, digits, '_' or '-'")
        self.name = name
        self.app = app if app is not None else celery_current_app
        self._settings = settings
        self._store = store
        self.steps: list[Step] = []
        self._shape: Shape | None = None
        _registry[name] = self
        _hook_workers(self.app)

    @property
    def settings(self) -> Settings:
        """The settings this saga runs with (the process's ``SAGA_*`` settings by default)."""
        return self._settings if self._settings is not None else get_settings()

    @property
    def store(self) -> RedisStore:
        """The coordinator's store, connected on first use."""
        if self._store is None:
            self._store = _shared_store(self.settings)
        return self._store

    @property
    def shape(self) -> Shape:
        """Step names and which steps can be undone (cached; declaring a step or a compensation
        makes it anew)."""
        if self._shape is None:
            self._shape = Shape(tuple(s.name for s in self.steps),
                                tuple(s.compensation is not None for s in self.steps))
        return self._shape

    # --- declaring -------------------------------------------------------------------------

    @overload
    def step(self, fn: StepFunction, /) -> Step: ...
    @overload
    def step(self, fn: None = None, /, *, name: str | None = None, max_retries: int | None = None,
             retry_backoff: float | None = None, retry_backoff_max: float | None = None
             ) -> Callable[[StepFunction], Step]: ...

    def step(self, fn: StepFunction | None = None, /, *, name: str | None = None,
             max_retries: int | None = None, retry_backoff: float | None = None,
             retry_backoff_max: float | None = None) -> Step | Callable[[StepFunction], Step]:
        """Declare the next step. Its return value (a JSON object, or None) is merged into the payload.

        Any exception but :class:`~saga.PermanentError` is retried ``max_retries`` times with
        full-jitter exponential backoff ``min(retry_backoff_max, retry_backoff * 2**(n-1))``.
        """
        if max_retries is not None and max_retries < 0:
            raise SagaDefinitionError("max_retries must be >= 0")

        def declare(f: StepFunction) -> Step:
            step_name = name or f.__name__
            if not _NAME.match(step_name):
                raise SagaDefinitionError(f"step name {step_name!r} must be letters, digits, '_' or '-'")
            if any(s.name == step_name for s in self.steps):
                raise SagaDefinitionError(f"saga {self.name!r} already has a step named {step_name!r}")
            s = Step(self, len(self.steps), step_name, f, max_retries=max_retries,
                     retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max)
            self.steps.append(s)
            self._shape = None
            return s

        return declare(fn) if fn is not None else declare

    def _register(self, step: Step, direction: Direction) -> Any:
        from .tasks import register_task

        return register_task(self, step, direction)

    # --- running ---------------------------------------------------------------------------

    def start(self, payload: JSONObject, *, key: str | None = None) -> str:
        """Start a run and return its id.

        With ``key``, the run id is derived from (saga, key): starting again with the same key
        returns the same id and starts nothing, also when processes race. A payload that is not a
        JSON object raises :class:`~saga.InvalidPayload` before anything is written.
        """
        if not self.steps:
            raise SagaDefinitionError(f"saga {self.name!r} has no steps; declare them with @saga.step")
        body = sm.require_json_object(payload, "the saga payload")
        run_id = str(uuid.uuid5(_KEY_NAMESPACE, f"{self.name}\0{key}")) if key is not None else str(uuid.uuid4())
        start = sm.decide_start(run_id, self.name, body)
        if self.store.create(self.name, self.shape.fingerprint, start, key):
            from .tasks import dispatch

            dispatch(self, start.state)
        return run_id

    def get(self, run_id: str) -> SagaState:
        """The run's latest snapshot; :class:`~saga.RunNotFound` for an unknown id."""
        return self.store.get(run_id)

    def wait(self, run_id: str, timeout: float = 30.0, poll: float = 0.002) -> SagaState:
        """Block until the run is completed, compensated or failed, and return that state.

        Raises :class:`~saga.SagaTimeout` (a ``TimeoutError``) when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            state = self.store.get(run_id)
            if state.status.terminal:
                return state
            if time.monotonic() >= deadline:
                raise SagaTimeout(
                    f"run {run_id} still {state.status.value} at step {state.current_step} after {timeout}s"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.25)

    def history(self, run_id: str) -> list[SagaState]:
        """Every version of the run, oldest first (versions 1..n without gaps)."""
        return self.store.history(run_id)

    def events(self, run_id: str) -> list[Event]:
        """Every event of the run, oldest first."""
        return self.store.events(run_id)

    def rebuild(self, run_id: str) -> SagaState:
        """The run's state computed from its events alone; equal to :meth:`get`."""
        return sm.rebuild(self.store.events(run_id))

    def step_named(self, name: str) -> Step:
        """The step called ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise SagaDefinitionError(f"saga {self.name!r} has no step {name!r}")

    def __repr__(self) -> str:
        return f"<Saga {self.name} steps={[s.name for s in self.steps]}>"


_stores: dict[Settings, RedisStore] = {}
_registry: dict[str, Saga] = {}


_hooked_apps: set[int] = set()


def _hook_workers(app: Celery) -> None:
    """Once per Celery app: its workers run a watchdog and serve metrics."""
    if id(app) in _hooked_apps:
        return
    _hooked_apps.add(id(app))
    from . import metrics
    from .recovery import install_watchdog

    install_watchdog(app)
    metrics.install(app)


def find_saga(name: str) -> Saga:
    """The saga called ``name`` defined in this process; import its module first."""
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise SagaDefinitionError(
            f"saga {name!r} is not defined in this process (known: {known}); "
            "import the module that defines it (e.g. --app workers)"
        ) from None


def sagas() -> list[Saga]:
    """Every saga defined in this process."""
    return list(_registry.values())


def _shared_store(settings: Settings) -> RedisStore:
    """One store (one connection pool) per process and settings, shared by every saga."""
    store = _stores.get(settings)
    if store is None:
        store = RedisStore(settings.redis_url, prefix=settings.key_prefix,
                           retention_seconds=settings.retention_seconds,
                           lease_seconds=settings.lease_seconds, dispatch_timeout=settings.dispatch_timeout)
        _stores[settings] = store
    return store


def default_store() -> RedisStore:
    """The store named by the process's ``SAGA_*`` settings."""
    return _shared_store(get_settings())


def dead_letters() -> list[JSONObject]:
    """Every dead-letter entry of every saga in the default store, oldest first."""
    return default_store().dead_letters()



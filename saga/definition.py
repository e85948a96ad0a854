"""The definition API: a :class:`Saga` is an ordered list of steps, each a Celery task with an
optional compensating task, plus the calls that start and inspect its runs.

Declaring registers: a saga with its :class:`~saga.registry.Registry` (the default one unless
given), by name and version; a step's task (and its compensation's) on the saga's Celery app,
once per name whatever the versions. Declaring also checks each body: it must be callable as
``(payload, ctx)`` (``async def`` bodies are awaited on the worker). Running is the engine's
(:mod:`saga.engine.commit`); this module only declares and delegates.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, overload

from . import worker
from .client import RunClient
from .core import CompensationFunction, Direction, RetryPolicy, Shape, StepFunction
from .engine import commit as engine
from .engine import runs
from .errors import InvalidPayload, SagaDefinitionError
from .registry import Registry, default_registry
from .settings import Settings
from .store import RedisStore
from .transport import tasks

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _check_body(fn: object, what: str) -> None:
    """Refuse, at declaration, a body that cannot be called as ``(payload, ctx)``."""
    if not callable(fn):
        raise SagaDefinitionError(f"{what} must be a function taking (payload, ctx), got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let it be
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise SagaDefinitionError(
            f"{what} cannot be called as (payload, ctx): its signature is {signature}; "
            "give it two parameters, the payload and the StepContext"
        ) from None


class Step:
    """One step of a saga: a forward function and, optionally, its compensation.

    The decorated name refers to this object, so ``@reserve.compensate`` declares the undo.
    Calling it calls the forward function directly (handy in unit tests).
    """

    def __init__(
        self,
        saga: Saga,
        index: int,
        name: str,
        fn: StepFunction,
        retry: dict[str, Any],
        compensate_on_failure: bool,
        *,
        group: str = "",
        timeout: float | None = None,
    ) -> None:
        self.saga = saga
        self.index = index
        self.name = name
        self.fn = fn
        self.compensation: CompensationFunction | None = None
        self.compensate_on_failure = compensate_on_failure
        #: the parallel group this step runs in ('' = alone)
        self.group = group
        #: seconds one attempt may run (None = no limit)
        self.timeout = timeout
        self._retry = retry
        self.task_name = tasks.task_name(saga.name, name, Direction.FORWARD)
        self.compensation_task_name = tasks.task_name(saga.name, name, Direction.COMPENSATION)
        self.task: Any = worker.task_for(saga.registry, saga.app, saga.name, name, Direction.FORWARD)
        if timeout is not None:
            tasks.limit_time(self.task, timeout)
        self.compensation_task: Any = None
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def retry_policy(self, settings: Settings) -> RetryPolicy:
        """This step's retry policy: its own values, ``settings``' defaults for the rest."""
        return RetryPolicy(
            max_retries=self._retry.get("max_retries", settings.max_retries),
            backoff=self._retry.get("retry_backoff", settings.retry_backoff),
            backoff_max=self._retry.get("retry_backoff_max", settings.retry_backoff_max),
        )

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt before the step gives up."""
        return self.retry_policy(self.saga.settings).max_retries

    @property
    def retry_backoff(self) -> float:
        """Base of the exponential backoff, in seconds."""
        return self.retry_policy(self.saga.settings).backoff

    @property
    def retry_backoff_max(self) -> float:
        """Cap of the exponential backoff, in seconds."""
        return self.retry_policy(self.saga.settings).backoff_max

    def compensate(self, fn: CompensationFunction) -> CompensationFunction:
        """Declare the compensation of this step; it runs if a later step gives up (and, with
        ``compensate_on_failure``, if this step does). It must tolerate "nothing to undo": it
        may run for a step whose effect never happened, and may run more than once (hand
        ``ctx.idempotency_key`` to the API it calls)."""
        saga = self.saga
        if self.compensation is not None:
            raise SagaDefinitionError(f"step {self.name!r} of saga {saga.name!r} already has a compensation")
        _check_body(fn, f"compensation of step {self.name!r} of saga {saga.name!r}")
        self.compensation = fn
        self.compensation_task = worker.task_for(saga.registry, saga.app, saga.name, self.name, Direction.COMPENSATION)
        saga._shape = None
        return fn

    def task_for(self, direction: Direction) -> Any:
        """The Celery task that runs this step in ``direction``."""
        return self.task if direction is Direction.FORWARD else self.compensation_task

    def __call__(self, payload: dict[str, Any], ctx: Any) -> Any:
        """Call the forward body directly (no run, no commit): for unit tests of the body (an
        ``async def`` body returns its coroutine)."""
        return self.fn(payload, ctx)

    def __repr__(self) -> str:
        return f"<Step {self.saga.name}.{self.name} #{self.index}>"


class Saga(RunClient):
    """A named, ordered list of steps registered as Celery tasks on ``app``.

    Steps run in declaration order. Declare every step (in every process: clients and workers)
    before starting runs. A run records the definition's ``version`` and shape when it starts,
    and is moved to its end by that version only: to change a saga, declare the new definition
    beside the old one with a higher ``version`` (same name), and keep the old one until its runs
    drain. A worker without a run's version parks the run, never fails it. ``start()`` starts
    runs under the highest version declared in the process.

    A saga binds to ``registry`` (the default registry unless given); declaring a name and
    version twice in one registry raises :class:`~saga.SagaDefinitionError`. ``settings`` and
    ``store`` override the registry's for this saga only.
    """

    def __init__(
        self,
        name: str,
        app: Any = None,
        *,
        store: RedisStore | None = None,
        settings: Settings | None = None,
        registry: Registry | None = None,
        version: int = 1,
        deadline: float | None = None,
    ) -> None:
        if not _NAME.match(name):
            raise SagaDefinitionError(f"saga name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SagaDefinitionError(f"saga version must be a whole number from 1, got {version!r}")
        self.name = name
        self.version = version
        #: seconds from start() after which an unfinished run is compensated (None = never)
        self.deadline = _checked_deadline(deadline)
        self.app: Any = app if app is not None else tasks.current_app()
        self.registry = registry if registry is not None else default_registry()
        self._settings = settings
        self._store = store
        self.steps: list[Step] = []
        self._shape: Shape | None = None
        self._runtime: tuple[int, engine.Runtime] | None = None
        self.registry.add(self)
        worker.hook_workers(self.registry, self.app)

    @property
    def settings(self) -> Settings:
        """The settings this saga runs with (its registry's unless it was given its own)."""
        return self._settings if self._settings is not None else self.registry.settings

    @property
    def store(self) -> RedisStore:
        """The coordinator's store, connected on first use."""
        return self._store if self._store is not None else self.registry.store_for(self.settings)

    @property
    def shape(self) -> Shape:
        """Step names and which steps can be undone (cached; declaring a step or a compensation
        makes it anew)."""
        if self._shape is None:
            self._shape = Shape(
                tuple(s.name for s in self.steps),
                tuple(s.compensation is not None for s in self.steps),
                tuple(s.compensate_on_failure for s in self.steps),
                tuple(s.group for s in self.steps) if any(s.group for s in self.steps) else (),
            )
        return self._shape

    def runtime(self) -> engine.Runtime:
        """This saga bound to its store, settings and heartbeat (made anew when its registry is
        configured again)."""
        generation = self.registry.generation
        if self._runtime is None or self._runtime[0] != generation:
            rt = engine.Runtime(self, self.store, self.settings, self.registry.heartbeat)
            self._runtime = (generation, rt)
        return self._runtime[1]

    # --- declaring -------------------------------------------------------------------------

    @overload
    def step(self, fn: StepFunction, /) -> Step: ...
    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        compensate_on_failure: bool = False,
        group: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[StepFunction], Step]: ...

    def step(
        self,
        fn: StepFunction | None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        compensate_on_failure: bool = False,
        group: str | None = None,
        timeout: float | None = None,
    ) -> Step | Callable[[StepFunction], Step]:
        """Declare the next step. Its return value (a JSON object, or None) is merged into the payload.

        Any exception but :class:`~saga.PermanentError` is retried ``max_retries`` times with
        full-jitter exponential backoff ``min(retry_backoff_max, retry_backoff * 2**(n-1))``.
        With ``compensate_on_failure``, the step's own compensation runs first when the step
        gives up (it may have acted before failing, e.g. timed out against an API that applied
        the change), then the steps before it, newest first.

        ``group``: consecutive steps with the same group run concurrently, each its own task with
        its own lease, retries and checkpoint; the group is done when every member committed,
        and members must return disjoint payload keys. If a member gives up, no member that has
        not begun starts, the members in flight run to their end, and every committed member is
        compensated (concurrently) before the steps before the group.

        ``timeout``: seconds one attempt may run. Past it the body gets Celery's
        ``SoftTimeLimitExceeded`` (a prefork worker; retried like any exception), and a few
        seconds later the worker's child is killed; the lease makes sure a killed attempt never
        commits.
        """
        if max_retries is not None and max_retries < 0:
            raise SagaDefinitionError("max_retries must be >= 0")
        if group is not None and (not isinstance(group, str) or not _NAME.match(group)):
            raise SagaDefinitionError(f"group name {group!r} must be letters, digits, '_' or '-'")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 86400
        ):
            raise SagaDefinitionError(f"timeout must be a number of seconds between 0 and 86400, got {timeout!r}")
        given = {"max_retries": max_retries, "retry_backoff": retry_backoff, "retry_backoff_max": retry_backoff_max}
        retry = {k: v for k, v in given.items() if v is not None}

        def declare(f: StepFunction) -> Step:
            step_name = name or f.__name__
            if not _NAME.match(step_name):
                raise SagaDefinitionError(f"step name {step_name!r} must be letters, digits, '_' or '-'")
            if any(s.name == step_name for s in self.steps):
                raise SagaDefinitionError(f"saga {self.name!r} already has a step named {step_name!r}")
            _check_body(f, f"step {step_name!r} of saga {self.name!r}")
            if group and self.steps and self.steps[-1].group != group and any(s.group == group for s in self.steps):
                raise SagaDefinitionError(
                    f"group {group!r} of saga {self.name!r} must be consecutive steps: step {step_name!r} "
                    f"follows {self.steps[-1].name!r}, which is not in it"
                )
            s = Step(
                self, len(self.steps), step_name, f, retry, compensate_on_failure, group=group or "", timeout=timeout
            )
            self.steps.append(s)
            self._shape = None
            return s

        return declare(fn) if fn is not None else declare

    def find_step(self, name: str) -> Step | None:
        """The step called ``name``, if there is one."""
        return next((s for s in self.steps if s.name == name), None)

    def step_named(self, name: str) -> Step:
        """The step called ``name``; :class:`~saga.SagaDefinitionError` if there is none."""
        found = self.find_step(name)
        if found is None:
            raise SagaDefinitionError(f"saga {self.name!r} has no step {name!r}")
        return found

    def __repr__(self) -> str:
        return f"<Saga {self.name} v{self.version} steps={[s.name for s in self.steps]}>"


def _checked_deadline(deadline: object) -> float | None:
    """A saga's default deadline, checked at declaration."""
    try:
        return runs.validated_deadline(deadline)
    except InvalidPayload as exc:
        raise SagaDefinitionError(str(exc)) from None

"""saga: a distributed saga coordinator on Celery and Redis.

Define a saga as ordered steps (Celery tasks) with compensations, start a run with one call,
and every transition is checkpointed atomically in Redis; a step that gives up is
dead-lettered and the committed steps are compensated in reverse order.
"""

from .archive import ArchivedRun, RunPage
from .control import dead_letters, find_runs
from .core import Checkpoint, Direction, SagaState, Status, StepContext, StepError, payload_hash
from .definition import Saga, Step
from .errors import (
    ActionRefused,
    ArchiveSchemaMismatch,
    ArchiveUnavailable,
    EntryNotFound,
    InvalidOutput,
    InvalidPayload,
    KeyConflict,
    OutputConflict,
    PermanentError,
    Rejected,
    RunNotFound,
    SagaDefinitionError,
    SagaError,
    SagaTimeout,
    SettingsError,
    StorageFormatTooNew,
    StoreFull,
    StoreUnavailable,
)
from .registry import celery_config, create_app, default_store, get_settings
from .settings import Settings
from .store import RedisStore

__all__ = [
    # Defining and running sagas
    "Saga",
    "Step",
    "StepContext",
    "dead_letters",
    # The archive
    "ArchivedRun",
    "RunPage",
    "find_runs",
    # State
    "Checkpoint",
    "Direction",
    "SagaState",
    "Status",
    "StepError",
    "payload_hash",
    # Infrastructure
    "RedisStore",
    "Settings",
    "celery_config",
    "create_app",
    "default_store",
    "get_settings",
    # Errors
    "ActionRefused",
    "ArchiveSchemaMismatch",
    "ArchiveUnavailable",
    "EntryNotFound",
    "InvalidOutput",
    "InvalidPayload",
    "KeyConflict",
    "PermanentError",
    "Rejected",
    "OutputConflict",
    "RunNotFound",
    "SagaDefinitionError",
    "SagaError",
    "SagaTimeout",
    "SettingsError",
    "StorageFormatTooNew",
    "StoreFull",
    "StoreUnavailable",
]

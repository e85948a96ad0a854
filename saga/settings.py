"""One typed settings object, read from ``SAGA_*`` environment variables.

Nothing here caches or reads the environment by itself: the process's settings belong to its
:class:`~saga.registry.Registry`, which reads them with :meth:`Settings.from_env` on first use
unless it was configured with settings of its own.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SettingsError

#: Where the coordinator keeps runs when nothing else is said.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: How long every version of a finished run is kept (7 days).
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

#: Buckets when ``SAGA_BUCKETS`` does not say: enough to spread a cluster's slots over its nodes,
#: few enough that a listing reads each bucket's index in one pipelined round trip.
DEFAULT_BUCKETS = 16
#: The libraries an archive needs: the ``archive`` extra (PostgreSQL adds psycopg: ``postgres``).
ARCHIVE_LIBRARIES = ("sqlalchemy", "alembic")

#: With an archive, how long a finished run stays in Redis once archived (an hour).
DEFAULT_HOT_RETENTION_SECONDS = 3600

ENV_PREFIX = "SAGA_"

#: The scheme of the in-memory tier (:mod:`saga.store.memory`): ``memory://`` or ``memory://<name>``.
MEMORY_SCHEME = "memory://"
_MEMORY_NAME = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")


def is_memory_url(url: str) -> bool:
    """Whether ``url`` names the in-memory tier (``memory://`` or ``memory://<name>``)."""
    return url.startswith(MEMORY_SCHEME)


def memory_name(url: str) -> str:
    """The server name of a memory URL ('' for ``memory://``); :class:`SettingsError` for a
    memory URL that is not ``memory://`` followed by up to 64 letters, digits, ``_``, ``.``, ``-``."""
    name = url[len(MEMORY_SCHEME) :]
    if not is_memory_url(url) or not _MEMORY_NAME.match(name):
        raise SettingsError(f"{url!r} is not a memory URL: use memory:// or memory://<name> (letters, digits, _ . -)")
    return name


#: Query parameters of a URL whose value is a secret: a name that contains one of these words.
_SECRET_PARAMS = ("pass", "secret", "token", "key")
#: The schemes ``SAGA_REDIS_URL`` takes (besides ``memory://``), and the form it is written in.
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")
_USERINFO_TEXT = re.compile(r"(://[^:/@]*:)[^@]*@")
_SECRET_QUERY_TEXT = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token|key)[^=&#]*=)[^&#]*")
BROKER_URL_FORM = "redis://[[user]:password@]host[:port][/db] or amqp://user:password@host[:port]/vhost"
REDIS_URL_FORM = "redis://[[user]:password@]host[:port][/db] (or rediss://, redis+cluster://, unix://, memory://)"


def redact(url: str) -> str:
    """``url`` with its secrets hidden, for messages and logs: the password of its userinfo, and
    the value of every query parameter whose name contains pass, secret, token or key (``***``).
    Never raises: a URL that does not parse (a port that is not a number) is redacted as text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _SECRET_QUERY_TEXT.sub(r"\1***", _USERINFO_TEXT.sub(r"\1***@", url))
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(_redacted_param(param) for param in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def unknown_setting(variable: str) -> str:
    """The one-line refusal of a ``SAGA_`` variable no setting reads (a typo would otherwise be
    ignored in silence), naming the closest known variable when one is close."""
    close = difflib.get_close_matches(variable.upper(), Settings.known_variables(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"{variable} is not a known setting ({hint}every SAGA_ variable must name one; see README 'Settings', "
        "or unset it)"
    )


def _redacted_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}=***" if eq and any(word in unquote(name).lower() for word in _SECRET_PARAMS) else param


def url_problem(url: str) -> str | None:
    """What keeps ``url`` from being read as a URL (a port that is not a number from 0 to 65535,
    an unbalanced ``[`` of an IPv6 host), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return str(exc).rstrip(".")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        return f"its port {port[:20]!r} is not a number from 0 to 65535"
    return None


class Settings(BaseModel):
    """Every setting of the coordinator; field ``x`` is read from ``SAGA_X``.

    Guarantees: values are validated on construction, so a bad variable fails at start-up with
    a one-line :class:`SettingsError` rather than in the middle of a run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The coordinator's store.
    redis_url: str = DEFAULT_REDIS_URL
    #: The default Celery app's broker; the Redis URL when unset.
    broker_url: str = ""
    #: Lease on a running step or compensation, renewed by a heartbeat while its body runs.
    lease_seconds: float = Field(default=5.0, gt=0)
    #: Default retry policy of a step (a step may override each).
    max_retries: int = Field(default=3, ge=0)
    retry_backoff: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=60.0, ge=0)
    #: How long every version of a completed or compensated run is kept.
    retention_seconds: int = Field(default=DEFAULT_RETENTION_SECONDS, gt=0)
    #: Opt-in dedicated queues; empty means Celery's default queue, so a plain worker runs all.
    step_queue: str = ""
    compensation_queue: str = ""
    #: The module the ``saga`` CLI imports to know your sagas (resume, cancel, dlq retry).
    app: str = "workers"
    #: Prefix of every Redis key the coordinator writes.
    key_prefix: str = "saga"
    #: How long a dispatched step may wait unstarted before the watchdog dispatches it again.
    dispatch_timeout: float = Field(default=30.0, gt=0)
    #: How often each worker's watchdog looks for runs to resume; 0 turns it off.
    watchdog_interval: float = Field(default=0.5, ge=0)
    #: Port of the workers' Prometheus metrics endpoint; 0 turns it off.
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    #: Basic auth of the workers' metrics endpoint: the user, and a file holding the password
    #: (a secret mount). Without them the endpoint listens on 127.0.0.1 only.
    metrics_user: str = ""
    metrics_password_file: str = ""
    #: Largest payload (and step output, and payload after a step) in bytes of UTF-8 JSON.
    max_payload_bytes: int = Field(default=1024 * 1024, gt=0)
    #: Deepest nesting of objects and lists in a payload or step output.
    max_payload_depth: int = Field(default=64, gt=0)
    #: How many buckets runs and indexes are spread over (recorded in the store on first use;
    #: every process must use the same number).
    buckets: int = Field(default=DEFAULT_BUCKETS, ge=1, le=16384)
    #: The durable SQL archive, an SQLAlchemy URL (``sqlite:///runs.db`` or
    #: ``postgresql+psycopg://user@host/db``); empty: no archive, runs live in Redis only.
    archive_url: str = ""
    #: With an archive: how long a finished run stays in Redis after it was archived.
    hot_retention_seconds: int = Field(default=DEFAULT_HOT_RETENTION_SECONDS, gt=0)
    #: Whether each worker runs an archiver thread (one is elected at a time); false when
    #: ``saga archive run`` processes do the archiving.
    archiver: bool = True
    #: Feed entries the archiver copies per SQL transaction.
    archive_batch: int = Field(default=500, ge=1, le=10_000)
    #: Flower's address (``http://flower:5555``, with any URL prefix); ``saga show`` then prints
    #: where Flower lists the run's tasks. Empty: no link.
    flower_url: str = ""

    @model_validator(mode="after")
    def _broker_defaults_to_redis(self) -> Settings:
        if not self.broker_url:
            if "+cluster://" in self.redis_url:
                raise ValueError(
                    "SAGA_REDIS_URL names a Redis Cluster, which cannot be the Celery broker: "
                    "set SAGA_BROKER_URL to a plain Redis or RabbitMQ"
                )
            object.__setattr__(self, "broker_url", self.redis_url)
        return self

    @model_validator(mode="after")
    def _urls_parse(self) -> Settings:
        for name, url in (("SAGA_REDIS_URL", self.redis_url), ("SAGA_BROKER_URL", self.broker_url)):
            if is_memory_url(url) or (name == "SAGA_BROKER_URL" and url == self.redis_url):
                continue
            problem = url_problem(url)
            scheme, sep, _ = url.partition("://")
            if problem is None and name == "SAGA_REDIS_URL" and (not sep or scheme.lower() not in REDIS_SCHEMES):
                problem = f"the scheme is {scheme!r}" if sep else "it has no scheme"
            if problem is not None:
                what, form = ("a Redis URL", REDIS_URL_FORM) if name == "SAGA_REDIS_URL" else ("a URL", BROKER_URL_FORM)
                raise ValueError(f"{name} {redact(url)!r} is not {what}: {problem}; use {form}")
        return self

    @model_validator(mode="after")
    def _archive_extra_installed(self) -> Settings:
        if self.archive_url:
            missing = [name for name in ARCHIVE_LIBRARIES if importlib.util.find_spec(name) is None]
            if self.archive_url.startswith("postgresql") and importlib.util.find_spec("psycopg") is None:
                missing.append("psycopg")
            if missing:
                extra = "postgres" if "psycopg" in missing else "archive"
                raise ValueError(
                    f"SAGA_ARCHIVE_URL needs {', '.join(missing)}, which is not installed: pip install 'saga[{extra}]'"
                )
        return self

    @model_validator(mode="after")
    def _memory_runs_inline(self) -> Settings:
        if is_memory_url(self.redis_url):
            try:
                memory_name(self.redis_url)
            except SettingsError as exc:
                raise ValueError(f"SAGA_REDIS_URL {exc}") from None
            if not is_memory_url(self.broker_url):
                raise ValueError(
                    "SAGA_REDIS_URL=memory:// runs every step inline in this process (Celery's eager mode), "
                    "so there is no broker: leave SAGA_BROKER_URL unset"
                )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``SAGA_*`` variables; unknown ``SAGA_`` names are an error."""
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name, value in env.items():
            if name.startswith(ENV_PREFIX):
                values[name[len(ENV_PREFIX) :].lower()] = value
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"] and "error" in first.get("ctx", {}):
                raise SettingsError(str(first["ctx"]["error"])) from None
            field = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "SAGA_*"
            if first["type"] == "extra_forbidden":
                raise SettingsError(unknown_setting(field)) from None
            given = first.get("input")
            shown = redact(given) if field.endswith("_URL") and isinstance(given, str) else given
            raise SettingsError(f"{field}: {first['msg']} (got {shown!r})") from None

    @classmethod
    def known_variables(cls) -> list[str]:
        """Every ``SAGA_*`` variable a setting is read from, sorted."""
        return sorted(ENV_PREFIX + name.upper() for name in cls.model_fields)

    def to_env(self) -> dict[str, str]:
        """These settings as ``SAGA_*`` variables, for a worker or CLI subprocess:
        ``Settings.from_env(s.to_env()) == s``."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.model_dump().items()}

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied and validated (the broker follows a new Redis URL
        unless it was set apart from it)."""
        values = self.model_dump()
        if "redis_url" in changes and "broker_url" not in changes and values["broker_url"] == values["redis_url"]:
            values["broker_url"] = ""
        return Settings.model_validate({**values, **changes})

"""What every ``saga`` command shares: exit codes, the :class:`Operator` (where Redis is, which
module defines the sagas, the registry), one-line errors and JSON output."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from . import control
from .errors import ArchiveUnavailable, EntryNotFound, RunNotFound, StoreUnavailable
from .registry import Registry, default_registry
from .settings import Settings

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_ERROR = 5

#: The module ``--app`` imports when neither it nor ``SAGA_APP`` says otherwise.
DEFAULT_APP: str = Settings.model_fields["app"].default
#: Connection retries of the CLI's store: an unreachable Redis fails in about a second.
STORE_RETRIES = 1


@dataclass
class Operator:
    """What every command of one invocation shares: where Redis is, which module defines the
    sagas, whether to show tracebacks, and the registry (configured on first use: the default
    registry unless ``given`` one)."""

    redis_url: str | None = None
    app: str = DEFAULT_APP
    debug: bool = False
    given: Registry | None = None
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        """The registry, configured from ``SAGA_*`` settings with ``--redis-url`` over them."""
        if self._registry is None:
            environ = dict(os.environ)
            if self.redis_url:
                environ["SAGA_REDIS_URL"] = self.redis_url
            registry = self.given if self.given is not None else default_registry()
            self._registry = registry.configure(Settings.from_env(environ), store_retries=STORE_RETRIES)
        return self._registry

    def load_app(self) -> Registry:
        """Import ``--app`` so its sagas are defined here, bound to the configured registry."""
        registry = self.registry()
        control.load_app(self.app)
        return registry


def exit_code_for(exc: BaseException) -> int:
    """The exit code an error ends the command with."""
    if isinstance(exc, RunNotFound | EntryNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, StoreUnavailable | ArchiveUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded to single spaces."""
    return " ".join(text.split())


def fail(message: str, code: int) -> NoReturn:
    """End the command: ``error: <message>`` on one line of stderr, exit status ``code``."""
    click.echo(f"error: {one_line(message)}", err=True)
    raise click.exceptions.Exit(code)


def usage_failure(exc: click.UsageError) -> NoReturn:
    """End the command for a bad command line: one line, with where to find help; exit 2."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    fail(exc.format_message().rstrip(".") + hint, EXIT_USAGE)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


#: ``--json``: print JSON on stdout instead of a table.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts).")

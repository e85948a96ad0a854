"""What every ``saga`` command shares: exit codes, the :class:`Operator` (where Redis is, which
module defines the sagas, the registry; run ids from a unique prefix), one-line errors and JSON
output."""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from ..errors import ArchiveUnavailable, EntryNotFound, RunNotFound, SagaError, StoreUnavailable, cut, visible
from ..registry import Registry, default_registry
from ..settings import Settings

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
#: An unexpected error: a bug (or damaged data) the library did not foresee.
EXIT_ERROR = 5
#: The library refused, with a one-line reason: the action does not apply to the run as it is
#: now, or the input, settings or ``--app`` cannot be used. Change something and try again.
EXIT_REFUSED = 6
#: The answer came, but may be incomplete: ``saga list`` with an archive while Redis cannot be
#: reached lists from the archive alone, and a listing that takes in unfinished runs may miss
#: (or show at an older status) runs still moving in Redis.
EXIT_PARTIAL = 7

#: The module ``--app`` imports when neither it nor ``SAGA_APP`` says otherwise.
DEFAULT_APP: str = Settings.model_fields["app"].default
#: Connection retries of the CLI's store: an unreachable Redis fails in about a second.
STORE_RETRIES = 1
#: A run id is 36 characters; a shorter argument that names no run is taken as a prefix of one
#: if it has at least this many.
MIN_PREFIX = 8


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
        import_app(self.app)
        return registry

    def run_id(self, given: str) -> str:
        """The run ``given`` names: itself when it is a run id, else the one run whose id starts
        with it (at least :data:`MIN_PREFIX` characters), among the runs listed in Redis and, with
        an archive, the archived ones. No match raises :class:`NoRunWithPrefix` (exit 3); an
        ambiguous prefix a :class:`SagaError` (exit 6) saying how many runs it matches."""
        if not MIN_PREFIX <= len(given) < 36:
            return given
        tiers = self.registry().tiers
        try:
            tiers.store.reads.meta(given)
            return given
        except RunNotFound:
            matches, more = tiers.ids_with_prefix(given, limit=10)
        if given in matches or len(matches) == 1:
            return given if given in matches else matches[0]
        if not matches:
            raise NoRunWithPrefix(given, archive=tiers.archive is not None)
        count = f"{len(matches)}{' or more' if more else ''}"
        some = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise SagaError(f"run id prefix {given!r} matches {count} runs: give more characters ({some})")


class NoRunWithPrefix(RunNotFound):
    """No run id starts with the prefix given, in any tier the command can read."""

    def __init__(self, prefix: str, *, archive: bool) -> None:
        super().__init__(prefix)
        self.archive = archive

    def __str__(self) -> str:
        if self.archive:
            return f"no run starts with {cut(self.run_id)!r} (in Redis or the archive)"
        return (
            f"no run starts with {cut(self.run_id)!r} (in Redis; without an archive a finished run leaves it "
            "after SAGA_RETENTION_SECONDS)"
        )


def import_app(module: str) -> None:
    """Import the module that defines the sagas, from the current directory first, as
    ``celery -A`` does (``pkg.module`` or ``pkg.module:app``); one line naming the module and
    where it was looked for when it cannot be imported."""
    name = module.partition(":")[0]
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        importlib.import_module(name)
    except ImportError as exc:
        searched = ", ".join(dict.fromkeys(p or here for p in sys.path if os.path.isdir(p or here)))
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise SagaError(
                f"cannot import app module {name!r} (searched: {searched}): {exc}; pass the module that "
                "defines your sagas with --app or SAGA_APP"
            ) from None
        raise SagaError(f"app module {name!r} was found but importing it failed: {exc}") from None


def exit_code_for(exc: BaseException) -> int:
    """The exit code an error ends the command with: :data:`EXIT_NOT_FOUND` for no such run or
    dead-letter entry; :data:`EXIT_UNAVAILABLE` for a Redis (or archive) that cannot be reached;
    :data:`EXIT_REFUSED` for every other :class:`~saga.errors.SagaError` — the library refused on
    purpose and its message says what to change (``ActionRefused``: resume of a finished run,
    cancel of a finished run, ...; ``KeyConflict``, ``SettingsError``, ``InvalidPayload``,
    ``SagaDefinitionError``, ``ArchiveSchemaMismatch``, an ambiguous run id prefix, an ``--app``
    that cannot be imported); :data:`EXIT_ERROR` for any other exception: one the library did not
    foresee, a bug to report."""
    if isinstance(exc, RunNotFound | EntryNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, StoreUnavailable | ArchiveUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, SagaError):
        return EXIT_REFUSED
    return EXIT_ERROR


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded to single spaces, and every other
    control character escaped (``\\x1b``: :func:`~saga.errors.visible`): safe for a terminal."""
    return visible(" ".join(text.split()))


def fail(message: str, code: int) -> NoReturn:
    """End the command: ``error: <message>`` on one line of stderr (control characters
    escaped), exit status ``code``."""
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

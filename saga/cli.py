"""The ``saga`` command: inspect runs and dead letters, and act on them.

Each command is a thin call into the library: reading commands read the registry's store or
call :mod:`saga.control`, acting commands (``resume``, ``cancel``, ``dlq retry``, ``dlq drop``)
call one function of :mod:`saga.control`; :mod:`saga.cli_render` prints. Every command prints a
table for people, or JSON on stdout with ``--json`` for scripts. Errors are one line,
``error: ...`` on stderr, and a named exit code:

=====================  ====  ==============================================================
name                   code  when
=====================  ====  ==============================================================
``EXIT_OK``            0     done
``EXIT_FAILED_CHECK``  1     ``saga verify`` found problems with a run's records
``EXIT_USAGE``         2     a bad command line (click's own code)
``EXIT_NOT_FOUND``     3     no such run, version or dead-letter entry
``EXIT_UNAVAILABLE``   4     Redis cannot be reached
``EXIT_ERROR``         5     anything else: a refused action, bad settings, an unexpected error
=====================  ====  ==============================================================

An unexpected error also prints one line (plus a hint); ``saga --debug ...`` shows its traceback.
The CLI configures one registry from the ``SAGA_*`` settings (and ``--redis-url``) before it
imports ``--app``, so the sagas it loads and every action use the same store and settings as
the workers.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
from click.exceptions import NoArgsIsHelpError

from . import cli_render, control
from .errors import EntryNotFound, RunNotFound, SagaError, StoreUnavailable
from .registry import Registry, default_registry
from .settings import DEFAULT_REDIS_URL, Settings
from .state import Status

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


# --- shared state, errors ---------------------------------------------------------------------


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
    if isinstance(exc, StoreUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {_one_line(message)}", err=True)
    raise click.exceptions.Exit(code)


def _usage_failure(exc: click.UsageError) -> NoReturn:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    _fail(exc.format_message().rstrip(".") + hint, EXIT_USAGE)


class _SagaGroup(click.Group):
    """A click group that ends every error with one line on stderr and a named exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _usage_failure(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, NoArgsIsHelpError, BrokenPipeError):
            raise  # click shows help, exits, or quietly ends a closed pipe (`saga events RUN | head`)
        except click.UsageError as exc:
            _usage_failure(exc)
        except click.ClickException:
            raise
        except SagaError as exc:
            self._show_traceback(ctx)
            _fail(str(exc) or type(exc).__name__, exit_code_for(exc))
        except Exception as exc:
            if self._show_traceback(ctx):
                _fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug to see the traceback)", EXIT_ERROR)

    @staticmethod
    def _show_traceback(ctx: click.Context) -> bool:
        debug = isinstance(ctx.obj, Operator) and ctx.obj.debug
        if debug:
            click.echo(traceback.format_exc(), err=True, nl=False)
        return debug


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# --- the commands -----------------------------------------------------------------------------

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts).")


@click.group(cls=_SagaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar="SAGA_REDIS_URL",
    metavar="URL",
    help=f"The coordinator's Redis  [env: SAGA_REDIS_URL; default: {DEFAULT_REDIS_URL}]",
)
@click.option(
    "--app",
    "app",
    envvar="SAGA_APP",
    default=DEFAULT_APP,
    show_default=True,
    metavar="MODULE",
    help="Module defining your sagas, imported by resume, cancel and dlq retry  [env: SAGA_APP]",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, app: str, debug: bool) -> None:
    """Inspect and operate saga runs and the dead-letter queue."""
    given = ctx.obj if isinstance(ctx.obj, Registry) else None
    ctx.obj = Operator(redis_url=redis_url, app=app, debug=debug, given=given)


@cli.command("list")
@click.option(
    "--status", type=click.Choice([s.value for s in Status], case_sensitive=False), help="Only runs with this status."
)
@click.option("--saga", "saga_name", metavar="NAME", help="Only runs of this saga.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many runs.")
@_json_option
@click.pass_obj
def list_command(op: Operator, status: str | None, saga_name: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first."""
    runs = control.list_runs(status=status and status.lower(), saga=saga_name, limit=limit, registry=op.registry())
    if as_json:
        _echo_json([s.to_dict() for s in runs])
    else:
        cli_render.print_runs(runs)


@cli.command()
@click.argument("run")
@click.option("--version", type=click.IntRange(min=1), metavar="N", help="The state at version N (default: latest).")
@_json_option
@click.pass_obj
def show(op: Operator, run: str, version: int | None, as_json: bool) -> None:
    """A run's state at its latest version, or at any version with --version."""
    store = op.registry().store
    latest = store.get(run)
    state = latest
    if version is not None and version != latest.version:
        if version > latest.version:
            _fail(f"run {run} has versions 1..{latest.version}; there is no version {version}", EXIT_NOT_FOUND)
        state = store.at_version(run, version)
    if as_json:
        _echo_json(state.to_dict())
    else:
        cli_render.print_state(state, latest.version)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def history(op: Operator, run: str, as_json: bool) -> None:
    """Every version of a run, with what changed in the payload from one to the next."""
    entries = cli_render.history_entries(op.registry().store.history(run))
    if as_json:
        _echo_json(entries)
    else:
        cli_render.print_history(entries)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def events(op: Operator, run: str, as_json: bool) -> None:
    """Every event of a run, oldest first."""
    log = op.registry().store.events(run)
    if as_json:
        _echo_json(log)
    else:
        cli_render.print_events(log)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def verify(op: Operator, run: str, as_json: bool) -> None:
    """Check a run's records: the state rebuilt from its events equals the stored state, and
    every checkpoint hash verifies. Exit 1 if not."""
    problems = control.verify(run, registry=op.registry())
    if as_json:
        _echo_json({"run_id": run, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"run {run} does not verify:")
        for p in problems:
            click.echo(f"  - {_one_line(p)}")
    else:
        click.echo(f"ok: run {run} verifies (rebuilt from its events = stored state; every checkpoint hash matches)")
    if problems:
        raise click.exceptions.Exit(EXIT_FAILED_CHECK)


@cli.command()
@click.argument("run")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the saga.resumed event.")
@_json_option
@click.pass_obj
def resume(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Resume an unfinished run at its cursor (imports --app)."""
    state = control.resume(run, reason=reason, registry=op.load_app())
    if as_json:
        _echo_json(state.to_dict())
    else:
        click.echo(f"run {run} resumed: {state.status.value} at step {state.current_step}, version {state.version}")


@cli.command()
@click.argument("run")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the saga.cancelled event.")
@_json_option
@click.pass_obj
def cancel(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Stop a run's forward progress and compensate the steps that committed (imports --app)."""
    state = control.cancel(run, reason=reason, registry=op.load_app())
    if as_json:
        _echo_json(state.to_dict())
    elif state.status in (Status.COMPENSATING, Status.COMPENSATED):
        click.echo(f"run {run} cancelled: {state.status.value} (version {state.version})")
    else:
        click.echo(f"run {run}: cancel requested; it takes effect when the step running now commits")


@cli.group(context_settings={"help_option_names": ["-h", "--help"]})
def dlq() -> None:
    """The dead-letter queue: steps and compensations that gave up."""


@dlq.command("list")
@_json_option
@click.pass_obj
def dlq_list(op: Operator, as_json: bool) -> None:
    """Every dead-letter entry, oldest first."""
    entries = control.dead_letters(op.registry())
    if as_json:
        _echo_json(entries)
    else:
        cli_render.print_dead_letters(entries)


@dlq.command("retry")
@click.argument("entry")
@_json_option
@click.pass_obj
def dlq_retry(op: Operator, entry: str, as_json: bool) -> None:
    """Act on an entry: continue a failed unwind, or start a compensated run again (imports --app)."""
    run_id = control.retry_dead_letter(entry, registry=op.load_app())
    old_run = entry.rsplit(".", 1)[0]
    if as_json:
        _echo_json({"entry_id": entry, "run_id": run_id, "new_run": run_id != old_run})
    elif run_id != old_run:
        click.echo(f"entry {entry} retried: started run {run_id} with the original input of run {old_run}")
    else:
        click.echo(f"entry {entry} retried: run {run_id} compensates again")


@dlq.command("drop")
@click.argument("entry")
@click.option("--reason", required=True, help="Why (recorded as an event on the run).")
@_json_option
@click.pass_obj
def dlq_drop(op: Operator, entry: str, reason: str, as_json: bool) -> None:
    """Take an entry off the queue without acting on it; the reason is recorded on its run."""
    control.drop_dead_letter(entry, reason=reason, registry=op.registry())
    if as_json:
        _echo_json({"entry_id": entry, "dropped": True, "reason": reason})
    else:
        click.echo(f"dropped entry {entry}")


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of the ``saga`` console script and ``python -m saga``."""
    cli.main(args=None if argv is None else list(argv), prog_name="saga")


__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED_CHECK",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Operator",
    "cli",
    "exit_code_for",
    "main",
]

"""The ``saga`` command: inspect runs and dead letters, and act on them.

Each command is a thin call into the library: reading commands call :class:`~saga.store.RedisStore`
or :mod:`saga.control`, acting commands (``resume``, ``cancel``, ``dlq retry``, ``dlq drop``) call
one function of :mod:`saga.control`. Every command prints a table for people, or JSON on stdout
with ``--json`` for scripts. Errors are one line, ``error: ...`` on stderr, and a named exit code:

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
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.exceptions import NoArgsIsHelpError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EntryNotFound, RunNotFound, SagaError, StoreUnavailable
from .state import SagaState, Status

if TYPE_CHECKING:
    from .store import RedisStore

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_ERROR = 5

#: The module ``--app`` imports when neither it nor ``SAGA_APP`` says otherwise.
DEFAULT_APP = "workers"
APP_ENVVAR = "SAGA_APP"
#: Connection retries of the CLI's store: an unreachable Redis fails in about a second.
STORE_RETRIES = 1
#: Line width when stdout is not a terminal (and ``COLUMNS`` is not set): wide enough that a
#: table row stays on one line, for grep and awk.
PIPE_WIDTH = 4096

_STATUS_STYLE = {
    Status.PENDING: "cyan", Status.RUNNING: "cyan", Status.COMPENSATING: "yellow",
    Status.COMPLETED: "green", Status.COMPENSATED: "yellow", Status.FAILED: "red",
}
# event fields every event carries; the events table shows the others as details
_EVENT_FIELDS = ("type", "run_id", "version", "at", "step", "name")


# --- shared state, errors ---------------------------------------------------------------------


@dataclass
class Operator:
    """What every command of one invocation shares: where Redis is, which module defines the
    sagas, whether to show tracebacks, and the store (connected on first use)."""

    redis_url: str | None = None
    app: str = DEFAULT_APP
    debug: bool = False
    _store: RedisStore | None = field(default=None, repr=False)

    def store(self) -> RedisStore:
        """The store named by ``--redis-url`` (else ``SAGA_REDIS_URL``), with few retries."""
        if self._store is None:
            from .settings import get_settings
            from .store import RedisStore

            s = get_settings()
            self._store = RedisStore(self.redis_url or s.redis_url, prefix=s.key_prefix,
                                     retention_seconds=s.retention_seconds,
                                     dispatch_timeout=s.dispatch_timeout, retries=STORE_RETRIES)
        return self._store

    def load_app(self) -> None:
        """Import ``--app`` so its sagas are defined here, talking to the same Redis as the CLI."""
        from . import control
        from .settings import get_settings

        if self.redis_url:
            # the sagas' own stores and the Celery app read the settings: point them here too
            os.environ["SAGA_REDIS_URL"] = self.redis_url
            get_settings.cache_clear()
        control.load_app(self.app)


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

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
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


# --- output -----------------------------------------------------------------------------------


def _console() -> Console:
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=PIPE_WIDTH if piped else None)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _compact(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(at: str, precision: int = 19) -> str:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM:SS`` (19) or with milliseconds (23)."""
    return at[:precision].replace("T", " ") if at else "-"


def _status(status: Status) -> str:
    return f"[{_STATUS_STYLE[status]}]{status.value}[/]"


def _error_text(state: SagaState, attempts: bool = False) -> str:
    e = state.error
    if e is None:
        return ""
    tries = f" (after {e.attempts} attempt{'s' if e.attempts != 1 else ''})" if attempts else ""
    return f"{e.type} at {e.name}: {e.message}{tries}"


def payload_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What changed from one payload to the next.

    ``{"added": {key: new}, "removed": {key: old}, "changed": {key: {"old": old, "new": new}}}``,
    each sorted by key.
    """
    return {
        "added": {k: after[k] for k in sorted(after.keys() - before.keys())},
        "removed": {k: before[k] for k in sorted(before.keys() - after.keys())},
        "changed": {k: {"old": before[k], "new": after[k]}
                    for k in sorted(before.keys() & after.keys()) if before[k] != after[k]},
    }


def history_entries(history: Sequence[SagaState]) -> list[dict[str, Any]]:
    """Every version with the payload changes from the version before (from nothing for v1)."""
    entries: list[dict[str, Any]] = []
    previous: Mapping[str, Any] = {}
    for state in history:
        entries.append({"version": state.version, "status": state.status.value,
                        "current_step": state.current_step, "at": state.updated_at,
                        "changes": payload_changes(previous, state.payload)})
        previous = state.payload
    return entries


def _changes_text(changes: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"+ {k} = {_compact(v, 60)}" for k, v in changes["added"].items()]
    lines += [f"- {k} (was {_compact(v, 60)})" for k, v in changes["removed"].items()]
    lines += [f"~ {k}: {_compact(v['old'], 30)} -> {_compact(v['new'], 30)}" for k, v in changes["changed"].items()]
    return escape("\n".join(lines)) if lines else "[dim]no change[/]"


def _event_details(event: Mapping[str, Any]) -> str:
    """The fields of an event beyond the common ones, as ``key=value`` (``--json`` has them whole)."""
    parts = []
    for key, value in event.items():
        if key in _EVENT_FIELDS:
            continue
        if key == "hash" and isinstance(value, str):
            text = value[:12] + "…"
        elif key == "error" and isinstance(value, Mapping):
            text = f"{value.get('type')}: {value.get('message')}"
        elif key == "entry" and isinstance(value, Mapping):
            text = str(value.get("id"))
        elif isinstance(value, str):
            text = value if len(value) <= 80 else value[:79] + "…"
        else:
            text = _compact(value)
        parts.append(f"{key}={text}")
    return escape(" ".join(parts))


# --- the commands -----------------------------------------------------------------------------

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts).")


@click.group(cls=_SagaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="SAGA_REDIS_URL", metavar="URL",
              help="The coordinator's Redis  [env: SAGA_REDIS_URL; default: redis://127.0.0.1:6379/0]")
@click.option("--app", "app", envvar=APP_ENVVAR, default=DEFAULT_APP, show_default=True, metavar="MODULE",
              help="Module defining your sagas, imported by resume, cancel and dlq retry  [env: SAGA_APP]")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, app: str, debug: bool) -> None:
    """Inspect and operate saga runs and the dead-letter queue."""
    ctx.obj = Operator(redis_url=redis_url, app=app, debug=debug)


@cli.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status], case_sensitive=False),
              help="Only runs with this status.")
@click.option("--saga", "saga_name", metavar="NAME", help="Only runs of this saga.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many runs.")
@_json_option
@click.pass_obj
def list_command(op: Operator, status: str | None, saga_name: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first."""
    from . import control

    runs = control.list_runs(status=status and status.lower(), saga=saga_name, limit=limit, store=op.store())
    if as_json:
        _echo_json([s.to_dict() for s in runs])
        return
    console = _console()
    if not runs:
        console.print("no runs")
        return
    table = _table("run", "saga", "status", "step", "version", "updated", "last checkpoint", "error")
    for s in runs:
        last = s.checkpoints[-1].name if s.checkpoints else "-"
        table.add_row(s.id, escape(s.saga), _status(s.status), str(s.current_step), str(s.version),
                      _when(s.updated_at), escape(last), escape(_error_text(s)))
    console.print(table)


@cli.command()
@click.argument("run")
@click.option("--version", type=click.IntRange(min=1), metavar="N", help="The state at version N (default: latest).")
@_json_option
@click.pass_obj
def show(op: Operator, run: str, version: int | None, as_json: bool) -> None:
    """A run's state at its latest version, or at any version with --version."""
    store = op.store()
    latest = store.get(run)
    state = latest
    if version is not None and version != latest.version:
        if version > latest.version:
            _fail(f"run {run} has versions 1..{latest.version}; there is no version {version}", EXIT_NOT_FOUND)
        state = store.at_version(run, version)
    if as_json:
        _echo_json(state.to_dict())
        return
    console = _console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    which = "latest" if state.version == latest.version else f"latest is {latest.version}"
    for label, value in (("run", state.id), ("saga", escape(state.saga)), ("status", _status(state.status)),
                         ("version", f"{state.version} ({which})"), ("current step", str(state.current_step)),
                         ("created", _when(state.created_at, 23)), ("updated", _when(state.updated_at, 23)),
                         ("error", escape(_error_text(state, attempts=True)) or "-")):
        grid.add_row(label, value)
    console.print(grid)
    console.print("\n[bold]payload[/]")
    console.print(json.dumps(dict(state.payload), indent=2, sort_keys=True, ensure_ascii=False), markup=False)
    console.print("\n[bold]checkpoints[/]")
    if not state.checkpoints:
        console.print("none")
        return
    table = _table("step", "name", "committed", "payload hash")
    for c in state.checkpoints:
        table.add_row(str(c.step), escape(c.name), _when(c.at, 23), c.hash)
    console.print(table)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def history(op: Operator, run: str, as_json: bool) -> None:
    """Every version of a run, with what changed in the payload from one to the next."""
    entries = history_entries(op.store().history(run))
    if as_json:
        _echo_json(entries)
        return
    table = _table("version", "at", "status", "step", "payload changes")
    for e in entries:
        table.add_row(str(e["version"]), _when(e["at"], 23), _status(Status(e["status"])), str(e["current_step"]),
                      _changes_text(e["changes"]))
    _console().print(table)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def events(op: Operator, run: str, as_json: bool) -> None:
    """Every event of a run, oldest first."""
    log = op.store().events(run)
    if as_json:
        _echo_json(log)
        return
    table = _table("version", "at", "event", "step", "details")
    for e in log:
        step = f"{e['step']} {e.get('name', '')}" if "step" in e else ""
        table.add_row(str(e.get("version", "")), _when(e.get("at", ""), 23), escape(str(e.get("type", ""))),
                      escape(step), _event_details(e))
    _console().print(table)


@cli.command()
@click.argument("run")
@_json_option
@click.pass_obj
def verify(op: Operator, run: str, as_json: bool) -> None:
    """Check a run's records: the state rebuilt from its events equals the stored state, and
    every checkpoint hash verifies. Exit 1 if not."""
    from . import control

    problems = control.verify(run, store=op.store())
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
    from . import control

    op.load_app()
    state = control.resume(run, reason=reason, store=op.store())
    if as_json:
        _echo_json(state.to_dict())
        return
    click.echo(f"run {run} resumed: {state.status.value} at step {state.current_step}, version {state.version}")


@cli.command()
@click.argument("run")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the saga.cancelled event.")
@_json_option
@click.pass_obj
def cancel(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Stop a run's forward progress and compensate the steps that committed (imports --app)."""
    from . import control

    op.load_app()
    state = control.cancel(run, reason=reason, store=op.store())
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
    entries = op.store().dead_letters()
    if as_json:
        _echo_json(entries)
        return
    console = _console()
    if not entries:
        console.print("the dead-letter queue is empty")
        return
    table = _table("entry", "saga", "kind", "step", "error", "attempts", "at")
    for e in entries:
        table.add_row(escape(str(e.get("id"))), escape(str(e.get("saga"))), escape(str(e.get("kind"))),
                      escape(str(e.get("step"))), escape(f"{e.get('error_type')}: {e.get('error_message')}"),
                      str(e.get("attempts")), _when(str(e.get("at", ""))))
    console.print(table)


@dlq.command("retry")
@click.argument("entry")
@_json_option
@click.pass_obj
def dlq_retry(op: Operator, entry: str, as_json: bool) -> None:
    """Act on an entry: continue a failed unwind, or start a compensated run again (imports --app)."""
    from . import control

    op.load_app()
    run_id = control.retry_dead_letter(entry, store=op.store())
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
    from . import control

    control.drop_dead_letter(entry, reason=reason, store=op.store())
    if as_json:
        _echo_json({"entry_id": entry, "dropped": True, "reason": reason})
    else:
        click.echo(f"dropped entry {entry}")


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of the ``saga`` console script and ``python -m saga``."""
    cli.main(args=None if argv is None else list(argv), prog_name="saga")


__all__ = [
    "EXIT_ERROR", "EXIT_FAILED_CHECK", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE",
    "Operator", "cli", "exit_code_for", "history_entries", "main", "payload_changes",
]

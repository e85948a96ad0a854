"""The ``saga`` command: inspect runs and dead letters, and act on them.

Each command is a thin call into the library: reading commands read the registry's store or
call :mod:`saga.control.runs` (``saga tail`` follows the store: :mod:`saga.cli.tail`), acting
commands (``resume``, ``cancel``, ``dlq retry``, ``dlq drop``) call one function of
:mod:`saga.control.runs`; :mod:`saga.cli.render` prints. A run id may be a unique prefix of one. Every command prints a
table for people, or JSON on stdout with ``--json`` for scripts. Errors are one line,
``error: ...`` on stderr, and a named exit code:

=====================  ====  ==============================================================
name                   code  when
=====================  ====  ==============================================================
``EXIT_OK``            0     done
``EXIT_FAILED_CHECK``  1     ``saga verify`` found problems with a run's records
``EXIT_USAGE``         2     a bad command line (click's own code)
``EXIT_NOT_FOUND``     3     no such run, version or dead-letter entry
``EXIT_UNAVAILABLE``   4     Redis (or the SQL archive) cannot be reached
``EXIT_ERROR``         5     an unexpected error: a bug (or damaged data); report it
``EXIT_REFUSED``       6     refused: the action does not apply to the run as it is now (resume
                             or cancel of a finished run, ...), or the input, settings or
                             ``--app`` cannot be used; change something and try again
``EXIT_PARTIAL``        7     an answer that may be incomplete: ``saga list`` from the archive
                             alone while Redis cannot be reached, taking in unfinished runs
                             (a one-line warning on stderr says so)
``EXIT_INTERRUPTED``   130   ``saga tail`` ended by Ctrl-C
=====================  ====  ==============================================================

Before 6 existed, a refusal exited with 5; now 5 means only an error the library did not
foresee (:func:`exit_code_for` maps the errors). An unexpected error also prints one line (plus
a hint to rerun with ``--debug`` and report it); ``saga --debug ...`` shows its traceback.
The CLI configures one registry from the ``SAGA_*`` settings (and ``--redis-url``) before it
imports ``--app``, so the sagas it loads and every action use the same store and settings as
the workers.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable
from typing import Any

import click
from click.exceptions import NoArgsIsHelpError

from ..errors import SagaError, visible
from ..registry import Registry
from ..settings import DEFAULT_REDIS_URL
from .act import cancel, compensate, dlq, resume
from .archive import archive, db
from .common import (
    DEFAULT_APP,
    EXIT_ERROR,
    EXIT_FAILED_CHECK,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Operator,
    exit_code_for,
    fail,
    usage_failure,
)
from .inspect import events, history, list_command, show, stats, verify
from .render import history_entries, payload_changes
from .tail import EXIT_INTERRUPTED, tail


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
            usage_failure(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, NoArgsIsHelpError, BrokenPipeError):
            raise  # click shows help, exits, or quietly ends a closed pipe (`saga events RUN | head`)
        except click.UsageError as exc:
            usage_failure(exc)
        except click.ClickException:
            raise
        except SagaError as exc:
            self._show_traceback(ctx)
            fail(str(exc) or type(exc).__name__, exit_code_for(exc))
        except Exception as exc:
            if self._show_traceback(ctx):
                fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)
            fail(
                f"unexpected {type(exc).__name__}: {exc} (a bug: rerun with --debug to see the traceback, and "
                "report it)",
                EXIT_ERROR,
            )

    @staticmethod
    def _show_traceback(ctx: click.Context) -> bool:
        debug = isinstance(ctx.obj, Operator) and ctx.obj.debug
        exc = sys.exc_info()[1]
        if debug and exc is not None:
            # the frames, then the error on one line: its message may carry untrusted text
            frames = "".join(traceback.format_tb(exc.__traceback__)).splitlines()
            lines = ["Traceback (most recent call last):", *frames, f"{type(exc).__name__}: {exc}"]
            click.echo("".join(f"{visible(line)}\n" for line in lines), err=True, nl=False)
        return debug


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
    help="Module defining your sagas (imported from the current directory first, as celery -A does), "
    "imported by resume, cancel, compensate and dlq retry  [env: SAGA_APP]",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.version_option(package_name="saga", prog_name="saga", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, app: str, debug: bool) -> None:
    """Inspect and operate saga runs and the dead-letter queue."""
    given = ctx.obj if isinstance(ctx.obj, Registry) else None
    ctx.obj = Operator(redis_url=redis_url, app=app, debug=debug, given=given)


for command in (list_command, stats, show, history, events, tail, verify, resume, cancel, compensate, dlq, archive, db):
    cli.add_command(command)


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of the ``saga`` console script and ``python -m saga``."""
    cli.main(args=None if argv is None else list(argv), prog_name="saga")


__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED_CHECK",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Operator",
    "cli",
    "exit_code_for",
    "history_entries",
    "main",
    "payload_changes",
]

"""The ``saga`` commands of the SQL archive: ``archive run|status|purge`` and ``db upgrade``."""

from __future__ import annotations

import signal
from types import FrameType

import click

from ..control import archive as archive_ops
from ..core import Status
from . import render as cli_render
from .common import Operator, echo_json, json_option


@click.group()
def archive() -> None:
    """The SQL archive: copy runs into it, watch its lag, purge old runs."""


@archive.command("run")
@click.option("--once", is_flag=True, help="Copy until the feed is empty, then exit.")
@click.pass_obj
def archive_run(op: Operator, once: bool) -> None:
    """Copy runs from Redis to the archive, as an elected archiver (the workers run one too)."""
    archiver = archive_ops.archiver(op.registry())
    if once:
        handled = archiver.drain()
        click.echo(f"archived: {handled} feed entries handled, the feed is empty")
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        archiver.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo("archiving; Ctrl-C stops after the current batch")
    archiver.run_forever()


@archive.command("status")
@json_option
@click.pass_obj
def archive_status(op: Operator, as_json: bool) -> None:
    """The feed of each bucket: entries waiting, age of the oldest, entries parked."""
    registry = op.registry()
    rows = archive_ops.feed_status(registry)
    parked = archive_ops.parked_feed_entries(registry) if any(r.parked for r in rows) else []
    if as_json:
        echo_json({"buckets": [vars(r) for r in rows], "parked": parked})
    else:
        cli_render.print_feed_status(rows, parked)


@archive.command("purge")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Finished more than DAYS days ago.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status if s.terminal], case_sensitive=False),
    help="Only runs with this status (repeatable; default: every finished status).",
)
@json_option
@click.pass_obj
def archive_purge(op: Operator, days: float, statuses: tuple[str, ...], as_json: bool) -> None:
    """Delete finished runs from the archive (never an unfinished one), in batches. Redis is left
    alone: a purged run archived less than SAGA_HOT_RETENTION_SECONDS ago is still there (`saga
    show` finds it, `saga list` no longer does) until it expires, as every archived run does."""
    registry = op.registry()
    removed = archive_ops.purge(days, [s.lower() for s in statuses], registry=registry)
    hot = registry.settings.hot_retention_seconds
    if as_json:
        echo_json({"purged": removed, "hot_retention_seconds": hot})
        return
    click.echo(f"purged {removed} runs from the archive")
    click.echo(
        f"Redis is not purged: a finished run stays there SAGA_HOT_RETENTION_SECONDS ({hot:g} s) after it was "
        "archived, so until then `saga show` still finds a purged run while `saga list` (the archive) does not"
    )


@click.group()
def db() -> None:
    """The archive's schema."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(op: Operator) -> None:
    """Create or migrate the archive's tables to this version's schema."""
    revision = archive_ops.upgrade(op.registry())
    click.echo(f"the archive is at schema {revision}")

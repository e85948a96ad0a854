"""The ``saga`` commands that read: list, stats, show, history, events, verify."""

from __future__ import annotations

import click

from . import archive_ops, cli_render, control
from .cli_common import (
    EXIT_ERROR,
    EXIT_FAILED_CHECK,
    EXIT_NOT_FOUND,
    Operator,
    echo_json,
    fail,
    json_option,
    one_line,
)
from .state import Status


@click.command("list")
@click.option(
    "--status", type=click.Choice([s.value for s in Status], case_sensitive=False), help="Only runs with this status."
)
@click.option("--saga", "saga_name", metavar="NAME", help="Only runs of this saga.")
@click.option("--version", type=click.IntRange(min=1), metavar="N", help="Only runs of version N of their saga.")
@click.option("--parked", is_flag=True, help="Only parked runs (waiting for a worker with their definition), and why.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many runs.")
@click.option(
    "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag (repeatable: all). Archive."
)
@click.option("--since", metavar="WHEN", help="Only runs started since WHEN: an ISO date or a span (2h, 7d). Archive.")
@click.option("--until", metavar="WHEN", help="Only runs started before WHEN. Archive.")
@click.option("--failed-step", metavar="NAME", help="Only runs that failed at step NAME. Archive.")
@click.option(
    "--cursor", default="", metavar="CURSOR", help="Go on after this run's cursor (from a previous page). Archive."
)
@json_option
@click.pass_obj
def list_command(
    op: Operator,
    status: str | None,
    saga_name: str | None,
    version: int | None,
    parked: bool,
    limit: int,
    tags: tuple[str, ...],
    since: str | None,
    until: str | None,
    failed_step: str | None,
    cursor: str,
    as_json: bool,
) -> None:
    """Runs, newest first (with --parked: longest parked first). With an archive
    (SAGA_ARCHIVE_URL) the listing comes from it, and can filter by tag, time and failed step."""
    registry = op.registry()
    archive_only = {"--tag": tags, "--since": since, "--until": until, "--failed-step": failed_step, "--cursor": cursor}
    if registry.archive is not None and not parked:
        page = archive_ops.find_runs(
            status=status.lower() if status else (),
            saga=saga_name,
            tags=_tags(tags),
            since=since,
            until=until,
            failed_step=failed_step,
            version=version,
            limit=limit,
            cursor=cursor,
            registry=registry,
        )
        if as_json:
            echo_json([{**run.to_dict(), "cursor": page.cursors[i]} for i, run in enumerate(page.runs)])
        else:
            cli_render.print_archived_runs(page.runs, page.cursor)
        return
    given = [name for name, value in archive_only.items() if value]
    if given:
        fail(f"{given[0]} searches the archive: set SAGA_ARCHIVE_URL (see README 'The archive')", EXIT_ERROR)
    runs = control.list_runs(
        status=status and status.lower(), saga=saga_name, version=version, parked=parked, limit=limit, registry=registry
    )
    reasons = control.parked_reasons(registry) if parked else {}
    if as_json:
        echo_json([{**s.to_dict(), **({"parked": reasons[s.id]} if s.id in reasons else {})} for s in runs])
    else:
        cli_render.print_runs(runs, reasons)


@click.command()
@click.option("--since", metavar="WHEN", help="Only runs started since WHEN: an ISO date or a span (2h, 7d). Archive.")
@json_option
@click.pass_obj
def stats(op: Operator, since: str | None, as_json: bool) -> None:
    """How many runs each saga version has, by status: a version with none unfinished can go.
    With an archive, counted there, with the steps where runs fail most."""
    registry = op.registry()
    if registry.archive is not None:
        summary = archive_ops.archive_stats(since, registry=registry)
        if as_json:
            failing = [{"saga": saga, "step": step, "runs": n} for saga, step, n in summary.failing_steps]
            echo_json({"runs": archive_ops.version_rows(summary, registry), "failing_steps": failing})
        else:
            cli_render.print_stats(archive_ops.version_rows(summary, registry))
            cli_render.print_failing_steps(summary.failing_steps)
        return
    if since:
        fail("--since counts the archive: set SAGA_ARCHIVE_URL (see README 'The archive')", EXIT_ERROR)
    rows = control.stats(registry)
    if as_json:
        echo_json(rows)
    else:
        cli_render.print_stats(rows)


@click.command()
@click.argument("run")
@click.option("--version", type=click.IntRange(min=1), metavar="N", help="The state at version N (default: latest).")
@json_option
@click.pass_obj
def show(op: Operator, run: str, version: int | None, as_json: bool) -> None:
    """A run's state at its latest version, or at any version with --version."""
    store = op.registry().tiers
    latest = store.get(run)
    state = latest
    if version is not None and version != latest.version:
        if version > latest.version:
            fail(f"run {run} has versions 1..{latest.version}; there is no version {version}", EXIT_NOT_FOUND)
        state = store.at_version(run, version)
    if as_json:
        echo_json(state.to_dict())
    else:
        cli_render.print_state(state, latest.version)


@click.command()
@click.argument("run")
@json_option
@click.pass_obj
def history(op: Operator, run: str, as_json: bool) -> None:
    """Every version of a run, with what changed in the payload from one to the next."""
    entries = cli_render.history_entries(op.registry().tiers.history(run))
    if as_json:
        echo_json(entries)
    else:
        cli_render.print_history(entries)


@click.command()
@click.argument("run")
@json_option
@click.pass_obj
def events(op: Operator, run: str, as_json: bool) -> None:
    """Every event of a run, oldest first."""
    log = op.registry().tiers.events(run)
    if as_json:
        echo_json(log)
    else:
        cli_render.print_events(log)


@click.command()
@click.argument("run")
@json_option
@click.pass_obj
def verify(op: Operator, run: str, as_json: bool) -> None:
    """Check a run's records: the state rebuilt from its events equals the stored state, and
    every checkpoint hash verifies. Exit 1 if not."""
    problems = control.verify(run, registry=op.registry())
    if as_json:
        echo_json({"run_id": run, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"run {run} does not verify:")
        for p in problems:
            click.echo(f"  - {one_line(p)}")
    else:
        click.echo(f"ok: run {run} verifies (rebuilt from its events = stored state; every checkpoint hash matches)")
    if problems:
        raise click.exceptions.Exit(EXIT_FAILED_CHECK)


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--tag takes KEY=VALUE, got {pair!r}", EXIT_ERROR)
        tags[key] = value
    return tags

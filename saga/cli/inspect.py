"""The ``saga`` commands that read: list, stats, show, history, events, verify."""

from __future__ import annotations

from datetime import datetime
from itertools import islice

import click

from ..control import archive as archive_ops
from ..control import runs as control
from ..core import SagaState, Status, parse_iso
from ..engine import runs
from ..errors import RunNotFound, StoreUnavailable
from ..registry import Registry
from . import render as cli_render
from .common import (
    EXIT_FAILED_CHECK,
    EXIT_NOT_FOUND,
    EXIT_PARTIAL,
    EXIT_REFUSED,
    Operator,
    echo_json,
    fail,
    json_option,
    one_line,
)


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
@click.option("--since", metavar="WHEN", help="Only runs started since WHEN: an ISO date or a span (2h, 7d).")
@click.option("--until", metavar="WHEN", help="Only runs started before WHEN.")
@click.option("--failed-step", metavar="NAME", help="Only runs that failed at step NAME. Archive.")
@click.option("--cursor", default="", metavar="CURSOR", help="Go on after this cursor (printed by the previous page).")
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
    """Runs, newest first, a page at a time (with --parked: longest parked first). With an
    archive (SAGA_ARCHIVE_URL) the listing comes from it, and can filter by tag and failed step;
    without, it lists the runs in Redis, newest to enter their status first."""
    registry = op.registry()
    if registry.archive is not None and not parked:
        down = _redis_down(registry)
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
        if down:
            _archive_alone(down, status)
        return
    archive_only = {"--tag": tags, "--failed-step": failed_step}
    given = [name for name, value in archive_only.items() if value]
    if given:
        fail(f"{given[0]} searches the archive: set SAGA_ARCHIVE_URL (see README 'The archive')", EXIT_REFUSED)
    if parked:
        paged = {"--since": since, "--until": until, "--cursor": cursor}
        if any(paged.values()):
            option = next(name for name, value in paged.items() if value)
            fail(f"--parked lists every parked run; {option} pages the listing of the others", EXIT_REFUSED)
        waiting = control.list_runs(
            status=status and status.lower(),
            saga=saga_name,
            version=version,
            parked=True,
            limit=limit,
            registry=registry,
        )
        reasons = control.parked_reasons(registry)
        if as_json:
            echo_json([{**s.to_dict(), **({"parked": reasons[s.id]} if s.id in reasons else {})} for s in waiting])
        else:
            cli_render.print_runs(waiting, reasons)
        return
    wanted = control.RunFilter(status and status.lower(), saga_name, version)
    window = (
        archive_ops.parse_when(since) if since else None,
        archive_ops.parse_when(until) if until else None,
    )
    rows, more = _hot_page(registry, wanted, limit, cursor, window)
    if as_json:
        echo_json([{**state.to_dict(), "cursor": after} for state, after in rows])
    else:
        cli_render.print_runs([state for state, _ in rows], more=more)


def _redis_down(registry: Registry) -> str:
    """Why Redis cannot be reached ('' when it answers): a listing from the archive says so."""
    try:
        registry.store.keyspace.ping()
    except StoreUnavailable as exc:
        return str(exc)
    return ""


def _archive_alone(why: str, status: str | None) -> None:
    """After a listing the archive answered alone, Redis being down: one line on stderr naming
    the tier that did not answer and the one that did, and how complete the answer is. A listing
    of finished runs only is complete (a finished run's row is final; only runs finished in the
    last moment before Redis went away may not be copied yet): exit 0. One that takes in
    unfinished runs may miss runs still moving in Redis, or show them at an older status:
    :data:`EXIT_PARTIAL`."""
    finished_only = status is not None and Status(status.lower()).terminal
    if finished_only:
        how = "finished runs are final there, so the listing is complete up to the archiver's last copy"
    else:
        how = (
            "runs still moving in Redis may be missing or shown at an older status, so the listing may be "
            f"incomplete (exit {EXIT_PARTIAL}; --status completed, compensated or failed lists finished runs only)"
        )
    click.echo(
        one_line(f"warning: Redis does not answer ({why}); this listing comes from the SQL archive alone: {how}"),
        err=True,
    )
    if not finished_only:
        raise click.exceptions.Exit(EXIT_PARTIAL)


def _hot_page(
    registry: Registry,
    wanted: control.RunFilter,
    limit: int,
    cursor: str,
    window: tuple[datetime | None, datetime | None],
) -> tuple[list[tuple[SagaState, str]], str]:
    """A page of the runs in Redis, newest to enter its status first, after ``cursor``: each
    with its cursor (``<when it entered its status>/<run id>``), and the cursor of the next page
    ('' when none follows). A run started since ``window[0]`` entered its status since then too,
    so that bounds the index read; ``window[1]`` is checked on each run."""
    store = registry.store
    after: tuple[float, str] | None = None
    if cursor:
        score, _, last = cursor.partition("/")
        try:
            after = (float(score), last)
        except ValueError:
            fail(
                f"{one_line(cursor)[:40]!r} is not a listing cursor: pass the one a page printed, or none", EXIT_REFUSED
            )
    since, until = window
    statuses = [Status(wanted.status)] if wanted.status else list(Status)
    entries = store.indexes.newest_entries(
        statuses, limit + 1, low=since.timestamp() if since else None, high=after[0] if after else None
    )
    found: list[tuple[SagaState, str]] = []
    while len(found) <= limit:
        batch = list(islice(entries, limit + 1 - len(found)))
        if not batch:
            break
        batch = [(r, at) for r, at in batch if after is None or (at, r) < after]
        states = store.reads.snapshots([r for r, _ in batch])
        store.indexes.forget_runs([r for (r, _), state in zip(batch, states, strict=True) if state is None])
        found += [
            (state, f"{at!r}/{r}")
            for (r, at), state in zip(batch, states, strict=True)
            if state is not None and wanted.matches(state) and _started_in(state, since, until)
        ]
    return found[:limit], found[limit - 1][1] if len(found) > limit else ""


def _started_in(state: SagaState, since: datetime | None, until: datetime | None) -> bool:
    started = parse_iso(state.created_at)
    return (since is None or started >= since.timestamp()) and (until is None or started < until.timestamp())


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
        fail("--since counts the archive: set SAGA_ARCHIVE_URL (see README 'The archive')", EXIT_REFUSED)
    rows = control.stats(registry)
    if as_json:
        echo_json(rows)
    else:
        cli_render.print_stats(rows)


@click.command()
@click.argument("run", required=False)
@click.option("--key", metavar="KEY", help="The run started with business key KEY (with --saga).")
@click.option("--saga", "saga_name", metavar="NAME", help="The saga of --key.")
@click.option("--version", type=click.IntRange(min=1), metavar="N", help="The state at version N (default: latest).")
@json_option
@click.pass_obj
def show(
    op: Operator, run: str | None, key: str | None, saga_name: str | None, version: int | None, as_json: bool
) -> None:
    """A run's state at its latest version, or at any version with --version. RUN is a run id (or
    a unique prefix of one); --key KEY --saga NAME finds the run started with that key. With
    SAGA_FLOWER_URL set, also where Flower lists the run's tasks."""
    registry = op.registry()
    store = registry.tiers
    if key is None:
        if run is None or saga_name is not None:
            raise click.UsageError(
                "give a RUN id, or --key KEY --saga NAME" if run is None else "--saga goes with --key"
            )
        run_id = op.run_id(run)
        latest = store.get(run_id)
    else:
        if run is not None or saga_name is None:
            raise click.UsageError("--key KEY takes --saga NAME, and no RUN id")
        run_id = runs.run_id_for_key(saga_name, key)
        try:
            latest = store.get(run_id)
        except RunNotFound:
            fail(f"no run of saga {saga_name!r} was started with key {key!r} (or it has expired)", EXIT_NOT_FOUND)
    state = latest
    if version is not None and version != latest.version:
        if version > latest.version:
            fail(f"run {run_id} has versions 1..{latest.version}; there is no version {version}", EXIT_NOT_FOUND)
        state = store.at_version(run_id, version)
    flower = _flower(registry.settings.flower_url, run_id)
    record = cli_render.run_record(store.events(run_id), state.version)
    if as_json:
        echo_json({**state.to_dict(), **record, **({"flower": flower} if flower else {})})
    else:
        cli_render.print_state(state, latest.version, flower, record)


def _flower(base: str, run_id: str) -> dict[str, str] | None:
    """Where Flower shows a run: its first task (whose task id is the run id; its page links on
    to the tasks that followed), and the tasks page with the search that lists every task of
    the run (each message carries the run id as keyword ``run``: :func:`saga.tasks.call_kwargs`).
    Flower's tasks page takes only a state, worker or task name from its URL, so the search is
    given to paste into its search box."""
    if not base:
        return None
    base = base.rstrip("/")
    return {"first_task": f"{base}/task/{run_id}", "tasks": f"{base}/tasks", "search": f"kwargs:run={run_id}"}


@click.command()
@click.argument("run")
@json_option
@click.pass_obj
def history(op: Operator, run: str, as_json: bool) -> None:
    """Every version of a run, with what changed in the payload from one to the next."""
    entries = cli_render.history_entries(op.registry().tiers.history(op.run_id(run)))
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
    log = op.registry().tiers.events(op.run_id(run))
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
    run = op.run_id(run)
    problems = control.verify(run, registry=op.registry())
    if as_json:
        echo_json({"run_id": run, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"run {one_line(run)} does not verify:")
        for p in problems:
            click.echo(f"  - {one_line(p)}")
    else:
        click.echo(
            f"ok: run {one_line(run)} verifies (rebuilt from its events = stored state; every checkpoint hash matches)"
        )
    if problems:
        raise click.exceptions.Exit(EXIT_FAILED_CHECK)


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--tag takes KEY=VALUE, got {pair!r}", EXIT_REFUSED)
        tags[key] = value
    return tags

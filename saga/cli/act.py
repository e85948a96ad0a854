"""The ``saga`` commands that act on runs: resume, cancel, compensate, and the dead-letter queue."""

from __future__ import annotations

import click

from ..control import runs as control
from ..core import SagaState, Status
from ..errors import visible
from ..registry import Registry
from . import render as cli_render
from .common import Operator, echo_json, json_option


@click.command()
@click.argument("run")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the saga.resumed event.")
@json_option
@click.pass_obj
def resume(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Resume an unfinished run at its cursor (imports --app)."""
    run = op.run_id(run)
    state = control.resume(run, reason=reason, registry=op.load_app())
    if as_json:
        echo_json(state.to_dict())
    else:
        click.echo(
            f"run {visible(run)} resumed: {state.status.value} at step {state.current_step}, version {state.version}"
        )


@click.command()
@click.argument("run")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the saga.cancelled event.")
@json_option
@click.pass_obj
def cancel(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Stop a run's forward progress and compensate the steps that committed (imports --app).
    With a step running, the cancel waits for it: it takes effect when that step ends, or
    within a lease if it hangs. --json says which: ``outcome`` is ``cancelled`` or
    ``cancel_requested``, ``waits_for`` the steps it waits for."""
    run = op.run_id(run)
    registry = op.load_app()
    state = control.cancel(run, reason=reason, registry=registry)
    took_effect = state.status in (Status.COMPENSATING, Status.COMPENSATED)
    waits_for = [] if took_effect else _running_steps(registry, state)
    if as_json:
        outcome = "cancelled" if took_effect else "cancel_requested"
        echo_json(
            {
                "run_id": run,
                "outcome": outcome,
                "status": state.status.value,
                "version": state.version,
                "waits_for": waits_for,
            }
        )
    elif took_effect:
        click.echo(f"run {visible(run)} cancelled: {state.status.value} (version {state.version})")
    else:
        steps = ", ".join(waits_for) or "the step running now"
        click.echo(
            f"run {visible(run)}: cancel requested; it takes effect when {steps} ends (or within a lease if it hangs)"
        )


def _running_steps(registry: Registry, state: SagaState) -> list[str]:
    """The steps a requested cancel waits for: those at the run's cursor (a parallel group's
    members) not committed yet."""
    shape = registry.store.reads.shape(state.id)
    if shape is None or state.current_step >= len(shape.steps):
        return []
    done = {c.step for c in state.checkpoints}
    return [shape.steps[i] for i in shape.stage(state.current_step) if i not in done]


@click.command()
@click.argument("run")
@click.option(
    "--reason", default="operator", show_default=True, help="Recorded in the saga.compensation_requested event."
)
@json_option
@click.pass_obj
def compensate(op: Operator, run: str, reason: str, as_json: bool) -> None:
    """Unwind an unfinished, parked or failed run: compensate its committed steps, newest first
    (imports --app; any loaded version's compensation of a step name serves)."""
    run = op.run_id(run)
    state = control.compensate(run, reason=reason, registry=op.load_app())
    if as_json:
        echo_json(state.to_dict())
    else:
        click.echo(f"run {visible(run)} compensating: {state.status.value} (version {state.version})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def dlq() -> None:
    """The dead-letter queue: steps and compensations that gave up."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many entries.")
@click.option("--cursor", default="", metavar="CURSOR", help="Go on after this entry's cursor (from a previous page).")
@json_option
@click.pass_obj
def dlq_list(op: Operator, limit: int, cursor: str, as_json: bool) -> None:
    """Dead-letter entries, oldest first, a page at a time (each JSON entry has its cursor)."""
    page = control.dead_letter_page(limit, cursor, registry=op.registry())
    if as_json:
        echo_json(page.entries)
    else:
        cli_render.print_dead_letters(page.entries, page.cursor)


@dlq.command("retry")
@click.argument("entry")
@json_option
@click.pass_obj
def dlq_retry(op: Operator, entry: str, as_json: bool) -> None:
    """Act on an entry: continue a failed unwind, or start a compensated run again (imports --app)."""
    run_id = control.retry_dead_letter(entry, registry=op.load_app())
    old_run = entry.rsplit(".", 1)[0]
    if as_json:
        echo_json({"entry_id": entry, "run_id": run_id, "new_run": run_id != old_run})
    elif run_id != old_run:
        click.echo(
            f"entry {visible(entry)} retried: started run {visible(run_id)} "
            f"with the original input of run {visible(old_run)}"
        )
    else:
        click.echo(f"entry {visible(entry)} retried: run {visible(run_id)} compensates again")


@dlq.command("drop")
@click.argument("entry")
@click.option("--reason", required=True, help="Why (recorded as an event on the run).")
@json_option
@click.pass_obj
def dlq_drop(op: Operator, entry: str, reason: str, as_json: bool) -> None:
    """Take an entry off the queue without acting on it; the reason is recorded on its run."""
    control.drop_dead_letter(entry, reason=reason, registry=op.registry())
    if as_json:
        echo_json({"entry_id": entry, "dropped": True, "reason": reason})
    else:
        click.echo(f"dropped entry {visible(entry)}")

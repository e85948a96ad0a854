"""``saga tail``: follow events as they are committed, of one run or of every run (of a saga).

A run's events are a list in Redis, appended by the script of each transition (and by
``begin.lua`` for started events), so following them is reading each watched run's list length
a few times a second (:data:`POLL_SECONDS`) and reading the events of a run whose list grew.
Which runs to watch: one run, given; or every run in flight when the tail starts, plus every run
that enters a status after that (a new run enters ``pending``) — found in the status indexes by
the time it entered its status. A watched run that reaches a terminal status is let go (it comes
back if it moves again, e.g. ``saga dlq retry`` resumes a failed unwind).

Ctrl-C ends the tail quietly with exit status 130.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import click

from ..core import Event, Status, codec, rebuild
from ..registry import Registry
from . import render as cli_render
from .common import Operator, json_option

#: Seconds between two reads of the watched runs.
POLL_SECONDS = 0.2
#: Seconds of status index entries read again at each poll: a run that entered its status up to
#: this long before the previous poll (a worker's clock a little behind ours) is still found.
MARGIN_SECONDS = 5.0
#: The exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
_IN_FLIGHT = (Status.PENDING, Status.RUNNING, Status.COMPENSATING)


@dataclass
class Follower:
    """What a tail has seen: per run, its saga and how many of its events were printed (or were
    there before the tail started), and which runs it watches."""

    registry: Registry
    saga: str | None = None
    printed: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    watching: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.time)
    started_us: int = field(default_factory=lambda: int(time.time() * 1_000_000))

    def seed(self) -> None:
        """Watch every run in flight now (of the saga), its events so far taken as seen."""
        store = self.registry.store
        self.since -= MARGIN_SECONDS
        ids = self._of_saga([run_id for run_id, _ in store.indexes.newest_entries(_IN_FLIGHT, 1000)])
        for run_id, count in zip(ids, store.indexes.event_counts(ids), strict=True):
            self.printed[run_id] = count
            self.watching.add(run_id)

    def poll(self) -> list[Event]:
        """The events committed since the last poll: of the watched runs, and of the runs that
        entered a status meanwhile, oldest first."""
        store = self.registry.store
        now = time.time()
        entered = [run_id for run_id, _ in store.indexes.newest_entries(list(Status), 1000, low=self.since)]
        self.since = now - MARGIN_SECONDS
        ids = sorted(self.watching | set(self._of_saga(entered)))
        grown = [r for r, n in zip(ids, store.indexes.event_counts(ids), strict=True) if n > self.printed.get(r, -1)]
        fresh: list[Event] = []
        for run_id, events in zip(grown, store.reads.logs(grown), strict=True):
            fresh += self._take(run_id, events)
        return sorted(fresh, key=lambda e: (str(e.get("at", "")), e.get("version", 0)))

    def follow_run(self, run_id: str) -> tuple[list[Event], bool]:
        """Run ``run_id``'s events not printed yet, and whether it is finished (a run that left
        Redis is: its whole log is read from the archive, once)."""
        store = self.registry.store
        count = store.indexes.event_counts([run_id])[0]
        if run_id not in self.printed:
            if count == 0:
                events = self.registry.tiers.events(run_id)
                self.names[run_id] = str(events[0].get("saga", ""))
                self.printed[run_id] = len(events)
                return events, True
            self.names[run_id] = (store.reads.labels([run_id])[0] or ("", 0))[0]
            self.printed[run_id] = 0
        if count <= self.printed[run_id]:
            return [], count < self.printed[run_id]  # fewer: its retention ended meanwhile
        fresh = self._take(run_id, store.reads.logs([run_id])[0])
        return fresh, run_id not in self.watching

    def _take(self, run_id: str, events: list[Event]) -> list[Event]:
        """The events of ``run_id`` not printed yet (of a run first seen now: those committed
        since the tail started), and watch it while it is unfinished."""
        if run_id in self.printed:
            fresh = events[self.printed[run_id] :]
        else:
            fresh = [e for e in events if codec.micros(str(e.get("at", ""))) >= self.started_us]
        self.printed[run_id] = len(events)
        if events and rebuild(events).status.terminal:
            self.watching.discard(run_id)
        elif events:
            self.watching.add(run_id)
        return fresh

    def _of_saga(self, run_ids: Sequence[str]) -> list[str]:
        """The runs of ``run_ids`` of the followed saga (all without one); their names learnt."""
        unknown = [r for r in dict.fromkeys(run_ids) if r not in self.names]
        for run_id, label in zip(unknown, self.registry.store.reads.labels(unknown), strict=True):
            if label is not None:
                self.names[run_id] = label[0]
        return [r for r in run_ids if r in self.names and (self.saga is None or self.names[r] == self.saga)]


def _show(follower: Follower, events: Sequence[Event], as_json: bool) -> None:
    if as_json:
        for event in events:
            saga = follower.names.get(str(event.get("run_id")), "")
            click.echo(json.dumps({"saga": saga, **event}, ensure_ascii=False))
    else:
        names = follower.names
        cli_render.print_lines([cli_render.event_line(e, names.get(str(e["run_id"]), "")) for e in events])


@click.command()
@click.argument("run", required=False)
@click.option("--saga", "saga_name", metavar="NAME", help="Only runs of this saga.")
@json_option
@click.pass_obj
def tail(op: Operator, run: str | None, saga_name: str | None, as_json: bool) -> None:
    """Follow events as they are committed: of RUN (its events so far first; ends when the run
    is finished), or of every run, or with --saga every run of saga NAME, from now on. With
    --json, one JSON object per line. Ctrl-C stops."""
    registry = op.registry()
    if run is not None and saga_name is not None:
        raise click.UsageError("give a RUN or --saga NAME, not both")
    follower = Follower(registry, saga_name)
    try:
        if run is not None:
            run_id = op.run_id(run)
            while True:
                events, finished = follower.follow_run(run_id)
                _show(follower, events, as_json)
                if finished:
                    return
                time.sleep(POLL_SECONDS)
        follower.seed()
        which = f"runs of saga {saga_name!r}" if saga_name else "every run"
        click.echo(f"following new events of {which}; Ctrl-C stops", err=True)
        while True:
            _show(follower, follower.poll(), as_json)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


__all__ = ["EXIT_INTERRUPTED", "Follower", "tail"]

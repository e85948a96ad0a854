"""The Celery apps of the parallel-group figure (:mod:`bench.group`).

* ``saga_app``: the saga defaults (:func:`saga.create_app`), broker and store at ``SAGA_REDIS_URL``,
  no result backend; it runs ``grouped5``: step 1 alone, steps 2-4 a parallel group ``fan``
  (each member returns a key of its own), step 5 alone once the whole group committed.
* ``chord_app``: the same broker and worker settings plus a Redis result backend (a chord needs
  one), results stored. Broker and backend are ``BENCH_CHORD_REDIS_URL`` (a Redis of its own);
  the store's Redis when unset. Its tasks make ``chain(a.si(), chord([b.si(), c.si(), d.si()],
  e.si()))``, the same shape with the same return values.

Workers: ``celery -A bench.group_app:saga_app worker --pool=prefork -c 2`` and the same with
``bench.group_app:chord_app``.
"""

from __future__ import annotations

import os
from typing import Any

from saga import Saga, StepContext, create_app, get_settings

#: Names the Redis of the chord variant (not a ``SAGA_*`` setting: the saga library never reads it).
CHORD_URL_ENV = "BENCH_CHORD_REDIS_URL"
#: The group's members.
MEMBERS = ("b", "c", "d")

saga_app = create_app("bench-group-saga")

_chord_url = os.environ.get(CHORD_URL_ENV) or get_settings().redis_url
chord_app = create_app(
    "bench-chord",
    broker_url=_chord_url,
    result_backend=_chord_url,
    task_ignore_result=False,
)

# --- (A) the saga: a, then b c d at once, then e ------------------------------------------------

grouped5 = Saga("grouped5", app=saga_app)


@grouped5.step()
def a(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 1, alone."""
    return None


@grouped5.step(group="fan")
def b(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Group member: its own key."""
    return {"b": 1}


@grouped5.step(group="fan")
def c(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Group member: its own key."""
    return {"c": 1}


@grouped5.step(group="fan")
def d(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Group member: its own key."""
    return {"d": 1}


@grouped5.step()
def e(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 5, after the whole group committed."""
    return None


# --- (B) the Celery chord: the same 5 tasks, the same return values -----------------------------


def _noop() -> None:
    return None


def _member(key: str) -> Any:
    def body() -> dict[str, int]:
        return {key: 1}

    return body


#: ``bench.chord.a`` .. ``bench.chord.e``: a and e return nothing, b c d their own key.
CHORD_TASKS: dict[str, Any] = {
    name: chord_app.task(name=f"bench.chord.{name}")(_member(name) if name in MEMBERS else _noop)
    for name in ("a", "b", "c", "d", "e")
}

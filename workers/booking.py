"""The example trip booking: a quote, then flight, hotel and car booked at the same time (a
parallel group), then the payment — with a deadline, and a time limit on the hotel's API.

Failure injection through payload flags, as in :mod:`workers.orders`:

- ``"fail_at": "<step>"``: that step fails permanently -> the committed members and the quote
  are compensated.
- ``"sleep": {"<step>": seconds}``: that step takes this long (to watch the members overlap).
"""

from __future__ import annotations

import time
from typing import Any

from saga import PermanentError, Saga, StepContext

from .app import app

#: A trip not booked within 10 minutes of its start is undone (the customer's hold expires).
trip = Saga("booking", app=app, deadline=600)


def _inject(payload: dict[str, Any], ctx: StepContext) -> None:
    seconds = payload.get("sleep", {}).get(ctx.step)
    if seconds:
        time.sleep(float(seconds))
    if payload.get("fail_at") == ctx.step:
        raise PermanentError(f"{ctx.step} refused trip {payload.get('trip_id')}")


@trip.step(max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def quote(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Price the trip."""
    _inject(payload, ctx)
    return {"price": 120 * int(payload.get("nights", 1))}


@trip.step(group="book", max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def book_flight(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Book the flight (idempotent by ``ctx.idempotency_key``)."""
    _inject(payload, ctx)
    return {"flight": f"FL-{ctx.idempotency_key[:6]}"}


@book_flight.compensate
def cancel_flight(payload: dict[str, Any], ctx: StepContext) -> None:
    """Cancel the flight, if it was booked."""


@trip.step(group="book", timeout=30, max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def book_hotel(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Book the hotel; its API may hang, so one attempt may run 30 s at most."""
    _inject(payload, ctx)
    return {"hotel": f"HO-{ctx.idempotency_key[:6]}"}


@book_hotel.compensate
def cancel_hotel(payload: dict[str, Any], ctx: StepContext) -> None:
    """Cancel the hotel, if it was booked."""


@trip.step(group="book", max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def book_car(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Book the car."""
    _inject(payload, ctx)
    return {"car": f"CA-{ctx.idempotency_key[:6]}"}


@book_car.compensate
def cancel_car(payload: dict[str, Any], ctx: StepContext) -> None:
    """Cancel the car, if it was booked."""


@trip.step(max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def pay(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Charge the customer once everything is booked."""
    _inject(payload, ctx)
    return {"paid": payload["price"]}

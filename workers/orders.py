"""The example order saga: reserve inventory -> charge payment -> create shipment.

Failure injection through payload flags, so the demo and the tests can show every path:

- ``"fail_at": "<step>"``: that step fails permanently (no retries) -> compensation.
- ``"flaky": {"<step>": N}``: that step fails its first N attempts, then succeeds.
- ``"fail_compensation": "<step>"``: that step's compensation always fails -> run ``failed``.
- ``"sleep": {"<step>": seconds}``: that step's first attempt takes this long (to watch it, or to
  kill its worker mid-step; the resumed attempt runs at full speed).
- ``"outage": {"<step>": "<path>"}``: that step's compensation fails while the file at ``path``
  exists (its service is down) and works once it is gone: a run ``failed``, then unwound by
  ``saga compensate`` when the service is back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from saga import PermanentError, Saga, StepContext

from .app import app

order = Saga("order", app=app)


class ServiceUnavailable(Exception):
    """A transient failure of a (simulated) downstream service."""


def _inject(payload: dict[str, Any], ctx: StepContext) -> None:
    seconds = payload.get("sleep", {}).get(ctx.step)
    if seconds and ctx.attempt == 1:
        time.sleep(float(seconds))
    if payload.get("fail_at") == ctx.step:
        raise PermanentError(f"{ctx.step} refused order {payload.get('order_id')}")
    if ctx.attempt <= int(payload.get("flaky", {}).get(ctx.step, 0)):
        raise ServiceUnavailable(f"{ctx.step} service unavailable (attempt {ctx.attempt})")


def _outage(payload: dict[str, Any], ctx: StepContext) -> None:
    down = payload.get("outage", {}).get(ctx.step)
    if down and Path(down).exists():
        raise ServiceUnavailable(f"{ctx.step} service is down (attempt {ctx.attempt})")


@order.step(max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def reserve_inventory(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Hold the items of the order."""
    _inject(payload, ctx)
    return {"reservation_id": f"res-{ctx.idempotency_key[:8]}"}


@reserve_inventory.compensate
def release_inventory(payload: dict[str, Any], ctx: StepContext) -> None:
    """Give the held items back."""
    _outage(payload, ctx)
    if payload.get("fail_compensation") == "reserve_inventory":
        raise RuntimeError("inventory service rejects the release")


@order.step(max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def charge_payment(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Charge the customer, idempotently (the key goes to the payment provider)."""
    _inject(payload, ctx)
    return {"charge_id": f"ch-{ctx.idempotency_key[:8]}", "charged": payload.get("amount", 0)}


@charge_payment.compensate
def refund_payment(payload: dict[str, Any], ctx: StepContext) -> None:
    """Refund the charge."""
    _outage(payload, ctx)
    if payload.get("fail_compensation") == "charge_payment":
        raise RuntimeError("payment provider rejects the refund")


@order.step(max_retries=3, retry_backoff=0.2, retry_backoff_max=2.0)
def create_shipment(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Book the shipment; the last step, so it needs no compensation."""
    _inject(payload, ctx)
    return {"shipment_id": f"shp-{ctx.idempotency_key[:8]}"}

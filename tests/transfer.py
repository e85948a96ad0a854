"""A money transfer in two versions, over a SQLite ledger: what a deploy must never break.

- version 1: debit -> credit -> notify
- version 2: debit -> credit -> notify -> audit (a step added: a new definition, a new version)

The ledger (a SQLite file) holds ``accounts(id, balance)`` and ``movements(key, run, account,
amount)``: like a bank's API, each movement is applied once per idempotency key, and a
compensation that finds nothing to undo does nothing. Payload: ``from``, ``to``, ``amount``, and
for the tests ``gate`` (credit waits until a Redis key with that name has an item) and
``broken`` (a Redis key: while it exists, refund fails).

``celery -A tests.transfer worker`` declares the versions ``TRANSFER_VERSIONS`` names ("1",
"2", "1,2") on its app, against the ledger at ``TRANSFER_LEDGER``: a worker started with "2"
is a deployment that removed version 1. The test process calls :func:`declare` itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from saga import PermanentError, Saga, StepContext, create_app, get_settings
from saga.registry import Registry

LEDGER_ENV = "TRANSFER_LEDGER"
VERSIONS_ENV = "TRANSFER_VERSIONS"


@contextmanager
def ledger(path: str | None = None) -> Iterator[sqlite3.Connection]:
    """One transaction on the ledger (committed on success, rolled back on an error)."""
    db = sqlite3.connect(path or os.environ[LEDGER_ENV], timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        db.close()


def open_accounts(path: str, balances: dict[str, int]) -> None:
    """Create the ledger with these balances."""
    with ledger(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS movements (key TEXT PRIMARY KEY, run TEXT, account TEXT, amount INTEGER)"
        )
        db.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?)", balances.items())


def balances(path: str) -> dict[str, int]:
    """Every account's balance now."""
    with ledger(path) as db:
        return dict(db.execute("SELECT id, balance FROM accounts").fetchall())


def movements(path: str, run_id: str | None = None) -> list[tuple[str, str, int]]:
    """Movements (key, account, amount), in the order they were applied; of one run if given."""
    with ledger(path) as db:
        rows = db.execute("SELECT key, run, account, amount FROM movements ORDER BY rowid").fetchall()
    return [(key, account, amount) for key, run, account, amount in rows if run_id is None or run == run_id]


def _move(ctx: StepContext, account: str, amount: int, *, undoes: str = "") -> None:
    """Apply a movement once per idempotency key; an undo applies only if what it undoes happened."""
    with ledger() as db:
        if undoes and not db.execute("SELECT 1 FROM movements WHERE key = ?", (undoes,)).fetchone():
            return  # nothing to undo
        row = (ctx.idempotency_key, ctx.run_id, account, amount)
        if db.execute("INSERT OR IGNORE INTO movements VALUES (?, ?, ?, ?)", row).rowcount:
            db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account))


def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, decode_responses=True, socket_timeout=None)


def debit(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Take the amount from the source account."""
    _move(ctx, payload["from"], -payload["amount"])
    return {"debited": payload["amount"]}


def refund(payload: dict[str, Any], ctx: StepContext) -> None:
    """Give the amount back to the source account (if it was taken)."""
    if payload.get("broken") and _redis().exists(payload["broken"]):
        raise RuntimeError("the bank refuses refunds right now")
    _move(ctx, payload["from"], payload["amount"], undoes=f"{ctx.run_id}:debit:forward")


def credit(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Put the amount into the destination account (after the gate opens, when there is one)."""
    if payload.get("gate"):
        _redis().blpop([payload["gate"]], timeout=120)
    if payload.get("refuse_credit"):
        raise PermanentError("the destination account is closed")
    _move(ctx, payload["to"], payload["amount"])
    return {"credited": payload["amount"]}


def uncredit(payload: dict[str, Any], ctx: StepContext) -> None:
    """Take the amount back from the destination account (if it was put there)."""
    _move(ctx, payload["to"], -payload["amount"], undoes=f"{ctx.run_id}:credit:forward")


def notify(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Tell the customer (no money moves)."""
    return {"notified": True}


def audit(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Version 2's added step: record the transfer for the auditors (no money moves)."""
    return {"audited": True}


def declare(versions: Iterable[int], *, app: Any, registry: Registry | None = None) -> dict[int, Saga]:
    """The transfer saga in each of ``versions``, on ``app`` (and ``registry``)."""
    sagas: dict[int, Saga] = {}
    for version in versions:
        saga = Saga("transfer", app=app, version=version, registry=registry)
        saga.step(debit).compensate(refund)
        saga.step(credit).compensate(uncredit)
        saga.step(notify)
        if version >= 2:
            saga.step(audit)
        sagas[version] = saga
    return sagas


# The worker's declaration: only in a process started with TRANSFER_VERSIONS.
app = create_app("transfer")
declared = declare([int(v) for v in os.environ.get(VERSIONS_ENV, "").split(",") if v], app=app)

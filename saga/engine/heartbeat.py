"""The lease heartbeat: renews the leases of the step bodies running in this process."""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from ..errors import StoreUnavailable


class LeaseStore(Protocol):
    """What the heartbeat needs of a store."""

    def renew(self, run_id: str, token: str, lease_ms: int, lane: str = "") -> bool:
        """Extend the lease of ``run_id`` (of its ``lane``, in a parallel group) while it
        carries ``token``; False when it was lost."""
        ...


class Heartbeat:
    """Renews every held lease each third of a lease, from one daemon thread per process
    (started on first use, and again in a forked child, where threads do not survive)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[LeaseStore, int, logging.LoggerAdapter[logging.Logger], str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0
        self._failing: set[tuple[str, str]] = set()  # renewals failing now: logged once, not each time
        self._committing: set[tuple[str, str]] = set()  # their commit may end the lease any moment

    def hold(
        self,
        store: LeaseStore,
        run_id: str,
        token: str,
        lease_ms: int,
        log: logging.LoggerAdapter[logging.Logger],
        lane: str = "",
    ) -> None:
        """Keep renewing ``run_id``'s lease (``lane``'s, in a parallel group) while ``token``
        holds it, until :meth:`release`."""
        with self._lock:
            self._held[(run_id, token)] = (store, lease_ms, log, lane)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="saga-heartbeat", daemon=True).start()

    def committing(self, run_id: str, token: str) -> None:
        """The holder is committing: keep renewing while the commit waits, but a lease that
        ends now was ended by that commit, not lost."""
        with self._lock:
            if (run_id, token) in self._held:
                self._committing.add((run_id, token))

    def release(self, run_id: str, token: str) -> None:
        """Stop renewing."""
        with self._lock:
            self._held.pop((run_id, token), None)
            self._failing.discard((run_id, token))
            self._committing.discard((run_id, token))

    def _loop(self) -> None:
        while True:
            with self._lock:
                held = list(self._held.items())
            interval = min((ms for _, (_, ms, _, _) in held), default=3000) / 3000
            for held_key, (store, ms, log, lane) in held:
                run_id, token = held_key
                try:
                    if not store.renew(run_id, token, ms, lane):
                        with self._lock:  # released or committed meanwhile: the lease ended, nothing lost
                            lost = self._held.pop(held_key, None) is not None and held_key not in self._committing
                            self._committing.discard(held_key)
                        if lost:
                            log.warning("lease lost while the body runs; its commit will be refused")
                    elif held_key in self._failing:
                        self._failing.discard(held_key)
                        log.warning("heartbeat renews the lease again")
                except StoreUnavailable as exc:
                    if held_key not in self._failing:
                        self._failing.add(held_key)
                        log.warning("heartbeat could not renew the lease (%s); it keeps trying", exc)
            self._wake.wait(interval)

"""Processes of the benchmark: Celery workers in process groups of their own, and what /proc says
about them (memory, CPU time). psutil is not needed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from saga.testing import start_worker_process, stop_process_group

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid``."""
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid and fields[0] != b"Z":
                pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, name: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    """Sum of the resident set sizes (VmRSS) of ``pids``, in KiB."""
    return sum(_status_kib(pid, b"VmRSS:") for pid in pids)


def hwm_kib(pids: list[int]) -> int:
    """Sum of the peak resident set sizes (VmHWM) of ``pids``, in KiB."""
    return sum(_status_kib(pid, b"VmHWM:") for pid in pids)


def pss_kib(pids: list[int]) -> int:
    """Sum of the proportional set sizes of ``pids`` (pages shared after fork counted once), in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` (not of their reaped children), in seconds."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@dataclass
class Worker:
    """``celery -A <app> worker --pool=prefork -c <concurrency>`` in a process group of its own,
    its output in ``log``."""

    app: str
    env: Mapping[str, str]
    log: Path
    concurrency: int = 2
    cwd: Path = Path(__file__).resolve().parent.parent
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0

    def start(self) -> Worker:
        """Start a fresh worker process (the previous one must be stopped)."""
        self.generation += 1
        with open(self.log, "ab") as out:
            out.write(f"--- worker {self.generation}: {self.app}\n".encode())
        self.process = start_worker_process(
            self.app,
            self.env,
            name=f"bench-{self.app.rsplit(':', 1)[-1]}-{uuid.uuid4().hex[:6]}",
            concurrency=self.concurrency,
            cwd=self.cwd,
            log=self.log,
        )
        return self

    @property
    def pgid(self) -> int:
        """The process group of the running worker (its main process's pid)."""
        if self.process is None:
            raise RuntimeError(f"worker {self.app} is not running")
        return self.process.pid

    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """Main process and pool children."""
        return group_pids(self.pgid) if self.process is not None else []

    def kill(self) -> None:
        """SIGKILL the whole process group at once, and reap the main process."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGKILL)
            self.process = None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the group (warm shutdown), SIGKILL it after ``timeout``; then SIGKILL any pool
        child left behind."""
        if self.process is None:
            return
        pgid = self.pgid
        stop_process_group(self.process, signal.SIGTERM, timeout)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the worker wrote."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class MemorySampler:
    """Samples the summed RSS of each worker's process tree in a thread, keeping the peak."""

    workers: Mapping[str, Worker]
    interval: float = 0.1
    peak_kib: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        """Start sampling."""
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        pids: dict[str, list[int]] = {}
        n = 0
        while not self._stop.is_set():
            for name, worker in self.workers.items():
                if not worker.alive():
                    continue
                if n % 10 == 0 or name not in pids:  # the tree rarely changes: rescan /proc each second
                    pids[name] = worker.pids()
                self.peak_kib[name] = max(self.peak_kib.get(name, 0), rss_kib(pids[name]))
            n += 1
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, int]:
        """Stop sampling; the peak summed RSS of each worker, in KiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return dict(self.peak_kib)

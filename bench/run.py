"""``python -m bench.run`` (``make bench``): a saga of 5 no-op steps against a Celery chain of the
same 5 no-op tasks, on a private Redis and prefork workers (concurrency 2) per variant.

In one run it measures, repetitions interleaved A B A B ...: throughput (median of the
repetitions), single-run latency p50/p95 over sequential runs, Redis commands per step
(``INFO commandstats`` deltas), peak worker memory, CPU per run; and for the saga, the recovery
time of a run whose worker is SIGKILLed mid-step (median of the trials); then the hot tier's
figures (:mod:`bench.hot_tier`), a 5-step saga with a 3-member parallel group against a Celery
chord of the same shape (:mod:`bench.group`; ``--skip-group`` leaves it out), what idle waiters
cost Redis and how soon ``wait()`` returns after a run's terminal commit (:mod:`bench.waiters`;
``--skip-waiters`` leaves them out) and the SQL archive's figures (:mod:`bench.archive`;
``--skip-archive`` leaves them out). It prints a table with the ratios saga/chain and the
issues' targets, writes ``bench/results/latest.json`` and ``bench/last-run.md``, and stops every
process it started, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celery
import redis

from saga.registry import default_registry
from saga.settings import Settings
from saga.store import FALLBACK_POLL
from saga.testing import RedisServer

from .archive import archive_figures
from .group import group_figures
from .hot_tier import listing_figures, memory_figures
from .imports import import_figures
from .imports import markdown as imports_markdown
from .measure import (
    BENCH_DIR,
    CONCURRENCY,
    GET_SLICE,
    RESULTS,
    STEPS,
    WARMUP_RUNS,
    BenchError,
    ChainVariant,
    Rep,
    SagaVariant,
    Variant,
    _on_sigterm,
    enable_notifications,
    latency_pair,
    monitor_probe,
    print_rep,
    recovery_trial,
    summarize_latency,
    summarize_reps,
    throughput_rep,
)
from .procs import MemorySampler, Worker, hwm_kib, pss_kib
from .report import IDLE_WAITERS, breakdown, markdown, ratios, targets
from .waiters import waiter_figures

REPO = BENCH_DIR.parent
PROBE_RUNS = 20
RECOVERY_LIMIT_S = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` lowers every count it is not given explicitly."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="runs per throughput repetition (default 500; quick 30)")
    p.add_argument("--reps", type=int, help="throughput repetitions per variant (default 3; quick 2)")
    p.add_argument("--latency-runs", type=int, help="sequential runs timed per variant (default 100; quick 10)")
    p.add_argument("--recovery-trials", type=int, help="SIGKILL recovery trials (default 5; quick 1)")
    p.add_argument("--memory-runs", type=int, help="runs per memory saga (default 2000; quick 50)")
    p.add_argument("--list-runs", type=int, help="runs under the listing figure (default 100000; quick 2000)")
    p.add_argument(
        "--archive-runs", type=int, help="archived runs under the archive's listing (default 1000000; quick 20000)"
    )
    p.add_argument(
        "--archive-saga-runs",
        type=int,
        help="saga runs of the archiver throughput, feed lag and bytes figures (default 2000; quick 200)",
    )
    p.add_argument("--skip-archive", action="store_true", help="leave the archive's figures out")
    p.add_argument("--import-rounds", type=int, help="interleaved rounds of the start-up figures (default 9; quick 3)")
    p.add_argument(
        "--group-runs", type=int, help="runs per group-vs-chord throughput repetition (default 500; quick 30)"
    )
    p.add_argument(
        "--group-latency-runs", type=int, help="sequential group-vs-chord runs timed (default 100; quick 10)"
    )
    p.add_argument("--skip-group", action="store_true", help="leave the parallel group vs chord figures out")
    p.add_argument("--waiters", type=int, help="idle waiters at once (default 1000; quick 100)")
    p.add_argument(
        "--waiters-window",
        type=float,
        help=f"seconds of each idle waiters' window (default {FALLBACK_POLL:g}, the fallback read's period; quick 5)",
    )
    p.add_argument(
        "--waiter-samples",
        type=int,
        help="runs timed per waiter and repetition, commit to return (default 200; quick 20)",
    )
    p.add_argument("--skip-waiters", action="store_true", help="leave the push-based waiting figures out")
    p.add_argument(
        "--skip-archive-pg", action="store_true", help="archive figures on SQLite only, even when PostgreSQL answers"
    )
    p.add_argument("--lease", type=float, default=2.0, help="SAGA_LEASE_SECONDS of the saga (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (writes bench/results/quick.*)")
    p.add_argument("--json", type=Path, help="where to write the figures (default bench/results/latest.json)")
    p.add_argument("--markdown", type=Path, help="where to write the table (default bench/last-run.md)")
    args = p.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (30 if quick else 500)
    args.reps = args.reps or (2 if quick else 3)
    args.latency_runs = args.latency_runs or (10 if quick else 100)
    args.import_rounds = args.import_rounds or (3 if quick else 9)
    args.recovery_trials = args.recovery_trials if args.recovery_trials is not None else (1 if quick else 5)
    args.memory_runs = args.memory_runs or (50 if quick else 2000)
    args.list_runs = args.list_runs or (2000 if quick else 100_000)
    args.archive_runs = args.archive_runs or (20_000 if quick else 1_000_000)
    args.archive_saga_runs = args.archive_saga_runs or (200 if quick else 2000)
    args.group_runs = args.group_runs or (30 if quick else 500)
    args.group_latency_runs = args.group_latency_runs or (10 if quick else 100)
    args.waiters = args.waiters or (100 if quick else IDLE_WAITERS)
    args.waiters_window = args.waiters_window or (5.0 if quick else FALLBACK_POLL)
    args.waiter_samples = args.waiter_samples or (20 if quick else 200)
    args.json = args.json or RESULTS / ("quick.json" if quick else "latest.json")
    args.markdown = args.markdown or (RESULTS / "quick.md" if quick else BENCH_DIR / "last-run.md")
    counts = (
        args.runs,
        args.reps,
        args.latency_runs,
        args.archive_saga_runs,
        args.group_runs,
        args.group_latency_runs,
        args.waiters,
        args.waiter_samples,
    )
    if min(counts) < 1 or args.recovery_trials < 0 or args.waiters_window <= 0:
        p.error("counts must be positive")
    if args.lease <= 0 or args.archive_runs < 1000:
        p.error("the lease must be > 0 and --archive-runs at least 1000")
    return args


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(saga_redis: redis.Redis) -> dict[str, Any]:
    """Versions, commit and machine the figures were taken on."""
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "load_before": f"{load[0]:.2f}",
        "python": platform.python_version(),
        "celery": celery.__version__,
        "redis_py": redis.__version__,
        "redis_server": str(saga_redis.info("server")["redis_version"]),
    }


def bench_env(saga_url: str, chain_url: str, lease: float) -> dict[str, str]:
    """The environment of the workers and of this process: no inherited ``SAGA_*`` variable,
    only the benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(
        {
            "SAGA_REDIS_URL": saga_url,
            "SAGA_BROKER_URL": saga_url,
            "SAGA_LEASE_SECONDS": f"{lease:g}",
            "SAGA_METRICS_PORT": "0",
            "BENCH_CHAIN_REDIS_URL": chain_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _adopt(env: dict[str, str]) -> Settings:
    """Configure this process like the workers: the default registry from the benchmark's
    ``SAGA_*`` variables; the chain's Redis for ``bench.app``, which reads it on import."""
    os.environ["BENCH_CHAIN_REDIS_URL"] = env["BENCH_CHAIN_REDIS_URL"]
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("SAGA_")})
    default_registry().configure(settings)
    return settings


def _archive(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """``{"archive": the archive's figures}`` (:mod:`bench.archive`, on servers and workers of
    their own), or nothing with ``--skip-archive``."""
    if args.skip_archive:
        return {}
    print(
        f"archive: archiver throughput, feed lag, Redis bytes ({args.archive_saga_runs} runs each), and "
        f"saga list --tag over {args.archive_runs:,} archived runs...",
        flush=True,
    )
    section = archive_figures(
        env,
        runs=args.archive_saga_runs,
        list_runs=args.archive_runs,
        concurrency=CONCURRENCY,
        skip_pg=args.skip_archive_pg,
        logs=RESULTS,
    )
    print(f"  archive figures took {section['seconds']:g} s", flush=True)
    return {"archive": section}


def _group(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """``{"group": the parallel group vs chord figures}`` (:mod:`bench.group`, on servers and
    workers of their own, ``args.reps`` repetitions), or nothing with ``--skip-group``."""
    if args.skip_group:
        return {}
    print(
        f"parallel group vs chord: {args.reps} x {args.group_runs} runs per variant, "
        f"{args.group_latency_runs} latency runs...",
        flush=True,
    )
    section = group_figures(
        env, runs=args.group_runs, reps=args.reps, latency_runs=args.group_latency_runs, concurrency=CONCURRENCY
    )
    print(f"  group figures took {section['seconds']:g} s", flush=True)
    return {"group": section}


def _waiters(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """``{"waiters": the push-based waiting figures}`` (:mod:`bench.waiters`, on servers and a
    worker of their own, ``args.reps`` repetitions), or nothing with ``--skip-waiters``."""
    if args.skip_waiters:
        return {}
    print(
        f"push-based waiting: {args.waiters} idle waiters, {args.waiters_window:g} s windows; "
        f"{args.reps} x {args.waiter_samples} runs timed from terminal commit to return...",
        flush=True,
    )
    section = waiter_figures(
        env, waiters=args.waiters, window=args.waiters_window, reps=args.reps, samples=args.waiter_samples
    )
    print(f"  push-based waiting figures took {section['seconds']:g} s", flush=True)
    return {"waiters": section}


def _imports(args: argparse.Namespace) -> dict[str, Any]:
    """``{"imports": import saga and saga --help beside a bare Celery app}`` (:mod:`bench.imports`)."""
    print(f"start-up: {args.import_rounds} interleaved rounds of import saga, saga --help, a bare Celery app...")
    return {"imports": import_figures(args.import_rounds)}


def measure(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    """Start everything (registering its clean-up on ``stack``), measure, return the figures."""
    t_start = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    servers: dict[str, RedisServer] = {}
    for name in ("saga", "chain"):
        server = RedisServer()
        stack.callback(server.close)
        servers[name] = server.start()
    env = bench_env(servers["saga"].url, servers["chain"].url, args.lease)
    settings = _adopt(env)
    app = importlib.import_module("bench.app")
    workers: dict[str, Worker] = {}
    for name, target in (("saga", "bench.app:saga_app"), ("chain", "bench.app:chain_app")):
        log = RESULTS / f"{name}-worker.log"
        log.write_bytes(b"")
        worker = Worker(target, env, log, concurrency=CONCURRENCY)
        stack.callback(worker.stop)
        workers[name] = worker.start()
    sv = SagaVariant(servers["saga"].url, workers["saga"], app.noop5)
    cv = ChainVariant(servers["chain"].url, workers["chain"], app.CHAIN_TASKS)
    variants: list[Variant] = [sv, cv]
    for v in variants:
        stack.callback(v.close)
    meta = environment(sv.redis)
    sampler = MemorySampler(workers).start()
    stack.callback(sampler.stop)

    print(
        f"saga benchmark: {args.reps} x {args.runs} runs per variant, {args.latency_runs} latency runs, "
        f"{args.recovery_trials} recovery trials; {meta['cpus']} cores, load {meta['load_before']}",
        flush=True,
    )
    print("warming up (workers starting)...", flush=True)
    for v in variants:
        throughput_rep(v, WARMUP_RUNS, timeout=120)

    timeout = max(60.0, args.runs * 0.12)
    reps: dict[str, list[Rep]] = {"saga": [], "chain": []}
    print(f"throughput ({args.runs} runs at once per repetition, A B A B ...):", flush=True)
    for i in range(1, args.reps + 1):
        for v in variants:
            rep = throughput_rep(v, args.runs, timeout)
            reps[v.name].append(rep)
            print_rep(i, args.reps, rep)

    print(f"latency ({args.latency_runs} sequential runs each, to the completion event and via the API)...", flush=True)
    samples: dict[str, tuple[list[float], list[float]]] = {"saga": ([], []), "chain": ([], [])}
    enable_notifications(variants, True)
    try:
        for _ in range(args.latency_runs):
            for v in variants:
                event_ms, api_ms = latency_pair(v)
                samples[v.name][0].append(event_ms)
                samples[v.name][1].append(api_ms)
    finally:
        enable_notifications(variants, False)

    print(f"commands sent vs run inside scripts (MONITOR, {PROBE_RUNS} runs each, untimed)...", flush=True)
    probes = {v.name: monitor_probe(v, PROBE_RUNS) for v in variants}

    peaks = sampler.stop()
    result: dict[str, Any] = {"meta": meta}
    for v in variants:
        result[v.name] = {
            **summarize_reps(reps[v.name]),
            "latency": summarize_latency(samples[v.name][0]),
            "latency_api": summarize_latency(samples[v.name][1]),
            "commands_sent": probes[v.name],
            "missed_result_notifications": v.missed,
            "memory": {
                "peak_rss_mib": round(peaks.get(v.name, 0) / 1024, 1),
                "sum_vmhwm_mib": round(hwm_kib(v.worker.pids()) / 1024, 1),
                "pss_at_end_mib": round(pss_kib(v.worker.pids()) / 1024, 1),
                "processes": len(v.worker.pids()),
            },
        }
    result["saga"]["latency_samples_ms"] = [round(x, 3) for x in samples["saga"][0]]
    result["chain"]["latency_samples_ms"] = [round(x, 3) for x in samples["chain"][0]]

    trials: list[dict[str, Any]] = []
    if args.recovery_trials:
        print(
            f"recovery ({args.recovery_trials} trials: SIGKILL the saga worker mid-step, start a fresh one)...",
            flush=True,
        )
    for i in range(1, args.recovery_trials + 1):
        try:
            trial = recovery_trial(app.recover5, workers["saga"], limit=RECOVERY_LIMIT_S)
        except BenchError as exc:
            trial = {
                "status": "error",
                "error": str(exc),
                "recovery_s": None,
                "lease_gone_s": None,
                "watchdog_lock_taken_s": None,
                "resumed_after_s": None,
            }
        trials.append(trial)
        print(
            f"  trial {i}: completed {trial['recovery_s']} s after the kill (lease gone at "
            f"{trial['lease_gone_s']} s, new watchdog holds its lock at {trial['watchdog_lock_taken_s']} s, "
            f"resumed at {trial['resumed_after_s']} s; status {trial['status']!r})",
            flush=True,
        )
        if trial["recovery_s"] is None:
            print(
                "recovery: not available (the run did not complete within "
                f"{RECOVERY_LIMIT_S:.0f} s of the kill); skipping the other trials",
                flush=True,
            )
            break
    times = [t["recovery_s"] for t in trials]
    ok = bool(times) and all(t is not None for t in times)
    result["recovery"] = {
        "p50_s": round(statistics.median(times), 3) if ok else None,
        "lease_seconds": settings.lease_seconds,
        "watchdog_interval_s": settings.watchdog_interval,
        "into_step_s": 0.5,
        "limit_s": RECOVERY_LIMIT_S,
        "trials": trials,
    }
    print(f"Redis bytes per finished run ({args.memory_runs} runs of each saga)...", flush=True)
    result["memory_per_run"] = memory_figures(app.MEMORY_SAGAS, sv.redis, args.memory_runs)
    print(
        f"saga list --status failed --limit 20 over {args.list_runs:,} runs (written straight to a Redis)...",
        flush=True,
    )
    result["listing"] = listing_figures(args.list_runs)
    print(
        f"  {result['listing']['commands_per_call']:g} Redis commands, p50 {result['listing']['p50_ms']:g} ms "
        f"({result['listing']['calls']} calls; filling took {result['listing']['fill_seconds']:g} s)",
        flush=True,
    )
    result.update(_group(args, env))
    result.update(_waiters(args, env))
    result.update(_archive(args, env))
    result.update(_imports(args))
    result["settings"] = {
        "runs": args.runs,
        "reps": args.reps,
        "latency_runs": args.latency_runs,
        "recovery_trials": args.recovery_trials,
        "memory_runs": args.memory_runs,
        "list_runs": args.list_runs,
        "archive_runs": None if args.skip_archive else args.archive_runs,
        "archive_saga_runs": None if args.skip_archive else args.archive_saga_runs,
        "group_runs": None if args.skip_group else args.group_runs,
        "group_latency_runs": None if args.skip_group else args.group_latency_runs,
        "waiters": None if args.skip_waiters else args.waiters,
        "waiters_window_s": None if args.skip_waiters else args.waiters_window,
        "waiter_samples": None if args.skip_waiters else args.waiter_samples,
        "warmup_runs": WARMUP_RUNS,
        "steps": STEPS,
        "pool": "prefork",
        "concurrency": CONCURRENCY,
        "lease_seconds": settings.lease_seconds,
        "watchdog_interval_s": settings.watchdog_interval,
        "separate_redis_per_variant": True,
        "latency_completion": "keyevent notification of the expiry set by the completing write "
        "(saga: commit script's PEXPIRE of the run's meta key; chain: SETEX of "
        "the last task's result); notifications on only during latency runs",
        "excluded_commands": "INFO, and the benchmark's ZCARD polls of the saga's active index",
        "probe_runs": PROBE_RUNS,
        "get_slice_s": GET_SLICE,
    }
    result["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
    result["meta"]["load_after"] = f"{os.getloadavg()[0]:.2f}"
    result["ratios"] = ratios(result)
    result["targets"] = targets(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it measured everything (whether targets hold or not)."""
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    try:
        with ExitStack() as stack:
            result = measure(args, stack)
            print("stopping workers and Redis...", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the benchmark started is stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}\n(worker logs in {RESULTS})", file=sys.stderr)
        return 1
    table = markdown(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(table)
    print()
    print(table)
    print(breakdown(result))
    print()
    print(imports_markdown(result["imports"]))
    print(f"\nwrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn the benchmark's figures into targets, a markdown table and the per-command breakdown."""

from __future__ import annotations

import statistics
from typing import Any

#: The targets (issue 10's for throughput, latency and the hot tier; issue 5's for commands and
#: recovery): key -> what holds.
TARGETS = {
    "throughput": "saga throughput >= 1.1x the chain's",
    "latency_p50": "saga latency p50 <= 1.1x the chain's",
    "commands_per_step": "Redis commands per step <= the chain's",
    "recovery_p50": "recovery p50 <= lease + 2 s",
    "bytes_30_steps": "bytes per run, 30 steps x 200 B <= 2x the 5-step figure",
    "bytes_10kb": "bytes per run, 5 steps x 10 KB (+2 KB a step) <= 40 KB",
    "listing_commands": "saga list --status failed --limit 20 over 100,000 runs: <= 50 commands",
    "listing_ms": "... and <= 100 ms",
    "archive_throughput_sqlite": "archiver (SQLite) archives >= 2x the runs/s the saga runs",
    "archive_throughput_postgresql": "archiver (PostgreSQL) archives >= 2x the runs/s the saga runs",
    "archive_lag_p95": "archive feed lag p95 under load <= 2 s",
    "archive_bytes_per_run": "Redis bytes per finished run one hot retention after archiving: 0",
    "archive_list_sqlite": "saga list --tag customer=... --status compensated --limit 20 over 1M archived runs "
    "(SQLite): p50 <= 50 ms",
    "archive_list_postgresql": "... (PostgreSQL): p50 <= 50 ms",
    "waiters_idle_async": "1,000 idle waiters, wait_async(): <= 50 Redis commands/s in all",
    "waiters_idle_threads": "1,000 idle waiters, wait() in threads: <= 50 Redis commands/s in all",
    "waiters_latency_wait": "terminal commit to wait() returning: p50 <= 2 ms",
    "waiters_latency_wait_async": "terminal commit to wait_async() returning: p50 <= 2 ms",
}
ARCHIVE_RATIO_MIN = 2.0
ARCHIVE_LAG_P95_MAX_S = 2.0
ARCHIVE_LIST_MAX_MS = 50.0
#: Issue 13's targets (push-based waiting): Redis commands/s of this many idle waiters in all,
#: and the p50 from a run's terminal commit to its waiter returning.
IDLE_WAITERS = 1000
IDLE_MAX_PER_S = 50.0
LATENCY_P50_MAX_MS = 2.0
#: The idle waiters of bench.waiters, as the table's notes name them.
IDLE_MODES_TEXT = {
    "wait_async": "`wait_async()`",
    "wait": "`wait()` threads",
    "poll": "The old polling loop",
}
THROUGHPUT_MIN = 1.1
LATENCY_MAX = 1.1


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """saga / chain for every figure both variants have."""
    s, c = result["saga"], result["chain"]
    return {
        "throughput": _ratio(s["runs_per_s"], c["runs_per_s"]),
        "latency_p50": _ratio(s["latency"]["p50_ms"], c["latency"]["p50_ms"]),
        "latency_p95": _ratio(s["latency"]["p95_ms"], c["latency"]["p95_ms"]),
        "latency_api_p50": _ratio(s["latency_api"]["p50_ms"], c["latency_api"]["p50_ms"]),
        "latency_api_p95": _ratio(s["latency_api"]["p95_ms"], c["latency_api"]["p95_ms"]),
        "commands_per_step": _ratio(s["commands_per_step"], c["commands_per_step"]),
        "commands_sent_per_step": _ratio(s["commands_sent"]["sent_per_step"], c["commands_sent"]["sent_per_step"]),
        "peak_worker_memory": _ratio(s["memory"]["peak_rss_mib"], c["memory"]["peak_rss_mib"]),
        "worker_cpu_per_run": _ratio(s["cpu_ms_per_run"]["worker"], c["cpu_ms_per_run"]["worker"]),
        "redis_cpu_per_run": _ratio(s["cpu_ms_per_run"]["redis"], c["cpu_ms_per_run"]["redis"]),
        "client_cpu_per_run": _ratio(s["cpu_ms_per_run"]["client"], c["cpu_ms_per_run"]["client"]),
    }


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Whether each target of the issue holds (``holds`` is None when it could not be measured)."""
    r = result["ratios"]
    rec = result["recovery"]
    limit = rec["lease_seconds"] + 2
    p50 = rec["p50_s"]
    memory = {row["name"]: row["bytes_per_run"] for row in result.get("memory_per_run", [])}
    listing = result.get("listing", {})
    ratio_30 = _ratio(memory.get("mem30"), memory.get("mem5"))
    return {
        "throughput": {
            "value": r["throughput"],
            "limit": THROUGHPUT_MIN,
            "holds": _cmp(r["throughput"], THROUGHPUT_MIN, ge=True),
        },
        "latency_p50": {"value": r["latency_p50"], "limit": LATENCY_MAX, "holds": _cmp(r["latency_p50"], LATENCY_MAX)},
        "bytes_30_steps": {"value": ratio_30, "limit": 2.0, "holds": _cmp(ratio_30, 2.0)},
        "bytes_10kb": {"value": memory.get("mem5big"), "limit": 40_000, "holds": _cmp(memory.get("mem5big"), 40_000)},
        "listing_commands": {
            "value": listing.get("commands_per_call"),
            "limit": 50,
            "holds": _cmp(listing.get("commands_per_call"), 50),
        },
        "listing_ms": {"value": listing.get("p50_ms"), "limit": 100, "holds": _cmp(listing.get("p50_ms"), 100)},
        "commands_per_step": {
            "value": r["commands_per_step"],
            "limit": 1.0,
            "holds": _cmp(r["commands_per_step"], 1.0),
        },
        "recovery_p50": {"value": p50, "limit": limit, "holds": _cmp(p50, limit)},
        **(waiters_targets(result["waiters"]) if result.get("waiters") else {}),
        **(archive_targets(result["archive"]) if result.get("archive") else {}),
    }


def waiters_targets(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Whether each target of the push-based waiting figures holds (see :mod:`bench.waiters`):
    idle commands/s only when measured as the issue says (1,000 waiters, a window holding the
    fallback reads; else ``holds`` is None), and not when a waiter raised instead of waiting;
    the p50 latencies of ``wait()`` and ``wait_async()``."""
    out: dict[str, dict[str, Any]] = {}
    as_issue = section["waiters"] >= IDLE_WAITERS and section["window_s"] >= section["fallback_poll_s"]
    for key, mode in (("waiters_idle_async", "wait_async"), ("waiters_idle_threads", "wait")):
        value = section["idle"][mode]["commands_per_s"]["median"]
        failed = sum(r["failed"] for r in section["idle"][mode]["reps"])
        holds = _cmp(value, IDLE_MAX_PER_S) and not failed if as_issue else None
        out[key] = {"value": value, "limit": IDLE_MAX_PER_S, "holds": holds, "failed_waiters": failed}
    for mode in ("wait", "wait_async"):
        p50 = section["latency"][mode]["p50_ms"]["median"]
        out[f"waiters_latency_{mode}"] = {
            "value": p50,
            "limit": LATENCY_P50_MAX_MS,
            "holds": _cmp(p50, LATENCY_P50_MAX_MS),
        }
    return out


def archive_targets(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Whether each target of the archive's figures holds (see :mod:`bench.archive`)."""
    out: dict[str, dict[str, Any]] = {}
    for row in section["throughput"]:
        out[f"archive_throughput_{row['dialect']}"] = {
            "value": row["ratio"],
            "limit": ARCHIVE_RATIO_MIN,
            "holds": _cmp(row["ratio"], ARCHIVE_RATIO_MIN, ge=True),
        }
    lag = section["lag"]["p95_s"]
    out["archive_lag_p95"] = {"value": lag, "limit": ARCHIVE_LAG_P95_MAX_S, "holds": _cmp(lag, ARCHIVE_LAG_P95_MAX_S)}
    memory = section["memory"]
    per_run = memory["bytes_per_run"]
    out["archive_bytes_per_run"] = {
        "value": per_run,
        "limit": 0,
        "holds": memory["run_keys_left"] == 0 and round(per_run) <= 0,
    }
    for row in section["listing"]:
        out[f"archive_list_{row['dialect']}"] = {
            "value": row["p50_ms"],
            "limit": ARCHIVE_LIST_MAX_MS,
            "holds": _cmp(row["p50_ms"], ARCHIVE_LIST_MAX_MS),
        }
    return out


def _cmp(value: float | None, limit: float, *, ge: bool = False) -> bool | None:
    if value is None:
        return None
    return value >= limit if ge else value <= limit


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _holds(h: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[h]


def markdown(result: dict[str, Any]) -> str:
    """The figures as a markdown table, with the conditions they were taken under."""
    s, c, r, t = result["saga"], result["chain"], result["ratios"], result["targets"]
    cfg, meta, rec = result["settings"], result["meta"], result["recovery"]
    reps = f"median of {cfg['reps']} x {cfg['runs']} runs"
    lat = f"{cfg['latency_runs']} sequential runs"
    rows = [
        ("| figure | saga | chain | saga/chain | target | holds |", None),
        ("| --- | ---: | ---: | ---: | --- | --- |", None),
        (
            f"| throughput, runs/s ({reps}) | {_f(s['runs_per_s'])} | {_f(c['runs_per_s'])} "
            f"| {_x(r['throughput'])} | >= {THROUGHPUT_MIN}x | {_holds(t['throughput']['holds'])} |",
            None,
        ),
        (
            f"| latency p50, ms (start to completion committed, {lat}) | {_f(s['latency']['p50_ms'])} "
            f"| {_f(c['latency']['p50_ms'])} | {_x(r['latency_p50'])} | <= {LATENCY_MAX}x "
            f"| {_holds(t['latency_p50']['holds'])} |",
            None,
        ),
        (
            f"| latency p95, ms | {_f(s['latency']['p95_ms'])} | {_f(c['latency']['p95_ms'])} "
            f"| {_x(r['latency_p95'])} | | |",
            None,
        ),
        (
            f"| latency p50 via `Saga.wait()` / `AsyncResult.get()`, ms | {_f(s['latency_api']['p50_ms'])} "
            f"| {_f(c['latency_api']['p50_ms'])} | {_x(r['latency_api_p50'])} | | |",
            None,
        ),
        (
            f"| latency p95 via `Saga.wait()` / `AsyncResult.get()`, ms | {_f(s['latency_api']['p95_ms'])} "
            f"| {_f(c['latency_api']['p95_ms'])} | {_x(r['latency_api_p95'])} | | |",
            None,
        ),
        (
            f"| Redis commands per step (`INFO commandstats`, incl. inside scripts) | "
            f"{_f(s['commands_per_step'], 2)} | {_f(c['commands_per_step'], 2)} | {_x(r['commands_per_step'])} "
            f"| <= 1.0x | {_holds(t['commands_per_step']['holds'])} |",
            None,
        ),
        (
            f"| of which sent by clients (not run inside Lua scripts; MONITOR sample of "
            f"{s['commands_sent']['runs']} runs) | {_f(s['commands_sent']['sent_per_step'], 2)} "
            f"| {_f(c['commands_sent']['sent_per_step'], 2)} | {_x(r['commands_sent_per_step'])} | | |",
            None,
        ),
        (
            f"| peak worker memory, MiB (summed RSS, main + {cfg['concurrency']} children) "
            f"| {_f(s['memory']['peak_rss_mib'])} | {_f(c['memory']['peak_rss_mib'])} "
            f"| {_x(r['peak_worker_memory'])} | | |",
            None,
        ),
        (
            f"| worker CPU per run, ms | {_f(s['cpu_ms_per_run']['worker'], 2)} "
            f"| {_f(c['cpu_ms_per_run']['worker'], 2)} | {_x(r['worker_cpu_per_run'])} | | |",
            None,
        ),
        (
            f"| Redis CPU per run, ms | {_f(s['cpu_ms_per_run']['redis'], 2)} "
            f"| {_f(c['cpu_ms_per_run']['redis'], 2)} | {_x(r['redis_cpu_per_run'])} | | |",
            None,
        ),
        (
            f"| client CPU per run, ms | {_f(s['cpu_ms_per_run']['client'], 2)} "
            f"| {_f(c['cpu_ms_per_run']['client'], 2)} | {_x(r['client_cpu_per_run'])} | | |",
            None,
        ),
        (
            f"| recovery after SIGKILL of the worker, s (p50 of {len(rec['trials'])}; "
            f"lease {rec['lease_seconds']:g} s) | {_f(rec['p50_s'], 2)} | - | - "
            f"| <= lease + 2 s = {rec['lease_seconds'] + 2:g} s | {_holds(t['recovery_p50']['holds'])} |",
            None,
        ),
    ]
    lines = [row for row, _ in rows]
    head = (
        f"Benchmark of {meta['date']} (commit {meta['commit']}{' + local changes' if meta['dirty'] else ''}), "
        f"{meta['cpus']} cores, load average {meta['load_before']} before; celery {meta['celery']}, "
        f"redis-server {meta['redis_server']}, Python {meta['python']}. Each variant: its own "
        f"redis-server, one prefork worker with concurrency {cfg['concurrency']}, JSON, late acks, "
        f"prefetch 1; the chain with a Redis result backend. "
        f"Repetitions interleaved A B A B; `python -m bench.run` took {meta['seconds']:.0f} s."
    )
    if rec["p50_s"] is not None:
        recovery_note = (
            f"\n\nRecovery: a run's worker (whole process group) SIGKILLed {rec['into_step_s']:g} s into a "
            f"step, a fresh worker started at once; medians after the kill: lease gone "
            f"{_f(_median(rec['trials'], 'lease_gone_s'), 2)} s, the new worker's watchdog holds the scan lock "
            f"{_f(_median(rec['trials'], 'watchdog_lock_taken_s'), 2)} s, run resumed "
            f"{_f(_median(rec['trials'], 'resumed_after_s'), 2)} s, completed {_f(rec['p50_s'], 2)} s "
            f"(trials: {', '.join(_f(x['recovery_s'], 2) for x in rec['trials'])} s)."
        )
    elif rec["trials"]:
        recovery_note = "\n\nRecovery: not available (no run completed within 60 s of the kill)."
    else:
        recovery_note = ""
    missed = c.get("missed_result_notifications", 0)
    chain_note = ""
    if missed:
        chain_note = (
            f"\n\nChain: the client lost {missed} result notification(s): Celery's Redis result consumer "
            f"sends SUBSCRIBE on one connection and GETs the result on another without waiting, so a "
            f"result stored in between is never delivered and a plain `get()` waits forever. The "
            f"benchmark calls `get(timeout={result['settings']['get_slice_s']})` in a loop, which reads "
            f"the result again after each slice."
        )
    return (
        head
        + "\n\n"
        + "\n".join(lines)
        + recovery_note
        + chain_note
        + "\n"
        + hot_tier(result)
        + group_table(result)
        + waiters_table(result)
        + archive_table(result)
    )


def hot_tier(result: dict[str, Any]) -> str:
    """The hot tier's table: bytes per finished run, and the cost of a listing by status."""
    rows = result.get("memory_per_run")
    listing = result.get("listing")
    if not rows or not listing:
        return ""
    t = result["targets"]
    by_name = {row["name"]: row for row in rows}
    five = by_name["mem5"]["bytes_per_run"]
    lines = [
        "",
        f"Hot tier (`INFO memory` deltas over {rows[0]['runs']} runs of each saga on the saga worker's Redis; "
        f"a listing over {listing['runs']:,} runs, {listing['failed']} failed, in a Redis of its own):",
        "",
        "| figure | value | target | holds |",
        "| --- | ---: | --- | --- |",
    ]
    for row in rows:
        target, holds = "", ""
        if row["name"] == "mem30":
            target = f"<= 2x the 5-step figure ({row['bytes_per_run'] / five:.2f}x)"
            holds = _holds(t["bytes_30_steps"]["holds"])
        elif row["name"] == "mem5big":
            target, holds = "<= 40,000", _holds(t["bytes_10kb"]["holds"])
        lines.append(f"| Redis bytes per finished run, {row['saga']} | {row['bytes_per_run']:,} | {target} | {holds} |")
    lines.append(
        f"| `saga list --status failed --limit 20`: Redis commands | {listing['commands_per_call']:g} | <= 50 "
        f"| {_holds(t['listing_commands']['holds'])} |"
    )
    lines.append(
        f"| ... time, ms (p50 of {listing['calls']} calls) | {listing['p50_ms']:g} | <= 100 "
        f"| {_holds(t['listing_ms']['holds'])} |"
    )
    return "\n".join(lines) + "\n"


def group_table(result: dict[str, Any]) -> str:
    """The parallel group's table (:mod:`bench.group`): a 5-step saga whose steps 2-4 are a group,
    against ``chain(a, chord([b, c, d], e))``."""
    g = result.get("group")
    if not g:
        return ""
    s, c, r = g["saga"], g["chord"], g["ratios"]
    lat = f"{g['latency_runs']} sequential runs"
    lines = [
        "",
        f"Parallel group vs chord (`bench/group.py`): a 5-step saga, steps 2-4 a parallel group ({g['shape']}; "
        f"no result backend), against `chain(a.si(), chord([b.si(), c.si(), d.si()], e.si()))` with a Redis "
        f"result backend; each a redis-server and a prefork worker of its own, concurrency {g['concurrency']}; "
        f"repetitions interleaved A B A B:",
        "",
        "| figure | saga | chord | saga/chord |",
        "| --- | ---: | ---: | ---: |",
        f"| throughput, runs/s (median of {g['reps']} x {g['runs']} runs) | {_f(s['runs_per_s'])} "
        f"| {_f(c['runs_per_s'])} | {_x(r['throughput'])} |",
        f"| latency p50, ms (start to completion committed, {lat}) | {_f(s['latency']['p50_ms'])} "
        f"| {_f(c['latency']['p50_ms'])} | {_x(r['latency_p50'])} |",
        f"| latency p95, ms | {_f(s['latency']['p95_ms'])} | {_f(c['latency']['p95_ms'])} | {_x(r['latency_p95'])} |",
        f"| latency p50 via `Saga.wait()` / `AsyncResult.get()`, ms | {_f(s['latency_api']['p50_ms'])} "
        f"| {_f(c['latency_api']['p50_ms'])} | {_x(r['latency_api_p50'])} |",
        f"| Redis commands per step (`INFO commandstats`, incl. inside scripts) | {_f(s['commands_per_step'], 2)} "
        f"| {_f(c['commands_per_step'], 2)} | {_x(r['commands_per_step'])} |",
        f"| worker CPU per run, ms | {_f(s['cpu_ms_per_run']['worker'], 2)} "
        f"| {_f(c['cpu_ms_per_run']['worker'], 2)} | {_x(r['worker_cpu_per_run'])} |",
        f"| Redis CPU per run, ms | {_f(s['cpu_ms_per_run']['redis'], 2)} "
        f"| {_f(c['cpu_ms_per_run']['redis'], 2)} | {_x(r['redis_cpu_per_run'])} |",
    ]
    notes = []
    main = result.get("saga")
    if main:
        notes.append(
            f"The main table's saga of 5 sequential steps: {_f(main['runs_per_s'])} runs/s, latency p50 "
            f"{_f(main['latency']['p50_ms'])} ms."
        )
    stale = sum(s.get("stale_active_entries_per_rep", []))
    if stale:
        notes.append(
            f"Saga: {stale} finished run(s) were left in the store's `active` index by the watchdog (per "
            f"repetition: {', '.join(str(n) for n in s['stale_active_entries_per_rep'])}): it read a run whose "
            f"last step was queued, the run completed, and its ZADD (look again at dispatch + 30 s) came after "
            f"the commit's ZREM. The wait ends once every run left in the index has finished (ZRANGE and HGET "
            f"of the leftovers, not counted), not when the index empties up to 30 s later."
        )
    if c.get("missed_result_notifications"):
        notes.append(
            f"Chord: the client lost {c['missed_result_notifications']} result notification(s) (Celery's result "
            f"consumer subscribes and reads the result on two connections without waiting; `get()` is called in "
            f"slices of {g['get_slice_s']:g} s and reads the result again after each)."
        )
    return "\n".join(lines) + "\n" + ("\n" + " ".join(notes) + "\n" if notes else "")


def _range(spread: dict[str, Any], digits: int = 1) -> str:
    """``median (min–max)`` of a figure over repetitions."""
    f = f"{{:,.{digits}f}}"
    return f"{f.format(spread['median'])} ({f.format(spread['min'])}–{f.format(spread['max'])})"


def _idle_value(mode: dict[str, Any], n: int) -> str:
    """An idle figure's cell: commands/s over the repetitions, and the waiters that raised."""
    failed = [r["failed"] for r in mode["reps"]]
    cell = _range(mode["commands_per_s"])
    if any(failed):
        cell += f"; **{'/'.join(str(k) for k in failed)} of {n:,} waiters raised** (per repetition)"
    return cell


def waiters_table(result: dict[str, Any]) -> str:
    """The push-based waiting table (:mod:`bench.waiters`): Redis commands/s of idle waiters,
    now and with the old polling loop, and the time from a run's terminal commit to its waiter
    returning."""
    w = result.get("waiters")
    if not w:
        return ""
    t = waiters_targets(w)
    idle, lat = w["idle"], w["latency"]
    n, reps = w["waiters"], w["reps"]
    fallback = w["fallback_poll_s"]
    window = f"{w['window_s']:g} s"
    if w["window_s"] >= fallback:
        window += f" (the fallback read's period is {fallback:g} s: each waiter's second read falls in it)"
    else:
        window += (
            f" (shorter than the fallback read's {fallback:g} s period: the fallback reads, {n:,} every "
            f"{fallback:g} s, are not in it)"
        )
    lines = [
        "",
        f"Push-based waiting (`bench/waiters.py`; median (range) of {reps} repetitions, modes interleaved). "
        f"Idle: {n:,} runs of a one-step saga left pending on a redis-server with no worker, one waiter per run, "
        f"all at once; Redis commands (`INFO commandstats`, the INFO calls left out) over a {window} window "
        f"opened {w['settle_s']:g} s after every waiter made its first read (the polling loop's window "
        f"{w['poll_window_s']:g} s). Latency: a prefork worker "
        f"(concurrency {w['concurrency']}) on a redis-server of its own; per run one waiter blocked on it and the "
        f"step held at a gate until {w['hold_s'] * 1000:g} ms after it began; from the `at` of the run's "
        f"`saga.completed` event (stamped by the worker as it builds the commit) to `time.time()` when the "
        f"waiter's call returned, {w['samples']} runs per repetition:",
        "",
        "| figure | value | target | holds |",
        "| --- | ---: | --- | --- |",
        f"| {n:,} idle waiters, `wait_async()` (asyncio tasks, one event loop): Redis commands/s "
        f"| {_idle_value(idle['wait_async'], n)} | <= {IDLE_MAX_PER_S:g} "
        f"| {_holds(t['waiters_idle_async']['holds'])} |",
        f"| {n:,} idle waiters, `wait()` (a thread each): Redis commands/s | {_idle_value(idle['wait'], n)} "
        f"| <= {IDLE_MAX_PER_S:g} | {_holds(t['waiters_idle_threads']['holds'])} |",
        f"| {n:,} idle waiters, the old polling `wait()` (2 ms, x1.5 up to 250 ms; a thread each): Redis "
        f"commands/s | {_idle_value(idle['poll'], n)} | (before) | |",
    ]
    for mode, name in (("wait", "`wait()`"), ("wait_async", "`wait_async()`"), ("poll", "the old polling `wait()`")):
        row = lat[mode]
        target, holds = "", ""
        if mode != "poll":
            target, holds = f"<= {LATENCY_P50_MAX_MS:g}", _holds(t[f"waiters_latency_{mode}"]["holds"])
        lines.append(
            f"| terminal commit to {name} returning, p50 ms | {_range(row['p50_ms'], 2)} | {target} | {holds} |"
        )
        lines.append(
            f"| ... p95 ms (the max of all {reps * w['samples']} runs: {row['max_ms']:.2f}) "
            f"| {_range(row['p95_ms'], 2)} | | |"
        )
        if "read_p50_ms" in row:
            read = "`get_async()`" if mode == "wait_async" else "`get()`"
            lines.append(
                f"| ... of which one read of the finished run, the waiter's last ({read}, timed apart after it "
                f"returned), p50 ms | {_range(row['read_p50_ms'], 2)} | | |"
            )
    notes = []
    for mode in ("wait_async", "wait", "poll"):
        rows = idle[mode]["reps"]
        mid = sorted(rows, key=lambda r: r["commands_per_s"])[len(rows) // 2]
        by = ", ".join(f"{cmd} {k:,}" for cmd, k in list(mid["by_command"].items())[:5]) or "none"
        notes.append(
            f"{IDLE_MODES_TEXT[mode]}: commands in the median window ({mid['window_s']:g} s): {by}; client CPU "
            f"{_range(idle[mode]['client_cpu_pct'])} % of a core, Redis CPU {_range(idle[mode]['redis_cpu_pct'])} %."
        )
    for mode in ("wait_async", "wait", "poll"):
        rows = idle[mode]["reps"]
        errors = sorted({e for r in rows for e in r["errors"]})
        if errors:
            before = sum(r["failed_before_window"] for r in rows)
            within = sum(r["failed_in_window"] for r in rows)
            notes.append(
                f"{IDLE_MODES_TEXT[mode]}: {sum(r['failed'] for r in rows):,} waiters in all raised instead of "
                f"waiting ({before:,} before the window, {within:,} in it), with "
                + "; ".join(f"`{e}`" for e in errors[:2])
                + "; the figure is the cost of the waiters left."
            )
    refused = [r.get("pool_refused_reads", 0) for r in idle["poll"]["reps"]]
    if any(refused):
        notes.append(
            f"The polling loop started {n:,} threads at once like the others; reads its client's pool refused (all "
            f"of its connections in use, redis-py's default of 100; no command sent), where the old loop raised, "
            f"were taken as unfinished runs and read again after the next sleep: "
            f"{'/'.join(f'{k:,}' for k in refused)} per repetition, "
            f"{'/'.join(str(r.get('pool_refused_reads_in_window', 0)) for r in idle['poll']['reps'])} of them in "
            f"the window."
        )
    wake = [r["woken_after_cancel_ms"] for mode in ("wait_async", "wait") for r in idle[mode]["reps"]]
    poll_wake = [r["woken_after_cancel_ms"] for r in idle["poll"]["reps"]]
    push_p50 = statistics.median(x["p50"] for x in wake)
    poll_p50 = statistics.median(x["p50"] for x in poll_wake)
    notes.append(
        f"After each window the {n:,} runs were cancelled one after the other (each cancel commits `compensated` "
        f"at once) and every waiter returned that state: a push-based waiter {push_p50:,.2f} ms (p50; the slowest "
        f"{max(x['max'] for x in wake):,.1f} ms) after its run's cancel began, a polling one {poll_p50:,.1f} ms "
        f"(the slowest {max(x['max'] for x in poll_wake):,.1f} ms)."
    )
    if n < IDLE_WAITERS or w["window_s"] < fallback:
        notes.append(
            f"The idle targets are for {IDLE_WAITERS:,} waiters over a window holding the fallback reads: "
            "not judged on this run (n/a)."
        )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


_DIALECT = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def archive_table(result: dict[str, Any]) -> str:
    """The archive's table (:mod:`bench.archive`): archiver against saga throughput, feed lag,
    Redis bytes left once archived runs left, a listing by tag over a big archive."""
    a = result.get("archive")
    if not a:
        return ""
    t = result["targets"]
    lag, mem = a["lag"], a["memory"]
    hot = a["hot_retention_seconds"]
    lines = [
        "",
        f"Archive (`bench/archive.py`; each part a redis-server and a prefork worker of its own, concurrency "
        f"{a['concurrency']}, `SAGA_HOT_RETENTION_SECONDS={hot}`; PostgreSQL: {a['postgresql']}):",
        "",
        "| figure | value | target | holds |",
        "| --- | ---: | --- | --- |",
    ]
    for row in a["throughput"]:
        name = _DIALECT[row["dialect"]]
        holds = _holds(t[f"archive_throughput_{row['dialect']}"]["holds"])
        lines.append(
            f"| archiver throughput, {name}: `Archiver.drain()` of the feed left by {row['runs']} noop5 runs "
            f"(archiver off while they ran), archived runs/s | {row['archived_runs_per_s']:.1f} "
            f"= {row['ratio']:.2f}x the saga's {row['saga_runs_per_s']:.1f} runs/s (same runs, feed on, first "
            f"start to last completion) "
            f"| >= {ARCHIVE_RATIO_MIN:g}x | {holds} |"
        )
    lines.append(
        f"| archive feed lag under load, s: p95 (p50, max) of {lag['samples']} samples every "
        f"{lag['interval_s'] * 1000:.0f} ms, {lag['runs']} runs at once, archiver thread on "
        f"| {lag['p95_s']:.2f} ({lag['p50_s']:.2f}, {lag['max_s']:.2f}) | <= {ARCHIVE_LAG_P95_MAX_S:g} "
        f"| {_holds(t['archive_lag_p95']['holds'])} |"
    )
    tidy = mem["after_tidy"]
    lines.append(
        f"| Redis bytes per finished run one hot retention ({hot} s) after archiving: `used_memory` delta "
        f"less the clients' buffers / {mem['runs']} runs (run keys left: {mem['run_keys_left']}) "
        f"| {mem['bytes_per_run']:+.1f} | 0 | {_holds(t['archive_bytes_per_run']['holds'])} |"
    )
    lines.append(
        f"| ... once the watchdog's tidy (every 60 s) dropped the {mem['tidied_entries']:,} runs' "
        f"`status:completed` index entries | {tidy['bytes_per_run']:+.1f} | | |"
    )
    for row in a["listing"]:
        name = _DIALECT[row["dialect"]]
        holds = _holds(t[f"archive_list_{row['dialect']}"]["holds"])
        lines.append(
            f"| `saga list --tag customer=… --status compensated --limit 20` over {row['runs']:,} archived runs, "
            f"{name}: `find_runs` p50 (max) of {row['calls']} customers, ms | {row['p50_ms']:.2f} "
            f"({row['max_ms']:.2f}) | <= {ARCHIVE_LIST_MAX_MS:g} | {holds} |"
        )
        lines.append(
            f"| ... the same through the CLI once (`python -m saga list ... --json`, wall time with Python "
            f"start-up), {name}, ms | {row['cli_ms']:.0f} | | |"
        )
    main = result.get("saga", {}).get("runs_per_s")
    against_main = ""
    if main:
        against_main = (
            f" (the main table's saga, without an archive: {main:.1f} runs/s; against it: "
            + ", ".join(f"{r['archived_runs_per_s'] / main:.2f}x ({_DIALECT[r['dialect']]})" for r in a["throughput"])
            + ")"
        )
    pg_drain = ""
    if any(r["dialect"] == "postgresql" for r in a["throughput"]):
        pg_drain = (
            " The workers' `SAGA_ARCHIVE_URL` is the SQLite file in both drains: with `SAGA_ARCHIVER=false` it "
            "only turns the feed on; the drains run in the benchmark's process, one Archiver per database."
        )
    resumes = ", ".join(
        f"{r['watchdog_resumes']} ({_DIALECT[r['dialect']]})" for r in a["throughput"] if "watchdog_resumes" in r
    )
    seen = ", ".join(
        f"{r['saga_seen_done_after_s']:.1f} s ({_DIALECT[r['dialect']]}; last completion at {r['saga_seconds']:.1f} s)"
        for r in a["throughput"]
        if "saga_seen_done_after_s" in r
    )
    notes = [
        f"Throughput: the saga's runs/s are those of the very runs whose feed is then drained (feed on, archiver "
        f"off){against_main}; with the archiver thread on, the lag runs went at {lag['saga_runs_per_s']:.1f} "
        f"runs/s.{pg_drain}"
        + (
            f" Watchdog resumes among the runs (steps queued longer than the dispatch timeout): {resumes}."
            if resumes
            else ""
        )
        + (f" The benchmark saw the `active` index empty after {seen}." if seen else ""),
        f"Lag: the feed emptied {lag['feed_empty_after_last_run_s']:.2f} s after the last run finished, "
        f"at most {lag['max_depth']:,} entries waited.",
    ]
    notes.append(
        f"Redis: every run key was gone {mem['keys_gone_after_feed_empty_s']:.1f} s after the feed emptied; "
        f"what a run still holds then is its entry in its bucket's `status:completed` sorted set "
        f"({mem['status_index_entries_left']:,} entries left), which the watchdog drops once a minute "
        f"(`trim_finished`); the feed streams are empty ({mem['feed_entries_left']} entries)"
        + (
            f"; {mem['active_entries_left']} entries of finished runs are still in the `active` index (re-added "
            f"by the watchdog as they finished; it drops them when it looks again)"
            if mem.get("active_entries_left")
            else ""
        )
        + f". Raw `used_memory` "
        f"deltas per run: {mem['used_memory_per_run']:+.1f}, then {tidy['used_memory_per_run']:+.1f} after the "
        f"tidy, of which the clients' query and output buffers {mem['client_buffers_per_run']:+.1f} and "
        f"{tidy['client_buffers_per_run']:+.1f} (connections' traffic, not runs)."
    )
    if a["listing"]:
        row = a["listing"][0]
        fills = ", ".join(f"{r['fill_seconds']:g} s ({_DIALECT[r['dialect']]})" for r in a["listing"])
        notes.append(
            f"Listing: {row['runs']:,} synthetic finished runs written straight into `saga_runs` and "
            f"`saga_run_tags` (no events: a listing never reads them), {row['customers']:,} customers "
            f"uniformly, 5 regions, {row['compensated']:,} compensated, {row['failed']:,} failed, created over "
            f"30 days; filled in {fills}; PostgreSQL `ANALYZE`d after the fill (as autovacuum would). "
            f"{row['warmup_calls']} untimed calls (other customers) before the timed ones."
        )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def breakdown(result: dict[str, Any], top: int = 12) -> str:
    """Redis commands per step by command, for each variant (over every repetition)."""
    out = []
    for name in ("saga", "chain"):
        per = result[name]["commands_per_step_by_command"]
        items = ", ".join(f"{cmd} {n:.2f}" for cmd, n in list(per.items())[:top])
        out.append(f"  {name}: {items}")
    for name in ("saga", "chain"):
        probe = result[name]["commands_sent"]
        sent = ", ".join(f"{cmd} {n:.2f}" for cmd, n in list(probe["sent_by_command"].items())[:top])
        out.append(f"  {name}, sent by clients: {sent}")
        if probe["in_scripts_by_command"]:
            inside = ", ".join(f"{cmd} {n:.2f}" for cmd, n in list(probe["in_scripts_by_command"].items())[:top])
            out.append(f"  {name}, inside scripts: {inside}")
    return "Redis commands per step, by command:\n" + "\n".join(out)

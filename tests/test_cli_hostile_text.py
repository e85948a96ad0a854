"""Untrusted text never drives the operator's terminal or forges a log line: an error message a
downstream service echoed (ANSI escapes, a line break, a forged log line, rich markup) is shown
escaped by every human-readable ``saga`` command, ``--json`` keeps it exact, and the worker's log
lines about it stay one line each. The run is failed by the suite's in-thread worker on the
suite's Redis; the CLI runs as a subprocess, as an operator runs it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from saga import Status
from saga.cli import EXIT_OK, cli
from saga.control import runs as control
from saga.engine import run_logger
from saga.registry import Registry, default_registry
from saga.testing import worker_env
from tests.sagas import trip

ROOT = Path(__file__).resolve().parents[1]
FORGED = "[2026-12-07 00:00:00,000: INFO/MainProcess] forged log line"
#: What the step raises: clears the screen, turns the text red, then starts a line of its own.
HOSTILE = f"\x1b[2J\x1b[1;31mPWNED\x1b[0m\n{FORGED} [bold red]x[/]"
#: A payload value with a C1 control (CSI in one byte), which JSON leaves as it is.
C1 = "\x9b2J"

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def failed_run() -> str:
    """A run whose step raised HOSTILE: compensated, with a dead-letter entry."""
    run_id = trip.start({"fail_at": "hotel", "fail_message": HOSTILE, "note": C1})
    state = trip.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED and state.error is not None and state.error.message == HOSTILE
    return run_id


def saga(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=worker_env(default_registry().settings),
        timeout=60,
    )


def assert_safe(text: str) -> None:
    """No raw control character reaches the terminal, and the forged log line never begins a
    line (nor sits on one without the escaped line break before it)."""
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
    for line in text.splitlines():
        assert not line.lstrip().startswith("[2026-12-07"), line
        if "forged log line" in line:
            assert "\\n[2026-12-07" in line, line


@pytest.mark.parametrize(
    ("command", "shows_error", "shows_note"),
    [
        (["list", "--saga", "trip", "--limit", "1000"], True, False),
        (["show"], True, True),
        (["events"], True, False),  # the payload is cut before the note
        (["history"], False, True),  # payload changes only
    ],
)
def test_reading_commands_show_hostile_text_escaped(
    failed_run: str, command: list[str], shows_error: bool, shows_note: bool
) -> None:
    args = [*command, failed_run] if command[0] != "list" else command
    out = saga(*args)
    assert out.returncode == EXIT_OK, out.stderr
    assert_safe(out.stdout)
    if shows_error:  # escaped, not swallowed; rich markup taken literally
        assert "\\x1b[2J\\x1b[1;31mPWNED\\x1b[0m\\n[2026-12-07" in out.stdout
        assert "[bold red]x[/]" in out.stdout
    if shows_note:  # the payload's C1 control, escaped
        assert "\\x9b2J" in out.stdout


def test_dlq_list_shows_hostile_text_escaped(failed_run: str) -> None:
    out = saga("dlq", "list", "--limit", "1000")
    assert out.returncode == EXIT_OK, out.stderr
    assert f"{failed_run}." in out.stdout
    assert_safe(out.stdout)
    assert "\\x1b[2J\\x1b[1;31mPWNED" in out.stdout and "[bold red]x[/]" in out.stdout


def test_json_output_keeps_the_exact_text(failed_run: str) -> None:
    def json_of(*args: str) -> Any:
        out = saga(*args, "--json")
        assert out.returncode == EXIT_OK, out.stderr
        return json.loads(out.stdout)

    assert json_of("show", failed_run)["error"]["message"] == HOSTILE
    assert json_of("show", failed_run)["payload"]["note"] == C1
    assert any(r["error"] and r["error"]["message"] == HOSTILE for r in json_of("list") if r["id"] == failed_run)
    assert any(e.get("error", {}).get("message") == HOSTILE for e in json_of("events", failed_run))
    assert json_of("history", failed_run)[0]["changes"]["added"]["note"] == C1
    [entry] = [e for e in json_of("dlq", "list", "--limit", "1000") if e["run_id"] == failed_run]
    assert entry["error_message"] == HOSTILE


def test_tail_prints_hostile_text_on_its_event_s_line(failed_run: str) -> None:
    out = saga("tail", failed_run)  # a finished run: its events, then the tail ends
    assert out.returncode == EXIT_OK, out.stderr
    assert_safe(out.stdout)
    assert "\\x1b[2J\\x1b[1;31mPWNED" in out.stdout and "[bold red]x[/]" in out.stdout
    as_json = saga("tail", failed_run, "--json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert any(e.get("error", {}).get("message") == HOSTILE for e in events)


def test_an_error_line_escapes_the_hostile_text_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an error whose message carries text from elsewhere (here, from a failing read)
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(HOSTILE)

    monkeypatch.setattr(control, "stats", broken)
    runner = CliRunner(env=default_registry().settings.to_env())
    out = runner.invoke(cli, ["stats"], obj=Registry())
    assert "\x1b" not in out.stderr
    [line] = out.stderr.splitlines()  # the line break folded: the forged text stays on the error's line
    assert line.startswith("error: unexpected ValueError: \\x1b[2J\\x1b[1;31mPWNED") and "--debug" in line
    # and with --debug, the traceback's lines are escaped too
    debug = runner.invoke(cli, ["--debug", "stats"], obj=Registry())
    assert "Traceback" in debug.stderr and "\x1b" not in debug.stderr
    assert not any(line.startswith("[2026-12-07") for line in debug.stderr.splitlines())


def test_the_worker_logs_a_hostile_step_error_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        run_id = trip.start({"fail_at": "hotel", "fail_message": HOSTILE})
        assert trip.wait(run_id, timeout=30).status is Status.COMPENSATED
    about = [r for r in caplog.records if run_id[:8] in r.getMessage()]
    assert any("PWNED" in r.getMessage() for r in about)  # the error is logged ...
    formatter = logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    for record in about:  # ... escaped: one line each, no escape sequence
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line


def test_a_run_log_of_the_whole_run_prints_no_empty_step(caplog: pytest.LogCaptureFixture) -> None:
    # `saga compensate` logs about the whole run: no step, so no `step=` in the line
    log = run_logger(logging.getLogger("saga.test"), "run-1", "trip", "")
    with caplog.at_level(logging.INFO, logger="saga.test"):
        log.warning("compensation requested by an operator: %s", "operator")
    [record] = [r for r in caplog.records if r.name == "saga.test"]
    assert record.getMessage() == "[run=run-1 saga=trip] compensation requested by an operator: operator"
    assert record.step == ""  # type: ignore[attr-defined]  # the attribute stays, for formatters


def test_run_log_escapes_its_message_and_text_arguments(caplog: pytest.LogCaptureFixture) -> None:
    log = run_logger(logging.getLogger("saga.test"), "run\n1", "trip\x1b[31m", "hotel")
    with caplog.at_level(logging.INFO, logger="saga.test"):
        log.error("gave up: %s: %s (%d)", "PermanentError", HOSTILE, 3)
        log.warning("failed: %s", ValueError(HOSTILE))
        log.info(f"raw {HOSTILE}")
    lines = [r.getMessage() for r in caplog.records if r.name == "saga.test"]
    assert len(lines) == 3
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "[run=run\\n1 saga=trip\\x1b[31m step=hotel]" in line
    assert lines[0].endswith(f"gave up: PermanentError: \\x1b[2J\\x1b[1;31mPWNED\\x1b[0m\\n{FORGED} [bold red]x[/] (3)")

"""The SQL archive (saga.archive) against real databases: SQLite in a temporary folder always, and
PostgreSQL too when TEST_ARCHIVE_URL names one (in a schema of its own, emptied before each
test). Runs are built with the pure core (saga.decide), so no Redis is involved.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from saga.archive import (
    Archive,
    ArchivedRun,
    ArchiveRowRefused,
    RunCopy,
    RunQuery,
    head_revision,
    listing,
    metadata,
    tables,
)
from saga.core import Direction, Event, EventType, SagaState, Shape, Status, decide, iso, micros, rebuild
from saga.errors import ActionRefused, ArchiveSchemaMismatch, ArchiveUnavailable, Rejected, RunNotFound, SettingsError

SHAPE = Shape(("reserve", "charge", "ship", "notify"), (True, True, False, False))
BASE = micros("2025-03-01T00:00:00Z")
MINUTE = 60_000_000
TABLES = ("saga_dead_letters", "saga_checkpoints", "saga_events", "saga_run_tags", "saga_runs", "alembic_version")
PG_SCHEMA = "saga_test_archive_sql"
OUTCOMES = ("pending", "running", "completed", "compensated", "failed", "dropped", "retried", "rejected")


# --- databases ---------------------------------------------------------------------------------


def _pg_url(base: str) -> str:
    """A URL of TEST_ARCHIVE_URL's database whose tables go to a schema of this file's own, emptied."""
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
        for table in TABLES:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {PG_SCHEMA}.{table}"))
        conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {PG_SCHEMA}.refuse_poison()"))
    engine.dispose()
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={PG_SCHEMA}"})
    return url.render_as_string(hide_password=False)


DIALECTS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_ARCHIVE_URL") else [])


@pytest.fixture(params=DIALECTS)
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archive.db'}"
    return _pg_url(os.environ["TEST_ARCHIVE_URL"])


@pytest.fixture
def archive(archive_url: str) -> Iterator[Archive]:
    archive = Archive(archive_url)
    archive.upgrade()
    yield archive
    archive.dispose()


def sql(url: str, statement: str) -> list[Any]:
    """Run one SQL statement on the archive's database; its rows."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


# --- runs --------------------------------------------------------------------------------------


def make_run(
    run_id: str,
    outcome: str,
    created_us: int,
    *,
    saga: str = "order",
    tags: Mapping[str, str] | None = None,
    definition_version: int = 1,
) -> list[Event]:
    """The events of a run that went as ``outcome`` says, one millisecond apart from ``created_us``."""
    clock = iter(range(10_000))

    def at() -> str:
        return iso(created_us + next(clock) * 1000)

    payload = {"order": run_id, "amount": 12.5, "ratio": 0.1, "big": 1e300, "note": "ünïcode ✓", "items": [1, [2]]}
    start = decide.decide_start(run_id, saga, payload, at(), definition_version=definition_version, tags=tags)
    events, state = list(start.events), start.state

    def add(transition: Any) -> None:
        nonlocal state
        events.extend(transition.events)
        state = transition.state

    def started(i: int, kind: EventType = EventType.STEP_STARTED) -> None:
        events.append(decide.note_event(state, kind, at(), step=i, name=SHAPE.steps[i], attempt=1))

    if outcome == "pending":
        return events
    last = 4 if outcome == "completed" else 2
    for i in range(last):
        started(i)
        if i == 1:
            error = TimeoutError("slow bank")
            events.append(decide.decide_retry(state, SHAPE, Direction.FORWARD, i, 1, error, 0.25, at=at()))
        add(decide.decide_step_succeeded(state, SHAPE, i, {SHAPE.steps[i]: f"ok-{i}"}, at()))
    if outcome in ("running", "completed"):
        if outcome == "running":
            started(2)
        return events
    started(2)
    if outcome == "rejected":
        add(decide.decide_step_rejected(state, SHAPE, 2, Rejected("insufficient funds"), 1, at()))
        for i in (1, 0):
            started(i, EventType.COMPENSATION_STARTED)
            add(decide.decide_compensation_succeeded(state, SHAPE, i, at()))
        return events
    gave_up, forward_entry = decide.decide_step_gave_up(state, SHAPE, 2, ValueError("no stock"), 3, at())
    add(gave_up)
    started(1, EventType.COMPENSATION_STARTED)
    if outcome in ("compensated", "dropped"):
        add(decide.decide_compensation_succeeded(state, SHAPE, 1, at()))
        started(0, EventType.COMPENSATION_STARTED)
        add(decide.decide_compensation_succeeded(state, SHAPE, 0, at()))
        if outcome == "dropped":
            note = decide.note_event(
                state, EventType.SAGA_DEAD_LETTER_DROPPED, at(), entry_id=forward_entry["id"], reason="known"
            )
            events.append(note)
        return events
    failed, entry = decide.decide_compensation_gave_up(state, SHAPE, 1, RuntimeError("refund api down"), 5, at())
    add(failed)
    if outcome == "retried":
        add(decide.decide_retry_compensation(state, SHAPE, 1, entry["id"], at()))
    return events


def copy_of(events: list[Event], bucket: int = 3) -> RunCopy:
    return RunCopy(rebuild(events), events, bucket)


def dataset() -> list[list[Event]]:
    """Forty-two runs of two sagas and two definition versions, every outcome, tagged by customer
    and region (some with no tags), a minute apart; some pairs share their created_at."""
    runs = []
    for i in range(42):
        tags = {} if i % 7 == 3 else {"customer": f"c-{i % 5}", "region": ("eu", "us")[i % 2]}
        created = BASE + (i - i % 2 * (i % 3 == 1)) * MINUTE  # odd runs 1 mod 3 share with the one before
        runs.append(
            make_run(
                f"run-{i:03d}",
                OUTCOMES[i % len(OUTCOMES)],
                created,
                saga=("order", "refund")[i % 3 == 0],
                tags=tags,
                definition_version=1 + (i % 4 == 0),
            )
        )
    return runs


def newest_first(states: list[SagaState]) -> list[str]:
    return [s.id for s in sorted(states, key=lambda s: (micros(s.created_at), s.id), reverse=True)]


def every_page(archive: Archive, query: RunQuery) -> list[ArchivedRun]:
    """Every run a listing gives, following its cursors."""
    runs: list[ArchivedRun] = []
    cursor = ""
    for _ in range(1000):
        page = archive.find_runs(RunQuery(**{**vars(query), "cursor": cursor}))
        assert len(page.runs) <= query.limit
        runs += page.runs
        if page.cursor is None:
            return runs
        cursor = page.cursor
    raise AssertionError("the pages never end")


# --- schema ------------------------------------------------------------------------------------


def test_check_schema_names_the_upgrade_until_the_archive_is_upgraded(archive_url: str) -> None:
    archive = Archive(archive_url)
    with pytest.raises(ArchiveSchemaMismatch, match=r"has schema none, this saga needs 0002: run `saga db upgrade`"):
        archive.check_schema()
    with pytest.raises(ArchiveSchemaMismatch, match="saga db upgrade"):
        archive.write([copy_of(make_run("r1", "completed", BASE))])
    assert archive.upgrade() == head_revision() == "0002"
    archive.check_schema()
    assert archive.upgrade() == "0002"  # twice: nothing to do
    assert archive.revision() == "0002" and archive.run_count() == 0
    archive.dispose()


def test_the_migrations_create_exactly_the_tables_the_archive_uses(archive: Archive, archive_url: str) -> None:
    engine = sa.create_engine(archive_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("saga_runs")}
    engine.dispose()
    gin = "ix_saga_runs_tags_gin"
    assert [d for d in diffs if not (d[0] == "add_index" and d[1].name == gin)] == []
    assert (gin in indexes) == archive_url.startswith("postgresql")


def test_a_url_of_another_database_is_refused_at_once_and_a_password_never_shows() -> None:
    with pytest.raises(SettingsError, match="mysql"):
        Archive("mysql://u@db/x")
    with pytest.raises(SettingsError, match="not a database URL"):
        Archive("not a url")
    assert Archive("postgresql://u:hunter2@db/x").url_for_humans == "postgresql+psycopg://u:***@db/x"


def test_an_unreachable_database_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = Archive(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(ArchiveUnavailable) as raised:
        missing.upgrade()
    message = str(raised.value)
    assert "\n" not in message and "unable to open database file" in message and "SAGA_ARCHIVE_URL" in message
    assert not (tmp_path / "no").exists()
    closed = Archive("postgresql+psycopg://saga:hunter2@127.0.0.1:1/archive")
    for action in (closed.check_schema, closed.run_count, lambda: closed.events("r1")):
        with pytest.raises(ArchiveUnavailable) as raised:
            action()
        message = str(raised.value)
        assert message.startswith("the archive at postgresql+psycopg://saga:***@127.0.0.1:1/archive does not answer (")
        assert "\n" not in message and "hunter2" not in message
        assert raised.value.__cause__ is None and raised.value.__suppress_context__


# --- writing -----------------------------------------------------------------------------------


def test_events_read_back_exactly_as_written(archive: Archive) -> None:
    runs = [make_run(f"r-{outcome}", outcome, BASE + i * MINUTE, tags={"k": "v"}) for i, outcome in enumerate(OUTCOMES)]
    archive.write([copy_of(events) for events in runs])
    for events in runs:
        got = archive.events(events[0]["run_id"])
        assert got == events
        assert json.dumps(got) == json.dumps(events)  # field order and number spelling kept too
        assert rebuild(got) == rebuild(events)
    assert archive.run_count() == len(runs) and archive.event_count() == sum(map(len, runs))
    with pytest.raises(RunNotFound):
        archive.events("never-archived")


def test_a_listed_run_carries_the_states_exact_strings(archive: Archive) -> None:
    events = make_run("r1", "failed", BASE + 123_457, saga="refund", tags={"customer": "c-42"}, definition_version=3)
    state = rebuild(events)
    archive.write([copy_of(events)])
    [run] = archive.find_runs(RunQuery()).runs
    assert state.error is not None
    assert run.to_dict() == {
        "run_id": "r1",
        "saga": "refund",
        "definition_version": 3,
        "status": "failed",
        "version": state.version,
        "current_step": state.current_step,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "finished_at": state.updated_at,
        "failed_step": "ship",  # the step that failed, not the compensation that gave up after it
        "error_type": "ValueError",
        "error_message": "no stock",
        "tags": {"customer": "c-42"},
    }
    assert state.created_at.endswith(".123457Z")


def test_repeated_and_late_copies_never_move_a_run_back_or_duplicate_events(archive: Archive, archive_url: str) -> None:
    events = make_run("r1", "completed", BASE)
    early, middle, full = copy_of(events[:3]), copy_of(events[:6]), copy_of(events)
    archive.write([early])
    assert archive.events("r1") == events[:3]
    archive.write([full, early])  # the same run twice in a batch: its newest copy counts
    archive.write([middle])  # a late copy
    archive.write([full])  # a repeated copy
    archive.write([])
    assert archive.events("r1") == events and archive.event_count() == len(events)
    [run] = archive.find_runs(RunQuery()).runs
    assert (run.status, run.version) == ("completed", full.state.version)
    assert sql(archive_url, "SELECT event_count, bucket FROM saga_runs") == [(len(events), 3)]
    assert sql(archive_url, "SELECT count(*) FROM saga_checkpoints") == [(4,)]
    # a note at the same version (a started event) still moves the copy on
    running = make_run("r2", "running", BASE)
    archive.write([copy_of(running[:-1])])
    archive.write([copy_of(running)])
    assert archive.events("r2") == running


def test_dead_letters_are_derived_from_events_and_only_move_forward(archive: Archive, archive_url: str) -> None:
    retried = make_run("r-retried", "retried", BASE)
    before_retry = retried[:-1]
    archive.write([copy_of(make_run("r-dropped", "dropped", BASE)), copy_of(before_retry)])
    query = "SELECT entry_id, kind, step, status, attempts FROM saga_dead_letters ORDER BY entry_id"
    assert sorted(sql(archive_url, query)) == [
        ("r-dropped.4", "forward", "ship", "dropped", 3),
        ("r-retried.4", "forward", "ship", "open", 3),
        ("r-retried.5", "compensation", "charge", "open", 5),
    ]
    archive.write([copy_of(retried)])
    archive.write([copy_of(before_retry)])  # late: nothing goes back to open
    assert ("r-retried.5", "compensation", "charge", "retried", 5) in sql(archive_url, query)
    [(data,)] = sql(archive_url, "SELECT data FROM saga_dead_letters WHERE entry_id = 'r-dropped.4'")
    entry = json.loads(data) if isinstance(data, str) else data
    assert entry["error_message"] == "no stock" and entry["run_id"] == "r-dropped"


def test_a_refused_row_refuses_the_whole_batch(archive: Archive, archive_url: str) -> None:
    if archive_url.startswith("sqlite"):
        sql(
            archive_url,
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON saga_runs WHEN NEW.run_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
    else:
        sql(
            archive_url,
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.run_id = 'poison' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF; "
            "RETURN NEW; END $$",
        )
        sql(
            archive_url,
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON saga_runs FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        )
    good = [copy_of(make_run(f"g{i}", "completed", BASE)) for i in range(3)]
    poison = copy_of(make_run("poison", "completed", BASE))
    with pytest.raises(ArchiveRowRefused, match="refused") as raised:
        archive.write([good[0], poison, good[1]])
    assert "\n" not in str(raised.value)
    assert archive.run_count() == 0 and archive.event_count() == 0
    assert sql(archive_url, "SELECT count(*) FROM saga_run_tags") == [(0,)]
    archive.write(good)
    assert archive.run_count() == 3


@pytest.mark.parametrize("odd", [{"a set"}, "a lone \ud800 surrogate", None])
def test_a_value_no_row_can_hold_refuses_the_batch(archive: Archive, odd: Any) -> None:
    good, bad = make_run("good", "completed", BASE), make_run("bad", "completed", BASE)
    copy = copy_of(bad)
    if odd is None:
        bad[-1]["at"] = "yesterday"
    else:
        bad[-1]["odd"] = odd
    with pytest.raises(ArchiveRowRefused, match="cannot store a value"):
        archive.write([copy_of(good), copy])
    assert archive.run_count() == 0


def test_a_batch_of_500_runs_is_written_well_under_a_second(archive: Archive) -> None:
    runs = [
        make_run(f"bulk-{i:04d}", ("completed", "compensated")[i % 2], BASE + i, tags={"c": str(i)}) for i in range(500)
    ]
    copies = [copy_of(events) for events in runs]
    began = time.perf_counter()
    archive.write(copies)
    took = time.perf_counter() - began
    events = sum(len(c.events) for c in copies)
    print(f"\n{archive.url_for_humans.split(':')[0]}: 500 runs, {events} events written in {took * 1000:.0f} ms")
    assert archive.run_count() == 500 and archive.event_count() == events
    assert took < 3.0  # generous for a busy machine; typically far less


# --- reading -----------------------------------------------------------------------------------


@pytest.fixture
def filled(archive: Archive) -> tuple[Archive, list[SagaState]]:
    runs = dataset()
    archive.write([copy_of(events, bucket=i % 4) for i, events in enumerate(runs)])
    return archive, [rebuild(events) for events in runs]


def _since(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


QUERIES: list[tuple[RunQuery, Callable[[SagaState], bool]]] = [
    (RunQuery(), lambda s: True),
    (RunQuery(status=["compensated"]), lambda s: s.status == "compensated"),
    (RunQuery(status=["completed", "failed"]), lambda s: s.status in ("completed", "failed")),
    (RunQuery(saga="refund"), lambda s: s.saga == "refund"),
    (RunQuery(tags={"customer": "c-2"}), lambda s: s.tags.get("customer") == "c-2"),
    (
        RunQuery(tags={"customer": "c-2", "region": "eu"}),
        lambda s: s.tags.get("customer") == "c-2" and s.tags.get("region") == "eu",
    ),
    (
        RunQuery(tags={"region": "us", "customer": "c-1"}, status=["failed", "compensated", "running"]),
        lambda s: (
            s.tags.get("customer") == "c-1"
            and s.tags.get("region") == "us"
            and s.status != "completed"
            and s.status in ("failed", "compensated", "running")
        ),
    ),
    (RunQuery(tags={"customer": "c-9"}), lambda s: False),
    (RunQuery(tags={"customer": "c-2", "region": "mars"}), lambda s: False),
    (
        RunQuery(since=_since(BASE + 10 * MINUTE), until=_since(BASE + 30 * MINUTE)),
        lambda s: BASE + 10 * MINUTE <= micros(s.created_at) < BASE + 30 * MINUTE,
    ),
    (
        RunQuery(tags={"region": "eu"}, since=_since(BASE + 10 * MINUTE), until=_since(BASE + 30 * MINUTE)),
        lambda s: s.tags.get("region") == "eu" and BASE + 10 * MINUTE <= micros(s.created_at) < BASE + 30 * MINUTE,
    ),
    (RunQuery(failed_step="ship"), lambda s: s.error is not None and s.error.name == "ship"),
    (RunQuery(definition_version=2, saga="order"), lambda s: s.definition_version == 2 and s.saga == "order"),
]


@pytest.mark.parametrize("limit", [1, 4, 50])
def test_listings_give_every_matching_run_once_newest_first_across_pages(
    filled: tuple[Archive, list[SagaState]], limit: int
) -> None:
    archive, states = filled
    for query, wanted in QUERIES:
        expected = newest_first([s for s in states if wanted(s)])
        got = [r.run_id for r in every_page(archive, RunQuery(**{**vars(query), "limit": limit}))]
        assert got == expected, query
    assert any(len(newest_first([s for s in states if w(s)])) > 4 for _, w in QUERIES[1:])


def test_a_listing_refuses_a_bad_cursor_status_or_limit(filled: tuple[Archive, list[SagaState]]) -> None:
    archive, _ = filled
    page = archive.find_runs(RunQuery(limit=2))
    assert page.cursor is not None and len(page.runs) == 2 and page.cursors[-1] == page.cursor
    after_first = archive.find_runs(RunQuery(limit=1, cursor=page.cursors[0])).runs
    assert after_first == page.runs[1:]
    for bad in ("garbage!", "eyJ4IjoxfQ", page.cursor[:-3]):
        with pytest.raises(ActionRefused, match="not a listing cursor"):
            archive.find_runs(RunQuery(cursor=bad))
    with pytest.raises(ActionRefused, match="not a status"):
        archive.find_runs(RunQuery(status=["done"]))
    with pytest.raises(ActionRefused, match="limit"):
        archive.find_runs(RunQuery(limit=0))


def test_stats_count_runs_and_the_steps_they_failed_at(filled: tuple[Archive, list[SagaState]]) -> None:
    archive, states = filled
    stats = archive.stats()
    counts = Counter((s.saga, s.definition_version, s.status.value) for s in states)
    assert stats.runs == sorted((*key, n) for key, n in counts.items())
    # a rejection is an expected outcome, not a failing step
    failing = Counter((s.saga, s.error.name) for s in states if s.error is not None and s.error.type != "Rejected")
    assert any(s.error is not None and s.error.type == "Rejected" for s in states)
    assert stats.failing_steps == sorted(
        ((sg, st, n) for (sg, st), n in failing.items()), key=lambda x: (-x[2], x[0], x[1])
    )
    recent = archive.stats(since=_since(BASE + 30 * MINUTE))
    assert sum(n for *_, n in recent.runs) == sum(micros(s.created_at) >= BASE + 30 * MINUTE for s in states)


# --- purging -----------------------------------------------------------------------------------


def test_purge_deletes_only_finished_runs_older_than_the_cutoff_with_all_their_rows(
    filled: tuple[Archive, list[SagaState]], archive_url: str
) -> None:
    archive, states = filled
    cutoff_us = BASE + 20 * MINUTE
    with pytest.raises(ActionRefused, match="not finished"):
        archive.purge(_since(cutoff_us), statuses=["running"])
    old = [s for s in states if s.status.terminal and micros(s.updated_at) < cutoff_us]
    old_failed = [s for s in old if s.status is Status.FAILED]
    assert archive.purge(_since(cutoff_us), statuses=["failed"]) == len(old_failed) > 0
    assert archive.purge(_since(cutoff_us), batch=2) == len(old) - len(old_failed) > 2
    assert archive.purge(_since(cutoff_us)) == 0
    kept = {s.id for s in states} - {s.id for s in old}
    assert {r.run_id for r in every_page(archive, RunQuery(limit=100))} == kept
    assert any(not s.status.terminal and micros(s.created_at) < cutoff_us for s in states)
    for table in ("saga_events", "saga_checkpoints", "saga_run_tags", "saga_dead_letters"):
        [(orphans,)] = sql(
            archive_url, f"SELECT count(*) FROM {table} WHERE run_id NOT IN (SELECT run_id FROM saga_runs)"
        )
        assert orphans == 0, table
    for state in old:
        with pytest.raises(RunNotFound):
            archive.events(state.id)


def test_a_tag_listing_scans_the_tag_index_in_order_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    Archive(url).upgrade()
    query = RunQuery(tags={"customer": "c-42", "region": "eu"}, status=["compensated"], since=_since(BASE))
    stmt = listing(query, (BASE + MINUTE, "r9"), ("customer", "c-42"))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        text = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
        plan = [row[-1] for row in conn.execute(sa.text("EXPLAIN QUERY PLAN " + text))]
    engine.dispose()
    assert "USING COVERING INDEX ix_saga_run_tags_lookup (key=? AND value=?" in plan[0], plan
    assert not any("TEMP B-TREE" in step or step.startswith("SCAN") for step in plan), plan


def test_a_new_sqlite_archive_and_its_companion_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    # Given the usual umask (files world-readable by default)
    old = os.umask(0o022)
    try:
        path = tmp_path / "runs.db"
        archive = Archive(f"sqlite:///{path}")
        archive.upgrade()
        archive.run_count()
        # Then the database and every file SQLite made beside it are 0600
        made = [p for p in tmp_path.iterdir() if p.name.startswith("runs.db")]
        assert path in made and any(p.name.endswith("-wal") for p in made)
        assert {p.name: os.stat(p).st_mode & 0o777 for p in made} == {p.name: 0o600 for p in made}
        archive.dispose()
        # and an existing file's mode is left as it is (never loosened, never changed)
        kept = tmp_path / "kept.db"
        kept.touch(mode=0o640)
        os.chmod(kept, 0o640)
        other = Archive(f"sqlite:///{kept}")
        other.upgrade()
        assert os.stat(kept).st_mode & 0o777 == 0o640
        other.dispose()
    finally:
        os.umask(old)


def test_run_ids_by_prefix_are_exact_sorted_and_bounded(archive: Archive) -> None:
    ids = ["a8c9ea86-0001", "a8c9ea86-0002", "a8c9ea87-0001", "A8C9EA86-0003", "a8c9%a86-x", "a8c9_a86-y"]
    archive.write([copy_of(make_run(run_id, "completed", BASE + i * MINUTE)) for i, run_id in enumerate(ids)])
    assert archive.ids_with_prefix("a8c9ea86") == ["a8c9ea86-0001", "a8c9ea86-0002"]  # case-sensitive
    assert archive.ids_with_prefix("a8c9ea86-") == ["a8c9ea86-0001", "a8c9ea86-0002"]  # a `-` counts
    assert archive.ids_with_prefix("a8c9ea86", limit=1) == ["a8c9ea86-0001"]
    assert archive.ids_with_prefix("a8c9%a86") == ["a8c9%a86-x"]  # LIKE's wildcards are literal
    assert archive.ids_with_prefix("a8c9_a86") == ["a8c9_a86-y"]
    assert archive.ids_with_prefix("a8c9ea8") == ["a8c9ea86-0001", "a8c9ea86-0002", "a8c9ea87-0001"]
    assert archive.ids_with_prefix("b0000000") == []
    with pytest.raises(ActionRefused):
        archive.ids_with_prefix("")


def test_a_prefix_lookup_is_a_range_scan_of_the_primary_key_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    Archive(url).upgrade()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stmt = tables.ids_with_prefix("a8c9ea86", 10, "sqlite")
        text = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
        plan = [row[-1] for row in conn.execute(sa.text("EXPLAIN QUERY PLAN " + text))]
    engine.dispose()
    assert any("sqlite_autoindex_saga_runs_1 (run_id>? AND run_id<?)" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan

"""Bad input in-process, on the suite's worker: the one validator at start() and on step outputs,
failures after the body counted as attempts (never a loop), and a fuzz test over both."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga import InvalidPayload, RunNotFound, SagaState, Status, dead_letters
from saga.core import decide
from saga.store import Client
from tests.sagas import FUZZ_OUTPUTS, fuzz, ledger, trip

pytestmark = pytest.mark.usefixtures("worker")

#: Examples per fuzz test: a few dozen in `make test`, more under `make chaos` (FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


def deep(depth: int) -> Any:
    """A list nested ``depth`` deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        ({"file": "caf\udce9.txt"}, "is not valid UTF-8 text (a lone surrogate"),
        ({"x": deep(1000)}, "nests deeper than 64 levels"),
        ({"blob": "x" * 2_000_000}, "over the 1048576 of SAGA_MAX_PAYLOAD_BYTES"),
        ({"n": float("nan")}, "is not JSON-serializable"),
        ({1: "one"}, "has a key that is not a string"),
    ],
)
def test_start_refuses_a_hostile_payload_before_anything_is_written(
    payload: dict[Any, Any], rule: str, redis_client: Client
) -> None:
    keys = redis_client.dbsize()
    with pytest.raises(InvalidPayload, match=re.escape(rule)):
        trip.start(payload, key=f"hostile-{uuid.uuid4()}")
    assert redis_client.dbsize() == keys


@pytest.mark.parametrize(
    "deadline",
    [
        1e20,
        pytest.param(10**400, id="10**400"),
        float("inf"),
        float("-inf"),
        float("nan"),
        -1,
        0,
        0.0,
        True,
        "60",
        [60],
    ],
)
def test_start_refuses_a_deadline_out_of_range_in_one_line_saying_the_range(
    deadline: object, redis_client: Client
) -> None:
    keys = redis_client.dbsize()
    with pytest.raises(InvalidPayload) as refused:
        trip.start({}, key=f"deadline-{uuid.uuid4()}", deadline=deadline)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "more than 0 and at most 3153600000 (100 years)" in message and "\n" not in message
    assert redis_client.dbsize() == keys
    # the same for the asyncio start
    with pytest.raises(InvalidPayload, match=re.escape("at most 3153600000")):
        asyncio.run(trip.start_async({}, deadline=deadline))  # type: ignore[arg-type]


def test_a_deadline_of_up_to_100_years_is_taken() -> None:
    run_id = trip.start({}, deadline=3153600000)
    assert trip.wait(run_id, timeout=30).status is Status.COMPLETED


@pytest.mark.parametrize(
    ("hostile", "rule"),
    [
        ("surrogate", "is not valid UTF-8 text (a lone surrogate"),
        ("deep", "nests deeper than 64 levels"),
        ("huge", "over the 1048576 of SAGA_MAX_PAYLOAD_BYTES"),
    ],
)
def test_a_step_output_that_breaks_a_rule_fails_the_step_permanently_once(hostile: str, rule: str) -> None:
    # a rule broken is a permanent failure: the step is not run again for it
    run_id = trip.start({"hostile_output_at": {"hotel": hostile}})
    state = trip.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.type == "InvalidOutput" and rule in state.error.message
    assert ledger(run_id).count("forward:hotel") == 1
    [entry] = [d for d in dead_letters() if d["run_id"] == run_id]
    assert entry["error_type"] == "InvalidOutput" and entry["attempts"] == 1
    assert trip.rebuild(run_id) == state


def test_a_failure_after_the_body_is_an_attempt_retried_by_the_policy_then_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a failure that happens after car's body returned, every time (the snapshot cannot be built)
    build = decide.decide_step_succeeded

    def broken(state: SagaState, shape: Any, index: int, output: Any, at: Any = None, **kw: Any) -> Any:
        if state.saga == "trip" and shape.steps[index] == "car":
            raise RuntimeError("the snapshot cannot be built")
        return build(state, shape, index, output, at, **kw)

    monkeypatch.setattr(decide, "decide_step_succeeded", broken)
    run_id = trip.start({"n": 1})
    # Then it counts as car's attempts: max_retries + 1 body runs, a dead letter, compensation — never a loop
    state = trip.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED
    assert ledger(run_id).count("forward:car") == trip.step_named("car").max_retries + 1
    assert state.error is not None and state.error.type == "RuntimeError" and state.error.name == "car"
    assert [d["error_type"] for d in dead_letters() if d["run_id"] == run_id] == ["RuntimeError"]


# --- fuzz --------------------------------------------------------------------------------------

#: Text including lone surrogates (what surrogateescape makes of undecodable bytes).
text = st.text(st.characters(exclude_categories=()), max_size=20)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.builds(pow, st.just(10), st.just(5000))  # past Python's int-to-text limit
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | st.just("x" * 1_100_000)
)


values = st.recursive(
    leaves | st.integers(1, 120).map(deep),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(text, values, max_size=5)
anything = objects | values


def left_waiting_unseen(run_id: str) -> bool:
    """A run neither finished nor held by a lease nor on the watchdog's list: lost."""
    state = fuzz.store.reads.get(run_id)
    due = fuzz.store.indexes.deadline(run_id)
    if state.status.terminal:
        return due is not None  # a finished run left on the list
    return fuzz.store.reads.lease(run_id) is None and due is None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=anything)
def test_fuzz_payloads_are_run_or_refused_as_invalid_payload(payload: Any) -> None:
    key = str(uuid.uuid4())
    try:
        run_id = fuzz.start(payload, key=key)
    except InvalidPayload as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 500
        with pytest.raises(RunNotFound):  # nothing was written
            fuzz.get(str(uuid.uuid5(uuid.UUID("5a6a0000-0000-4000-8000-000000000000"), f"fuzz\0{key}")))
        return
    state = fuzz.wait(run_id, timeout=30)
    assert state.status is Status.COMPLETED and state.payload == json.loads(json.dumps(payload))
    assert not left_waiting_unseen(run_id)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(output=anything)
def test_fuzz_step_outputs_complete_or_fail_the_step_permanently(output: Any) -> None:
    key = str(uuid.uuid4())
    FUZZ_OUTPUTS[key] = output
    run_id = fuzz.start({"output": key})
    state = fuzz.wait(run_id, timeout=30)
    if state.status is Status.COMPLETED:
        assert output is None or isinstance(output, dict)
    else:
        assert state.status is Status.COMPENSATED and state.error is not None
        assert state.error.type == "InvalidOutput" and state.error.attempts == 1
    assert fuzz.rebuild(run_id) == state
    assert not left_waiting_unseen(run_id)

"""The one validator for payloads and step outputs, and the check of task call arguments: pure,
no Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from saga.core import call_problem, canonical_json, merged_text, validated
from saga.errors import InvalidPayload, cut

LIMITS = {"max_bytes": 1024, "max_depth": 8}


def size_of(payload: dict[str, Any]) -> int:
    """Bytes of the canonical JSON the store and the checkpoint hash use."""
    return len(canonical_json(payload).encode("utf-8"))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, None])
def test_a_payload_that_is_not_an_object_is_refused(bad: object) -> None:
    with pytest.raises(InvalidPayload, match="the saga payload must be a JSON object"):
        validated(bad, "the saga payload", **LIMITS)


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ({"when": object()}, "is not JSON-serializable"),
        ({"x": float("nan")}, "is not JSON-serializable"),
        ({"x": float("inf")}, "is not JSON-serializable"),
        ({"x": 10**5000}, "is not JSON-serializable"),
        ({1: "a"}, "has a key that is not a string: 1"),
        ({"a": {2: "b"}}, "has a key that is not a string: 2"),
        ({"name": "caf\udce9"}, "is not valid UTF-8 text (a lone surrogate"),
        ({"big": "x" * 2000}, f"is {size_of({'big': 'x' * 2000})} bytes, over the 1024 of SAGA_MAX_PAYLOAD_BYTES"),
        (nested(9), "nests deeper than 8 levels (SAGA_MAX_PAYLOAD_DEPTH)"),
        ({"list": [[[[[[[[["deep"]]]]]]]]]}, "nests deeper than 8 levels"),
    ],
)
def test_each_rule_is_named_when_broken(bad: dict[Any, Any], rule: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        validated(bad, "the saga payload", **LIMITS)
    assert rule in str(info.value) and "\n" not in str(info.value)


def test_a_payload_nested_a_million_deep_is_refused_without_recursion() -> None:
    value: Any = []
    for _ in range(1_000_000):
        value = [value]
    with pytest.raises(InvalidPayload, match="nests deeper than 8 levels"):
        validated({"v": value}, "the saga payload", **LIMITS)


def test_a_valid_payload_comes_back_as_a_copy_sharing_nothing() -> None:
    given: dict[str, Any] = {"order": {"items": [1, 2]}, "name": "Zoë", "n": 10**30}
    copy = validated(given, "the saga payload", **LIMITS)
    assert copy == given and copy is not given
    copy["order"]["items"].append(3)
    assert given["order"]["items"] == [1, 2]
    assert validated(nested(8), "x", **LIMITS) == nested(8)


def test_the_payload_a_step_leaves_is_held_to_the_size_limit_too() -> None:
    text = merged_text({"a": "x" * 500}, {"b": "y" * 400}, "the return value of step 's'", max_bytes=1024)
    assert json.loads(text) == {"a": "x" * 500, "b": "y" * 400}
    size = size_of({"a": "x" * 500, "b": "y" * 700})
    with pytest.raises(InvalidPayload, match=f"would make the payload {size} bytes, over the 1024"):
        merged_text({"a": "x" * 500}, {"b": "y" * 700}, "the return value of step 's'", max_bytes=1024)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((12345,), "the run id must be a non-empty string, got 12345"),
        (("",), "the run id must be a non-empty string"),
        (("r" * 1_000_000,), "the run id is 1000000 characters long, over 200"),
        (("run", True), "the attempt must be a whole number, got True"),
        (("run", 0), "the attempt must be from 1 to 1000000, got 0"),
        (("run", 10**12), "the attempt must be from 1 to 1000000"),
        (("run", "2"), "the attempt must be a whole number, got '2'"),
        (("run", 1, False), "the definition version must be a whole number, got False"),
    ],
)
def test_task_call_arguments_are_checked(args: tuple[Any, ...], problem: str) -> None:
    found = call_problem(*args)
    assert found is not None and problem in found and len(found) < 300
    assert call_problem("3f1c0e9e-8c47-4a8f-b1f4-1a2b3c4d5e6f", 2, 1) is None


def test_untrusted_text_is_cut_and_made_safe_to_log() -> None:
    assert cut("x" * 1_000_000) == "x" * 199 + "…"
    assert cut("bad \udcff byte") == "bad \\udcff byte"
    assert cut(12345) == "12345"

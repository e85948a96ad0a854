"""What the coordinator accepts from outside: payloads, step outputs, task call arguments. No I/O.

A payload (what ``start()`` gets) and a step's output (what its body returns) must be:

1. a JSON object (a ``dict`` with string keys all the way down, JSON values; no NaN or
   Infinity, no integer too long to print);
2. nested at most ``max_depth`` deep (``SAGA_MAX_PAYLOAD_DEPTH``, 64);
3. encodable as UTF-8 (no lone surrogates), exactly as the checkpoint hash and the store encode it;
4. at most ``max_bytes`` long in that encoding (``SAGA_MAX_PAYLOAD_BYTES``, 1 MiB).

:func:`validated` checks all four and returns a copy that shares nothing with the value given,
or raises :class:`~saga.errors.InvalidPayload` naming the rule broken. :func:`call_problem` says
what is wrong with the arguments of a task message (run id, attempt, definition version).
Untrusted text that goes into a log line or an error message is cut by :func:`cut`.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidPayload, cut
from .state import JSONObject, canonical_json


def structure_problem(value: object, max_depth: int) -> str | None:
    """What is wrong with the nesting of ``value`` — containers more than ``max_depth`` deep, or
    an object key that is not a string — or None. Iterative: a value nested a million deep is
    looked at without recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > max_depth:
                return f"nests deeper than {max_depth} levels (SAGA_MAX_PAYLOAD_DEPTH)"
            if isinstance(item, dict):
                key = next((k for k in item if not isinstance(k, str)), None)
                if key is not None:
                    return f"has a key that is not a string: {cut(key, 40)}"
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
    return None


def validated(value: Any, what: str, *, max_bytes: int, max_depth: int) -> JSONObject:
    """``value`` checked against the four rules, as a copy of its own; :class:`InvalidPayload`
    naming ``what`` and the rule broken otherwise."""
    if not isinstance(value, dict):
        raise InvalidPayload(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    problem = structure_problem(value, max_depth)
    if problem:
        raise InvalidPayload(f"{what} {problem}")
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serializable: {cut(exc)}") from None
    return _within(text, what, max_bytes)


#: Most tags a run may carry, and the longest tag key and value (characters).
MAX_TAGS = 16
MAX_TAG_TEXT = 200


def validated_tags(tags: object) -> dict[str, str]:
    """A run's business tags, checked: a dict of at most :data:`MAX_TAGS` string keys (non-empty)
    and string values, each at most :data:`MAX_TAG_TEXT` characters of valid text;
    :class:`InvalidPayload` saying which rule is broken otherwise. ``None`` is no tags."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise InvalidPayload(f"tags must be a dict of strings to strings, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise InvalidPayload(f"a run may carry at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidPayload(
                f"tags must map strings to strings; {cut(key, 40)} -> {cut(value, 40)} is "
                f"{type(key).__name__} -> {type(value).__name__}"
            )
        if not key or len(key) > MAX_TAG_TEXT or len(value) > MAX_TAG_TEXT:
            raise InvalidPayload(f"tag keys must be 1 to {MAX_TAG_TEXT} characters and values at most {MAX_TAG_TEXT}")
        try:
            (key + value).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidPayload(f"tag {cut(key, 40)} is not valid UTF-8 text (a lone surrogate)") from None
    return dict(tags)


def _within(text: str, what: str, max_bytes: int) -> JSONObject:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPayload(
            f"{what} is not valid UTF-8 text (a lone surrogate at position {exc.start}); "
            "decode file names and bytes before putting them in a payload"
        ) from None
    if size > max_bytes:
        raise InvalidPayload(f"{what} is {size} bytes, over the {max_bytes} of SAGA_MAX_PAYLOAD_BYTES")
    copied: JSONObject = json.loads(text)
    return copied


def merged_text(payload: JSONObject, output: JSONObject, what: str, *, max_bytes: int) -> str:
    """The canonical JSON text of the payload a step leaves (``payload`` merged with its
    ``output``, both valid), refused when over ``max_bytes``: the text the checkpoint hash is
    taken over."""
    text = canonical_json({**payload, **output})
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidPayload(
            f"{what} would make the payload {size} bytes, over the {max_bytes} of SAGA_MAX_PAYLOAD_BYTES"
        )
    return text


#: The longest run id a message may name (run ids are UUIDs: 36 characters).
MAX_RUN_ID = 200
#: The highest attempt or definition version a message may carry.
MAX_COUNT = 1_000_000


def _count_problem(value: object, what: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{what} must be a whole number, got {cut(repr(value), 40)}"
    if not 1 <= value <= MAX_COUNT:
        return f"{what} must be from 1 to {MAX_COUNT}, got {value}"
    return None


def call_problem(run_id: object, attempt: object = 1, version: object = 1) -> str | None:
    """What is wrong with the arguments of a saga task message, or None: the run id a string of
    1 to 200 characters, the attempt and the definition version whole numbers from 1 (not bools)."""
    if not isinstance(run_id, str) or not run_id:
        return f"the run id must be a non-empty string, got {cut(repr(run_id), 40)}"
    if len(run_id) > MAX_RUN_ID:
        return f"the run id is {len(run_id)} characters long, over {MAX_RUN_ID}"
    return _count_problem(attempt, "the attempt") or _count_problem(version, "the definition version")


__all__ = ["call_problem", "cut", "merged_text", "readable_run_id", "structure_problem", "validated"]


def readable_run_id(run_id: object) -> str | None:
    """``run_id`` if a message's first argument can name a run at all, else None."""
    return run_id if isinstance(run_id, str) and 0 < len(run_id) <= MAX_RUN_ID else None

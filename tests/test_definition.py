"""Declaring sagas: mistakes are refused at declaration with one clear line, before any run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from saga import Saga, SagaDefinitionError, Settings, StepContext, create_app
from saga.registry import Registry


@pytest.fixture
def saga(settings: Settings) -> Iterator[Saga]:
    """A saga in a registry of its own, on an app of its own."""
    yield Saga("decl", app=create_app("decl", settings), registry=Registry(settings))


def one_line(info: pytest.ExceptionInfo[SagaDefinitionError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_step_that_cannot_take_payload_and_ctx_is_refused(saga: Saga) -> None:
    def lonely(payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(SagaDefinitionError) as info:
        saga.step(lonely)  # type: ignore[arg-type]
    assert "step 'lonely' of saga 'decl' cannot be called as (payload, ctx): its signature is (payload" in one_line(
        info
    )

    def nothing() -> None:
        return None

    with pytest.raises(SagaDefinitionError, match="cannot be called as"):
        saga.step(name="none")(nothing)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="must be a function taking \\(payload, ctx\\), got int"):
        saga.step(name="number")(42)  # type: ignore[arg-type]
    assert saga.steps == []


def test_a_compensation_that_cannot_take_payload_and_ctx_is_refused(saga: Saga) -> None:
    step = saga.step(name="ok")(lambda payload, ctx: None)

    def greedy(payload: dict[str, Any], ctx: StepContext, extra: int) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match="compensation of step 'ok' of saga 'decl' cannot be called"):
        step.compensate(greedy)  # type: ignore[arg-type]
    assert step.compensation is None


def test_bodies_with_extra_optional_or_variadic_parameters_are_accepted(saga: Saga) -> None:
    def flexible(payload: dict[str, Any], ctx: StepContext, retries: int = 3) -> None:
        return None

    def anything(*args: Any) -> None:
        return None

    saga.step(flexible)
    saga.step(name="variadic")(anything)

    async def awaited(payload: dict[str, Any], ctx: StepContext) -> None:
        return None

    saga.step(awaited)
    assert [s.name for s in saga.steps] == ["flexible", "variadic", "awaited"]


@pytest.mark.parametrize("version", [0, -1, True, "2"])
def test_a_version_must_be_a_whole_number_from_one(settings: Settings, version: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="saga version must be a whole number from 1"):
        Saga("v", app=create_app("v", settings), registry=Registry(settings), version=version)


def test_versions_of_one_saga_live_side_by_side_but_not_twice(settings: Settings) -> None:
    registry = Registry(settings)
    app = create_app("versions", settings)
    v1 = Saga("transfer", app=app, registry=registry)
    v2 = Saga("transfer", app=app, registry=registry, version=2)
    with pytest.raises(SagaDefinitionError, match="version 2 of saga 'transfer' is already declared"):
        Saga("transfer", app=app, registry=registry, version=2)
    assert (registry.get("transfer"), registry.get("transfer", 1), registry.versions("transfer")) == (v2, v1, [1, 2])
    # one Celery task per step name, whatever the versions
    v1.step(name="debit")(lambda payload, ctx: None)
    v2.step(name="debit")(lambda payload, ctx: None)
    assert v1.steps[0].task is v2.steps[0].task

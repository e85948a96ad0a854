"""Settings come from SAGA_* variables, validated once."""

from __future__ import annotations

import pytest

from saga import Settings, SettingsError


def test_broker_defaults_to_the_redis_url() -> None:
    s = Settings.from_env({"SAGA_REDIS_URL": "redis://h:1/2"})
    assert s.broker_url == "redis://h:1/2"
    assert (
        Settings.from_env({"SAGA_REDIS_URL": "redis://h:1/2", "SAGA_BROKER_URL": "amqp://x"}).broker_url == "amqp://x"
    )


def test_values_are_typed() -> None:
    s = Settings.from_env({"SAGA_LEASE_SECONDS": "2.5", "SAGA_MAX_RETRIES": "5"})
    assert s.lease_seconds == 2.5 and s.max_retries == 5
    assert s.retry_backoff == 1.0 and s.retry_backoff_max == 60.0 and s.retention_seconds == 7 * 24 * 3600


def test_a_bad_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SAGA_LEASE_SECONDS": "soon"})
    assert "SAGA_LEASE_SECONDS" in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_saga_variable_is_refused() -> None:
    with pytest.raises(SettingsError, match="SAGA_LEASE_SECS is not a known setting"):
        Settings.from_env({"SAGA_LEASE_SECS": "3"})


def test_a_cluster_store_needs_a_broker_of_its_own() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SAGA_REDIS_URL": "redis+cluster://10.0.0.1:7000"})
    assert str(info.value).startswith("SAGA_REDIS_URL names a Redis Cluster") and "SAGA_BROKER_URL" in str(info.value)
    both = {"SAGA_REDIS_URL": "redis+cluster://10.0.0.1:7000", "SAGA_BROKER_URL": "amqp://guest@mq//"}
    assert Settings.from_env(both).broker_url == "amqp://guest@mq//"

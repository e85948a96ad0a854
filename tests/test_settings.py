"""Settings come from SAGA_* variables, validated once."""

from __future__ import annotations

import pytest

from saga import Settings, SettingsError
from saga.settings import redact


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


def test_an_unknown_saga_variable_is_refused_naming_the_closest_known_one() -> None:
    with pytest.raises(SettingsError, match="SAGA_LEASE_SECS is not a known setting") as info:
        Settings.from_env({"SAGA_LEASE_SECS": "3"})
    assert "did you mean SAGA_LEASE_SECONDS?" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="did you mean SAGA_ARCHIVE_URL") as info:
        Settings.from_env({"SAGA_ARCHIVE_ULR": "sqlite:///x.db"})
    # nothing close: no guess, still one line saying where the settings are listed
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SAGA_ZZZZZZZZZZZZ": "1"})
    assert "did you mean" not in str(info.value) and "README 'Settings'" in str(info.value)


def test_a_cluster_store_needs_a_broker_of_its_own() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SAGA_REDIS_URL": "redis+cluster://10.0.0.1:7000"})
    assert str(info.value).startswith("SAGA_REDIS_URL names a Redis Cluster") and "SAGA_BROKER_URL" in str(info.value)
    both = {"SAGA_REDIS_URL": "redis+cluster://10.0.0.1:7000", "SAGA_BROKER_URL": "amqp://guest@mq//"}
    assert Settings.from_env(both).broker_url == "amqp://guest@mq//"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("SAGA_REDIS_URL", "redis://127.0.0.1:abc/0"),
        ("SAGA_REDIS_URL", "redis://:TOPSECRET@127.0.0.1:abc/0"),
        ("SAGA_REDIS_URL", "redis://127.0.0.1:abc/0?password=TOPSECRET"),
        ("SAGA_BROKER_URL", "redis://user:TOPSECRET@127.0.0.1:99999/0"),
    ],
)
def test_a_url_that_does_not_parse_is_one_line_naming_the_setting_and_hiding_the_secret(
    variable: str, url: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: url})
    message = str(info.value)
    assert message.startswith(f"{variable} ") and "is not a" in message and "is not a number" in message
    assert "redis://" in message.partition(": ")[2] and "\n" not in message  # the expected form
    assert "TOPSECRET" not in message


def test_a_redis_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"SAGA_REDIS_URL 'http://h/0' is not a Redis URL: the scheme is 'http'"):
        Settings.from_env({"SAGA_REDIS_URL": "http://h/0"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://h:1/0?password=TOPSECRET", "redis://h:1/0?password=***"),
        (
            "rediss://h/0?ssl_ca_certs=/ca.pem&Client_Secret=s&api_token=t&ssl_keyfile=k&db=2",
            "rediss://h/0?ssl_ca_certs=/ca.pem&Client_Secret=***&api_token=***&ssl_keyfile=***&db=2",
        ),
        ("redis://:pw@h:abc/0?passwd=x", "redis://:***@h:abc/0?passwd=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_hides_the_userinfo_password_and_secret_query_parameters(url: str, shown: str) -> None:
    assert redact(url) == shown

"""DATABASE_POOL_SIZE and DATABASE_READ_TIMEOUT_SECONDS (PostgreSQL's read connections and a read's timeout):
read from the environment, validated with a message naming them, defaults as before (the pool held 10
connections, a number fixed in the code). The store honours them: tests/store/test_postgres_read_timeout.py,
tests/store/test_coordinator_postgres_silent_reads.py."""

from __future__ import annotations

import pytest

from coordinator.config import SettingsError, load_settings
from coordinator.store.postgres import POOL_SIZE, READ_TIMEOUT_S


def test_the_defaults_are_the_stores() -> None:
    settings = load_settings(env={}, env_file=None)
    assert (settings.database_pool_size, settings.database_read_timeout_seconds) == (
        POOL_SIZE,
        READ_TIMEOUT_S,
    )
    assert POOL_SIZE == 10


def test_they_are_read_from_the_environment() -> None:
    settings = load_settings(
        env={"DATABASE_POOL_SIZE": "25", "DATABASE_READ_TIMEOUT_SECONDS": "2.5"}, env_file=None
    )
    assert (settings.database_pool_size, settings.database_read_timeout_seconds) == (25, 2.5)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_POOL_SIZE": "0"}, r"DATABASE_POOL_SIZE: value out of range \(1 to 1000\)"),
        ({"DATABASE_POOL_SIZE": "1001"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_POOL_SIZE": "ten"}, "DATABASE_POOL_SIZE: expected a number"),
        (
            {"DATABASE_READ_TIMEOUT_SECONDS": "0"},
            r"DATABASE_READ_TIMEOUT_SECONDS: value out of range \(0.1 to 300\)",
        ),
        ({"DATABASE_READ_TIMEOUT_SECONDS": "nan"}, "DATABASE_READ_TIMEOUT_SECONDS"),
        ({"DATABASE_READ_TIMEOUT_SECONDS": "301"}, "DATABASE_READ_TIMEOUT_SECONDS"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(env=env, env_file=None)

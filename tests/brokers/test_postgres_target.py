"""Reading the PostgreSQL broker's URL and ``[brokers.postgres]`` table
(brokers/postgres_target.py), and choosing it by scheme: a bad setting is one line."""

from __future__ import annotations

import pytest

from tidings.brokers.factory import check_broker, create_broker
from tidings.brokers.postgres import PostgresBroker
from tidings.brokers.postgres_target import PostgresTarget
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.errors import ConfigError


def test_defaults_listen_in_the_tidings_schema() -> None:
    target = PostgresTarget.parse("postgres://app@db:5432/app?sslmode=require")

    assert target.schema == "tidings"
    assert target.notify
    assert target.conninfo == "postgresql://app@db:5432/app?sslmode=require"


def test_the_urls_query_wins_over_the_table_and_is_not_passed_to_libpq() -> None:
    table = {"schema": "from_table", "notify": True, "poll_interval": 2, "pool_size": 4}

    target = PostgresTarget.parse(
        "postgresql://db/app?schema=from_url&notify=false&poll_interval=0.25", table
    )

    assert (target.schema, target.notify, target.poll_interval_s, target.pool_size) == (
        "from_url",
        False,
        0.25,
        4,
    )
    assert target.conninfo == "postgresql://db/app"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"prefix": "x"}, "brokers.postgres: unknown setting 'prefix'"),
        ({"schema": "Bad-Name"}, "brokers.postgres.schema must be a lower-case identifier"),
        ({"notify": "maybe"}, "brokers.postgres.notify must be true or false"),
        ({"poll_interval": 0}, "brokers.postgres.poll_interval must be a positive number"),
        ({"pool_size": 2.5}, "brokers.postgres.pool_size must be a whole number"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        check_broker("postgres://db/app", None, {"postgres": table})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_both_schemes_choose_the_postgres_broker(scheme: str) -> None:
    broker = create_broker(
        f"{scheme}://db/app", None, Namespaces(), DedupeOptions(), options={"postgres": {}}
    )

    assert isinstance(broker, PostgresBroker)

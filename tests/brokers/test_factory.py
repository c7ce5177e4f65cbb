"""Choosing a broker by URL scheme (brokers/factory.py): the errors a user can fix are
told apart, and name the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tidings.brokers.factory import (
    MissingExtra,
    UnknownBroker,
    UnusableDataDirectory,
    check_broker,
    check_data_directory,
    create_broker,
)
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.errors import ConfigError


def test_an_unknown_scheme_lists_the_known_forms() -> None:
    with pytest.raises(UnknownBroker, match="redis://host:port/db") as error:
        check_broker("kafka://127.0.0.1:9092", None)
    assert error.value.url == "kafka://127.0.0.1:9092"


def test_a_missing_extra_names_its_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a node without the extra sees: the broker module's import of redis fails.
    monkeypatch.delitem(sys.modules, "tidings.brokers.redis", raising=False)
    # Submodules an earlier test imported would be found in sys.modules without their
    # package: hide them all, as on a machine where redis was never installed.
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)  # also when no earlier test imported it
    with pytest.raises(MissingExtra) as error:
        check_broker("redis://127.0.0.1:6379/0", None)
    assert "pip install 'tidings[redis]'" in str(error.value)
    assert error.value.extra == "redis"


@pytest.mark.parametrize("missing", ["psycopg", "psycopg_pool"])
def test_a_missing_postgres_extra_names_its_pip_install(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name in [name for name in sys.modules if name.startswith("tidings.brokers.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [name for name in sys.modules if name == missing or name.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingExtra) as error:
        check_broker("postgres://127.0.0.1:5432/app", None)
    assert "pip install 'tidings[postgres]'" in str(error.value)


def test_another_import_error_is_not_taken_for_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "tidings.brokers.redis", raising=False)
    monkeypatch.setitem(sys.modules, "tidings.brokers.redis_scripts", None)
    with pytest.raises(ImportError) as error:
        check_broker("redis://127.0.0.1:6379/0", None)
    assert not isinstance(error.value, MissingExtra)


def test_data_with_a_remote_broker_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only to the embedded broker"):
        check_broker("redis://127.0.0.1:6379/0", tmp_path)


def test_a_missing_data_directory_is_created(tmp_path: Path) -> None:
    assert check_data_directory(tmp_path / "a" / "b").is_dir()


def test_a_data_path_that_is_a_file_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UnusableDataDirectory, match="not a directory"):
        check_data_directory(tmp_path / "file")


def test_a_table_naming_no_broker_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        check_broker("redis://127.0.0.1:6379/0", None, {"redis": {}, "rdis": {"prefix": "a"}})
    assert str(error.value) == (
        "brokers.rdis: no broker is called 'rdis'; "
        "known: ['memory', 'nats', 'postgres', 'redis', 'relay', 'sqlite']"
    )


def test_the_chosen_brokers_table_is_checked_by_the_broker_before_it_starts() -> None:
    with pytest.raises(ConfigError, match=r"brokers\.redis: unknown setting 'prefx'"):
        check_broker("redis://127.0.0.1:6379/0", None, {"redis": {"prefx": "a"}})
    check_broker("redis://127.0.0.1:6379/0", None, {"redis": {"prefix": "a"}})


def test_another_brokers_table_is_left_for_when_that_broker_is_chosen(tmp_path: Path) -> None:
    check_broker(None, tmp_path, {"redis": {"prefix": "a"}})


@pytest.mark.parametrize(("data", "name"), [(None, "memory"), ("data", "sqlite")])
def test_an_embedded_broker_takes_no_table_of_its_own(
    tmp_path: Path, data: str | None, name: str
) -> None:
    directory = None if data is None else tmp_path / data
    with pytest.raises(ConfigError, match=rf"brokers\.{name}\.durability: the {name} broker"):
        create_broker(
            None,
            directory,
            Namespaces(),
            DedupeOptions(),
            options={name: {"durability": "fast"}},
        )

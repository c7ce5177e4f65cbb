"""The sqlite broker's data directory and files are private to the node's user (#11.14)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.data_dir import prepare_private_file
from tidings.brokers.sqlite import DB_FILE_NAME, SqliteBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """A umask that lets every user read new files, as many systems have (022 or 002)."""
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("lax_umask")
async def test_the_sqlite_broker_creates_its_directory_0700_and_its_files_0600(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "data"
    broker = SqliteBroker(directory, Namespaces(), clock=FakeClock())
    await broker.start(RecordingHandler())
    try:
        await broker.publish(ChannelName("room:1"), b'"private"')
        files = sorted(path.name for path in directory.iterdir())
        modes = {path.name: mode_of(path) for path in directory.iterdir()}
    finally:
        await broker.close()
    assert mode_of(directory) == 0o700
    # The WAL and shared-memory files exist while the database is open.
    assert {DB_FILE_NAME, f"{DB_FILE_NAME}-wal", f"{DB_FILE_NAME}-shm"} <= set(files)
    assert modes == dict.fromkeys(files, 0o600)


@pytest.mark.usefixtures("lax_umask")
def test_an_existing_directory_open_to_others_gets_one_warning_and_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="tidings.brokers.data_dir"):
        prepare_private_file(directory / DB_FILE_NAME)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert str(directory) in warnings[0]
    assert "chmod 700" in warnings[0]
    assert mode_of(directory) == 0o755
    assert mode_of(directory / DB_FILE_NAME) == 0o600


def test_a_private_existing_directory_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="tidings.brokers.data_dir"):
        prepare_private_file(directory / DB_FILE_NAME)
    assert caplog.records == []


def test_an_existing_database_file_is_not_touched(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    existing = directory / DB_FILE_NAME
    existing.write_bytes(b"kept")
    prepare_private_file(existing)
    assert existing.read_bytes() == b"kept"

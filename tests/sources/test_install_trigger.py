"""``tidings sources install-trigger`` (cli/sources.py): the SQL is shown first and run
only once confirmed; a source it cannot serve is one line. (Installing with ``--yes``
and being woken by the trigger: tests/sources/test_table_nodes.py.)"""

from __future__ import annotations

from pathlib import Path

import psycopg
from click.testing import CliRunner, Result

from tests.sources.conftest import AppDatabase
from tidings.cli import main


def install(config: Path, name: str, answer: str = "") -> Result:
    arguments = ["sources", "install-trigger", name, "--config", str(config)]
    return CliRunner().invoke(main, arguments, input=answer, env={"TIDINGS_URL": None})


def write_config(tmp_path: Path, db: AppDatabase, extra: str = "") -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(
        f'[[sources]]\nname = "{db.table}"\nkind = "table"\ndsn = "{db.dsn}"\n'
        f'table = "{db.table}"\nchannel = "room:{{room_id}}"\n{extra}'
    )
    return path


def has_trigger(db: AppDatabase) -> bool:
    with psycopg.connect(db.dsn) as conn:
        query = "SELECT count(*) FROM pg_trigger WHERE tgname = %s"
        row = conn.execute(query, (f"tidings_source_{db.table}",)).fetchone()
    return bool(row and row[0])


def test_the_sql_is_shown_and_nothing_is_run_when_declined(
    postgres_db: AppDatabase, tmp_path: Path
) -> None:
    result = install(write_config(tmp_path, postgres_db), postgres_db.table, answer="n\n")
    assert result.exit_code == 1
    assert f'CREATE TRIGGER "tidings_source_{postgres_db.table}" AFTER INSERT' in result.output
    assert result.output.rstrip().endswith("Error: not installed")
    assert not has_trigger(postgres_db)


def test_confirming_installs_the_trigger(postgres_db: AppDatabase, tmp_path: Path) -> None:
    result = install(write_config(tmp_path, postgres_db), postgres_db.table, answer="y\n")
    assert result.exit_code == 0, result.output
    assert has_trigger(postgres_db)


def test_an_unknown_source_is_one_line(sqlite_db: AppDatabase, tmp_path: Path) -> None:
    result = install(write_config(tmp_path, sqlite_db), "nope")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: no source is named 'nope' in the configuration; its sources: {sqlite_db.table}\n"
    )


def test_an_sqlite_source_has_no_trigger_it_polls(sqlite_db: AppDatabase, tmp_path: Path) -> None:
    result = install(write_config(tmp_path, sqlite_db), sqlite_db.table)
    assert result.exit_code == 1
    assert "reads SQLite, which cannot notify other processes: it polls" in result.output

"""The ``tidings`` commands as a user first meets them: ``--help`` with examples and
environment variables, ``-v`` everywhere, and ``check-config`` (cli/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tidings.cli import main
from tidings.server.runner import ExitStatus

COMMANDS = sorted(main.commands)


def invoke(arguments: list[str], env: dict[str, str] | None = None) -> Result:
    """Run ``tidings ARGUMENTS`` in-process with only ``env`` of the TIDINGS_* variables."""
    environment: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("TIDINGS_")
    }
    environment.update(env or {})
    return CliRunner().invoke(main, arguments, env=environment, terminal_width=200)


def test_every_command_is_there() -> None:
    assert set(COMMANDS) >= {
        "serve", "check-config", "token", "publish", "subscribe", "history", "channels",
        "presence",
    }  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_examples_and_verbose(name: str) -> None:
    result = invoke([name, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "-v, --verbose" in result.output


@pytest.mark.parametrize("name", ["serve", "publish", "subscribe", "history", "token"])
def test_help_names_the_environment_variables(name: str) -> None:
    result = invoke([name, "--help"])
    expected = {
        "serve": ["TIDINGS_HOST", "TIDINGS_PORT", "TIDINGS_BROKER", "TIDINGS_DATA"],
        "publish": ["TIDINGS_URL", "TIDINGS_API_KEY"],
        "subscribe": ["TIDINGS_URL", "TIDINGS_TOKEN"],
        "history": ["TIDINGS_URL", "TIDINGS_API_KEY"],
        "token": ["TIDINGS_JWT_SECRET"],
    }[name]
    for variable in expected:
        assert variable in result.output


def test_check_config_prints_the_effective_settings_with_secrets_masked(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('port = 9001\napi_key = "file-key"\n[namespaces.room]\npresence = true\n')
    environment = {
        "TIDINGS_JWT_SECRET": "env-secret-long-enough-for-hs256-tokens",
        "TIDINGS_BROKER": "redis://:hunter2@127.0.0.1:6379/0",
        "TIDINGS_CLUSTER_SECRET": "a-cluster-secret-of-at-least-32-bytes",
    }
    result = invoke(["check-config", "--config", str(config)], environment)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "port = 9001" in lines
    assert "ping_interval = 25s" in lines  # the names a file or TIDINGS_* variable uses
    assert "api_key = ********" in lines
    assert "jwt_secret = ********" in lines
    assert "cluster_secret = ********" in lines
    assert "broker = redis://:********@127.0.0.1:6379/0" in lines
    assert any(line.startswith("namespaces.room = ") and "presence true" in line for line in lines)
    for secret in (
        "file-key",
        "env-secret-long-enough-for-hs256-tokens",
        "hunter2",
        "a-cluster-secret-of-at-least-32-bytes",
    ):
        assert secret not in result.output


def test_check_config_masks_a_relays_upstream_credentials(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('[brokers.relay]\ntoken = "upstream-token"\napi_key = "upstream-key"\n')
    environment = {"TIDINGS_BROKER": "relay+ws://origin.example:8000"}
    result = invoke(["check-config", "--config", str(config)], environment)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "brokers.relay.token = ********" in lines
    assert "brokers.relay.api_key = ********" in lines
    assert "upstream-" not in result.output


def test_check_config_fails_on_a_bad_file_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('port = "eighty"\n')
    result = invoke(["check-config", "--config", str(config)])
    assert result.exit_code == ExitStatus.CONFIG
    assert "port must be a whole number" in result.output


def test_check_config_fails_on_a_bad_environment_variable() -> None:
    result = invoke(["check-config"], {"TIDINGS_PINGINTERVAL": "5s"})
    assert result.exit_code == ExitStatus.CONFIG
    assert "unknown setting 'pinginterval'" in result.output


def test_check_config_fails_on_an_unknown_broker() -> None:
    result = invoke(["check-config"], {"TIDINGS_BROKER": "kafka://x"})
    assert result.exit_code == ExitStatus.UNKNOWN_BROKER
    assert "kafka://x" in result.output


def test_check_config_refuses_a_broker_setting_the_broker_does_not_read(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('broker = "redis://127.0.0.1:6379/0"\n[brokers.redis]\nprefx = "a"\n')
    result = invoke(["check-config", "--config", str(config)])
    assert result.exit_code == ExitStatus.CONFIG
    assert (
        "brokers.redis: unknown setting 'prefx'; known: ['batch', 'prefix', 'trust_restarts']"
        in (result.output)
    )
    assert "Traceback" not in result.output


def test_check_config_prints_a_brokers_settings_of_the_file(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('broker = "redis://127.0.0.1:6379/0"\n[brokers.redis]\nprefix = "a"\n')
    result = invoke(["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "brokers.redis.prefix = a" in result.output.splitlines()


def test_client_variables_do_not_stop_check_config() -> None:
    environment = {"TIDINGS_URL": "http://node:8000", "TIDINGS_TOKEN": "a.b.c"}
    result = invoke(["check-config"], environment)
    assert result.exit_code == 0, result.output

"""The `pyactor` command line: version, help, what a failed start says, and the benchmark's row
names matching the README's table."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

import pyactor
from pyactor import cli, microbenchmark

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def run_cli(*args: str, env: dict | None = None, timeout_s: float = 60
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyactor.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env)


@pytest.fixture
def session_env(tmp_path):
    """An environment whose `pyactor` commands record their nodes in a folder of this test."""
    env = {**os.environ, "PYACTOR_SESSION_DIR": str(tmp_path / "session")}
    env.pop("PYACTOR_TOKEN", None)
    return env


def test_version_prints_the_package_version(capsys):
    """`pyactor --version` prints pyactor's version and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyactor {pyactor.__version__}"


def test_bare_command_lists_the_commands_without_a_usage_error(capsys):
    """A bare `pyactor` prints the help with every command and exits 0."""
    assert cli.main([]) == 0
    captured = capsys.readouterr()
    for command in ("start", "status", "stop", "microbenchmark"):
        assert command in captured.out
    assert "error" not in captured.out + captured.err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_of_every_command_has_help_text():
    """Each option of `pyactor` and of each of its commands says what it does."""
    parser = cli.build_parser()
    parsers = {"pyactor": parser, **_subparsers(parser)}
    assert set(parsers) >= {"pyactor", "start", "status", "stop", "microbenchmark"}
    missing = [f"{name} {action.dest}" for name, sub in parsers.items() for action in sub._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not (action.help or "").strip()]
    assert not missing, f"options without help: {missing}"


def test_joining_with_a_garbled_token_says_so(session_env):
    """`pyactor start --address` with a token that is not hex fails with the token advice,
    without starting a node."""
    result = run_cli("start", "--address", "127.0.0.1:9", "--token", "wrong-token",
                     env=session_env)
    assert result.returncode == 2
    assert "--token" in result.stderr and "PYACTOR_TOKEN" in result.stderr
    assert "fromhex" not in result.stderr


def test_status_with_a_garbled_token_says_so(session_env):
    """`pyactor status` with a token that is not hex says which token is wrong."""
    result = run_cli("status", "--address", "127.0.0.1:9", "--token", "zz", env=session_env)
    assert result.returncode == 2
    assert "--token" in result.stderr and "hex" in result.stderr


def test_status_of_a_port_nobody_listens_on_says_so(session_env):
    """`pyactor status --address` of a port nobody listens on says nothing is listening there."""
    import socket
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        result = run_cli("status", "--address", address, "--token", "ab" * 32, env=session_env)
    assert result.returncode == 1
    assert f"nothing is listening at {address}" in result.stderr


def test_start_refuses_an_unknown_logging_level(session_env):
    """`pyactor start --logging-level LOUD` is refused before a node starts."""
    result = run_cli("start", "--head", "--port", "0", "--logging-level", "LOUD",
                     env=session_env)
    assert result.returncode == 2
    assert "--logging-level: logging_level must be a logging level" in result.stderr
    assert "'LOUD'" in result.stderr


@pytest.mark.slow
def test_second_head_on_a_busy_port_prints_the_cause_and_leaves_the_running_log_alone(
        session_env):
    """A second `pyactor start --head` on the running head's port says the port is in use,
    on the terminal, and writes nothing into the running head's log (or any new file)."""
    first = run_cli("start", "--head", "--port", "0", "--num-cpus", "0",
                    "--object-store-memory", str(64 << 20), env=session_env)
    try:
        assert first.returncode == 0, first.stderr
        port = re.search(r"head node at \S+:(\d+) ", first.stdout).group(1)
        log = re.search(r"log:\s+(\S+)", first.stdout).group(1)
        session_dir = session_env["PYACTOR_SESSION_DIR"]
        files_before = sorted(os.listdir(session_dir))
        log_before = open(log, "rb").read()

        second = run_cli("start", "--head", "--port", port, "--num-cpus", "0",
                         "--object-store-memory", str(64 << 20), env=session_env)
        assert second.returncode == 1
        assert "already in use" in second.stderr and port in second.stderr
        assert open(log, "rb").read() == log_before
        assert sorted(os.listdir(session_dir)) == files_before
    finally:
        stop = run_cli("stop", env=session_env)
        assert stop.returncode == 0, stop.stderr


def test_a_benchmark_row_name_must_be_a_known_row():
    """The benchmark cannot print a row whose name is not in its ROWS table."""
    microbenchmark.Row("single_client_task_roundtrip", 50.0, "us")
    with pytest.raises(ValueError, match="not in ROWS"):
        microbenchmark.Row("task round trip", 50.0, "us")


def test_readme_benchmark_table_names_its_rows_as_the_benchmark_does():
    """Every row of the README's `pyactor microbenchmark` table starts with the names of the
    benchmark rows it quotes, as the benchmark prints them."""
    text = open(README).read()
    table = text.split("**`pyactor microbenchmark`**", 1)[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 10
    for row in rows:
        first_cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", first_cell.split(":")[0])
        assert names, f"README row without a benchmark name: {row}"
        assert set(names) <= set(microbenchmark.ROWS), f"unknown benchmark rows in: {row}"


def test_every_row_the_benchmark_makes_is_named_in_rows():
    """Each Row(...) the microbenchmark builds names an entry of ROWS (a missing one stopped
    `make run` with a ValueError after its first rows)."""
    source = open(microbenchmark.__file__).read()
    made = set(re.findall(r'Row\(\s*"([^"]+)"', source))
    assert made and made <= set(microbenchmark.ROWS), sorted(made - set(microbenchmark.ROWS))

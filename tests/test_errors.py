"""Mistakes a user makes in the first hour, and the errors that must say what went wrong: a bad
or missing token, a wrong port, a value or function that cannot be serialized, a call with the
wrong arguments, a generator task; and `pa.init(logging_level=...)`."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import threading

import pytest

import pyactor as pa
from pyactor._private import api
from pyactor.exceptions import AuthenticationError
from conftest import run_python

UNPICKLABLE_LOCK = threading.Lock()


@pytest.fixture
def refused_port():
    """A port on which nothing listens: bound but never listening, so no one else takes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def listening_port():
    """A port on which something (not a pyactor node) accepts connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def no_token_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PYACTOR_TOKEN", raising=False)
    monkeypatch.delenv("PYACTOR_ADDRESS", raising=False)
    monkeypatch.setenv("PYACTOR_SESSION_DIR", str(tmp_path / "session"))


def _assert_token_advice(error: Exception) -> None:
    assert "PYACTOR_TOKEN" in str(error) and "token=" in str(error)
    assert "fromhex" not in str(error)


# ---------------------------------------------------------------------- tokens and addresses
@pytest.mark.parametrize("token", ["wrong-token", "abc", "zz" * 32])
def test_a_token_that_is_not_hex_raises_authentication_error(pa_fresh, no_token_env,
                                                              listening_port, token):
    """token="..." that is not hex text raises AuthenticationError with the token advice."""
    with pytest.raises(AuthenticationError) as error:
        pa.init(address=f"127.0.0.1:{listening_port}", token=token)
    _assert_token_advice(error.value)
    assert "token=" in str(error.value)
    assert not pa.is_initialized()


def test_a_garbled_token_in_the_environment_names_the_variable(pa_fresh, no_token_env,
                                                                monkeypatch, listening_port):
    """PYACTOR_TOKEN=wrong-token raises AuthenticationError naming $PYACTOR_TOKEN."""
    monkeypatch.setenv("PYACTOR_TOKEN", "wrong-token")
    with pytest.raises(AuthenticationError, match=r"from \$PYACTOR_TOKEN") as error:
        pa.init(address=f"127.0.0.1:{listening_port}")
    _assert_token_advice(error.value)


def test_a_corrupted_token_file_raises_authentication_error(pa_fresh, no_token_env, tmp_path,
                                                             listening_port):
    """address="auto" with a corrupted token file raises AuthenticationError naming the file."""
    session = tmp_path / "session"
    session.mkdir()
    (session / "address.json").write_text(json.dumps(
        {"address": f"127.0.0.1:{listening_port}", "token": "\x00garbage"}))
    with pytest.raises(AuthenticationError, match="token file") as error:
        pa.init(address="auto")
    _assert_token_advice(error.value)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_or_empty_token_raises_authentication_error(pa_fresh, no_token_env,
                                                              listening_port, token):
    """Joining a listening address without a token raises AuthenticationError, not ValueError."""
    with pytest.raises(AuthenticationError, match="needs the cluster token") as error:
        pa.init(address=f"127.0.0.1:{listening_port}", token=token)
    _assert_token_advice(error.value)


@pytest.mark.parametrize("token", [None, "ab" * 32])
def test_a_wrong_port_says_nothing_is_listening_there(pa_fresh, no_token_env, refused_port,
                                                       token):
    """With or without a token, a port nobody listens on raises ConnectionRefusedError saying
    "nothing is listening at HOST:PORT", and pyactor is left uninitialized."""
    threads_before = set(threading.enumerate())
    with pytest.raises(ConnectionRefusedError,
                       match=f"nothing is listening at 127.0.0.1:{refused_port}") as error:
        pa.init(address=f"127.0.0.1:{refused_port}", token=token)
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert not pa.is_initialized()
    assert not [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]


JOIN_WITH_BYTES = """
import pyactor as pa
pa.init(address="127.0.0.1:{port}", token={token!r})
print(pa.get(pa.put("joined")))
pa.shutdown()
"""


def test_a_token_passed_as_bytes_is_accepted(pa_module):
    """A token given as bytes (its hex text, or the raw token) joins the cluster."""
    runtime = api._runtime
    for token in (runtime.token.hex().encode(), runtime.token):
        result = run_python(JOIN_WITH_BYTES.format(port=runtime.node_port, token=token))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "joined"


# ---------------------------------------------------------------------- serialization
def test_put_of_an_unpicklable_value_names_it(pa_module):
    """pa.put(lock) raises TypeError saying put()'s value (a lock) could not be serialized."""
    with pytest.raises(TypeError, match=r"could not serialize the value passed to put\(\) "
                                        r"\(a _thread.lock\)"):
        pa.put(threading.Lock())


def test_put_of_a_container_names_the_unpicklable_member(pa_module):
    """pa.put({"a": [1, lock]}) names value['a'][1] as the part that cannot be serialized."""
    with pytest.raises(TypeError, match=r"value\['a'\]\[1\] is a _thread.lock"):
        pa.put({"a": [1, threading.Lock()], "b": 2})


def test_a_function_using_an_unpicklable_global_names_the_global(pa_module):
    """A remote function that uses an unpicklable global says which global of which function."""
    @pa.remote
    def uses_lock():
        with UNPICKLABLE_LOCK:
            return 1

    with pytest.raises(TypeError) as error:
        uses_lock.remote()
    message = str(error.value)
    assert "uses_lock" in message and "'UNPICKLABLE_LOCK'" in message
    assert "_thread.lock" in message


def test_a_function_closing_over_an_unpicklable_value_names_it(pa_module):
    """A closure over a lock names the variable it closes over."""
    guard = threading.Lock()

    @pa.remote
    def closes_over_lock():
        with guard:
            return 1

    with pytest.raises(TypeError, match=r"closes_over_lock.*closes over 'guard'"):
        closes_over_lock.remote()


def test_an_actor_class_using_an_unpicklable_global_names_the_method(pa_module):
    """An actor class whose method uses an unpicklable global names the method and global."""
    @pa.remote
    class Guarded:
        def run(self):
            with UNPICKLABLE_LOCK:
                return 1

    with pytest.raises(TypeError, match=r"actor class .*Guarded.*'run'.*'UNPICKLABLE_LOCK'"):
        Guarded.remote()


# ---------------------------------------------------------------------- call signatures
@pa.remote
def add(a, b, *, scale=1):
    return (a + b) * scale


@pa.remote
class Account:
    def __init__(self, owner):
        self.owner = owner

    def deposit(self, amount, note=""):
        return amount

    @staticmethod
    def fee(amount):
        return amount / 100


def test_a_task_with_too_many_arguments_fails_at_remote(pa_module):
    """add.remote(1, 2, 3) raises TypeError at once, naming add."""
    with pytest.raises(TypeError, match=r"add\.remote\(\) called with the wrong arguments: "
                                        r"takes 2 positional arguments but 3 were given"):
        add.remote(1, 2, 3)


def test_a_task_missing_an_argument_or_given_an_unknown_keyword_fails_at_remote(pa_module):
    """A missing argument and an unexpected keyword are both caught at .remote()."""
    with pytest.raises(TypeError, match=r"add\.remote\(\).*missing 1 required.*'b'"):
        add.remote(1)
    with pytest.raises(TypeError, match=r"add\.remote\(\).*unexpected keyword.*'factor'"):
        add.options(num_cpus=1).remote(1, 2, factor=3)
    assert pa.get(add.remote(1, 2, scale=2)) == 6


def test_an_actor_constructor_and_method_check_their_arguments(pa_module):
    """Wrong arguments to an actor's constructor or method fail at .remote(), naming it; a
    handle passed to a task checks them too."""
    with pytest.raises(TypeError, match=r"Account\.remote\(\).*missing 1 required"):
        Account.remote()
    account = Account.remote("ann")
    with pytest.raises(TypeError, match=r"Account\.deposit\.remote\(\).*takes from 1 to 2"):
        account.deposit.remote(1, "x", "y")
    with pytest.raises(TypeError, match=r"Account\.fee\.remote\(\).*missing 1 required"):
        account.fee.remote()
    assert pa.get([account.deposit.remote(5), account.fee.remote(200)]) == [5, 2.0]

    @pa.remote
    def call_with_wrong_arguments(handle):
        try:
            handle.deposit.remote()
        except TypeError as error:
            return str(error)
        return "no error"

    assert "Account.deposit.remote()" in pa.get(call_with_wrong_arguments.remote(account))
    pa.kill(account)


# ---------------------------------------------------------------------- logging_level
LOGGING_DRIVER = """
import logging, os, sys, tempfile, time
import pyactor as pa
pa.init(num_cpus=1, logging_level={level!r})

@pa.remote
def chatty():
    log = logging.getLogger("user.task")
    log.debug("debug-line-from-task")
    log.info("info-line-from-task")
    log.warning("warning-line-from-task")
    return 1

# Workers' output reaches this process's fd 2 after the task's result may have: catch it in a
# file and wait (bounded) for the task's last line.
captured = tempfile.TemporaryFile()
os.dup2(captured.fileno(), 2)
pa.get(chatty.remote())
deadline = time.monotonic() + 20
while b"warning-line-from-task" not in open(f"/proc/self/fd/2", "rb").read():
    assert time.monotonic() < deadline, "the worker's log lines never arrived"
    time.sleep(0.01)
print(open(f"/proc/self/fd/2", "rb").read().decode())
print("pyactor logger level", logging.getLogger("pyactor").level)
pa.shutdown()
"""


@pytest.mark.parametrize("level, shown, hidden", [
    ("DEBUG", ["debug-line", "info-line", "warning-line"], []),
    (20, ["info-line", "warning-line"], ["debug-line"]),
])
def test_logging_level_sets_the_level_of_worker_log_lines(level, shown, hidden):
    """pa.init(logging_level=...) shows the workers' log lines at that level on the driver."""
    result = run_python(textwrap.dedent(LOGGING_DRIVER.format(level=level)))
    assert result.returncode == 0, result.stderr
    for text in shown:
        assert f"{text}-from-task" in result.stdout
    for text in hidden:
        assert f"{text}-from-task" not in result.stdout
    expected = 10 if level == "DEBUG" else level
    assert f"pyactor logger level {expected}" in result.stdout


def test_an_unknown_logging_level_is_refused(pa_fresh):
    """pa.init(logging_level="LOUD") raises ValueError before starting anything."""
    with pytest.raises(ValueError, match="logging_level"):
        pa.init(logging_level="LOUD")
    assert not pa.is_initialized()

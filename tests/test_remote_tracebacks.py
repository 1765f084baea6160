"""Remote tracebacks name the user's file, line and source line, for code shipped by value (a
script's __main__, lambdas, local classes), as the standard Pool and Ray show them."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import traceback

import pytest

from pyactor._private import serialization

SCRIPT = textwrap.dedent('''\
    import pyactor as pa
    from pyactor.multiprocessing import Pool


    def boom(x):
        raise ValueError(f"boom {x}")  # the task's own line


    @pa.remote
    class Failing:
        def fail(self):
            raise KeyError("from the actor")  # the method's own line


    if __name__ == "__main__":
        pa.init(num_cpus=1)
        for call in (lambda: pa.get(pa.remote(boom).remote(1)),
                     lambda: pa.get(Failing.remote().fail.remote())):
            try:
                call()
            except Exception as error:
                print(str(error))
            print("=" * 20)
        with Pool(1) as pool:
            try:
                pool.apply(boom, (2,))
            except ValueError as error:
                print(error.__cause__.tb)
        pool.join()
        pa.shutdown()
''')


def test_script_functions_and_actor_methods_show_their_file_line_and_source(tmp_path):
    """A task, an actor method and a Pool task defined in a script's __main__ that raise show
    `File "<the script>", line N` and the line itself in the remote traceback."""
    script = tmp_path / "failing_script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    task, method, pool = out.stdout.split("=" * 20)
    for text, line, function, source in [
            (task, 6, "boom", 'raise ValueError(f"boom {x}")  # the task\'s own line'),
            (method, 12, "fail", 'raise KeyError("from the actor")  # the method\'s own line'),
            (pool, 6, "boom", 'raise ValueError(f"boom {x}")  # the task\'s own line')]:
        assert f'File "{script}", line {line}, in {function}\n    {source}' in text, text
        assert "<dynamic-code>" not in text


@pytest.mark.parametrize("layout", ["known", "unknown"])
def test_lambdas_and_local_classes_keep_their_file_name(layout, monkeypatch):
    """Code pickled by value (a lambda, a method of a local class, a nested function) rebuilds
    with this file's name, so its traceback shows the source line here; also when the position
    of the file name among cloudpickle's code arguments is unknown."""
    if layout == "unknown":
        monkeypatch.setattr(serialization, "_FILENAME_POSITION", None)
    def outer(x):
        def inner():
            raise RuntimeError(x)  # nested function's line
        return inner()

    class Local:
        def method(self):
            raise KeyError("local")  # local class method's line

    lam = lambda: 1 / 0  # noqa: E731 - the lambda's line
    for function, line in [(outer, "raise RuntimeError(x)  # nested function's line"),
                           (lambda: Local().method(),
                            'raise KeyError("local")  # local class method\'s line'),
                           (lam, "lam = lambda: 1 / 0  # noqa: E731 - the lambda's line")]:
        rebuilt = pickle.loads(serialization.dumps(function))
        assert rebuilt.__code__ is not function.__code__
        assert rebuilt.__code__.co_filename == __file__
        try:
            rebuilt(1) if function is outer else rebuilt()
        except Exception:  # noqa: BLE001
            text = traceback.format_exc()
        assert f'File "{__file__}"' in text and line in text, text


def test_function_pickles_are_deterministic():
    """The same function pickles to the same bytes (the Pool and the task path key functions by
    the hash of their pickle)."""
    def add(a, b):
        return a + b
    assert serialization.dumps(add) == serialization.dumps(add)
    assert serialization.dumps_function(add) == serialization.dumps_function(add)

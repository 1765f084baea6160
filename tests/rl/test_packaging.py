"""pyactor.rl is importable both ways, `import pyactor` stays light, and a wheel installs rl/ as
pyactor/rl only (PyPI has an unrelated top-level `rl`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

import pytest

from conftest import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_both_import_forms_give_the_same_module():
    """`from pyactor import rl` and `import pyactor.rl` work and name the same module."""
    out = run_python("from pyactor import rl\nimport pyactor.rl\n"
                     "assert rl is pyactor.rl and 'PPO' in rl.ALGORITHMS\n"
                     "print(rl.__file__)", cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(os.path.join("rl", "__init__.py"))


def test_import_pyactor_does_not_import_torch_or_gymnasium():
    """`import pyactor` (and even `import pyactor.rl`) leaves torch and gymnasium unimported."""
    out = run_python("import sys, pyactor, pyactor.rl\n"
                     "print(sorted(m for m in ('torch', 'gymnasium') if m in sys.modules))", cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_wheel_holds_pyactor_rl_and_no_top_level_rl(tmp_path):
    """A non-editable wheel built from the tracked files has pyactor/rl/ and no top-level rl/."""
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(os.path.join(ROOT, name), "rb").read())
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "dist"), str(source)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": tempfile.gettempdir()})
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("pyactor-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pyactor/rl/__init__.py" in names and "pyactor/rl/ppo.py" in names
    assert "pyactor/tune/__init__.py" in names
    assert not [n for n in names if n.startswith(("rl/", "tune/"))]

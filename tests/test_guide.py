"""docs/guide.md runs as written: its ```python blocks as one program, its ```python cluster
blocks as separate programs against a cluster started with `pyactor start`; every line printed
must be the value its `# ->` comment shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

GUIDE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "guide.md")
EXPECTED = re.compile(r"^\s*print\(.*#\s*->\s*(.*?)\s*$")


def code_blocks(info: str) -> list[str]:
    """The fenced code blocks of the guide whose info string is exactly `info`."""
    text = open(GUIDE).read()
    return [match.group(1) for match in
            re.finditer(r"^```" + re.escape(info) + r"\n(.*?)^```$", text, re.M | re.S)]


def expected_output(code: str) -> list[str]:
    return [match.group(1) for line in code.splitlines() if (match := EXPECTED.match(line))]


def run_program(code: str, env: dict | None = None) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_package_docstring_points_at_documents_that_exist():
    """Every document pyactor's docstring names (docs/guide.md) is in the repository."""
    import pyactor
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    named = re.findall(r"[\w/]+\.md\b", pyactor.__doc__)
    assert "docs/guide.md" in named
    missing = [name for name in named if not os.path.exists(os.path.join(root, name))]
    assert not missing, f"pyactor's docstring names missing files: {missing}"


def test_guide_has_examples_of_every_public_call():
    """The guide's examples use every name pyactor exports (its errors aside)."""
    import pyactor
    code = "\n".join(code_blocks("python") + code_blocks("python cluster"))
    errors = set(pyactor.exceptions.__all__) | {"exceptions", "ActorClass", "ActorHandle",
                                               "ObjectRef"}
    unused = [name for name in pyactor.__all__ if name not in errors
              and not re.search(rf"\bpa\.{name}\b", code)]
    assert not unused, f"public calls the guide never shows: {unused}"


@pytest.mark.slow
def test_guide_examples_print_what_they_say():
    """The guide's python blocks, run in order as one program, print their `# ->` values."""
    blocks = code_blocks("python")
    assert len(blocks) >= 10
    code = "\n".join(blocks)
    assert run_program(code) == expected_output(code)


@pytest.mark.slow
def test_guide_cluster_examples_run_against_a_started_cluster(tmp_path):
    """The guide's cluster blocks (a detached actor outliving its driver) run against a head
    started with `pyactor start --head`, each as its own program."""
    env = {**os.environ, "PYACTOR_SESSION_DIR": str(tmp_path / "session")}
    env.pop("PYACTOR_TOKEN", None)
    cli = [sys.executable, "-m", "pyactor.cli"]
    started = subprocess.run([*cli, "start", "--head", "--port", "0", "--num-cpus", "1",
                              "--object-store-memory", str(64 << 20)],
                             capture_output=True, text=True, env=env, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        blocks = code_blocks("python cluster")
        assert len(blocks) == 2
        for block in blocks:
            assert run_program(block, env) == expected_output(block)
    finally:
        stopped = subprocess.run([*cli, "stop"], capture_output=True, text=True, env=env,
                                 timeout=60)
        assert stopped.returncode == 0, stopped.stderr

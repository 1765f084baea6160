"""RL runs and Tune experiments register their folders with the session for the dashboard:
only where a cluster was started on this host, newest first, bounded, forgotten by stop."""

from __future__ import annotations

import os

import pytest

from pyactor._private import run_registry, session


@pytest.fixture
def session_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PYACTOR_SESSION_DIR", str(tmp_path / "session"))
    return tmp_path / "session"


def test_without_a_cluster_on_this_host_nothing_is_written(session_folder, tmp_path):
    """A program on its own pa.init() node leaves no file (not even the session folder)."""
    run_registry.register_run("rl", str(tmp_path))
    assert not session_folder.exists()
    assert run_registry.registered_runs() == []


def test_runs_are_listed_newest_first_bounded_and_forgotten(session_folder, tmp_path,
                                                            monkeypatch):
    """Registered folders that still exist are listed newest first; at most MAX_RUNS stay;
    forget_runs empties the list; a bad kind is refused."""
    session.write_cluster_address("127.0.0.1:1", "00" * 32)
    monkeypatch.setattr(run_registry, "MAX_RUNS", 3)
    folders = []
    for i in range(5):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        folders.append(str(folder))
        run_registry.register_run("tune" if i % 2 else "rl", str(folder))
    runs = run_registry.registered_runs()
    assert {r["path"] for r in runs} <= set(folders) and len(runs) == 3
    assert [r["registered_at"] for r in runs] == sorted((r["registered_at"] for r in runs),
                                                        reverse=True)
    os.rmdir(runs[0]["path"])  # a deleted run folder drops out of the list
    assert runs[0]["path"] not in {r["path"] for r in run_registry.registered_runs()}
    with pytest.raises(ValueError, match="run kind"):
        run_registry.register_run("other", folders[0])
    run_registry.forget_runs()
    assert run_registry.registered_runs() == []

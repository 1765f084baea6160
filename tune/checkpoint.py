"""tune.Checkpoint: a directory of files a trial saved, as in Ray Train/Tune 2.x.

A trial builds one with `Checkpoint.from_directory(d)` and passes it to `tune.report`; the trial's
session copies d into the trial's folder (checkpoint_000007/) before the report leaves the trial
actor, so the checkpoint outlives the temporary directory and the process. The controller only
ever holds the persisted path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


class Checkpoint:
    """A directory of checkpoint files (on a filesystem every node of the cluster can read)."""

    def __init__(self, path: str):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"a Checkpoint's path must be a str or os.PathLike, "
                            f"got {type(path).__name__}")
        self.path = os.fspath(path)

    @classmethod
    def from_directory(cls, path) -> "Checkpoint":
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory: {path!r} is not a directory")
        return cls(os.path.abspath(path))

    def to_directory(self, path: str | None = None) -> str:
        """Copy the files into path (a new temporary directory when None) and return it."""
        target = path or tempfile.mkdtemp(prefix="pyactor-checkpoint-")
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self):
        """The checkpoint's files as a local directory, read-only by convention (no copy)."""
        yield self.path

    def __eq__(self, other) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"

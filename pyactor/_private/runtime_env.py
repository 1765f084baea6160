"""runtime_env: the environment a task or actor runs in (env vars, a working directory, modules).

A project's own code reaches every node through the object store, packed once per process:

    owner (driver or worker)                    node that runs the work          its worker
    runtime_env={"working_dir": "proj",
                 "py_modules": [...], "env_vars": {...}}
      to_wire(): zip each folder once (content
      hash), pa.put(zip) -> ref; the wire env:
      {key, env_vars, working_dir, py_modules}
      --RequestLease(.., wire env) / actor spec--> an idle worker of that key, or
                                                   fork one: env_vars +
                                                   PYACTOR_RUNTIME_ENV=<wire env>
                                                                                   apply(): per package
                                                                                   cache/<hash>/ there? else
                                                                                   get(ref), unzip, rename
                                                                                   into place; sys.path,
                                                                                   chdir(working_dir)

`key` hashes the whole environment: the node never gives a worker of one environment to work of
another (the scheduling key carries it too, so owners keep separate queues). A task's
runtime_env is merged over its job's (`pa.init(runtime_env=...)`, or, in a worker, the worker's
own): env_vars key by key, working_dir and py_modules replaced when given (Ray's rule). Nested
work inherits its parent's environment without packing again (the wire env carries the refs).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import shutil
import sys
import threading
import types

from pyactor.exceptions import RuntimeEnvSetupError

SUPPORTED_KEYS = ("env_vars", "working_dir", "py_modules", "excludes")
# Ray's keys that install software: a cluster here runs what its hosts have installed.
NOT_SUPPORTED = {"pip", "conda", "uv", "container", "image_uri", "java_jars", "nsight",
                 "worker_process_setup_hook", "config", "_ray_commit"}
# A package is held in memory and in the store on every node: above this, the folder is likely
# data that belongs elsewhere (Ray warns at 100 MiB too). PYACTOR_RUNTIME_ENV_MAX_BYTES changes it.
MAX_PACKAGE_BYTES = int(os.environ.get("PYACTOR_RUNTIME_ENV_MAX_BYTES", 100 << 20))
DEFAULT_EXCLUDES = (".git", "__pycache__", "*.pyc")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry no mtime: same content, same hash


# ---------------------------------------------------------------------- validation
def validate(runtime_env) -> dict | None:
    """A user's runtime_env, checked and normalised (absolute paths); None stays None."""
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
    for key in runtime_env:
        if key in NOT_SUPPORTED:
            raise ValueError(f"runtime_env key {key!r} is not supported: install packages on "
                             f"every node; supported keys are {list(SUPPORTED_KEYS)}")
        if key not in SUPPORTED_KEYS:
            raise ValueError(f"unknown runtime_env key {key!r}; supported keys are "
                             f"{list(SUPPORTED_KEYS)}")
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in env_vars.items()):
        raise TypeError(f"runtime_env['env_vars'] must be a dict of str to str, got "
                        f"{env_vars!r}"[:300])
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None:
        working_dir = _existing_path(working_dir, "working_dir")
        if not os.path.isdir(working_dir):
            raise ValueError(f"runtime_env working_dir {working_dir!r} is not a directory")
    py_modules = runtime_env.get("py_modules")
    if py_modules is not None:
        if not isinstance(py_modules, (list, tuple)):
            raise TypeError(f"runtime_env['py_modules'] must be a list, got "
                            f"{type(py_modules).__name__}")
        py_modules = [_module_path(entry) for entry in py_modules]
    excludes = runtime_env.get("excludes") or []
    if not isinstance(excludes, (list, tuple)) or not all(isinstance(e, str) for e in excludes):
        raise TypeError(f"runtime_env['excludes'] must be a list of str, got {excludes!r}")
    return {"env_vars": dict(env_vars), "working_dir": working_dir,
            "py_modules": py_modules, "excludes": list(excludes)}


def _existing_path(path, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"runtime_env {what} must be a path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ValueError(f"runtime_env {what} {path!r} does not exist")
    return path


def _module_path(entry) -> str:
    """A py_modules entry: a package folder, a .py file, or an imported module."""
    if isinstance(entry, types.ModuleType):
        file = getattr(entry, "__file__", None)
        if not file:
            raise ValueError(f"runtime_env py_modules: module {entry.__name__} has no file")
        return os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file
    path = _existing_path(entry, "py_modules entry")
    if os.path.isfile(path) and not path.endswith(".py"):
        raise ValueError(f"runtime_env py_modules entry {path!r} is neither a folder nor a "
                         f".py file (wheels are not supported: install them on every node)")
    return path


# ---------------------------------------------------------------------- packing
def _excluded(relpath: str, patterns) -> bool:
    name = os.path.basename(relpath)
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if fnmatch.fnmatch(relpath, bare) or fnmatch.fnmatch(name, bare) or \
                relpath.startswith(bare + "/"):
            return True
    return False


def pack(path: str, excludes=(), *, as_module: bool = False,
         max_bytes: int | None = None) -> bytes:
    """Zip a folder (its contents; a module: the folder or file itself, by its name) with no
    timestamps, so the same files give the same bytes. Refuses more than max_bytes of files."""
    limit = MAX_PACKAGE_BYTES if max_bytes is None else max_bytes
    patterns = list(DEFAULT_EXCLUDES) + list(excludes)
    if os.path.isfile(path):
        files = [(path, os.path.basename(path))]
    else:
        prefix = os.path.basename(path) + "/" if as_module else ""
        files = []
        for folder, dirs, names in os.walk(path):
            rel_folder = os.path.relpath(folder, path)
            rel_folder = "" if rel_folder == "." else rel_folder + "/"
            dirs[:] = sorted(d for d in dirs if not _excluded(rel_folder + d, patterns))
            for name in sorted(names):
                relpath = rel_folder + name
                if not _excluded(relpath, patterns):
                    files.append((os.path.join(folder, name), prefix + relpath))
    sizes = [(os.path.getsize(file), arcname) for file, arcname in files]
    total = sum(size for size, _ in sizes)
    if total > limit:
        largest = ", ".join(f"{name} ({size / 2**20:.1f} MiB)"
                            for size, name in sorted(sizes, reverse=True)[:3])
        raise ValueError(f"runtime_env package {path!r} holds {total / 2**20:.1f} MiB of files, "
                         f"over the {limit / 2**20:.1f} MiB limit (largest: {largest}); leave "
                         f"data out with runtime_env['excludes'] or raise "
                         f"PYACTOR_RUNTIME_ENV_MAX_BYTES")
    import zipfile  # (not at import: most programs never pack)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file, arcname in files:
            info = zipfile.ZipInfo(arcname, _FIXED_TIME)
            info.external_attr = (os.stat(file).st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(file, "rb") as source:
                archive.writestr(info, source.read())
    return buffer.getvalue()


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Packages:
    """This process's packed folders: each (kind, path, excludes) is zipped and put once; the refs
    stay alive while the process is connected (workers may start with them at any time)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self._lock = threading.Lock()
        self._by_source: dict[tuple, dict] = {}
        self._refs: list = []
        self.packed = 0  # how many folders were zipped (tests: packed once)

    def package(self, kind: str, path: str, excludes) -> dict:
        key = (kind, path, tuple(excludes))
        with self._lock:
            package = self._by_source.get(key)
            if package is None:
                data = pack(path, excludes, as_module=kind == "py_module")
                ref = self.runtime_put(data)
                self._refs.append(ref)
                self.packed += 1
                package = self._by_source[key] = {
                    "hash": content_hash(data), "object_id": ref.id.hex(),
                    "owner": list(ref.owner_address), "name": os.path.basename(path)}
            return package

    def runtime_put(self, data: bytes):
        from pyactor._private import api
        return api.put(data)


_packages: Packages | None = None
_packages_lock = threading.Lock()


def packages_of(runtime) -> Packages:
    """The packer of this process's current runtime (a new one after shutdown and init)."""
    global _packages
    with _packages_lock:
        if _packages is None or _packages.runtime is not runtime:
            _packages = Packages(runtime)
        return _packages


def forget_packages() -> None:
    global _packages
    with _packages_lock:
        _packages = None


# ---------------------------------------------------------------------- the wire form
def to_wire(env: dict | None, parent: dict | None, runtime) -> dict | None:
    """The environment work runs in: `env` (validated) merged over `parent` (a wire env),
    packed; None when there is nothing to set."""
    if env is None:
        return parent
    parent = parent or {}
    env_vars = {**parent.get("env_vars", {}), **env["env_vars"]}
    packages = packages_of(runtime)
    working_dir = parent.get("working_dir")
    if env["working_dir"] is not None:
        working_dir = packages.package("working_dir", env["working_dir"], env["excludes"])
    py_modules = parent.get("py_modules", [])
    if env["py_modules"] is not None:
        py_modules = [packages.package("py_module", path, env["excludes"])
                      for path in env["py_modules"]]
    if not env_vars and working_dir is None and not py_modules:
        return None
    identity = json.dumps([sorted(env_vars.items()), working_dir and working_dir["hash"],
                           [module["hash"] for module in py_modules]])
    return {"key": hashlib.blake2b(identity.encode(), digest_size=8).hexdigest(),
            "env_vars": env_vars, "working_dir": working_dir, "py_modules": py_modules}


# The job's environment: set by pa.init(runtime_env=...) in a driver, by the worker's own in a
# worker. `generation` changes with it, so cached per-function merges know when to redo.
job_env: dict | None = None
generation = 0


def set_job_env(wire: dict | None) -> None:
    global job_env, generation
    job_env = wire
    generation += 1


def effective(options_env: dict | None, cache: list, runtime) -> dict | None:
    """The wire env of a call: its own runtime_env (validated) over the job's. `cache` is the
    caller's [generation, wire] list, so a function packs and merges once per job env."""
    if options_env is None:
        return job_env
    if cache[0] != generation:
        cache[1] = to_wire(options_env, job_env, runtime)
        cache[0] = generation
    return cache[1]


# ---------------------------------------------------------------------- in the worker
def apply(wire: dict, cache_root: str, fetch) -> None:
    """Make this process run in `wire`: unpack its packages into the node's cache (once per
    content hash, atomically), put them on sys.path and enter the working directory. Env vars
    were set before the worker started. `fetch(package) -> bytes` reads a package's zip."""
    paths = []
    for package in wire.get("py_modules", []):
        paths.append(_unpacked(package, cache_root, fetch))
    working_dir = wire.get("working_dir")
    if working_dir is not None:
        folder = _unpacked(working_dir, cache_root, fetch)
        paths.insert(0, folder)
        os.chdir(folder)
    for path in reversed(paths):
        sys.path.insert(0, path)


def _unpacked(package: dict, cache_root: str, fetch) -> str:
    target = os.path.join(cache_root, package["hash"])
    if os.path.isdir(target):
        return target
    try:
        data = fetch(package)
        if content_hash(data) != package["hash"]:
            raise ValueError("its content does not match its hash")
        import zipfile
        staging = os.path.join(cache_root, f".unpacking-{os.getpid()}-{package['hash']}")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                archive.extract(info, staging)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(os.path.join(staging, info.filename), mode)
        try:
            os.rename(staging, target)  # another worker may have won: theirs is the same
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not os.path.isdir(target):
                raise
    except Exception as error:
        raise RuntimeEnvSetupError(
            f"could not set up runtime_env package {package.get('name')!r} "
            f"({package.get('hash')}): {type(error).__name__}: {error}") from error
    return target


def set_up_worker(wire_text: str, cache_root: str, api_module) -> str | None:
    """At a worker's start: enter its runtime_env, which its nested work inherits. Returns
    what went wrong (the worker then fails its work with it), or None."""
    wire = json.loads(wire_text)
    set_job_env(wire)
    try:
        apply(wire, cache_root, fetch_with(api_module))
    except RuntimeEnvSetupError as error:
        return str(error)
    return None


def fetch_with(api_module):
    """A fetch for apply(): the package's zip, through the object store from its owner."""
    def fetch(package: dict) -> bytes:
        from pyactor._private.object_ref import ObjectRef
        ref = ObjectRef(bytes.fromhex(package["object_id"]), list(package["owner"]))
        return bytes(api_module.get(ref))
    return fetch

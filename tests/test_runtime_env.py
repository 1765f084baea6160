"""runtime_env: env vars, a working directory and modules shipped to the workers that need them."""

import io
import os
import textwrap
import zipfile

import pytest

import pyactor as pa
from pyactor._private import runtime_env
from pyactor.exceptions import RuntimeEnvSetupError
from conftest import wait_until


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path):
    """A project folder the driver cannot import: a module, a data file, and a big file that
    excludes leave out; and a package in a separate folder, for py_modules."""
    root = tmp_path / "proj"
    write(str(root / "helper_mod_re.py"), """
        def answer():
            with open("data/value.txt") as file:   # relative: the working dir is entered
                return int(file.read()) + 1
    """)
    write(str(root / "data" / "value.txt"), "41")
    write(str(root / "big" / "blob.bin"), "x" * 1000)
    package = tmp_path / "libs" / "shipped_pkg_re"
    write(str(package / "__init__.py"), "NAME = 'shipped'\n")
    return root, package


# ---------------------------------------------------------------------- pure pieces
def test_validate_rejects_unknown_and_unsupported_keys(tmp_path):
    """Unknown keys and Ray's install keys are refused by name; wrong types too."""
    with pytest.raises(ValueError, match="unknown runtime_env key 'colour'"):
        runtime_env.validate({"colour": "red"})
    with pytest.raises(ValueError, match="'pip' is not supported"):
        runtime_env.validate({"pip": ["requests"]})
    with pytest.raises(TypeError, match="env_vars"):
        runtime_env.validate({"env_vars": {"A": 1}})
    with pytest.raises(ValueError, match="does not exist"):
        runtime_env.validate({"working_dir": str(tmp_path / "missing")})
    with pytest.raises(TypeError, match="runtime_env must be a dict"):
        runtime_env.validate(["env_vars"])


def test_pack_is_deterministic_and_honours_excludes(project):
    """The same files give the same bytes (so the same hash); excluded paths are left out."""
    root, _ = project
    first = runtime_env.pack(str(root), ["big/"])
    second = runtime_env.pack(str(root), ["big/"])
    assert first == second
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert sorted(names) == ["data/value.txt", "helper_mod_re.py"]
    assert runtime_env.content_hash(runtime_env.pack(str(root))) != \
        runtime_env.content_hash(first)


def test_pack_refuses_a_folder_over_the_limit(project):
    """Over the size limit, the error names the folder, its size and the largest files."""
    root, _ = project
    with pytest.raises(ValueError, match=r"proj.*over the .* limit.*big/blob.bin"):
        runtime_env.pack(str(root), max_bytes=500)


def test_apply_unpacks_once_and_reports_a_broken_package(project, tmp_path, monkeypatch):
    """A package is unpacked once per content hash; a corrupt one raises RuntimeEnvSetupError
    naming it."""
    root, package = project
    data = runtime_env.pack(str(package), as_module=True)
    fetched = []

    def fetch(entry):
        fetched.append(entry["name"])
        return data
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = {"hash": runtime_env.content_hash(data), "name": "shipped_pkg_re"}
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    runtime_env.apply({"py_modules": [entry]}, str(cache), fetch)
    runtime_env.apply({"py_modules": [entry]}, str(cache), fetch)
    assert fetched == ["shipped_pkg_re"]
    assert os.path.isfile(cache / entry["hash"] / "shipped_pkg_re" / "__init__.py")
    broken = {"hash": "0" * 32, "name": "broken"}
    with pytest.raises(RuntimeEnvSetupError, match="'broken'"):
        runtime_env.apply({"py_modules": [broken]}, str(cache), lambda e: b"not a zip")


# ---------------------------------------------------------------------- end to end
def test_env_vars_reach_tasks_and_actors_and_workers_are_not_shared(pa_fresh):
    """env_vars are set in the worker; work without them never runs in that worker."""
    pa.init(num_cpus=2)

    @pa.remote
    def read_env():
        return os.environ.get("RE_COLOUR"), os.getpid()

    @pa.remote
    class Reader:
        def read(self):
            return os.environ.get("RE_COLOUR")

    with_env = read_env.options(runtime_env={"env_vars": {"RE_COLOUR": "blue"}})
    colours = pa.get([with_env.remote() for _ in range(4)])
    plain = pa.get([read_env.remote() for _ in range(4)])
    assert {colour for colour, _ in colours} == {"blue"}
    assert {colour for colour, _ in plain} == {None}
    assert not {pid for _, pid in colours} & {pid for _, pid in plain}
    actor = Reader.options(runtime_env={"env_vars": {"RE_COLOUR": "green"}}).remote()
    assert pa.get(actor.read.remote()) == "green"


def test_working_dir_and_py_modules_are_importable_in_tasks(pa_fresh, project):
    """A job's working_dir is entered and importable, its py_modules importable, and a task's
    env_vars merge over the job's; nested tasks inherit the environment."""
    root, package = project
    pa.init(num_cpus=2, runtime_env={"working_dir": str(root), "excludes": ["big/"],
                                     "py_modules": [str(package)],
                                     "env_vars": {"RE_A": "job", "RE_B": "job"}})

    @pa.remote
    def use_project():
        import helper_mod_re
        import shipped_pkg_re
        return (helper_mod_re.answer(), shipped_pkg_re.NAME, os.path.exists("big"),
                os.environ["RE_A"], os.environ["RE_B"])

    @pa.remote
    def nested():
        return pa.get(use_project.remote())

    assert pa.get(use_project.remote()) == (42, "shipped", False, "job", "job")
    assert pa.get(use_project.options(runtime_env={"env_vars": {"RE_B": "task"}}).remote()) \
        == (42, "shipped", False, "job", "task")
    assert pa.get(nested.remote()) == (42, "shipped", False, "job", "job")
    packages = runtime_env.packages_of(pa._private.api._runtime)
    assert packages.packed == 2  # the folder and the module, once each


def test_a_task_runtime_env_replaces_the_working_dir(pa_fresh, project, tmp_path):
    """A task's own working_dir replaces the job's (Ray's rule), packed once for all calls."""
    root, _ = project
    other = tmp_path / "other"
    write(str(other / "marker.txt"), "other")
    pa.init(num_cpus=1, runtime_env={"working_dir": str(root), "excludes": ["big/"]})

    @pa.remote
    def marker():
        return open("marker.txt").read() if os.path.exists("marker.txt") else None

    moved = marker.options(runtime_env={"working_dir": str(other)})
    assert pa.get([moved.remote() for _ in range(3)]) == ["other"] * 3
    assert pa.get(marker.remote()) is None
    assert runtime_env.packages_of(pa._private.api._runtime).packed == 2


def test_init_refuses_a_package_over_the_limit(pa_fresh, project, monkeypatch):
    """pa.init with a folder over the limit fails with the sizes and leaves nothing running."""
    root, _ = project
    monkeypatch.setattr(runtime_env, "MAX_PACKAGE_BYTES", 100)
    with pytest.raises(ValueError, match="over the"):
        pa.init(num_cpus=1, runtime_env={"working_dir": str(root)})
    assert not pa.is_initialized()


def test_runtime_env_on_another_node(project):
    """On a second node (a custom resource places the task there), the package is fetched
    through the object store and unpacked into that node's cache."""
    from test_cluster import CliCluster
    root, _ = project
    cluster = CliCluster()
    try:
        cluster.start_head(1)
        cluster.add_node(1, {"far": 1})
        pa.init(address=cluster.address, token=cluster.token,
                runtime_env={"working_dir": str(root), "excludes": ["big/"]})
        assert wait_until(lambda: sum(n["Alive"] for n in pa.nodes()) == 2, 15)

        @pa.remote(resources={"far": 1}, num_cpus=0)
        def far():
            import helper_mod_re
            return helper_mod_re.answer(), pa.get_runtime_context().get_node_id()

        answer, node_id = pa.get(far.remote(), timeout=60)
        assert answer == 42
        assert node_id != pa.get_runtime_context().get_node_id()
    finally:
        cluster.stop()

# setup.py builds the cffi extension of the C object store (csrc/) and maps the top-level rl/ and
# tune/ folders into the pyactor namespace; all other metadata is in pyproject.toml.
#
# Why the mapping: PyPI already has unrelated top-level packages named `rl` and `tune`, so ours
# install only as `pyactor.rl` and `pyactor.tune` (as Ray has ray.rllib and ray.tune). Listing the
# packages here, rather than with pyproject's find, keeps `rl` and `tune` from also installing as
# top-level packages, in editable and normal installs alike.
from setuptools import find_packages, setup

MAPPED = {"pyactor.rl": "rl", "pyactor.tune": "tune"}


def mapped_packages(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


packages = find_packages(include=["pyactor", "pyactor.*"])
for name, folder in MAPPED.items():
    packages += mapped_packages(name, folder)

setup(packages=packages, package_dir=MAPPED,
      package_data={"pyactor.dashboard": ["static/*"]},  # the page, served as it is
      cffi_modules=["pyactor/_private/store_build.py:ffibuilder"])

# setup.py exists only to build the cffi extension of the C object store (csrc/); all metadata is
# in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["pyactor/_private/store_build.py:ffibuilder"])

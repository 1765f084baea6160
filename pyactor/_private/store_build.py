"""cffi builder of `pyactor._store_cffi`: the compiled shared-memory object store and the
GIL-free socket poll (csrc/).

setup.py names `ffibuilder` in `cffi_modules`, so `pip install -e .` compiles csrc/*.c into the
extension. The declarations come from the headers themselves: preprocessor lines are dropped (except
simple integer `#define`s, which cffi understands) and so is every `#ifndef PA_CDEF ... #endif`
block, which holds what only the C compiler should see.
"""

from __future__ import annotations

import pathlib
import re

from cffi import FFI

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_CSRC = _ROOT / "csrc"
_INTEGER_DEFINE = re.compile(r"^#define\s+PA_\w+\s+-?\d+\s*(/\*.*\*/)?\s*$")


def cdef_source(header: str) -> str:
    """The part of store.h that cffi parses."""
    lines, skip_depth = [], 0
    for line in header.splitlines():
        stripped = line.strip()
        if skip_depth:
            if stripped.startswith("#if"):
                skip_depth += 1
            elif stripped.startswith("#endif"):
                skip_depth -= 1
            continue
        if stripped.startswith("#ifndef PA_CDEF"):
            skip_depth = 1
            continue
        if stripped.startswith("#"):
            if _INTEGER_DEFINE.match(stripped):
                lines.append(re.sub(r"/\*.*\*/", "", stripped).rstrip())
            continue
        lines.append(line)
    return "\n".join(lines)


# One extension holds the C code: the store (store.h) and the GIL-free socket poll (net.h).
_HEADERS = ("store.h", "net.h")

ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_source((_CSRC / name).read_text()) for name in _HEADERS))
ffibuilder.set_source(
    "pyactor._store_cffi",
    "".join(f'#include "{name}"\n' for name in _HEADERS),
    sources=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.c"))],
    include_dirs=[str(_CSRC.relative_to(_ROOT))],
    extra_compile_args=["-O3", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread", "rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

"""The C++ compiler that links ``bitmaps._C``: one that links libstdc++ as a shared library.

torch's libraries use the process's shared libstdc++. An extension linked with a compiler that
adds ``-static-libstdc++`` (some toolchain wrappers do) carries a second copy, whose locale facets
have other ids: the first ``TORCH_CHECK`` message that formats a number (``"got ", k``) then calls
the wrong facet and the process dies (SIGSEGV in ``std::ostream::_M_insert<long>``; measured on
the H200 machine, whose ``/opt/gcc/bin/g++`` does this; the same build with ``/usr/bin/g++`` raises
the error as it should). setup.py asks :func:`pick_cxx` for the compiler before building and
:func:`check_extension` of the result after.

No torch import: the rules are plain functions, tested in tests/test_cxx_build.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

PROBE = (
    "#include <sstream>\n#include <string>\n"
    "std::string bitmaps_probe(long v) { std::ostringstream s; s << v; return s.str(); }\n"
)
# where a compiler on $CXX / c++ links statically, the system compilers to try instead
FALLBACKS = ("/usr/bin/g++", "/usr/bin/c++", "/usr/bin/clang++")
SHARED_RUNTIMES = ("libstdc++.so", "libc++.so")
DT_NEEDED, SHT_DYNAMIC = 1, 6


class CxxBuildError(RuntimeError):
    """One line: what is wrong with the C++ toolchain and what to do."""


def elf_needed(path: str | os.PathLike) -> list[str] | None:
    """The DT_NEEDED names of a 64-bit little-endian ELF shared object; None for anything else
    (another format, a truncated file): the caller then has nothing to check."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    try:
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
        ]
        names, dynamic = [], False
        for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
            if kind != SHT_DYNAMIC:
                continue
            dynamic = True
            strtab = sections[link][4]
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    end = data.index(b"\0", strtab + value)
                    names.append(data[strtab + value : end].decode("utf-8", "replace"))
        return names if dynamic else None  # a shared object has a dynamic section
    except (struct.error, IndexError, ValueError):
        return None


def has_shared_cxx_runtime(needed: list[str]) -> bool:
    return any(name.startswith(SHARED_RUNTIMES) for name in needed)


def links_libstdcxx_statically(cxx: list[str]) -> bool | None:
    """Whether ``cxx -shared`` puts the C++ runtime inside the shared object (no libstdc++.so or
    libc++.so among its DT_NEEDED); None when the probe does not build or cannot be read."""
    with tempfile.TemporaryDirectory(prefix="bitmaps-cxx-") as tmp:
        src, out = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text(PROBE)
        try:
            proc = subprocess.run(
                [*cxx, "-shared", "-fPIC", "-o", str(out), str(src)],
                capture_output=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        needed = elf_needed(out)
    return None if needed is None else not has_shared_cxx_runtime(needed)


def pick_cxx(current: str, fallbacks: tuple[str, ...] = FALLBACKS) -> tuple[str, str | None]:
    """(the compiler to link with, a line saying why it is not ``current``, or None).

    ``current`` stays unless it links the C++ runtime statically; then the first of ``fallbacks``
    that links it as a shared library replaces it, or :class:`CxxBuildError` says what to do."""
    if links_libstdcxx_statically([current]) is not True:
        return current, None
    resolved = os.path.realpath(shutil.which(current) or current)
    for candidate in fallbacks:
        found = shutil.which(candidate)
        if found is None or os.path.realpath(found) == resolved:
            continue
        if links_libstdcxx_statically([found]) is False:
            return found, (
                f"{current} links libstdc++ statically, which crashes torch extensions on their "
                f"error messages; building bitmaps._C with {found}"
            )
    raise CxxBuildError(
        f"the C++ compiler {current} links libstdc++ statically (-static-libstdc++), which makes "
        "bitmaps._C crash on its error messages; set CXX to a compiler that links it as a shared "
        "library (e.g. the system g++)"
    )


def check_extension(path: str | os.PathLike) -> None:
    """Raise CxxBuildError when a built ELF extension carries its own C++ runtime."""
    needed = elf_needed(path)
    if needed is not None and not has_shared_cxx_runtime(needed):
        raise CxxBuildError(
            f"{Path(path).name} was linked without the shared libstdc++ (needs {needed}); it "
            "would crash on its error messages: set CXX to a compiler that links libstdc++ as a "
            "shared library and build again"
        )

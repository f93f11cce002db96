"""setup.py's C++ runtime rule (csrc/cxx_build.py): bitmaps._C must link libstdc++ as a shared
library. A compiler that links it statically (a wrapper adding -static-libstdc++, as on the H200
machine) is replaced by a system one or refused with one line, and a built extension without the
shared runtime is refused. The probes are one-line C++ files built with this machine's g++.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import csrc_module

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="needs a C++ compiler (g++) on PATH")


rules = csrc_module("cxx_build")


def _static_wrapper(tmp_path: Path) -> Path:
    """A compiler that links the C++ runtime into every shared object, like /opt/gcc/bin/g++."""
    if rules.links_libstdcxx_statically([GXX, "-static-libstdc++"]) is not True:
        pytest.skip("needs libstdc++.a that links into a shared object (-static-libstdc++)")
    wrapper = tmp_path / "bin" / "g++"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {GXX} "$@" -static-libstdc++\n')
    wrapper.chmod(0o755)
    return wrapper


def _probe(tmp_path: Path, *flags: str) -> Path:
    src, out = tmp_path / "probe.cpp", tmp_path / f"probe{len(flags)}.so"
    src.write_text(rules.PROBE)
    subprocess.run([GXX, "-shared", "-fPIC", *flags, "-o", str(out), str(src)], check=True)
    return out


@needs_gxx
def test_elf_needed_tells_a_shared_runtime_from_a_static_one(tmp_path):
    shared = rules.elf_needed(_probe(tmp_path))
    assert any(n.startswith("libstdc++.so") for n in shared), shared
    assert any(n.startswith("libgcc_s.so") for n in shared), shared
    assert rules.links_libstdcxx_statically([GXX]) is False
    _static_wrapper(tmp_path)  # skips where no static libstdc++ links into a shared object
    static = rules.elf_needed(_probe(tmp_path, "-static-libstdc++"))
    assert static and not any(n.startswith("libstdc++.so") for n in static), static


def test_elf_needed_of_what_is_not_a_64_bit_elf_is_none(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a shared object\n")
    assert rules.elf_needed(text) is None
    assert rules.elf_needed(tmp_path / "missing.so") is None
    cut = tmp_path / "cut.so"
    cut.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"\xff" * 8)  # header, no sections
    assert rules.elf_needed(cut) is None
    rules.check_extension(text)  # nothing to read, nothing to refuse


def test_a_compiler_that_does_not_build_the_probe_is_left_alone(tmp_path):
    broken = tmp_path / "cxx"
    broken.write_text("#!/bin/sh\necho 'cxx: forced failure' >&2\nexit 1\n")
    broken.chmod(0o755)
    assert rules.links_libstdcxx_statically([str(broken)]) is None
    assert rules.pick_cxx(str(broken)) == (str(broken), None)  # its own failure says what is wrong


@needs_gxx
def test_pick_cxx_keeps_a_shared_runtime_compiler_and_replaces_a_static_one(tmp_path):
    assert rules.pick_cxx(GXX) == (GXX, None)
    wrapper = _static_wrapper(tmp_path)
    chosen, why = rules.pick_cxx(str(wrapper), fallbacks=(str(wrapper), GXX))
    assert chosen == GXX
    assert why.startswith(f"{wrapper} links libstdc++ statically") and GXX in why
    with pytest.raises(rules.CxxBuildError) as err:
        rules.pick_cxx(str(wrapper), fallbacks=(str(wrapper), str(tmp_path / "absent")))
    message = str(err.value)
    assert "\n" not in message and "set CXX to a compiler" in message and str(wrapper) in message


@needs_gxx
def test_check_extension_refuses_a_static_runtime(tmp_path):
    rules.check_extension(_probe(tmp_path))
    _static_wrapper(tmp_path)
    with pytest.raises(rules.CxxBuildError, match="linked without the shared libstdc"):
        rules.check_extension(_probe(tmp_path, "-static-libstdc++"))


def test_the_built_extension_links_the_shared_runtime():
    built = glob.glob(str(ROOT / "bitmaps" / "_C*.so"))
    if not built:
        pytest.skip("needs bitmaps._C built in place (setup.py build_ext --inplace)")
    for path in built:
        needed = rules.elf_needed(path)
        assert needed is not None and rules.has_shared_cxx_runtime(needed), (path, needed)

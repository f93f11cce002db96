"""The torch-free kernel harness (csrc/tests/kernel_harness.cpp) and the aarch64 builds.

The harness checks pack, xnor_gemm and the fused binary_linear epilogue of csrc/kernels bit for bit
against its own reference (see its header). Here it runs natively on every path this CPU reports,
then cross-built for aarch64 under qemu-aarch64 (NEON with and without the dot-product extension,
and scalar). The NEON inner loop is read back from the object code, and bitmaps._C's CPU sources
and the ONNX Runtime op library are built for aarch64. Everything goes through the Makefile
targets, so `make kernel-harness-aarch64` is exactly what this file runs. Tests needing the cross
tools skip with the Debian package to install (`make arm-tools` installs them as root).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "build" / "kernel-harness" / "kernel_harness"
NEON_DIS = ROOT / "build" / "cross-aarch64" / "cpu_kernels_neon.dis"
NEON_INT8_ATTENTION_DIS = ROOT / "build" / "cross-aarch64" / "cpu_attention_int8_neon.dis"
AARCH64_CXX = "aarch64-linux-gnu-g++"
TOOLS = {
    AARCH64_CXX: "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
}


def make(*targets: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    return subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            package = TOOLS.get(tool, tool)
            pytest.skip(
                f"needs {tool} (Debian package {package}; `make arm-tools` installs it as root)"
            )


def harness_paths(output: str) -> list[str]:
    """The 'path NAME (variant): N checks, F failed' lines, asserting none failed."""
    lines = re.findall(r"^path (\S+(?: \(\w+\))?): (\d+) checks, (\d+) failed$", output, re.M)
    for name, checks, failed in lines:
        assert int(checks) > 0 and int(failed) == 0, f"path {name}: {failed} of {checks} failed"
    return [name for name, _, _ in lines]


def expected_native_paths() -> list[str]:
    """The paths this CPU should run, from what the OS reports (not from the kernels' detection)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ["neon", "scalar"]
    if machine not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").is_file():
        return ["scalar"]
    flags_line = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    paths = []
    avx2 = {"avx2", "f16c"} <= flags
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vpopcntdq", "fma"}
    if avx2 and avx512 <= flags:
        paths.append("avx512")
    if avx2:  # both forms of its K loop, on any CPU
        paths += ["avx2 (registers)", "avx2 (folded)"]
    return [*paths, "scalar"]


def test_native_harness_every_path() -> None:
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("needs a C++17 compiler (g++, or CXX=...)")
    proc = make("kernel-harness")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert harness_paths(proc.stdout) == expected_native_paths()
    assert proc.stdout.rstrip().splitlines()[-1].startswith("OK")


def test_native_harness_forced_paths() -> None:
    if not HARNESS.is_file():
        pytest.skip("needs build/kernel-harness/kernel_harness (test_native_harness_every_path)")
    env = {**os.environ, "BITMAPS_CPU_PATH": "scalar"}
    proc = subprocess.run([str(HARNESS)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert harness_paths(proc.stdout) == ["scalar"]
    # A forced path the CPU cannot run is an error naming what it needs, never a fallback.
    missing = "neon" if platform.machine().lower() not in ("aarch64", "arm64") else "avx2"
    proc = subprocess.run([str(HARNESS), "--path", missing], capture_output=True, text=True)
    assert proc.returncode == 2 and f"path {missing} needs" in proc.stderr


def test_aarch64_harness_under_qemu() -> None:
    need(AARCH64_CXX, "qemu-aarch64")
    proc = make("kernel-harness-aarch64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # -cpu max has the dot-product extension (UDOT), cortex-a53 has not (CNT + UADALP); the
    # scalar path is the same code on either, so it runs once.
    assert harness_paths(proc.stdout) == ["neon (udot)", "scalar", "neon (cnt)"]
    assert proc.stdout.count("\nOK (seed") == 3


def inner_loop(disassembly: str, function: str, marker: str = "cnt") -> list[tuple[str, str]]:
    """(mnemonic, operands) of the smallest loop of `function` (a backward branch) holding a
    `marker` instruction."""
    start = disassembly.find(f"<{function}>:\n")
    assert start >= 0, f"{function} not in the disassembly"
    body = disassembly[start:].split("\n\n", 1)[0]
    insns = []
    for line in body.splitlines()[1:]:
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*([^/]*)", line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    loops = []
    for addr, mnemonic, operands in insns:
        target = re.match(r"([0-9a-f]+) <", operands)
        if mnemonic.startswith(("b", "cb", "tb")) and target and int(target.group(1), 16) <= addr:
            loop = [(mn, ops) for a, mn, ops in insns if int(target.group(1), 16) <= a <= addr]
            if any(mn == marker for mn, _ in loop):
                loops.append(loop)
    assert loops, f"no loop with {marker} in {function}"
    return min(loops, key=len)


NEON_KERNELS = {
    # function (GemmOutput 0: int32; the epilogue is outside the loop) -> (combine, accumulate)
    "micro_cnt<4, (bitmaps::cpu::GemmOutput)0, false>": ("eor", "uadalp"),
    "micro_cnt<4, (bitmaps::cpu::GemmOutput)0, true>": ("and", "uadalp"),
    "micro_dot<4, (bitmaps::cpu::GemmOutput)0, false>": ("eor", "udot"),
    "micro_dot<4, (bitmaps::cpu::GemmOutput)0, true>": ("and", "udot"),
}
# Loads (panel rows, the broadcast activation word), address and loop-counter updates, the branch.
LOOP_OVERHEAD = {"ldr", "ldp", "ld1", "ld1r", "dup", "add", "sub", "subs", "cmp", "mov"}


@pytest.mark.parametrize("function", sorted(NEON_KERNELS))
def test_neon_inner_loop_instruction_mix(function: str) -> None:
    need(AARCH64_CXX, "aarch64-linux-gnu-objdump")
    proc = make("neon-asm")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefix = "void bitmaps::cpu::detail::(anonymous namespace)::"
    loop = inner_loop(
        NEON_DIS.read_text(), f"{prefix}{function}(bitmaps::cpu::GemmArgs const&, long, long)"
    )
    mix = Counter(mn for mn, _ in loop)
    combine, accumulate = NEON_KERNELS[function]
    vectors = mix[combine]  # 128-bit words combined per iteration
    # Per 128 bits: one combine (EOR / AND), one CNT, one UADALP or UDOT; all on vector registers.
    assert vectors >= 4 and mix["cnt"] == vectors and mix[accumulate] == vectors, mix
    for mn, ops in loop:
        if mn in (combine, "cnt", accumulate):
            assert re.fullmatch(r"v\d+\.\d+[bhs], v\d+\.\d+[bhs](, v\d+\.\d+[bhs])?", ops), (
                mn,
                ops,
            )
    # Nothing scalar besides loop control: no popcount fallback, no spills, no stores.
    other = set(mix) - {combine, "cnt", accumulate} - LOOP_OVERHEAD
    assert all(m.startswith(("b.", "cbnz")) for m in other), f"unexpected instructions: {mix}"
    assert not any("sp" in re.split(r"[\s,\[\]]+", ops) for _, ops in loop), f"stack access: {loop}"
    print(f"{function}: {dict(mix)}", file=sys.stderr)


# The int8 attention's two products (cpu_attention_int8_neon.cpp), 4-row blocks: 16 accumulators.
NEON_INT8_ATTENTION = ("scores<4>", "values<4>")


@pytest.mark.parametrize("function", NEON_INT8_ATTENTION)
def test_neon_int8_attention_instruction_mix(function: str) -> None:
    need(AARCH64_CXX, "aarch64-linux-gnu-objdump")
    proc = make("neon-asm")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dis = NEON_INT8_ATTENTION_DIS.read_text()
    # No fused multiply-add anywhere in the kernel: each float32 step must round on its own for
    # the levels to match the other paths, torch and ONNX bit for bit (the harness checks the bits
    # under qemu; this keeps a compiler from contracting them on a real CPU's build either).
    fused = re.findall(r"^\s*[0-9a-f]+:\s+(fn?m(?:la|ls|add|sub))\s", dis, flags=re.M)
    assert not fused, f"fused multiply-adds in the int8 attention kernel: {sorted(set(fused))}"
    prefix = "void bitmaps::cpu::detail::(anonymous namespace)::"
    args = (
        "(bitmaps::cpu::AttentionArgs const&, long, long, long, "
        "bitmaps::cpu::detail::Int8Head const&)"
    )
    loop = inner_loop(dis, f"{prefix}{function}{args}", marker="sdot")
    mix = Counter(mn for mn, _ in loop)
    # Per 16 int8 products of 4 rows x 16 keys (or columns): 64 SDOT by element against 4 row
    # vectors and 16 operand vectors, loaded once each; nothing else but loop control and the
    # operands' addresses (integer shifts and MADD).
    assert mix["sdot"] >= 64, mix
    for mn, ops in loop:
        if mn == "sdot":
            assert re.fullmatch(r"v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", ops), (mn, ops)
    other = set(mix) - {"sdot", "asr", "lsl", "lsr", "madd"} - LOOP_OVERHEAD
    assert all(m.startswith(("b.", "cbnz")) for m in other), f"unexpected instructions: {mix}"
    assert not any("sp" in re.split(r"[\s,\[\]]+", ops) for _, ops in loop), f"stack access: {loop}"
    print(f"{function}: {dict(mix)}", file=sys.stderr)


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183: AArch64)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def test_cross_build_bitmaps_c_sources_for_aarch64() -> None:
    need(AARCH64_CXX)
    pytest.importorskip("torch", reason="needs torch's headers (the venv's torch)")
    proc = make("cross-check-aarch64-torch")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The kernels with _C's flags (-fsyntax-only: their aarch64 objects are the harness's), the
    # adapters compiled.
    kernels = sorted((ROOT / "csrc" / "kernels").glob("*.cpp"))
    assert all(f"-fsyntax-only {src.relative_to(ROOT)}" in proc.stdout for src in kernels)
    for src in sorted((ROOT / "csrc" / "torch").glob("*.cpp")):
        obj = ROOT / "build" / "cross-aarch64" / "torch" / f"{src.parent.name}_{src.stem}.o"
        assert obj.is_file() and elf_machine(obj) == 183, obj


def test_cross_build_ort_library_for_aarch64() -> None:
    need(AARCH64_CXX)
    build_py = ROOT / "csrc" / "onnxruntime" / "build.py"
    if not build_py.is_file():
        pytest.skip("needs csrc/onnxruntime/build.py (the ONNX Runtime op library)")
    headers = subprocess.run(
        [sys.executable, str(build_py), "--headers-only"], capture_output=True, text=True
    )
    if headers.returncode != 0:
        pytest.skip(
            f"needs ONNX Runtime's C API headers: {headers.stderr.strip().splitlines()[-1:]}"
        )
    proc = make("cross-check-aarch64-ort")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elf_machine(ROOT / "build" / "cross-aarch64" / "libbitmaps_ort.so") == 183

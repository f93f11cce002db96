"""Intel AMX withheld from a process: what `bitmaps profile --amx withhold` measures with.

ONNX Runtime's INT8 GEMM (MLAS) runs on the AMX tile unit where the CPU has one (Xeon from
Sapphire Rapids on): there it is several times the VNNI rate (benchmarks/RESULTS.md, "The popcount
ceiling of this CPU"). Most CPUs a binary model is shipped to have no AMX (AMD Zen, Arm, client
and older server Intel parts), so the INT8 baseline a user of those compares against runs on
VNNI / dot-product instructions. On an AMX machine the closest honest measurement of that is the
same cores with AMX withheld.

Linux hands the tile registers only to a process that asks for them
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, Linux 5.16 on); ONNX Runtime's MLAS asks
when ONNX Runtime is imported, torch's oneDNN at its first matrix product, and both fall back to
their AVX-512 (VNNI) kernels when refused. :func:`withhold_amx` installs a seccomp filter that
refuses exactly that request (EPERM) for this process and every thread and child it starts;
nothing else changes. It must run before anything has asked: a permission once granted cannot be
taken back (then it raises). A process that imports ONNX Runtime at start therefore runs under
``python -m bitmaps.runtime.amx ARGS...``: the filter first, then ``python ARGS...`` in its place.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

from bitmaps.core.errors import BitmapsError

ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64
AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO, _EPERM = 0x7FFF0000, 0x00050000, 1
# offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6]
_NR, _ARCH, _ARG0 = 0, 4, 16


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    """Whether this platform can withhold AMX this way (Linux on x86-64)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def cpu_has_amx() -> bool:
    """Whether the CPU reports the AMX tile unit (``amx_tile`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


def check_supported() -> None:
    """Raises BitmapsError (one line for the CLI) where :func:`withhold_amx` cannot work."""
    if not supported():
        raise BitmapsError(
            f"--amx withhold needs Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
        )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def tile_data_permitted() -> bool:
    """Whether this process holds the AMX tile-data permission (False where there is none)."""
    if not supported():
        return False
    perm = ctypes.c_ulong(0)
    if _libc().syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(perm)) != 0:
        return False  # a kernel before 5.16: no dynamic permission, no AMX for user space
    return bool(perm.value & (1 << XFEATURE_XTILEDATA))


def _filter_program() -> bytes:
    """arch_prctl(ARCH_REQ_XCOMP_PERM, ...) -> EPERM; every other system call allowed."""
    allow, deny = (
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),
    )
    program = [
        (_BPF_LD_W_ABS, 0, 0, _ARCH),
        (_BPF_JEQ_K, 0, 4, AUDIT_ARCH_X86_64),  # another ABI: allow (jump to index 6)
        (_BPF_LD_W_ABS, 0, 0, _NR),
        (_BPF_JEQ_K, 0, 2, SYS_ARCH_PRCTL),  # another call: allow
        (_BPF_LD_W_ABS, 0, 0, _ARG0),
        (_BPF_JEQ_K, 1, 0, ARCH_REQ_XCOMP_PERM),  # the permission request: deny (index 7)
        allow,
        deny,
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in program)


def withhold_amx() -> None:
    """Refuse AMX to this process from now on (module docstring). Raises BitmapsError where that
    cannot be done: not Linux on x86-64, the permission already granted, or the kernel refused the
    filter."""
    check_supported()
    if tile_data_permitted():
        raise BitmapsError(
            "--amx withhold: this process already holds the AMX permission (it cannot be taken "
            "back); withhold it before any INT8 or BF16 work runs"
        )
    libc = _libc()
    program = _filter_program()
    code = ctypes.create_string_buffer(program, len(program))
    prog = _Fprog(len(program) // 8, ctypes.addressof(code))
    if (
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        or libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0
    ):
        err = ctypes.get_errno()
        raise BitmapsError(f"--amx withhold: the kernel refused the seccomp filter (errno {err})")


def main(argv: list[str]) -> int:
    """``python -m bitmaps.runtime.amx ARGS...``: AMX withheld, then this Python runs ARGS."""
    try:
        withhold_amx()
    except BitmapsError as exc:
        print(f"bitmaps: {exc}", file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, *argv])
    return 1  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

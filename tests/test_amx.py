"""bitmaps/runtime/amx.py: the seccomp filter that withholds Intel AMX (``profile --amx withhold``).

Each check runs in a child interpreter: a seccomp filter cannot be removed from the process that
installed it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import amx_withhold_problem

from bitmaps.runtime import amx

pytestmark = pytest.mark.skipif(
    amx_withhold_problem() is not None, reason=str(amx_withhold_problem())
)


def child(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


REQUEST = """
    import ctypes
    from bitmaps.runtime import amx
    libc = ctypes.CDLL(None, use_errno=True)
    def request():
        r = libc.syscall(amx.SYS_ARCH_PRCTL, amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA)
        return r, ctypes.get_errno()
"""


def test_the_filter_refuses_the_tile_request_and_nothing_else() -> None:
    out = child(
        REQUEST
        + """
    amx.withhold_amx()
    r, err = request()
    perm = ctypes.c_ulong(0)
    get = libc.syscall(amx.SYS_ARCH_PRCTL, amx.ARCH_GET_XCOMP_PERM, ctypes.byref(perm))
    get = "allowed" if get == 0 or ctypes.get_errno() != 1 else "refused"  # EINVAL before 5.16
    import os, threading
    t = threading.Thread(target=lambda: print("thread", *request()))
    t.start(); t.join()
    print(r, err, get, amx.tile_data_permitted(), os.getpid() > 0)
    """
    )
    thread, main = out.splitlines()
    # EPERM (1) from the filter: without it the request succeeds (AMX CPU) or fails with EINVAL
    assert main == "-1 1 allowed False True"
    assert thread == "thread -1 1"  # threads started afterwards inherit the filter


@pytest.mark.skipif(
    not amx.cpu_has_amx(), reason="needs a CPU with AMX (amx_tile in /proc/cpuinfo)"
)
def test_a_permission_already_granted_cannot_be_withheld() -> None:
    out = child(
        REQUEST
        + """
    from bitmaps.core.errors import BitmapsError
    print(*request())
    try:
        amx.withhold_amx()
    except BitmapsError as exc:
        print("refused:", exc)
    """
    )
    granted, refused = out.splitlines()
    assert granted == "0 0"
    assert refused.startswith("refused: --amx withhold: this process already holds")


ORT_INT8 = """
    import sys
    from bitmaps.runtime import amx
    if sys.argv[-1] == "withhold":
        amx.withhold_amx()  # before ONNX Runtime is imported: it asks for the tiles then
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import quantize_dynamic
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src, dst = sys.argv[-3], sys.argv[-2]
    onnx.save(model, src)
    quantize_dynamic(src, dst)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    y = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = float(np.abs(y - x @ w).max() / np.abs(x @ w).max())
    print(amx.tile_data_permitted(), err < 0.05)
"""


@pytest.mark.skipif(
    not amx.cpu_has_amx(), reason="needs a CPU with AMX (amx_tile in /proc/cpuinfo)"
)
@pytest.mark.parametrize(("mode", "tiles"), [("allow", "True"), ("withhold", "False")])
def test_onnxruntime_int8_runs_without_the_tiles(tmp_path, mode: str, tiles: str) -> None:
    """ONNX Runtime's INT8 GEMM asks for the tiles on an AMX CPU (allow: granted), and runs just
    as correctly on its other kernels when refused (withhold)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ORT_INT8), str(tmp_path / "f.onnx"),
         str(tmp_path / "q.onnx"), mode],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [tiles, "True"]


def test_a_launcher_refusal_is_one_bitmaps_error(tmp_path, monkeypatch) -> None:
    """When the AMX launcher cannot withhold (it prints ``bitmaps: ...`` and exits 2), profile's
    worker runner raises that line as a BitmapsError (one line and exit 2 from the CLI), not a
    crash report."""
    from bitmaps.core.errors import BitmapsError
    from bitmaps.runtime import profile

    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "bitmaps: --amx withhold: refused for the test" >&2\nexit 2\n')
    fake.chmod(0o755)
    monkeypatch.setattr(profile.sys, "executable", str(fake))
    job = {
        "amx": "withhold",
        "threads": 1,
        "model": "int8",
        "backend": "onnxruntime",
        "device": "cpu",
    }
    with pytest.raises(BitmapsError, match=r"^--amx withhold: refused for the test$"):
        profile.run_worker(job, lambda result: None)

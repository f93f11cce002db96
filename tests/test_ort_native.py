"""libbitmaps_ort.so, the native ONNX Runtime custom op (csrc/onnxruntime).

Parity with the reference op and with the torch CPU kernel on every CPU path, fp32 and fp16,
both activation kinds, dynamic batch and sequence; the whole exported student against the
model-local function and PyTorch; a real client (a fresh venv with only onnxruntime and numpy);
and bad input: a library that does not load or needs a newer runtime, invalid nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import bitmaps
from bitmaps.core import ops
from bitmaps.runtime import onnxruntime as bort

ROOT = Path(__file__).resolve().parents[1]
MISSING = bort.library_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)


def _x(lead: tuple[int, ...], k: int, dtype: int) -> torch.Tensor:
    x = torch.randn(*lead, k)
    return x.half() if dtype == TensorProto.FLOAT16 else x


def _run(session: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {"X": x.numpy()})[0]


def op_types_run(model: onnx.ModelProto, feed: dict, native: bool) -> set[str]:
    """The op types ONNX Runtime's profiler saw running (which path served BinaryLinear)."""
    so = bort.session_options()
    so.enable_profiling = True
    if native:
        so.register_custom_ops_library(bitmaps.get_library_path())
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    session.run(None, feed)
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("act_unsigned", [0, 1])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("k", [1, 31, 33, 768, 3072])
def test_native_op_matches_reference_and_torch_kernel(
    cpu_path, monkeypatch, k, dtype, act_unsigned
):
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # the library reads it at session creation
    n, beta = 40, 0.05
    model, t = bort.single_node_model(
        k, n, beta, 0.0, dtype=dtype, rank=3, act_unsigned=act_unsigned
    )
    session = bort.kernel_session(model)
    for lead in ((2, 7), (1, 1), (3, 16)):  # batch and sequence are dynamic
        x = _x(lead, k, dtype)
        y = _run(session, x)
        args = (x, t["W"], t["w_scale"], t["bias"], k, beta, 0.0, act_unsigned)
        ref = ops.reference_binary_linear(*args)
        assert y.dtype == x.numpy().dtype and y.shape == tuple(ref.shape)
        tol = (1e-5 if dtype == TensorProto.FLOAT else 2e-3) * max(1.0, ref.abs().max().item())
        assert np.abs(y.astype(np.float64) - ref.double().numpy()).max() <= tol
        # Same kernels, same path, same epilogue order: bit for bit the torch CPU op.
        assert np.array_equal(y, ops.binary_linear(*args).numpy())


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("k", [1, 33, 3072])
def test_panel_layout_weights_give_the_same_result(cpu_path, monkeypatch, k, dtype):
    """W stored as the GEMM's panels (the onnxruntime export) is read in place by the native op
    and unpacked by the function: both equal the packed-rows model (n = 40: a partial panel)."""
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)
    rows, t = bort.single_node_model(k, 40, 0.05, 0.0, dtype=dtype, rank=3)
    panels, _ = bort.single_node_model(k, 40, 0.05, 0.0, dtype=dtype, rank=3, panels=True)
    w = next(i for i in panels.graph.initializer if i.name == "W")
    assert list(w.dims) == [3, (k + 31) // 32, 16]
    x = _x((2, 7), k, dtype)
    expected = _run(bort.kernel_session(rows), x)
    assert np.array_equal(_run(bort.kernel_session(panels), x), expected)
    ref = ops.reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, 0.05, 0.0)
    function = bort.function_session(panels)
    tol = (1e-5 if dtype == TensorProto.FLOAT else 2e-3) * max(1.0, ref.abs().max().item())
    assert np.abs(_run(function, x).astype(np.float64) - ref.double().numpy()).max() <= tol


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("k", [1, 33, 768, 3072])
def test_fused_gelu_matches_torch_gelu(cpu_path, monkeypatch, k, dtype):
    """activation = 1 (the onnxruntime export's BinaryLinear → Gelu fusion): the native op's
    epilogue GELU and the function's Erf both match torch.nn.functional.gelu of the op."""
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)
    model, t = bort.single_node_model(
        k, 40, 0.05, 0.0, dtype=dtype, rank=3, panels=True, activation=1
    )
    x = _x((2, 7), k, dtype)
    y32 = ops.reference_binary_linear(x.float(), t["W"], t["w_scale"], t["bias"], k, 0.05, 0.0)
    ref = torch.nn.functional.gelu(y32).to(x.dtype).double()
    scale = max(1.0, ref.abs().max().item())
    tol = 1e-6 if dtype == TensorProto.FLOAT else 2e-3
    for session in (bort.kernel_session(model), bort.function_session(model)):
        got = torch.from_numpy(_run(session, x).astype(np.float64))
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= tol * scale
    assert (y32 < 0).any() and (y32 > 0).any()  # both sides of GELU's knee were exercised


def test_native_op_reads_constant_panels_without_a_copy():
    """A constant W in the panel layout adds nothing resident at session creation; rows do (the
    kernel's laid-out copy). 6.3 MB of packed weights, so the difference stands out of the noise."""
    k, n = 3072, 16384

    def growth(panels: bool) -> int:
        model, _ = bort.single_node_model(k, n, panels=panels)
        before = _rss_anon()
        session = bort.kernel_session(model)
        grown = _rss_anon() - before
        del session
        return grown

    weights = n * k // 8
    rows, panels = growth(False), growth(True)
    assert rows - panels > 0.7 * weights, (rows, panels, weights)


def _rss_anon() -> int:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_native_op_runs_instead_of_the_function():
    model, _ = bort.single_node_model(64, 8, 0.1, 0.0)
    feed = {"X": np.random.default_rng(0).standard_normal((3, 64), dtype=np.float32)}
    assert op_types_run(model, feed, native=True) == {"BinaryLinear"}
    assert "BinaryLinear" not in op_types_run(model, feed, native=False)  # the function's ops


def test_weights_as_graph_input_are_laid_out_per_call():
    model, t = bort.single_node_model(100, 20, 0.0, 0.5)
    w = model.graph.initializer[0]
    assert w.name == "W"
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.INT32, [20, 4]))
    del model.graph.initializer[0]
    session = bort.kernel_session(model)
    x = torch.randn(5, 100)
    y = session.run(None, {"X": x.numpy(), "W": t["W"].numpy()})[0]
    ref = ops.reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], 100, 0.0, 0.5)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_panel_weights_as_graph_input_are_read_per_call():
    model, t = bort.single_node_model(100, 20, 0.0, 0.5, panels=True)
    dims = ["panels", "words", "lanes"]  # not known before run time: checked per call
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.INT32, dims))
    del model.graph.initializer[0]
    session = bort.kernel_session(model)
    x = torch.randn(5, 100)
    feed = {"X": x.numpy(), "W": ops.reference_prepack_weights(t["W"], 100).numpy()}
    y = session.run(None, feed)[0]
    ref = ops.reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], 100, 0.0, 0.5)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5)
    feed["W"] = np.zeros((3, 4, 16), np.int32)  # one panel too many: an error naming the node
    with pytest.raises(
        Exception, match="node 'binary_linear': W .* must have shape \\[2, 4, 16\\]"
    ):
        session.run(None, feed)


@pytest.mark.parametrize("threads", ["ort", "std", "serial"])
def test_thread_modes_agree(monkeypatch, threads):
    monkeypatch.setenv("BITMAPS_ORT_THREADS", threads)
    model, t = bort.single_node_model(768, 300, 0.0, 0.0, rank=3)
    x = torch.randn(2, 70, 768)
    y = _run(bort.kernel_session(model, threads=2), x)
    expected = ops.binary_linear(x, t["W"], t["w_scale"], t["bias"], 768, 0.0, 0.0)
    assert np.array_equal(y, expected.numpy())


@pytest.mark.parametrize("prepack", ["1", "0"])
def test_weight_layouts_agree(monkeypatch, prepack):
    """BITMAPS_ORT_PREPACK=0 reads W per call instead of panels laid out at session creation."""
    monkeypatch.setenv("BITMAPS_ORT_PREPACK", prepack)
    model, t = bort.single_node_model(100, 37, 0.1, 0.0, rank=3, act_unsigned=1)
    x = torch.randn(3, 9, 100)
    y = _run(bort.kernel_session(model, threads=2), x)
    expected = ops.binary_linear(x, t["W"], t["w_scale"], t["bias"], 100, 0.1, 0.0, 1)
    assert np.array_equal(y, expected.numpy())


def test_bad_prepack_setting_fails_session_creation(monkeypatch):
    monkeypatch.setenv("BITMAPS_ORT_PREPACK", "yes")
    model, _ = bort.single_node_model(64, 8)
    with pytest.raises(Exception, match="BITMAPS_ORT_PREPACK must be 1 or 0, got 'yes'"):
        bort.kernel_session(model)


# --------------------------------------------------------------------------- the exported student


def test_exported_student_native_function_and_torch_agree(tmp_path):
    from test_export import small_student

    from bitmaps.core.config import ExportConfig
    from bitmaps.export.pipeline import export_verified

    # Verified on the function only here: this test checks the native op itself.
    result = export_verified(small_student(), ExportConfig(backends=("function",)), binary=True)
    ids = torch.arange(2 * 11).reshape(2, 11) % 300
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = result.wrapper(ids, mask).numpy()
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    native = bort.kernel_session(result.model).run(None, feed)[0]
    function = bort.function_session(result.model).run(None, feed)[0]
    scale = np.abs(expected).max()
    assert np.abs(native - expected).max() <= 1e-4 * scale
    assert np.abs(function - expected).max() <= 1e-4 * scale
    assert op_types_run(result.model, feed, native=True) >= {"BinaryLinear"}


# --------------------------------------------------------------------------- a real client

CLIENT = """
import sys
import numpy as np, onnxruntime as ort
model, out, lib = sys.argv[1], sys.argv[2], sys.argv[3:]
so = ort.SessionOptions()
if lib:
    so.register_custom_ops_library(lib[0])
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
ids = np.load(out + ".ids.npy")
np.save(out, s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0])
"""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory) -> str:
    """A fresh venv holding only onnxruntime and numpy (no torch, no bitmaps)."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "onnxruntime", "numpy"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0:
        last = (pip.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"needs pip to install onnxruntime and numpy into a fresh venv: {last}")
    return python


@pytest.mark.slow
def test_real_client_runs_the_student_with_and_without_the_library(
    client_python, bert_tiny_dir, tmp_path
):
    from bitmaps.core.config import BinarizeConfig, ExportConfig
    from bitmaps.export.pipeline import export_verified, write_onnx
    from bitmaps.train.binary_linear import binarize_
    from bitmaps.train.models import load_model

    mlm = load_model(str(bert_tiny_dir), require_tokenizer=False).model
    binarize_(mlm, BinarizeConfig())
    result = export_verified(mlm, ExportConfig(), binary=True)
    path = tmp_path / "student.onnx"
    write_onnx(result.model, path)
    ids = torch.randint(0, 30000, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = result.wrapper(ids, torch.ones_like(ids)).numpy()
    scale = np.abs(expected).max()
    check = subprocess.run(
        [client_python, "-c", "import torch"], capture_output=True, text=True
    )  # the client really lacks torch (and bitmaps)
    assert check.returncode != 0
    for lib in ([bitmaps.get_library_path()], []):
        out = tmp_path / f"y{len(lib)}.npy"
        np.save(str(out) + ".ids.npy", ids.numpy())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [client_python, "-c", CLIENT, str(path), str(out), *lib],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        y = np.load(out)
        assert y.shape == expected.shape
        assert np.abs(y - expected).max() <= 1e-4 * scale, f"library={lib}"


# --------------------------------------------------------------------------- bad input


def _one_line_exit_2(code: int, stderr: str, *words: str) -> None:
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0]


def test_cli_prints_the_library_path(capsys):
    from bitmaps.cli import main

    assert main(["ort-library"]) == 0
    assert capsys.readouterr().out.strip() == bitmaps.get_library_path()


def test_library_that_does_not_load_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from bitmaps.cli import main

    bad = tmp_path / "libbitmaps_ort.so"
    bad.write_bytes(b"not a shared library\n" * 200)
    monkeypatch.setenv("BITMAPS_ORT_LIBRARY", str(bad))
    code = main(["ort-library"])
    _one_line_exit_2(code, capsys.readouterr().err, "does not load", "invalid ELF header")
    monkeypatch.setenv("BITMAPS_ORT_LIBRARY", str(tmp_path / "missing.so"))
    code = main(["ort-library"])
    _one_line_exit_2(code, capsys.readouterr().err, "no such file")


@pytest.mark.parametrize("keep", [1000, 0.5])
def test_a_truncated_library_is_refused_before_it_is_mapped(tmp_path, monkeypatch, capsys, keep):
    """dlopen maps a cut-short ELF file and the process died of SIGBUS on first touch (stop 47's
    probe: `ort-library` exit 135, no message); such a file is refused before it is loaded."""
    import bitmaps
    from bitmaps.cli import main
    from bitmaps.core.ort import elf_truncated

    whole = Path(bitmaps.get_library_path()).read_bytes()
    assert not elf_truncated(bitmaps.get_library_path())
    cut = tmp_path / "libbitmaps_ort.so"
    cut.write_bytes(whole[: keep if isinstance(keep, int) else int(len(whole) * keep)])
    assert elf_truncated(str(cut))
    monkeypatch.setenv("BITMAPS_ORT_LIBRARY", str(cut))
    code = main(["ort-library"])
    _one_line_exit_2(code, capsys.readouterr().err, "truncated shared library", "make setup")


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("BITMAPS_CPU_PATH", "bogus", ["unknown CPU path 'bogus'"]),
        ("BITMAPS_ORT_THREADS", "many", ["BITMAPS_ORT_THREADS must be ort, std or serial"]),
    ],
)
def test_library_that_loads_but_cannot_run_here_is_one_line_and_exit_2(
    monkeypatch, capsys, env, value, words
):
    # the library loads (the settings are read at session creation): the command's check runs a
    # BinaryLinear node, so what would fail in every session fails here, once, with its reason
    from bitmaps.cli import main

    monkeypatch.setenv(env, value)
    code = main(["ort-library"])
    _one_line_exit_2(code, capsys.readouterr().err, "cannot run a BinaryLinear node here", *words)
    assert main(["ort-library", "--no-check"]) == 0  # the path alone, as asked


def test_library_needing_a_newer_runtime_is_one_line_and_exit_2(tmp_path):
    # A build that asks for a C API no runtime offers stands for a runtime older than the library.
    out = tmp_path / "libbitmaps_ort_future.so"
    build = subprocess.run(
        [sys.executable, str(ROOT / "csrc" / "onnxruntime" / "build.py"), "--out", str(out),
         "--define", "BITMAPS_ORT_API_VERSION=999"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    # In a child process: whatever the library does, the test process survives it.
    proc = subprocess.run(
        [sys.executable, "-m", "bitmaps", "ort-library"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "BITMAPS_ORT_LIBRARY": str(out)},
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    _one_line_exit_2(
        proc.returncode, proc.stderr, "needs ONNX Runtime C API version 999", ort.__version__
    )


def _set_attribute(model: onnx.ModelProto, name: str, value: object) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return model


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: _set_attribute(m, "act_scale", -0.5), "act_scale must be >= 0"),
        (lambda m: _set_attribute(m, "in_features", 90), "W (packed weight signs) must have shape"),
        (lambda m: _set_attribute(m, "act_unsigned", 2), "act_unsigned must be 0"),
        (lambda m: _set_attribute(m, "plugin_version", "2"), 'plugin_version must be "1"'),
        (lambda m: _set_attribute(m, "out_features", 7), "must have shape [7"),
        (
            lambda m: _set_attribute(m, "out_features", 17),
            "panel layout) must have shape [2, 2, 16]",
        ),
        (
            lambda m: _set_attribute(m, "in_features", 90),
            "panel layout) must have shape [1, 3, 16]",
        ),
        (lambda m: _set_attribute(m, "activation", 2), "activation must be 0 (none) or 1"),
    ],
)
def test_invalid_node_fails_session_creation_naming_the_node(change, message):
    panels = "panel layout" in message
    model, _ = bort.single_node_model(64, 8, 0.0, 0.0, panels=panels)
    with pytest.raises(Exception, match="bitmaps::BinaryLinear node 'binary_linear'") as err:
        bort.kernel_session(change(model))
    assert message in str(err.value)


def test_wrong_input_dtype_fails_session_creation_naming_the_node():
    model, _ = bort.single_node_model(64, 8, 0.0, 0.0, dtype=TensorProto.DOUBLE)
    with pytest.raises(Exception, match="node 'binary_linear': X must be float32 or float16"):
        bort.kernel_session(model)
    model, t = bort.single_node_model(64, 8, 0.0, 0.0)
    w = onnx.numpy_helper.from_array(t["W"].numpy().astype(np.int64), "W")
    model.graph.initializer[0].CopyFrom(w)
    with pytest.raises(Exception, match="node 'binary_linear': W .* must be int32, got int64"):
        bort.kernel_session(model)


def test_feature_counts_beyond_int32_fail_session_creation():
    # stop 48's probe: in_features 2**63 - 1 overflowed ceil(K/32) in the message ("[20, ?]")
    model, _ = bort.single_node_model(64, 8, 0.0, 0.0)
    with pytest.raises(Exception, match=r"in_features must be in \[1, 2\^31 - 1\], got 9223372"):
        bort.kernel_session(_set_attribute(model, "in_features", 2**63 - 1))


def test_panels_laid_out_for_another_in_features_fail_the_run():
    # stop 48's torch-op probe found this in the torch op; the ONNX Runtime op read such panels in
    # place too: panels for K = 40 hold bits 33-39, which a node of in_features 33 counted
    model, t = bort.single_node_model(40, 20, 0.0, 0.0, panels=True)
    model = _set_attribute(model, "in_features", 33)
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 33
    x = {"X": np.random.default_rng(0).standard_normal((3, 33)).astype(np.float32)}
    with pytest.raises(Exception, match=r"node 'binary_linear': W \(panel layout\) holds bits "
                       r"past in_features=33"):  # fmt: skip
        bort.kernel_session(model).run(None, x)

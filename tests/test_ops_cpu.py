"""The compiled CPU kernels of ``xnor_gemm`` and ``binary_linear`` against the references of
bitmaps/core/ops.py, on each CPU path forced in turn, plus dispatch, threading, opcheck and bad input.

Tolerance of ``binary_linear`` (documented here, used below):

- sign bits and the integer dot product are exact on every path, so with a fixed activation scale
  (act_scale > 0) the output equals the reference bit for bit, float32 and float16 alike
  (same float32 operations in the same order: (dot * s) * w_scale + bias, no FMA);
- with act_scale == 0 the per-row scale mean|x - beta| is summed in a different order than torch
  does (the kernel sums in float64 and rounds once), so s may differ in the last float32 bits.
  float32 outputs: |y - ref| <= 4e-6 * (|ref - bias| + |bias|), ~30 ulp, while a single flipped
  sign moves the output by 2/|dot| >= 2/K (>= 6.5e-4 relative at K = 3072): a flip is caught.
  float16 outputs: one float16 rounding step more, <= 2^-10 relative (one half ulp step).
"""

from __future__ import annotations

import pytest
import torch
from conftest import K_VALUES, NEEDS_C, native_calls

from bitmaps.core import ops

needs_c = pytest.mark.skipif(not ops.native_available(), reason=NEEDS_C)


def _packed(rows: int, k: int) -> torch.Tensor:
    return ops.reference_pack_signs(torch.randn(rows, k))


def _layer(n: int, k: int, bias: bool = True):
    w = _packed(n, k)
    w_scale = torch.rand(n) + 0.05
    b = torch.randn(n) if bias else None
    return w, w_scale, b


def _check_binary_linear(x, w, w_scale, b, k, beta, act_scale, act_unsigned=0):
    y = ops.binary_linear(x, w, w_scale, b, k, beta, act_scale, act_unsigned)
    ref = ops.reference_binary_linear(x, w, w_scale, b, k, beta, act_scale, act_unsigned)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], w.shape[0])
    if act_scale > 0:
        assert torch.equal(y, ref), (y - ref).abs().max()
        return
    diff = (y.double() - ref.double()).abs()
    bias = torch.zeros(()) if b is None else b.double()
    scale = (ref.double() - bias).abs() + bias.abs()
    rel = 4e-6 if x.dtype == torch.float32 else 2.0**-10 + 4e-6
    assert torch.all(diff <= rel * scale), (diff / scale).max()


# ------------------------------------------------------------------------------------ xnor_gemm


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("m,n", [(37, 53), (1, 1), (5, 17), (64, 130)])
def test_xnor_gemm_matches_reference_exactly(cpu_path, k, m, n):
    a, b = _packed(m, k), _packed(n, k)
    before = native_calls("xnor_gemm", cpu_path)
    got = ops.xnor_gemm(a, b, k)
    assert native_calls("xnor_gemm", cpu_path) == before + 1, "the native kernel did not run"
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got, ops.reference_xnor_gemm(a, b, k))


@pytest.mark.parametrize("k", (1, 33, 100))
def test_xnor_gemm_ignores_garbage_padding_bits(cpu_path, k):
    a, b = _packed(9, k), _packed(21, k)
    ref = ops.reference_xnor_gemm(a, b, k)
    junk = torch.tensor(-(1 << (k % 32)), dtype=torch.int32)  # every bit past k set
    a[:, -1] |= junk
    b[::2, -1] |= junk
    assert torch.equal(ops.xnor_gemm(a, b, k), ref)


@pytest.mark.parametrize("k", (100, 3072))
def test_xnor_gemm_extremes(cpu_path, k):
    """All-equal and all-opposite rows: every bit of every XOR word set (counter overflow)."""
    a = ops.reference_pack_signs(torch.stack([torch.ones(k), -torch.ones(k)]))
    b = ops.reference_pack_signs(torch.stack([torch.ones(k), -torch.ones(k)] * 9))
    assert ops.xnor_gemm(a, b, k).tolist() == [[k, -k] * 9, [-k, k] * 9]


def test_xnor_gemm_back_to_back_on_the_same_buffers(cpu_path):
    """The same operand tensors changed in place between calls: each call's own product. A path
    may keep what it derived from a block of rows across that call's tiles (the AVX2 path's split
    rows), never into the next call, whose rows sit at the same addresses."""
    k, m, n = 768, 128, 300  # several row blocks and column tiles, on 2 threads
    a, b = _packed(m, k), _packed(n, k)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for _ in range(3):
            assert torch.equal(ops.xnor_gemm(a, b, k), ops.reference_xnor_gemm(a, b, k))
            a.copy_(_packed(m, k))  # new rows, same storage
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("m,n", [(300, 600), (200, 40)])
def test_xnor_gemm_tile_shapes_on_two_threads(cpu_path, m, n):
    """Shapes whose tiles differ by path and rows (cpu_binary_linear.cpp, tile_rows): on 2
    threads the AVX2 path takes 128-row tiles for 300 x 600 (a ragged last block of 44 rows) and
    64-row ones for 200 x 40 (one column tile: two 128-row tiles would be one per worker); every
    tile the reference's product."""
    k = 768
    a, b = _packed(m, k), _packed(n, k)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(ops.xnor_gemm(a, b, k), ops.reference_xnor_gemm(a, b, k))
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------- binary_linear


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_scale", [0.0, 0.37])
def test_binary_linear_matches_reference(cpu_path, k, dtype, act_scale):
    w, w_scale, b = _layer(53, k)
    x = (torch.randn(3, 7, k) * 2).to(dtype)  # batch dims [3, 7], M = 21 (odd), N = 53 (odd)
    before = native_calls("binary_linear", cpu_path)
    _check_binary_linear(x, w, w_scale, b, k, 0.25, act_scale)
    assert native_calls("binary_linear", cpu_path) == before + 1, "the native kernel did not run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_binary_linear_shapes_and_options(cpu_path, dtype):
    w, w_scale, _ = _layer(19, 100, bias=False)
    for x in (torch.randn(100), torch.randn(2, 3, 5, 100), torch.randn(100, 6).t()):
        for beta, act_scale in ((0.0, 0.0), (-0.3, 0.0), (0.1, 1.5)):
            _check_binary_linear(x.to(dtype), w, w_scale, None, 100, beta, act_scale)
    assert ops.binary_linear(torch.randn(0, 100), w, w_scale, None, 100, 0.0, 0.0).shape == (0, 19)


def test_binary_linear_float16_rounding_edges(cpu_path):
    """Outputs that overflow, land on subnormals or sit between float16 values round like torch."""
    k = 768
    x = torch.randn(11, k).half()
    w, _, _ = _layer(40, k, bias=False)
    w_scale = torch.cat([torch.full((10,), 5000.0), torch.full((10,), 1e-7), torch.rand(20) * 3])
    bias = torch.cat([torch.zeros(30), torch.full((10,), 0.5)])
    _check_binary_linear(x, w, w_scale, bias, k, 0.0, 0.731)
    y = ops.binary_linear(x, w, w_scale, bias, k, 0.0, 0.731)
    assert torch.isinf(y[:, :10]).any(), "the overflow case did not overflow"
    assert (y[:, 10:20].abs() < torch.finfo(torch.float16).tiny).any(), "no subnormal outputs"


def test_binary_linear_nan_row_matches_reference(cpu_path):
    w, w_scale, b = _layer(17, 64)
    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    y = ops.binary_linear(x, w, w_scale, b, 64, 0.0, 0.0)
    ref = ops.reference_binary_linear(x, w, w_scale, b, 64, 0.0, 0.0)
    torch.testing.assert_close(y, ref, equal_nan=True)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2]]).any()


# ------------------------------------------------------------------------ threads and dispatch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_multithreaded_equals_single_threaded(cpu_path, dtype):
    k, n = 3072, 200
    a, bw = _packed(133, k), _packed(n, k)
    w_scale, bias = torch.rand(n), torch.randn(n)
    x = torch.randn(133, k).to(dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, max(2, threads)):
            torch.set_num_threads(t)
            results.append(
                (ops.xnor_gemm(a, bw, k), ops.binary_linear(x, bw, w_scale, bias, k, 0.1, 0.0))
            )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@needs_c
def test_ops_run_on_torch_threads():
    """The kernels really spread over torch.get_num_threads() threads (and only those)."""
    from bitmaps import _C

    a, b = _packed(512, 768), _packed(512, 768)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            ops.xnor_gemm(a, b, 768)
            assert _C.last_parallel_workers() == t
    finally:
        torch.set_num_threads(threads)


@needs_c
def test_dispatcher_registers_the_native_cpu_kernel():
    for name in ("pack_signs", "xnor_gemm", "binary_linear"):
        dump = torch._C._dispatch_dump(f"bitmaps::{name}")
        cpu_lines = [line for line in dump.splitlines() if line.startswith("CPU:")]
        assert cpu_lines and "csrc/torch/ops_cpu.cpp" in cpu_lines[0], dump


@needs_c
def test_cpu_path_selection(monkeypatch):
    from bitmaps import _C

    supported = ops.cpu_paths_supported()
    assert supported[-1] == "scalar" and ops.cpu_path() == supported[0]
    monkeypatch.setenv("BITMAPS_CPU_PATH", "scalar")
    assert ops.cpu_path() == "scalar"
    before = native_calls("xnor_gemm", "scalar")
    ops.xnor_gemm(_packed(3, 40), _packed(4, 40), 40)
    assert native_calls("xnor_gemm", "scalar") == before + 1
    with ops.forced_cpu_path("auto"):  # an explicit choice beats the environment
        assert ops.cpu_path() == supported[0]
    monkeypatch.setenv("BITMAPS_CPU_PATH", "sse9")
    with pytest.raises(RuntimeError, match="BITMAPS_CPU_PATH: unknown CPU path 'sse9'"):
        ops.xnor_gemm(_packed(3, 40), _packed(4, 40), 40)
    with pytest.raises(ValueError, match="unknown CPU path 'sse9'"):
        _C.set_cpu_path("sse9")


@needs_c
@pytest.mark.parametrize("path", ["avx512", "avx2"])
def test_forcing_a_path_the_cpu_lacks_is_an_error(path):
    from bitmaps import _C

    if path in ops.cpu_paths_supported():
        pytest.skip(f"needs a CPU without {path} to see the error (this one has it)")
    with pytest.raises(
        RuntimeError, match=f"CPU path '{path}' needs .* which this CPU or this build lacks"
    ):
        _C.set_cpu_path(path)


# --------------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("k", (33, 768))
def test_xnor_gemm_opcheck(k):
    torch.library.opcheck(ops.xnor_gemm, (_packed(7, k), _packed(19, k), k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_binary_linear_opcheck(dtype, bias):
    w, w_scale, b = _layer(21, 100, bias=bias)
    x = torch.randn(2, 3, 100).to(dtype)
    torch.library.opcheck(ops.binary_linear, (x, w, w_scale, b, 100, 0.1, 0.0))
    torch.library.opcheck(ops.binary_linear, (x, w, w_scale, b, 100, 0.0, 0.5))


# ------------------------------------------------------------------------------- bad input


def _cpu_kernel(op, *args):
    """Calls the CPU kernel itself (skipping device dispatch), as a CPU-and-CUDA mix would."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    return op.default.redispatch(keys, *args)


@needs_c
def test_xnor_gemm_rejects_bad_input():
    a, b = _packed(4, 70), _packed(5, 70)
    with pytest.raises(RuntimeError, match="a must be Int, got Float"):
        ops.xnor_gemm(a.float(), b, 70)
    with pytest.raises(RuntimeError, match=r"b must have shape \[N, 3\] .* got \[5, 2\]"):
        ops.xnor_gemm(a, b[:, :2].contiguous(), 70)
    with pytest.raises(
        RuntimeError, match=r"k \(the number of packed bits per row\) must be >= 1, got 0"
    ):
        ops.xnor_gemm(a[:, :0], b[:, :0], 0)
    wide = _packed(3, 70).t().contiguous().t()  # right shape, column-major
    with pytest.raises(RuntimeError, match=r"a must be contiguous \(call .contiguous\(\)"):
        ops.xnor_gemm(wide, b, 70)
    with pytest.raises(RuntimeError, match="all tensors must be on one device"):
        ops.xnor_gemm(a, b.to("meta"), 70)
    with pytest.raises(RuntimeError, match="b must be a CPU tensor .* got device meta"):
        _cpu_kernel(torch.ops.bitmaps.xnor_gemm, a, b.to("meta"), 70)


@needs_c
def test_binary_linear_rejects_bad_input():
    w, w_scale, b = _layer(6, 64)
    x = torch.randn(2, 64)
    cases = [
        ((x.double(), w, w_scale, b, 64), "x must be float32 or float16, got Double"),
        ((x, w.float(), w_scale, b, 64), "w .packed weight signs. must be Int, got Float"),
        ((x, w, w_scale.double(), b, 64), "w_scale must be Float, got Double"),
        ((x, w, w_scale, b.half(), 64), "bias must be Float, got Half"),
        ((x[:, :60], w, w_scale, b, 64), r"x.shape\[-1\] must equal in_features=64"),
        ((x, w[:, :1].contiguous(), w_scale, b, 64), r"w must have shape \[out_features, 2\]"),
        ((x, w, w_scale[:5], b, 64), r"w_scale must have shape \[out_features\] = \[6\]"),
        ((x, w, w_scale, b[:4], 64), r"bias must have shape \[out_features\] = \[6\]"),
        ((x, w, torch.rand(12)[::2], b, 64), "w_scale must be contiguous"),
        ((x, w.to("meta"), w_scale, b, 64), "all tensors must be on one device"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.binary_linear(*args, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="w_scale must be a CPU tensor .* got device meta"):
        _cpu_kernel(torch.ops.bitmaps.binary_linear, x, w, w_scale.to("meta"), b, 64, 0.0, 0.0)


# ------------------------------------------- unsigned activations ({0, 1}) and prepacked weights

K_ISSUE = (1, 31, 33, 768, 3072)


@pytest.mark.parametrize("k", K_ISSUE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_scale", [0.0, 0.37])
def test_binary_linear_unsigned_matches_reference(cpu_path, k, dtype, act_scale):
    w, w_scale, b = _layer(45, k)
    x = torch.randn(3, 11, k).to(dtype)
    before = native_calls("binary_linear", cpu_path)
    _check_binary_linear(x, w, w_scale, b, k, 0.1, act_scale, act_unsigned=1)
    assert native_calls("binary_linear", cpu_path) == before + 1
    # all-zero and all-positive rows: popcount 0 and popcount K
    edge = torch.stack([torch.full((k,), -1.0), torch.full((k,), 2.0)]).to(dtype)
    _check_binary_linear(edge, w, w_scale, b, k, 0.0, act_scale, act_unsigned=1)


@pytest.mark.parametrize("k", K_ISSUE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_prepacked_equals_binary_linear(cpu_path, k, dtype, act_unsigned):
    w, w_scale, b = _layer(53, k)
    w_garbage = w.clone()
    if k % 32:  # padding bits set in w: the prepacked layout clears them
        w_garbage[:, -1] |= ~((1 << (k % 32)) - 1)
    panels = ops.prepack_weights(w_garbage, k)
    assert torch.equal(panels, ops.reference_prepack_weights(w, k))
    assert panels.shape == (4, (k + 31) // 32, ops.PANEL_ROWS)
    x = torch.randn(2, 9, k).to(dtype)
    for scale in (0.0, 0.5):
        y = ops.binary_linear_prepacked(x, panels, w_scale, b, k, 0.2, scale, act_unsigned)
        assert torch.equal(y, ops.binary_linear(x, w, w_scale, b, k, 0.2, scale, act_unsigned))
    ref = ops.reference_binary_linear_prepacked(x, panels, w_scale, None, k, 0.2, 0.0, act_unsigned)
    y = ops.binary_linear_prepacked(x, panels, w_scale, None, k, 0.2, 0.0, act_unsigned)
    assert (y.double() - ref.double()).abs().max() <= 2e-3 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unsigned_and_prepacked_opcheck(dtype):
    w, w_scale, b = _layer(20, 100)
    x = torch.randn(3, 100).to(dtype)
    torch.library.opcheck(ops.binary_linear, (x, w, w_scale, b, 100, 0.1, 0.0, 1))
    torch.library.opcheck(ops.prepack_weights, (w, 100))
    panels = ops.prepack_weights(w, 100)
    for act_unsigned in (0, 1):
        args = (x, panels, w_scale, b, 100, 0.1, 0.0, act_unsigned)
        torch.library.opcheck(ops.binary_linear_prepacked, args)
    torch.library.opcheck(ops.binary_linear_prepacked, (x, panels, w_scale, None, 100, 0.0, 0.5))


@needs_c
def test_unsigned_and_prepacked_reject_bad_input():
    w, w_scale, b = _layer(6, 64)
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="act_unsigned must be 0 .* or 1 .*, got 2"):
        ops.binary_linear(x, w, w_scale, b, 64, 0.0, 0.0, 2)
    panels = ops.prepack_weights(w, 64)
    with pytest.raises(RuntimeError, match=r"panels must have shape \[1, 3, 16\]"):
        ops.binary_linear_prepacked(torch.randn(2, 70), panels, w_scale, b, 70, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="panels .prepacked weights. must be Int"):
        ops.binary_linear_prepacked(x, panels.float(), w_scale, b, 64, 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"w must have shape \[out_features, 3\]"):
        ops.prepack_weights(w, 70)
    with pytest.raises(RuntimeError, match="act_unsigned must be 0 .* or 1 .*, got -1"):
        ops.binary_linear_prepacked(x, panels, w_scale, b, 64, 0.0, 0.0, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_prepacked_gelu_epilogue(cpu_path, dtype, act_unsigned):
    # activation = 1: the kernel's epilogue GELU against torch's erf GELU of the same output
    # (AVX-512: within 3e-7 max(1, |y|) of the scalar GELU, which is within 2.3e-7 of erf's;
    # float16: one rounding of the result more)
    k = 200
    w, w_scale, b = _layer(53, k)
    panels = ops.prepack_weights(w, k)
    x = torch.randn(3, 17, k).to(dtype)
    for scale in (0.0, 0.5):
        plain = ops.binary_linear_prepacked(x, panels, w_scale, b, k, 0.1, scale, act_unsigned)
        y = ops.binary_linear_prepacked(x, panels, w_scale, b, k, 0.1, scale, act_unsigned, 1)
        want = torch.nn.functional.gelu(plain.double())
        tol = 6e-7 if dtype == torch.float32 else 2.0**-10
        assert y.dtype == dtype and y.shape == plain.shape
        assert torch.all((y.double() - want).abs() <= tol * plain.double().abs().clamp(min=1.0))
    ref = ops.reference_binary_linear_prepacked(x, panels, w_scale, b, k, 0.1, 0.5, act_unsigned, 1)
    assert torch.allclose(ref.double(), want, rtol=0, atol=2e-3 * max(1.0, want.abs().max().item()))


def test_prepacked_gelu_opcheck_and_bad_activation():
    w, w_scale, b = _layer(20, 100)
    panels = ops.prepack_weights(w, 100)
    x = torch.randn(3, 100)
    torch.library.opcheck(ops.binary_linear_prepacked, (x, panels, w_scale, b, 100, 0.1, 0.0, 0, 1))
    impls = [ops.reference_binary_linear_prepacked]
    if ops.native_available():
        impls.append(ops.binary_linear_prepacked)
    for impl in impls:
        with pytest.raises(RuntimeError, match=r"activation must be 0 \(none\) or 1 .*, got 2"):
            impl(x, panels, w_scale, b, 100, 0.0, 0.0, 0, 2)
    with pytest.raises(RuntimeError, match="activation must be 0"):
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = [mode.from_tensor(t) for t in (x, panels, w_scale, b)]
            ops.binary_linear_prepacked(*fake[:3], fake[3], 100, 0.0, 0.0, 0, 2)


# ----------------------------------------------------------------------------- packed_attention


def _qkv_and_biases(batch: int, seq: int, heads: int, dim: int):
    qkv = torch.randn(batch, seq, 3 * heads * dim)
    keep = torch.rand(batch, 1, 1, seq) > 0.3
    keep[..., 0] = True  # every row attends somewhere
    padding = torch.zeros(batch, 1, 1, seq).masked_fill_(~keep, torch.finfo(torch.float32).min)
    return qkv, [None, padding, torch.randn(batch, 1, seq, seq), torch.randn(1, heads, seq, seq),
                 torch.randn(batch, heads, seq, seq)]  # fmt: skip


@needs_c
@pytest.mark.parametrize("batch,seq,heads,dim", [(2, 7, 2, 16), (1, 128, 12, 64), (3, 33, 4, 8)])
def test_packed_attention_matches_reference(cpu_path, batch, seq, heads, dim):
    # the native kernel on the forced path (cpu_attention.h: AVX-512, else portable code)
    assert "packed_attention" in str(torch.ops.bitmaps.packed_attention.default._schema)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::packed_attention", "CPU")
    qkv, biases = _qkv_and_biases(batch, seq, heads, dim)
    for bias in biases:
        y = ops.packed_attention(qkv, bias, heads, dim**-0.5)
        ref = ops.reference_packed_attention(qkv, bias, heads, dim**-0.5)
        assert y.dtype == torch.float32 and y.shape == (batch, seq, heads * dim)
        # float32 both, sums in different orders (outputs are averages of N(0, 1) values)
        assert (y - ref).abs().max() <= 2e-5, (y - ref).abs().max()


def test_packed_attention_reference_is_torch_attention():
    qkv, biases = _qkv_and_biases(2, 9, 3, 8)
    q, k, v = (t.reshape(2, 9, 3, 8).transpose(1, 2) for t in qkv.split(24, -1))
    for bias in biases:
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
        got = ops.reference_packed_attention(qkv, bias, 3, 0.3)
        torch.testing.assert_close(got, want.transpose(1, 2).reshape(2, 9, 24))


def test_packed_attention_opcheck_and_bad_input():
    qkv, biases = _qkv_and_biases(2, 5, 2, 4)
    torch.library.opcheck(ops.packed_attention, (qkv, biases[1], 2, 0.5))
    torch.library.opcheck(ops.packed_attention, (qkv, None, 2, 0.5))
    impls = [ops.reference_packed_attention]
    if ops.native_available():
        impls.append(ops.packed_attention)
    for impl in impls:
        with pytest.raises(RuntimeError, match="qkv must be Float"):
            impl(qkv.double(), None, 2, 0.5)
        with pytest.raises(RuntimeError, match=r"num_heads must be in \[1, 2\^31 - 1\], got 0"):
            impl(qkv, None, 0, 0.5)
        # stop 48's probe: 3 * num_heads wrapped to 2 in int64 and the shape check passed
        with pytest.raises(RuntimeError, match="num_heads must be in"):
            impl(qkv, None, 6148914691236517206, 0.5)
        with pytest.raises(RuntimeError, match=r"qkv must have shape \[batch, seq, 3 \* num_heads"):
            impl(qkv, None, 5, 0.5)
        with pytest.raises(RuntimeError, match=r"bias must .*\[2, 2, 5, 5\], got"):
            impl(qkv, torch.zeros(2, 1, 1, 4), 2, 0.5)
        with pytest.raises(RuntimeError, match="scale must be finite"):
            impl(qkv, None, 2, float("nan"))


# ------------------------------------------------------------------------------ skip_layer_norm


@needs_c
@pytest.mark.parametrize("shape", [(2, 5, 768), (3, 100), (1, 1), (4, 33)])
def test_skip_layer_norm_matches_reference(cpu_path, shape):
    x, skip = torch.randn(shape) * 3, torch.randn(shape)
    gamma, beta = torch.rand(shape[-1]) + 0.5, torch.randn(shape[-1])
    for b in (beta, None):
        y = ops.skip_layer_norm(x, skip, gamma, b, 1e-12)
        ref = ops.reference_skip_layer_norm(x.double().float(), skip, gamma, b, 1e-12)
        assert y.shape == x.shape and y.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)
    # non-contiguous inputs are read as their values
    xt = torch.randn(shape[-1], 6).t()
    st = torch.randn(6, shape[-1])
    torch.testing.assert_close(ops.skip_layer_norm(xt, st, gamma, beta, 1e-5),
                               ops.reference_skip_layer_norm(xt, st, gamma, beta, 1e-5),
                               rtol=1e-5, atol=2e-5)  # fmt: skip


def test_skip_layer_norm_opcheck_and_bad_input():
    x, skip, gamma, beta = torch.randn(3, 8), torch.randn(3, 8), torch.rand(8), torch.randn(8)
    torch.library.opcheck(ops.skip_layer_norm, (x, skip, gamma, beta, 1e-5))
    torch.library.opcheck(ops.skip_layer_norm, (x, skip, gamma, None, 1e-5))
    impls = [ops.reference_skip_layer_norm]
    if ops.native_available():
        impls.append(ops.skip_layer_norm)
    for impl in impls:
        with pytest.raises(RuntimeError, match="skip must be Float"):
            impl(x, skip.double(), gamma, beta, 1e-5)
        with pytest.raises(RuntimeError, match=r"skip must have the shape of x \[3, 8\]"):
            impl(x, torch.randn(3, 7), gamma, beta, 1e-5)
        with pytest.raises(RuntimeError, match=r"gamma must have shape \[8\]"):
            impl(x, skip, torch.rand(7), beta, 1e-5)
        with pytest.raises(RuntimeError, match=r"beta must have shape \[8\]"):
            impl(x, skip, gamma, torch.rand(9), 1e-5)
        with pytest.raises(RuntimeError, match="epsilon must be finite and >= 0"):
            impl(x, skip, gamma, beta, -1.0)


# ------------------------------------------------ the FFN's two layers in one call (fixed scales)


def _ffn_args(k: int, h: int, n: int, act_unsigned: int, next_unsigned: int, beta: float):
    """Arguments of binary_ffn_prepacked (without the table): the first layer's outputs spread
    over GELU's shape, tail included."""
    g = torch.Generator().manual_seed(k * 31 + h)
    w1, w2 = _packed(h, k), _packed(n, h)
    ws1 = (torch.rand(h, generator=g) * 2 - 1) * 6.0 / (0.37 * k**0.5)
    b1 = torch.rand(h, generator=g) * 2 - 1
    ws2, b2 = torch.rand(n, generator=g) * 0.05 + 0.01, torch.randn(n, generator=g)
    first = (ops.prepack_weights(w1, k), ws1, b1, k, -0.2, 0.37, act_unsigned, 1)
    second = (ops.prepack_weights(w2, h), ws2, b2, beta, 0.61, next_unsigned)
    return first, second


@pytest.mark.parametrize("k,h,n", [(33, 100, 17), (768, 3072, 40)])
@pytest.mark.parametrize(
    "act_unsigned,next_unsigned,beta", [(0, 0, 0.0), (1, 0, 0.3), (0, 1, -0.1)]
)
def test_binary_ffn_matches_reference(cpu_path, k, h, n, act_unsigned, next_unsigned, beta):
    # the table: exactly the reference's; the two layers through it: the reference bit for bit
    first, second = _ffn_args(k, h, n, act_unsigned, next_unsigned, beta)
    _, ws1, b1, _, _, scale, unsigned, activation = first
    table_args = (ws1, b1, k, scale, unsigned, activation, beta, next_unsigned)
    table = ops.ffn_bit_table(*table_args)
    assert torch.equal(table, ops.reference_ffn_bit_table(*table_args))
    x = torch.randn(3, 11, k)
    y = ops.binary_ffn_prepacked(x, *first, table, *second)
    ref = ops.reference_binary_ffn_prepacked(x, *first, table, *second)
    assert y.shape == (3, 11, n) and torch.equal(y, ref), (y - ref).abs().max()


def test_binary_ffn_opcheck_and_bad_input():
    first, second = _ffn_args(100, 64, 9, 0, 0, 0.1)
    _, ws1, b1, k, _, scale, unsigned, activation = first
    table = ops.ffn_bit_table(ws1, b1, k, scale, unsigned, activation, 0.1, 0)
    x = torch.randn(2, 5, 100)
    torch.library.opcheck(ops.binary_ffn_prepacked, (x, *first, table, *second))
    impls = [(ops.reference_ffn_bit_table, ops.reference_binary_ffn_prepacked)]
    if ops.native_available():
        impls.append((ops.ffn_bit_table, ops.binary_ffn_prepacked))
    for make_table, ffn in impls:
        with pytest.raises(RuntimeError, match="act_scale must be > 0"):
            make_table(ws1, b1, k, 0.0, unsigned, activation, 0.1, 0)
        # stop 48's probe: 2^31 ran for minutes, 2^62 gave an empty table (no error)
        for huge in (2**31, 2**62):
            with pytest.raises(RuntimeError, match=r"in_features must be in \[1, 1048576\]"):
                make_table(ws1, b1, huge, scale, unsigned, activation, 0.1, 0)
        with pytest.raises(RuntimeError, match=r"table must .*shape \[2, runs <= 2, 64\]"):
            ffn(x, *first, table[:, :, :10], *second)
        with pytest.raises(RuntimeError, match="act_scale and next_act_scale must be > 0"):
            ffn(x, *first, table, *second[:4], 0.0, 0)
        with pytest.raises(RuntimeError, match="x must be Float"):
            ffn(x.half(), *first, table, *second)
    if ops.native_available():  # the second layer's arguments named as given (stop 48's probe)
        ffn = ops.binary_ffn_prepacked
        bad = {"next_act_unsigned must be 0": (*second[:5], 2),
               "next_w_scale must be Float": (second[0], second[1].double(), *second[2:]),
               "next_bias must be Float": (*second[:2], second[2].double(), *second[3:]),
               "next_panels must have shape": (first[0], *second[1:])}  # fmt: skip
        for message, args in bad.items():
            with pytest.raises(RuntimeError, match=message):
                ffn(x, *first, table, *args)
        with pytest.raises(RuntimeError, match="in_features must be >= 1, got -1"):
            ffn(x, *first[:3], -1, *first[4:], table, *second)


@needs_c
def test_panels_prepacked_for_another_in_features_are_refused():
    # stop 48's probe: panels for K = 40 (2 words a row) passed the shape check at K = 33 and the
    # GEMM counted their bits 33-39
    w = ops.pack_signs(torch.randn(20, 40))
    panels = ops.prepack_weights(w, 40)
    args = (torch.randn(3, 33), panels, torch.rand(20) + 0.5, None, 33, 0.0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="panels hold bits past in_features=33"):
        ops.binary_linear_prepacked(*args)
    good = ops.prepack_weights(ops.pack_signs(torch.randn(20, 33)), 33)
    ops.binary_linear_prepacked(args[0], good, *args[2:])  # its own panels pass


def test_the_feed_forward_fake_kernel_checks_the_second_layers_panels():
    # stop 48's probe: on "meta" the first layer's panels passed as next_panels traced fine; the
    # CPU kernel refuses them
    first, second = _ffn_args(100, 64, 9, 0, 0, 0.1)
    table = ops.reference_ffn_bit_table(*first[1:3], 100, *first[5:8], 0.1, 0)
    meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t  # noqa: E731
    x = torch.randn(2, 5, 100, device="meta")
    wrong = (first[0], *second[1:])  # the first layer's panels as the second's
    with pytest.raises(RuntimeError, match="next_panels must be int32 of shape"):
        ops.binary_ffn_prepacked(x, *map(meta, first), meta(table), *map(meta, wrong))
    out = ops.binary_ffn_prepacked(x, *map(meta, first), meta(table), *map(meta, second))
    assert out.shape == (2, 5, 9)


def test_reference_kernels_take_empty_inputs_as_the_cpu_kernels_do():
    # stop 48's probe: the references (what devices without a native kernel run) raised PyTorch's
    # "cannot reshape tensor of 0 elements" where the CPU kernels return empty results
    x = torch.randn(3, 40)
    assert ops.reference_binary_linear(x, torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0),
                                       None, 40, 0.0, 0.0).shape == (3, 0)  # fmt: skip
    no_panels = torch.zeros(0, 2, 16, dtype=torch.int32)
    assert ops.reference_binary_linear_prepacked(x, no_panels, torch.zeros(0), None, 40, 0.0,
                                                 0.0).shape == (3, 0)  # fmt: skip
    for shape, out in (((0, 5, 24), (0, 5, 8)), ((2, 0, 24), (2, 0, 8)), ((2, 5, 0), (2, 5, 0))):
        assert ops.reference_packed_attention(torch.randn(*shape), None, 2, 0.5).shape == out
    table = torch.zeros(4, 4, dtype=torch.uint8)
    scale = torch.ones(4, 1)
    ids = [torch.zeros(2, 0, dtype=torch.long)] * 2
    out = ops.reference_embed_layer_norm(ids, [table] * 2, [scale] * 2, torch.ones(8), None, 1e-5)
    assert out.shape == (2, 0, 8)


@pytest.mark.parametrize(
    "beta,unsigned", [(0.0, 0), (0.0, 1), (1e-30, 0), (-1e-30, 0), (0.05, 0), (-0.1, 1)]
)
def test_ffn_bits_are_float32_gelus_also_where_it_is_zero(beta, unsigned):
    """The model is trained and exported with float32 GELU, which is 0 where 1 + erf(y/√2)
    rounds to 0 (y below about -5.56). The table took GELU's true sign there, so with β = 0
    every such unit flipped (binary MiniLM-L6 in ONNX Runtime: outputs off by 1.2 of 2.2)."""
    import torch.nn.functional as F

    y = torch.cat([torch.linspace(-60, -5.7, 700), torch.linspace(-5.3, 6, 700)])
    bits, margin = ops.ffn_bits(y, 1, beta, unsigned)
    g = F.gelu(y)  # float32, as torch computes it
    b = torch.tensor(beta, dtype=torch.float32)
    want = g - b > 0 if unsigned else g - b < 0
    clear = margin.abs() > 1e-6 * max(1.0, abs(beta))  # away from β by more than a rounding
    clear |= y < -5.7  # the tail: exactly 0 on both sides, decided by β alone
    assert clear.sum() > 1000
    assert torch.equal(bits[clear], want[clear])
    table = ops.reference_ffn_bit_table(
        torch.full((4,), 0.01), torch.tensor([-8.0, -6.0, 0.0, 3.0]), 700, 1.0, 0, 1, beta,
        unsigned,
    )  # fmt: skip
    if ops.native_available():
        assert torch.equal(
            ops.ffn_bit_table(torch.full((4,), 0.01), torch.tensor([-8.0, -6.0, 0.0, 3.0]), 700,
                              1.0, 0, 1, beta, unsigned),
            table,
        )  # fmt: skip


def test_the_epilogue_gelu_is_zero_where_float32_gelu_is(cpu_path):
    """torch's float32 GELU is 0 below y ≈ −5.543 (1 + erf rounds to 0) and negative above; the
    epilogue's rational erf reached −1 sooner (y ≈ −5.4), so a next layer binarizing at 0 took
    the other sign for pre-activations in between (the two-node FFN, STE students)."""
    import torch.nn.functional as F

    if not ops.native_available():
        pytest.skip("needs bitmaps._C (the native kernels)")
    y = torch.cat([torch.linspace(-12.0, -5.545, 300), torch.linspace(-5.541, -4.0, 300)])
    k, n = 32, 16
    x = torch.ones(1, k)
    panels = ops.prepack_weights(torch.zeros(n, 1, dtype=torch.int32), k)
    ws = torch.full((n,), 1e-30)  # y = bias: the dot product's term vanishes
    got = torch.cat([
        ops.binary_linear_prepacked(x, panels, ws, v.repeat(n), k, 0.0, 0.0, 0, 1)[0, :1]
        for v in y
    ])  # fmt: skip
    want = F.gelu(y)
    assert torch.equal(got == 0, want == 0), y[(got == 0) != (want == 0)]
    assert torch.all(got[want < 0] < 0)

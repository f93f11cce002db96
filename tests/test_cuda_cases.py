"""The awkward cases of the CUDA kernels, each GEMM path forced (run by `make gpu-check`):

- K whose last 16-word stage holds a partly filled second k256 step (KW % 16 in 9..15), and K
  around the k256 and stage boundaries;
- the tile tails of every kernel variant: popc 16 x 16, mma.sync 64 x 64 and 128 x 128 (the
  launcher picks 128 x 128 once those tiles alone fill the GPU), wgmma 128 x 128;
- bias None and 3-D input; a non-default stream; the first call inside CUDA-graph capture, then
  replays; outputs of more than 2^31 elements (int64 indexing);
- every available path bit-identical to every other on one large GEMM;
- the mma path's two-at-a-time epilogue (the default) bit-identical to the one-at-a-time form
  (BITMAPS_CUDA_EPILOGUE=single);
- the 16-byte-load pack (the default) bit-identical to the per-word form (BITMAPS_CUDA_PACK=word).

Integer results match the reference exactly; binary_linear with a fixed act_scale too (see
test_cuda_ops.py for the tolerance with the per-row mean scale).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CUDA_GEMM_PATHS, NEEDS_CUDA_KERNELS, cuda_path_supported, packed_cuda

from bitmaps.core import ops

ROOT = Path(__file__).resolve().parents[1]


pytestmark = NEEDS_CUDA_KERNELS

PATHS = CUDA_GEMM_PATHS


def _exact(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, what
    bad = got != want
    if bool(bad.any()):
        first = torch.nonzero(bad)[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} of {want.numel()} differ, first at {first}")


# K -> KW: 255/256 -> 8 (one k256 step), 257 -> 9, 300 -> 10, 400 -> 13, 480 -> 15 (second step
# partly filled), 511/512 -> 16 (a full stage), 513 -> 17 (one word into the next stage),
# 4100 -> 129.
ODD_K = [255, 256, 257, 300, 400, 480, 511, 512, 513, 4100]


@pytest.mark.parametrize("k", ODD_K)
def test_xnor_gemm_k256_steps_and_stages(gemm_path, k):
    for m, n in [(1, 1), (63, 65), (129, 8), (257, 136)]:
        a, b = packed_cuda(m, k), packed_cuda(n, k)
        _exact(ops.xnor_gemm(a, b, k), ops.reference_xnor_gemm(a, b, k), f"M={m} N={n} K={k}")


def _tail_shapes() -> list[tuple[int, int]]:
    """(M, N) with tails for every tile variant, small and GPU-filling (>= one tile per SM)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    side = 128 * (int(sms**0.5) + 1)  # (side / 128)^2 >= SMs: mma picks its 128 x 128 tiles
    return [(17, 15), (65, 63), (129, 127), (side + 5, side + 77), (side + 127, 300)]


def test_tile_tails_of_every_variant(gemm_path):
    for m, n in _tail_shapes():
        for k in (33, 1000):
            a, b = packed_cuda(m, k), packed_cuda(n, k)
            _exact(ops.xnor_gemm(a, b, k), ops.reference_xnor_gemm(a, b, k), f"{m}x{n}x{k}")


@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_binary_linear_bias_none_and_3d_input(gemm_path, act_unsigned):
    for k, n in [(300, 77), (480, 129), (33, 8), (768, 3072)]:
        w = packed_cuda(n, k)
        w_scale = torch.rand(n, device="cuda") + 0.1
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(2, 65, k, device="cuda").to(dtype)
            for bias in (torch.randn(n, device="cuda"), None):
                got = ops.binary_linear(x, w, w_scale, bias, k, 0.05, 0.37, act_unsigned)
                want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.05, 0.37, act_unsigned)
                _exact(got, want, f"x {tuple(x.shape)} {dtype} N={n} bias={bias is not None}")


def _mma_cases(ks: tuple[int, ...], act_unsigned: int):  # noqa: ANN202 - a generator
    """The mma path's shapes for comparing two forms of it: (M, N, K, a, w, linears), where
    linears are (binary_linear args, what) for both float outputs, bias or none; M and N with the
    tails of both tile variants."""
    for m, n in [(17, 16), (65, 63), *_tail_shapes()]:
        for k in ks:
            a, w = packed_cuda(m, k), packed_cuda(n, k)
            w_scale, bias = torch.rand(n, device="cuda") + 0.1, torch.randn(n, device="cuda")
            x = torch.randn(m, k, device="cuda")
            linears = [
                ((x.to(dtype), w, w_scale, b, k, 0.05, 0.37, act_unsigned),
                 f"{m}x{n}x{k} {dtype} bias={b is not None}")
                for dtype in (torch.float32, torch.float16)
                for b in (bias, None)
            ]  # fmt: skip
            yield m, n, k, a, w, linears


@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_pair_epilogue_gives_the_same_bits(monkeypatch, act_unsigned):
    """The pair epilogue (mma path: two outputs per store, the default) against the one-at-a-time
    form (BITMAPS_CUDA_EPILOGUE=single) and the reference: even N (2-wide stores), odd N (the
    element-wise fallback), row and column tails of both tile variants, both float outputs, bias
    or none, and xnor_gemm's int32."""
    if not cuda_path_supported("mma"):
        pytest.skip(
            f"the pair epilogue is the mma path's (sm_{torch.cuda.get_device_capability()})"
        )
    monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", "mma")
    for m, n, k, a, w, linears in _mma_cases((33, 768), act_unsigned):
        for args, what in linears:
            monkeypatch.setenv("BITMAPS_CUDA_EPILOGUE", "single")
            single = ops.binary_linear(*args)
            monkeypatch.delenv("BITMAPS_CUDA_EPILOGUE", raising=False)
            _exact(ops.binary_linear(*args), single, f"pair vs single, {what}")
            if m <= 129:
                _exact(single, ops.reference_binary_linear(*args), f"reference, {what}")
        monkeypatch.delenv("BITMAPS_CUDA_EPILOGUE", raising=False)
        _exact(ops.xnor_gemm(a, w, k), ops.reference_xnor_gemm(a, w, k), f"int32 {m}x{n}x{k}")


@pytest.mark.parametrize(
    "knob", ["BITMAPS_CUDA_COPY=wide", "BITMAPS_CUDA_FRAGMENTS=ldmatrix", "both"]
)
@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_mma_feed_candidates_give_the_same_bits(monkeypatch, knob, act_unsigned):
    """The mma path's opt-in candidates (16-byte cp.async copies; ldmatrix fragment loads) against
    the default feed: K whose words are a multiple of 4 (the wide copies) and not (their 4-byte
    fallback), a misaligned operand (a view one word in: the fallback too), row and column tails
    of both tile variants, both float outputs, bias or none, and xnor_gemm's int32."""
    if not cuda_path_supported("mma"):
        pytest.skip(f"the candidates are the mma path's (sm_{torch.cuda.get_device_capability()})")
    knobs = (
        ["BITMAPS_CUDA_COPY=wide", "BITMAPS_CUDA_FRAGMENTS=ldmatrix"] if knob == "both" else [knob]
    )

    def run(fn, *args):  # noqa: ANN001, ANN202 - the default feed, then the candidates'
        for setting in knobs:
            monkeypatch.delenv(setting.split("=")[0], raising=False)
        base = fn(*args)
        for setting in knobs:
            monkeypatch.setenv(*setting.split("="))
        return base, fn(*args)

    monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", "mma")
    for m, n, k, a, w, linears in _mma_cases((33, 512, 768, 3072 + 32), act_unsigned):
        for args, what in linears:
            base, got = run(ops.binary_linear, *args)
            _exact(got, base, f"{knob} {what}")
        base, got = run(ops.xnor_gemm, a, w, k)
        _exact(got, base, f"{knob} int32 {m}x{n}x{k}")
        _exact(got, ops.reference_xnor_gemm(a, w, k), f"{knob} reference int32 {m}x{n}x{k}")
    # an operand whose rows start 4 bytes past a 16-byte boundary: the launcher keeps 4-byte copies
    k = 512
    words = packed_cuda(1, 33 * k + 32).flatten()[1 : 1 + 33 * (k // 32)].view(33, k // 32)
    w = packed_cuda(40, k)
    base, got = run(ops.xnor_gemm, words, w, k)
    _exact(got, base, f"{knob} misaligned a")
    _exact(got, ops.reference_xnor_gemm(words, w, k), f"{knob} reference, misaligned a")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_vector_pack_gives_the_same_bits(monkeypatch, dtype):
    """The vector pack (16-byte loads, the default) against the per-word form
    (BITMAPS_CUDA_PACK=word) and the reference: K that the vector form takes (a multiple of
    16 / element size) and K that falls back, rows that start misaligned (a view one element in)
    and, through binary_linear, {0, 1} activations and the row scales (exact with a fixed
    act_scale; with the mean |x|, to one unit in the last place of the output dtype)."""
    for k in (1, 8, 31, 32, 33, 256, 264, 768, 1000, 3072):
        base = torch.randn(70, k + 1, device="cuda", dtype=dtype)
        for x in (base[:, :k].contiguous(), base.flatten()[1 : 1 + 70 * k].view(70, k)):
            monkeypatch.setenv("BITMAPS_CUDA_PACK", "word")
            single = ops.pack_signs(x)
            monkeypatch.delenv("BITMAPS_CUDA_PACK", raising=False)
            _exact(ops.pack_signs(x), single, f"pack K={k} {dtype}")
            _exact(single, ops.reference_pack_signs(x), f"reference K={k} {dtype}")
    if dtype not in (torch.float32, torch.float16):
        return  # binary_linear takes float32 and float16
    for k, n in ((768, 96), (264, 40), (100, 8)):
        x = torch.randn(3, 41, k, device="cuda").to(dtype)
        w, w_scale = packed_cuda(n, k), torch.rand(n, device="cuda") + 0.1
        for act_unsigned in (0, 1):
            for act_scale in (0.37, 0.0):
                args = (x, w, w_scale, None, k, 0.05, act_scale, act_unsigned)
                monkeypatch.setenv("BITMAPS_CUDA_PACK", "word")
                single = ops.binary_linear(*args)
                monkeypatch.delenv("BITMAPS_CUDA_PACK", raising=False)
                got = ops.binary_linear(*args)
                what = f"binary_linear K={k} unsigned={act_unsigned} act_scale={act_scale}"
                if act_scale > 0:
                    _exact(got, single, what)
                else:  # the row scale (mean |x|) sums in another order: its last float bit may
                    # differ, and so may the output's last bit after rounding to its dtype
                    ulp = max(torch.finfo(dtype).eps, 1e-5)
                    torch.testing.assert_close(
                        got, single, rtol=ulp, atol=ulp, msg=lambda m, w=what: f"{w}: {m}"
                    )


def test_every_path_gives_the_same_bits(monkeypatch):
    m, n, k = 4096, 3072, 3072
    a, b = packed_cuda(m, k), packed_cuda(n, k)
    outs = {}
    for path in [p for p in PATHS if cuda_path_supported(p)]:
        monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", path)
        outs[path] = ops.xnor_gemm(a, b, k)
    first = next(iter(outs))
    for path, out in outs.items():
        _exact(out, outs[first], f"{path} vs {first}")
    rows = torch.randint(0, m, (64,), device="cuda")
    _exact(outs[first][rows], ops.reference_xnor_gemm(a[rows], b, k), "64 rows vs reference")


def test_non_default_stream():
    k, n = 768, 3072
    x = torch.randn(4096, k, device="cuda", dtype=torch.float16)
    w, w_scale, bias = (
        packed_cuda(n, k),
        torch.rand(n, device="cuda") + 0.1,
        torch.randn(n, device="cuda"),
    )
    want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.0, 0.5)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        busy = torch.randn(4096, 4096, device="cuda")
        for _ in range(4):
            busy = (busy @ busy) * 1e-4  # queued work that x2 waits for on this stream only
        x2 = x + busy[0, 0].half() * 0
        got = ops.binary_linear(x2, w, w_scale, bias, k, 0.0, 0.5)
    side.synchronize()
    _exact(got, want, "binary_linear on a side stream")


# Run in a fresh process, so that the op's first call (which looks up the device's GEMM paths) is
# the one inside the capture.
_CAPTURE_SCRIPT = textwrap.dedent(
    """
    import torch
    from bitmaps.core import ops

    k, n = 768, 3072
    x = torch.randn(256, k, device="cuda", dtype=torch.float16)
    w = ops.reference_pack_signs(torch.randn(n, k, device="cuda"))
    w_scale, bias = torch.rand(n, device="cuda") + 0.1, torch.randn(n, device="cuda")
    for act_unsigned in (0, 1):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the very first bitmaps call of this process
            y = ops.binary_linear(x, w, w_scale, bias, k, 0.0, 0.5, act_unsigned)
        for _ in range(2):
            x.copy_(torch.randn_like(x))
            graph.replay()
            torch.cuda.synchronize()
            want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.0, 0.5, act_unsigned)
            assert torch.equal(y, want), float((y.float() - want.float()).abs().max())
    print("graph ok")
    """
)


def test_first_call_inside_cuda_graph_capture_then_replay():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CAPTURE_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and "graph ok" in proc.stdout, proc.stderr[-3000:]


def test_outputs_over_2_31_elements(gemm_path):
    m, n, k = 70000, 32000, 64  # 2.24e9 outputs: row * N + col needs 64 bits
    free, _total = torch.cuda.mem_get_info()
    need = m * n * 4 + m * n * 2 + (1 << 30)
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory (free: {free / 2**30:.0f})")
    a, b = packed_cuda(m, k), packed_cuda(n, k)
    rows = torch.tensor([0, 1, 33333, m // 2, m - 2, m - 1], device="cuda")
    out = ops.xnor_gemm(a, b, k)
    _exact(out[rows], ops.reference_xnor_gemm(a[rows], b, k), f"xnor_gemm {m}x{n}")
    del out
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w_scale = torch.rand(n, device="cuda") + 0.1
    y = ops.binary_linear(x, b, w_scale, None, k, 0.0, 0.25)
    want = ops.reference_binary_linear(x[rows], b, w_scale, None, k, 0.0, 0.25)
    _exact(y[rows], want, f"binary_linear {m}x{n} fp16")

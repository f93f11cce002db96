"""CUDA kernels of bitmaps._C against the plain-PyTorch reference ops, each GEMM path forced.

BITMAPS_CUDA_GEMM_PATH (read on each call) picks popc, mma (mma.sync b1, sm_80+) or wgmma (sm_90a).
Both activation kinds (signed ±1 and act_unsigned {0, 1}), packed operands with non-zero padding
bits (ignored, as on CPU), and every input dtype pack_signs takes on CPU. The awkward shapes (tile
tails, partly filled k256 steps, streams, CUDA graphs, > 2^31 outputs) are in test_cuda_cases.py.
Tolerances: integer results (pack_signs, xnor_gemm) must match exactly. binary_linear with a fixed
act_scale must match exactly too (the epilogue multiplies in the reference's order without FMA);
with the per-row mean scale the row means are summed in another order, so float32 outputs get
rtol 1e-5 and float16 outputs rtol 2e-3 (one fp16 ulp) plus an atol of 1e-3 x max |y|.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA_GEMM_PATHS, NEEDS_CUDA_KERNELS, cuda_path_supported, packed_cuda

from bitmaps.core import ops
from bitmaps.core.packing import packed_width

pytestmark = NEEDS_CUDA_KERNELS

KS = [1, 31, 32, 33, 100, 768, 3072]
PATHS = CUDA_GEMM_PATHS


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_pack_signs_exact(k, dtype):
    x = torch.randn(3, 5, k, device="cuda").to(dtype)
    x[0, 0, : min(k, 4)] = 0.0  # sign(0) = +1
    x[0, 1, : min(k, 4)] = -0.0  # -0.0 < 0 is false: +1 as well
    got = ops.pack_signs(x)
    assert got.dtype == torch.int32 and got.shape == (3, 5, packed_width(k))
    torch.testing.assert_close(got, ops.reference_pack_signs(x), rtol=0, atol=0)
    if k % 32:  # padding bits of the last word are zero
        assert int((got[..., -1].to(torch.int64) >> (k % 32)).abs().sum()) == 0


def test_pack_signs_takes_what_the_cpu_op_takes():
    x = torch.randn(6, 4, 70, dtype=torch.float64)
    x[0, 0, 0] = -1e-300  # negative in float64, -0.0 once rounded to float32: still packs as -1
    for t in (x, x.transpose(0, 1), x[:, :, ::2], x.to(torch.bfloat16).transpose(0, 1)):
        assert not t.is_contiguous() or t is x
        got = ops.pack_signs(t.cuda())
        torch.testing.assert_close(got.cpu(), ops.pack_signs(t), rtol=0, atol=0)
    assert int(ops.pack_signs(x.cuda())[0, 0, 0]) & 1 == 1


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m,n", [(1, 1), (7, 13), (65, 129), (200, 77)])
def test_xnor_gemm_exact(gemm_path, k, m, n):
    a, b = packed_cuda(m, k), packed_cuda(n, k)
    got = ops.xnor_gemm(a, b, k)
    torch.testing.assert_close(got, ops.reference_xnor_gemm(a, b, k), rtol=0, atol=0)


def _dirty(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The same packed rows with every padding bit of the last word set (a packed operand that
    did not come from pack_signs); the kernels must ignore them, as the CPU kernels do."""
    out = packed.clone()
    if k % 32:
        out[:, -1] |= torch.tensor(-1 << (k % 32), dtype=torch.int64).to(torch.int32)
    return out


@pytest.mark.parametrize("k", [1, 31, 33, 100, 300, 3071])
@pytest.mark.parametrize("m,n", [(7, 13), (200, 136)])
def test_xnor_gemm_ignores_padding_bits(gemm_path, k, m, n):
    a, b = packed_cuda(m, k), packed_cuda(n, k)
    want = ops.reference_xnor_gemm(a, b, k)
    got = ops.xnor_gemm(_dirty(a, k), _dirty(b, k), k)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    cpu = ops.xnor_gemm(_dirty(a, k).cpu(), _dirty(b, k).cpu(), k)
    torch.testing.assert_close(got.cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize("act_unsigned", [0, 1])
@pytest.mark.parametrize("k", [33, 100, 3071])
def test_binary_linear_ignores_padding_bits_of_w(gemm_path, k, act_unsigned):
    x, w, w_scale, bias = _linear_args((5, 9), k, 77, torch.float16, bias=True)
    want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.1, 0.5, act_unsigned)
    got = ops.binary_linear(x, _dirty(w, k), w_scale, bias, k, 0.1, 0.5, act_unsigned)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_xnor_gemm_bert_base_shape(gemm_path):
    a, b = packed_cuda(1024, 768), packed_cuda(3072, 768)
    torch.testing.assert_close(
        ops.xnor_gemm(a, b, 768), ops.reference_xnor_gemm(a, b, 768), rtol=0, atol=0
    )


def _linear_args(batch: tuple[int, ...], k: int, n: int, dtype, bias: bool):
    x = torch.randn(*batch, k, device="cuda").to(dtype)
    w = packed_cuda(n, k)
    w_scale = torch.rand(n, device="cuda") + 0.1
    b = torch.randn(n, device="cuda") if bias else None
    return x, w, w_scale, b


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_scale", [0.0, 0.37])
def test_binary_linear_matches_reference(gemm_path, k, dtype, act_scale):
    x, w, w_scale, bias = _linear_args((3, 7), k, 45, dtype, bias=True)
    got = ops.binary_linear(x, w, w_scale, bias, k, 0.05, act_scale)
    want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.05, act_scale)
    assert got.dtype == dtype and got.shape == (3, 7, 45)
    if act_scale > 0:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        rtol = 1e-5 if dtype == torch.float32 else 2e-3
        atol = 1e-3 * float(want.float().abs().max())
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("k", [1, 31, 33, 768, 3072])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_scale", [0.0, 0.37])
def test_binary_linear_unsigned_matches_reference(gemm_path, k, dtype, act_scale):
    """Two-set binarization: a = (x - beta > 0) in {0, 1}, dot = popc(a) - 2 popc(a AND W)."""
    x, w, w_scale, bias = _linear_args((3, 7), k, 45, dtype, bias=True)
    x = torch.relu(x)  # as after a ReLU: many exact zeros, which binarize to 0
    got = ops.binary_linear(x, w, w_scale, bias, k, 0.0, act_scale, 1)
    want = ops.reference_binary_linear(x, w, w_scale, bias, k, 0.0, act_scale, 1)
    assert got.dtype == dtype and got.shape == (3, 7, 45)
    if act_scale > 0:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        rtol = 1e-5 if dtype == torch.float32 else 2e-3
        atol = 1e-3 * float(want.float().abs().max())
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("m", [1, 129, 4096])
def test_binary_linear_without_bias_and_many_rows(gemm_path, m):
    x, w, w_scale, _ = _linear_args((m,), 768, 3072, torch.float16, bias=False)
    got = ops.binary_linear(x, w, w_scale, None, 768, 0.0, 0.5)
    want = ops.reference_binary_linear(x, w, w_scale, None, 768, 0.0, 0.5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_opcheck_on_cuda():
    x, w, w_scale, bias = _linear_args((4, 6), 100, 33, torch.float16, bias=True)
    a, b = packed_cuda(9, 100), packed_cuda(5, 100)
    torch.library.opcheck(torch.ops.bitmaps.pack_signs.default, (x,))
    torch.library.opcheck(torch.ops.bitmaps.xnor_gemm.default, (a, b, 100))
    for act_unsigned in (0, 1):
        torch.library.opcheck(
            torch.ops.bitmaps.binary_linear.default,
            (x, w, w_scale, bias, 100, 0.0, 0.0, act_unsigned),
        )


def test_bad_input_is_a_clear_error(monkeypatch):
    x, w, w_scale, bias = _linear_args((4,), 100, 33, torch.float32, bias=True)
    with pytest.raises(RuntimeError, match="in_features"):
        ops.binary_linear(x, w, w_scale, bias, 64, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        ops.binary_linear(x.double(), w, w_scale, bias, 100, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="act_unsigned"):
        torch.ops.bitmaps.binary_linear(x, w, w_scale, bias, 100, 0.0, 0.0, 2)
    with pytest.raises(RuntimeError, match="contiguous"):
        wide = torch.cat([w, w], dim=1)[:, : w.shape[1]]
        ops.binary_linear(x, wide, w_scale, bias, 100, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ops.binary_linear(x, w, w_scale.cpu(), bias, 100, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="words per row"):
        ops.xnor_gemm(packed_cuda(3, 100), packed_cuda(3, 100), 200)
    monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", "tensorcores")
    with pytest.raises(RuntimeError, match="BITMAPS_CUDA_GEMM_PATH"):
        ops.xnor_gemm(packed_cuda(3, 100), packed_cuda(3, 100), 100)


@pytest.mark.parametrize("path", PATHS)
def test_unavailable_path_is_refused(path, monkeypatch):
    if cuda_path_supported(path):
        pytest.skip(f"{path} is available on this GPU")
    monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", path)
    with pytest.raises(RuntimeError, match="not available"):
        ops.xnor_gemm(packed_cuda(3, 100), packed_cuda(3, 100), 100)

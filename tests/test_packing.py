"""The bit layout and the ``pack_signs`` op: reference against hand-computed words, and the compiled
CPU kernel (each path forced: AVX-512, AVX2, scalar) against the reference, bit for bit.

Sign convention checked here: bit 1 iff x < 0 (IEEE), so +0.0, -0.0 and NaN give bit 0 (+1), and
every padding bit of the last word is 0.
"""

from __future__ import annotations

import pytest
import torch
from conftest import K_VALUES, native_calls

from bitmaps.core import ops
from bitmaps.core.packing import packed_width, unpack_bits


def _padding_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """The bits of the last word past k (as an int64 tensor, 0 when there are none)."""
    if k % 32 == 0:
        return torch.zeros_like(words[..., -1], dtype=torch.int64)
    return (words[..., -1].to(torch.int64) & 0xFFFFFFFF) >> (k % 32)


# ------------------------------------------------------------------------------ reference layout


def test_reference_layout_hand_computed_words():
    x = torch.tensor([[-1.0, 2.0, -3.0], [1.0, 1.0, 1.0]])
    assert ops.reference_pack_signs(x).tolist() == [[0b101], [0]]
    # 32 negatives: all bits set, read back as a signed int32
    assert ops.reference_pack_signs(-torch.ones(32)).tolist() == [-1]
    # element 32 goes to bit 0 of word 1; element 31 is the sign bit of word 0
    x = torch.ones(40)
    x[31] = -1.0
    x[32] = -1.0
    assert ops.reference_pack_signs(x).tolist() == [-(2**31), 1]


# ------------------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pack_signs_matches_reference(cpu_path, k, dtype):
    x = torch.randn(3, 5, k).to(dtype)
    before = native_calls("pack_signs", cpu_path)
    got = ops.pack_signs(x)
    assert native_calls("pack_signs", cpu_path) == before + 1, "the native kernel did not run"
    assert got.dtype == torch.int32 and got.shape == (3, 5, packed_width(k))
    assert torch.equal(got, ops.reference_pack_signs(x))
    assert torch.equal(unpack_bits(got, k), x < 0)


@pytest.mark.parametrize("k", (1, 31, 33, 100, 770))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pack_signs_padding_bits_are_zero(cpu_path, k, dtype):
    x = -torch.rand(7, k).to(dtype) - 1  # all negative: a stray padding bit would be a 1
    got = ops.pack_signs(x)
    assert torch.equal(_padding_bits(got, k), torch.zeros(7, dtype=torch.int64))
    full = got[:, : k // 32]
    assert torch.equal(full, torch.full_like(full, -1))
    assert torch.equal(got, ops.reference_pack_signs(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pack_signs_special_values(cpu_path, dtype):
    tiny = torch.finfo(dtype).tiny / 4  # a subnormal: its sign still counts
    values = [0.0, -0.0, tiny, -tiny, float("inf"), -float("inf"), float("nan"), -float("nan")]
    expected = [0, 0, 0, 1, 0, 1, 0, 0]  # x < 0 in IEEE: -0.0 and NaN are not negative
    x = torch.tensor(values * 5, dtype=dtype)  # 40 values: a full word and a ragged one
    got = ops.pack_signs(x)
    assert unpack_bits(got, 40).tolist() == [bool(e) for e in expected * 5]
    assert torch.equal(got, ops.reference_pack_signs(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_pack_signs_other_float_dtypes(cpu_path, dtype):
    x = torch.randn(4, 100, dtype=torch.float64)
    x[0, :3] = torch.tensor([-0.0, -1e-300, 0.0])  # -1e-300 underflows in float32, not here
    x = x.to(dtype)
    assert torch.equal(ops.pack_signs(x), ops.reference_pack_signs(x))


def test_pack_signs_non_contiguous_and_empty(cpu_path):
    x = torch.randn(100, 9).t()  # [9, 100], not contiguous: the kernel copies it
    assert not x.is_contiguous()
    assert torch.equal(ops.pack_signs(x), ops.reference_pack_signs(x))
    assert ops.pack_signs(torch.randn(0, 33)).shape == (0, 2)
    assert ops.pack_signs(torch.randn(4, 0)).shape == (4, 0)


def test_pack_signs_multithreaded_equals_single_threaded(cpu_path):
    x = torch.randn(257, 3072)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.pack_signs(x)
        torch.set_num_threads(max(2, threads))
        multi = ops.pack_signs(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, multi)


# ------------------------------------------------------------------------------- bad input, opcheck


def test_pack_signs_rejects_bad_input():
    with pytest.raises(RuntimeError, match="must be float32, float16, bfloat16 or float64"):
        ops.pack_signs(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="at least one dimension"):
        ops.pack_signs(torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pack_signs_opcheck(dtype):
    torch.library.opcheck(ops.pack_signs, (torch.randn(3, 2, 70).to(dtype),))
    torch.library.opcheck(ops.pack_signs, (torch.randn(5, 768).to(dtype),))

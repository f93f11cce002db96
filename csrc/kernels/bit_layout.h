// The bit layout of DESIGN.md, in C++: the one header every kernel (CPU, CUDA, TensorRT plugin) reads.
//
//   bit 1 means -1, bit 0 means +1 (the sign bit); sign(0) = +1.
//   Bits are packed along K into int32 words, least significant bit first:
//   element k of row n is bit (k % 32) of word W[n * kw + k / 32]; kw = ceil(K / 32).
//   Padding bits (K not a multiple of 32) are 0 in both operands, so they cancel in XOR.
//   dot(a, b) = K - 2 * popcount(a XOR b).
//
// The Python mirror is bitmaps/core/packing.py. Header-only, usable from host and device code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BITMAPS_HD __host__ __device__ __forceinline__
#else
#define BITMAPS_HD inline
#endif

namespace bitmaps {

constexpr int kWordBits = 32;

// Number of int32 words that hold k bits.
BITMAPS_HD constexpr int64_t packed_width(int64_t k) { return (k + kWordBits - 1) / kWordBits; }

// The sign bit of one value: 1 for negative (binary -1), 0 otherwise (binary +1, sign(0) = +1).
BITMAPS_HD constexpr uint32_t sign_bit(float v) { return v < 0.0f ? 1u : 0u; }

// Mask of the valid bits in the last word of a row of k bits (all ones when k % 32 == 0).
BITMAPS_HD constexpr uint32_t last_word_mask(int64_t k) {
  return (k % kWordBits) == 0 ? 0xFFFFFFFFu : ((1u << (k % kWordBits)) - 1u);
}

// Binary dot product from the popcount of the XOR of two packed rows of k bits.
BITMAPS_HD constexpr int32_t binary_dot(int64_t k, int64_t xor_popcount) {
  return static_cast<int32_t>(k - 2 * xor_popcount);
}

}  // namespace bitmaps

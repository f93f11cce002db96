// The CPU kernels behind the three bitmaps ops, torch-free: raw pointers and sizes, nothing else.
//
//   pack_signs      float rows -> sign words (bit layout of bit_layout.h), optionally x - beta
//                   first and the per-row mean |x - beta| on the side (binary_linear's scale);
//   pack_positive   the same for unsigned activations (act_unsigned, {0, 1}): bit 1 where
//                   x - beta > 0, plus each row's popcount (the unsigned dot product needs it);
//   pack_panels     packed weight rows [N, KW] -> the panel layout the GEMM micro-kernels read;
//   xnor_gemm_tile  one output tile of K - 2 * popcount(a XOR b) (or, for unsigned activations,
//                   popcount(a) - 2 * popcount(a AND b)), with an epilogue that writes the int32
//                   dot product, or s[m] * w_scale[n] * dot + bias[n] as float32 / float16.
//
// Every function does a slice of the work (rows, panels, a tile) so the caller can spread slices
// over threads; nothing here starts a thread. Inputs are assumed valid (the adapters check them).
// The GEMM broadcasts one 32-bit word of an activation row and XORs it with 16 weight rows at once:
// the accumulators then hold 16 neighbouring outputs and need no horizontal reduction.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace bitmaps::cpu {

// Weight rows per panel: one 512-bit vector of 32-bit words (two 256-bit vectors on AVX2).
constexpr int64_t kPanelRows = 16;

// Number of int32 words of the panel layout for n weight rows of kw words.
inline int64_t panel_words(int64_t n, int64_t kw) {
  return (n + kPanelRows - 1) / kPanelRows * kPanelRows * kw;
}

// Panels [p0, p1) of the panel layout: panels[(p * kw + w) * 16 + l] = b[(16 p + l) * kw + w], with
// rows past n set to zero and the padding bits of the last word cleared (so garbage there in b
// cannot change a result). b: [n, kw] row-major.
void pack_panels(const int32_t* b, int64_t n, int64_t kw, int64_t k, int64_t p0, int64_t p1,
                 int32_t* panels);

// Sign words of `rows` rows of k values (row-major): out[r, w] bit j = (x'[r, 32 w + j] < 0) with
// x' = x - beta in float32 when subtract is set, x' = x otherwise; padding bits are 0. When
// row_abs_mean is not null it receives mean_k |x'[r, k]|: the sum of |x'| is carried in float64
// (the AVX-512 path first adds 8 values per lane in float32), rounded to float32 and divided by k
// in float32 like torch's mean; its order differs from torch's, so the last bits may too.
// x16 is IEEE binary16 data (uint16_t bits).
void pack_signs_f32(CpuPath path, const float* x, int64_t rows, int64_t k, bool subtract,
                    float beta, float* row_abs_mean, int32_t* out);
void pack_signs_f16(CpuPath path, const uint16_t* x16, int64_t rows, int64_t k, bool subtract,
                    float beta, float* row_abs_mean, int32_t* out);
// Unsigned activations ({0, 1}, DESIGN.md act_unsigned): out[r, w] bit j = (x'[r, 32 w + j] > 0),
// x' and row_abs_mean exactly as above, padding bits 0. When row_popcount is not null it receives
// the number of set bits of each row (the a_popcount of GemmArgs).
void pack_positive_f32(CpuPath path, const float* x, int64_t rows, int64_t k, bool subtract,
                       float beta, float* row_abs_mean, int32_t* row_popcount, int32_t* out);
void pack_positive_f16(CpuPath path, const uint16_t* x16, int64_t rows, int64_t k, bool subtract,
                       float beta, float* row_abs_mean, int32_t* row_popcount, int32_t* out);

// float64 input: scalar only (not a hot path; kept so pack_signs accepts what its reference does).
void pack_signs_f64(const double* x, int64_t rows, int64_t k, int32_t* out);

enum class GemmOutput : int {
  kDotInt32 = 0,  // out int32: K - 2 * popcount
  kFloat32 = 1,   // out float: (float(dot) * row_scale[m]) * col_scale[n] (+ bias[n])
  kFloat16 = 2,   // the float32 value above rounded to binary16 (nearest even)
  kBits = 3,      // out int32 words [m, ceil(n/32)], zeroed by the caller: bit n % 32 of word
                  // [m, n / 32] is 1 where dot lies in one of the bit_runs ranges
                  // [bit_lo[i * n + col], bit_hi[i * n + col]] of its column (binary_ffn, cpu_binary_linear.h)
};

struct GemmArgs {
  const int32_t* a = nullptr;       // [m, kw] packed activation rows (padding bits ignored)
  const int32_t* panels = nullptr;  // pack_panels layout of the [n, kw] weight rows
  int64_t m = 0, n = 0, kw = 0, k = 0;
  GemmOutput output = GemmOutput::kDotInt32;
  void* out = nullptr;                 // [m, n] row-major: int32, float or binary16 bits
  const float* row_scale = nullptr;    // [m]     (float outputs)
  const float* col_scale = nullptr;    // [n]     (float outputs)
  const float* bias = nullptr;         // [n] or null
  // Unsigned activations: a holds {0, 1} bits (pack_positive, padding bits 0) and
  // dot = a_popcount[m] - 2 * popcount(a[m] AND w[n]); a_popcount ([m]) is then required.
  bool unsigned_a = false;
  const int32_t* a_popcount = nullptr;
  // Float outputs: GELU applied to each value before it is stored (cpu_kernels_internal.h, gelu).
  bool gelu = false;
  // kBits: the ranges of dot values that set a column's bit, bit_runs of them per column
  // ([bit_runs, n] each; an empty range has lo > hi).
  const int32_t* bit_lo = nullptr;
  const int32_t* bit_hi = nullptr;
  int bit_runs = 0;
  // Unique per GEMM call (cpu_binary_linear.cpp sets it; 0: not known): a path may keep what it
  // derived from rows of `a` for a tile (the AVX2 path's nibble-split rows) for the next tile the
  // same thread runs on the same rows in the same call, where it would derive the same again.
  uint64_t call = 0;
};

// Output rows [m0, m1) x columns [n0, n1) of the product; n0 must be a multiple of kPanelRows.
void xnor_gemm_tile(CpuPath path, const GemmArgs& args, int64_t m0, int64_t m1, int64_t n0,
                    int64_t n1);

// out[i] = gelu(y[i]) exactly as `path`'s GEMM epilogue computes it (GemmArgs::gelu): the scalar
// definition of cpu_kernels_internal.h, or the AVX-512 path's own vector form.
void gelu_f32(CpuPath path, const float* y, int64_t count, float* out);

}  // namespace bitmaps::cpu

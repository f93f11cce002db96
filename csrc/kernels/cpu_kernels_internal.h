// Per-path entry points behind cpu_kernels.h (internal: cpu_kernels.cpp dispatches to them).
//
// Each path implements the same five functions with the semantics documented in cpu_kernels.h.
// The AVX2 / AVX-512 ones exist only on x86 builds, the NEON ones only on aarch64 builds, and they
// must be called only when cpu_path_supported() says so: they are compiled for those instruction
// sets.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/bit_layout.h"
#include "kernels/cpu_half.h"
#include "kernels/cpu_kernels.h"

namespace bitmaps::cpu::detail {

#define BITMAPS_DECLARE_CPU_PATH(suffix)                                                           \
  void pack_signs_f32_##suffix(const float* x, int64_t rows, int64_t k, bool subtract, float beta, \
                               float* row_abs_mean, int32_t* out);                                 \
  void pack_signs_f16_##suffix(const uint16_t* x, int64_t rows, int64_t k, bool subtract,          \
                               float beta, float* row_abs_mean, int32_t* out);                     \
  void pack_positive_f32_##suffix(const float* x, int64_t rows, int64_t k, bool subtract,         \
                                  float beta, float* row_abs_mean, int32_t* row_popcount,          \
                                  int32_t* out);                                                   \
  void pack_positive_f16_##suffix(const uint16_t* x, int64_t rows, int64_t k, bool subtract,      \
                                  float beta, float* row_abs_mean, int32_t* row_popcount,          \
                                  int32_t* out);                                                   \
  void xnor_gemm_tile_##suffix(const GemmArgs& args, int64_t m0, int64_t m1, int64_t n0,           \
                               int64_t n1);

BITMAPS_DECLARE_CPU_PATH(scalar)
#if defined(BITMAPS_HAVE_X86_PATHS)
BITMAPS_DECLARE_CPU_PATH(avx2)
BITMAPS_DECLARE_CPU_PATH(avx512)
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
BITMAPS_DECLARE_CPU_PATH(neon)
#endif

#undef BITMAPS_DECLARE_CPU_PATH

#if defined(BITMAPS_HAVE_X86_PATHS)
void gelu_f32_avx512(const float* y, int64_t count, float* out);
#endif

// Mask of the valid lanes of a `lanes`-wide vector of which `valid` (may exceed lanes) exist.
inline uint32_t lane_mask(int64_t valid, int lanes) {
  if (valid >= lanes) return lanes >= 32 ? 0xFFFFFFFFu : ((1u << lanes) - 1u);
  return valid <= 0 ? 0u : ((1u << valid) - 1u);
}

// Bit-twiddling popcount: no dependence on a popcnt instruction (or a libgcc call) on old CPUs.
inline uint32_t popcount32(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  return (((v + (v >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24;
}

// Number of set bits of each of `rows` packed rows of kw words (pack_positive's row_popcount).
inline void row_popcounts(const int32_t* words, int64_t rows, int64_t kw, int32_t* counts) {
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t count = 0;
    for (int64_t w = 0; w < kw; ++w) count += popcount32(static_cast<uint32_t>(words[r * kw + w]));
    counts[r] = static_cast<int32_t>(count);
  }
}

// The integer dot product of output row m from the popcount of (a XOR w), or of (a AND w) for
// unsigned activations.
inline int32_t gemm_dot(const GemmArgs& g, int64_t m, int64_t count) {
  return g.unsigned_a ? static_cast<int32_t>(g.a_popcount[m] - 2 * count) : binary_dot(g.k, count);
}

// GELU (erf form) for the fused epilogue, GemmArgs::gelu: gelu(y) = 0.5 y (1 + erf(y / sqrt 2)),
// erf(z) = z P(z^2) / Q(z^2) on |z| <= 4 (beyond, erf is +-1 in float32), a (5, 5) rational fit
// made for bitmaps (least squares on erf over [0, 4], reweighted toward its largest errors;
// |error| <= 3.2e-7 evaluated in float32; gelu's error measured <= 2.3e-7 max(1, |y|) by the
// kernel harness). The scalar, AVX2 and NEON paths evaluate it in this order without fused
// multiply-adds (mul, add per Horner step), bit for bit alike; AVX-512 uses FMAs and a refined
// reciprocal instead of the division (cpu_kernels_avx512.cpp), within 3e-7 max(1, |y|) of it.
constexpr float kGeluRsqrt2 = 0.70710678118654752f;
constexpr float kErfClamp = 4.0f;
// GELU's far negative tail as float32 rounds it (torch, ONNX Runtime): 1 + erf(z) is 0 where erf
// is within half an ulp of -1 (erfc(-z) < 2^-25: z <= kErfTailZero, y below about -5.5426), and
// at least one ulp of 1 (2^-24) above that; the fit reaches -1 a little sooner (z ~ -3.82), so
// its 1 + erf is raised to that ulp there. Only the sign of a tail value matters (a next layer
// binarizing at 0); its size stays within the fit's error.
constexpr float kErfTailZero = -3.919205904f;
constexpr float kOneUlpBelowOne = 0x1p-24f;
constexpr float kErfP[6] = {1.128379028e+00f, 2.070394930e-01f, 5.493311928e-02f,
                            4.471158557e-03f, 2.991484358e-04f, 1.902921722e-06f};
constexpr float kErfQ[6] = {1.000000000e+00f, 5.168140200e-01f, 1.209690231e-01f,
                            1.638816300e-02f, 1.330369362e-03f, 3.730995496e-05f};

inline float gelu(float y) {
  float z = y * kGeluRsqrt2;
  z = std::min(std::max(z, -kErfClamp), kErfClamp);
  const float t = z * z;
  float p = kErfP[5], q = kErfQ[5];
  for (int i = 4; i >= 0; --i) {
    p = p * t + kErfP[i];
    q = q * t + kErfQ[i];
  }
  float erf = (z * p) / q;
  erf = std::min(std::max(erf, -1.0f), 1.0f);
  float one = 1.0f + erf;
  one = z <= kErfTailZero ? 0.0f : std::max(one, kOneUlpBelowOne);  // NaN stays NaN
  return (0.5f * y) * one;
}

// The epilogue for one output element, in the exact float32 operation order of the reference
// ((dot * s) * w_scale + bias, no fused multiply-add), so every path rounds the same way.
// GemmOutput::kBits: whether column col's bit is 1 for the dot product `dot` (dot in one of the
// column's ranges of GemmArgs::bit_lo / bit_hi).
inline bool output_bit(const GemmArgs& g, int64_t col, int32_t dot) {
  bool set = false;
  for (int i = 0; i < g.bit_runs; ++i) {
    set |= dot >= g.bit_lo[i * g.n + col] && dot <= g.bit_hi[i * g.n + col];
  }
  return set;
}

inline void store_output(const GemmArgs& g, int64_t m, int64_t col, int32_t dot) {
  const int64_t at = m * g.n + col;
  if (g.output == GemmOutput::kBits) {
    if (output_bit(g, col, dot)) {
      static_cast<uint32_t*>(g.out)[m * packed_width(g.n) + col / kWordBits] |=
          1u << (col % kWordBits);
    }
    return;
  }
  if (g.output == GemmOutput::kDotInt32) {
    static_cast<int32_t*>(g.out)[at] = dot;
    return;
  }
  float y = static_cast<float>(dot) * g.row_scale[m];
  y = y * g.col_scale[col];
  if (g.bias != nullptr) y = y + g.bias[col];
  if (g.gelu) y = gelu(y);
  if (g.output == GemmOutput::kFloat32) {
    static_cast<float*>(g.out)[at] = y;
  } else {
    static_cast<uint16_t*>(g.out)[at] = float_to_half(y);
  }
}

}  // namespace bitmaps::cpu::detail

// The AVX-512 path: VPOPCNTD on 512-bit vectors, masked loads/stores for every ragged edge.
//
// Only the functions below are compiled for AVX-512 (target attributes), so the library still loads
// and runs on CPUs without it; cpu_kernels.cpp calls them only when cpu_path_supported() agrees.
//
// GEMM micro-kernel: kMR activation rows x kNV panels of 16 weight rows. Per packed word w it
// broadcasts a[m, w] and computes acc[m][n..n+15] += popcount(a[m, w] XOR panel[w][0..15]) (AND
// for unsigned activations), so the 16 lanes of an accumulator are 16 neighbouring outputs: no
// horizontal sums, and the epilogue (K - 2 * acc or popcount(a) - 2 * acc, scales, bias, fp16
// rounding) works on whole vectors.
// A model's weights do not stay in the caches from one call to the next, so each group of panels
// comes from memory: the first micro-kernel of a group prefetches the next group's as it goes.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports the deliberately undefined registers inside its own AVX-512 headers
// (_mm512_undefined_*) as uninitialised once inlined here: a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

#define BITMAPS_AVX512                                                                      \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,fma,f16c," \
                        "popcnt")))
#define BITMAPS_AVX512_INLINE BITMAPS_AVX512 __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = 4;  // activation rows per micro-kernel
constexpr int kNV = 4;  // 16-row weight panels per micro-kernel (16 accumulators + 4 + 1 registers)

// ------------------------------------------------------------------------------------ packing

struct LoadF32 {
  using T = float;
  static BITMAPS_AVX512_INLINE __m512 full(const float* p) { return _mm512_loadu_ps(p); }
  static BITMAPS_AVX512_INLINE __m512 part(const float* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
};

struct LoadF16 {
  using T = uint16_t;
  static BITMAPS_AVX512_INLINE __m512 full(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static BITMAPS_AVX512_INLINE __m512 part(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

// Words whose |x'| are summed in float32 lanes (8 values per lane) before the lane sums move to
// the float64 total: a float32 block sum of 8 values is exact to a few ulp, and the long sum over
// the row stays in float64, for a result close to the correctly rounded mean at a fraction of the
// cost of converting every value to double.
constexpr int64_t kSumBlockWords = 8;

// Sign bits (kPos: x' > 0 bits) of 16 values (lanes outside `valid` give 0) and their |x'| added
// to the float32 sum.
template <bool kPos, bool kSub, bool kSum>
BITMAPS_AVX512_INLINE uint32_t signs16(__m512 v, __mmask16 valid, __m512 beta, __m512* sum) {
  if (kSub) v = _mm512_maskz_sub_ps(valid, v, beta);  // invalid lanes: 0, never negative
  constexpr int kCmp = kPos ? _CMP_GT_OQ : _CMP_LT_OQ;
  const uint32_t bits = _mm512_mask_cmp_ps_mask(valid, v, _mm512_setzero_ps(), kCmp);
  if (kSum) *sum = _mm512_add_ps(*sum, _mm512_abs_ps(v));
  return bits;
}

// Moves a float32 block sum into the float64 total and clears it.
BITMAPS_AVX512_INLINE void flush_sum(__m512* block, __m512d* total) {
  total[0] = _mm512_add_pd(total[0], _mm512_cvtps_pd(_mm512_castps512_ps256(*block)));
  total[1] = _mm512_add_pd(total[1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(*block, 1)));
  *block = _mm512_setzero_ps();
}

template <class L, bool kPos, bool kSub, bool kSum>
BITMAPS_AVX512 void pack_rows(const typename L::T* x, int64_t rows, int64_t k, float beta,
                              float* row_abs_mean, int32_t* out) {
  const int64_t kw = packed_width(k);
  const int64_t full_words = k / kWordBits;
  const __m512 vbeta = _mm512_set1_ps(beta);
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = x + r * k;
    int32_t* o = out + r * kw;
    __m512 block_lo = _mm512_setzero_ps(), block_hi = _mm512_setzero_ps();
    __m512d total[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t w = 0; w < full_words; ++w) {
      const uint32_t lo = signs16<kPos, kSub, kSum>(L::full(xr + w * 32), 0xFFFF, vbeta, &block_lo);
      const uint32_t hi = signs16<kPos, kSub, kSum>(L::full(xr + w * 32 + 16), 0xFFFF, vbeta, &block_hi);
      o[w] = static_cast<int32_t>(lo | (hi << 16));
      if (kSum && (w + 1) % kSumBlockWords == 0) {
        flush_sum(&block_lo, total);
        flush_sum(&block_hi, total);
      }
    }
    if (full_words < kw) {
      const int64_t rem = k - full_words * kWordBits;
      const auto m_lo = static_cast<__mmask16>(lane_mask(rem, 16));
      const auto m_hi = static_cast<__mmask16>(lane_mask(rem - 16, 16));
      const typename L::T* xt = xr + full_words * 32;
      const uint32_t lo = signs16<kPos, kSub, kSum>(L::part(xt, m_lo), m_lo, vbeta, &block_lo);
      const uint32_t hi = signs16<kPos, kSub, kSum>(L::part(xt + 16, m_hi), m_hi, vbeta, &block_hi);
      o[full_words] = static_cast<int32_t>(lo | (hi << 16));
    }
    if (kSum) {
      flush_sum(&block_lo, total);
      flush_sum(&block_hi, total);
      const double sum = _mm512_reduce_add_pd(_mm512_add_pd(total[0], total[1]));
      row_abs_mean[r] = static_cast<float>(sum) / static_cast<float>(k);
    }
  }
}

template <class L, bool kPos>
void pack_dispatch(const typename L::T* x, int64_t rows, int64_t k, bool subtract, float beta,
                   float* row_abs_mean, int32_t* out) {
  float* mean = row_abs_mean;
  if (subtract) {
    if (mean != nullptr) return pack_rows<L, kPos, true, true>(x, rows, k, beta, mean, out);
    return pack_rows<L, kPos, true, false>(x, rows, k, beta, nullptr, out);
  }
  if (mean != nullptr) return pack_rows<L, kPos, false, true>(x, rows, k, beta, mean, out);
  return pack_rows<L, kPos, false, false>(x, rows, k, beta, nullptr, out);
}

// --------------------------------------------------------------------------------------- GEMM

// gelu of cpu_kernels_internal.h on 16 lanes: the same rational erf, with the Horner steps as
// fused multiply-adds and the division as VRCP14PS refined by one Newton step (the division was
// most of the epilogue's cost: ~16 cycles per vector). Not bit-identical to the scalar definition
// (the other paths are): within 3e-7 max(1, |y|) of it (kernel harness, which allows 4e-7).
BITMAPS_AVX512_INLINE __m512 gelu16(__m512 y) {
  __m512 z = _mm512_mul_ps(y, _mm512_set1_ps(kGeluRsqrt2));
  z = _mm512_min_ps(_mm512_set1_ps(kErfClamp), _mm512_max_ps(_mm512_set1_ps(-kErfClamp), z));
  const __m512 t = _mm512_mul_ps(z, z);
  __m512 p = _mm512_set1_ps(kErfP[5]), q = _mm512_set1_ps(kErfQ[5]);
  for (int i = 4; i >= 0; --i) {
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(kErfP[i]));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kErfQ[i]));
  }
  __m512 r = _mm512_rcp14_ps(q);  // q >= 1: relative error <= 2^-14, then ~2^-28 after the step
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  __m512 erf = _mm512_mul_ps(_mm512_mul_ps(z, p), r);
  erf = _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_set1_ps(-1.0f), erf));
  __m512 one = _mm512_add_ps(_mm512_set1_ps(1.0f), erf);
  one = _mm512_max_ps(_mm512_set1_ps(kOneUlpBelowOne), one);  // NaN stays NaN (2nd operand)
  one = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_set1_ps(kErfTailZero), _CMP_LE_OQ),
                             one, _mm512_setzero_ps());
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), y), one);
}

template <int MR, int NV, bool kAnd, bool kMask, bool kPrefetch>
BITMAPS_AVX512_INLINE void xnor_step(const uint32_t* a, int64_t kw, int64_t w, uint32_t mask,
                                     const int32_t* b, int64_t panel_stride,
                                     __m512i (&acc)[MR][NV]) {
  __m512i bv[NV];
  for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + v * panel_stride + w * kPanelRows);
  if (kPrefetch) {  // the same word of the next group's panels (gemm_tile)
    for (int v = 0; v < kNV; ++v) {
      _mm_prefetch(reinterpret_cast<const char*>(b + (NV + v) * panel_stride + w * kPanelRows),
                   _MM_HINT_T0);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const uint32_t word = kMask ? (a[r * kw + w] & mask) : a[r * kw + w];
    const __m512i av = _mm512_set1_epi32(static_cast<int>(word));
    for (int v = 0; v < NV; ++v) {
      const __m512i bits = kAnd ? _mm512_and_si512(av, bv[v]) : _mm512_xor_si512(av, bv[v]);
      acc[r][v] = _mm512_add_epi32(acc[r][v], _mm512_popcnt_epi32(bits));
    }
  }
}

template <int MR, int NV, GemmOutput kOut, bool kAnd, bool kPrefetch>
BITMAPS_AVX512 void micro(const GemmArgs& g, int64_t m, int64_t n) {
  const int64_t kw = g.kw;
  const uint32_t* a = reinterpret_cast<const uint32_t*>(g.a) + m * kw;
  const int32_t* b = g.panels + (n / kPanelRows) * kw * kPanelRows;
  const int64_t panel_stride = kw * kPanelRows;
  // Claim the output lines now (prefetch for writing): their read-for-ownership misses, costly
  // once the output outgrows the caches, then overlap the K loop instead of stalling the stores.
  constexpr int kOutBytes = kOut == GemmOutput::kFloat16 ? 2 : 4;
  const int64_t out_bytes = std::min<int64_t>(NV * 16, g.n - n) * kOutBytes;
  for (int r = 0; r < MR && kOut != GemmOutput::kBits; ++r) {
    const char* row = static_cast<const char*>(g.out) + ((m + r) * g.n + n) * kOutBytes;
    for (int64_t line = 0; line < out_bytes; line += 64) __builtin_prefetch(row + line, 1, 3);
  }
  __m512i acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  }
  // The activation's padding bits are cleared in the last step (the panels' were in
  // pack_panels); with K a multiple of 32 there are none, and every step is a plain one. The
  // loop is unrolled 8 times (BERT's K = 768 is 24 steps a call): measured 5.5-7.5 % faster per
  // op at one thread on BERT-base's shapes at 128 rows (Intel Xeon, A/B in turns), 2-4 % on the
  // whole binary BERT-base in ONNX Runtime; 4 and 12 were no faster.
  const bool ragged = g.k % kWordBits != 0;
  const int64_t plain = ragged ? kw - 1 : kw;
#pragma GCC unroll 8
  for (int64_t w = 0; w < plain; ++w) {
    xnor_step<MR, NV, kAnd, false, kPrefetch>(a, kw, w, 0, b, panel_stride, acc);
  }
  if (ragged) {
    xnor_step<MR, NV, kAnd, true, kPrefetch>(a, kw, kw - 1, last_word_mask(g.k), b, panel_stride,
                                             acc);
  }

  const __m512i kvec = _mm512_set1_epi32(static_cast<int>(g.k));
  __mmask16 cols[NV];
  __m512 col_scale[NV], bias[NV];
  for (int v = 0; v < NV; ++v) {
    cols[v] = static_cast<__mmask16>(lane_mask(g.n - (n + v * 16), 16));
    if (kOut != GemmOutput::kDotInt32) {
      col_scale[v] = _mm512_maskz_loadu_ps(cols[v], g.col_scale + n + v * 16);
      bias[v] = g.bias != nullptr ? _mm512_maskz_loadu_ps(cols[v], g.bias + n + v * 16)
                                  : _mm512_setzero_ps();
    }
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t row = (m + r) * g.n + n;
    const __m512 s = kOut != GemmOutput::kDotInt32 ? _mm512_set1_ps(g.row_scale[m + r])
                                                   : _mm512_setzero_ps();
    const __m512i base = kAnd ? _mm512_set1_epi32(g.a_popcount[m + r]) : kvec;
    for (int v = 0; v < NV; ++v) {
      const __m512i dot = _mm512_sub_epi32(base, _mm512_slli_epi32(acc[r][v], 1));
      if constexpr (kOut == GemmOutput::kBits) {
        // 16 columns' bits at once: dot in one of the column's ranges. Panels start at multiples
        // of 16 columns, so they fill half-words of the output rows (zeroed by the caller).
        __mmask16 bits = 0;
        for (int i = 0; i < g.bit_runs; ++i) {
          const int64_t at = i * g.n + n + v * 16;
          const __m512i lo = _mm512_maskz_loadu_epi32(cols[v], g.bit_lo + at);
          const __m512i hi = _mm512_maskz_loadu_epi32(cols[v], g.bit_hi + at);
          bits |= _mm512_mask_cmp_epi32_mask(_mm512_mask_cmp_epi32_mask(cols[v], dot, lo,
                                                                        _MM_CMPINT_NLT),
                                             dot, hi, _MM_CMPINT_LE);
        }
        uint16_t* words = reinterpret_cast<uint16_t*>(static_cast<int32_t*>(g.out) +
                                                      (m + r) * packed_width(g.n));
        words[(n + v * 16) / 16] = static_cast<uint16_t>(bits);
        continue;
      }
      if (kOut == GemmOutput::kDotInt32) {
        _mm512_mask_storeu_epi32(static_cast<int32_t*>(g.out) + row + v * 16, cols[v], dot);
        continue;
      }
      // (dot * s) * w_scale + bias, separately rounded, as in the reference.
      __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), s), col_scale[v]);
      if (g.bias != nullptr) y = _mm512_add_ps(y, bias[v]);
      if (g.gelu) y = gelu16(y);
      if (kOut == GemmOutput::kFloat32) {
        _mm512_mask_storeu_ps(static_cast<float*>(g.out) + row + v * 16, cols[v], y);
      } else {
        const __m256i h = _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + row + v * 16, cols[v], h);
      }
    }
  }
}

// Picks the micro-kernel instantiation for the ragged edges (mr < kMR rows, nv < kNV panels).
template <GemmOutput kOut, bool kAnd, int MR, int NV>
BITMAPS_AVX512_INLINE void run_micro(int mr, int nv, bool prefetch, const GemmArgs& g, int64_t m,
                                     int64_t n) {
  if constexpr (MR > 1) {
    if (mr < MR) return run_micro<kOut, kAnd, MR - 1, NV>(mr, nv, prefetch, g, m, n);
  }
  if constexpr (NV > 1) {
    if (nv < NV) return run_micro<kOut, kAnd, MR, NV - 1>(mr, nv, prefetch, g, m, n);
  }
  if constexpr (NV == kNV) {
    if (prefetch) return micro<MR, NV, kOut, kAnd, true>(g, m, n);
  }
  micro<MR, NV, kOut, kAnd, false>(g, m, n);
}

template <GemmOutput kOut, bool kAnd>
BITMAPS_AVX512 void gemm_tile(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  // Weight panels outer: their kNV * 16 rows stay in L1 while activation rows stream past.
  for (int64_t n = n0; n < n1; n += kNV * kPanelRows) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (n1 - n + kPanelRows - 1) / kPanelRows));
    // The first micro-kernel of a group of panels also prefetches the next group's (the weights
    // come from memory once per op: BERT's do not stay in the caches from one call to the next),
    // where that group is a whole one
    const int64_t padded_n = (g.n + kPanelRows - 1) / kPanelRows * kPanelRows;
    const bool prefetch = n + 2 * kNV * kPanelRows <= padded_n;
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, m1 - m));
      run_micro<kOut, kAnd, kMR, kNV>(mr, nv, prefetch && m == m0, g, m, n);
    }
  }
}

template <bool kAnd>
void gemm_dispatch(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  switch (g.output) {
    case GemmOutput::kDotInt32:
      return gemm_tile<GemmOutput::kDotInt32, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat32:
      return gemm_tile<GemmOutput::kFloat32, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat16:
      return gemm_tile<GemmOutput::kFloat16, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kBits:
      return gemm_tile<GemmOutput::kBits, kAnd>(g, m0, m1, n0, n1);
  }
}

}  // namespace

void pack_signs_f32_avx512(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                           float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF32, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_avx512(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                           float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF16, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_positive_f32_avx512(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                              float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF32, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void pack_positive_f16_avx512(const uint16_t* x, int64_t rows, int64_t k, bool subtract,
                              float beta, float* row_abs_mean, int32_t* row_popcount,
                              int32_t* out) {
  pack_dispatch<LoadF16, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

BITMAPS_AVX512 void gelu_f32_avx512(const float* y, int64_t count, float* out) {
  for (int64_t i = 0; i < count; i += 16) {
    const auto valid = static_cast<__mmask16>(lane_mask(count - i, 16));
    _mm512_mask_storeu_ps(out + i, valid, gelu16(_mm512_maskz_loadu_ps(valid, y + i)));
  }
}

void xnor_gemm_tile_avx512(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (g.unsigned_a) return gemm_dispatch<true>(g, m0, m1, n0, n1);
  gemm_dispatch<false>(g, m0, m1, n0, n1);
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

// The AVX2 path: 256-bit vectors, popcount by nibble lookup (VPSHUFB), for x86 CPUs without
// AVX-512 VPOPCNTDQ. Compiled with per-function target attributes like the AVX-512 path.
//
// Same micro-kernel shape as the AVX-512 path (broadcast one activation word, XOR it -- AND it for
// unsigned activations -- with 8 weight rows per vector), but the lookup gives per-byte counts: they are summed in bytes for up to 31
// words (31 * 8 = 248 < 256) and then widened to the int32 accumulators (VPMADDUBSW + VPMADDWD).
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

#define BITMAPS_AVX2 __attribute__((target("avx2,f16c")))
#define BITMAPS_AVX2_INLINE BITMAPS_AVX2 __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = 4;             // activation rows per micro-kernel
constexpr int kNV = 2;             // 8-row weight vectors per micro-kernel (one 16-row panel)
constexpr int64_t kByteWords = 31; // words summed in byte counters before widening
static_assert(kNV * 8 == kPanelRows, "gemm_tile steps one panel per micro-kernel");

// ------------------------------------------------------------------------------------ packing

struct LoadF32 {
  using T = float;
  static BITMAPS_AVX2_INLINE __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float one(const float* p) { return *p; }
};

struct LoadF16 {
  using T = uint16_t;
  static BITMAPS_AVX2_INLINE __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float one(const uint16_t* p) { return half_to_float(*p); }
};

// kPos: bit = (x' > 0) (unsigned activations); otherwise bit = (x' < 0) (signs).
template <class L, bool kPos, bool kSub, bool kSum>
BITMAPS_AVX2 void pack_rows(const typename L::T* x, int64_t rows, int64_t k, float beta,
                            float* row_abs_mean, int32_t* out) {
  const int64_t kw = packed_width(k);
  const int64_t full_words = k / kWordBits;
  const __m256 vbeta = _mm256_set1_ps(beta);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = x + r * k;
    int32_t* o = out + r * kw;
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    for (int64_t w = 0; w < full_words; ++w) {
      uint32_t word = 0;
      for (int q = 0; q < 4; ++q) {
        __m256 v = L::load8(xr + w * 32 + q * 8);
        if constexpr (kSub) v = _mm256_sub_ps(v, vbeta);
        const __m256 set = _mm256_cmp_ps(v, zero, kPos ? _CMP_GT_OQ : _CMP_LT_OQ);
        const auto bits = static_cast<uint32_t>(_mm256_movemask_ps(set));
        word |= bits << (q * 8);
        if constexpr (kSum) {
          const __m256 a = _mm256_and_ps(v, abs_mask);
          s[q] = _mm256_add_pd(s[q], _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
          s[q] = _mm256_add_pd(s[q], _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
        }
      }
      o[w] = static_cast<int32_t>(word);
    }
    double tail_sum = 0.0;
    if (full_words < kw) {  // the ragged last word, element by element
      uint32_t word = 0;
      for (int64_t j = 0; full_words * kWordBits + j < k; ++j) {
        float v = L::one(xr + full_words * kWordBits + j);
        if constexpr (kSub) v = v - beta;
        word |= static_cast<uint32_t>(kPos ? v > 0.0f : v < 0.0f) << j;
        tail_sum += static_cast<double>(std::fabs(v));
      }
      o[full_words] = static_cast<int32_t>(word);
    }
    if constexpr (kSum) {
      const __m256d t = _mm256_add_pd(_mm256_add_pd(s[0], s[1]), _mm256_add_pd(s[2], s[3]));
      alignas(32) double lanes[4];
      _mm256_store_pd(lanes, t);
      const double sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail_sum;
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

// gelu of cpu_kernels_internal.h on 8 lanes, the same operations in the same order.
BITMAPS_AVX2_INLINE __m256 gelu8(__m256 y) {
  __m256 z = _mm256_mul_ps(y, _mm256_set1_ps(kGeluRsqrt2));
  z = _mm256_min_ps(_mm256_set1_ps(kErfClamp), _mm256_max_ps(_mm256_set1_ps(-kErfClamp), z));
  const __m256 t = _mm256_mul_ps(z, z);
  __m256 p = _mm256_set1_ps(kErfP[5]), q = _mm256_set1_ps(kErfQ[5]);
  for (int i = 4; i >= 0; --i) {
    p = _mm256_add_ps(_mm256_mul_ps(p, t), _mm256_set1_ps(kErfP[i]));
    q = _mm256_add_ps(_mm256_mul_ps(q, t), _mm256_set1_ps(kErfQ[i]));
  }
  __m256 erf = _mm256_div_ps(_mm256_mul_ps(z, p), q);
  erf = _mm256_min_ps(_mm256_set1_ps(1.0f), _mm256_max_ps(_mm256_set1_ps(-1.0f), erf));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), y),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

template <int MR, int NV, bool kAnd, bool kMask>
BITMAPS_AVX2_INLINE void xnor_step(const uint32_t* a, int64_t kw, int64_t w, uint32_t mask,
                                   const int32_t* const (&b)[NV], __m256i (&bytes)[MR][NV]) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i bv[NV];
  for (int v = 0; v < NV; ++v) {
    bv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[v] + w * kPanelRows));
  }
  for (int r = 0; r < MR; ++r) {
    const uint32_t word = kMask ? (a[r * kw + w] & mask) : a[r * kw + w];
    const __m256i av = _mm256_set1_epi32(static_cast<int>(word));
    for (int v = 0; v < NV; ++v) {
      const __m256i x = kAnd ? _mm256_and_si256(av, bv[v]) : _mm256_xor_si256(av, bv[v]);
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low4));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
      bytes[r][v] = _mm256_add_epi8(bytes[r][v], _mm256_add_epi8(lo, hi));
    }
  }
}

template <int MR, int NV, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void micro(const GemmArgs& g, int64_t m, int64_t n) {
  const int64_t kw = g.kw;
  const uint32_t* a = reinterpret_cast<const uint32_t*>(g.a) + m * kw;
  const uint32_t last_mask = last_word_mask(g.k);
  const int32_t* b[NV];
  for (int v = 0; v < NV; ++v) {
    // Vector v: half (v % 2) of panel n / 16 + v / 2.
    b[v] = g.panels + (n / kPanelRows + v / 2) * kw * kPanelRows + (v % 2) * 8;
  }
  // Output lines prefetched for writing, as in the AVX-512 path (store misses overlap the K loop).
  constexpr int kOutBytes = kOut == GemmOutput::kFloat16 ? 2 : 4;
  const int64_t out_bytes = std::min<int64_t>(NV * 8, g.n - n) * kOutBytes;
  for (int r = 0; r < MR && kOut != GemmOutput::kBits; ++r) {
    const char* row = static_cast<const char*>(g.out) + ((m + r) * g.n + n) * kOutBytes;
    for (int64_t line = 0; line < out_bytes; line += 64) __builtin_prefetch(row + line, 1, 3);
  }
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_si256();
  }
  for (int64_t w0 = 0; w0 < kw; w0 += kByteWords) {
    const int64_t w1 = std::min(kw, w0 + kByteWords);
    __m256i bytes[MR][NV];
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) bytes[r][v] = _mm256_setzero_si256();
    }
    // Plain steps broadcast the activation word from memory; only a ragged K's last word (whose
    // padding bits are cleared here) goes through a general register.
    const int64_t plain = (w1 == kw && last_mask != 0xFFFFFFFFu) ? w1 - 1 : w1;
#pragma GCC unroll 4
    for (int64_t w = w0; w < plain; ++w) xnor_step<MR, NV, kAnd, false>(a, kw, w, 0, b, bytes);
    if (plain < w1) xnor_step<MR, NV, kAnd, true>(a, kw, plain, last_mask, b, bytes);
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) {
        const __m256i pairs = _mm256_maddubs_epi16(bytes[r][v], ones8);
        acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(pairs, ones16));
      }
    }
  }

  const __m256i kvec = _mm256_set1_epi32(static_cast<int>(g.k));
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    const __m256i base = kAnd ? _mm256_set1_epi32(g.a_popcount[row]) : kvec;
    if constexpr (kOut == GemmOutput::kBits) {
      // The fused FFN's intermediate: the panel's 16 columns' bits at once (dot in one of the
      // column's ranges), written as one half-word of the output row (zeroed by the caller;
      // panels start at multiples of 16 columns), as the AVX-512 path does.
      uint32_t bits = 0;
      for (int v = 0; v < NV; ++v) {
        const int64_t col = n + v * 8;
        if (col >= g.n) break;
        const __m256i dot = _mm256_sub_epi32(base, _mm256_slli_epi32(acc[r][v], 1));
        if (col + 8 > g.n) {  // a ragged right edge: element by element
          alignas(32) int32_t dots[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(dots), dot);
          for (int64_t l = 0; l < 8 && col + l < g.n; ++l) {
            bits |= static_cast<uint32_t>(output_bit(g, col + l, dots[l])) << (v * 8 + l);
          }
          continue;
        }
        __m256i in_range = _mm256_setzero_si256();
        for (int i = 0; i < g.bit_runs; ++i) {
          const int64_t at = i * g.n + col;
          const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_lo + at));
          const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_hi + at));
          // lo <= dot <= hi: neither lo > dot nor dot > hi
          const __m256i out =
              _mm256_or_si256(_mm256_cmpgt_epi32(lo, dot), _mm256_cmpgt_epi32(dot, hi));
          in_range = _mm256_or_si256(in_range, _mm256_xor_si256(out, _mm256_set1_epi32(-1)));
        }
        bits |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(in_range))) << (v * 8);
      }
      uint16_t* words = reinterpret_cast<uint16_t*>(static_cast<int32_t*>(g.out) +
                                                    row * packed_width(g.n));
      words[n / 16] = static_cast<uint16_t>(bits);
      continue;
    }
    for (int v = 0; v < NV; ++v) {
      const int64_t col = n + v * 8;
      if (col >= g.n) break;
      const __m256i dot = _mm256_sub_epi32(base, _mm256_slli_epi32(acc[r][v], 1));
      // A ragged right edge: element by element.
      if (col + 8 > g.n) {
        alignas(32) int32_t dots[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(dots), dot);
        for (int64_t l = 0; l < 8 && col + l < g.n; ++l) store_output(g, row, col + l, dots[l]);
        continue;
      }
      const int64_t at = row * g.n + col;
      if constexpr (kOut == GemmOutput::kDotInt32) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(g.out) + at), dot);
        continue;
      } else {
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(g.row_scale[row]));
        y = _mm256_mul_ps(y, _mm256_loadu_ps(g.col_scale + col));
        if (g.bias != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(g.bias + col));
        if (g.gelu) y = gelu8(y);
        if constexpr (kOut == GemmOutput::kFloat32) {
          _mm256_storeu_ps(static_cast<float*>(g.out) + at, y);
        } else {
          const __m128i h = _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(g.out) + at), h);
        }
      }
    }
  }
}

template <GemmOutput kOut, bool kAnd, int MR>
BITMAPS_AVX2_INLINE void run_micro(int mr, const GemmArgs& g, int64_t m, int64_t n) {
  if constexpr (MR > 1) {
    if (mr < MR) return run_micro<kOut, kAnd, MR - 1>(mr, g, m, n);
  }
  micro<MR, kNV, kOut, kAnd>(g, m, n);
}

template <GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void gemm_tile(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kPanelRows) {
    for (int64_t m = m0; m < m1; m += kMR) {
      run_micro<kOut, kAnd, kMR>(static_cast<int>(std::min<int64_t>(kMR, m1 - m)), g, m, n);
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

void pack_signs_f32_avx2(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF32, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_avx2(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF16, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_positive_f32_avx2(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF32, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void pack_positive_f16_avx2(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF16, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void xnor_gemm_tile_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (g.unsigned_a) return gemm_dispatch<true>(g, m0, m1, n0, n1);
  gemm_dispatch<false>(g, m0, m1, n0, n1);
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

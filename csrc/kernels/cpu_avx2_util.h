// Small AVX2 helpers the AVX2 float kernels share (cpu_attention_avx2.cpp,
// cpu_layer_norm_avx2.cpp; benchmarks/attention_int8_speed.cpp).
// Each carries the avx2 target attribute, so including this header needs no special flags; call
// them only on the AVX2 path.
#pragma once

#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#define BITMAPS_AVX2_UTIL __attribute__((target("avx2"), always_inline)) inline
#define BITMAPS_AVX2_FMA_UTIL __attribute__((target("avx2,fma"), always_inline)) inline

namespace bitmaps::cpu::detail {

// Lanes [0, valid) of 8 set, as a maskload / maskstore mask (all lanes when valid >= 8).
BITMAPS_AVX2_UTIL __m256i lanes8(int64_t valid) {
  const int n = static_cast<int>(std::min<int64_t>(std::max<int64_t>(valid, 0), 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 floats at p; kFull false: only the lanes of m (the rest load as 0 / are left alone). The masked
// forms (VMASKMOVPS) are kept to a row's last, partial vector: AMD cores before Zen 4 run a masked
// store as a slow microcoded sequence (on an AVX2 AMD EPYC, an add + LayerNorm that masked every
// store took 4-5x an AVX-512 Xeon's time per value).
template <bool kFull>
BITMAPS_AVX2_UTIL __m256 load8(const float* p, __m256i m) {
  if constexpr (kFull) {
    return _mm256_loadu_ps(p);
  } else {
    return _mm256_maskload_ps(p, m);
  }
}

template <bool kFull>
BITMAPS_AVX2_UTIL void store8(float* p, __m256i m, __m256 v) {
  if constexpr (kFull) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, m, v);
  }
}

// Calls step(i, full, mask) for the 8-float vectors of n values in order: std::true_type for whole
// vectors, std::false_type with the mask of the valid lanes for a partial last one.
template <class Step>
BITMAPS_AVX2_UTIL void each_vector8(int64_t n, const Step& step) {
  int64_t i = 0;
  const __m256i all = _mm256_set1_epi32(-1);
  for (; i + 8 <= n; i += 8) step(i, std::true_type{}, all);
  if (i < n) step(i, std::false_type{}, lanes8(n - i));
}

BITMAPS_AVX2_UTIL float reduce_add8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

BITMAPS_AVX2_UTIL float reduce_max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// v[i] (row i of an 8 x 8 block) -> v[j] = column j of it.
BITMAPS_AVX2_UTIL void transpose8(__m256 (&v)[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);      // r_i0 r_(i+1)0 r_i1 r_(i+1)1 | same, 4-5
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);  // r_i2 r_(i+1)2 r_i3 r_(i+1)3 | 6-7
  }
  __m256 u[8];
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = _mm256_shuffle_ps(t[i + h], t[i + 2 + h], 0x44);      // columns 2h (and +4)
      u[i + 2 * h + 1] = _mm256_shuffle_ps(t[i + h], t[i + 2 + h], 0xEE);  // 2h + 1 (and +4)
    }
  }
  // u[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low half) and columns 4-7 (high half); u[4..7]: rows 4-7
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    v[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// exp(x) for x <= 0 (NaN stays NaN; below -87.3 the result is 0, as in the other paths' attention
// kernels): Cephes' expf polynomial, 2^n put into the exponent bits. Needs FMA besides AVX2.
BITMAPS_AVX2_FMA_UTIL __m256 exp_nonpositive(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n for n in [-126, 0] (x >= -87.3): the biased exponent n + 127 in the exponent bits
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(tiny, e);  // NaN compares false: stays NaN
}

}  // namespace bitmaps::cpu::detail

#undef BITMAPS_AVX2_UTIL
#undef BITMAPS_AVX2_FMA_UTIL

#endif  // BITMAPS_HAVE_X86_PATHS

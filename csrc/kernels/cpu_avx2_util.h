// Small AVX2 helpers the AVX2 float kernels share (cpu_attention_avx2.cpp,
// cpu_layer_norm_avx2.cpp).
// Each carries the avx2 target attribute, so including this header needs no special flags; call
// them only on the AVX2 path.
#pragma once

#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#define BITMAPS_AVX2_UTIL __attribute__((target("avx2"), always_inline)) inline

namespace bitmaps::cpu::detail {

// Lanes [0, valid) of 8 set, as a maskload / maskstore mask (all lanes when valid >= 8).
BITMAPS_AVX2_UTIL __m256i lanes8(int64_t valid) {
  const int n = static_cast<int>(std::min<int64_t>(std::max<int64_t>(valid, 0), 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
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

}  // namespace bitmaps::cpu::detail

#undef BITMAPS_AVX2_UTIL

#endif  // BITMAPS_HAVE_X86_PATHS

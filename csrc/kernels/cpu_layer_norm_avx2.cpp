// The rows of cpu_layer_norm.h on AVX2: the AVX-512 kernel's steps (cpu_layer_norm_avx512.cpp) on
// 8-float vectors, the sums in four accumulators, masked loads and stores for a row's last values.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu_avx2_util.h"
#include "kernels/cpu_layer_norm.h"

#define BITMAPS_AVX2 __attribute__((target("avx2")))

namespace bitmaps::cpu::detail {
namespace {

// Calls step(i, full, mask, u) for the 8-float vectors of a row of n values: four at a time with
// u = 0..3 (independent accumulators), then the rest with u = 0; full is std::true_type for whole
// vectors (plain loads and stores) and std::false_type, with its mask, for a partial last one.
template <class Step>
BITMAPS_AVX2 inline void each_vector(int64_t n, const Step& step) {
  int64_t i = 0;
  const __m256i all = _mm256_set1_epi32(-1);
  for (; i + 32 <= n; i += 32) {
    for (int u = 0; u < 4; ++u) step(i + 8 * u, std::true_type{}, all, u);
  }
  each_vector8(n - i, [&](int64_t j, auto full, __m256i m) BITMAPS_AVX2 {
    step(i + j, full, m, 0);
  });
}

BITMAPS_AVX2 inline float sum4(const __m256 (&acc)[4]) {
  return reduce_add8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

}  // namespace

BITMAPS_AVX2 void add_layer_norm_rows_avx2(const AddLayerNormArgs& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = a.x + r * n;
    const float* skip = a.skip == nullptr ? nullptr : a.skip + r * n;
    float* out = a.out + r * n;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    each_vector(n, [&](int64_t i, auto full, __m256i m, int u) BITMAPS_AVX2 {
      constexpr bool kFull = decltype(full)::value;
      __m256 s = load8<kFull>(x + i, m);
      if (skip != nullptr) s = _mm256_add_ps(s, load8<kFull>(skip + i, m));
      store8<kFull>(out + i, m, s);
      acc[u] = _mm256_add_ps(acc[u], s);  // masked lanes loaded as 0
    });
    const __m256 mean = _mm256_set1_ps(sum4(acc) / static_cast<float>(n));
    for (auto& v : acc) v = _mm256_setzero_ps();
    each_vector(n, [&](int64_t i, auto full, __m256i m, int u) BITMAPS_AVX2 {
      __m256 d = _mm256_sub_ps(load8<decltype(full)::value>(out + i, m), mean);
      if constexpr (!decltype(full)::value) d = _mm256_and_ps(d, _mm256_castsi256_ps(m));
      acc[u] = _mm256_add_ps(acc[u], _mm256_mul_ps(d, d));
    });
    const float var = sum4(acc) / static_cast<float>(n);
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(var + a.epsilon));
    each_vector(n, [&](int64_t i, auto full, __m256i m, int) BITMAPS_AVX2 {
      constexpr bool kFull = decltype(full)::value;
      const __m256 d = _mm256_sub_ps(load8<kFull>(out + i, m), mean);
      __m256 y = _mm256_mul_ps(_mm256_mul_ps(d, inv), load8<kFull>(a.gamma + i, m));
      if (a.beta != nullptr) y = _mm256_add_ps(y, load8<kFull>(a.beta + i, m));
      store8<kFull>(out + i, m, y);
    });
  }
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

// The rows of cpu_layer_norm.h on AVX-512: the portable steps on 16-float vectors (the sums in four
// accumulators of 16 lanes, then across them), masked loads and stores for a row's last values.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own AVX-512 headers (_mm512_undefined_*, inlined here): a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu_kernels_internal.h"
#include "kernels/cpu_layer_norm.h"

#define BITMAPS_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))

namespace bitmaps::cpu::detail {

// Calls step(i, mask, u) for the 16-float vectors of a row of n values: four at a time with
// u = 0..3 (independent accumulators, so the sums are not one chain of dependent additions),
// then the rest with u = 0 and a mask on the last.
template <class Step>
BITMAPS_AVX512 inline void each_vector(int64_t n, const Step& step) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int u = 0; u < 4; ++u) step(i + 16 * u, static_cast<__mmask16>(0xFFFF), u);
  }
  for (; i < n; i += 16) step(i, static_cast<__mmask16>(lane_mask(n - i, 16)), 0);
}

BITMAPS_AVX512 inline float sum4(const __m512 (&acc)[4]) {
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

BITMAPS_AVX512 void add_layer_norm_rows_avx512(const AddLayerNormArgs& a, int64_t r0,
                                               int64_t r1) {
  const int64_t n = a.n;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = a.x + r * n;
    const float* skip = a.skip == nullptr ? nullptr : a.skip + r * n;
    float* out = a.out + r * n;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    each_vector(n, [&](int64_t i, __mmask16 m, int u) BITMAPS_AVX512 {
      __m512 s = _mm512_maskz_loadu_ps(m, x + i);
      if (skip != nullptr) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, skip + i));
      _mm512_mask_storeu_ps(out + i, m, s);
      acc[u] = _mm512_add_ps(acc[u], s);
    });
    const __m512 mean = _mm512_set1_ps(sum4(acc) / static_cast<float>(n));
    for (auto& v : acc) v = _mm512_setzero_ps();
    each_vector(n, [&](int64_t i, __mmask16 m, int u) BITMAPS_AVX512 {
      const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, out + i), mean);
      acc[u] = _mm512_fmadd_ps(d, d, acc[u]);
    });
    const float var = sum4(acc) / static_cast<float>(n);
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(var + a.epsilon));
    each_vector(n, [&](int64_t i, __mmask16 m, int) BITMAPS_AVX512 {
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, out + i), mean);
      __m512 y = _mm512_mul_ps(_mm512_mul_ps(d, inv), _mm512_maskz_loadu_ps(m, a.gamma + i));
      if (a.beta != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, a.beta + i));
      _mm512_mask_storeu_ps(out + i, m, y);
    });
  }
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

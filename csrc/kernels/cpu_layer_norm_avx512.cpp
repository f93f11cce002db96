// The rows of cpu_layer_norm.h on AVX-512: the portable steps on 16-float vectors (the sums in 16
// lanes, then across them), masked loads and stores for a row's last values.
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

BITMAPS_AVX512 void add_layer_norm_rows_avx512(const AddLayerNormArgs& a, int64_t r0,
                                               int64_t r1) {
  const int64_t n = a.n;
  const auto mask = [n](int64_t i) { return static_cast<__mmask16>(lane_mask(n - i, 16)); };
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = a.x + r * n;
    const float* skip = a.skip == nullptr ? nullptr : a.skip + r * n;
    float* out = a.out + r * n;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = mask(i);
      __m512 s = _mm512_maskz_loadu_ps(m, x + i);
      if (skip != nullptr) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, skip + i));
      _mm512_mask_storeu_ps(out + i, m, s);
      sum = _mm512_add_ps(sum, s);
    }
    const float mean_value = _mm512_reduce_add_ps(sum) / static_cast<float>(n);
    const __m512 mean = _mm512_set1_ps(mean_value);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = mask(i);
      const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, out + i), mean);
      sq = _mm512_add_ps(sq, _mm512_mul_ps(d, d));
    }
    const float var = _mm512_reduce_add_ps(sq) / static_cast<float>(n);
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(var + a.epsilon));
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = mask(i);
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, out + i), mean);
      __m512 y = _mm512_mul_ps(_mm512_mul_ps(d, inv), _mm512_maskz_loadu_ps(m, a.gamma + i));
      if (a.beta != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, a.beta + i));
      _mm512_mask_storeu_ps(out + i, m, y);
    }
  }
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

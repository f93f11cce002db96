// The rows of cpu_layer_norm.h on NEON (AArch64): the AVX-512 kernel's steps
// (cpu_layer_norm_avx512.cpp) on 4-float vectors, the sums in four accumulators; a row's last 1-3
// values one by one.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_NEON_PATH)

#include <arm_neon.h>

#include <cmath>

#include "kernels/cpu_layer_norm.h"

namespace bitmaps::cpu::detail {

void add_layer_norm_rows_neon(const AddLayerNormArgs& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n, full = n / 16 * 16, vec = n / 4 * 4;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = a.x + r * n;
    const float* skip = a.skip == nullptr ? nullptr : a.skip + r * n;
    float* out = a.out + r * n;
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f),
                          vdupq_n_f32(0.0f)};
    for (int64_t i = 0; i < vec; i += 4) {
      float32x4_t s = vld1q_f32(x + i);
      if (skip != nullptr) s = vaddq_f32(s, vld1q_f32(skip + i));
      vst1q_f32(out + i, s);
      const int u = i < full ? static_cast<int>((i / 4) % 4) : 0;
      acc[u] = vaddq_f32(acc[u], s);
    }
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    for (int64_t i = vec; i < n; ++i) {
      out[i] = skip == nullptr ? x[i] : x[i] + skip[i];
      sum += out[i];
    }
    const float mean = sum / static_cast<float>(n);
    const float32x4_t vmean = vdupq_n_f32(mean);
    for (auto& v : acc) v = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < vec; i += 4) {
      const float32x4_t d = vsubq_f32(vld1q_f32(out + i), vmean);
      const int u = i < full ? static_cast<int>((i / 4) % 4) : 0;
      acc[u] = vaddq_f32(acc[u], vmulq_f32(d, d));
    }
    float var = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    for (int64_t i = vec; i < n; ++i) var += (out[i] - mean) * (out[i] - mean);
    var /= static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(var + a.epsilon);
    const float32x4_t vinv = vdupq_n_f32(inv);
    for (int64_t i = 0; i < vec; i += 4) {
      const float32x4_t d = vsubq_f32(vld1q_f32(out + i), vmean);
      float32x4_t y = vmulq_f32(vmulq_f32(d, vinv), vld1q_f32(a.gamma + i));
      if (a.beta != nullptr) y = vaddq_f32(y, vld1q_f32(a.beta + i));
      vst1q_f32(out + i, y);
    }
    for (int64_t i = vec; i < n; ++i) {
      const float y = (out[i] - mean) * inv * a.gamma[i];
      out[i] = a.beta == nullptr ? y : y + a.beta[i];
    }
  }
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_NEON_PATH

// cpu_attention.h: the driver (one work item per (batch, head)) and the portable head kernel that
// every path without its own (scalar, AVX2 without FMA) runs.
#include "kernels/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace bitmaps::cpu {
namespace detail {
namespace {

// exp(x) for x <= 0 as the AVX-512 path computes it (Cephes' expf polynomial, 2^n from the
// exponent bits), written so the compiler vectorizes a loop of it; below -87.3 it is 0.
inline float exp_nonpositive(float x) {
  if (!(x >= -87.3f)) return x != x ? x : 0.0f;  // NaN stays NaN
  // round to nearest by the 1.5 * 2^23 trick (no libm call, so a loop of it vectorizes)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

}  // namespace

int64_t attention_scratch_floats(const AttentionArgs& a) {
  const int64_t tp = attention_padded_kv(a.kv_len);
  // AVX-512: K^T [D, tp], V [T, Dv], 1/sum [S], probabilities [S, tp]; portable: K^T, scores
  // [kAttentionRows, tp] and [Dv] (less than that sum, plus the margin)
  return a.head_dim * tp + a.kv_len * a.v_head_dim + (a.q_len + kAttentionRows) * (tp + 1) +
         a.v_head_dim + 64;
}

void attention_head_portable(const AttentionArgs& a, int64_t b, int64_t h, float* scratch) {
  const int64_t S = a.q_len, T = a.kv_len, D = a.head_dim, Dv = a.v_head_dim;
  const int64_t tp = attention_padded_kv(T), ldq = a.q_row(), ldk = a.k_row(), ldv = a.v_row();
  const int64_t ldo = a.heads * Dv;
  float* kt = scratch;                  // [D, tp]: scale * K of this head, transposed
  float* score = kt + D * tp;           // [T]
  float* acc = score + kAttentionRows * tp;  // [Dv]
  const float* k = a.k + b * T * ldk + h * D;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < D; ++d) kt[d * tp + t] = k[t * ldk + d] * a.scale;
  }
  const float* v = a.v + b * T * ldv + h * Dv;
  for (int64_t s = 0; s < S; ++s) {
    const float* q = a.q + (b * S + s) * ldq + h * D;
    std::fill(score, score + T, 0.0f);
    for (int64_t d = 0; d < D; ++d) {
      const float qd = q[d];
      const float* row = kt + d * tp;
      for (int64_t t = 0; t < T; ++t) score[t] += qd * row[t];
    }
    if (a.bias != nullptr) {
      const float* bias =
          a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] + s * a.bias_stride[2];
      for (int64_t t = 0; t < T; ++t) score[t] += bias[t];
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < T; ++t) top = std::max(top, score[t]);
    float sum = 0.0f;
    for (int64_t t = 0; t < T; ++t) {
      score[t] = exp_nonpositive(score[t] - top);
      sum += score[t];
    }
    std::fill(acc, acc + Dv, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const float p = score[t];
      const float* row = v + t * ldv;
      for (int64_t d = 0; d < Dv; ++d) acc[d] += p * row[d];
    }
    const float inv = 1.0f / sum;
    float* out = a.out + (b * S + s) * ldo + h * Dv;
    for (int64_t d = 0; d < Dv; ++d) out[d] = acc[d] * inv;
  }
}

}  // namespace detail

int attention(CpuPath path, const AttentionArgs& args, const Parallel& parallel) {
  const int64_t items = args.batch * args.heads;
  if (items <= 0 || args.q_len <= 0) return 0;
  const int64_t floats = args.int8 ? detail::attention_int8_scratch_floats(args)
                                    : detail::attention_scratch_floats(args);
  return parallel_claim(parallel, items, [&](int64_t item) {
    // One buffer per thread, kept between calls (a few tens of KB for BERT's heads).
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < floats) scratch.resize(static_cast<size_t>(floats));
    const int64_t b = item / args.heads, h = item % args.heads;
#if defined(BITMAPS_HAVE_X86_PATHS)
    // the AVX2 path asks for AVX2 and F16C only; its float attention kernel also uses FMA
    static const bool fma = __builtin_cpu_supports("fma");
    if (args.int8 && (path == CpuPath::kAvx512 || path == CpuPath::kAvx2)) {
      return detail::attention_head_int8_avx2(args, b, h, scratch.data());
    }
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
    if (args.int8 && path == CpuPath::kNeon && cpu_has_neon_dotprod()) {  // (cached there)
      return detail::attention_head_int8_neon(args, b, h, scratch.data());
    }
#endif
    if (args.int8) return detail::attention_head_int8_portable(args, b, h, scratch.data());
#if defined(BITMAPS_HAVE_X86_PATHS)
    if (path == CpuPath::kAvx512) return detail::attention_head_avx512(args, b, h, scratch.data());
    if (path == CpuPath::kAvx2 && fma) {
      return detail::attention_head_avx2(args, b, h, scratch.data());
    }
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
    if (path == CpuPath::kNeon) return detail::attention_head_neon(args, b, h, scratch.data());
#endif
    (void)path;
    detail::attention_head_portable(args, b, h, scratch.data());
  });
}

}  // namespace bitmaps::cpu

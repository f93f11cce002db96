// The NEON head kernel of cpu_attention.h (AArch64): the AVX-512 kernel's scheme
// (cpu_attention_avx512.cpp) on 4-float vectors. MR rows of the left operand are broadcast one
// value at a time against NV vectors of 4 neighbouring columns of the right one (6 x 4
// accumulators, 29 of the 32 registers):
//   scores[r, t]  += q[s0 + r, d] * (scale * K^T)[d, t]    (K^T laid out once per head)
//   out[r, d]     += p[r, t] * V[t, d]                     (V of the head copied contiguous)
// exp is the same Cephes expf polynomial, 2^n put into the exponent bits. A row's last 1-3 values
// go through a zero-padded 4-float buffer (NEON has no masked loads).
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_NEON_PATH)

#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_neon_util.h"

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = static_cast<int>(kAttentionRows);
constexpr int kNV = 4;  // 4-float vectors per block

// exp(x) for x <= 0 (NaN stays NaN; below -87.3 the result is 0, as in the other kernels).
BITMAPS_NEON_INLINE float32x4_t exp_nonpositive(float32x4_t x) {
  const uint32x4_t tiny = vcltq_f32(x, vdupq_n_f32(-87.3f));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  // 2^n for n in [-126, 0] (x >= -87.3): the biased exponent n + 127 in the exponent bits
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t e = vmulq_f32(p, vreinterpretq_f32_s32(bits));
  return vbslq_f32(tiny, vdupq_n_f32(0.0f), e);  // NaN compares false: stays NaN
}

// c[r, 4 j + i] (r < MR, j < NV) = sum_l a[r * lda + l] * b[l * ldb + 4 j + i] for l < len,
// times row_mul[r] when row_mul is given; only the first `cols` columns are read and written
// (kFull: all 4 * NV of them).
template <int MR, int NV, bool kFull>
BITMAPS_NEON_INLINE void block(const float* a, int64_t lda, const float* b, int64_t ldb,
                               int64_t len, int64_t cols, const float* row_mul, float* c,
                               int64_t ldc) {
  float32x4_t acc[MR][NV];
  BITMAPS_UNROLL for (int r = 0; r < MR; ++r) {
    BITMAPS_UNROLL for (int j = 0; j < NV; ++j) acc[r][j] = vdupq_n_f32(0.0f);
  }
  for (int64_t l = 0; l < len; ++l) {
    float32x4_t bv[NV];
    BITMAPS_UNROLL for (int j = 0; j < NV; ++j) {
      const float* bj = b + l * ldb + 4 * j;
      bv[j] = kFull ? vld1q_f32(bj) : load_part(bj, cols - 4 * j);
    }
    BITMAPS_UNROLL for (int r = 0; r < MR; ++r) {
      const float32x4_t av = vld1q_dup_f32(a + r * lda + l);
      BITMAPS_UNROLL for (int j = 0; j < NV; ++j) acc[r][j] = vfmaq_f32(acc[r][j], av, bv[j]);
    }
  }
  BITMAPS_UNROLL for (int r = 0; r < MR; ++r) {
    const float32x4_t mul = vdupq_n_f32(row_mul != nullptr ? row_mul[r] : 1.0f);
    BITMAPS_UNROLL for (int j = 0; j < NV; ++j) {
      const float32x4_t y = vmulq_f32(acc[r][j], mul);
      if (kFull) {
        vst1q_f32(c + r * ldc + 4 * j, y);
      } else {
        store_part(c + r * ldc + 4 * j, cols - 4 * j, y);
      }
    }
  }
}

// block() over `cols` columns: full chunks of kNV vectors, then the rest.
template <int MR>
BITMAPS_NEON_INLINE void rows_times(const float* a, int64_t lda, const float* b, int64_t ldb,
                                    int64_t len, int64_t cols, const float* row_mul, float* c,
                                    int64_t ldc) {
  int64_t c0 = 0;
  for (; c0 + 4 * kNV <= cols; c0 += 4 * kNV) {
    block<MR, kNV, true>(a, lda, b + c0, ldb, len, 4 * kNV, row_mul, c + c0, ldc);
  }
  const int64_t rest = cols - c0;
  const float* bc = b + c0;
  float* cc = c + c0;
  // rest < 4 * kNV columns: 1 to kNV vectors, the last one partial (a missing case left
  // columns unwritten: keys and value columns past a multiple of 16 by 13 or more)
  static_assert(kNV == 4, "the cases below cover 1 to 4 vectors");
  switch ((rest + 3) / 4) {
    case 1: block<MR, 1, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 2: block<MR, 2, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 3: block<MR, 3, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 4: block<MR, 4, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    default: break;
  }
}

// MR query rows from s0: scores, then exp(score - max) in p and 1 / sum in inv.
template <int MR>
void score_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0, const float* kt,
                float* p, float* inv) {
  const int64_t T = a.kv_len, D = a.head_dim;
  const int64_t tp = attention_padded_kv(T), ldq = a.q_row();
  const float* q = a.q + (b * a.q_len + s0) * ldq + h * D;
  rows_times<MR>(q, ldq, kt, tp, D, T, nullptr, p, tp);
  for (int r = 0; r < MR; ++r) {
    float* row = p + r * tp;
    const float* bias = a.bias == nullptr ? nullptr
                                          : a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] +
                                                (s0 + r) * a.bias_stride[2];
    float32x4_t top = vdupq_n_f32(-__builtin_inff());
    for (int64_t t = 0; t < T; t += 4) {
      const int64_t n = std::min<int64_t>(4, T - t);
      float32x4_t x = load_part(row + t, n);
      if (bias != nullptr) x = vaddq_f32(x, load_part(bias + t, n));
      store_part(row + t, n, x);
      if (n < 4) x = vbslq_f32(valid_lanes(n), x, vdupq_n_f32(-__builtin_inff()));
      top = vmaxq_f32(top, x);
    }
    const float32x4_t vmax = vdupq_n_f32(vmaxvq_f32(top));
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (int64_t t = 0; t < T; t += 4) {
      const int64_t n = std::min<int64_t>(4, T - t);
      float32x4_t e = exp_nonpositive(vsubq_f32(load_part(row + t, n), vmax));
      store_part(row + t, n, e);
      if (n < 4) e = vbslq_f32(valid_lanes(n), e, vdupq_n_f32(0.0f));  // padding lanes
      sum = vaddq_f32(sum, e);
    }
    inv[r] = 1.0f / vaddvq_f32(sum);
  }
}

// MR query rows from s0: the product of their probabilities p with V, normalized by inv, into out.
template <int MR>
void value_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0, const float* v,
                const float* p, const float* inv) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, tp = attention_padded_kv(T);
  const int64_t ldo = a.heads * Dv;
  float* out = a.out + (b * a.q_len + s0) * ldo + h * Dv;
  rows_times<MR>(p, tp, v, Dv, T, Dv, inv, out, ldo);
}

}  // namespace

void attention_head_neon(const AttentionArgs& a, int64_t b, int64_t h, float* scratch) {
  const int64_t T = a.kv_len, D = a.head_dim, tp = attention_padded_kv(T), ldk = a.k_row();
  const HeadScratch hs = head_scratch(a, scratch);
  float* kt = hs.kt;
  const float* k = a.k + b * T * ldk + h * D;
  for (int64_t t = 0; t < tp; ++t) {
    for (int64_t d = 0; d < D; ++d) kt[d * tp + t] = t < T ? k[t * ldk + d] * a.scale : 0.0f;
  }
  copy_head_values(a, b, h, hs.v);
  row_blocks(a.q_len, [&](auto mr, int64_t s0) {
    score_rows<mr()>(a, b, h, s0, kt, hs.p + s0 * tp, hs.inv + s0);
  });
  row_blocks(a.q_len, [&](auto mr, int64_t s0) {
    value_rows<mr()>(a, b, h, s0, hs.v, hs.p + s0 * tp, hs.inv + s0);
  });
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_NEON_PATH

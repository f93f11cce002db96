// The int8 attention of cpu_attention.h (AttentionArgs::int8) on AArch64 with the dot-product
// extension (SDOT; attention() picks it where cpu_has_neon_dotprod(), else the NEON path runs the
// portable kernel). The same bits as the portable and AVX2 kernels (cpu_attention_int8.cpp): the
// integers are exact, and every float32 step is the same operation in the same order, none fused
// (the build's -ffp-contract=off keeps vmulq + vaddq apart), rounding to nearest even (FRINTN,
// FCVTNS) as VROUNDPS and VCVTPS2DQ do.
//
// Layout per head (Int8Head of cpu_attention_int8.h; dp, tp, dvp as there):
//   q  [S][dp]                 int8 rows
//   k  [tp / 4][dp / 4][4][4]  4 keys x 4 consecutive dimensions per 16-byte vector
//   v  [tp / 4][dvp / 4][4][4] 4 columns x 4 consecutive keys per 16-byte vector
//   p  [S][tp]                 the rounded probabilities (0 past T; 0..127, so also int8)
// SDOT by element: acc[i] += sum_j a[4 i + j] * b[4 l + j]. Scores: a = 4 keys' group of 4
// dimensions, b = 16 dimensions of a query row, lane l = the group. P V: a = 4 columns' group of 4
// keys, b = 16 levels of a row, lane l = the key group. Blocks of 4 query rows x 16 keys (or 16
// columns): 16 accumulators, 4 row vectors, 4 operand vectors (24 of the 32 registers); every
// block's scores and levels first, then the attended keys, V rounded over them, then every
// block's products with V, as on AVX2.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_NEON_PATH)

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_attention_int8.h"
#include "kernels/cpu_neon_util.h"

#define BITMAPS_DOTPROD_INLINE BITMAPS_DOTPROD __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = kInt8MR;

// x * mul rounded to nearest even (as lrintf), 16 lanes narrowed to int8 (|x * mul| <= 127).
BITMAPS_DOTPROD_INLINE int8x16_t round16(const float32x4_t (&x)[4], float32x4_t mul) {
  int32x4_t q[4];
  BITMAPS_UNROLL
  for (int j = 0; j < 4; ++j) q[j] = vcvtnq_s32_f32(vmulq_f32(x[j], mul));
  const int16x8_t lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
  const int16x8_t hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
  return vcombine_s8(vmovn_s16(lo), vmovn_s16(hi));
}

// n floats at x rounded into out[0, padded) (padded a multiple of 16; zeros past n); the scale.
// The maximum ignores NaN as the portable kernel's std::max does (FMAXNM).
BITMAPS_DOTPROD float round_row(const float* x, int64_t n, int64_t padded, int8_t* out) {
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int64_t i = 0; i < n; i += 4) m = vmaxnmq_f32(m, vabsq_f32(load_part(x + i, n - i)));
  const RowScale rs = row_scale(vmaxnmvq_f32(m));
  const float32x4_t mul = vdupq_n_f32(rs.mul);
  for (int64_t i = 0; i < padded; i += 16) {
    float32x4_t v[4];
    BITMAPS_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = load_part(x + i + 4 * j, n - i - 4 * j);
    vst1q_s8(out + i, round16(v, mul));
  }
  return rs.scale;
}

// The level of 4 lanes: cpu_attention_int8.h's operations in their order.
BITMAPS_DOTPROD_INLINE int32x4_t level4(float32x4_t x) {
  const float32x4_t floor = vdupq_n_f32(kExpFloor);
  x = vbslq_f32(vcgtq_f32(x, floor), x, floor);  // x > -6 ? x : -6 (NaN and -inf -> -6)
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(kLog2e)));
  const float32x4_t r = vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(kLn2)));
  float32x4_t p = vdupq_n_f32(kExpPoly[0]);
  for (int i = 1; i < 4; ++i) p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(kExpPoly[i]));
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.0f));
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t e = vmulq_f32(p, vreinterpretq_f32_s32(bits));
  return vcvtnq_s32_f32(vmulq_f32(e, vdupq_n_f32(kInt8Levels)));
}

// Q's rows and K's of head h of batch b rounded into w's layout.
BITMAPS_DOTPROD void layout_qk(const AttentionArgs& a, int64_t b, int64_t h, const Int8Head& w) {
  const int64_t S = a.q_len, T = a.kv_len, D = a.head_dim;
  const int64_t ldq = a.q_row(), ldk = a.k_row();
  for (int64_t s = 0; s < S; ++s) {
    w.sq[s] = round_row(a.q + (b * S + s) * ldq + h * D, D, w.dp, w.q + s * w.dp);
  }
  const float* k = a.k + b * T * ldk + h * D;
  const int64_t groups = w.dp / 4;
  for (int64_t t = 0; t < w.tp; ++t) {
    int8_t* row = w.kblock;
    if (t < T) {
      w.ksc[t] = round_row(k + t * ldk, D, w.dp, row) * a.scale;
    } else {
      std::memset(row, 0, static_cast<size_t>(w.dp));
      w.ksc[t] = 0.0f;
    }
    int8_t* dst = w.k + (t / 4) * groups * 16 + (t % 4) * 4;
    for (int64_t g = 0; g < groups; ++g) std::memcpy(dst + g * 16, row + 4 * g, 4);
  }
}

// V of head h of batch b rounded into w's layout: per column, a scale over the attended keys;
// the other keys 0.
BITMAPS_DOTPROD void layout_v(const AttentionArgs& a, int64_t b, int64_t h, const Int8Head& w) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, ldv = a.v_row();
  const float* v = a.v + b * T * ldv + h * Dv;
  for (int64_t d = 0; d < w.dvp; d += 4) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int64_t t = 0; t < T; ++t) {
      if (w.attended[t] != 0) m = vmaxnmq_f32(m, vabsq_f32(load_part(v + t * ldv + d, Dv - d)));
    }
    float amax[4];
    vst1q_f32(amax, m);
    for (int i = 0; i < 4; ++i) {
      const RowScale rs = row_scale(amax[i]);
      w.vmul[d + i] = rs.mul;
      w.sv[d + i] = rs.scale;
    }
  }
  const int64_t groups = w.dvp / 4;
  for (int64_t t = 0; t < w.tp; ++t) {
    const bool used = t < T && w.attended[t] != 0;
    int8_t* dst = w.v + (t / 4) * groups * 16 + (t % 4);
    for (int64_t d = 0; d < w.dvp; d += 4) {
      const float32x4_t x = used ? load_part(v + t * ldv + d, Dv - d) : vdupq_n_f32(0.0f);
      int32_t q[4];
      vst1q_s32(q, vcvtnq_s32_f32(vmulq_f32(x, vld1q_f32(w.vmul + d))));
      for (int i = 0; i < 4; ++i) dst[d * 4 + i * 4] = static_cast<int8_t>(q[i]);
    }
  }
}

// Rows [s0, s0 + MR): scores, their maximum, the rounded probabilities and their sum.
template <int MR>
BITMAPS_DOTPROD void scores(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                            const Int8Head& w) {
  const int64_t T = a.kv_len, groups = w.dp / 4;
  const float32x4_t minus_inf = vdupq_n_f32(-std::numeric_limits<float>::infinity());
  const float* bias[MR];
  float32x4_t top[MR];
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    bias[r] = a.bias == nullptr ? nullptr
              : a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] +
                    (s0 + r) * a.bias_stride[2];
    top[r] = minus_inf;
  }
  for (int64_t t0 = 0; t0 < w.tp; t0 += 16) {
    int32x4_t acc[MR][4];
    BITMAPS_UNROLL
    for (int r = 0; r < MR; ++r) {
      BITMAPS_UNROLL
      for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_s32(0);
    }
    for (int64_t d = 0; d < w.dp; d += 16) {
      int8x16_t q[MR];
      BITMAPS_UNROLL
      for (int r = 0; r < MR; ++r) q[r] = vld1q_s8(w.q + (s0 + r) * w.dp + d);
      BITMAPS_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int8_t* kb = w.k + ((t0 / 4 + j) * groups + d / 4) * 16;
        const int8x16_t k0 = vld1q_s8(kb), k1 = vld1q_s8(kb + 16), k2 = vld1q_s8(kb + 32),
                        k3 = vld1q_s8(kb + 48);
        BITMAPS_UNROLL
        for (int r = 0; r < MR; ++r) {
          acc[r][j] = vdotq_laneq_s32(acc[r][j], k0, q[r], 0);
          acc[r][j] = vdotq_laneq_s32(acc[r][j], k1, q[r], 1);
          acc[r][j] = vdotq_laneq_s32(acc[r][j], k2, q[r], 2);
          acc[r][j] = vdotq_laneq_s32(acc[r][j], k3, q[r], 3);
        }
      }
    }
    BITMAPS_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t t = t0 + 4 * j;
      const float32x4_t ksc = vld1q_f32(w.ksc + t);
      const uint32x4_t valid = valid_lanes(std::clamp<int64_t>(T - t, 0, 4));
      BITMAPS_UNROLL
      for (int r = 0; r < MR; ++r) {
        float32x4_t y = vmulq_f32(
            vmulq_f32(vcvtq_f32_s32(acc[r][j]), vdupq_n_f32(w.sq[s0 + r])), ksc);
        if (bias[r] != nullptr) y = vaddq_f32(y, load_part(bias[r] + t, T - t));
        if (t + 4 > T) y = vbslq_f32(valid, y, minus_inf);
        top[r] = vmaxq_f32(top[r], y);
        vst1q_f32(w.scores + r * w.tp + t, y);
      }
    }
  }
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    const float32x4_t vmax = vdupq_n_f32(vmaxvq_f32(top[r]));
    uint32x4_t sum = vdupq_n_u32(0);
    uint8_t* p = w.p + (s0 + r) * w.tp;
    const float* row = w.scores + r * w.tp;
    for (int64_t t = 0; t < w.tp; t += 16) {
      int32x4_t l[4];
      BITMAPS_UNROLL
      for (int j = 0; j < 4; ++j) l[j] = level4(vsubq_f32(vld1q_f32(row + t + 4 * j), vmax));
      const uint32x4_t l01 = vaddq_u32(vreinterpretq_u32_s32(l[0]), vreinterpretq_u32_s32(l[1]));
      const uint32x4_t l23 = vaddq_u32(vreinterpretq_u32_s32(l[2]), vreinterpretq_u32_s32(l[3]));
      sum = vaddq_u32(sum, vaddq_u32(l01, l23));
      const int16x8_t lo = vcombine_s16(vmovn_s32(l[0]), vmovn_s32(l[1]));
      const int16x8_t hi = vcombine_s16(vmovn_s32(l[2]), vmovn_s32(l[3]));
      vst1q_u8(p + t, vcombine_u8(vmovn_u16(vreinterpretq_u16_s16(lo)),
                                  vmovn_u16(vreinterpretq_u16_s16(hi))));
    }
    w.total[s0 + r] = static_cast<float>(vaddvq_u32(sum));
  }
}

// Key group L (4 keys, 16 columns at vb) of a block's products with V: lane L of each row's 16
// levels against the 4 columns' vectors.
template <int L, int MR>
BITMAPS_DOTPROD_INLINE void values_group(int32x4_t (&acc)[MR][4], const int8_t* vb,
                                         const int8x16_t (&p)[MR]) {
  int8x16_t v[4];
  BITMAPS_UNROLL
  for (int j = 0; j < 4; ++j) v[j] = vld1q_s8(vb + 16 * j);
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    BITMAPS_UNROLL
    for (int j = 0; j < 4; ++j) acc[r][j] = vdotq_laneq_s32(acc[r][j], v[j], p[r], L);
  }
}

// Rows [s0, s0 + MR) of the output: the products of their probabilities with V.
template <int MR>
BITMAPS_DOTPROD void values(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                            const Int8Head& w) {
  const int64_t S = a.q_len, Dv = a.v_head_dim, ldo = a.heads * Dv, groups = w.dvp / 4;
  float* out = a.out + (b * S + s0) * ldo + h * Dv;
  for (int64_t c0 = 0; c0 < w.dvp; c0 += 16) {
    int32x4_t acc[MR][4];
    BITMAPS_UNROLL
    for (int r = 0; r < MR; ++r) {
      BITMAPS_UNROLL
      for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_s32(0);
    }
    for (int64_t t = 0; t < w.tp; t += 16) {
      int8x16_t p[MR];
      BITMAPS_UNROLL
      for (int r = 0; r < MR; ++r) {
        p[r] = vreinterpretq_s8_u8(vld1q_u8(w.p + (s0 + r) * w.tp + t));
      }
      const int8_t* vb = w.v + (t / 4 * groups + c0 / 4) * 16;
      values_group<0>(acc, vb, p);
      values_group<1>(acc, vb + groups * 16, p);
      values_group<2>(acc, vb + 2 * groups * 16, p);
      values_group<3>(acc, vb + 3 * groups * 16, p);
    }
    BITMAPS_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t d = c0 + 4 * j;
      if (d >= Dv) break;
      const float32x4_t sv = vld1q_f32(w.sv + d);
      BITMAPS_UNROLL
      for (int r = 0; r < MR; ++r) {
        const float32x4_t y = vdivq_f32(vmulq_f32(vcvtq_f32_s32(acc[r][j]), sv),
                                        vdupq_n_f32(w.total[s0 + r]));
        store_part(out + r * ldo + d, Dv - d, y);
      }
    }
  }
}

}  // namespace

BITMAPS_DOTPROD void attention_head_int8_neon(const AttentionArgs& a, int64_t b, int64_t h,
                                              float* scratch) {
  const Int8Head w = int8_head(a, scratch);
  layout_qk(a, b, h, w);
  int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { scores<mr()>(a, b, h, s0, w); });
  // the keys some row gives a level > 0: the OR of every row's levels
  for (int64_t t = 0; t < w.tp; t += 16) {
    uint8x16_t any = vdupq_n_u8(0);
    for (int64_t s = 0; s < a.q_len; ++s) any = vorrq_u8(any, vld1q_u8(w.p + s * w.tp + t));
    vst1q_u8(w.attended + t, any);
  }
  layout_v(a, b, h, w);
  int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { values<mr()>(a, b, h, s0, w); });
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_NEON_PATH

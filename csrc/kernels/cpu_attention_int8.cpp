// The int8 attention of cpu_attention.h (AttentionArgs::int8): the portable head kernel, and the
// AVX2 one (VPSIGNB / VPMADDUBSW / VPMADDWD) that the AVX2 and AVX-512 paths run. Both compute
// the same bits: the same float32 operations in the same order, none fused (exp_level), so that a
// probability rounds to the same 0..127 level on every path and in torch and ONNX as well.
//
// AVX2 layout per head (scratch, 32-byte aligned), Dp = D rounded up to 32, tp = T rounded up to
// 16, Dvp = Dv rounded up to 16 (the padding zero):
//   q  [S][Dp]                int8 rows
//   k  [tp / 8][Dp / 4][8][4] 8 keys x 4 consecutive dimensions per 32-byte vector
//   v  [tp / 4][Dvp / 8][8][4] 8 columns x 4 consecutive keys per 32-byte vector
//   p  [S][tp]                the rounded probabilities (0 past T)
// Blocks of 4 query rows x 16 keys (scores) or 16 columns (P V): every block's scores and rounded
// probabilities first, then the attended keys (the OR of the levels), V rounded over them, then
// every block's products with V.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_attention_int8.h"

#if defined(BITMAPS_HAVE_X86_PATHS)
#include <immintrin.h>

#include "kernels/cpu_avx2_util.h"
#endif

namespace bitmaps::cpu::detail {
namespace {

// The probability level of x = score - row max (cpu_attention_int8.h), in scalar code.
inline float exp_level(float x) {
  // -inf (a masked key of a row with a finite maximum) -> -6; NaN -> -6 as VMAXPS gives it
  x = x > kExpFloor ? x : kExpFloor;
  const float n = std::nearbyint(x * kLog2e);  // to nearest even, as VROUNDPS
  const float r = x - n * kLn2;
  float p = kExpPoly[0];
  for (int i = 1; i < 4; ++i) p = p * r + kExpPoly[i];
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-9, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return std::nearbyint(p * two_n * kInt8Levels);
}

inline int8_t round_int8(float x, float mul) { return static_cast<int8_t>(std::lrintf(x * mul)); }

}  // namespace

int64_t attention_int8_scratch_floats(const AttentionArgs& a) {
  const int64_t S = a.q_len, dp = int8_round_up(a.head_dim, 32),
                tp = int8_round_up(a.kv_len, 16), dvp = int8_round_up(a.v_head_dim, 16);
  // + the AVX2 key block and the attended keys
  const int64_t bytes = S * dp + tp * dp + tp * dvp + S * tp + 8 * dp + tp;
  const int64_t floats = 2 * S + tp + 2 * dvp + kAttentionInt8Rows * tp;
  return (bytes + 3) / 4 + floats + 12 * 8 + 8;  // + 32-byte alignment of each of 12 arrays
}

void attention_head_int8_portable(const AttentionArgs& a, int64_t b, int64_t h, float* scratch) {
  const int64_t S = a.q_len, T = a.kv_len, D = a.head_dim, Dv = a.v_head_dim;
  const int64_t ldq = a.q_row(), ldk = a.k_row(), ldv = a.v_row(), ldo = a.heads * Dv;
  float* ksc = scratch;     // [T]: key scale * attention scale
  float* sv = ksc + T;      // [Dv]: value column scales
  float* score = sv + Dv;   // [T]
  float* total = score + T; // [S]: each row's sum of levels
  auto* k8 = reinterpret_cast<int8_t*>(total + S);  // [T][D]
  int8_t* v8 = k8 + T * D;                           // [T][Dv]
  int8_t* q8 = v8 + T * Dv;                          // [D]
  auto* p = reinterpret_cast<uint8_t*>(q8 + D);      // [S][T]
  uint8_t* attended = p + S * T;                     // [T]: some row's level > 0
  auto round_into = [](const float* x, int64_t n, int64_t stride, int8_t* out, int64_t out_stride,
                       const uint8_t* use) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (use == nullptr || use[i] != 0) amax = std::max(amax, std::fabs(x[i * stride]));
    }
    const RowScale rs = row_scale(amax);
    for (int64_t i = 0; i < n; ++i) {
      const bool used = use == nullptr || use[i] != 0;
      out[i * out_stride] = used ? round_int8(x[i * stride], rs.mul) : int8_t{0};
    }
    return rs.scale;
  };
  const float* k = a.k + b * T * ldk + h * D;
  for (int64_t t = 0; t < T; ++t) {
    ksc[t] = round_into(k + t * ldk, D, 1, k8 + t * D, 1, nullptr) * a.scale;
  }
  std::fill(attended, attended + T, uint8_t{0});
  for (int64_t s = 0; s < S; ++s) {
    const float sq = round_into(a.q + (b * S + s) * ldq + h * D, D, 1, q8, 1, nullptr);
    const float* bias = a.bias == nullptr ? nullptr
                        : a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] +
                              s * a.bias_stride[2];
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < T; ++t) {
      int32_t dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += q8[d] * k8[t * D + d];
      float y = static_cast<float>(dot) * sq * ksc[t];
      if (bias != nullptr) y = y + bias[t];
      score[t] = y;
      top = std::max(top, y);
    }
    int32_t sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      const auto level = static_cast<uint8_t>(exp_level(score[t] - top));
      p[s * T + t] = level;
      attended[t] |= level;
      sum += level;
    }
    total[s] = static_cast<float>(sum);
  }
  // V's column scales over the attended keys only (a padding key's value changes nothing)
  const float* v = a.v + b * T * ldv + h * Dv;
  for (int64_t d = 0; d < Dv; ++d) sv[d] = round_into(v + d, T, ldv, v8 + d, Dv, attended);
  for (int64_t s = 0; s < S; ++s) {
    float* out = a.out + (b * S + s) * ldo + h * Dv;
    for (int64_t d = 0; d < Dv; ++d) {
      int32_t acc = 0;
      for (int64_t t = 0; t < T; ++t) acc += p[s * T + t] * v8[t * Dv + d];
      out[d] = static_cast<float>(acc) * sv[d] / total[s];
    }
  }
}

#if defined(BITMAPS_HAVE_X86_PATHS)

#define BITMAPS_INT8 __attribute__((target("avx2")))
#define BITMAPS_INT8_INLINE BITMAPS_INT8 __attribute__((always_inline)) inline

namespace {

constexpr int kMR = kInt8MR;

// 32 int32 lanes of a, b, c, d (8 each) -> 32 int8 in that order (|x| <= 127: no saturation).
BITMAPS_INT8_INLINE __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The 8 floats at x + i of a row of n (lanes past n: 0, unread; lanes8 clamps to no lane).
BITMAPS_INT8_INLINE __m256 row8(const float* x, int64_t i, int64_t n) {
  return i + 8 <= n ? load8<true>(x + i, __m256i{}) : load8<false>(x + i, lanes8(n - i));
}

// n floats at x rounded into out[padded] (padded a multiple of 32; zeros past n); the scale.
// Rows of up to 64 values (head sizes up to 64) are loaded once and kept in registers.
BITMAPS_INT8_INLINE float round_row(const float* x, int64_t n, int64_t padded, int8_t* out) {
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
  if (padded <= 64) {
    __m256 v[8];
    for (int j = 0; j < 8; ++j) {
      v[j] = row8(x, 8 * j, n);
      m = _mm256_max_ps(m, _mm256_and_ps(v[j], abs));
    }
    const RowScale rs = row_scale(reduce_max8(m));
    const __m256 mul = _mm256_set1_ps(rs.mul);
    for (int64_t i = 0; i < padded; i += 32) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i / 8 + j], mul));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + i), pack32(q[0], q[1], q[2], q[3]));
    }
    return rs.scale;
  }
  for (int64_t i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(row8(x, i, n), abs));
  const RowScale rs = row_scale(reduce_max8(m));
  const __m256 mul = _mm256_set1_ps(rs.mul);
  for (int64_t i = 0; i < padded; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(row8(x, i + 8 * j, n), mul));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + i), pack32(q[0], q[1], q[2], q[3]));
  }
  return rs.scale;
}

// exp_level on 8 lanes (as int32): the same operations in the same order.
BITMAPS_INT8_INLINE __m256i level8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpFloor));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kLn2)));
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 4; ++i) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  return _mm256_cvtps_epi32(_mm256_mul_ps(e, _mm256_set1_ps(kInt8Levels)));
}

// The 4 bytes at p in every 32-bit lane.
BITMAPS_INT8_INLINE __m256i broadcast4(const void* p) {
  int32_t x;
  std::memcpy(&x, p, 4);
  return _mm256_set1_epi32(x);
}

// acc + the sums of 4 products u8 x s8 per 32-bit lane (VPMADDUBSW, VPMADDWD by ones).
BITMAPS_INT8_INLINE __m256i dot4(__m256i acc, __m256i u8, __m256i s8, __m256i ones) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), ones));
}

// Q and K of head h of batch b rounded into w's layout.
BITMAPS_INT8 void int8_layout_qk(const AttentionArgs& a, int64_t b, int64_t h, const Int8Head& w) {
  const int64_t S = a.q_len, T = a.kv_len, D = a.head_dim;
  const int64_t ldq = a.q_row(), ldk = a.k_row();
  for (int64_t s = 0; s < S; ++s) {
    w.sq[s] = round_row(a.q + (b * S + s) * ldq + h * D, D, w.dp, w.q + s * w.dp);
  }
  // K: blocks of 8 keys rounded, then each 8 x 8 block of 4-byte groups transposed
  const float* k = a.k + b * T * ldk + h * D;
  for (int64_t t0 = 0; t0 < w.tp; t0 += 8) {
    for (int64_t j = 0; j < 8; ++j) {
      const int64_t t = t0 + j;
      int8_t* row = w.kblock + j * w.dp;
      if (t < T) {
        w.ksc[t] = round_row(k + t * ldk, D, w.dp, row) * a.scale;
      } else {
        std::memset(row, 0, static_cast<size_t>(w.dp));
        w.ksc[t] = 0.0f;
      }
    }
    int8_t* dst = w.k + t0 * w.dp;  // block t0 / 8: dp / 4 vectors of 32 bytes
    for (int64_t c = 0; c < w.dp / 32; ++c) {
      __m256 g[8];
      for (int j = 0; j < 8; ++j) {
        g[j] = _mm256_load_ps(reinterpret_cast<const float*>(w.kblock + j * w.dp + 32 * c));
      }
      transpose8(g);
      for (int dg = 0; dg < 8; ++dg) {
        _mm256_store_ps(reinterpret_cast<float*>(dst + (8 * c + dg) * 32), g[dg]);
      }
    }
  }
}

// V of head h of batch b rounded into w's layout: per column, a scale over the attended keys
// (w.attended, after every row's levels); groups of 4 keys x 8 columns interleaved, the other
// keys 0.
BITMAPS_INT8 void int8_layout_v(const AttentionArgs& a, int64_t b, int64_t h, const Int8Head& w) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, ldv = a.v_row();
  const float* v = a.v + b * T * ldv + h * Dv;
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t c0 = 0; c0 < w.dvp; c0 += 64) {  // 8 vectors of column maxima at a time
    const int64_t vectors = std::min<int64_t>(8, (w.dvp - c0) / 8);
    __m256 m[8];
    for (auto& x : m) x = _mm256_setzero_ps();
    for (int64_t t = 0; t < T; ++t) {
      if (w.attended[t] == 0) continue;
      for (int64_t j = 0; j < vectors; ++j) {
        m[j] = _mm256_max_ps(m[j], _mm256_and_ps(row8(v + t * ldv, c0 + 8 * j, Dv), abs));
      }
    }
    for (int64_t j = 0; j < vectors; ++j) {
      alignas(32) float amax[8];
      _mm256_store_ps(amax, m[j]);
      for (int i = 0; i < 8; ++i) {
        const RowScale rs = row_scale(amax[i]);
        w.vmul[c0 + 8 * j + i] = rs.mul;
        w.sv[c0 + 8 * j + i] = rs.scale;
      }
    }
  }
  // bytes (key i, column j) of a 128-bit lane at 4 i + j -> at 4 j + i
  const __m256i interleave = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11,
                                              15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7,
                                              11, 15);
  const int64_t groups = w.dvp / 8;
  for (int64_t t0 = 0; t0 < w.tp; t0 += 4) {
    for (int64_t c = 0; c < groups; ++c) {
      const __m256 mul = _mm256_load_ps(w.vmul + 8 * c);
      __m256i r[4];
      for (int i = 0; i < 4; ++i) {
        const int64_t t = t0 + i;
        const __m256 x =
            t < T && w.attended[t] != 0 ? row8(v + t * ldv, 8 * c, Dv) : _mm256_setzero_ps();
        r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(x, mul));
      }
      // per 128-bit lane: keys 0-3 x columns 0-3 (low lane) / 4-7 (high lane), key-major
      const __m256i bytes =
          _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(w.v + (t0 / 4 * groups + c) * 32),
                         _mm256_shuffle_epi8(bytes, interleave));
    }
  }
}

// Rows [s0, s0 + MR): scores, their maximum, the rounded probabilities and their sum.
// kGroups: w.dp / 4 when known at compile time (head sizes 32 and 64), else 0.
template <int MR, int kGroups>
BITMAPS_INT8 void int8_scores(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                                     const Int8Head& w) {
  const int64_t T = a.kv_len;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const float* bias[MR];
  for (int r = 0; r < MR; ++r) {
    bias[r] = a.bias == nullptr ? nullptr
              : a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] +
                    (s0 + r) * a.bias_stride[2];
  }
  __m256 top[MR];
  for (int r = 0; r < MR; ++r) top[r] = minus_inf;
  const int64_t groups = kGroups != 0 ? kGroups : w.dp / 4;
  for (int64_t t0 = 0; t0 < w.tp; t0 += 16) {
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const int8_t* k0 = w.k + t0 * w.dp;
    const int8_t* k1 = k0 + 8 * w.dp;
    for (int64_t dg = 0; dg < groups; ++dg) {
      const __m256i kv0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(k0 + 32 * dg));
      const __m256i kv1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(k1 + 32 * dg));
      for (int r = 0; r < MR; ++r) {
        const __m256i qs = broadcast4(w.q + (s0 + r) * w.dp + 4 * dg);
        const __m256i qa = _mm256_abs_epi8(qs);
        acc[r][0] = dot4(acc[r][0], qa, _mm256_sign_epi8(kv0, qs), ones);
        acc[r][1] = dot4(acc[r][1], qa, _mm256_sign_epi8(kv1, qs), ones);
      }
    }
    for (int j = 0; j < 2; ++j) {
      const int64_t t = t0 + 8 * j;
      const __m256 ksc = _mm256_load_ps(w.ksc + t);
      const __m256 valid = _mm256_castsi256_ps(lanes8(T - t));
      for (int r = 0; r < MR; ++r) {
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][j]),
                                               _mm256_set1_ps(w.sq[s0 + r])), ksc);
        if (bias[r] != nullptr) y = _mm256_add_ps(y, row8(bias[r], t, T));
        if (t + 8 > T) y = _mm256_blendv_ps(minus_inf, y, valid);
        top[r] = _mm256_max_ps(top[r], y);
        _mm256_store_ps(w.scores + r * w.tp + t, y);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m256 vmax = _mm256_set1_ps(reduce_max8(top[r]));
    __m256i sum = _mm256_setzero_si256();
    uint8_t* p = w.p + (s0 + r) * w.tp;
    for (int64_t t = 0; t < w.tp; t += 16) {
      const float* row = w.scores + r * w.tp + t;
      const __m256i lo = level8(_mm256_sub_ps(_mm256_load_ps(row), vmax));
      const __m256i hi = level8(_mm256_sub_ps(_mm256_load_ps(row + 8), vmax));
      sum = _mm256_add_epi32(sum, _mm256_add_epi32(lo, hi));
      const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
      const __m128i bytes =
          _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + t), bytes);
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    w.total[s0 + r] = static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

// Rows [s0, s0 + MR) of the output: the products of their probabilities with V.
template <int MR>
BITMAPS_INT8 void int8_values(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                                     const Int8Head& w) {
  const int64_t S = a.q_len, Dv = a.v_head_dim, ldo = a.heads * Dv;
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t groups = w.dvp / 8;
  float* out = a.out + (b * S + s0) * ldo + h * Dv;
  for (int64_t c = 0; c < groups; c += 2) {
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t t = 0; t < w.tp; t += 4) {
      const int8_t* vg = w.v + (t / 4 * groups + c) * 32;
      const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(vg));
      const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(vg + 32));
      for (int r = 0; r < MR; ++r) {
        const __m256i pb = broadcast4(w.p + (s0 + r) * w.tp + t);
        acc[r][0] = dot4(acc[r][0], pb, v0, ones);
        acc[r][1] = dot4(acc[r][1], pb, v1, ones);
      }
    }
    for (int j = 0; j < 2; ++j) {
      const int64_t d = 8 * (c + j);
      if (d >= Dv) break;
      const __m256 sv = _mm256_load_ps(w.sv + d);
      for (int r = 0; r < MR; ++r) {
        const __m256 y = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][j]), sv),
                                       _mm256_set1_ps(w.total[s0 + r]));
        if (d + 8 <= Dv) {
          _mm256_storeu_ps(out + r * ldo + d, y);
        } else {
          _mm256_maskstore_ps(out + r * ldo + d, lanes8(Dv - d), y);
        }
      }
    }
  }
}

}  // namespace

BITMAPS_INT8 void attention_head_int8_avx2(const AttentionArgs& a, int64_t b, int64_t h,
                                           float* scratch) {
  const Int8Head w = int8_head(a, scratch);
  int8_layout_qk(a, b, h, w);
  if (w.dp == 64) {
    int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { int8_scores<mr(), 16>(a, b, h, s0, w); });
  } else if (w.dp == 32) {
    int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { int8_scores<mr(), 8>(a, b, h, s0, w); });
  } else {
    int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { int8_scores<mr(), 0>(a, b, h, s0, w); });
  }
  // the keys some row gives a level > 0: the OR of every row's levels
  for (int64_t t = 0; t < w.tp; t += 16) {
    __m128i any = _mm_setzero_si128();
    for (int64_t s = 0; s < a.q_len; ++s) {
      any = _mm_or_si128(any, _mm_load_si128(reinterpret_cast<const __m128i*>(w.p + s * w.tp + t)));
    }
    _mm_store_si128(reinterpret_cast<__m128i*>(w.attended + t), any);
  }
  int8_layout_v(a, b, h, w);
  int8_row_blocks(a.q_len, [&](auto mr, int64_t s0) { int8_values<mr()>(a, b, h, s0, w); });
}

#undef BITMAPS_INT8_INLINE
#undef BITMAPS_INT8

#endif  // BITMAPS_HAVE_X86_PATHS

}  // namespace bitmaps::cpu::detail

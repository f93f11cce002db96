// The AVX-512 head kernel of cpu_attention.h. Both products use one register-blocked shape: MR
// rows of the left operand broadcast one value at a time against NV vectors of 16 neighbouring
// columns of the right one, so the MR x NV accumulators hold whole output vectors:
//   scores[r, t]  += q[s0 + r, d] * (scale * K^T)[d, t]    (K^T laid out once per head)
//   out[r, d]     += p[r, t] * V[t, d]                     (V of the head copied contiguous)
// exp is Cephes' expf polynomial with 2^n applied by VSCALEFPS.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_kernels_internal.h"

#define BITMAPS_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define BITMAPS_AVX512_INLINE BITMAPS_AVX512 __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = static_cast<int>(kAttentionRows);
constexpr int kNV = 4;  // 16-float vectors per block: 6 x 4 accumulators (measured best of 3-8 x 2-4)

// The first `valid` of 16 lanes (cpu_kernels_internal.h's lane_mask).
inline __mmask16 lanes(int64_t valid) { return static_cast<__mmask16>(lane_mask(valid, 16)); }

// exp(x) for x <= 0 (NaN stays NaN; below -87.3 the result is 0, as in the portable kernel).
BITMAPS_AVX512_INLINE __m512 exp_nonpositive(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), tiny, _mm512_setzero_ps());
}

// c[r, 16 j + i] (r < MR, j < NV) = sum_l a[r * lda + l] * b[l * ldb + 16 j + i] for l < len,
// times row_mul[r] when row_mul is given; only the first `cols` columns are read and written
// (kFull: all 16 * NV of them, with plain loads and stores).
template <int MR, int NV, bool kFull>
BITMAPS_AVX512_INLINE void block(const float* a, int64_t lda, const float* b, int64_t ldb,
                                 int64_t len, int64_t cols, const float* row_mul, float* c,
                                 int64_t ldc) {
  __mmask16 mask[NV];
  for (int j = 0; j < NV; ++j) mask[j] = kFull ? static_cast<__mmask16>(0xFFFF) : lanes(cols - 16 * j);
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t l = 0; l < len; ++l) {
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j) {
      bv[j] = kFull ? _mm512_loadu_ps(b + l * ldb + 16 * j)
                    : _mm512_maskz_loadu_ps(mask[j], b + l * ldb + 16 * j);
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + l]);
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 mul = row_mul != nullptr ? _mm512_set1_ps(row_mul[r]) : _mm512_set1_ps(1.0f);
    for (int j = 0; j < NV; ++j) {
      const __m512 y = _mm512_mul_ps(acc[r][j], mul);
      if (kFull) {
        _mm512_storeu_ps(c + r * ldc + 16 * j, y);
      } else {
        _mm512_mask_storeu_ps(c + r * ldc + 16 * j, mask[j], y);
      }
    }
  }
}

// block() over `cols` columns: full chunks of kNV vectors, then the rest.
template <int MR>
BITMAPS_AVX512_INLINE void rows_times(const float* a, int64_t lda, const float* b, int64_t ldb,
                                      int64_t len, int64_t cols, const float* row_mul, float* c,
                                      int64_t ldc) {
  int64_t c0 = 0;
  for (; c0 + 16 * kNV <= cols; c0 += 16 * kNV) {
    block<MR, kNV, true>(a, lda, b + c0, ldb, len, 16 * kNV, row_mul, c + c0, ldc);
  }
  const int64_t rest = cols - c0;
  const float* bc = b + c0;
  float* cc = c + c0;
  // rest < 16 * kNV columns: 1 to kNV vectors, the last one partial (a missing case left
  // columns unwritten: keys and value columns past a multiple of 64 by 49 or more)
  static_assert(kNV == 4, "the cases below cover 1 to 4 vectors");
  switch ((rest + 15) / 16) {
    case 1: block<MR, 1, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 2: block<MR, 2, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 3: block<MR, 3, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    case 4: block<MR, 4, false>(a, lda, bc, ldb, len, rest, row_mul, cc, ldc); break;
    default: break;
  }
}

// MR query rows from s0: scores, then exp(score - max) in p and 1 / sum in inv.
template <int MR>
BITMAPS_AVX512 void score_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                               const float* kt, float* p, float* inv) {
  const int64_t T = a.kv_len, D = a.head_dim;
  const int64_t tp = attention_padded_kv(T), ldq = a.q_row();
  const float* q = a.q + (b * a.q_len + s0) * ldq + h * D;
  rows_times<MR>(q, ldq, kt, tp, D, T, nullptr, p, tp);
  for (int r = 0; r < MR; ++r) {
    float* row = p + r * tp;
    const float* bias = a.bias == nullptr ? nullptr
                                          : a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] +
                                                (s0 + r) * a.bias_stride[2];
    __m512 top = _mm512_set1_ps(-__builtin_inff());
    for (int64_t t = 0; t < T; t += 16) {
      const __mmask16 m = lanes(T - t);
      __m512 x = _mm512_maskz_loadu_ps(m, row + t);
      if (bias != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + t));
      _mm512_mask_storeu_ps(row + t, m, x);
      top = _mm512_mask_max_ps(top, m, top, x);
    }
    const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t += 16) {
      const __mmask16 m = lanes(T - t);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + t), vmax));
      _mm512_mask_storeu_ps(row + t, m, e);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
    }
    inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
  }
}

// MR query rows from s0: the product of their probabilities p with V, normalized by inv, into out.
template <int MR>
BITMAPS_AVX512 void value_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                               const float* v, const float* p, const float* inv) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, tp = attention_padded_kv(T);
  const int64_t ldo = a.heads * Dv;
  float* out = a.out + (b * a.q_len + s0) * ldo + h * Dv;
  rows_times<MR>(p, tp, v, Dv, T, Dv, inv, out, ldo);
}

}  // namespace

BITMAPS_AVX512 void attention_head_avx512(const AttentionArgs& a, int64_t b, int64_t h,
                                          float* scratch) {
  const int64_t T = a.kv_len, D = a.head_dim, tp = attention_padded_kv(T), ldk = a.k_row();
  const HeadScratch hs = head_scratch(a, scratch);
  float* kt = hs.kt;
  const float* k = a.k + b * T * ldk + h * D;
  // K^T by gathers of 16 keys at a time (a masked gather for the last, padding columns zero).
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                                                           4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(static_cast<int>(ldk)));
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int64_t t = 0; t < tp; t += 16) {
    const __mmask16 m = lanes(T - t);
    const float* kt0 = k + t * ldk;
    for (int64_t d = 0; d < D; ++d) {
      const __m512 col = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, rows, kt0 + d, 4);
      _mm512_storeu_ps(kt + d * tp + t, _mm512_mul_ps(col, scale));
    }
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

#endif  // BITMAPS_HAVE_X86_PATHS

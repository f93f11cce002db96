// The AVX2 + FMA head kernel of cpu_attention.h: the AVX-512 kernel's scheme
// (cpu_attention_avx512.cpp) on 8-float vectors. MR rows of the left operand are broadcast one
// value at a time against NV vectors of 8 neighbouring columns of the right one (6 x 2
// accumulators, 15 of the 16 registers):
//   scores[r, t]  += q[s0 + r, d] * (scale * K^T)[d, t]    (K^T laid out once per head)
//   out[r, d]     += p[r, t] * V[t, d]                     (V of the head copied contiguous)
// exp is the same Cephes expf polynomial, 2^n put into the exponent bits. Used on the AVX2 path
// where the CPU also has FMA (cpu_attention.cpp checks); the portable kernel otherwise.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_avx2_util.h"
#include "kernels/cpu_kernels_internal.h"

#define BITMAPS_AVX2 __attribute__((target("avx2,fma")))
#define BITMAPS_AVX2_INLINE BITMAPS_AVX2 __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = static_cast<int>(kAttentionRows);
constexpr int kNV = 2;  // 8-float vectors per block

// What a block of scores does after its products (Scores::bias null: no bias): adds row r's bias
// (bias + r * bias_ld, at the block's columns) and keeps the running maximum of each row's valid
// columns in max[r], so that the softmax needs no pass of its own for them.
struct Scores {
  const float* bias = nullptr;
  int64_t bias_ld = 0;
  __m256* max = nullptr;
};

// c[r, 8 j + i] (r < MR, j < NV) = sum_l a[r * lda + l] * b[l * ldb + 8 j + i] for l < len,
// times row_mul[r] when row_mul is given; only the first `cols` columns are read and written
// (kFull: all 8 * NV of them, with plain loads and stores). kScores: then `scores`' bias and
// maxima (row_mul is null there).
template <int MR, int NV, bool kFull, bool kScores = false>
BITMAPS_AVX2_INLINE void block(const float* a, int64_t lda, const float* b, int64_t ldb,
                               int64_t len, int64_t cols, const float* row_mul, float* c,
                               int64_t ldc, const Scores& scores = {}) {
  __m256i mask[NV];
  for (int j = 0; j < NV; ++j) mask[j] = lanes8(kFull ? 8 : cols - 8 * j);
  __m256 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_setzero_ps();
  }
  for (int64_t l = 0; l < len; ++l) {
    __m256 bv[NV];
    for (int j = 0; j < NV; ++j) {
      bv[j] = kFull ? _mm256_loadu_ps(b + l * ldb + 8 * j)
                    : _mm256_maskload_ps(b + l * ldb + 8 * j, mask[j]);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + l);
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m256 mul = row_mul != nullptr ? _mm256_set1_ps(row_mul[r]) : _mm256_set1_ps(1.0f);
    for (int j = 0; j < NV; ++j) {
      __m256 y = _mm256_mul_ps(acc[r][j], mul);
      if constexpr (kScores) {
        if (scores.bias != nullptr) {
          y = _mm256_add_ps(y, load8<kFull>(scores.bias + r * scores.bias_ld + 8 * j, mask[j]));
        }
        const __m256 top = _mm256_max_ps(scores.max[r], y);
        scores.max[r] = kFull ? top : _mm256_blendv_ps(scores.max[r], top,
                                                       _mm256_castsi256_ps(mask[j]));
      }
      if (kFull) {
        _mm256_storeu_ps(c + r * ldc + 8 * j, y);
      } else {
        _mm256_maskstore_ps(c + r * ldc + 8 * j, mask[j], y);
      }
    }
  }
}

// block() over `cols` columns: full chunks of kNV vectors, then the rest (kScores: `scores`' bias
// from its column 0 on).
template <int MR, bool kScores = false>
BITMAPS_AVX2_INLINE void rows_times(const float* a, int64_t lda, const float* b, int64_t ldb,
                                    int64_t len, int64_t cols, const float* row_mul, float* c,
                                    int64_t ldc, const Scores& scores = {}) {
  const auto at = [&](int64_t c0) {
    Scores s = scores;
    if (s.bias != nullptr) s.bias += c0;
    return s;
  };
  int64_t c0 = 0;
  for (; c0 + 8 * kNV <= cols; c0 += 8 * kNV) {
    block<MR, kNV, true, kScores>(a, lda, b + c0, ldb, len, 8 * kNV, row_mul, c + c0, ldc,
                                  at(c0));
  }
  const int64_t rest = cols - c0;
  if (rest > 8) {
    block<MR, 2, false, kScores>(a, lda, b + c0, ldb, len, rest, row_mul, c + c0, ldc, at(c0));
  } else if (rest > 0) {
    block<MR, 1, false, kScores>(a, lda, b + c0, ldb, len, rest, row_mul, c + c0, ldc, at(c0));
  }
}

// MR query rows from s0: scores, then exp(score - max) in p and 1 / sum in inv.
template <int MR>
BITMAPS_AVX2 void score_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                             const float* kt, float* p, float* inv) {
  const int64_t T = a.kv_len, D = a.head_dim;
  const int64_t tp = attention_padded_kv(T), ldq = a.q_row();
  const float* q = a.q + (b * a.q_len + s0) * ldq + h * D;
  // the scores with their bias added and each row's maximum, in the products' own pass
  __m256 top[MR];
  for (int r = 0; r < MR; ++r) top[r] = _mm256_set1_ps(-__builtin_inff());
  Scores scores;
  scores.max = top;
  if (a.bias != nullptr) {
    scores.bias = a.bias + b * a.bias_stride[0] + h * a.bias_stride[1] + s0 * a.bias_stride[2];
    scores.bias_ld = a.bias_stride[2];
  }
  rows_times<MR, true>(q, ldq, kt, tp, D, T, nullptr, p, tp, scores);
  for (int r = 0; r < MR; ++r) {
    float* row = p + r * tp;
    const __m256 vmax = _mm256_set1_ps(reduce_max8(top[r]));
    __m256 sum = _mm256_setzero_ps();
    const auto exp_sum = [&](int64_t t, auto full, __m256i m) BITMAPS_AVX2 {
      constexpr bool kFull = decltype(full)::value;
      const __m256 e = exp_nonpositive(_mm256_sub_ps(load8<kFull>(row + t, m), vmax));
      store8<kFull>(row + t, m, e);
      sum = _mm256_add_ps(sum, kFull ? e : _mm256_and_ps(e, _mm256_castsi256_ps(m)));
    };
    each_vector8(T, exp_sum);
    inv[r] = 1.0f / reduce_add8(sum);
  }
}

// MR query rows from s0: the product of their probabilities p with V, normalized by inv, into out.
template <int MR>
BITMAPS_AVX2 void value_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t s0,
                             const float* v, const float* p, const float* inv) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, tp = attention_padded_kv(T);
  const int64_t ldo = a.heads * Dv;
  float* out = a.out + (b * a.q_len + s0) * ldo + h * Dv;
  rows_times<MR>(p, tp, v, Dv, T, Dv, inv, out, ldo);
}

}  // namespace

BITMAPS_AVX2 void attention_head_avx2(const AttentionArgs& a, int64_t b, int64_t h,
                                      float* scratch) {
  const int64_t T = a.kv_len, D = a.head_dim, tp = attention_padded_kv(T), ldk = a.k_row();
  const HeadScratch hs = head_scratch(a, scratch);
  float* kt = hs.kt;
  const float* k = a.k + b * T * ldk + h * D;
  // K^T: 8 keys x 8 dimensions at a time transposed in registers; the last dimensions (D not a
  // multiple of 8) and the last keys (T not a multiple of 8; padding columns zero) by gathers,
  // 8 keys at a time (masked). On Zen 3 the gathers were 7 % of a BERT-base head.
  const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32(static_cast<int>(ldk)));
  const __m256 scale = _mm256_set1_ps(a.scale);
  const int64_t full_t = T / 8 * 8, full_d = D / 8 * 8;
  for (int64_t t = 0; t < full_t; t += 8) {
    for (int64_t d = 0; d < full_d; d += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(k + (t + i) * ldk + d);
      transpose8(v);
      for (int j = 0; j < 8; ++j) {
        _mm256_storeu_ps(kt + (d + j) * tp + t, _mm256_mul_ps(v[j], scale));
      }
    }
    for (int64_t d = full_d; d < D; ++d) {
      const __m256 col = _mm256_i32gather_ps(k + t * ldk + d, rows, 4);
      _mm256_storeu_ps(kt + d * tp + t, _mm256_mul_ps(col, scale));
    }
  }
  for (int64_t t = full_t; t < tp; t += 8) {
    const __m256 m = _mm256_castsi256_ps(lanes8(T - t));
    const float* kt0 = k + std::min(t, T - 1) * ldk;
    for (int64_t d = 0; d < D; ++d) {
      const __m256 col = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), kt0 + d, rows, m, 4);
      _mm256_storeu_ps(kt + d * tp + t, _mm256_mul_ps(col, scale));
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

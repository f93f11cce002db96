// How fast would attention be in int8 on an AVX2 CPU? A prototype head kernel timed against the
// float kernel bitmaps ships (csrc/kernels/cpu_attention.h, the onnxruntime target's attention),
// on one thread, BERT-base's shape: 12 heads of 64, 128 positions, Q K V side by side in one
// [128, 3 * 768] tensor, a zero key-padding bias [1, 1, 1, 128] as in the model.
//
// The prototype rounds as bench_attention_int8_accuracy.py emulates (the accuracy side):
//   Q, K: int8 per row (scale max|row| / 127); scores = the int32 dot products (VPSIGNB +
//         VPMADDUBSW on |q| and k * sign(q), VPMADDWD to int32) times both scales and the
//         attention scale, + bias; a row's maximum kept on the way;
//   exp(score - max) in (0, 1] rounded to 0..127 (u7: VPMADDUBSW's 16-bit pair sums cannot
//         saturate), their integer sum per row;
//   V: int8 per column over the keys; out = the int32 products (VPMADDUBSW + VPMADDWD) times the
//         column scale / the row's sum.
// 4 query rows x 16 keys (or 16 output columns) per block, K and V laid out once per head as
// [keys / 8][D / 4][8][4] and [T / 4][Dv / 8][8][4] bytes. A scalar version of the same integer
// scheme checks it (the outputs must agree to float rounding), and the float kernel's output
// against it shows the rounding's size. Built and run by bench_attention_int8_speed.py; writes one
// JSON object per line: {"kernel", "us"} per round (12 heads, the mean of `reps` calls), then
// {"check": ...}.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_avx2_util.h"

namespace {

constexpr int S = 128, T = 128, D = 64, Dv = 64, H = 12, LD = 3 * H * D, MR = 4;

struct Head {  // one head's int8 operands and scratch
  alignas(32) int8_t q[S][D];
  float sq[S];
  alignas(32) int8_t kl[T / 8][D / 4][8][4];
  float sk[T];
  alignas(32) float scores[S][T];
  alignas(32) uint8_t p[S][T];
  float inv[S];
  alignas(32) int8_t vl[T / 4][Dv / 8][8][4];
  float sv[Dv];
};

// 127 / max |x| (0 for a zero row) and the scale it stands for (max |x| / 127, 1 for a zero row):
// the values are rounded as x * mul, in float32, by both versions below.
struct RowScale {
  float mul, scale;
};
inline RowScale row_scale(float amax) {
  return amax > 0.0f ? RowScale{127.0f / amax, amax / 127.0f} : RowScale{0.0f, 1.0f};
}

// Rounds n values to int8 with one scale.
template <class Get>
float round_row(int n, const Get& get, int8_t* out) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(get(i)));
  const RowScale rs = row_scale(amax);
  for (int i = 0; i < n; ++i) out[i] = static_cast<int8_t>(std::lrintf(get(i) * rs.mul));
  return rs.scale;
}

// Q, K and V of head h rounded and laid out, element by element (the scalar version's).
void layout(const float* qkv, int h, Head& w) {
  for (int s = 0; s < S; ++s) {
    const float* row = qkv + s * LD + h * D;
    w.sq[s] = round_row(D, [&](int i) { return row[i]; }, w.q[s]);
  }
  for (int t = 0; t < T; ++t) {
    const float* row = qkv + t * LD + H * D + h * D;
    int8_t k[D];
    w.sk[t] = round_row(D, [&](int i) { return row[i]; }, k);
    for (int d = 0; d < D; ++d) w.kl[t / 8][d / 4][t % 8][d % 4] = k[d];
  }
  for (int d = 0; d < Dv; ++d) {
    const float* col = qkv + 2 * H * D + h * Dv + d;
    int8_t v[T];
    w.sv[d] = round_row(T, [&](int i) { return col[i * LD]; }, v);
    for (int t = 0; t < T; ++t) w.vl[t / 4][d / 8][d % 8][t % 4] = v[t];
  }
}

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

AVX2_INLINE float hmax8(__m256 v) { return bitmaps::cpu::detail::reduce_max8(v); }

// 32 int32 lanes of a, b, c, d (8 each) -> 32 int8 in that order (saturating; |x| <= 127 here).
AVX2_INLINE __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One row of 64 floats rounded into 64 int8 at out; returns the scale.
AVX2_INLINE float round_row64(const float* x, int8_t* out) {
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 v[8], m = _mm256_setzero_ps();
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    m = _mm256_max_ps(m, _mm256_and_ps(v[i], abs));
  }
  const RowScale rs = row_scale(hmax8(m));
  const __m256 mul = _mm256_set1_ps(rs.mul);
  __m256i q[8];
  for (int i = 0; i < 8; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], mul));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), pack32(q[0], q[1], q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), pack32(q[4], q[5], q[6], q[7]));
  return rs.scale;
}

// The same layout in AVX2: rows rounded 8 floats at a time, K's blocks of 8 keys transposed as
// 8 x 8 blocks of 4-byte groups, V's columns scaled over the keys and 4 keys' bytes interleaved.
AVX2 void layout_avx2(const float* qkv, int h, Head& w) {
  for (int s = 0; s < S; ++s) w.sq[s] = round_row64(qkv + s * LD + h * D, w.q[s]);
  alignas(32) int8_t k[8][D];
  for (int tb = 0; tb < T / 8; ++tb) {
    for (int j = 0; j < 8; ++j) {
      const int t = 8 * tb + j;
      w.sk[t] = round_row64(qkv + t * LD + H * D + h * D, k[j]);
    }
    for (int half = 0; half < 2; ++half) {  // 4-byte groups 0-7, then 8-15
      __m256 g[8];
      for (int j = 0; j < 8; ++j) {
        g[j] = _mm256_load_ps(reinterpret_cast<const float*>(k[j]) + 8 * half);
      }
      bitmaps::cpu::detail::transpose8(g);
      for (int dg = 0; dg < 8; ++dg) {
        _mm256_store_ps(reinterpret_cast<float*>(w.kl[tb][8 * half + dg]), g[dg]);
      }
    }
  }
  const float* v = qkv + 2 * H * D + h * Dv;
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m[Dv / 8];
  for (auto& x : m) x = _mm256_setzero_ps();
  for (int t = 0; t < T; ++t) {
    for (int c = 0; c < Dv / 8; ++c) {
      m[c] = _mm256_max_ps(m[c], _mm256_and_ps(_mm256_loadu_ps(v + t * LD + 8 * c), abs));
    }
  }
  __m256 mul[Dv / 8];
  for (int c = 0; c < Dv / 8; ++c) {
    alignas(32) float amax[8], mv[8];
    _mm256_store_ps(amax, m[c]);
    for (int i = 0; i < 8; ++i) {
      const RowScale rs = row_scale(amax[i]);
      mv[i] = rs.mul;
      w.sv[8 * c + i] = rs.scale;
    }
    mul[c] = _mm256_load_ps(mv);
  }
  // bytes (row r, column c) of a 128-bit lane at 4 r + c -> at 4 c + r
  const __m256i interleave = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                              0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int tg = 0; tg < T / 4; ++tg) {
    for (int c = 0; c < Dv / 8; ++c) {
      __m256i r[4];
      for (int i = 0; i < 4; ++i) {
        const __m256 x = _mm256_loadu_ps(v + (4 * tg + i) * LD + 8 * c);
        r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(x, mul[c]));
      }
      // per 128-bit lane: rows 0-3 x columns 0-3 (low lane) / 4-7 (high lane), row-major
      const __m256i bytes =
          _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(w.vl[tg][c]),
                         _mm256_shuffle_epi8(bytes, interleave));
    }
  }
}

// 32 bytes at p (32-byte aligned).
AVX2_INLINE __m256i load32(const void* p) {
  return _mm256_load_si256(static_cast<const __m256i*>(p));
}

// The 4 bytes at p in every 32-bit lane.
AVX2_INLINE __m256i broadcast4(const void* p) {
  float f;
  std::memcpy(&f, p, 4);
  return _mm256_castps_si256(_mm256_set1_ps(f));
}

// acc + the sums of 4 products u8 x s8 per 32-bit lane (VPMADDUBSW, then VPMADDWD by ones).
AVX2_INLINE __m256i dot4(__m256i acc, __m256i u8, __m256i s8, __m256i ones) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), ones));
}

// exp(score - max) of 8 scores at p, rounded to 0..127.
AVX2_INLINE __m256i probs8(const float* p, __m256 vmax) {
  const __m256 e = bitmaps::cpu::detail::exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(p), vmax));
  return _mm256_cvtps_epi32(_mm256_mul_ps(e, _mm256_set1_ps(127.0f)));
}

AVX2 void head_avx2(const float* qkv, const float* bias, int h, float scale, Head& w,
                    float* out) {
  layout_avx2(qkv, h, w);
  const __m256i ones = _mm256_set1_epi16(1);
  // scores, 4 rows x 16 keys per block
  for (int s0 = 0; s0 < S; s0 += MR) {
    __m256 top[MR];
    for (int r = 0; r < MR; ++r) top[r] = _mm256_set1_ps(-INFINITY);
    for (int tb = 0; tb < T / 16; ++tb) {
      __m256i acc[MR][2];
      for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      for (int dg = 0; dg < D / 4; ++dg) {
        const __m256i k0 = load32(w.kl[2 * tb][dg]), k1 = load32(w.kl[2 * tb + 1][dg]);
        for (int r = 0; r < MR; ++r) {
          const __m256i qs = broadcast4(&w.q[s0 + r][4 * dg]);
          const __m256i qa = _mm256_abs_epi8(qs);
          acc[r][0] = dot4(acc[r][0], qa, _mm256_sign_epi8(k0, qs), ones);
          acc[r][1] = dot4(acc[r][1], qa, _mm256_sign_epi8(k1, qs), ones);
        }
      }
      for (int j = 0; j < 2; ++j) {
        const int t = 16 * tb + 8 * j;
        const __m256 ksc = _mm256_mul_ps(_mm256_loadu_ps(w.sk + t), _mm256_set1_ps(scale));
        const __m256 b = _mm256_loadu_ps(bias + t);
        for (int r = 0; r < MR; ++r) {
          const __m256 y = _mm256_add_ps(
              _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][j]),
                                          _mm256_set1_ps(w.sq[s0 + r])), ksc), b);
          top[r] = _mm256_max_ps(top[r], y);
          _mm256_store_ps(&w.scores[s0 + r][t], y);
        }
      }
    }
    // exp(score - max) rounded to 0..127, and 1 / the sum of the rounded values
    for (int r = 0; r < MR; ++r) {
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(top[r]), _mm256_extractf128_ps(top[r], 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      const __m256 vmax = _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))));
      __m256i sum = _mm256_setzero_si256();
      for (int t = 0; t < T; t += 16) {
        const __m256i a = probs8(&w.scores[s0 + r][t], vmax);
        const __m256i b = probs8(&w.scores[s0 + r][t + 8], vmax);
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(a, b));
        const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
        const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w16),
                                               _mm256_extracti128_si256(w16, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(&w.p[s0 + r][t]), bytes);
      }
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      w.inv[s0 + r] = 1.0f / static_cast<float>(_mm_cvtsi128_si32(s4));
    }
  }
  // P V, 4 rows x 16 columns per block
  for (int s0 = 0; s0 < S; s0 += MR) {
    for (int db = 0; db < Dv / 16; ++db) {
      __m256i acc[MR][2];
      for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      for (int tg = 0; tg < T / 4; ++tg) {
        const __m256i v0 = load32(w.vl[tg][2 * db]), v1 = load32(w.vl[tg][2 * db + 1]);
        for (int r = 0; r < MR; ++r) {
          const __m256i pb = broadcast4(&w.p[s0 + r][4 * tg]);
          acc[r][0] = dot4(acc[r][0], pb, v0, ones);
          acc[r][1] = dot4(acc[r][1], pb, v1, ones);
        }
      }
      for (int j = 0; j < 2; ++j) {
        const int d = 16 * db + 8 * j;
        const __m256 vs = _mm256_loadu_ps(w.sv + d);
        for (int r = 0; r < MR; ++r) {
          const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][j]), vs),
                                         _mm256_set1_ps(w.inv[s0 + r]));
          _mm256_storeu_ps(out + (s0 + r) * H * Dv + h * Dv + d, y);
        }
      }
    }
  }
}

// The same integer scheme, element by element (exp from libm: the rounded probabilities may
// differ from the kernel's in a last-bit case, so the check allows a small difference).
void head_scalar(const float* qkv, const float* bias, int h, float scale, Head& w, float* out) {
  layout(qkv, h, w);
  for (int s = 0; s < S; ++s) {
    float top = -INFINITY;
    for (int t = 0; t < T; ++t) {
      int32_t dot = 0;
      for (int d = 0; d < D; ++d) dot += w.q[s][d] * w.kl[t / 8][d / 4][t % 8][d % 4];
      w.scores[s][t] = static_cast<float>(dot) * w.sq[s] * (w.sk[t] * scale) + bias[t];
      top = std::max(top, w.scores[s][t]);
    }
    int32_t sum = 0;
    for (int t = 0; t < T; ++t) {
      w.p[s][t] = static_cast<uint8_t>(std::lrintf(std::exp(w.scores[s][t] - top) * 127.0f));
      sum += w.p[s][t];
    }
    for (int d = 0; d < Dv; ++d) {
      int32_t acc = 0;
      for (int t = 0; t < T; ++t) acc += w.p[s][t] * w.vl[t / 4][d / 8][d % 8][t % 4];
      out[s * H * Dv + h * Dv + d] = static_cast<float>(acc) * w.sv[d] / static_cast<float>(sum);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 50;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> qkv(S * LD), bias(T, 0.0f), out_f(S * H * Dv), out_i(S * H * Dv),
      out_s(S * H * Dv), out_b(S * H * Dv);
  for (auto& v : qkv) v = normal(rng) * 2.0f;
  const float scale = 0.125f;
  auto* head = static_cast<Head*>(std::aligned_alloc(64, (sizeof(Head) + 63) / 64 * 64));

  bitmaps::cpu::AttentionArgs a;
  static_assert(S == T && D == Dv, "one packed Q K V tensor");
  a.set_packed(qkv.data(), 1, S, H, D);
  a.scale = scale;
  const int64_t dims[4] = {1, 1, 1, T};
  a.set_bias(bias.data(), dims);
  a.out = out_f.data();
  const bitmaps::cpu::Parallel serial;
  const bitmaps::cpu::CpuPath path = bitmaps::cpu::best_cpu_path();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

  bitmaps::cpu::AttentionArgs a8 = a;  // the shipped int8 kernel (cpu_attention_int8.cpp)
  a8.int8 = true;
  a8.out = out_b.data();
  for (int round = 0; round < rounds; ++round) {
    double us[3] = {0, 0, 0};
    for (int rep = 0; rep < reps; ++rep) {
      for (int k = 0; k < 3; ++k) {  // in turns
        const auto t0 = std::chrono::steady_clock::now();
        if (k == 0) {
          bitmaps::cpu::attention(path, a, serial);
        } else if (k == 2) {
          bitmaps::cpu::attention(path, a8, serial);
        } else {
          for (int h = 0; h < H; ++h) {
            if (avx2) {
              head_avx2(qkv.data(), bias.data(), h, scale, *head, out_i.data());
            } else {
              head_scalar(qkv.data(), bias.data(), h, scale, *head, out_i.data());
            }
          }
        }
        us[k] += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                     .count();
      }
    }
    std::printf("{\"kernel\": \"float32 (bitmaps)\", \"us\": %.3f}\n", us[0] / reps);
    std::printf("{\"kernel\": \"int8 prototype (%s)\", \"us\": %.3f}\n", avx2 ? "avx2" : "scalar",
                us[1] / reps);
    std::printf("{\"kernel\": \"int8 (bitmaps)\", \"us\": %.3f}\n", us[2] / reps);
  }
  for (int h = 0; h < H; ++h) head_scalar(qkv.data(), bias.data(), h, scale, *head, out_s.data());
  double vs_scalar = 0, vs_float = 0, magnitude = 0, shipped = 0;
  for (size_t i = 0; i < out_i.size(); ++i) {
    vs_scalar = std::max(vs_scalar, static_cast<double>(std::fabs(out_i[i] - out_s[i])));
    shipped = std::max(shipped, static_cast<double>(std::fabs(out_b[i] - out_s[i])));
    vs_float = std::max(vs_float, static_cast<double>(std::fabs(out_i[i] - out_f[i])));
    magnitude = std::max(magnitude, static_cast<double>(std::fabs(out_f[i])));
  }
  std::printf("{\"check\": true, \"max_abs_vs_scalar\": %.3g, \"max_abs_vs_float\": %.3g, "
              "\"max_abs_float\": %.3g, \"shipped_max_abs_vs_scalar\": %.3g}\n", vs_scalar, vs_float,
              magnitude, shipped);
  std::free(head);
  return 0;
}

// The Arm NEON path (AArch64 Advanced SIMD), for phones, Raspberry Pi, Jetson CPUs, Graviton and
// Ampere: 128-bit vectors, per-byte popcount (CNT) summed by pairwise widening adds (UADALP), or by
// UDOT against a vector of ones where the Armv8.2 dot-product extension is present (chosen at run
// time from HWCAP_ASIMDDP; only those functions carry the target attribute, so the library runs on
// every Armv8-A CPU).
//
// The GEMM reads the same weight panels as the x86 paths (kPanelRows = 16 rows = 4 q-registers per
// packed word). Per word w it loads a[m, w] duplicated into all lanes (LD1R), XORs it (AND for
// unsigned activations) with the 4 panel vectors and adds the byte popcounts into the accumulators,
// whose 32-bit lanes are 16 neighbouring outputs: no horizontal sums, and the epilogue (K - 2 * acc
// or popcount(a) - 2 * acc, scales, bias, fp16 rounding) works on whole vectors, in the float32
// operation order of the reference (build with -ffp-contract=off, as every bitmaps build does:
// otherwise GCC fuses the multiply and the bias add into FMLA and the last bit differs).
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_NEON_PATH)

#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"
#include "kernels/cpu_neon_util.h"
// GCC's pre-allocation scheduler hoists all 16 EORs / CNTs of a word above the accumulations, and
// with the UDOT variant's vector of ones that needs 33 registers: two accumulators would spill to
// the stack inside the loop. The micro-kernels skip that pass (register allocation decides order).
#if defined(__GNUC__) && !defined(__clang__)
#define BITMAPS_NO_PRESCHEDULE __attribute__((optimize("no-schedule-insns")))
#else
#define BITMAPS_NO_PRESCHEDULE
#endif

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = 4;     // activation rows per micro-kernel (16 accumulators of 4 outputs)
constexpr int kPanelVecs = kPanelRows / 4;
// Words whose byte counts are summed in uint16 lanes before widening: each lane gains at most 16
// per word, and the last block may take one word more, so (kHalfWords + 1) * 16 < 65536.
constexpr int64_t kHalfWords = 4000;

// ------------------------------------------------------------------------------------ packing

struct LoadF32 {
  using T = float;
  static BITMAPS_NEON_INLINE void load32(const float* p, float32x4_t (&v)[8]) {
    BITMAPS_UNROLL
    for (int i = 0; i < 8; ++i) v[i] = vld1q_f32(p + 4 * i);
  }
  static float one(const float* p) { return *p; }
};

struct LoadF16 {
  using T = uint16_t;
  static BITMAPS_NEON_INLINE void load32(const uint16_t* p, float32x4_t (&v)[8]) {
    BITMAPS_UNROLL
    for (int i = 0; i < 4; ++i) {
      const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(p + 8 * i));
      v[2 * i] = vcvt_f32_f16(vget_low_f16(h));  // exact, like half_to_float
      v[2 * i + 1] = vcvt_high_f32_f16(h);
    }
  }
  static float one(const uint16_t* p) { return half_to_float(*p); }
};

constexpr int32_t kLaneShift[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

// kPos: bit = (x' > 0) (unsigned activations); otherwise bit = (x' < 0) (signs).
template <class L, bool kPos, bool kSub, bool kSum>
void pack_rows(const typename L::T* x, int64_t rows, int64_t k, float beta, float* row_abs_mean,
               int32_t* out) {
  const int64_t kw = packed_width(k);
  const int64_t full_words = k / kWordBits;
  const float32x4_t vbeta = vdupq_n_f32(beta);
  const float32x4_t zero = vdupq_n_f32(0.0f);
  // The bit of each lane of the 8 groups of 4 values of a word (group i: bits 4 i .. 4 i + 3).
  uint32x4_t lane_bits[8];
  BITMAPS_UNROLL
  for (int i = 0; i < 8; ++i) {
    lane_bits[i] = vshlq_u32(vdupq_n_u32(1), vld1q_s32(kLaneShift + 4 * i));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = x + r * k;
    int32_t* o = out + r * kw;
    float64x2_t s[4] = {vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0)};
    for (int64_t w = 0; w < full_words; ++w) {
      float32x4_t v[8];
      L::load32(xr + w * kWordBits, v);
      uint32x4_t bits = vdupq_n_u32(0);
      BITMAPS_UNROLL
      for (int i = 0; i < 8; ++i) {
        if constexpr (kSub) v[i] = vsubq_f32(v[i], vbeta);
        const uint32x4_t set = kPos ? vcgtq_f32(v[i], zero) : vcltq_f32(v[i], zero);
        bits = vorrq_u32(bits, vandq_u32(set, lane_bits[i]));
        if constexpr (kSum) {
          const float32x4_t a = vabsq_f32(v[i]);
          const int j = 2 * (i & 1);
          s[j] = vaddq_f64(s[j], vcvt_f64_f32(vget_low_f32(a)));
          s[j + 1] = vaddq_f64(s[j + 1], vcvt_high_f64_f32(a));
        }
      }
      o[w] = static_cast<int32_t>(vaddvq_u32(bits));  // disjoint bits: the sum is the OR
    }
    double tail_sum = 0.0;
    if (full_words < kw) {  // the ragged last word, element by element
      uint32_t word = 0;
      for (int64_t j = 0; full_words * kWordBits + j < k; ++j) {
        float v = L::one(xr + full_words * kWordBits + j);
        if constexpr (kSub) v = v - beta;
        word |= static_cast<uint32_t>(kPos ? v > 0.0f : v < 0.0f) << j;
        tail_sum += static_cast<double>(std::fabs(v));
      }
      o[full_words] = static_cast<int32_t>(word);
    }
    if constexpr (kSum) {
      const float64x2_t t = vaddq_f64(vaddq_f64(s[0], s[1]), vaddq_f64(s[2], s[3]));
      const double sum = vaddvq_f64(t) + tail_sum;
      row_abs_mean[r] = static_cast<float>(sum) / static_cast<float>(k);
    }
  }
}

template <class L, bool kPos>
void pack_dispatch(const typename L::T* x, int64_t rows, int64_t k, bool subtract, float beta,
                   float* row_abs_mean, int32_t* out) {
  float* mean = row_abs_mean;
  if (subtract) {
    if (mean != nullptr) return pack_rows<L, kPos, true, true>(x, rows, k, beta, mean, out);
    return pack_rows<L, kPos, true, false>(x, rows, k, beta, nullptr, out);
  }
  if (mean != nullptr) return pack_rows<L, kPos, false, true>(x, rows, k, beta, mean, out);
  return pack_rows<L, kPos, false, false>(x, rows, k, beta, nullptr, out);
}

// --------------------------------------------------------------------------------------- GEMM

// An activation word XOR (AND) 4 panel rows, as bytes for CNT.
// gelu of cpu_kernels_internal.h on 4 lanes, the same operations in the same order (FMAX/FMIN
// keep a NaN, as the scalar clamp does).
BITMAPS_NEON_INLINE float32x4_t gelu4(float32x4_t y) {
  float32x4_t z = vmulq_f32(y, vdupq_n_f32(kGeluRsqrt2));
  z = vminq_f32(vdupq_n_f32(kErfClamp), vmaxq_f32(vdupq_n_f32(-kErfClamp), z));
  const float32x4_t t = vmulq_f32(z, z);
  float32x4_t p = vdupq_n_f32(kErfP[5]), q = vdupq_n_f32(kErfQ[5]);
  for (int i = 4; i >= 0; --i) {
    p = vaddq_f32(vmulq_f32(p, t), vdupq_n_f32(kErfP[i]));
    q = vaddq_f32(vmulq_f32(q, t), vdupq_n_f32(kErfQ[i]));
  }
  float32x4_t erf = vdivq_f32(vmulq_f32(z, p), q);
  erf = vminq_f32(vdupq_n_f32(1.0f), vmaxq_f32(vdupq_n_f32(-1.0f), erf));
  float32x4_t one = vaddq_f32(vdupq_n_f32(1.0f), erf);
  one = vmaxq_f32(vdupq_n_f32(kOneUlpBelowOne), one);  // FMAX: NaN stays NaN
  one = vbslq_f32(vcleq_f32(z, vdupq_n_f32(kErfTailZero)), vdupq_n_f32(0.0f), one);
  return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), y), one);
}

template <bool kAnd>
BITMAPS_NEON_INLINE uint8x16_t combine(uint32x4_t av, uint32x4_t bv) {
  return vreinterpretq_u8_u32(kAnd ? vandq_u32(av, bv) : veorq_u32(av, bv));
}

// a[r, w] in every lane. kMask: the last word, whose activation padding bits are cleared (the
// panels' were cleared by pack_panels); the others load straight into the lanes (LD1R).
template <bool kMask>
BITMAPS_NEON_INLINE uint32x4_t broadcast(const uint32_t* a, uint32_t mask) {
  return kMask ? vdupq_n_u32(*a & mask) : vld1q_dup_u32(a);
}

// One word with CNT + UADALP into uint16 lanes.
template <int MR, bool kAnd, bool kMask>
BITMAPS_NEON_INLINE void step_cnt(const uint32_t* a, int64_t kw, int64_t w, uint32_t mask,
                                  const uint32_t* b, uint16x8_t (&half)[MR][kPanelVecs]) {
  uint32x4_t bv[kPanelVecs];
  BITMAPS_UNROLL
  for (int v = 0; v < kPanelVecs; ++v) bv[v] = vld1q_u32(b + w * kPanelRows + 4 * v);
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    const uint32x4_t av = broadcast<kMask>(a + r * kw + w, mask);
    BITMAPS_UNROLL
    for (int v = 0; v < kPanelVecs; ++v) {
      half[r][v] = vpadalq_u8(half[r][v], vcntq_u8(combine<kAnd>(av, bv[v])));
    }
  }
}

// One word with CNT + UDOT (byte counts dotted with ones) straight into uint32 lanes.
template <int MR, bool kAnd, bool kMask>
BITMAPS_DOTPROD BITMAPS_NEON_INLINE void step_dot(const uint32_t* a, int64_t kw, int64_t w,
                                                  uint32_t mask, const uint32_t* b,
                                                  uint32x4_t (&acc)[MR][kPanelVecs]) {
  const uint8x16_t ones = vdupq_n_u8(1);
  uint32x4_t bv[kPanelVecs];
  BITMAPS_UNROLL
  for (int v = 0; v < kPanelVecs; ++v) bv[v] = vld1q_u32(b + w * kPanelRows + 4 * v);
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    const uint32x4_t av = broadcast<kMask>(a + r * kw + w, mask);
    BITMAPS_UNROLL
    for (int v = 0; v < kPanelVecs; ++v) {
      acc[r][v] = vdotq_u32(acc[r][v], vcntq_u8(combine<kAnd>(av, bv[v])), ones);
    }
  }
}

// The epilogue of an MR x 16 tile: accumulators of popcounts -> dot -> output.
template <int MR, GemmOutput kOut, bool kAnd>
BITMAPS_NEON_INLINE void store_tile(const GemmArgs& g, int64_t m, int64_t n,
                                    const uint32x4_t (&acc)[MR][kPanelVecs]) {
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    const int32x4_t base = vdupq_n_s32(kAnd ? g.a_popcount[row] : static_cast<int32_t>(g.k));
    BITMAPS_UNROLL
    for (int v = 0; v < kPanelVecs; ++v) {
      const int64_t col = n + 4 * v;
      if (col >= g.n) break;
      const int32x4_t dot = vsubq_s32(base, vshlq_n_s32(vreinterpretq_s32_u32(acc[r][v]), 1));
      // Bits (the fused FFN's intermediate) and a ragged right edge: element by element.
      if (kOut == GemmOutput::kBits || col + 4 > g.n) {
        int32_t dots[4];
        vst1q_s32(dots, dot);
        for (int64_t l = 0; l < 4 && col + l < g.n; ++l) store_output(g, row, col + l, dots[l]);
        continue;
      }
      const int64_t at = row * g.n + col;
      if constexpr (kOut == GemmOutput::kDotInt32 || kOut == GemmOutput::kBits) {
        vst1q_s32(static_cast<int32_t*>(g.out) + at, dot);
      } else {
        // (dot * s) * w_scale + bias, separately rounded, as in the reference.
        float32x4_t y = vmulq_f32(vcvtq_f32_s32(dot), vdupq_n_f32(g.row_scale[row]));
        y = vmulq_f32(y, vld1q_f32(g.col_scale + col));
        if (g.bias != nullptr) y = vaddq_f32(y, vld1q_f32(g.bias + col));
        if (g.gelu) y = gelu4(y);
        if constexpr (kOut == GemmOutput::kFloat32) {
          vst1q_f32(static_cast<float*>(g.out) + at, y);
        } else {
          // FCVTN rounds by FPCR: nearest, ties to even (the Linux default), like float_to_half.
          vst1_u16(static_cast<uint16_t*>(g.out) + at, vreinterpret_u16_f16(vcvt_f16_f32(y)));
        }
      }
    }
  }
}

template <int MR, GemmOutput kOut, bool kAnd>
BITMAPS_NO_PRESCHEDULE void micro_cnt(const GemmArgs& g, int64_t m, int64_t n) {
  const int64_t kw = g.kw;
  const auto* a = reinterpret_cast<const uint32_t*>(g.a) + m * kw;
  const auto* b = reinterpret_cast<const uint32_t*>(g.panels) + (n / kPanelRows) * kw * kPanelRows;
  const uint32_t last_mask = last_word_mask(g.k);
  const int64_t body = kw - 1;  // words before the masked last one
  uint32x4_t acc[MR][kPanelVecs];
  for (int64_t w0 = 0;; w0 += kHalfWords) {
    const int64_t w1 = std::min(body, w0 + kHalfWords);
    uint16x8_t half[MR][kPanelVecs];
    BITMAPS_UNROLL
    for (int r = 0; r < MR; ++r) {
      BITMAPS_UNROLL
      for (int v = 0; v < kPanelVecs; ++v) half[r][v] = vdupq_n_u16(0);
    }
    for (int64_t w = w0; w < w1; ++w) step_cnt<MR, kAnd, false>(a, kw, w, 0, b, half);
    const bool last = w1 == body;
    if (last) step_cnt<MR, kAnd, true>(a, kw, body, last_mask, b, half);
    BITMAPS_UNROLL
    for (int r = 0; r < MR; ++r) {
      BITMAPS_UNROLL
      for (int v = 0; v < kPanelVecs; ++v) {
        acc[r][v] = w0 == 0 ? vpaddlq_u16(half[r][v]) : vpadalq_u16(acc[r][v], half[r][v]);
      }
    }
    if (last) break;
  }
  store_tile<MR, kOut, kAnd>(g, m, n, acc);
}

template <int MR, GemmOutput kOut, bool kAnd>
BITMAPS_DOTPROD BITMAPS_NO_PRESCHEDULE void micro_dot(const GemmArgs& g, int64_t m, int64_t n) {
  const int64_t kw = g.kw;
  const auto* a = reinterpret_cast<const uint32_t*>(g.a) + m * kw;
  const auto* b = reinterpret_cast<const uint32_t*>(g.panels) + (n / kPanelRows) * kw * kPanelRows;
  uint32x4_t acc[MR][kPanelVecs];
  BITMAPS_UNROLL
  for (int r = 0; r < MR; ++r) {
    BITMAPS_UNROLL
    for (int v = 0; v < kPanelVecs; ++v) acc[r][v] = vdupq_n_u32(0);
  }
  for (int64_t w = 0; w + 1 < kw; ++w) step_dot<MR, kAnd, false>(a, kw, w, 0, b, acc);
  step_dot<MR, kAnd, true>(a, kw, kw - 1, last_word_mask(g.k), b, acc);
  store_tile<MR, kOut, kAnd>(g, m, n, acc);
}

// Picks the micro-kernel instantiation for the ragged bottom edge (mr < kMR rows).
template <GemmOutput kOut, bool kAnd, bool kDot, int MR>
BITMAPS_NEON_INLINE void run_micro(int mr, const GemmArgs& g, int64_t m, int64_t n) {
  if constexpr (MR > 1) {
    if (mr < MR) return run_micro<kOut, kAnd, kDot, MR - 1>(mr, g, m, n);
  }
  if constexpr (kDot) {
    micro_dot<MR, kOut, kAnd>(g, m, n);
  } else {
    micro_cnt<MR, kOut, kAnd>(g, m, n);
  }
}

template <GemmOutput kOut, bool kAnd, bool kDot>
void gemm_tile(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  // Panel outer: its 16 rows stay in L1 while activation rows stream past.
  for (int64_t n = n0; n < n1; n += kPanelRows) {
    for (int64_t m = m0; m < m1; m += kMR) {
      run_micro<kOut, kAnd, kDot, kMR>(static_cast<int>(std::min<int64_t>(kMR, m1 - m)), g, m, n);
    }
  }
}

template <bool kAnd, bool kDot>
void gemm_output(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  switch (g.output) {
    case GemmOutput::kDotInt32:
      return gemm_tile<GemmOutput::kDotInt32, kAnd, kDot>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat32:
      return gemm_tile<GemmOutput::kFloat32, kAnd, kDot>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat16:
      return gemm_tile<GemmOutput::kFloat16, kAnd, kDot>(g, m0, m1, n0, n1);
    case GemmOutput::kBits:
      return gemm_tile<GemmOutput::kBits, kAnd, kDot>(g, m0, m1, n0, n1);
  }
}

}  // namespace

void pack_signs_f32_neon(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF32, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_neon(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF16, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_positive_f32_neon(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF32, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void pack_positive_f16_neon(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF16, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void xnor_gemm_tile_neon(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const bool dot = cpu_has_neon_dotprod();
  if (g.unsigned_a) {
    return dot ? gemm_output<true, true>(g, m0, m1, n0, n1)
               : gemm_output<true, false>(g, m0, m1, n0, n1);
  }
  return dot ? gemm_output<false, true>(g, m0, m1, n0, n1)
             : gemm_output<false, false>(g, m0, m1, n0, n1);
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_NEON_PATH

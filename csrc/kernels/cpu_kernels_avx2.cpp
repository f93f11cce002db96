// The AVX2 path: 256-bit vectors, popcount by nibble lookup (VPSHUFB), for x86 CPUs without
// AVX-512 VPOPCNTDQ. Compiled with per-function target attributes like the AVX-512 path.
//
// Same micro-kernel shape as the AVX-512 path (broadcast one activation word, XOR it -- AND it for
// unsigned activations -- with 8 weight rows per vector), but on operands split into their bytes'
// low and high nibbles (split_rows, xnor_step), so that the logic op's result indexes the lookup
// directly. The lookup gives per-byte counts: they are summed in bytes for up to 31 words
// (31 * 8 = 248 < 256) and then widened to the int32 accumulators (VPMADDUBSW + VPMADDWD).
// On Zen 1 / Zen+ and Zen 3 (cpu_features.h, Avx2KLoop::kFolded) the K loop steps two K words at
// a time on 2 rows instead (the K-pair form below), into the same accumulators and epilogues.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

#define BITMAPS_AVX2 __attribute__((target("avx2,f16c")))
#define BITMAPS_AVX2_INLINE BITMAPS_AVX2 __attribute__((always_inline)) inline

namespace bitmaps::cpu::detail {
namespace {

constexpr int kMR = 4;             // activation rows per micro-kernel
constexpr int kNV = 2;             // 8-row weight vectors per micro-kernel (one 16-row panel)
constexpr int64_t kByteWords = 31; // words summed in byte counters before widening
static_assert(kNV * 8 == kPanelRows, "gemm_tile steps one panel per micro-kernel");

// ------------------------------------------------------------------------------------ packing

struct LoadF32 {
  using T = float;
  static BITMAPS_AVX2_INLINE __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float one(const float* p) { return *p; }
};

struct LoadF16 {
  using T = uint16_t;
  static BITMAPS_AVX2_INLINE __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float one(const uint16_t* p) { return half_to_float(*p); }
};

// kPos: bit = (x' > 0) (unsigned activations); otherwise bit = (x' < 0) (signs).
template <class L, bool kPos, bool kSub, bool kSum>
BITMAPS_AVX2 void pack_rows(const typename L::T* x, int64_t rows, int64_t k, float beta,
                            float* row_abs_mean, int32_t* out) {
  const int64_t kw = packed_width(k);
  const int64_t full_words = k / kWordBits;
  const __m256 vbeta = _mm256_set1_ps(beta);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = x + r * k;
    int32_t* o = out + r * kw;
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    for (int64_t w = 0; w < full_words; ++w) {
      uint32_t word = 0;
      for (int q = 0; q < 4; ++q) {
        __m256 v = L::load8(xr + w * 32 + q * 8);
        if constexpr (kSub) v = _mm256_sub_ps(v, vbeta);
        const __m256 set = _mm256_cmp_ps(v, zero, kPos ? _CMP_GT_OQ : _CMP_LT_OQ);
        const auto bits = static_cast<uint32_t>(_mm256_movemask_ps(set));
        word |= bits << (q * 8);
        if constexpr (kSum) {
          const __m256 a = _mm256_and_ps(v, abs_mask);
          s[q] = _mm256_add_pd(s[q], _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
          s[q] = _mm256_add_pd(s[q], _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
        }
      }
      o[w] = static_cast<int32_t>(word);
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
      const __m256d t = _mm256_add_pd(_mm256_add_pd(s[0], s[1]), _mm256_add_pd(s[2], s[3]));
      alignas(32) double lanes[4];
      _mm256_store_pd(lanes, t);
      const double sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail_sum;
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

// gelu of cpu_kernels_internal.h on 8 lanes, the same operations in the same order.
BITMAPS_AVX2_INLINE __m256 gelu8(__m256 y) {
  __m256 z = _mm256_mul_ps(y, _mm256_set1_ps(kGeluRsqrt2));
  z = _mm256_min_ps(_mm256_set1_ps(kErfClamp), _mm256_max_ps(_mm256_set1_ps(-kErfClamp), z));
  const __m256 t = _mm256_mul_ps(z, z);
  __m256 p = _mm256_set1_ps(kErfP[5]), q = _mm256_set1_ps(kErfQ[5]);
  for (int i = 4; i >= 0; --i) {
    p = _mm256_add_ps(_mm256_mul_ps(p, t), _mm256_set1_ps(kErfP[i]));
    q = _mm256_add_ps(_mm256_mul_ps(q, t), _mm256_set1_ps(kErfQ[i]));
  }
  __m256 erf = _mm256_div_ps(_mm256_mul_ps(z, p), q);
  erf = _mm256_min_ps(_mm256_set1_ps(1.0f), _mm256_max_ps(_mm256_set1_ps(-1.0f), erf));
  __m256 one = _mm256_add_ps(_mm256_set1_ps(1.0f), erf);
  one = _mm256_max_ps(_mm256_set1_ps(kOneUlpBelowOne), one);  // NaN stays NaN (2nd operand)
  one = _mm256_blendv_ps(one, _mm256_setzero_ps(),
                         _mm256_cmp_ps(z, _mm256_set1_ps(kErfTailZero), _CMP_LE_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), y), one);
}

// The nibble-lookup table (per 128-bit lane) and the low-nibble mask, as memory operands.
alignas(32) constexpr uint8_t kNibbleCounts[32] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                                   0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};
alignas(32) constexpr uint8_t kLow4[32] = {
    0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F,
    0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F};

// The activation rows of a micro-kernel, split (split_rows): kMR rows of kw words with their
// bytes' low nibbles, then the same rows with their high nibbles shifted down. A logic op of a
// split activation word with a split weight vector is then already a table index: per 8 columns
// x 32 bits, two logic ops, two lookups and two byte adds instead of the XOR, shift, two ANDs, two
// lookups and two adds of a whole-byte lookup. The weight panel is split likewise, once per tile
// for all its row groups (split_panel): per K word its two 8-row vectors' low nibbles, then their
// high nibbles (kSplitVectors).
constexpr int64_t kSplitRows = 2 * kMR;   // split rows per micro-kernel
constexpr int64_t kSplitVectors = 2 * kNV;  // split weight vectors per K word of a panel

// One K word of a micro-kernel of MR < kMR rows (a tile's last rows), in intrinsics.
template <int MR, int NV, bool kAnd>
BITMAPS_AVX2_INLINE void xnor_step(const uint32_t* s, int64_t kw, int64_t w, const __m256i* b,
                                   __m256i (&bytes)[MR][NV]) {
  static_assert(NV == kNV, "the split panel holds kNV vectors per half");
  const __m256i lut = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleCounts));
  for (int r = 0; r < MR; ++r) {
    for (int h = 0; h < 2; ++h) {
      const __m256i av = _mm256_set1_epi32(static_cast<int>(s[(h * kMR + r) * kw + w]));
      for (int v = 0; v < NV; ++v) {
        const __m256i bh = _mm256_load_si256(b + w * kSplitVectors + h * NV + v);
        const __m256i x = kAnd ? _mm256_and_si256(av, bh) : _mm256_xor_si256(av, bh);
        bytes[r][v] = _mm256_add_epi8(bytes[r][v], _mm256_shuffle_epi8(lut, x));
      }
    }
  }
}

// K words [w0, w1) of the full 4 x 2 micro-kernel: its byte counts (zeroed first) into bytes.
// s: word w0 of the first split row; split row i at s + i * kw (addressed from s, s + 3 kw and
// s + 6 kw with the row stride in a register).
// Hand-allocated: compiled from intrinsics, GCC kept 7 of the 8 byte accumulators on the stack.
// The 8 accumulators (row r, vector v: operand a(2r + v)) are register outputs, so that the
// widening after the block reads them where they are (ymm0-7); ymm8 the table, ymm13 the broadcast
// activation word, ymm14-15 temporaries. Per K word: 8 broadcasts and 48 ALU ops for 2048 MACs,
// and the split weight vectors (v0 low, v1 low, v0 high, v1 high) loaded into ymm9-12 once (4
// loads). This is Avx2KLoop::kRegisters (cpu_features.h); kFolded runs the K-pair form below.
// PAIR: one logic op, lookup and byte add; w is the weight operand ("%%ymm9", or "32(%[b])" in
// the K-pair loop below).
#define BITMAPS_AVX2_PAIR(op, acc, w, t)                                                  \
  #op " " w ", %%ymm13, %%ymm" #t "\n\t"                                                  \
  "vpshufb %%ymm" #t ", %%ymm8, %%ymm" #t "\n\t"                                        \
  "vpaddb %%ymm" #t ", %[a" #acc "], %[a" #acc "]\n\t"
// ROW: one row's low and high split words against the four weight operands w0-w3.
#define BITMAPS_AVX2_ROW(op, lo, hi, a0, a1, w0, w1, w2, w3)                             \
  "vpbroadcastd " lo ", %%ymm13\n\t"                                                     \
  BITMAPS_AVX2_PAIR(op, a0, w0, 14) BITMAPS_AVX2_PAIR(op, a1, w1, 15)                   \
  "vpbroadcastd " hi ", %%ymm13\n\t"                                                     \
  BITMAPS_AVX2_PAIR(op, a0, w2, 14) BITMAPS_AVX2_PAIR(op, a1, w3, 15)
#define BITMAPS_AVX2_ROWS(op, w0, w1, w2, w3)                                            \
  BITMAPS_AVX2_ROW(op, "(%[s])", "(%[s],%[st],4)", 0, 1, w0, w1, w2, w3)               \
  BITMAPS_AVX2_ROW(op, "(%[s],%[st],1)", "(%[s3],%[st],2)", 2, 3, w0, w1, w2, w3)      \
  BITMAPS_AVX2_ROW(op, "(%[s],%[st],2)", "(%[s6])", 4, 5, w0, w1, w2, w3)              \
  BITMAPS_AVX2_ROW(op, "(%[s3])", "(%[s6],%[st],1)", 6, 7, w0, w1, w2, w3)
#define BITMAPS_AVX2_REGISTERS(op)                                                      \
  "vmovdqa (%[b]), %%ymm9\n\t"                                                          \
  "vmovdqa 32(%[b]), %%ymm10\n\t"                                                       \
  "vmovdqa 64(%[b]), %%ymm11\n\t"                                                       \
  "vmovdqa 96(%[b]), %%ymm12\n\t"                                                       \
  BITMAPS_AVX2_ROWS(op, "%%ymm9", "%%ymm10", "%%ymm11", "%%ymm12")
// Both K loops' start: the 8 accumulators zeroed, the table into ymm8, the loop's label.
#define BITMAPS_AVX2_PROLOGUE                                                           \
  "vpxor %[a0], %[a0], %[a0]\n\tvpxor %[a1], %[a1], %[a1]\n\t"                             \
  "vpxor %[a2], %[a2], %[a2]\n\tvpxor %[a3], %[a3], %[a3]\n\t"                             \
  "vpxor %[a4], %[a4], %[a4]\n\tvpxor %[a5], %[a5], %[a5]\n\t"                             \
  "vpxor %[a6], %[a6], %[a6]\n\tvpxor %[a7], %[a7], %[a7]\n\t"                             \
  "vmovdqa %[lut], %%ymm8\n\t"                                                          \
  "1:\n\t"
#define BITMAPS_AVX2_BLOCK(body)                                                        \
  BITMAPS_AVX2_PROLOGUE                                                                 \
  body                                                                                  \
  "add $128, %[b]\n\t"                                                                   \
  "add $4, %[s]\n\t"                                                                    \
  "add $4, %[s3]\n\t"                                                                   \
  "add $4, %[s6]\n\t"                                                                   \
  "dec %[count]\n\t"                                                                    \
  "jnz 1b\n\t"

// The block's operands (the accumulators written; s, s3, s6, b, count advance; st, lut are
// read; the operands' memory through "memory") and clobbers.
#define BITMAPS_AVX2_BLOCK_OPERANDS                                                       \
  : [a0] "=&x"(bytes[0][0]), [a1] "=&x"(bytes[0][1]), [a2] "=&x"(bytes[1][0]),            \
    [a3] "=&x"(bytes[1][1]), [a4] "=&x"(bytes[2][0]), [a5] "=&x"(bytes[2][1]),            \
    [a6] "=&x"(bytes[3][0]), [a7] "=&x"(bytes[3][1]), [s] "+r"(s), [s3] "+r"(s3),         \
    [s6] "+r"(s6), [b] "+r"(b), [count] "+r"(count)                                       \
  : [st] "r"(st), [lut] "m"(lut)                                                         \
  : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory"

template <bool kAnd>
BITMAPS_AVX2_INLINE void xnor_block_4x2(const uint32_t* s, int64_t kw, const __m256i* b,
                                        int64_t count, __m256i (&bytes)[kMR][2]) {
  static_assert(kMR == 4, "the assembly block is 4 rows x 2 vectors");
  const auto& lut = *reinterpret_cast<const __m256i*>(kNibbleCounts);
  const int64_t st = kw * 4;  // bytes from one split row to the next
  const uint32_t* s3 = s + 3 * kw;
  const uint32_t* s6 = s + 6 * kw;
  if constexpr (kAnd) {
    __asm__ volatile(BITMAPS_AVX2_BLOCK(BITMAPS_AVX2_REGISTERS(vpand)) BITMAPS_AVX2_BLOCK_OPERANDS);
  } else {
    __asm__ volatile(BITMAPS_AVX2_BLOCK(BITMAPS_AVX2_REGISTERS(vpxor)) BITMAPS_AVX2_BLOCK_OPERANDS);
  }
}
#undef BITMAPS_AVX2_BLOCK_OPERANDS
#undef BITMAPS_AVX2_BLOCK
#undef BITMAPS_AVX2_REGISTERS
#undef BITMAPS_AVX2_ROWS
#undef BITMAPS_AVX2_ROW

// ------------------------------------------------------------------ the K-pair form (kFolded)
// Avx2KLoop::kFolded (Zen 1 / Zen+, Zen 3; cpu_features.h): a K loop of kPairRows activation rows
// x one 16-row panel that steps two K words at a time (micro_pairs runs it for each two rows of a
// group).
// A split activation row's two words (2j, 2j + 1) are broadcast as one quadword (VPBROADCASTQ), and
// the panel is split into K pairs (split_panel_pairs): per pair its low-nibble vectors, then its
// high-nibble vectors, each vector 4 weight rows (in the order of split_panel_pairs' comment), each
// row's word 2j then word 2j + 1 (kPairVectors per pair). A logic op of the broadcast with a vector
// is again a table index. Per pair and row: 2 broadcasts and 24 logic / lookup / add ops, each
// logic op reading its weight vector from L1 -- half the broadcasts per op of the 4 x 2 form (8 per
// 48 ops). On Zen 1 each of them takes two op slots, and the loop is bound by op slots: on operands
// in L1 this form runs at 86-88 % of the popcount ceiling (two runs), stop 37's 4 x 2 loop with
// folded loads at 83 %, in registers at 77-78 % (bench_popcount_ceiling.py; RESULTS.md, stop 40).
// A byte lane sees one K word per pair: up to 31 pairs (62 words) are summed in bytes, then
// VPSADBW sums each weight row's 8 bytes into a quadword. Where a tile has two panels left,
// micro_pairs_wide runs the loop's wide form instead (xnor_pairs_1x8: one row x both panels).
constexpr int kPairRows = 2;                   // activation rows per K-pair micro-kernel
constexpr int kPairVectors = 8;                // split weight vectors per K pair of a panel
constexpr int64_t kBytePairs = kByteWords;  // K pairs summed in bytes (a lane sees 1 word each)
constexpr int kPairNV = kPairVectors / 2;      // accumulators per row (4 weight rows each)
static_assert(kMR % kPairRows == 0, "a 4-row group of split_rows holds whole pairs of rows");

// The split activations' words per row in the K-pair form: kw rounded up to whole pairs (the
// padding word is zero, and so is the panel's: it counts nothing).
inline int64_t pair_words(int64_t kw) { return (kw + 1) / 2 * 2; }

// One row (a group's last odd row) of pairs [j0, j1), in intrinsics: bytes[v] (zeroed first) =
// the counts of the row's split words (low: lo, high: hi) against the pairs' vectors v.
template <bool kAnd>
BITMAPS_AVX2_INLINE void pair_steps_1x4(const uint32_t* lo, const uint32_t* hi, const __m256i* b,
                                        int64_t j0, int64_t j1, __m256i (&bytes)[kPairNV]) {
  const __m256i lut = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleCounts));
  for (int v = 0; v < kPairNV; ++v) bytes[v] = _mm256_setzero_si256();
  for (int64_t j = j0; j < j1; ++j) {
    for (int h = 0; h < 2; ++h) {
      int64_t words;
      __builtin_memcpy(&words, (h == 0 ? lo : hi) + 2 * j, sizeof(words));
      const __m256i av = _mm256_set1_epi64x(words);
      for (int v = 0; v < kPairNV; ++v) {
        const __m256i bv = _mm256_load_si256(b + j * kPairVectors + h * kPairNV + v);
        const __m256i x = kAnd ? _mm256_and_si256(av, bv) : _mm256_xor_si256(av, bv);
        bytes[v] = _mm256_add_epi8(bytes[v], _mm256_shuffle_epi8(lut, x));
      }
    }
  }
}

// Pairs [0, count) of the full 2-row micro-kernel: byte counts (zeroed first) into bytes. p: row
// 0's low split words at the block's first pair, q: row 1's; their high words 4 split rows further
// on ((p, st, 4), (q, st, 4): the 4-row groups of split_rows). Hand-allocated like xnor_block_4x2:
// the 8 accumulators in ymm0-7 (row r, vector v: a(4r + v)), ymm8 the table, ymm13 the broadcast
// words, ymm14-15 temporaries.
// (BITMAPS_AVX2_PAIR with each weight vector read from the pair's 256 bytes at b.)
// one row's low words against vectors 0-3 (bytes 0-127 of the pair), then its high words against
// vectors 4-7 (bytes 128-255)
#define BITMAPS_AVX2_QROW(op, lo, hi, a0, a1, a2, a3)                                    \
  "vpbroadcastq " lo ", %%ymm13\n\t"                                                     \
  BITMAPS_AVX2_PAIR(op, a0, "(%[b])", 14) BITMAPS_AVX2_PAIR(op, a1, "32(%[b])", 15)     \
  BITMAPS_AVX2_PAIR(op, a2, "64(%[b])", 14) BITMAPS_AVX2_PAIR(op, a3, "96(%[b])", 15)   \
  "vpbroadcastq " hi ", %%ymm13\n\t"                                                     \
  BITMAPS_AVX2_PAIR(op, a0, "128(%[b])", 14) BITMAPS_AVX2_PAIR(op, a1, "160(%[b])", 15) \
  BITMAPS_AVX2_PAIR(op, a2, "192(%[b])", 14) BITMAPS_AVX2_PAIR(op, a3, "224(%[b])", 15)
#define BITMAPS_AVX2_QBLOCK(op)                                                          \
  BITMAPS_AVX2_PROLOGUE                                                                 \
  BITMAPS_AVX2_QROW(op, "(%[p])", "(%[p],%[st],4)", 0, 1, 2, 3)                          \
  BITMAPS_AVX2_QROW(op, "(%[q])", "(%[q],%[st],4)", 4, 5, 6, 7)                          \
  "add $256, %[b]\n\t"                                                                   \
  "add $8, %[p]\n\t"                                                                    \
  "add $8, %[q]\n\t"                                                                    \
  "dec %[count]\n\t"                                                                    \
  "jnz 1b\n\t"                                                                          \
  : [a0] "=&x"(bytes[0][0]), [a1] "=&x"(bytes[0][1]), [a2] "=&x"(bytes[0][2]),            \
    [a3] "=&x"(bytes[0][3]), [a4] "=&x"(bytes[1][0]), [a5] "=&x"(bytes[1][1]),            \
    [a6] "=&x"(bytes[1][2]), [a7] "=&x"(bytes[1][3]), [p] "+r"(p), [q] "+r"(q),           \
    [b] "+r"(b), [count] "+r"(count)                                                      \
  : [st] "r"(st), [lut] "m"(lut)                                                         \
  : "xmm8", "xmm13", "xmm14", "xmm15", "cc", "memory"

template <bool kAnd>
BITMAPS_AVX2_INLINE void xnor_pairs_2x4(const uint32_t* p, const uint32_t* q, int64_t st,
                                        const __m256i* b, int64_t count,
                                        __m256i (&bytes)[kPairRows][kPairNV]) {
  static_assert(kPairRows == 2 && kPairNV == 4, "the assembly block is 2 rows x 4 vectors");
  const auto& lut = *reinterpret_cast<const __m256i*>(kNibbleCounts);
  if constexpr (kAnd) {
    __asm__ volatile(BITMAPS_AVX2_QBLOCK(vpand));
  } else {
    __asm__ volatile(BITMAPS_AVX2_QBLOCK(vpxor));
  }
}

// The wide form of the K-pair loop: one row against two panels (32 weight rows), pairs [0, count)
// of byte counts (zeroed first) into bytes; b: the two panels' pairs side by side
// (split_panel_pairs with a stride of 2 * kPairVectors: per pair panel 0's 256 bytes, then panel
// 1's). Per pair: 2 broadcasts per 16 logic ops (the 2-row block: 4 per 16), the same 12 registers
// (ymm0-7 the accumulators). On the Zen 1 EPYC, operands in L1: 191-193 G binary MAC/s on one
// core, the 2-row block 181-185 (a throwaway loop of both); BERT-base's GEMM nodes in ONNX
// Runtime 1.00-1.06x, the whole model 1.00-1.01x (RESULTS.md, stop 41).
#define BITMAPS_AVX2_WROW(op, lo, at)                                                        \
  "vpbroadcastq " lo ", %%ymm13\n\t"                                                         \
  BITMAPS_AVX2_PAIR(op, 0, at "+0(%[b])", 14) BITMAPS_AVX2_PAIR(op, 1, at "+32(%[b])", 15)    \
  BITMAPS_AVX2_PAIR(op, 2, at "+64(%[b])", 14) BITMAPS_AVX2_PAIR(op, 3, at "+96(%[b])", 15)   \
  BITMAPS_AVX2_PAIR(op, 4, at "+256(%[b])", 14) BITMAPS_AVX2_PAIR(op, 5, at "+288(%[b])", 15) \
  BITMAPS_AVX2_PAIR(op, 6, at "+320(%[b])", 14) BITMAPS_AVX2_PAIR(op, 7, at "+352(%[b])", 15)
#define BITMAPS_AVX2_WBLOCK(op)                                                               \
  BITMAPS_AVX2_PROLOGUE                                                                      \
  BITMAPS_AVX2_WROW(op, "(%[p])", "0")                                                        \
  BITMAPS_AVX2_WROW(op, "(%[p],%[st],4)", "128")                                              \
  "add $512, %[b]\n\t"                                                                        \
  "add $8, %[p]\n\t"                                                                          \
  "dec %[count]\n\t"                                                                          \
  "jnz 1b\n\t"                                                                                \
  : [a0] "=&x"(bytes[0]), [a1] "=&x"(bytes[1]), [a2] "=&x"(bytes[2]), [a3] "=&x"(bytes[3]),  \
    [a4] "=&x"(bytes[4]), [a5] "=&x"(bytes[5]), [a6] "=&x"(bytes[6]), [a7] "=&x"(bytes[7]),  \
    [p] "+r"(p), [b] "+r"(b), [count] "+r"(count)                                             \
  : [st] "r"(st), [lut] "m"(lut)                                                              \
  : "xmm8", "xmm13", "xmm14", "xmm15", "cc", "memory"

constexpr int kWideVectors = 2 * kPairNV;  // accumulators of the wide block (4 weight rows each)

template <bool kAnd>
BITMAPS_AVX2_INLINE void xnor_pairs_1x8(const uint32_t* p, int64_t st, const __m256i* b,
                                        int64_t count, __m256i (&bytes)[kWideVectors]) {
  const auto& lut = *reinterpret_cast<const __m256i*>(kNibbleCounts);
  if constexpr (kAnd) {
    __asm__ volatile(BITMAPS_AVX2_WBLOCK(vpand));
  } else {
    __asm__ volatile(BITMAPS_AVX2_WBLOCK(vpxor));
  }
}
#undef BITMAPS_AVX2_WBLOCK
#undef BITMAPS_AVX2_WROW
#undef BITMAPS_AVX2_QBLOCK
#undef BITMAPS_AVX2_QROW
#undef BITMAPS_AVX2_PROLOGUE
#undef BITMAPS_AVX2_PAIR

// 8 float outputs from their dot products: store_output's float32 operations in its order
// ((dot * row scale) * column scale, + bias where there is one, then GELU); one copy for the
// whole-block and the edge epilogue, so that both round as every other path does.
BITMAPS_AVX2_INLINE __m256 scale8(__m256i dot, __m256 row_scale, __m256 col_scale, bool has_bias,
                                  __m256 bias, bool gelu) {
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), row_scale), col_scale);
  if (has_bias) y = _mm256_add_ps(y, bias);
  return gelu ? gelu8(y) : y;
}

// 8 outputs at element `at` of a float output (float32, or float16 rounded to nearest).
template <GemmOutput kOut>
BITMAPS_AVX2_INLINE void store8(void* out, int64_t at, __m256 y) {
  if constexpr (kOut == GemmOutput::kFloat32) {
    _mm256_storeu_ps(static_cast<float*>(out) + at, y);
  } else {
    const __m128i h = _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + at), h);
  }
}

// A micro-kernel's block of MR rows x NV * 8 columns inside a float output: the columns' scales
// and biases loaded once for its rows, the row scales and (AND) activation popcounts per row.
template <int MR, int NV>
struct FloatBlock {
  BITMAPS_AVX2_INLINE FloatBlock(const GemmArgs& g, int64_t m, int64_t n)
      : out(g.out), row0(m * g.n + n), ld(g.n), bias(g.bias != nullptr),
        k(static_cast<int32_t>(g.k)),
        a_popcount(g.a_popcount != nullptr ? g.a_popcount + m : nullptr) {
    for (int v = 0; v < NV; ++v) {
      col_scales[v] = _mm256_loadu_ps(g.col_scale + n + v * 8);
      biases[v] = bias ? _mm256_loadu_ps(g.bias + n + v * 8) : _mm256_setzero_ps();
    }
    for (int r = 0; r < MR; ++r) row_scales[r] = g.row_scale[m + r];
  }
  void* out;
  int64_t row0, ld;
  bool bias;
  int32_t k;                   // dot = k - 2 * popcount(a XOR w)
  const int32_t* a_popcount;   // unsigned activations: dot = a_popcount[r] - 2 * popcount(a AND w)
  __m256 col_scales[NV], biases[NV];
  float row_scales[MR];
};

// The epilogue of a whole float block, unrolled (GELU a template flag: its polynomial inside the
// loop kept GCC from unrolling it): the same float32 operations in the same order as store_output.
// acc: 2 * popcount per output (micro's widening).
template <GemmOutput kOut, bool kGelu, bool kAnd, int MR, int NV>
BITMAPS_AVX2_INLINE void float_block(const FloatBlock<MR, NV>& f, const __m256i (&acc)[MR][NV]) {
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    const __m256i base = _mm256_set1_epi32(kAnd ? f.a_popcount[r] : f.k);
    const __m256 row_scale = _mm256_set1_ps(f.row_scales[r]);
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __m256i dot = _mm256_sub_epi32(base, acc[r][v]);
      store8<kOut>(f.out, f.row0 + r * f.ld + v * 8,
                   scale8(dot, row_scale, f.col_scales[v], f.bias, f.biases[v], kGelu));
    }
  }
}

// Lanes whose dot lies outside [lo, hi] (lo > dot or dot > hi): all ones there, zero inside.
BITMAPS_AVX2_INLINE __m256i outside8(__m256i lo, __m256i hi, __m256i dot) {
  return _mm256_or_si256(_mm256_cmpgt_epi32(lo, dot), _mm256_cmpgt_epi32(dot, hi));
}

// The fused FFN's intermediate for a whole block of MR rows x NV * 8 columns inside the output,
// unrolled (kRuns ranges per column: the common 1 and 2): each column's ranges loaded once for
// its rows; a column's bit is 1 unless its dot product lies outside every range. The same bits as
// output_bit. acc: 2 * popcount per output (micro's widening).
template <int kRuns, bool kAnd, int MR, int NV>
BITMAPS_AVX2_INLINE void bit_block(const GemmArgs& g, int64_t m, int64_t n,
                                   const __m256i (&acc)[MR][NV]) {
  static_assert(NV * 8 == 16, "one half-word of output bits per row");
  __m256i lo[kRuns][NV], hi[kRuns][NV];
  for (int i = 0; i < kRuns; ++i) {
    for (int v = 0; v < NV; ++v) {
      const int64_t at = i * g.n + n + v * 8;
      lo[i][v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_lo + at));
      hi[i][v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_hi + at));
    }
  }
  const int64_t row_halves = 2 * packed_width(g.n);  // output half-words per row
  uint16_t* const words =
      reinterpret_cast<uint16_t*>(static_cast<int32_t*>(g.out) + m * packed_width(g.n)) + n / 16;
  const __m256i kvec = _mm256_set1_epi32(static_cast<int>(g.k));
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    const __m256i base = kAnd ? _mm256_set1_epi32(g.a_popcount[m + r]) : kvec;
    uint32_t outside_bits = 0;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __m256i dot = _mm256_sub_epi32(base, acc[r][v]);
      // outside range i: lo > dot or dot > hi; outside all of them: the AND over the ranges
      __m256i outside = outside8(lo[0][v], hi[0][v], dot);
      for (int i = 1; i < kRuns; ++i) {
        outside = _mm256_and_si256(outside, outside8(lo[i][v], hi[i][v], dot));
      }
      outside_bits |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(outside)))
                      << (v * 8);
    }
    words[r * row_halves] = static_cast<uint16_t>(~outside_bits);
  }
}

// Output lines of a micro-kernel's block prefetched for writing, as in the AVX-512 path (store
// misses overlap the K loop).
template <int MR, int NV, GemmOutput kOut>
BITMAPS_AVX2_INLINE void prefetch_output(const GemmArgs& g, int64_t m, int64_t n) {
  constexpr int kOutBytes = kOut == GemmOutput::kFloat16 ? 2 : 4;
  const int64_t out_bytes = std::min<int64_t>(NV * 8, g.n - n) * kOutBytes;
  for (int r = 0; r < MR && kOut != GemmOutput::kBits; ++r) {
    const char* row = static_cast<const char*>(g.out) + ((m + r) * g.n + n) * kOutBytes;
    for (int64_t line = 0; line < out_bytes; line += 64) __builtin_prefetch(row + line, 1, 3);
  }
}

template <int MR, int NV, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2_INLINE void epilogue(const GemmArgs& g, int64_t m, int64_t n,
                                  const __m256i (&acc)[MR][NV]);

// The 4 x 2 form (Avx2KLoop::kRegisters). s: rows m.. of the activation, split (split_rows);
// b: panel n / 16, split (split_panel).
template <int MR, int NV, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void micro(const GemmArgs& g, int64_t m, int64_t n, const uint32_t* s,
                        const __m256i* b) {
  const int64_t kw = g.kw;
  prefetch_output<MR, NV, kOut>(g, m, n);
  // The byte counts widened doubled (VPMADDUBSW by 2: at most 2 * 2 * 248 per 16-bit pair), so
  // that acc holds 2 * popcount and every epilogue's dot is base - acc.
  const __m256i twos8 = _mm256_set1_epi8(2);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc[MR][NV];
  for (int64_t w0 = 0; w0 < kw; w0 += kByteWords) {
    const int64_t w1 = std::min(kw, w0 + kByteWords);
    __m256i bytes[MR][NV];
    if constexpr (MR == kMR && NV == 2) {
      xnor_block_4x2<kAnd>(s + w0, kw, b + w0 * kSplitVectors, w1 - w0, bytes);
    } else {
      for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) bytes[r][v] = _mm256_setzero_si256();
      }
      for (int64_t w = w0; w < w1; ++w) xnor_step<MR, NV, kAnd>(s, kw, w, b, bytes);
    }
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) {
        const __m256i counts = _mm256_madd_epi16(_mm256_maddubs_epi16(bytes[r][v], twos8), ones16);
        // the first block's counts are the accumulator (K <= 992, one block: no zeroing, no add)
        acc[r][v] = w0 == 0 ? counts : _mm256_add_epi32(acc[r][v], counts);
      }
    }
  }
  epilogue<MR, NV, kOut, kAnd>(g, m, n, acc);
}

// Two vectors of quadword popcounts, of weight rows 0 1 | 4 5 and 2 3 | 6 7 (split_panel_pairs'
// order), to the 8 rows' doubled int32 counts in order (0 1 2 3 | 4 5 6 7): the accumulators of
// micro's epilogue.
BITMAPS_AVX2_INLINE __m256i doubled_in_order(__m256i rows0145, __m256i rows2367) {
  const __m256i ordered = _mm256_castps_si256(_mm256_shuffle_ps(
      _mm256_castsi256_ps(rows0145), _mm256_castsi256_ps(rows2367), _MM_SHUFFLE(2, 0, 2, 0)));
  return _mm256_add_epi32(ordered, ordered);
}

// The K-pair form (Avx2KLoop::kFolded): MR <= kMR rows of a 4-row group of split_rows (lo: its
// first row's low words, kws words per split row, pair_words) against panel n / 16 split into
// pairs (split_panel_pairs, b), two rows at a time; the same accumulators as micro for one
// epilogue. GCC 12 warns that rows[][] may be read unset: the first block (j0 = 0, always run:
// kws >= 2) sets every element before any add reads it. Zeroing them first instead ran the
// K = 768 GEMMs 2 % slower on the Zen 1 EPYC (other code generated around the loop).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int MR, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void micro_pairs(const GemmArgs& g, int64_t m, int64_t n, const uint32_t* lo,
                              int64_t kws, const __m256i* b) {
  static_assert(MR >= 1 && MR <= kMR, "the rows of one group");
  prefetch_output<MR, kNV, kOut>(g, m, n);
  const int64_t pairs = kws / 2;
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[MR][kNV];
  for (int r0 = 0; r0 < MR; r0 += kPairRows) {
    const int rows_here = std::min(kPairRows, MR - r0);
    const uint32_t* const row0 = lo + r0 * kws;
    __m256i rows[kPairRows][kPairNV];  // per weight row (a quadword) its popcount
    for (int64_t j0 = 0; j0 < pairs; j0 += kBytePairs) {
      const int64_t j1 = std::min(pairs, j0 + kBytePairs);
      __m256i bytes[kPairRows][kPairNV];
      if (rows_here == kPairRows) {
        xnor_pairs_2x4<kAnd>(row0 + 2 * j0, row0 + kws + 2 * j0, kws * 4,
                             b + j0 * kPairVectors, j1 - j0, bytes);
      } else {  // a group's last odd row
        pair_steps_1x4<kAnd>(row0, row0 + kMR * kws, b, j0, j1, bytes[0]);
      }
      for (int r = 0; r < rows_here; ++r) {
        for (int v = 0; v < kPairNV; ++v) {
          const __m256i counts = _mm256_sad_epu8(bytes[r][v], zero);
          rows[r][v] = j0 == 0 ? counts : _mm256_add_epi64(rows[r][v], counts);
        }
      }
    }
    for (int r = 0; r < rows_here; ++r) {
      for (int v = 0; v < kNV; ++v) {
        acc[r0 + r][v] = doubled_in_order(rows[r][2 * v], rows[r][2 * v + 1]);
      }
    }
  }
  epilogue<MR, kNV, kOut, kAnd>(g, m, n, acc);
}

// The wide K-pair form: MR <= kMR rows of a group (as micro_pairs) against panels n / 16 and
// n / 16 + 1 side by side (split_panel_pairs with a stride of 2 * kPairVectors, b), one row at a
// time; each panel's 16 columns then go through micro_pairs' epilogue.
template <int MR, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void micro_pairs_wide(const GemmArgs& g, int64_t m, int64_t n, const uint32_t* lo,
                                   int64_t kws, const __m256i* b) {
  static_assert(MR >= 1 && MR <= kMR, "the rows of one group");
  prefetch_output<MR, kNV, kOut>(g, m, n);
  prefetch_output<MR, kNV, kOut>(g, m, n + kPanelRows);
  const int64_t pairs = kws / 2;
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[2][MR][kNV];  // per panel
  for (int r = 0; r < MR; ++r) {
    const uint32_t* const row = lo + r * kws;
    __m256i counts[kWideVectors];  // per weight row (a quadword) its popcount
    for (int64_t j0 = 0; j0 < pairs; j0 += kBytePairs) {
      const int64_t j1 = std::min(pairs, j0 + kBytePairs);
      __m256i bytes[kWideVectors];
      xnor_pairs_1x8<kAnd>(row + 2 * j0, kws * 4, b + j0 * 2 * kPairVectors, j1 - j0, bytes);
      for (int v = 0; v < kWideVectors; ++v) {
        const __m256i sums = _mm256_sad_epu8(bytes[v], zero);
        counts[v] = j0 == 0 ? sums : _mm256_add_epi64(counts[v], sums);
      }
    }
    for (int v = 0; v < kWideVectors / 2; ++v) {  // vectors 2v, 2v + 1 are of panel v / kNV
      acc[v / kNV][r][v % kNV] = doubled_in_order(counts[2 * v], counts[2 * v + 1]);
    }
  }
  epilogue<MR, kNV, kOut, kAnd>(g, m, n, acc[0]);
  epilogue<MR, kNV, kOut, kAnd>(g, m, n + kPanelRows, acc[1]);
}
#pragma GCC diagnostic pop

// The outputs of a micro-kernel's block from acc (2 * popcount per output, 8 columns a vector).
template <int MR, int NV, GemmOutput kOut, bool kAnd>
BITMAPS_AVX2_INLINE void epilogue(const GemmArgs& g, int64_t m, int64_t n,
                                  const __m256i (&acc)[MR][NV]) {
  const __m256i kvec = _mm256_set1_epi32(static_cast<int>(g.k));
  // g's fields in locals: the vector stores below may alias anything (their types carry
  // may_alias), so read through g the compiler reloads each field after every store.
  const int64_t n_cols = g.n;
  const float* const col_scale = g.col_scale;
  const float* const bias = g.bias;
  const bool gelu = g.gelu;
  void* const out = g.out;
  if constexpr (kOut == GemmOutput::kFloat32 || kOut == GemmOutput::kFloat16) {
    if (n + NV * 8 <= n_cols) {  // the whole block inside the output: no edge checks
      const FloatBlock<MR, NV> f{g, m, n};
      if (gelu) return float_block<kOut, true, kAnd>(f, acc);
      return float_block<kOut, false, kAnd>(f, acc);
    }
  }
  if constexpr (kOut == GemmOutput::kBits && NV * 8 == 16) {
    if (n + NV * 8 <= n_cols) {
      if (g.bit_runs == 1) return bit_block<1, kAnd>(g, m, n, acc);
      if (g.bit_runs == 2) return bit_block<2, kAnd>(g, m, n, acc);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    const __m256i base = kAnd ? _mm256_set1_epi32(g.a_popcount[row]) : kvec;
    if constexpr (kOut == GemmOutput::kBits) {
      // The fused FFN's intermediate: the panel's 16 columns' bits at once (dot in one of the
      // column's ranges), written as one half-word of the output row (zeroed by the caller;
      // panels start at multiples of 16 columns), as the AVX-512 path does.
      uint32_t bits = 0;
      for (int v = 0; v < NV; ++v) {
        const int64_t col = n + v * 8;
        if (col >= g.n) break;
        const __m256i dot = _mm256_sub_epi32(base, acc[r][v]);
        if (col + 8 > g.n) {  // a ragged right edge: element by element
          alignas(32) int32_t dots[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(dots), dot);
          for (int64_t l = 0; l < 8 && col + l < g.n; ++l) {
            bits |= static_cast<uint32_t>(output_bit(g, col + l, dots[l])) << (v * 8 + l);
          }
          continue;
        }
        __m256i in_range = _mm256_setzero_si256();
        for (int i = 0; i < g.bit_runs; ++i) {
          const int64_t at = i * g.n + col;
          const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_lo + at));
          const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bit_hi + at));
          in_range = _mm256_or_si256(
              in_range, _mm256_xor_si256(outside8(lo, hi, dot), _mm256_set1_epi32(-1)));
        }
        bits |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(in_range))) << (v * 8);
      }
      uint16_t* words = reinterpret_cast<uint16_t*>(static_cast<int32_t*>(g.out) +
                                                    row * packed_width(g.n));
      words[n / 16] = static_cast<uint16_t>(bits);
      continue;
    }
    const __m256 row_scale =
        kOut == GemmOutput::kDotInt32 ? _mm256_setzero_ps() : _mm256_set1_ps(g.row_scale[row]);
    for (int v = 0; v < NV; ++v) {
      const int64_t col = n + v * 8;
      if (col >= n_cols) break;
      const __m256i dot = _mm256_sub_epi32(base, acc[r][v]);
      // A ragged right edge: element by element.
      if (col + 8 > n_cols) {
        alignas(32) int32_t dots[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(dots), dot);
        for (int64_t l = 0; l < 8 && col + l < n_cols; ++l) store_output(g, row, col + l, dots[l]);
        continue;
      }
      const int64_t at = row * n_cols + col;
      if constexpr (kOut == GemmOutput::kDotInt32) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(out) + at), dot);
        continue;
      } else {
        const __m256 b = bias != nullptr ? _mm256_loadu_ps(bias + col) : _mm256_setzero_ps();
        store8<kOut>(out, at,
                     scale8(dot, row_scale, _mm256_loadu_ps(col_scale + col), bias != nullptr, b,
                            gelu));
      }
    }
  }
}

// The micro-kernel of mr <= MR rows (a tile's last group may have fewer) in the K loop's form
// (pairs: Avx2KLoop::kFolded; wide: its form over two panels); s: the rows' group of split_rows,
// kws words per split row.
template <GemmOutput kOut, bool kAnd, int MR>
BITMAPS_AVX2_INLINE void run_micro(int mr, const GemmArgs& g, int64_t m, int64_t n,
                                   const uint32_t* s, int64_t kws, const __m256i* b, bool pairs,
                                   bool wide) {
  if constexpr (MR > 1) {
    if (mr < MR) return run_micro<kOut, kAnd, MR - 1>(mr, g, m, n, s, kws, b, pairs, wide);
  }
  if (wide) return micro_pairs_wide<MR, kOut, kAnd>(g, m, n, s, kws, b);
  if (pairs) return micro_pairs<MR, kOut, kAnd>(g, m, n, s, kws, b);
  micro<MR, kNV, kOut, kAnd>(g, m, n, s, b);
}

// Activation rows [m0, m1) split into their bytes' low nibbles and high nibbles shifted down, in
// the micro-kernels' layout (kSplitRows above; rows in groups of kMR, a last group's missing rows
// left unset); a ragged K's padding bits cleared in the last word, so that the micro-kernels need
// no mask. kws words per split row (kw, or pair_words(kw) for the K-pair form: the extra word
// zero). Once per tile: three vector ops per 8 words, against the tile's 8 panels of GEMM.
BITMAPS_AVX2 void split_rows(const GemmArgs& g, int64_t m0, int64_t m1, int64_t kws, uint32_t* s) {
  const int64_t kw = g.kw;
  const uint32_t last_mask = last_word_mask(g.k);
  const __m256i low4 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLow4));
  for (int64_t r = 0; r < m1 - m0; ++r) {
    const auto* a = reinterpret_cast<const uint32_t*>(g.a) + (m0 + r) * kw;
    uint32_t* lo = s + ((r / kMR) * kSplitRows + r % kMR) * kws;
    uint32_t* hi = lo + kMR * kws;
    int64_t w = 0;
    for (; w + 8 <= kw; w += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + w), _mm256_and_si256(v, low4));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + w),
                          _mm256_and_si256(_mm256_srli_epi32(v, 4), low4));
    }
    for (; w < kw; ++w) {
      lo[w] = a[w] & 0x0F0F0F0Fu;
      hi[w] = (a[w] >> 4) & 0x0F0F0F0Fu;
    }
    lo[kw - 1] &= last_mask;
    hi[kw - 1] &= last_mask >> 4;
    for (w = kw; w < kws; ++w) lo[w] = hi[w] = 0;
  }
}

// Panel p of the weights (pack_panels layout: kw words of kPanelRows rows each).
inline const int32_t* panel_of(const GemmArgs& g, int64_t p) {
  return g.panels + p * g.kw * kPanelRows;
}

// Panel p's weight vectors split like the activations, [kw][kSplitVectors] (low nibbles of its
// two 8-row halves, then their high nibbles shifted down). Once per panel of a tile, for all the
// tile's row groups: three vector ops per vector, instead of once per micro-kernel.
BITMAPS_AVX2 void split_panel(const GemmArgs& g, int64_t p, __m256i* out) {
  const __m256i low4 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLow4));
  const int32_t* panel = panel_of(g, p);
  for (int64_t w = 0; w < g.kw; ++w) {
    for (int v = 0; v < kNV; ++v) {
      const __m256i b =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + w * kPanelRows + v * 8));
      out[w * kSplitVectors + v] = _mm256_and_si256(b, low4);
      out[w * kSplitVectors + kNV + v] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
    }
  }
}

// Panel p's weight vectors in the K-pair form's layout, [pair_words(kw) / 2][kPairVectors] (per
// pair: the low nibbles of weight rows 0 1 | 4 5, 2 3 | 6 7, 8 9 | 12 13, 10 11 | 14 15, each
// row's two words side by side, then their high nibbles shifted down; a missing last odd word
// zero). The rows in the order of the 128-bit lanes that VPUNPCK makes: micro_pairs' SHUFPS of
// two vectors' counts then puts 8 rows in order, with no lane permute here or there. Pair j at
// out + j * stride (2 * kPairVectors: two panels side by side, for micro_pairs_wide).
BITMAPS_AVX2 void split_panel_pairs(const GemmArgs& g, int64_t p, __m256i* out,
                                    int64_t stride = kPairVectors) {
  const __m256i low4 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLow4));
  const int32_t* panel = panel_of(g, p);
  const int64_t pairs = pair_words(g.kw) / 2;
  for (int64_t j = 0; j < pairs; ++j) {
    for (int half = 0; half < 2; ++half) {  // weight rows 0-7, then 8-15
      const int32_t* even = panel + 2 * j * kPanelRows + half * 8;
      const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even));
      const int32_t* odd = even + kPanelRows;
      const __m256i o = 2 * j + 1 < g.kw
                            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd))
                            : _mm256_setzero_si256();
      // rows 0 1 | 4 5 and 2 3 | 6 7, each row's word 2j then 2j + 1
      const __m256i rows[2] = {_mm256_unpacklo_epi32(e, o), _mm256_unpackhi_epi32(e, o)};
      for (int i = 0; i < 2; ++i) {
        __m256i* pair = out + j * stride + 2 * half + i;
        pair[0] = _mm256_and_si256(rows[i], low4);
        pair[kPairNV] = _mm256_and_si256(_mm256_srli_epi16(rows[i], 4), low4);
      }
    }
  }
}

// Panel p's cache lines requested into L2 (prefetcht1), for split_panel's loads later.
BITMAPS_AVX2_INLINE void prefetch_panel(const GemmArgs& g, int64_t p) {
  const char* panel = reinterpret_cast<const char*>(panel_of(g, p));
  const int64_t bytes = g.kw * kPanelRows * static_cast<int64_t>(sizeof(int32_t));
  for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(panel + line, 0, 2);
}

// 32-byte aligned scratch (std::vector<__m256i> would drop the type's alignment).
struct alignas(32) Vector32 {
  uint8_t bytes[32];
};

template <GemmOutput kOut, bool kAnd>
BITMAPS_AVX2 void gemm_tile(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  thread_local std::vector<uint32_t> split;
  thread_local std::vector<Vector32> panel_split;
  // the call and rows `split` holds (tiles of one row block in turn: split once, not per tile)
  thread_local uint64_t split_call = 0;
  thread_local int64_t split_m0 = -1, split_m1 = -1;
  const bool pairs = avx2_kloop() == Avx2KLoop::kFolded;  // the K-pair form
  const int64_t kws = pairs ? pair_words(g.kw) : g.kw;      // words per split row
  const int64_t group_words = kSplitRows * kws;
  const int64_t words = (m1 - m0 + kMR - 1) / kMR * group_words;
  if (g.call == 0 || g.call != split_call || m0 != split_m0 || m1 != split_m1) {
    if (static_cast<int64_t>(split.size()) < words) split.resize(static_cast<size_t>(words));
    split_rows(g, m0, m1, kws, split.data());
    split_call = g.call, split_m0 = m0, split_m1 = m1;
  }
  // = pairs * kPairVectors per panel in the K-pair form, which splits two panels at a time
  const int64_t vectors = kws * kSplitVectors * (pairs ? 2 : 1);
  static_assert(2 * kSplitVectors == kPairVectors, "one scratch size per panel for both forms");
  if (static_cast<int64_t>(panel_split.size()) < vectors) {
    panel_split.resize(static_cast<size_t>(vectors));
  }
  auto* const b = reinterpret_cast<__m256i*>(panel_split.data());
  const int64_t panels = (g.n + kPanelRows - 1) / kPanelRows;
  for (int64_t n = n0; n < n1;) {
    const int64_t p = n / kPanelRows;
    // the K-pair form two panels at a time while the tile has two left (micro_pairs_wide)
    const bool wide = pairs && n + kPanelRows < n1;
    if (wide) {
      split_panel_pairs(g, p, b, 2 * kPairVectors);
      split_panel_pairs(g, p + 1, b + kPairVectors, 2 * kPairVectors);
    } else if (pairs) {
      split_panel_pairs(g, p, b);
    } else {
      split_panel(g, p, b);
    }
    // The next panels (of this tile, or the first of the next tile, which a thread usually claims
    // next) fetched towards L2 while these micro-kernels run: in a whole model the weights come
    // from L3 or memory, and split_panel waited on each of its lines.
    const int64_t next = p + (wide ? 2 : 1);
    for (int64_t q = next; q < std::min(panels, next + (wide ? 2 : 1)); ++q) prefetch_panel(g, q);
    for (int64_t m = m0; m < m1; m += kMR) {
      const uint32_t* group = split.data() + (m - m0) / kMR * group_words;
      const int rows = static_cast<int>(std::min<int64_t>(kMR, m1 - m));
      run_micro<kOut, kAnd, kMR>(rows, g, m, n, group, kws, b, pairs, wide);
    }
    n += (wide ? 2 : 1) * kPanelRows;
  }
}

template <bool kAnd>
void gemm_dispatch(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  switch (g.output) {
    case GemmOutput::kDotInt32:
      return gemm_tile<GemmOutput::kDotInt32, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat32:
      return gemm_tile<GemmOutput::kFloat32, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kFloat16:
      return gemm_tile<GemmOutput::kFloat16, kAnd>(g, m0, m1, n0, n1);
    case GemmOutput::kBits:
      return gemm_tile<GemmOutput::kBits, kAnd>(g, m0, m1, n0, n1);
  }
}

}  // namespace

void pack_signs_f32_avx2(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF32, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_avx2(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                         float* row_abs_mean, int32_t* out) {
  pack_dispatch<LoadF16, false>(x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_positive_f32_avx2(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF32, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void pack_positive_f16_avx2(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                            float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_dispatch<LoadF16, true>(x, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void xnor_gemm_tile_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (g.unsigned_a) return gemm_dispatch<true>(g, m0, m1, n0, n1);
  gemm_dispatch<false>(g, m0, m1, n0, n1);
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS

// What the int8 attention kernels share (cpu_attention_int8.cpp: portable and AVX2;
// cpu_attention_int8_neon.cpp: NEON with the dot-product extension): the scheme's constants of
// cpu_attention.h's header comment, the rounding of a row, and one head's scratch.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cpu_attention.h"

namespace bitmaps::cpu::detail {

constexpr float kInt8Levels = 127.0f;

inline int64_t int8_round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// What one row (or column) is rounded with: x * mul, rounded to nearest even; the integers stand
// for x / scale. A zero row: mul 0, scale 1.
struct RowScale {
  float mul, scale;
};
inline RowScale row_scale(float amax) {
  return amax > 0.0f ? RowScale{kInt8Levels / amax, amax / kInt8Levels} : RowScale{0.0f, 1.0f};
}

// The probability level of x = score - row max (<= 0): round(exp(x) * 127), exp(x) = 2^n e^r
// (n = round(x log2 e), r = x - n ln 2 in [-0.35, 0.35]) with e^r by its Taylor polynomial to
// r^4 (relative error < 5e-5, far inside a level's 0.4 %), on max(x, -6) (exp(-6) * 127 < 0.5:
// level 0 below). Every multiply and add a separate float32 rounding (no FMA) and 2^n exact: the
// same bits in torch and in ONNX's standard ops (bitmaps.core.int8_attention, the model-local
// function); no libm exp anywhere. (cpu_attention_int8.cpp's exp_level is the scalar form.)
constexpr float kExpFloor = -6.0f;
constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;
constexpr float kExpPoly[4] = {1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f};  // then * r + 1

constexpr int kInt8MR = static_cast<int>(kAttentionInt8Rows);

// One head's operands in a blocked kernel's layout (the AVX2 and NEON kernels; each array 32-byte
// aligned; dp = D rounded up to 32, tp = T rounded up to 16, dvp = Dv rounded up to 16, the
// padding zero). k and v are laid out per kernel (its file's header comment); their sizes are
// the same on every path.
struct Int8Head {
  int64_t dp, tp, dvp;
  int8_t* q;          // [S][dp] int8 rows
  int8_t* k;          // tp * dp bytes: keys in groups for the kernel's products
  int8_t* v;          // tp * dvp bytes: values likewise
  uint8_t* p;         // [S][tp]: the rounded probabilities (0 past T)
  int8_t* kblock;     // [8][dp]: keys rounded, before their layout
  uint8_t* attended;  // [tp]: nonzero where some row's level is (V's scales use those keys)
  float* sq;          // [S]
  float* ksc;         // [tp]
  float* vmul;        // [dvp]
  float* sv;          // [dvp]
  float* total;       // [S]: the sum of each row's levels
  float* scores;      // [kInt8MR][tp]
};

// The arrays of w inside scratch (attention_int8_scratch_floats(a) floats).
inline Int8Head int8_head(const AttentionArgs& a, float* scratch) {
  Int8Head w;
  const int64_t S = a.q_len;
  w.dp = int8_round_up(a.head_dim, 32);
  w.tp = int8_round_up(a.kv_len, 16);
  w.dvp = int8_round_up(a.v_head_dim, 16);
  // every array 32-byte aligned (attention_int8_scratch_floats counts the margins)
  auto next = reinterpret_cast<uintptr_t>(scratch);
  auto take = [&next](int64_t bytes) {
    next = (next + 31) / 32 * 32;
    const uintptr_t at = next;
    next += static_cast<uintptr_t>(bytes);
    return at;
  };
  w.q = reinterpret_cast<int8_t*>(take(S * w.dp));
  w.k = reinterpret_cast<int8_t*>(take(w.tp * w.dp));
  w.v = reinterpret_cast<int8_t*>(take(w.tp * w.dvp));
  w.p = reinterpret_cast<uint8_t*>(take(S * w.tp));
  w.kblock = reinterpret_cast<int8_t*>(take(8 * w.dp));
  w.attended = reinterpret_cast<uint8_t*>(take(w.tp));
  w.sq = reinterpret_cast<float*>(take(4 * S));
  w.ksc = reinterpret_cast<float*>(take(4 * w.tp));
  w.vmul = reinterpret_cast<float*>(take(4 * w.dvp));
  w.sv = reinterpret_cast<float*>(take(4 * w.dvp));
  w.total = reinterpret_cast<float*>(take(4 * S));
  w.scores = reinterpret_cast<float*>(take(4 * kInt8MR * w.tp));
  return w;
}

// Every query row in blocks of kInt8MR rows (a last block of 1 to kInt8MR - 1): fn(MR, s0) per
// block, MR a std::integral_constant.
template <class Fn>
inline void int8_row_blocks(int64_t rows, const Fn& fn) {
  static_assert(kInt8MR == 4, "the tail below covers 1 to 3 rows");
  int64_t s = 0;
  for (; s + kInt8MR <= rows; s += kInt8MR) fn(std::integral_constant<int, kInt8MR>{}, s);
  switch (rows - s) {
    case 1: return fn(std::integral_constant<int, 1>{}, s);
    case 2: return fn(std::integral_constant<int, 2>{}, s);
    case 3: return fn(std::integral_constant<int, 3>{}, s);
    default: return;
  }
}

}  // namespace bitmaps::cpu::detail

// Multi-head scaled dot-product attention on the CPU, torch-free: the float part of a binary
// encoder layer that sits between its BinaryLinear projections (bitmaps::MultiHeadAttention, the
// onnxruntime export target's attention node; csrc/onnxruntime/README.md).
//
//   out[b, s, h, :] = sum_t softmax_t(scale * <q[b, s, h, :], k[b, t, h, :]> + bias[b, h, s, t])
//                     * v[b, t, h, :]
//
// q [B, S, H * D], k [B, T, H * D], v [B, T, H * Dv] and out [B, S, H * Dv] are row-major with
// the heads side by side in the last dimension (the layout of the Q, K and V projections' outputs,
// so no transpose is needed around the op; q, k and v may have longer rows, AttentionArgs'
// strides, e.g. one stacked Q, K, V tensor). bias is additive (BERT's key-padding mask:
// 0 or a large negative number) with its own strides, 0 to broadcast a dimension.
//
// One work item is one (b, h) pair: K of that head is transposed (and scaled) once into scratch,
// then blocks of six query rows go through scores (Q K^T), a row softmax (exp of x - max, sum) and
// the product with V, normalized by 1 / sum at the end (the AVX-512, AVX2 and NEON paths: every
// block's scores and softmax first, then every block's product with V). They compute exp with a
// polynomial (Cephes' expf, about 1 ulp) and 2^n by VSCALEFPS or the exponent bits; the scalar
// path and the AVX2 path on a CPU without FMA run a portable C++ version of the same steps that
// the compiler vectorizes.
//
// int8 attention (AttentionArgs::int8; opt-in, `bitmaps export --attention int8`): per (b, h),
// each row of Q and of K (D values), and each column of V over the attended keys (below), is
// rounded to integers in [-127, 127]: x * (127 / max|x|) rounded to nearest even, standing for
// x * (max|x| / 127) (a zero row: all 0, scale 1). Then, in this order of float32 operations,
// none fused,
//   score[s, t] = (float(sum_d q8[s, d] k8[t, d]) * sq[s]) * (sk[t] * scale) + bias[b, h, s, t]
//   p[s, t]     = level(score[s, t] - max_t score[s, t])       (0..127, cpu_attention_int8.cpp:
//                 round(exp(x) * 127) with exp = 2^n times a degree-4 polynomial, x >= -6)
//   attended[t] = some p[s, t] > 0: V's column scales over those keys only, v8 = 0 at the others
//                 (a masked padding key's value changes nothing)
//   out[s, d]   = (float(sum_t p[s, t] v8[t, d]) * sv[d]) / float(sum_t p[s, t])
// The integer sums are exact; every other step is one IEEE float32 operation, so
// bitmaps.core.int8_attention (torch) and the model-local function (ONNX standard ops) compute the
// same bits. The AVX2 and AVX-512 paths run an AVX2 kernel (VPMADDUBSW), the NEON path on a CPU
// with the dot-product extension an SDOT kernel (cpu_attention_int8_neon.cpp), every other path
// a portable one (cpu_attention_int8.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_features.h"

namespace bitmaps::cpu {

struct AttentionArgs {
  const float* q = nullptr;  // [batch, q_len, heads * head_dim]
  const float* k = nullptr;  // [batch, kv_len, heads * head_dim]
  const float* v = nullptr;  // [batch, kv_len, heads * v_head_dim]
  // Additive bias or null: element (b, h, s, t) at b * bias_stride[0] + h * bias_stride[1] +
  // s * bias_stride[2] + t.
  const float* bias = nullptr;
  int64_t bias_stride[3] = {0, 0, 0};
  int64_t batch = 0, q_len = 0, kv_len = 0, heads = 0, head_dim = 0, v_head_dim = 0;
  // Elements from one position's row of q / k / v to the next; 0: the row is the heads alone
  // (heads * head_dim, heads * v_head_dim). Q, K and V side by side in one [batch, len, 3 * hidden]
  // tensor (bitmaps::PackedMultiHeadAttention) are three pointers into it with stride 3 * hidden.
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;
  float scale = 1.0f;
  float* out = nullptr;  // [batch, q_len, heads * v_head_dim]
  // int8 attention (bitmaps::MultiHeadAttention's int8 = 1; the header comment's second scheme)
  bool int8 = false;

  int64_t q_row() const { return q_stride != 0 ? q_stride : heads * head_dim; }
  int64_t k_row() const { return k_stride != 0 ? k_stride : heads * head_dim; }
  int64_t v_row() const { return v_stride != 0 ? v_stride : heads * v_head_dim; }
  // Q, K and V side by side in one [batch, seq, 3 * heads * head_dim] tensor (a stacked
  // projection's output): the three pointers into it, their row stride and the shapes.
  void set_packed(const float* qkv, int64_t batch_size, int64_t seq, int64_t num_heads,
                  int64_t dim) {
    const int64_t hidden = num_heads * dim;
    q = qkv;
    k = qkv + hidden;
    v = qkv + 2 * hidden;
    q_stride = k_stride = v_stride = 3 * hidden;
    batch = batch_size;
    q_len = kv_len = seq;
    heads = num_heads;
    head_dim = v_head_dim = dim;
  }
  // Whether a row-major bias of `dims` [4] broadcasts to [batch, heads, q_len, kv_len]: each of
  // the first three dimensions 1 or full, the last full (the shape fields must be set).
  bool bias_fits(const int64_t* dims) const {
    const int64_t want[4] = {batch, heads, q_len, kv_len};
    for (int i = 0; i < 4; ++i) {
      if (dims[i] != want[i] && (dims[i] != 1 || i == 3)) return false;
    }
    return true;
  }
  // The bias: row-major data of `dims` (bias_fits), strides 0 along a broadcast dimension.
  void set_bias(const float* data, const int64_t* dims) {
    bias = data;
    bias_stride[0] = dims[0] == 1 ? 0 : dims[1] * dims[2] * dims[3];
    bias_stride[1] = dims[1] == 1 ? 0 : dims[2] * dims[3];
    bias_stride[2] = dims[2] == 1 ? 0 : dims[3];
  }
};

// The whole op over the caller's threads (work items: batch * heads). Returns the workers used.
int attention(CpuPath path, const AttentionArgs& args, const Parallel& parallel);

namespace detail {
constexpr int64_t kAttentionRows = 6;  // query rows whose scores the blocked kernels keep at once
inline int64_t attention_padded_kv(int64_t kv_len) { return (kv_len + 15) / 16 * 16; }

// The scratch of one head in the blocked kernels (AVX-512, AVX2, NEON).
struct HeadScratch {
  float* kt;   // [D, tp]: scale * K of the head, transposed (padding columns zero)
  float* v;    // [T, Dv]: V of the head, contiguous (its rows in place are heads * Dv apart, a
               // stride that maps them onto few L1 sets)
  float* inv;  // [q_len]: 1 / sum of each row's exp
  float* p;    // [q_len, tp]: scores, then exp(score - max)
};

inline HeadScratch head_scratch(const AttentionArgs& a, float* scratch) {
  HeadScratch s;
  s.kt = scratch;
  s.v = s.kt + a.head_dim * attention_padded_kv(a.kv_len);
  s.inv = s.v + a.kv_len * a.v_head_dim;
  s.p = s.inv + a.q_len;
  return s;
}

// V of head h of batch b into v [T, Dv].
inline void copy_head_values(const AttentionArgs& a, int64_t b, int64_t h, float* v) {
  const int64_t T = a.kv_len, Dv = a.v_head_dim, ldv = a.v_row();
  for (int64_t t = 0; t < T; ++t) std::copy_n(a.v + (b * T + t) * ldv + h * Dv, Dv, v + t * Dv);
}

// Every query row in blocks of kAttentionRows rows (a last block of 1 to 5): fn(MR, s0) per
// block, MR a std::integral_constant. The blocked kernels make all scores first, then all
// products with V: each phase keeps one operand (K^T, then V) in L1 instead of alternating between
// the two every six rows (BERT-base heads: 32 KB each; measured 1-5 % faster per block at one
// thread on AVX-512, Intel Xeon).
template <class Fn>
inline void row_blocks(int64_t rows, const Fn& fn) {
  constexpr int kMR = static_cast<int>(kAttentionRows);
  int64_t s = 0;
  for (; s + kMR <= rows; s += kMR) fn(std::integral_constant<int, kMR>{}, s);
  static_assert(kMR == 6, "the tail below covers 1 to 5 rows");
  switch (rows - s) {
    case 1: return fn(std::integral_constant<int, 1>{}, s);
    case 2: return fn(std::integral_constant<int, 2>{}, s);
    case 3: return fn(std::integral_constant<int, 3>{}, s);
    case 4: return fn(std::integral_constant<int, 4>{}, s);
    case 5: return fn(std::integral_constant<int, 5>{}, s);
    default: return;
  }
}
// One (b, h) item; scratch holds attention_scratch_floats(args) floats.
int64_t attention_scratch_floats(const AttentionArgs& args);
void attention_head_portable(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
// The int8 scheme (cpu_attention_int8.cpp): scratch of attention_int8_scratch_floats(args).
constexpr int64_t kAttentionInt8Rows = 4;  // query rows per block of the AVX2 and NEON int8 kernels
int64_t attention_int8_scratch_floats(const AttentionArgs& args);
void attention_head_int8_portable(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
#if defined(BITMAPS_HAVE_X86_PATHS)
void attention_head_avx512(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
// The AVX2 path's kernel; it needs FMA too (attention() checks).
void attention_head_avx2(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
// The int8 scheme on AVX2: the AVX2 and AVX-512 paths' int8 kernel.
void attention_head_int8_avx2(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
void attention_head_neon(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
// The int8 scheme with SDOT (cpu_attention_int8_neon.cpp): the NEON path's int8 kernel on a CPU
// with the dot-product extension (cpu_has_neon_dotprod(); without it the portable one runs).
void attention_head_int8_neon(const AttentionArgs& args, int64_t b, int64_t h, float* scratch);
#endif
}  // namespace detail

}  // namespace bitmaps::cpu

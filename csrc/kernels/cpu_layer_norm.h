// Residual add + LayerNorm over the last dimension on the CPU, torch-free: the float step that
// follows each sublayer of a post-LN encoder (bitmaps::SkipLayerNormalization, the onnxruntime
// export target's node for Add + LayerNormalization in a binary model).
//
//   s = x + skip;  out = (s - mean(s)) / sqrt(var(s) + epsilon) * gamma + beta      (per row)
//
// mean and the (biased) variance are taken in two passes over the row in float32, the variance of
// s - mean; rows are independent, so rows are the work items. The AVX-512, AVX2 and NEON paths
// have loops of their own (cpu_layer_norm_{avx512,avx2,neon}.cpp), the scalar path runs the
// portable one at the build's baseline.
#pragma once

#include <cstdint>

#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_features.h"

namespace bitmaps::cpu {

struct AddLayerNormArgs {
  const float* x = nullptr;     // [rows, n]
  const float* skip = nullptr;  // [rows, n], or null (LayerNorm alone)
  const float* gamma = nullptr;  // [n]
  const float* beta = nullptr;   // [n], or null
  int64_t rows = 0, n = 0;
  float epsilon = 1e-12f;
  float* out = nullptr;  // [rows, n]
};

// The whole op over the caller's threads. Returns the workers used.
int add_layer_norm(CpuPath path, const AddLayerNormArgs& args, const Parallel& parallel);

namespace detail {
void add_layer_norm_rows_portable(const AddLayerNormArgs& args, int64_t r0, int64_t r1);
#if defined(BITMAPS_HAVE_X86_PATHS)
void add_layer_norm_rows_avx512(const AddLayerNormArgs& args, int64_t r0, int64_t r1);
void add_layer_norm_rows_avx2(const AddLayerNormArgs& args, int64_t r0, int64_t r1);
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
void add_layer_norm_rows_neon(const AddLayerNormArgs& args, int64_t r0, int64_t r1);
#endif
// The rows of [r0, r1) on `path`'s loop (AVX-512, AVX2, NEON, else the portable one).
void add_layer_norm_rows(CpuPath path, const AddLayerNormArgs& args, int64_t r0, int64_t r1);
}  // namespace detail

}  // namespace bitmaps::cpu

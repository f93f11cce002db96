// CUDA launchers for the bitmaps ops: torch-free, raw pointers + sizes + a cudaStream_t in, a
// cudaError_t out (never an exception). The PyTorch adapter (csrc/torch/*.cu) and the TensorRT
// plugin (plugins/binaryLinearPlugin) both call exactly these functions.
//
// Semantics are those of DESIGN.md and bitmaps/core/ops.py (reference_*): x - beta and the row
// mean of |x - beta| in float32, sign(0) = +1, packed LSB-first along K into 32-bit words,
//   Y[m, n] = s[m] * w_scale[n] * (K - 2 * popcount(xbits[m] XOR W[n])) + bias[n]
// or, with act_unsigned ({0, 1} activations, abits = (x - beta > 0)),
//   Y[m, n] = s[m] * w_scale[n] * (popcount(abits[m]) - 2 * popcount(abits[m] AND W[n])) + bias[n]
// with the products taken in that order (no fused multiply-add), so that with a fixed act_scale the
// result is bit-identical to the float32 reference. Padding bits of packed operands (K not a
// multiple of 32) are ignored, as by the CPU kernels: they need not be 0.
//
// Three GEMM paths, chosen at run time from the device's compute capability (or forced, to compare
// them on a GPU): Hopper wgmma b1 (sm_90a, AND+popc with the row-popcount identity), mma.sync b1
// m16n8k256 xor.popc (sm_80 and later), and a plain __popc path that runs anywhere.
// Kernels assume valid input; the adapters validate.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace bitmaps {
namespace cuda {

// Float inputs: pack_signs takes all four (as the CPU op does), binary_linear float32 / float16.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

enum class GemmPath : int {
  kAuto = 0,   // the fastest path this device and this build support
  kPopc = 1,   // plain CUDA cores: __popc(a ^ b); any GPU, the reference path
  kMma = 2,    // mma.sync.m16n8k256 .b1 xor.popc (tensor cores, sm_80+)
  kWgmma = 3,  // wgmma.mma_async.m64nNk256 .b1 and.popc (tensor cores, sm_90a only)
};

// "auto", "popc", "mma", "wgmma".
const char* gemm_path_name(GemmPath path);

// Parses a path name (as above); returns false for anything else.
bool parse_gemm_path(const char* name, GemmPath* path);

// The path forced by the environment variable BITMAPS_CUDA_GEMM_PATH (unset or empty: kAuto).
// Returns false, leaving *path untouched, when the variable holds an unknown name.
bool gemm_path_from_env(GemmPath* path);

// Bit mask (1 << int(GemmPath)) of the paths that this build can run on `device`: it probes which
// code was compiled for the device (e.g. wgmma only exists in sm_90a code). Cached per device; the
// probe reads kernel attributes only (no stream operation, no synchronization), so every call,
// the first included, is legal inside CUDA-graph capture. Returns
// cudaErrorNoKernelImageForDevice when this build has no code for the device at all.
cudaError_t supported_gemm_paths(int device, unsigned* mask);

// The concrete path that `requested` resolves to on `device` (kAuto picks; a forced path is
// returned as is when supported). cudaErrorNotSupported when a forced path is not available.
cudaError_t resolve_gemm_path(int device, GemmPath requested, GemmPath* resolved);

// Pack the signs of x [M, K] (any DType, row-major) into packed [M, ceil(K/32)] words.
// Bit 1 where x < 0 (compared in x's own precision).
cudaError_t pack_signs(const void* x, DType dtype, int64_t m, int64_t k, int32_t* packed,
                       cudaStream_t stream);

// Binarize and pack activations (float32 / float16) with the per-row scale, fused:
// xb = x - act_threshold; packed = bits of (xb < 0), or of (xb > 0) when act_unsigned;
// row_scale[m] = act_scale if act_scale > 0 else mean_k |xb[m, k]|.
cudaError_t pack_activations(const void* x, DType dtype, int64_t m, int64_t k, float act_threshold,
                             float act_scale, bool act_unsigned, int32_t* packed,
                             float* row_scale, cudaStream_t stream);

// out [M, N] int32 = K - 2 * popcount(a[m] XOR b[n]); a [M, KW], b [N, KW], KW = ceil(K/32).
cudaError_t xnor_gemm(const int32_t* a, const int32_t* b, int64_t m, int64_t n, int64_t k,
                      int32_t* out, GemmPath path, cudaStream_t stream);

// Bytes of workspace binary_linear needs for m rows of k features (packed rows + row scales).
size_t binary_linear_workspace_size(int64_t m, int64_t k);

// The fused op: y [M, N] (dtype of x: float32 or float16) from x [M, K], packed weights
// w [N, KW], w_scale [N], bias [N] or nullptr. `workspace` holds at least
// binary_linear_workspace_size(m, k) bytes, 256-byte aligned.
cudaError_t binary_linear(const void* x, DType dtype, const int32_t* w, const float* w_scale,
                          const float* bias, int64_t m, int64_t n, int64_t k, float act_threshold,
                          float act_scale, bool act_unsigned, void* y, void* workspace,
                          size_t workspace_bytes, GemmPath path, cudaStream_t stream);

}  // namespace cuda
}  // namespace bitmaps

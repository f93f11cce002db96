// Internals shared by the three CUDA XNOR-GEMM paths (xnor_gemm_popc.cu, xnor_gemm_mma.cu,
// xnor_gemm_wgmma.cu): the epilogue that turns an integer dot product into the op's output, and
// the per-path entry points the dispatcher in binary_linear_cuda.cu calls. Not a public header.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "kernels/bit_layout.h"

namespace bitmaps {
namespace cuda {
namespace detail {

enum class OutKind : int { kInt32 = 0, kFloat32 = 1, kFloat16 = 2 };

// What the GEMM does with dot[m, n] = K - 2 * popcount(a[m] XOR b[n]).
struct Epilogue {
  void* out;               // [M, N] row-major, int32 / float32 / float16 per OutKind
  const float* row_scale;  // [M]    (float outputs only)
  const float* w_scale;    // [N]    (float outputs only)
  const float* bias;       // [N] or nullptr
};

// The problem, as every kernel sees it. a: [M, KW], b: [N, KW] packed words.
// last_mask = last_word_mask(k): the kernels AND word KW - 1 of both operands with it, so that
// padding bits that are not 0 (a packed operand from elsewhere) are ignored, as on CPU.
struct GemmProblem {
  const uint32_t* a;
  const uint32_t* b;
  int64_t m;
  int64_t n;
  int32_t k;
  int32_t kw;
  uint32_t last_mask;
};

// The integer dot product from popcount(a XOR b) (and popcount(b), the weight row):
//   signed   (a, b in {-1, +1}):          K - 2 popcount(a XOR b)
//   unsigned (a in {0, 1}, b in {-1, +1}): popcount(a) - 2 popcount(a AND b)
//                                        = popcount(a XOR b) - popcount(b)
// (popcount(a XOR b) = popcount(a) + popcount(b) - 2 popcount(a AND b)).
template <bool kUnsigned>
__device__ __forceinline__ int32_t dot_from_xor(int32_t k, int32_t xor_pop, int32_t pop_b) {
  if constexpr (kUnsigned) {
    return xor_pop - pop_b;
  } else {
    (void)pop_b;
    return binary_dot(k, xor_pop);
  }
}

// One float output value. Products in the reference's order, with explicit round-to-nearest
// intrinsics so nvcc cannot contract them into an FMA: (dot * s) * alpha + bias.
__device__ __forceinline__ float output_value(const Epilogue& ep, int64_t col, int32_t dot,
                                              float row_scale) {
  float v = __fmul_rn(__fmul_rn(static_cast<float>(dot), row_scale), ep.w_scale[col]);
  if (ep.bias != nullptr) v = __fadd_rn(v, ep.bias[col]);
  return v;
}

// Writes one output element.
template <OutKind kOut>
__device__ __forceinline__ void store_output(const Epilogue& ep, int64_t n_cols, int64_t row,
                                             int64_t col, int32_t dot) {
  const int64_t idx = row * n_cols + col;
  if constexpr (kOut == OutKind::kInt32) {
    static_cast<int32_t*>(ep.out)[idx] = dot;
  } else {
    const float v = output_value(ep, col, dot, ep.row_scale[row]);
    if constexpr (kOut == OutKind::kFloat32) {
      static_cast<float*>(ep.out)[idx] = v;
    } else {
      static_cast<__half*>(ep.out)[idx] = __float2half_rn(v);
    }
  }
}

// Writes the elements (row, col) and (row, col + 1) (col even): one 2-wide store (int2, float2,
// half2) where `vector_ok` (N even and `out` 8-byte aligned, so the pair is aligned) and both
// columns exist, else one element at a time. `row_scale` is ep.row_scale[row], loaded once by the
// caller for all its columns. Same values, bit for bit, as store_output.
template <OutKind kOut>
__device__ __forceinline__ void store_output_pair(const Epilogue& ep, int64_t n_cols, int64_t row,
                                                  int64_t col, int32_t dot0, int32_t dot1,
                                                  float row_scale, bool vector_ok) {
  if (!vector_ok || col + 1 >= n_cols) {
    if (col < n_cols) store_output<kOut>(ep, n_cols, row, col, dot0);
    if (col + 1 < n_cols) store_output<kOut>(ep, n_cols, row, col + 1, dot1);
    return;
  }
  const int64_t idx = row * n_cols + col;
  if constexpr (kOut == OutKind::kInt32) {
    *reinterpret_cast<int2*>(static_cast<int32_t*>(ep.out) + idx) = make_int2(dot0, dot1);
  } else {
    const float v0 = output_value(ep, col, dot0, row_scale);
    const float v1 = output_value(ep, col + 1, dot1, row_scale);
    if constexpr (kOut == OutKind::kFloat32) {
      *reinterpret_cast<float2*>(static_cast<float*>(ep.out) + idx) = make_float2(v0, v1);
    } else {
      *reinterpret_cast<__half2*>(static_cast<__half*>(ep.out) + idx) =
          __halves2half2(__float2half_rn(v0), __float2half_rn(v1));
    }
  }
}

// The mma path stores its outputs two at a time (store_output_pair): the default since the H200
// measured it faster (binary_linear 8192 x 768 x 3072: 86 us vs 146 us; benchmarks/results/
// gpu-check-h200). BITMAPS_CUDA_EPILOGUE=single (read on every launch) forces one element at a
// time, which make gpu-check times against it.
bool pair_epilogue_from_env();

// Whether environment variable `name` is set to exactly `value`: how the knobs of this header and
// the pack's (binary_linear_cuda.cu) are read, on every launch.
bool env_is(const char* name, const char* value);

// Two candidates for the mma path, each opt-in (read on every launch) and bit-identical to the
// default, until make gpu-check measures them faster (the H200 run of stop 31 measured the GEMM at
// 15 % of the b1 mma.sync peak; both change how the tensor cores are fed):
//   BITMAPS_CUDA_COPY=wide: global -> shared in 16-byte cp.async copies instead of 4-byte ones,
//     where KW is a multiple of 4 and both operands start 16-byte aligned (else 4-byte copies);
//   BITMAPS_CUDA_FRAGMENTS=ldmatrix: each warp loads its A and B fragments with ldmatrix.x4 (4
//     matrices of 8 rows x 16 bytes per instruction) instead of one 32-bit shared load per word.
bool wide_copy_from_env();
bool ldmatrix_fragments_from_env();

// kBytes (4 or 16) global -> shared asynchronous copy (sm_80+; both addresses kBytes-aligned;
// the 16-byte form bypasses L1); zero-fills when !valid, which is how tiles are padded past M, N
// and KW: zero words in both operands add nothing to popcount(a XOR b).
template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, bool valid) {
  static_assert(kBytes == 4 || kBytes == 16, "cp.async copies 4 or 16 bytes here");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? kBytes : 0;
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
                 "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem),
                 "r"(src_bytes));
  }
#else
  using Chunk = std::conditional_t<kBytes == 16, uint4, uint32_t>;
  *static_cast<Chunk*>(smem) = valid ? *static_cast<const Chunk*>(gmem) : Chunk{};
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the shared address of row l % 8 of
// matrix l / 8 (16 bytes, 16-byte aligned); register q of lane l receives 32-bit word l % 4 of
// row l / 4 of matrix q, which is where the b1 mma fragments want word t of row g.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint32_t* smem_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  (void)smem_row;
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// Per-path launchers (kUnsigned: {0, 1} activations, float outputs only). The dispatcher checks
// that the path's code exists for the current device before calling.
template <OutKind kOut, bool kUnsigned>
cudaError_t launch_popc(const GemmProblem& p, const Epilogue& ep, cudaStream_t stream);
template <OutKind kOut, bool kUnsigned>
cudaError_t launch_mma(const GemmProblem& p, const Epilogue& ep, int num_sms, cudaStream_t stream);
template <OutKind kOut, bool kUnsigned>
cudaError_t launch_wgmma(const GemmProblem& p, const Epilogue& ep, cudaStream_t stream);

// The instantiations every path provides (xnor_gemm: int32; binary_linear: float, both kinds).
#define BITMAPS_INSTANTIATE_GEMM_LAUNCHER(launcher, ...)                                        \
  template cudaError_t launcher<OutKind::kInt32, false>(__VA_ARGS__);                           \
  template cudaError_t launcher<OutKind::kFloat32, false>(__VA_ARGS__);                         \
  template cudaError_t launcher<OutKind::kFloat16, false>(__VA_ARGS__);                         \
  template cudaError_t launcher<OutKind::kFloat32, true>(__VA_ARGS__);                          \
  template cudaError_t launcher<OutKind::kFloat16, true>(__VA_ARGS__);

// Whether this build holds mma.sync / wgmma code for the current device. Each path has a probe
// kernel whose static shared memory is kProbeCompiledBytes in modules compiled with the path's
// instructions and kProbeAbsentBytes elsewhere; cudaFuncGetAttributes reports the module the
// driver picked for the current device. No stream operation and no synchronization, so the first
// call is legal inside CUDA-graph capture. cudaErrorNoKernelImageForDevice when the build has no
// code for the device at all.
constexpr int kProbeCompiledWords = 8;
constexpr int kProbeAbsentWords = 4;
cudaError_t probe_mma(bool* available);
cudaError_t probe_wgmma(bool* available);
cudaError_t probe_result(cudaError_t err, const cudaFuncAttributes& attr, bool* available);

// In-place AND of word `word` of `rows` shared-memory rows with `mask`; row r's word at
// offset(r). Threads of the block share the rows; the caller synchronizes around it.
template <typename Offset>
__device__ __forceinline__ void mask_shared_word(uint32_t* smem, int rows, Offset offset,
                                                 uint32_t mask) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) smem[offset(r)] &= mask;
}

}  // namespace detail
}  // namespace cuda
}  // namespace bitmaps

// The public CUDA launchers of binary_linear_cuda.h: activation packing (sign or {0, 1} bit +
// pack + per-row scale, fused), the XNOR-GEMM dispatcher over the three paths, and the fused
// binary_linear.
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "kernels/binary_linear_cuda.h"
#include "kernels/xnor_gemm_cuda_impl.cuh"

namespace bitmaps {
namespace cuda {

using detail::Epilogue;
using detail::GemmProblem;
using detail::OutKind;

namespace {

constexpr int kPackWarps = 8;  // rows per block in the pack kernel (one warp per row)

// x - beta in float32 as the reference computes it (exact conversions from fp16 / bf16); float64
// input (pack_signs only, beta = 0) keeps its own precision, so that a negative double too small
// for float32 still packs as negative.
__device__ __forceinline__ float centred(float x, float beta) { return __fsub_rn(x, beta); }
__device__ __forceinline__ float centred(__half x, float beta) {
  return __fsub_rn(__half2float(x), beta);
}
__device__ __forceinline__ float centred(__nv_bfloat16 x, float beta) {
  return __fsub_rn(__bfloat162float(x), beta);
}
__device__ __forceinline__ double centred(double x, float beta) {
  return __dsub_rn(x, static_cast<double>(beta));
}

// One warp per row. Bit 1 where x - beta < 0 (signed activations) or where x - beta > 0 ({0, 1}
// activations); padding bits are 0. Also sums |x - beta| for the row mean (float32, as the
// reference), when row_scale is wanted. Two ways to read the row:
//   kVector false: lane l reads element 32 w + l of word w (coalesced), the ballot is the word;
//   kVector true (BITMAPS_CUDA_PACK=vector; rows that start 16-byte aligned, K a multiple of
//     kE = 16 / sizeof(T)): lane l reads kE consecutive elements with one 16-byte load, makes their
//     kE bits, and the kGroup = 32 / kE lanes of a word OR theirs together, so one trip of the warp
//     packs kE words (8 for fp16) instead of one. The same bits; the row's sum of |x - beta| is
//     added in another order (a rounding-level difference in the mean scale).
template <typename T, bool kVector>
__global__ void __launch_bounds__(kPackWarps * 32)
    pack_rows_kernel(const T* __restrict__ x, int64_t m, int32_t k, int32_t kw, float beta,
                     float act_scale, bool act_unsigned, uint32_t* __restrict__ packed,
                     float* __restrict__ row_scale) {
  using Centred = decltype(centred(T{}, 0.0f));
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kPackWarps + threadIdx.x / 32;
  if (row >= m) return;  // whole warps leave together: row is uniform across the warp
  const T* xr = x + row * k;
  uint32_t* out = packed + row * kw;
  float abs_sum = 0.0f;
  if constexpr (!kVector) {
    for (int32_t w = 0; w < kw; ++w) {
      const int32_t col = w * 32 + lane;
      const bool in_row = col < k;
      const Centred v = in_row ? centred(xr[col], beta) : Centred(0);
      const bool bit = act_unsigned ? v > Centred(0) : v < Centred(0);
      const unsigned word = __ballot_sync(0xFFFFFFFFu, in_row && bit);
      abs_sum += fabsf(static_cast<float>(v));
      if (lane == 0) out[w] = word;
    }
  } else {
    constexpr int kE = 16 / static_cast<int>(sizeof(T));
    constexpr int kGroup = 32 / kE;
    const int shift = (lane * kE) % 32;
#pragma unroll 4
    for (int32_t base = 0; base < k; base += 32 * kE) {
      const int32_t col = base + lane * kE;
      uint32_t bits = 0;
      if (col < k) {  // K % kE == 0: a vector lies wholly inside the row or wholly past it
        const uint4 raw = *reinterpret_cast<const uint4*>(xr + col);
        T vals[kE];
        memcpy(vals, &raw, sizeof(raw));
#pragma unroll
        for (int e = 0; e < kE; ++e) {
          const Centred v = centred(vals[e], beta);
          const bool bit = act_unsigned ? v > Centred(0) : v < Centred(0);
          bits |= static_cast<uint32_t>(bit) << e;
          abs_sum += fabsf(static_cast<float>(v));
        }
      }
      uint32_t word = bits << shift;
#pragma unroll
      for (int step = 1; step < kGroup; step *= 2) {
        word |= __shfl_xor_sync(0xFFFFFFFFu, word, step);
      }
      const int32_t w = base / 32 + lane / kGroup;
      if (lane % kGroup == 0 && w < kw) out[w] = word;
    }
  }
  if (row_scale == nullptr) return;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    abs_sum += __shfl_xor_sync(0xFFFFFFFFu, abs_sum, offset);
  }
  if (lane == 0) row_scale[row] = act_scale > 0.0f ? act_scale : abs_sum / static_cast<float>(k);
}

// The vector form where the rows allow it: the default since the H200 measured it faster (pack
// at K = 3072: 16 us vs 30 us; benchmarks/results/gpu-check-h200). BITMAPS_CUDA_PACK=word (read
// on every launch) forces the per-word form, which make gpu-check times against it.
bool vector_pack_from_env() { return !detail::env_is("BITMAPS_CUDA_PACK", "word"); }

template <typename T>
void launch_pack_rows(const void* x, unsigned grid, int64_t m, int32_t k, int32_t kw, float beta,
                      float act_scale, bool act_unsigned, uint32_t* out, float* row_scale,
                      cudaStream_t stream) {
  constexpr int kE = 16 / static_cast<int>(sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && k % kE == 0;
  if (aligned && vector_pack_from_env()) {
    pack_rows_kernel<T, true><<<grid, kPackWarps * 32, 0, stream>>>(
        static_cast<const T*>(x), m, k, kw, beta, act_scale, act_unsigned, out, row_scale);
    return;
  }
  pack_rows_kernel<T, false><<<grid, kPackWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), m, k, kw, beta, act_scale, act_unsigned, out, row_scale);
}

cudaError_t launch_pack(const void* x, DType dtype, int64_t m, int64_t k, float beta,
                        float act_scale, bool act_unsigned, int32_t* packed, float* row_scale,
                        cudaStream_t stream) {
  if (m < 0 || k <= 0 || k > 0x7FFFFFFF - 32) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const int64_t blocks = (m + kPackWarps - 1) / kPackWarps;
  if (blocks > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
  const auto kw = static_cast<int32_t>(packed_width(k));
  auto* out = reinterpret_cast<uint32_t*>(packed);
  const auto k32 = static_cast<int32_t>(k);
  const auto grid = static_cast<unsigned>(blocks);
  switch (dtype) {
    case DType::kFloat32:
      launch_pack_rows<float>(x, grid, m, k32, kw, beta, act_scale, act_unsigned, out, row_scale,
                              stream);
      break;
    case DType::kFloat16:
      launch_pack_rows<__half>(x, grid, m, k32, kw, beta, act_scale, act_unsigned, out,
                               row_scale, stream);
      break;
    case DType::kBFloat16:
      launch_pack_rows<__nv_bfloat16>(x, grid, m, k32, kw, beta, act_scale, act_unsigned, out,
                                      row_scale, stream);
      break;
    case DType::kFloat64:
      launch_pack_rows<double>(x, grid, m, k32, kw, beta, act_scale, act_unsigned, out, row_scale,
                               stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Per-device cache of what this build can run there, filled on first use.
struct DeviceInfo {
  bool probed = false;
  cudaError_t error = cudaSuccess;
  unsigned mask = 0;
  int major = 0;
  int minor = 0;
  int num_sms = 1;
};

constexpr int kMaxDevices = 64;
std::mutex g_device_mutex;
DeviceInfo g_devices[kMaxDevices];

unsigned bit(GemmPath p) { return 1u << static_cast<int>(p); }

cudaError_t device_info(int device, DeviceInfo* info) {
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  std::lock_guard<std::mutex> lock(g_device_mutex);
  DeviceInfo& d = g_devices[device];
  if (!d.probed) {
    int current = 0;
    cudaError_t err = cudaGetDevice(&current);
    if (err == cudaSuccess && current != device) err = cudaSetDevice(device);
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device);
    }
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device);
    }
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&d.num_sms, cudaDevAttrMultiProcessorCount, device);
    }
    bool has_mma = false;
    bool has_wgmma = false;
    // The probes look at the module the driver picked for this device (no stream operation, so
    // this may run inside CUDA-graph capture): a build without code for the device fails here
    // (no kernel image), which is reported instead of failing later.
    if (err == cudaSuccess) err = detail::probe_mma(&has_mma);
    if (err == cudaSuccess) err = detail::probe_wgmma(&has_wgmma);
    if (current != device) cudaSetDevice(current);
    d.error = err;
    if (err == cudaSuccess) {
      d.mask = bit(GemmPath::kPopc);
      if (has_mma) d.mask |= bit(GemmPath::kMma);
      if (has_wgmma) d.mask |= bit(GemmPath::kWgmma);
    } else {
      cudaGetLastError();  // do not leave the probe's error for the caller's next check
    }
    d.probed = true;
  }
  *info = d;
  return d.error;
}

cudaError_t current_device_info(DeviceInfo* info) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return device_info(device, info);
}

GemmPath auto_path(const DeviceInfo& d) {
  // mma.sync on sm_80..sm_90, sm_90 included: on an H200 (the first GPU run, 2026-12-04,
  // benchmarks/results/gpu-check-h200) binary_linear fp16 on the mma path took 0.68x, 0.99x, 0.71x
  // the wgmma path's time at M = 128 on BERT's three shapes and 0.95-1.02x at M = 8192, and
  // xnor_gemm 8192^3 ran at 1427 vs 1413 binary TOPS; wgmma stays available
  // (BITMAPS_CUDA_GEMM_PATH=wgmma) until its kernel wins. On sm_100+ ptxas emulates b1 MMA with
  // integer MMAs, so plain popcount is the honest default there until measured.
  if (d.major >= 8 && d.major <= 9 && (d.mask & bit(GemmPath::kMma))) return GemmPath::kMma;
  if (d.major == 9 && d.minor == 0 && (d.mask & bit(GemmPath::kWgmma))) return GemmPath::kWgmma;
  return GemmPath::kPopc;
}

template <OutKind kOut, bool kUnsigned>
cudaError_t run_gemm(const GemmProblem& p, const Epilogue& ep, GemmPath requested,
                     cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  DeviceInfo d;
  cudaError_t err = current_device_info(&d);
  if (err != cudaSuccess) return err;
  const GemmPath path = requested == GemmPath::kAuto ? auto_path(d) : requested;
  if (!(d.mask & bit(path))) return cudaErrorNotSupported;
  switch (path) {
    case GemmPath::kWgmma:
      return detail::launch_wgmma<kOut, kUnsigned>(p, ep, stream);
    case GemmPath::kMma:
      return detail::launch_mma<kOut, kUnsigned>(p, ep, d.num_sms, stream);
    default:
      return detail::launch_popc<kOut, kUnsigned>(p, ep, stream);
  }
}

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

bool valid_sizes(int64_t m, int64_t n, int64_t k) {
  return m >= 0 && n >= 0 && k > 0 && k <= 0x7FFFFFFF - 32;
}

GemmProblem make_problem(const int32_t* a, const int32_t* b, int64_t m, int64_t n, int64_t k) {
  return GemmProblem{reinterpret_cast<const uint32_t*>(a),
                     reinterpret_cast<const uint32_t*>(b),
                     m,
                     n,
                     static_cast<int32_t>(k),
                     static_cast<int32_t>(packed_width(k)),
                     last_word_mask(k)};
}

}  // namespace

namespace detail {

cudaError_t probe_result(cudaError_t err, const cudaFuncAttributes& attr, bool* available) {
  *available = false;
  // No module for this device: the runtime says "invalid device function" for a kernel without
  // an image; report it as the missing image it is.
  if (err == cudaErrorInvalidDeviceFunction) err = cudaErrorNoKernelImageForDevice;
  if (err != cudaSuccess) return err;
  *available = attr.sharedSizeBytes == kProbeCompiledWords * sizeof(int);
  return cudaSuccess;
}

}  // namespace detail

const char* gemm_path_name(GemmPath path) {
  switch (path) {
    case GemmPath::kPopc:
      return "popc";
    case GemmPath::kMma:
      return "mma";
    case GemmPath::kWgmma:
      return "wgmma";
    default:
      return "auto";
  }
}

bool parse_gemm_path(const char* name, GemmPath* path) {
  if (name == nullptr) return false;
  for (GemmPath p : {GemmPath::kAuto, GemmPath::kPopc, GemmPath::kMma, GemmPath::kWgmma}) {
    if (std::strcmp(name, gemm_path_name(p)) == 0) {
      *path = p;
      return true;
    }
  }
  return false;
}

namespace detail {
bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

bool pair_epilogue_from_env() { return !env_is("BITMAPS_CUDA_EPILOGUE", "single"); }
bool wide_copy_from_env() { return env_is("BITMAPS_CUDA_COPY", "wide"); }
bool ldmatrix_fragments_from_env() { return env_is("BITMAPS_CUDA_FRAGMENTS", "ldmatrix"); }
}  // namespace detail

bool gemm_path_from_env(GemmPath* path) {
  const char* value = std::getenv("BITMAPS_CUDA_GEMM_PATH");
  if (value == nullptr || value[0] == '\0') {
    *path = GemmPath::kAuto;
    return true;
  }
  return parse_gemm_path(value, path);
}

cudaError_t supported_gemm_paths(int device, unsigned* mask) {
  DeviceInfo d;
  const cudaError_t err = device_info(device, &d);
  *mask = err == cudaSuccess ? (d.mask | bit(GemmPath::kAuto)) : 0u;
  return err;
}

cudaError_t resolve_gemm_path(int device, GemmPath requested, GemmPath* resolved) {
  DeviceInfo d;
  const cudaError_t err = device_info(device, &d);
  if (err != cudaSuccess) return err;
  const GemmPath path = requested == GemmPath::kAuto ? auto_path(d) : requested;
  if (!(d.mask & bit(path))) return cudaErrorNotSupported;
  *resolved = path;
  return cudaSuccess;
}

cudaError_t pack_signs(const void* x, DType dtype, int64_t m, int64_t k, int32_t* packed,
                       cudaStream_t stream) {
  return launch_pack(x, dtype, m, k, 0.0f, 0.0f, false, packed, nullptr, stream);
}

cudaError_t pack_activations(const void* x, DType dtype, int64_t m, int64_t k, float act_threshold,
                             float act_scale, bool act_unsigned, int32_t* packed,
                             float* row_scale, cudaStream_t stream) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat16) return cudaErrorInvalidValue;
  return launch_pack(x, dtype, m, k, act_threshold, act_scale, act_unsigned, packed, row_scale,
                     stream);
}

cudaError_t xnor_gemm(const int32_t* a, const int32_t* b, int64_t m, int64_t n, int64_t k,
                      int32_t* out, GemmPath path, cudaStream_t stream) {
  if (!valid_sizes(m, n, k)) return cudaErrorInvalidValue;
  const Epilogue ep{out, nullptr, nullptr, nullptr};
  return run_gemm<OutKind::kInt32, false>(make_problem(a, b, m, n, k), ep, path, stream);
}

size_t binary_linear_workspace_size(int64_t m, int64_t k) {
  if (m <= 0 || k <= 0) return 0;
  const auto rows = static_cast<size_t>(m);
  return align256(rows * static_cast<size_t>(packed_width(k)) * sizeof(int32_t)) +
         align256(rows * sizeof(float));
}

cudaError_t binary_linear(const void* x, DType dtype, const int32_t* w, const float* w_scale,
                          const float* bias, int64_t m, int64_t n, int64_t k, float act_threshold,
                          float act_scale, bool act_unsigned, void* y, void* workspace,
                          size_t workspace_bytes, GemmPath path, cudaStream_t stream) {
  if (!valid_sizes(m, n, k)) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  if (workspace_bytes < binary_linear_workspace_size(m, k)) return cudaErrorInvalidValue;
  auto* base = static_cast<char*>(workspace);
  auto* packed = reinterpret_cast<int32_t*>(base);
  auto* row_scale = reinterpret_cast<float*>(
      base + align256(static_cast<size_t>(m) * packed_width(k) * sizeof(int32_t)));
  cudaError_t err = pack_activations(x, dtype, m, k, act_threshold, act_scale, act_unsigned,
                                     packed, row_scale, stream);
  if (err != cudaSuccess) return err;
  const GemmProblem p = make_problem(packed, w, m, n, k);
  const Epilogue ep{y, row_scale, w_scale, bias};
  const bool fp16 = dtype == DType::kFloat16;
  if (act_unsigned) {
    return fp16 ? run_gemm<OutKind::kFloat16, true>(p, ep, path, stream)
                : run_gemm<OutKind::kFloat32, true>(p, ep, path, stream);
  }
  return fp16 ? run_gemm<OutKind::kFloat16, false>(p, ep, path, stream)
              : run_gemm<OutKind::kFloat32, false>(p, ep, path, stream);
}

}  // namespace cuda
}  // namespace bitmaps

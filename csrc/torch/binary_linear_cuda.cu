// CUDA implementations of the bitmaps:: ops (schemas live in bitmaps/core/ops.py): thin adapters that
// validate with TORCH_CHECK, allocate outputs and workspace through PyTorch's caching allocator and
// call the torch-free launchers of csrc/kernels/binary_linear_cuda.h on the current CUDA stream.
//
// BITMAPS_CUDA_GEMM_PATH=auto|popc|mma|wgmma (read on every call) forces one GEMM path, so that a
// GPU run can compare every path against the reference implementation. The schemas are
// pack_signs(Tensor x), xnor_gemm(Tensor a, Tensor b, int k) and binary_linear(Tensor x, Tensor w,
// Tensor w_scale, Tensor? bias, int in_features, float act_threshold, float act_scale,
// int act_unsigned=0); nothing here synchronizes, so every op may be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "kernels/binary_linear_cuda.h"
#include "kernels/bit_layout.h"

namespace bitmaps {
namespace {

namespace bc = bitmaps::cuda;

bc::GemmPath requested_path() {
  bc::GemmPath path = bc::GemmPath::kAuto;
  TORCH_CHECK(bc::gemm_path_from_env(&path),
              "bitmaps: BITMAPS_CUDA_GEMM_PATH must be one of auto, popc, mma, wgmma; got '",
              std::getenv("BITMAPS_CUDA_GEMM_PATH"), "'");
  return path;
}

std::string available_paths(int device) {
  unsigned mask = 0;
  bc::supported_gemm_paths(device, &mask);
  std::string names;
  for (bc::GemmPath p : {bc::GemmPath::kPopc, bc::GemmPath::kMma, bc::GemmPath::kWgmma}) {
    if (mask & (1u << static_cast<int>(p))) {
      if (!names.empty()) names += ", ";
      names += bc::gemm_path_name(p);
    }
  }
  return names.empty() ? "none" : names;
}

void check_launch(cudaError_t err, const char* op, int device, bc::GemmPath path) {
  if (err == cudaSuccess) return;
  int major = 0;
  int minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const std::string arch = "sm_" + std::to_string(major) + std::to_string(minor);
  TORCH_CHECK(err != cudaErrorNotSupported, "bitmaps::", op, ": CUDA GEMM path '",
              bc::gemm_path_name(path), "' is not available on ", arch,
              " in this build (available: ", available_paths(device), ")");
  TORCH_CHECK(err != cudaErrorNoKernelImageForDevice, "bitmaps::", op,
              ": bitmaps._C holds no CUDA code for this GPU (", arch,
              "); rebuild it with TORCH_CUDA_ARCH_LIST including ", major, ".", minor);
  TORCH_CHECK(false, "bitmaps::", op, ": CUDA error: ", cudaGetErrorString(err));
}

bc::DType float_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf, "bitmaps::", op,
              ": x must be float32 or float16, got ", x.scalar_type());
  return x.scalar_type() == at::kHalf ? bc::DType::kFloat16 : bc::DType::kFloat32;
}

// pack_signs takes what the CPU op takes: float32, float16, bfloat16, float64.
bc::DType any_float_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return bc::DType::kFloat32;
    case at::kHalf:
      return bc::DType::kFloat16;
    case at::kBFloat16:
      return bc::DType::kBFloat16;
    case at::kDouble:
      return bc::DType::kFloat64;
    default:
      TORCH_CHECK(false, "bitmaps::pack_signs: x must be float32, float16, bfloat16 or float64, got ",
                  x.scalar_type());
  }
  return bc::DType::kFloat32;  // not reached
}

void check_device(const at::Tensor& t, const char* name, const char* op,
                  const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), "bitmaps::", op, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == device, "bitmaps::", op, ": ", name, " is on ", t.device(),
              " but x is on ", device);
}

// The packed operands, w_scale and bias must be contiguous (as on CPU: a strided packed matrix is
// almost always a mistake); the float activations x are made contiguous (a copy when they are not).
void check_cuda(const at::Tensor& t, const char* name, const char* op, const at::Device& device) {
  check_device(t, name, op, device);
  TORCH_CHECK(t.is_contiguous(), "bitmaps::", op, ": ", name,
              " must be contiguous (call .contiguous() on it), got shape ", t.sizes(),
              " with strides ", t.strides());
}

at::Tensor pack_signs_cuda(const at::Tensor& x_in) {
  check_device(x_in, "x", "pack_signs", x_in.device());
  const bc::DType dtype = any_float_dtype(x_in);
  TORCH_CHECK(x_in.dim() >= 1, "bitmaps::pack_signs: x must have at least one dimension");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t k = x.size(-1);
  auto out_shape = x.sizes().vec();
  out_shape.back() = packed_width(k);
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kInt));
  const int64_t m = k == 0 ? 0 : x.numel() / k;
  if (m == 0 || k == 0) return out;
  const cudaError_t err = bc::pack_signs(x.data_ptr(), dtype, m, k, out.data_ptr<int32_t>(),
                                         c10::cuda::getCurrentCUDAStream(x.get_device()));
  check_launch(err, "pack_signs", x.get_device(), bc::GemmPath::kAuto);
  return out;
}

at::Tensor xnor_gemm_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  check_cuda(a, "a", "xnor_gemm", a.device());
  check_cuda(b, "b", "xnor_gemm", a.device());
  TORCH_CHECK(a.scalar_type() == at::kInt && b.scalar_type() == at::kInt,
              "bitmaps::xnor_gemm: a and b must be int32 (packed words), got ", a.scalar_type(),
              " and ", b.scalar_type());
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "bitmaps::xnor_gemm: a and b must be 2-D, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(k > 0, "bitmaps::xnor_gemm: k must be positive, got ", k);
  TORCH_CHECK(a.size(1) == packed_width(k) && b.size(1) == packed_width(k),
              "bitmaps::xnor_gemm: K=", k, " needs ", packed_width(k), " words per row; a has ",
              a.size(1), ", b has ", b.size(1));
  at::Tensor out = at::empty({a.size(0), b.size(0)}, a.options());
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(a.device());
  const bc::GemmPath path = requested_path();
  const cudaError_t err =
      bc::xnor_gemm(a.data_ptr<int32_t>(), b.data_ptr<int32_t>(), a.size(0), b.size(0), k,
                    out.data_ptr<int32_t>(), path, c10::cuda::getCurrentCUDAStream(a.get_device()));
  check_launch(err, "xnor_gemm", a.get_device(), path);
  return out;
}

at::Tensor binary_linear_cuda(const at::Tensor& x_in, const at::Tensor& w,
                              const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                              int64_t in_features, double act_threshold, double act_scale,
                              int64_t act_unsigned) {
  const char* op = "binary_linear";
  check_device(x_in, "x", op, x_in.device());
  const bc::DType dtype = float_dtype(x_in, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  check_cuda(w, "w", op, x.device());
  check_cuda(w_scale, "w_scale", op, x.device());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features,
              "bitmaps::binary_linear: x.shape[-1]=", x.dim() >= 1 ? x.size(-1) : 0,
              " does not match in_features=", in_features);
  TORCH_CHECK(in_features > 0, "bitmaps::binary_linear: in_features must be positive");
  TORCH_CHECK(w.scalar_type() == at::kInt && w.dim() == 2 && w.size(1) == packed_width(in_features),
              "bitmaps::binary_linear: w must be int32 [N, ", packed_width(in_features),
              "] for in_features=", in_features, ", got ", w.scalar_type(), " ", w.sizes());
  const int64_t n = w.size(0);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.size(0) == n,
              "bitmaps::binary_linear: w_scale must be float32 [", n, "], got ",
              w_scale.scalar_type(), " ", w_scale.sizes());
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    check_cuda(*bias, "bias", op, x.device());
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == n,
                "bitmaps::binary_linear: bias must be float32 [", n, "], got ", bias->scalar_type(),
                " ", bias->sizes());
    bias_ptr = bias->data_ptr<float>();
  }
  TORCH_CHECK(act_scale >= 0.0, "bitmaps::binary_linear: act_scale must be >= 0, got ", act_scale);
  TORCH_CHECK(act_unsigned == 0 || act_unsigned == 1,
              "bitmaps::binary_linear: act_unsigned must be 0 or 1, got ", act_unsigned);

  auto out_shape = x.sizes().vec();
  out_shape.back() = n;
  at::Tensor y = at::empty(out_shape, x.options());
  const int64_t m = x.numel() / in_features;
  if (m == 0 || n == 0) return y;

  const size_t ws_bytes = bc::binary_linear_workspace_size(m, in_features);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, x.options().dtype(at::kByte));
  const bc::GemmPath path = requested_path();
  const cudaError_t err = bc::binary_linear(
      x.data_ptr(), dtype, w.data_ptr<int32_t>(), w_scale.data_ptr<float>(), bias_ptr, m, n,
      in_features, static_cast<float>(act_threshold), static_cast<float>(act_scale),
      act_unsigned != 0, y.data_ptr(), workspace.data_ptr(), ws_bytes, path,
      c10::cuda::getCurrentCUDAStream(x.get_device()));
  check_launch(err, op, x.get_device(), path);
  return y;
}

}  // namespace
}  // namespace bitmaps

TORCH_LIBRARY_IMPL(bitmaps, CUDA, m) {
  m.impl("pack_signs", &bitmaps::pack_signs_cuda);
  m.impl("xnor_gemm", &bitmaps::xnor_gemm_cuda);
  m.impl("binary_linear", &bitmaps::binary_linear_cuda);
}

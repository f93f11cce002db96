// One binary linear layer of a node, as bitmaps::BinaryLinear and bitmaps::BinaryFeedForward (two
// layers) read, check and prepack it: its attributes (under the node's own names), the CPU path
// and threads, and W laid out once into the GEMM's panels. Defined in binary_linear_op.cpp.
#pragma once

#include <onnxruntime_c_api.h>

#include <string>
#include <vector>

#include "kernels/cpu_binary_linear.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {

// The names a node gives one layer's attributes and inputs (in messages).
struct LinearNames {
  const char* in;          // K
  const char* out;         // N
  const char* threshold;   // act_threshold
  const char* scale;       // act_scale
  const char* unsigned_;   // act_unsigned
  const char* activation;  // 0 / 1 (GELU), or null: the layer has none
  const char* w = "W";
  const char* w_scale = "w_scale";
  const char* bias = "bias";
};

inline constexpr LinearNames kBinaryLinearNames{"in_features", "out_features", "act_threshold",
                                                "act_scale", "act_unsigned", "activation"};

struct Linear {
  std::string node;  // "bitmaps::<op> node 'name'", the start of every message
  LinearNames names = kBinaryLinearNames;
  int64_t k = 0, n = 0;
  float act_threshold = 0.0f, act_scale = 0.0f;
  bool act_unsigned = false;
  bool gelu = false;  // activation = 1: GELU fused into the epilogue
  cpu::CpuPath path = cpu::CpuPath::kScalar;
  Threads threads = Threads::kOrt;
  std::vector<int32_t> panels;  // W laid out once when W is a constant initializer
  bool prepack = true;          // BITMAPS_ORT_PREPACK
  bool prepacked = false;

  OrtStatus* invalid(const std::string& what) const {
    return error(ORT_INVALID_ARGUMENT, node + ": " + what);
  }
  OrtStatus* check_tensor(const char* name, const TensorDesc& d, ONNXTensorElementDataType type,
                          const std::vector<int64_t>& want, const std::string& why) const;
  // known_rank: false at session creation, where a rank of 0 means "shape not known yet".
  OrtStatus* check_x(const TensorDesc& d, bool known_rank) const;
  // W as packed rows [n, ceil(k/32)] or as the GEMM's panels [ceil(n/16), ceil(k/32), 16] (the
  // layout of cpu::prepack_weights, which `bitmaps export --target onnxruntime` stores); *panels
  // says which (rank 3). Any other rank or shape is an error naming both.
  OrtStatus* check_w(const TensorDesc& d, bool* panels) const;
};

// The layer's attributes under `names` (node set beforehand), checked, then the CPU path, threads
// and weight layout from the environment.
OrtStatus* read_linear(const OrtKernelInfo* info, const LinearNames& names, Linear* kern);
// Session creation: the types and static shapes of W, w_scale, bias (inputs w_index .. + 2), and
// W prepacked when it is a constant initializer.
OrtStatus* check_linear_inputs(const OrtKernelInfo* info, size_t w_index, Linear* kern);
// Session creation: input x_index as the layer's X (type and static last dimension).
OrtStatus* check_x_input(const OrtKernelInfo* info, size_t x_index, const Linear& kern);
// Run time: the layer's weights, scales and bias from the context (checked) into *args, with its
// sizes and activation settings (not x, m, y).
OrtStatus* linear_inputs(const Linear& kern, OrtKernelContext* context, size_t w_index,
                         cpu::BinaryLinearArgs* args);
// Run time: output 0 shaped X's leading dims + [n]; *m: the rows (product of the leading dims).
OrtStatus* linear_output(OrtKernelContext* context, const TensorDesc& xd, int64_t n, void** y,
                         int64_t* m);
// Shape inference: output 0 of X's type, shaped X.shape[:-1] + [the int attribute out_attribute].
OrtStatus* infer_linear_output(OrtShapeInferContext* context, const char* out_attribute);
// A constant initializer at input `index` (ONNX Runtime keeps it alive), or false.
bool constant_input(const OrtKernelInfo* info, size_t index, const OrtValue** value);

}  // namespace bitmaps::ort

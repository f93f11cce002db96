// The bitmaps::SkipLayerNormalization custom op of skip_layer_norm_op.h: attributes and static
// input types and shapes checked once at session creation, every shape again at run time.
#include "onnxruntime/skip_layer_norm_op.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu_layer_norm.h"
#include "onnxruntime/binary_linear_op.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {
namespace {

constexpr const char* kInputs[] = {"input", "skip", "gamma", "beta"};

struct Kernel {
  std::string node;  // "bitmaps::SkipLayerNormalization node 'name'"
  float epsilon = 1e-5f;
  cpu::CpuPath path = cpu::CpuPath::kScalar;
  Threads threads = Threads::kOrt;

  OrtStatus* invalid(const std::string& what) const {
    return error(ORT_INVALID_ARGUMENT, node + ": " + what);
  }
  // Type of input i and, where known, its rank and last dimension (-1: not known yet). Before run
  // time no dimensions can mean a rank not known yet; at run time (`run_time`) it is a scalar.
  OrtStatus* check_input(size_t i, const TensorDesc& d, int64_t hidden, bool run_time) const {
    if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      return invalid(std::string(kInputs[i]) + " must be float32, got " + type_name(d.type));
    }
    if (d.dims.empty() && !run_time) return nullptr;
    if (i >= 2 && d.dims.size() != 1) {
      return invalid(std::string(kInputs[i]) + " must have shape [hidden], got " +
                     shape_text(d.dims));
    }
    if (d.dims.empty()) return nullptr;  // a scalar input or skip: the kernel reports it
    if (hidden >= 0 && d.dims.back() >= 0 && d.dims.back() != hidden) {
      return invalid(std::string(kInputs[i]) + " must have last dimension " +
                     std::to_string(hidden) + " (the input's), got " + shape_text(d.dims));
    }
    return nullptr;
  }
};

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Kernel>();
  BITMAPS_ORT_RETURN_IF_ERROR(node_name(info, kSkipLayerNormOpName, &kern->node));
  BITMAPS_ORT_RETURN_IF_ERROR(epsilon_attribute(kern->node, info, &kern->epsilon));
  BITMAPS_ORT_RETURN_IF_ERROR(read_run_settings(kern->node, &kern->path, &kern->threads));
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs < 3 || inputs > 4) {
    return kern->invalid("expects inputs input, skip, gamma and beta, got " +
                         std::to_string(inputs));
  }
  int64_t hidden = -1;
  for (size_t i = 0; i < inputs; ++i) {
    OrtTypeInfo* raw = nullptr;
    if (OrtStatus* status = g_api->KernelInfo_GetInputTypeInfo(info, i, &raw)) {
      g_api->ReleaseStatus(status);  // an omitted optional input (beta, empty name)
      continue;
    }
    const TypeInfo type_info(raw);
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
    if (tensor == nullptr) return kern->invalid(std::string(kInputs[i]) + " is not a tensor");
    TensorDesc d;
    BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &d));
    BITMAPS_ORT_RETURN_IF_ERROR(kern->check_input(i, d, hidden, false));
    if (hidden < 0 && !d.dims.empty()) hidden = d.dims.back();
  }
  *out = kern.release();
  return nullptr;
}

OrtStatus* compute(const Kernel& kern, OrtKernelContext* context) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  const OrtValue* values[4] = {nullptr, nullptr, nullptr, nullptr};
  TensorDesc d[4];
  for (size_t i = 0; i < std::min<size_t>(inputs, 4); ++i) {
    BITMAPS_ORT_RETURN_IF_ERROR(input(context, i, &values[i], &d[i]));
  }
  if (values[0] == nullptr || values[1] == nullptr || values[2] == nullptr) {
    return kern.invalid("input, skip and gamma are required");
  }
  if (d[0].dims.empty()) return kern.invalid("input must have at least one dimension");
  if (d[1].dims != d[0].dims) {
    return kern.invalid("skip must have the input's shape " + shape_text(d[0].dims) + ", got " +
                        shape_text(d[1].dims));
  }
  const int64_t hidden = d[0].dims.back();
  for (size_t i = 2; i < 4; ++i) {
    if (values[i] == nullptr) continue;
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_input(i, d[i], hidden, true));
  }
  OrtValue* out = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(
      g_api->KernelContext_GetOutput(context, 0, d[0].dims.data(), d[0].dims.size(), &out));
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < d[0].dims.size(); ++i) rows *= d[0].dims[i];
  if (rows == 0 || hidden == 0) return nullptr;
  cpu::AddLayerNormArgs args;
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[0], &args.x));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[1], &args.skip));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[2], &args.gamma));
  if (values[3] != nullptr) BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[3], &args.beta));
  void* y = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(out, &y));
  args.out = static_cast<float*>(y);
  args.rows = rows;
  args.n = hidden;
  args.epsilon = kern.epsilon;
  cpu::add_layer_norm(kern.path, args, make_parallel(kern.threads, context));
  return nullptr;
}

// Output: the input's type and shape (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  OrtTensorTypeAndShapeInfo* x = nullptr;  // owned by the context
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->ShapeInferContext_GetInputTypeShape(context, 0, &x));
  return g_api->ShapeInferContext_SetOutputTypeShape(context, 0, x);
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kSkipLayerNormOpName; }

}  // namespace

const OrtCustomOp* skip_layer_norm_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op =
      cpu_custom_op(kOrtApiVersion, op_name, create_kernel, compute_kernel<Kernel, compute>,
                    destroy_kernel<Kernel>, infer_shape);
  return &op;
}

}  // namespace bitmaps::ort

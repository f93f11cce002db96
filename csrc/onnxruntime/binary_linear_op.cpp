// The bitmaps::BinaryLinear custom op of binary_linear_op.h: its schema callbacks, the kernel that
// checks the node once at session creation (attributes, input types and static shapes, then lays
// out constant weights into the GEMM's panels), and the compute callback.
#include "onnxruntime/binary_linear_op.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/bit_layout.h"
#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_kernels.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {
namespace {

// The node's attributes and everything that depends only on them and on constant inputs.
struct Kernel {
  std::string node;  // "bitmaps::BinaryLinear node 'name'", the start of every message
  int64_t k = 0, n = 0;
  float act_threshold = 0.0f, act_scale = 0.0f;
  bool act_unsigned = false;
  bool gelu = false;  // activation = 1: GELU fused into the epilogue
  cpu::CpuPath path = cpu::CpuPath::kScalar;
  Threads threads = Threads::kOrt;
  std::vector<int32_t> panels;  // W laid out once when W is a constant initializer
  bool prepack = true;     // BITMAPS_ORT_PREPACK
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

OrtStatus* Kernel::check_tensor(const char* name, const TensorDesc& d,
                                ONNXTensorElementDataType type, const std::vector<int64_t>& want,
                                const std::string& why) const {
  if (d.type != type) {
    return invalid(std::string(name) + " must be " + type_name(type) + ", got " +
                   type_name(d.type));
  }
  if (!fits(d.dims, want)) {
    return invalid(std::string(name) + " must have shape " + shape_text(want) + " (" + why +
                   "), got " + shape_text(d.dims));
  }
  return nullptr;
}

OrtStatus* Kernel::check_x(const TensorDesc& d, bool known_rank) const {
  if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT &&
      d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    return invalid("X must be float32 or float16, got " + type_name(d.type));
  }
  if (d.dims.empty() && !known_rank) return nullptr;
  if (d.dims.empty() || (d.dims.back() >= 0 && d.dims.back() != k)) {
    return invalid("X must have shape [..., in_features=" + std::to_string(k) + "], got " +
                   shape_text(d.dims));
  }
  return nullptr;
}

OrtStatus* Kernel::check_w(const TensorDesc& d, bool* panels) const {
  const int64_t kw = packed_width(k);
  *panels = d.dims.size() == 3;
  if (*panels) {
    const int64_t rows = cpu::kPanelRows;
    return check_tensor("W (packed weight signs, panel layout)", d,
                        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {(n + rows - 1) / rows, kw, rows},
                        "[ceil(out_features/16), ceil(in_features/32), 16] for in_features=" +
                            std::to_string(k) + ", out_features=" + std::to_string(n));
  }
  return check_tensor("W (packed weight signs)", d, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {n, kw},
                      "[out_features, ceil(in_features/32)], or the panel layout [ceil(out_features"
                      "/16), ceil(in_features/32), 16], for in_features=" +
                          std::to_string(k) + ", out_features=" + std::to_string(n));
}

// ---------------------------------------------------------------------------- kernel creation

OrtStatus* string_attribute(const Kernel& kern, const OrtKernelInfo* info, const char* name,
                            const char* expected) {
  size_t size = 0;
  if (OrtStatus* status = g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    g_api->ReleaseStatus(status);  // absent: optional (TensorRT reads it; this op needs nothing)
    return nullptr;
  }
  std::string value(size, '\0');
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_string(info, name, value.data(), &size));
  value.resize(size > 0 ? size - 1 : 0);
  if (value != expected) {
    return kern.invalid(std::string("attribute ") + name + " must be \"" + expected + "\", got \"" +
                        value + "\"");
  }
  return nullptr;
}

OrtStatus* read_attributes(const OrtKernelInfo* info, Kernel* kern) {
  const std::string& node = kern->node;
  int64_t act_unsigned = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, "in_features", true, &kern->k));
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, "out_features", true, &kern->n));
  BITMAPS_ORT_RETURN_IF_ERROR(
      float_attribute(node, info, "act_threshold", false, &kern->act_threshold));
  BITMAPS_ORT_RETURN_IF_ERROR(float_attribute(node, info, "act_scale", false, &kern->act_scale));
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, "act_unsigned", false, &act_unsigned));
  int64_t activation = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, "activation", false, &activation));
  BITMAPS_ORT_RETURN_IF_ERROR(string_attribute(*kern, info, "plugin_version", "1"));
  BITMAPS_ORT_RETURN_IF_ERROR(string_attribute(*kern, info, "plugin_namespace", "bitmaps"));
  if (kern->k < 1) return kern->invalid("in_features must be >= 1, got " + std::to_string(kern->k));
  if (kern->n < 1) {
    return kern->invalid("out_features must be >= 1, got " + std::to_string(kern->n));
  }
  if (!std::isfinite(kern->act_threshold)) {
    return kern->invalid("act_threshold must be finite, got " + number(kern->act_threshold));
  }
  if (!(kern->act_scale >= 0.0f) || !std::isfinite(kern->act_scale)) {
    return kern->invalid("act_scale must be >= 0 (0: per-row mean |X - act_threshold|), got " +
                         number(kern->act_scale));
  }
  if (act_unsigned != 0 && act_unsigned != 1) {
    return kern->invalid("act_unsigned must be 0 (activations to +-1) or 1 (to {0, 1}), got " +
                         std::to_string(act_unsigned));
  }
  kern->act_unsigned = act_unsigned == 1;
  if (activation != 0 && activation != 1) {
    return kern->invalid("activation must be 0 (none) or 1 (GELU, erf form), got " +
                         std::to_string(activation));
  }
  kern->gelu = activation == 1;
  return nullptr;
}

// The CPU path and threads (ort_common.h's read_run_settings) and the weight layout
// (BITMAPS_ORT_PREPACK: "1", default, lays a constant W out into panels once at session creation,
// a second copy of the weights beside ONNX Runtime's own, which a custom op cannot release; "0"
// lays out one layer's panels per call, in a buffer freed after the call: less resident memory,
// a little more time per call).
OrtStatus* read_environment(Kernel* kern) {
  BITMAPS_ORT_RETURN_IF_ERROR(read_run_settings(kern->node, &kern->path, &kern->threads));
  const char* prepack = std::getenv("BITMAPS_ORT_PREPACK");
  const std::string layout = prepack == nullptr ? "" : prepack;
  if (layout.empty() || layout == "1") {
    kern->prepack = true;
  } else if (layout == "0") {
    kern->prepack = false;
  } else {
    return kern->invalid("BITMAPS_ORT_PREPACK must be 1 or 0, got '" + layout + "'");
  }
  return nullptr;
}

// Input types and static shapes; W laid out into panels when it is a constant initializer.
OrtStatus* check_inputs(const OrtKernelInfo* info, Kernel* kern) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs < 3 || inputs > 4) {
    return kern->invalid("expects inputs X, W, w_scale and bias, got " + std::to_string(inputs));
  }
  // W first: an in_features that does not fit the packed width is the likelier mistake than X.
  for (const size_t i : {size_t{1}, size_t{2}, size_t{3}, size_t{0}}) {
    if (i >= inputs) continue;
    OrtTypeInfo* raw = nullptr;
    if (OrtStatus* status = g_api->KernelInfo_GetInputTypeInfo(info, i, &raw)) {
      g_api->ReleaseStatus(status);  // an omitted optional input (bias with an empty name)
      continue;
    }
    const TypeInfo type_info(raw);
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
    if (tensor == nullptr) return kern->invalid("input " + std::to_string(i) + " is not a tensor");
    TensorDesc d;
    BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &d));
    const auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    OrtStatus* status = nullptr;
    if (i == 0) status = kern->check_x(d, false);
    if (i == 1 && (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || !d.dims.empty())) {
      bool panels = false;  // rank 0 here: not known before run time, checked per call
      status = kern->check_w(d, &panels);
    }
    if (i == 2) status = kern->check_tensor("w_scale", d, f32, {kern->n}, "out_features");
    if (i == 3) status = kern->check_tensor("bias", d, f32, {kern->n}, "out_features");
    if (status != nullptr) return status;
  }

  if (!kern->prepack) return nullptr;  // BITMAPS_ORT_PREPACK=0: laid out on every call
  int is_constant = 0;
  const OrtValue* w = nullptr;
  if (OrtStatus* status = g_api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &w)) {
    g_api->ReleaseStatus(status);
    return nullptr;  // not a constant: laid out on every call
  }
  if (!is_constant || w == nullptr) return nullptr;
  TensorDesc d;
  BITMAPS_ORT_RETURN_IF_ERROR(describe_value(w, &d));
  bool panels = false;
  BITMAPS_ORT_RETURN_IF_ERROR(kern->check_w(d, &panels));
  if (panels) return nullptr;  // already laid out: read where ONNX Runtime holds it, no copy
  void* data = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(w), &data));
  kern->panels.resize(static_cast<size_t>(cpu::prepacked_words(kern->n, kern->k)));
  cpu::prepack_weights(static_cast<const int32_t*>(data), kern->n, kern->k, kern->panels.data(),
                       cpu::Parallel{});
  kern->prepacked = true;
  return nullptr;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Kernel>();
  BITMAPS_ORT_RETURN_IF_ERROR(node_name(info, kOpName, &kern->node));
  BITMAPS_ORT_RETURN_IF_ERROR(read_attributes(info, kern.get()));
  BITMAPS_ORT_RETURN_IF_ERROR(read_environment(kern.get()));
  BITMAPS_ORT_RETURN_IF_ERROR(check_inputs(info, kern.get()));
  *out = kern.release();
  return nullptr;
}

// ---------------------------------------------------------------------------- compute

OrtStatus* compute(const Kernel& kern, OrtKernelContext* context) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  const OrtValue *x = nullptr, *w = nullptr, *w_scale = nullptr, *bias = nullptr;
  TensorDesc xd, wd, sd, bd;
  BITMAPS_ORT_RETURN_IF_ERROR(input(context, 0, &x, &xd));
  BITMAPS_ORT_RETURN_IF_ERROR(input(context, 2, &w_scale, &sd));
  if (inputs > 3) BITMAPS_ORT_RETURN_IF_ERROR(input(context, 3, &bias, &bd));
  BITMAPS_ORT_RETURN_IF_ERROR(kern.check_x(xd, true));
  const auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  BITMAPS_ORT_RETURN_IF_ERROR(kern.check_tensor("w_scale", sd, f32, {kern.n}, "out_features"));
  if (bias != nullptr) {
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_tensor("bias", bd, f32, {kern.n}, "out_features"));
  }

  cpu::BinaryLinearArgs args;
  if (kern.prepacked) {
    args.panels = kern.panels.data();
  } else {
    BITMAPS_ORT_RETURN_IF_ERROR(input(context, 1, &w, &wd));
    bool panels = false;
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_w(wd, &panels));
    BITMAPS_ORT_RETURN_IF_ERROR(data_of(w, panels ? &args.panels : &args.w));
  }
  std::vector<int64_t> out_dims = xd.dims;
  out_dims.back() = kern.n;
  OrtValue* y = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(
      g_api->KernelContext_GetOutput(context, 0, out_dims.data(), out_dims.size(), &y));
  int64_t m = 1;
  for (size_t i = 0; i + 1 < xd.dims.size(); ++i) m *= xd.dims[i];
  if (m == 0) return nullptr;

  BITMAPS_ORT_RETURN_IF_ERROR(data_of(x, &args.x));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(w_scale, &args.w_scale));
  if (bias != nullptr) BITMAPS_ORT_RETURN_IF_ERROR(data_of(bias, &args.bias));
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(y, &args.y));
  args.x_half = xd.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  args.m = m;
  args.k = kern.k;
  args.n = kern.n;
  args.act_threshold = kern.act_threshold;
  args.act_scale = kern.act_scale;
  args.act_unsigned = kern.act_unsigned;
  args.gelu = kern.gelu;
  cpu::binary_linear(kern.path, args, make_parallel(kern.threads, context));
  return nullptr;
}

// ---------------------------------------------------------------------------- schema

// Y: the type of X, shape X.shape[:-1] + [out_features] (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  TensorDesc d;
  std::vector<const char*> symbols;
  BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, 0, &d, &symbols));
  int64_t n = -1;
  const OrtOpAttr* attr = nullptr;
  size_t read = 0;
  if (OrtStatus* status = g_api->ShapeInferContext_GetAttribute(context, "out_features", &attr)) {
    g_api->ReleaseStatus(status);  // missing: the kernel's creation reports it
  } else if (attr != nullptr) {
    if (OrtStatus* status = g_api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &n, sizeof(n), &read)) {
      g_api->ReleaseStatus(status);
      n = -1;
    }
  }
  if (!d.dims.empty()) {
    d.dims.back() = n;
    symbols.back() = nullptr;
  }
  return infer_output(context, d.type, d.dims, symbols);
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kOpName; }

}  // namespace

const OrtCustomOp* binary_linear_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op =
      cpu_custom_op(kOrtApiVersion, op_name, create_kernel, compute_kernel<Kernel, compute>,
                    destroy_kernel<Kernel>, infer_shape);
  return &op;
}

}  // namespace bitmaps::ort

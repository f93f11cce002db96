// The bitmaps::BinaryLinear custom op of binary_linear_op.h: its schema callbacks, the kernel that
// checks the node once at session creation (attributes, input types and static shapes, then lays
// out constant weights into the GEMM's panels), and the compute callback.
#include "onnxruntime/binary_linear_op.h"

#include "onnxruntime/binary_linear_kernel.h"

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

OrtStatus* Linear::check_tensor(const char* name, const TensorDesc& d,
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

OrtStatus* Linear::check_x(const TensorDesc& d, bool known_rank) const {
  if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT &&
      d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    return invalid("X must be float32 or float16, got " + type_name(d.type));
  }
  if (d.dims.empty() && !known_rank) return nullptr;
  if (d.dims.empty() || (d.dims.back() >= 0 && d.dims.back() != k)) {
    return invalid("X must have shape [..., " + std::string(names.in) + "=" + std::to_string(k) +
                   "], got " + shape_text(d.dims));
  }
  return nullptr;
}

OrtStatus* Linear::check_w(const TensorDesc& d, bool* panels) const {
  const int64_t kw = packed_width(k);
  const std::string in = names.in, out = names.out, w = names.w;
  const std::string sizes = " for " + in + "=" + std::to_string(k) + ", " + out + "=" +
                            std::to_string(n);
  *panels = d.dims.size() == 3;
  if (*panels) {
    const int64_t rows = cpu::kPanelRows;
    return check_tensor((w + " (packed weight signs, panel layout)").c_str(), d,
                        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {(n + rows - 1) / rows, kw, rows},
                        "[ceil(" + out + "/16), ceil(" + in + "/32), 16]" + sizes);
  }
  return check_tensor((w + " (packed weight signs)").c_str(), d,
                      ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {n, kw},
                      "[" + out + ", ceil(" + in + "/32)], or the panel layout [ceil(" + out +
                          "/16), ceil(" + in + "/32), 16]," + sizes);
}

OrtStatus* check_x_input(const OrtKernelInfo* info, size_t x_index, const Linear& kern) {
  OrtTypeInfo* raw = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputTypeInfo(info, x_index, &raw));
  const TypeInfo type_info(raw);
  const OrtTensorTypeAndShapeInfo* tensor = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
  if (tensor == nullptr) return kern.invalid("X is not a tensor");
  TensorDesc d;
  BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &d));
  return kern.check_x(d, false);
}

// ---------------------------------------------------------------------------- kernel creation

namespace {

OrtStatus* string_attribute(const Linear& kern, const OrtKernelInfo* info, const char* name,
                            const char* expected) {
  size_t size = 0;
  if (OrtStatus* status = g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    g_api->ReleaseStatus(status);
    const std::string found = attribute_type_found(info, name);
    // absent: optional (TensorRT reads it; this op needs nothing)
    if (found.empty()) return nullptr;
    return kern.invalid(std::string("attribute ") + name + " must be a string, got " + found);
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

}  // namespace

// The CPU path and threads (ort_common.h's read_run_settings) and the weight layout
// (BITMAPS_ORT_PREPACK: "1", default, lays a constant W out into panels once at session creation,
// a second copy of the weights beside ONNX Runtime's own, which a custom op cannot release; "0"
// lays out one layer's panels per call, in a buffer freed after the call: less resident memory,
// a little more time per call).
OrtStatus* read_environment(Linear* kern) {
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

OrtStatus* read_linear(const OrtKernelInfo* info, const LinearNames& names, Linear* kern) {
  const std::string& node = kern->node;
  int64_t act_unsigned = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, names.in, true, &kern->k));
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, names.out, true, &kern->n));
  BITMAPS_ORT_RETURN_IF_ERROR(
      float_attribute(node, info, names.threshold, false, &kern->act_threshold));
  BITMAPS_ORT_RETURN_IF_ERROR(float_attribute(node, info, names.scale, false, &kern->act_scale));
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, names.unsigned_, false, &act_unsigned));
  int64_t activation = 0;
  if (names.activation != nullptr) {
    BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(node, info, names.activation, false, &activation));
  }
  // below 2^31: the sizes the kernels index with (and ceil(K/32) computed without overflow)
  constexpr int64_t kMaxFeatures = (int64_t{1} << 31) - 1;
  if (kern->k < 1 || kern->k > kMaxFeatures) {
    return kern->invalid(std::string(names.in) + " must be in [1, 2^31 - 1], got " +
                         std::to_string(kern->k));
  }
  if (kern->n < 1 || kern->n > kMaxFeatures) {
    return kern->invalid(std::string(names.out) + " must be in [1, 2^31 - 1], got " +
                         std::to_string(kern->n));
  }
  if (!std::isfinite(kern->act_threshold)) {
    return kern->invalid(std::string(names.threshold) + " must be finite, got " +
                         number(kern->act_threshold));
  }
  if (!(kern->act_scale >= 0.0f) || !std::isfinite(kern->act_scale)) {
    return kern->invalid(std::string(names.scale) + " must be >= 0 (0: per-row mean |input - " +
                         names.threshold + "|), got " + number(kern->act_scale));
  }
  if (act_unsigned != 0 && act_unsigned != 1) {
    return kern->invalid(std::string(names.unsigned_) +
                         " must be 0 (activations to +-1) or 1 (to {0, 1}), got " +
                         std::to_string(act_unsigned));
  }
  kern->act_unsigned = act_unsigned == 1;
  if (activation != 0 && activation != 1) {
    return kern->invalid(std::string(names.activation) +
                         " must be 0 (none) or 1 (GELU, erf form), got " +
                         std::to_string(activation));
  }
  kern->gelu = activation == 1;
  kern->names = names;
  return read_environment(kern);
}

namespace {

OrtStatus* read_attributes(const OrtKernelInfo* info, Linear* kern) {
  BITMAPS_ORT_RETURN_IF_ERROR(read_linear(info, kBinaryLinearNames, kern));
  BITMAPS_ORT_RETURN_IF_ERROR(string_attribute(*kern, info, "plugin_version", "1"));
  return string_attribute(*kern, info, "plugin_namespace", "bitmaps");
}

}  // namespace

// Input types and static shapes of W, w_scale and bias (inputs w_index, w_index + 1, w_index + 2;
// bias optional when it is the node's last input); W laid out into panels when it is a constant
// initializer.
OrtStatus* check_linear_inputs(const OrtKernelInfo* info, size_t w_index, Linear* kern) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  const std::string n_name = kern->names.out;
  for (size_t i = w_index; i < w_index + 3 && i < inputs; ++i) {
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
    if (i == w_index && (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || !d.dims.empty())) {
      bool panels = false;  // rank 0 here: not known before run time, checked per call
      status = kern->check_w(d, &panels);
    }
    if (i == w_index + 1) status = kern->check_tensor(kern->names.w_scale, d, f32, {kern->n}, n_name);
    if (i == w_index + 2) status = kern->check_tensor(kern->names.bias, d, f32, {kern->n}, n_name);
    if (status != nullptr) return status;
  }

  if (!kern->prepack) return nullptr;  // BITMAPS_ORT_PREPACK=0: laid out on every call
  const OrtValue* w = nullptr;
  if (!constant_input(info, w_index, &w)) return nullptr;  // not a constant: laid out per call
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

OrtStatus* linear_inputs(const Linear& kern, OrtKernelContext* context, size_t w_index,
                         cpu::BinaryLinearArgs* args) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  const OrtValue *w = nullptr, *w_scale = nullptr, *bias = nullptr;
  TensorDesc wd, sd, bd;
  BITMAPS_ORT_RETURN_IF_ERROR(input(context, w_index + 1, &w_scale, &sd));
  if (inputs > w_index + 2) BITMAPS_ORT_RETURN_IF_ERROR(input(context, w_index + 2, &bias, &bd));
  const auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const std::string n_name = kern.names.out;
  BITMAPS_ORT_RETURN_IF_ERROR(kern.check_tensor(kern.names.w_scale, sd, f32, {kern.n}, n_name));
  if (bias != nullptr) {
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_tensor(kern.names.bias, bd, f32, {kern.n}, n_name));
  }
  if (kern.prepacked) {
    args->panels = kern.panels.data();
  } else {
    BITMAPS_ORT_RETURN_IF_ERROR(input(context, w_index, &w, &wd));
    bool panels = false;
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_w(wd, &panels));
    BITMAPS_ORT_RETURN_IF_ERROR(data_of(w, panels ? &args->panels : &args->w));
    // panels as given (read in place): bits past in_features would be counted by the GEMM
    const int64_t row =
        panels ? cpu::panel_row_with_bits_past_k(args->panels, kern.n, kern.k) : -1;
    if (row >= 0) {
      return kern.invalid(std::string(kern.names.w) + " (panel layout) holds bits past " +
                          kern.names.in + "=" + std::to_string(kern.k) + " (row " +
                          std::to_string(row) + "): laid out for another " + kern.names.in +
                          "? Re-export the model");
    }
  }
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(w_scale, &args->w_scale));
  if (bias != nullptr) BITMAPS_ORT_RETURN_IF_ERROR(data_of(bias, &args->bias));
  args->k = kern.k;
  args->n = kern.n;
  args->act_threshold = kern.act_threshold;
  args->act_scale = kern.act_scale;
  args->act_unsigned = kern.act_unsigned;
  args->gelu = kern.gelu;
  return nullptr;
}

OrtStatus* linear_output(OrtKernelContext* context, const TensorDesc& xd, int64_t n, void** y,
                         int64_t* m) {
  std::vector<int64_t> out_dims = xd.dims;
  out_dims.back() = n;
  OrtValue* out = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(
      g_api->KernelContext_GetOutput(context, 0, out_dims.data(), out_dims.size(), &out));
  *m = 1;
  for (size_t i = 0; i + 1 < xd.dims.size(); ++i) *m *= xd.dims[i];
  return g_api->GetTensorMutableData(out, y);
}

bool constant_input(const OrtKernelInfo* info, size_t index, const OrtValue** value) {
  int is_constant = 0;
  *value = nullptr;
  if (OrtStatus* status = g_api->KernelInfoGetConstantInput_tensor(info, index, &is_constant, value)) {
    g_api->ReleaseStatus(status);
    return false;
  }
  return is_constant && *value != nullptr;
}

OrtStatus* infer_linear_output(OrtShapeInferContext* context, const char* out_attribute) {
  TensorDesc d;
  std::vector<const char*> symbols;
  BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, 0, &d, &symbols));
  int64_t n = -1;
  const OrtOpAttr* attr = nullptr;
  size_t read = 0;
  if (OrtStatus* status = g_api->ShapeInferContext_GetAttribute(context, out_attribute, &attr)) {
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

namespace {

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Linear>();
  BITMAPS_ORT_RETURN_IF_ERROR(node_name(info, kOpName, &kern->node));
  BITMAPS_ORT_RETURN_IF_ERROR(read_attributes(info, kern.get()));
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs < 3 || inputs > 4) {
    return kern->invalid("expects inputs X, W, w_scale and bias, got " + std::to_string(inputs));
  }
  // W first: an in_features that does not fit the packed width is the likelier mistake than X.
  BITMAPS_ORT_RETURN_IF_ERROR(check_linear_inputs(info, 1, kern.get()));
  BITMAPS_ORT_RETURN_IF_ERROR(check_x_input(info, 0, *kern));
  *out = kern.release();
  return nullptr;
}

// ---------------------------------------------------------------------------- compute

OrtStatus* compute(const Linear& kern, OrtKernelContext* context) {
  const OrtValue* x = nullptr;
  TensorDesc xd;
  BITMAPS_ORT_RETURN_IF_ERROR(input(context, 0, &x, &xd));
  BITMAPS_ORT_RETURN_IF_ERROR(kern.check_x(xd, true));
  cpu::BinaryLinearArgs args;
  BITMAPS_ORT_RETURN_IF_ERROR(linear_inputs(kern, context, 1, &args));
  BITMAPS_ORT_RETURN_IF_ERROR(linear_output(context, xd, kern.n, &args.y, &args.m));
  if (args.m == 0) return nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(x, &args.x));
  args.x_half = xd.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  cpu::binary_linear(kern.path, args, make_parallel(kern.threads, context));
  return nullptr;
}

// ---------------------------------------------------------------------------- schema

// Y: the type of X, shape X.shape[:-1] + [out_features] (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  return infer_linear_output(context, "out_features");
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kOpName; }

}  // namespace

const OrtCustomOp* binary_linear_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op =
      cpu_custom_op(kOrtApiVersion, op_name, create_kernel, compute_kernel<Linear, compute>,
                    destroy_kernel<Linear>, infer_shape);
  return &op;
}

}  // namespace bitmaps::ort

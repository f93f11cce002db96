// The bitmaps::MultiHeadAttention custom op of multi_head_attention_op.h: attributes and static
// input types and shapes checked once at session creation, every shape again at run time.
#include "onnxruntime/multi_head_attention_op.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu_attention.h"
#include "onnxruntime/binary_linear_op.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {
namespace {

constexpr const char* kInputs[] = {"query", "key", "value", "attention_bias"};
constexpr const char* kPackedInputs[] = {"qkv", "attention_bias"};

struct Kernel {
  std::string node;  // "bitmaps::MultiHeadAttention node 'name'"
  bool packed = false;  // PackedMultiHeadAttention: inputs qkv, attention_bias
  int64_t heads = 0;
  float scale = 0.0f;  // 0: 1 / sqrt(head size)
  bool int8 = false;   // attribute int8 = 1: cpu_attention.h's int8 scheme
  cpu::CpuPath path = cpu::CpuPath::kScalar;
  Threads threads = Threads::kOrt;

  OrtStatus* invalid(const std::string& what) const {
    return error(ORT_INVALID_ARGUMENT, node + ": " + what);
  }
  size_t max_inputs() const { return packed ? 2 : 4; }
  bool is_bias(size_t i) const { return i + 1 == max_inputs(); }
  const char* input_name(size_t i) const { return packed ? kPackedInputs[i] : kInputs[i]; }
  // Type and rank of input i; unknown ranks (0 dims at session creation) pass.
  OrtStatus* check_input(size_t i, const TensorDesc& d, bool known_rank) const {
    const std::string name = input_name(i);
    if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      return invalid(name + " must be float32, got " + type_name(d.type));
    }
    const size_t rank = is_bias(i) ? 4 : 3;
    if (d.dims.empty() && !known_rank) return nullptr;
    if (d.dims.size() != rank) {
      return invalid(name + " must have rank " + std::to_string(rank) +
                     (is_bias(i)  ? " [batch or 1, num_heads or 1, q_len or 1, kv_len]"
                      : packed    ? " [batch, length, 3 * num_heads * head_size]"
                                  : " [batch, length, num_heads * head_size]") +
                     ", got " + shape_text(d.dims));
    }
    const int64_t multiple = packed ? 3 * heads : heads;
    if (!is_bias(i) && d.dims[2] >= 0 && (d.dims[2] == 0 || d.dims[2] % multiple != 0)) {
      return invalid(name + "'s last dimension " + std::to_string(d.dims[2]) +
                     " is not a positive multiple of " + (packed ? "3 * " : "") +
                     "num_heads=" + std::to_string(multiple));
    }
    return nullptr;
  }
};

OrtStatus* read_attributes(const OrtKernelInfo* info, Kernel* kern) {
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(kern->node, info, "num_heads", true, &kern->heads));
  BITMAPS_ORT_RETURN_IF_ERROR(float_attribute(kern->node, info, "scale", false, &kern->scale));
  if (kern->heads < 1) {
    return kern->invalid("num_heads must be >= 1, got " + std::to_string(kern->heads));
  }
  int64_t int8 = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(kern->node, info, "int8", false, &int8));
  if (int8 != 0 && int8 != 1) {
    return kern->invalid("int8 must be 0 (float32 attention) or 1 (int8), got " +
                         std::to_string(int8));
  }
  kern->int8 = int8 == 1;
  if (!std::isfinite(kern->scale)) {
    return kern->invalid("scale must be finite (0: 1/sqrt(head size)), got " +
                         number(kern->scale));
  }
  return nullptr;
}

OrtStatus* check_inputs(const OrtKernelInfo* info, const Kernel& kern) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs < kern.max_inputs() - 1 || inputs > kern.max_inputs()) {
    return kern.invalid(std::string("expects inputs ") +
                        (kern.packed ? "qkv and attention_bias" : "query, key, value and attention_bias") +
                        ", got " + std::to_string(inputs));
  }
  for (size_t i = 0; i < inputs; ++i) {
    OrtTypeInfo* raw = nullptr;
    if (OrtStatus* status = g_api->KernelInfo_GetInputTypeInfo(info, i, &raw)) {
      g_api->ReleaseStatus(status);  // an omitted optional input (attention_bias, empty name)
      continue;
    }
    const TypeInfo type_info(raw);
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
    if (tensor == nullptr) return kern.invalid(std::string(kern.input_name(i)) + " is not a tensor");
    TensorDesc d;
    BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &d));
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_input(i, d, false));
  }
  return nullptr;
}

template <bool kPacked>
OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Kernel>();
  kern->packed = kPacked;
  BITMAPS_ORT_RETURN_IF_ERROR(
      node_name(info, kPacked ? kPackedAttentionOpName : kAttentionOpName, &kern->node));
  BITMAPS_ORT_RETURN_IF_ERROR(read_attributes(info, kern.get()));
  BITMAPS_ORT_RETURN_IF_ERROR(read_run_settings(kern->node, &kern->path, &kern->threads));
  BITMAPS_ORT_RETURN_IF_ERROR(check_inputs(info, *kern));
  *out = kern.release();
  return nullptr;
}

OrtStatus* compute(const Kernel& kern, OrtKernelContext* context) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  // Slots query, key, value, attention_bias; a packed op's qkv fills the first three.
  const OrtValue* values[4] = {nullptr, nullptr, nullptr, nullptr};
  TensorDesc d[4];
  for (size_t i = 0; i < std::min<size_t>(inputs, kern.max_inputs()); ++i) {
    const size_t slot = kern.is_bias(i) ? 3 : i;
    BITMAPS_ORT_RETURN_IF_ERROR(input(context, i, &values[slot], &d[slot]));
    if (values[slot] != nullptr) BITMAPS_ORT_RETURN_IF_ERROR(kern.check_input(i, d[slot], true));
  }
  if (kern.packed && values[0] != nullptr) {
    d[0].dims[2] /= 3;  // each of Q, K and V: [batch, length, hidden] with rows 3 * hidden apart
    values[1] = values[2] = values[0];
    d[1] = d[2] = d[0];
  }
  if (values[0] == nullptr || values[1] == nullptr || values[2] == nullptr) {
    return kern.invalid(kern.packed ? "qkv is required" : "query, key and value are required");
  }
  const std::vector<int64_t>&q = d[0].dims, &k = d[1].dims, &v = d[2].dims;
  cpu::AttentionArgs args;
  args.batch = q[0];
  args.q_len = q[1];
  args.kv_len = k[1];
  args.heads = kern.heads;
  args.head_dim = q[2] / kern.heads;
  args.v_head_dim = v[2] / kern.heads;
  if (k[0] != q[0] || v[0] != q[0] || v[1] != k[1] || k[2] != q[2]) {
    return kern.invalid("key must be [batch, kv_len, " + std::to_string(q[2]) +
                        "] and value [batch, kv_len, num_heads * v_head_size] for query " +
                        shape_text(q) + ", got key " + shape_text(k) + " and value " +
                        shape_text(v));
  }
  if (values[3] != nullptr) {
    const std::vector<int64_t>& b = d[3].dims;
    if (b.size() != 4 || !args.bias_fits(b.data())) {
      return kern.invalid("attention_bias must be [batch or 1, num_heads or 1, q_len or 1, "
                          "kv_len] = [" + std::to_string(args.batch) + " or 1, " +
                          std::to_string(args.heads) + " or 1, " + std::to_string(args.q_len) +
                          " or 1, " + std::to_string(args.kv_len) + "], got " + shape_text(b));
    }
    const float* bias = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[3], &bias));
    args.set_bias(bias, b.data());
  }
  const std::vector<int64_t> out_dims = {args.batch, args.q_len, v[2]};
  OrtValue* out = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(
      g_api->KernelContext_GetOutput(context, 0, out_dims.data(), out_dims.size(), &out));
  if (args.batch == 0 || args.q_len == 0 || v[2] == 0) return nullptr;
  if (args.kv_len == 0) return kern.invalid("key and value must hold at least one position");
  args.scale = kern.scale != 0.0f ? kern.scale
                                  : 1.0f / std::sqrt(static_cast<float>(args.head_dim));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[0], &args.q));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[1], &args.k));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[2], &args.v));
  if (kern.packed) {
    const int64_t hidden = q[2];
    args.k += hidden;
    args.v += 2 * hidden;
    args.q_stride = args.k_stride = args.v_stride = 3 * hidden;
  }
  void* y = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(out, &y));
  args.out = static_cast<float*>(y);
  args.int8 = kern.int8;
  cpu::attention(kern.path, args, make_parallel(kern.threads, context));
  return nullptr;
}

// Output: [query batch, query length, value hidden] (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  TensorDesc d[3];
  std::vector<const char*> symbols[3];
  for (size_t i = 0; i < 3; ++i) {
    BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, i, &d[i], &symbols[i]));
  }
  // query's type (float32; any other fails at kernel creation with this op's message)
  if (d[0].dims.size() != 3 || d[2].dims.size() != 3) return infer_output(context, d[0].type, {}, {});
  return infer_output(context, d[0].type, {d[0].dims[0], d[0].dims[1], d[2].dims[2]},
                      {symbols[0][0], symbols[0][1], symbols[2][2]});
}

// Output: [batch, length, qkv's last dimension / 3] (batch and length symbols kept).
OrtStatus* ORT_API_CALL infer_packed_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  TensorDesc d;
  std::vector<const char*> symbols;
  BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, 0, &d, &symbols));
  if (d.dims.size() != 3) return infer_output(context, d.type, {}, {});
  return infer_output(context, d.type, {d.dims[0], d.dims[1], d.dims[2] < 0 ? -1 : d.dims[2] / 3},
                      {symbols[0], symbols[1], nullptr});
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kAttentionOpName; }
const char* ORT_API_CALL packed_op_name(const OrtCustomOp*) { return kPackedAttentionOpName; }

}  // namespace

const OrtCustomOp* multi_head_attention_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op =
      cpu_custom_op(kOrtApiVersion, op_name, create_kernel<false>,
                    compute_kernel<Kernel, compute>, destroy_kernel<Kernel>, infer_shape);
  return &op;
}

const OrtCustomOp* packed_multi_head_attention_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op =
      cpu_custom_op<2>(kOrtApiVersion, packed_op_name, create_kernel<true>,
                       compute_kernel<Kernel, compute>, destroy_kernel<Kernel>,
                       infer_packed_shape);
  return &op;
}

}  // namespace bitmaps::ort

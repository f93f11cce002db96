// The bitmaps::EmbedLayerNormalization custom op of embed_layer_norm_op.h: attributes, static
// input types and ranks, and the sizes known before run time (initializers) checked once at
// session creation; every shape and index again at run time.
#include "onnxruntime/embed_layer_norm_op.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu_embed.h"
#include "onnxruntime/binary_linear_op.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {
namespace {

// gamma, beta, then (ids, table, scale) for each of the three lookups; every input is required.
constexpr size_t kInputCount = 11;
constexpr const char* kInputs[kInputCount] = {"gamma",   "beta",  "ids_0",   "table_0",
                                              "scale_0", "ids_1", "table_1", "scale_1",
                                              "ids_2",   "table_2", "scale_2"};

struct Kernel {
  std::string node;  // "bitmaps::EmbedLayerNormalization node 'name'"
  float epsilon = 1e-5f;
  int64_t block = 0;
  cpu::CpuPath path = cpu::CpuPath::kScalar;
  Threads threads = Threads::kOrt;

  OrtStatus* invalid(const std::string& what) const {
    return error(ORT_INVALID_ARGUMENT, node + ": " + what);
  }
  // Type and rank of input i. Before run time no dimensions can also mean a rank not known yet;
  // at run time (`run_time`) it is a scalar.
  OrtStatus* check_input(size_t i, const TensorDesc& d, bool run_time) const {
    const std::string name = kInputs[i];
    const size_t role = i < 2 ? 0 : 1 + (i - 2) % 3;  // 0 gamma/beta, 1 ids, 2 table, 3 scale
    const bool known = run_time || !d.dims.empty();
    if (role == 0 || role == 3) {
      if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        return invalid(name + " must be float32, got " + type_name(d.type));
      }
    } else if (role == 1) {
      if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 &&
          d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
        return invalid(name + " must be int64 or int32, got " + type_name(d.type));
      }
    } else if (d.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      return invalid(name + " must be uint8 (two 4-bit values per byte), got " + type_name(d.type));
    }
    if (known && role == 0 && d.dims.size() != 1) {
      return invalid(name + " must have shape [hidden], got " + shape_text(d.dims));
    }
    if (known && (role == 2 || role == 3) && d.dims.size() != 2) {
      return invalid(name + " must have 2 dimensions [rows, " +
                     (role == 2 ? std::string("hidden / 2") : std::string("hidden / block_size")) +
                     "], got " + shape_text(d.dims));
    }
    return nullptr;
  }
  // The sizes the inputs must agree on (beta is gamma's shape; the hidden size even and a
  // multiple of block_size; each table [rows >= 1, hidden / 2] with its scale [rows, hidden /
  // block_size]), where d's dimensions are known: at session creation the initializers' static
  // shapes, at run time every input's. Ranks and types are check_input's.
  OrtStatus* check_sizes(const TensorDesc (&d)[kInputCount]) const {
    if (d[0].dims.size() != 1 || d[0].dims[0] < 0) return nullptr;  // hidden size not known yet
    const int64_t n = d[0].dims[0];
    if (d[1].dims.size() == 1 && d[1].dims[0] >= 0 && d[1].dims[0] != n) {
      return invalid("beta must have gamma's shape [" + std::to_string(n) + "], got " +
                     shape_text(d[1].dims));
    }
    if (n == 0 || n % 2 != 0 || n % block != 0) {
      return invalid("hidden size " + std::to_string(n) + " (gamma's) must be even, > 0 and a " +
                     "multiple of block_size " + std::to_string(block));
    }
    for (int t = 0; t < 3; ++t) {
      const TensorDesc& table = d[3 + 3 * t];
      const TensorDesc& scale = d[4 + 3 * t];
      if (table.dims.empty() || scale.dims.empty()) continue;  // ranks not known yet
      const std::string bad = cpu::check_embedding_table(n, block, table.dims, scale.dims,
                                                         kInputs[3 + 3 * t], kInputs[4 + 3 * t]);
      if (!bad.empty()) return invalid(bad);
    }
    return nullptr;
  }
};

OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp*,
                                                                      size_t) {
  return INPUT_OUTPUT_REQUIRED;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Kernel>();
  BITMAPS_ORT_RETURN_IF_ERROR(node_name(info, kEmbedLayerNormOpName, &kern->node));
  BITMAPS_ORT_RETURN_IF_ERROR(epsilon_attribute(kern->node, info, &kern->epsilon));
  BITMAPS_ORT_RETURN_IF_ERROR(int_attribute(kern->node, info, "block_size", true, &kern->block));
  if (kern->block < 2 || kern->block % 2 != 0) {
    return kern->invalid("block_size must be even and >= 2, got " + std::to_string(kern->block));
  }
  BITMAPS_ORT_RETURN_IF_ERROR(read_run_settings(kern->node, &kern->path, &kern->threads));
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs != kInputCount) {
    return kern->invalid("expects gamma, beta and three (ids, table, scale) lookups, 11 inputs, " +
                         std::string("got ") + std::to_string(inputs));
  }
  TensorDesc d[kInputCount];
  for (size_t i = 0; i < inputs; ++i) {
    OrtTypeInfo* raw = nullptr;
    if (OrtStatus* status = g_api->KernelInfo_GetInputTypeInfo(info, i, &raw)) {
      g_api->ReleaseStatus(status);
      return kern->invalid("input " + std::string(kInputs[i]) + " is missing");
    }
    const TypeInfo type_info(raw);
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
    if (tensor == nullptr) return kern->invalid(std::string(kInputs[i]) + " is not a tensor");
    BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &d[i]));
    BITMAPS_ORT_RETURN_IF_ERROR(kern->check_input(i, d[i], false));
  }
  BITMAPS_ORT_RETURN_IF_ERROR(kern->check_sizes(d));
  *out = kern.release();
  return nullptr;
}

OrtStatus* compute(const Kernel& kern, OrtKernelContext* context) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  const OrtValue* values[kInputCount] = {};
  TensorDesc d[kInputCount];
  for (size_t i = 0; i < std::min(inputs, kInputCount); ++i) {
    BITMAPS_ORT_RETURN_IF_ERROR(input(context, i, &values[i], &d[i]));
  }
  const int count = 3;
  for (size_t i = 0; i < kInputCount; ++i) {
    if (values[i] == nullptr) return kern.invalid(std::string(kInputs[i]) + " is required");
    BITMAPS_ORT_RETURN_IF_ERROR(kern.check_input(i, d[i], true));
  }
  BITMAPS_ORT_RETURN_IF_ERROR(kern.check_sizes(d));
  const int64_t n = d[0].dims[0];
  cpu::EmbedLayerNormArgs args;
  args.count = count;
  args.n = n;
  args.block = kern.block;
  args.epsilon = kern.epsilon;
  const size_t rank = d[2].dims.size();
  if (rank == 0) return kern.invalid("ids_0 must have at least one dimension");
  args.lead_dims.assign(rank, 1);
  for (int t = 0; t < count; ++t) {
    const TensorDesc& ids = d[2 + 3 * t];
    const TensorDesc& table = d[3 + 3 * t];
    const TensorDesc& scale = d[4 + 3 * t];
    const std::string i = std::to_string(t);
    const std::string names[3] = {"ids_" + i, "table_" + i, "scale_" + i};
    const std::string bad = cpu::fit_embedding_lookup(&args, t, ids.dims, table.dims, scale.dims,
                                                      names, "ids_0");
    if (!bad.empty()) return kern.invalid(bad);
    cpu::EmbeddingLookup& l = args.lookups[t];
    l.ids_int32 = ids.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    void* raw = nullptr;
    BITMAPS_ORT_RETURN_IF_ERROR(
        g_api->GetTensorMutableData(const_cast<OrtValue*>(values[2 + 3 * t]), &raw));
    l.ids = raw;
    BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[3 + 3 * t], &l.data));
    BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[4 + 3 * t], &l.scale));
    const std::string range = cpu::check_embedding_ids(l);
    if (!range.empty()) return kern.invalid("ids_" + i + " " + range + " (table_" + i + "'s rows)");
  }
  std::vector<int64_t> out_dims = args.lead_dims;
  out_dims.push_back(n);
  OrtValue* out = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(
      g_api->KernelContext_GetOutput(context, 0, out_dims.data(), out_dims.size(), &out));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[0], &args.gamma));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(values[1], &args.beta));
  void* y = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(out, &y));
  args.out = static_cast<float*>(y);
  cpu::embed_layer_norm(kern.path, args, make_parallel(kern.threads, context));
  return nullptr;
}

// Output: float32 [the ids' broadcast shape..., hidden] (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  size_t inputs = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->ShapeInferContext_GetInputCount(context, &inputs));
  TensorDesc gamma;
  std::vector<const char*> gamma_symbols;
  BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, 0, &gamma, &gamma_symbols));
  std::vector<int64_t> dims;
  std::vector<const char*> symbols;
  for (size_t t = 0; 2 + 3 * t < inputs; ++t) {
    TensorDesc ids;
    std::vector<const char*> ids_symbols;
    BITMAPS_ORT_RETURN_IF_ERROR(infer_input(context, 2 + 3 * t, &ids, &ids_symbols));
    if (ids.dims.empty()) continue;  // rank not known
    if (dims.empty()) {
      dims = ids.dims;
      symbols = ids_symbols;
      continue;
    }
    if (ids.dims.size() != dims.size()) break;  // the kernel refuses it with its message
    for (size_t k = 0; k < dims.size(); ++k) {
      if (dims[k] == 1 && ids.dims[k] != 1) {
        dims[k] = ids.dims[k];
        symbols[k] = ids_symbols[k];
      }
    }
  }
  if (dims.empty() || gamma.dims.size() != 1) {
    return infer_output(context, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, {}, {});
  }
  dims.push_back(gamma.dims[0]);
  symbols.push_back(gamma_symbols[0]);
  return infer_output(context, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, dims, symbols);
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kEmbedLayerNormOpName; }

OrtCustomOp make_op() {
  OrtCustomOp op = cpu_custom_op<kInputCount>(kOrtApiVersion, op_name, create_kernel,
                                              compute_kernel<Kernel, compute>,
                                              destroy_kernel<Kernel>, infer_shape);
  op.GetInputCharacteristic = input_characteristic;
  return op;
}

}  // namespace

const OrtCustomOp* embed_layer_norm_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op = make_op();
  return &op;
}

}  // namespace bitmaps::ort

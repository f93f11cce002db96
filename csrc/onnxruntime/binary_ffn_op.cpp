// The bitmaps::BinaryFeedForward custom op of binary_ffn_op.h: two binary linear layers read and
// checked as bitmaps::BinaryLinear reads one (binary_linear_kernel.h), and at session creation the
// table that lets the first GEMM write the second's input bits (cpu::ffn_bit_table), when the
// activation scales are fixed, X is float32 and the first layer's w_scale and bias are constants.
#include "onnxruntime/binary_ffn_op.h"

#include <memory>
#include <string>

#include "kernels/cpu_binary_linear.h"
#include "onnxruntime/binary_linear_kernel.h"
#include "onnxruntime/binary_linear_op.h"
#include "onnxruntime/ort_common.h"

namespace bitmaps::ort {
namespace {

constexpr LinearNames kFirstNames{"in_features", "hidden_features", "act_threshold", "act_scale",
                                  "act_unsigned", "activation", "W1", "w_scale1", "bias1"};
constexpr LinearNames kSecondNames{"hidden_features", "out_features", "hidden_act_threshold",
                                   "hidden_act_scale", "hidden_act_unsigned", nullptr, "W2",
                                   "w_scale2", "bias2"};
constexpr size_t kInputs = 7;  // X, W1, w_scale1, bias1, W2, w_scale2, bias2

struct Kernel {
  Linear first, second;
  cpu::FfnBitTable table;
  bool use_table = false;
};

// The table, where it applies: float32 X, and w_scale1 and bias1 constant initializers (the table
// is made from their values).
OrtStatus* make_table(const OrtKernelInfo* info, Kernel* kern) {
  OrtTypeInfo* raw = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetInputTypeInfo(info, 0, &raw));
  const TypeInfo type_info(raw);
  const OrtTensorTypeAndShapeInfo* tensor = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->CastTypeInfoToTensorInfo(type_info.get(), &tensor));
  TensorDesc xd;
  BITMAPS_ORT_RETURN_IF_ERROR(describe(tensor, &xd));
  const OrtValue *w_scale = nullptr, *bias = nullptr;
  if (xd.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || !constant_input(info, 2, &w_scale) ||
      !constant_input(info, 3, &bias)) {
    return nullptr;
  }
  cpu::BinaryLinearArgs first, second;
  first.k = kern->first.k;
  first.n = kern->first.n;
  first.act_scale = kern->first.act_scale;
  first.act_unsigned = kern->first.act_unsigned;
  first.gelu = kern->first.gelu;
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(w_scale, &first.w_scale));
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(bias, &first.bias));
  second.act_threshold = kern->second.act_threshold;
  second.act_scale = kern->second.act_scale;
  second.act_unsigned = kern->second.act_unsigned;
  kern->use_table = cpu::ffn_bit_table(first, second, &kern->table);
  return nullptr;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kern = std::make_unique<Kernel>();
  BITMAPS_ORT_RETURN_IF_ERROR(node_name(info, kBinaryFfnOpName, &kern->first.node));
  kern->second.node = kern->first.node;
  BITMAPS_ORT_RETURN_IF_ERROR(read_linear(info, kFirstNames, &kern->first));
  BITMAPS_ORT_RETURN_IF_ERROR(read_linear(info, kSecondNames, &kern->second));
  // ONNX Runtime checks the input count against the schema (all kInputs required) before this
  BITMAPS_ORT_RETURN_IF_ERROR(check_linear_inputs(info, 1, &kern->first));
  BITMAPS_ORT_RETURN_IF_ERROR(check_linear_inputs(info, 4, &kern->second));
  BITMAPS_ORT_RETURN_IF_ERROR(check_x_input(info, 0, kern->first));
  BITMAPS_ORT_RETURN_IF_ERROR(make_table(info, kern.get()));
  *out = kern.release();
  return nullptr;
}

OrtStatus* compute(const Kernel& kern, OrtKernelContext* context) {
  const OrtValue* x = nullptr;
  TensorDesc xd;
  BITMAPS_ORT_RETURN_IF_ERROR(input(context, 0, &x, &xd));
  BITMAPS_ORT_RETURN_IF_ERROR(kern.first.check_x(xd, true));
  cpu::BinaryFfnArgs args;
  BITMAPS_ORT_RETURN_IF_ERROR(linear_inputs(kern.first, context, 1, &args.first));
  BITMAPS_ORT_RETURN_IF_ERROR(linear_inputs(kern.second, context, 4, &args.second));
  BITMAPS_ORT_RETURN_IF_ERROR(linear_output(context, xd, kern.second.n, &args.y, &args.first.m));
  if (args.first.m == 0) return nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(data_of(x, &args.first.x));
  args.first.x_half = xd.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  if (kern.use_table && !args.first.x_half) args.use(kern.table);
  cpu::binary_ffn(kern.first.path, args, make_parallel(kern.first.threads, context));
  return nullptr;
}

// Y: the type of X, shape X.shape[:-1] + [out_features] (symbolic dimensions kept).
OrtStatus* ORT_API_CALL infer_shape(const OrtCustomOp*, OrtShapeInferContext* context) {
  return infer_linear_output(context, "out_features");
}

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return kBinaryFfnOpName; }

}  // namespace

const OrtCustomOp* binary_ffn_op(const OrtApi* api) {
  g_api = api;
  static const OrtCustomOp op = cpu_custom_op<kInputs, false>(
      kOrtApiVersion, op_name, create_kernel, compute_kernel<Kernel, compute>,
      destroy_kernel<Kernel>, infer_shape);
  return &op;
}

}  // namespace bitmaps::ort

// bitmaps::MultiHeadAttention (ONNX domain "bitmaps", op version 1) as an ONNX Runtime custom op on
// the CPU execution provider: scaled dot-product attention over heads side by side in the last
// dimension, on the kernel of csrc/kernels/cpu_attention.h. `bitmaps export --target onnxruntime`
// puts one in every attention block of a binary model, fed by the Q, K and V BinaryLinear outputs;
// the file carries a model-local function of the same name (standard ops), so ONNX Runtime without
// this library runs it too. Inputs, attributes and output are in README.md beside this file.
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

constexpr const char* kAttentionOpName = "MultiHeadAttention";

// The op's OrtCustomOp (static storage); `api` must outlive every session that uses it.
const OrtCustomOp* multi_head_attention_op(const OrtApi* api);

}  // namespace bitmaps::ort

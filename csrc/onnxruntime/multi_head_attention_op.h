// bitmaps::MultiHeadAttention and bitmaps::PackedMultiHeadAttention (ONNX domain "bitmaps", op
// version 1) as ONNX Runtime custom ops on
// the CPU execution provider: scaled dot-product attention over heads side by side in the last
// dimension, on the kernel of csrc/kernels/cpu_attention.h. `bitmaps export --target onnxruntime`
// puts one in every attention block of a binary model, fed by the Q, K and V BinaryLinear outputs;
// the file carries a model-local function of the same name (standard ops), so ONNX Runtime without
// this library runs it too. Inputs, attributes and output are in README.md beside this file.
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

constexpr const char* kAttentionOpName = "MultiHeadAttention";
// The same attention on one input holding Q, K and V side by side in its last dimension,
// [batch, length, 3 * num_heads * head_size] (self-attention: the output of one BinaryLinear with
// the Q, K and V weights stacked), and attention_bias; the kernel reads Q, K and V in place.
constexpr const char* kPackedAttentionOpName = "PackedMultiHeadAttention";

// The ops' OrtCustomOps (static storage); `api` must outlive every session that uses them.
const OrtCustomOp* multi_head_attention_op(const OrtApi* api);
const OrtCustomOp* packed_multi_head_attention_op(const OrtApi* api);

}  // namespace bitmaps::ort

// bitmaps::BinaryFeedForward (ONNX domain "bitmaps", op version 1) as an ONNX Runtime custom op on
// the CPU execution provider: a BinaryLinear whose output, after GELU, is the input of a second
// BinaryLinear (a BERT layer's intermediate and output dense), on the driver binary_ffn of
// csrc/kernels/cpu_binary_linear.h. `bitmaps export --target onnxruntime` puts one where a binary
// float32 model's two feed-forward BinaryLinear nodes binarize with fixed activation scales; the
// file carries a model-local function of the same name (the two BinaryLinear nodes), so ONNX
// Runtime without this library runs it too. Inputs, attributes and output are in README.md beside
// this file.
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

constexpr const char* kBinaryFfnOpName = "BinaryFeedForward";

// The op's OrtCustomOp (static storage); `api` must outlive every session that uses it.
const OrtCustomOp* binary_ffn_op(const OrtApi* api);

}  // namespace bitmaps::ort

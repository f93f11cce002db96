// bitmaps::SkipLayerNormalization (ONNX domain "bitmaps", op version 1) as an ONNX Runtime custom op
// on the CPU execution provider: LayerNorm(input + skip) over the last dimension, on the kernel of
// csrc/kernels/cpu_layer_norm.h. `bitmaps export --target onnxruntime` puts one where a binary
// float32 model has a residual Add followed by LayerNormalization; the file carries a model-local
// function of the same name (Add + LayerNormalization), so ONNX Runtime without this library runs
// it too. Inputs, attributes and output are in README.md beside this file.
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

constexpr const char* kSkipLayerNormOpName = "SkipLayerNormalization";

// The op's OrtCustomOp (static storage); `api` must outlive every session that uses it.
const OrtCustomOp* skip_layer_norm_op(const OrtApi* api);

}  // namespace bitmaps::ort

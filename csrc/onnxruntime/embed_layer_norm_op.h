// bitmaps::EmbedLayerNormalization (ONNX domain "bitmaps", op version 1) as an ONNX Runtime custom op
// on the CPU execution provider: three lookups in 4-bit embedding tables, summed, then
// LayerNorm over the last dimension, on the kernel of csrc/kernels/cpu_embed.h. `bitmaps export
// --target onnxruntime` puts one where a binary float32 model's int4 lookups
// (com.microsoft.GatherBlockQuantized) are added up and normalized (BERT's word, token-type and
// position embeddings); the file carries a model-local function of the same name (those
// GatherBlockQuantized, Add and LayerNormalization nodes), so ONNX Runtime without this library
// runs it too. Inputs, attributes and output are in README.md beside this file.
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

constexpr const char* kEmbedLayerNormOpName = "EmbedLayerNormalization";

// The op's OrtCustomOp (static storage); `api` must outlive every session that uses it.
const OrtCustomOp* embed_layer_norm_op(const OrtApi* api);

}  // namespace bitmaps::ort

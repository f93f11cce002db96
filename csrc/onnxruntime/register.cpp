// libbitmaps_ort.so's entry points. ONNX Runtime calls RegisterCustomOps when a program registers
// the library (Python: SessionOptions.register_custom_ops_library(path); C: the
// RegisterCustomOpsLibrary_V2 API; C++, C#, Java: their equivalents). It adds the "bitmaps" domain
// with bitmaps::BinaryLinear, bitmaps::MultiHeadAttention, bitmaps::PackedMultiHeadAttention,
// bitmaps::SkipLayerNormalization, bitmaps::EmbedLayerNormalization and
// bitmaps::BinaryFeedForward (v1) to those session options.
//
// A runtime too old for this library (its C API lacks version kOrtApiVersion) gets an error status
// that says so, made through the oldest API every runtime offers, instead of a crash.
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "onnxruntime/binary_ffn_op.h"
#include "onnxruntime/binary_linear_op.h"
#include "onnxruntime/embed_layer_norm_op.h"
#include "onnxruntime/multi_head_attention_op.h"
#include "onnxruntime/ort_common.h"
#include "onnxruntime/skip_layer_norm_op.h"

namespace {

// Domains must outlive every session created from the options they were added to; a process
// registers the library a handful of times, so they are kept (and never released) here.
std::mutex g_domains_mutex;
std::vector<OrtCustomOpDomain*> g_domains;

// ORT_EXPORT is empty on Linux; the library is built with -fvisibility=hidden.
#if defined(_WIN32)
#define BITMAPS_ORT_EXPORT __declspec(dllexport)
#else
#define BITMAPS_ORT_EXPORT __attribute__((visibility("default")))
#endif

#define BITMAPS_STRINGIFY2(x) #x
#define BITMAPS_STRINGIFY(x) BITMAPS_STRINGIFY2(x)

// Every op of the library (each output of any type: ONNX Runtime 1.22 and later).
std::vector<const OrtCustomOp*> ops(const OrtApi* api) {
  using namespace bitmaps::ort;
  return {binary_linear_op(api),    multi_head_attention_op(api),
          packed_multi_head_attention_op(api), skip_layer_norm_op(api),
          embed_layer_norm_op(api), binary_ffn_op(api)};
}

// The same ops for ONNX Runtime 1.21 and older (ort_common.h, with_output_type): float32 outputs,
// and a float16 copy of the two whose output follows a float16 X. Made once; ONNX Runtime keeps
// the pointers.
std::vector<const OrtCustomOp*> ops_with_fixed_outputs(const OrtApi* api) {
  using namespace bitmaps::ort;
  static const std::vector<OrtCustomOp> fixed = [api] {
    std::vector<OrtCustomOp> v;
    for (const OrtCustomOp* op : ops(api)) {
      v.push_back(with_output_type(*op, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
    }
    for (const OrtCustomOp* op : {binary_linear_op(api), binary_ffn_op(api)}) {
      v.push_back(with_output_type(*op, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16));
    }
    return v;
  }();
  std::vector<const OrtCustomOp*> out;
  for (const OrtCustomOp& op : fixed) out.push_back(&op);
  return out;
}

}  // namespace

extern "C" {

BITMAPS_ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                     const OrtApiBase* api_base) {
  using bitmaps::ort::kOrtApiVersion;
  // ONNX Runtime 1.x offers C API versions 1..x. Asking an older runtime for a newer version makes
  // it print a warning of its own, so its version string is read first.
  const char* version = api_base->GetVersionString();
  unsigned major = 0, minor = 0;
  const bool parsed = version != nullptr && std::sscanf(version, "%u.%u", &major, &minor) == 2;
  const bool too_old = parsed && major == 1 && minor < kOrtApiVersion;
  const OrtApi* api = too_old ? nullptr : api_base->GetApi(kOrtApiVersion);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    const std::string message =
        std::string("libbitmaps_ort.so needs ONNX Runtime C API version ") +
        std::to_string(kOrtApiVersion) + " (ONNX Runtime 1." + std::to_string(kOrtApiVersion) +
        " or later); this ONNX Runtime is " + api_base->GetVersionString() +
        ": upgrade onnxruntime, or run the model without the library (model-local function)";
    return oldest == nullptr ? nullptr : oldest->CreateStatus(ORT_FAIL, message.c_str());
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(bitmaps::ort::kDomain, &domain)) return status;
  const bool fixed_outputs =
      parsed && major == 1 && minor < bitmaps::ort::kOrtMinorWithDynamicOutputs;
  for (const OrtCustomOp* op : fixed_outputs ? ops_with_fixed_outputs(api) : ops(api)) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, op)) {
      api->ReleaseCustomOpDomain(domain);
      return status;
    }
  }
  if (OrtStatus* status = api->AddCustomOpDomain(options, domain)) {
    api->ReleaseCustomOpDomain(domain);
    return status;
  }
  std::lock_guard<std::mutex> lock(g_domains_mutex);
  g_domains.push_back(domain);
  return nullptr;
}

// For tools that inspect the library without ONNX Runtime (bitmaps ort-library): what it was built
// from and what it needs.
BITMAPS_ORT_EXPORT const char* BitmapsOrtLibraryInfo() {
  return "bitmaps::BinaryLinear v1, bitmaps::MultiHeadAttention v1, bitmaps::PackedMultiHeadAttention v1, "
         "bitmaps::SkipLayerNormalization v1, bitmaps::EmbedLayerNormalization v1, "
         "bitmaps::BinaryFeedForward v1; built with ONNX Runtime headers of C API " BITMAPS_STRINGIFY(
      ORT_API_VERSION) "; needs C API >= " BITMAPS_STRINGIFY(BITMAPS_ORT_API_VERSION);
}

BITMAPS_ORT_EXPORT unsigned BitmapsOrtRequiredApiVersion() { return bitmaps::ort::kOrtApiVersion; }

}  // extern "C"

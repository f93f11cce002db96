// What the two custom ops of libbitmaps_ort.so (bitmaps::BinaryLinear, bitmaps::MultiHeadAttention)
// share: the OrtApi, status helpers, tensor descriptions and messages, node names and attributes,
// the settings read from the environment (CPU path, threads) and the threads their work runs on.
// Header-only, C API only (see binary_linear_op.h).
#pragma once

#include <onnxruntime_c_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iomanip>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_features.h"

namespace bitmaps::ort {

// Set by each op's factory (binary_linear_op / multi_head_attention_op) from RegisterCustomOps.
inline const OrtApi* g_api = nullptr;

#define BITMAPS_ORT_RETURN_IF_ERROR(expr)  \
  do {                                     \
    if (OrtStatus* status_ = (expr)) {     \
      return status_;                      \
    }                                      \
  } while (0)

inline OrtStatus* error(OrtErrorCode code, const std::string& message) {
  return g_api->CreateStatus(code, message.c_str());
}

// Owns what the C API hands out and must be released.
struct ReleaseTypeInfo {
  void operator()(OrtTypeInfo* p) const { g_api->ReleaseTypeInfo(p); }
};
struct ReleaseShapeInfo {
  void operator()(OrtTensorTypeAndShapeInfo* p) const { g_api->ReleaseTensorTypeAndShapeInfo(p); }
};
using TypeInfo = std::unique_ptr<OrtTypeInfo, ReleaseTypeInfo>;
using ShapeInfo = std::unique_ptr<OrtTensorTypeAndShapeInfo, ReleaseShapeInfo>;

// Element type and dimensions of a tensor (-1: not known before run time).
struct TensorDesc {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
};

inline OrtStatus* describe(const OrtTensorTypeAndShapeInfo* info, TensorDesc* out) {
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorElementType(info, &out->type));
  size_t rank = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetDimensionsCount(info, &rank));
  out->dims.assign(rank, -1);
  if (rank > 0) BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetDimensions(info, out->dims.data(), rank));
  return nullptr;
}

inline OrtStatus* describe_value(const OrtValue* value, TensorDesc* out) {
  OrtTensorTypeAndShapeInfo* raw = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(value, &raw));
  const ShapeInfo info(raw);
  return describe(info.get(), out);
}

inline std::string type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    default: return "element type " + std::to_string(static_cast<int>(type));
  }
}

inline std::string number(double v) {
  std::ostringstream text;
  text << std::setprecision(9) << v;
  return text.str();
}

inline std::string shape_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    text += (i ? ", " : "") + (dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  }
  return text + "]";
}

// dims matches want, where a dimension of -1 (unknown) matches anything.
inline bool fits(const std::vector<int64_t>& dims, const std::vector<int64_t>& want) {
  if (dims.size() != want.size()) return false;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] >= 0 && dims[i] != want[i]) return false;
  }
  return true;
}

enum class Threads { kOrt, kStd, kSerial };

// "bitmaps::<op> node '<name>'", the start of every message about a node.
inline OrtStatus* node_name(const OrtKernelInfo* info, const char* op, std::string* out) {
  size_t size = 0;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetNodeName(info, nullptr, &size));
  std::string name(size, '\0');
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelInfo_GetNodeName(info, name.data(), &size));
  name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  *out = std::string("bitmaps::") + op + " node '" + name + "'";
  return nullptr;
}

// True where `status` is a success; a failure is released.
inline bool succeeded(OrtStatus* status) {
  if (status == nullptr) return true;
  g_api->ReleaseStatus(status);
  return false;
}

// What an attribute that a typed read did not find is: "" where the node has none of that name,
// else its type as the node has it ("an int", "a float", "a string", "a list of ints", "a list of
// floats", "a tensor"). The C API reads one type at a time and fails alike for a missing
// attribute and for one of another type, so each other type is tried in turn.
inline std::string attribute_type_found(const OrtKernelInfo* info, const char* name) {
  int64_t i = 0;
  float f = 0.0f;
  size_t size = 0;
  if (succeeded(g_api->KernelInfoGetAttribute_int64(info, name, &i))) return "an int";
  if (succeeded(g_api->KernelInfoGetAttribute_float(info, name, &f))) return "a float";
  if (succeeded(g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "a string";
  // ONNX Runtime 1.32 answers a list's size without checking its type (a list of floats has 0
  // ints), so a list is named by the read that finds elements.
  bool a_list = false;
  size = 0;
  if (succeeded(g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) {
    if (size > 0) return "a list of ints";
    a_list = true;
  }
  size = 0;
  if (succeeded(g_api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size))) {
    if (size > 0) return "a list of floats";
    a_list = true;
  }
  OrtAllocator* allocator = nullptr;
  OrtValue* tensor = nullptr;
  if (succeeded(g_api->GetAllocatorWithDefaultOptions(&allocator)) &&
      succeeded(g_api->KernelInfoGetAttribute_tensor(info, name, allocator, &tensor))) {
    g_api->ReleaseValue(tensor);
    return "a tensor";
  }
  return a_list ? "an empty list or another type" : "";
}

// An attribute of the node called `node` of the type `get` reads (`type`: "an int", "a float"):
// *out keeps its default when an optional one is absent; one of another type is an error (a
// default in its place would run the node as it was not written).
template <class T, class Get>
OrtStatus* attribute(const std::string& node, const OrtKernelInfo* info, const char* name,
                     const char* type, bool required, T* out, Get get) {
  T value{};
  if (OrtStatus* status = get(info, name, &value)) {
    g_api->ReleaseStatus(status);
    const std::string found = attribute_type_found(info, name);
    if (!found.empty()) {
      return error(ORT_INVALID_ARGUMENT, node + ": attribute " + name + " must be " + type +
                                             ", got " + found);
    }
    if (!required) return nullptr;
    return error(ORT_INVALID_ARGUMENT,
                 node + ": attribute " + name + " (" + type + ") is required");
  }
  *out = value;
  return nullptr;
}

inline OrtStatus* int_attribute(const std::string& node, const OrtKernelInfo* info,
                                const char* name, bool required, int64_t* out) {
  return attribute(node, info, name, "an int", required, out,
                   [](const OrtKernelInfo* i, const char* n, int64_t* v) {
                     return g_api->KernelInfoGetAttribute_int64(i, n, v);
                   });
}

inline OrtStatus* float_attribute(const std::string& node, const OrtKernelInfo* info,
                                  const char* name, bool required, float* out) {
  return attribute(node, info, name, "a float", required, out,
                   [](const OrtKernelInfo* i, const char* n, float* v) {
                     return g_api->KernelInfoGetAttribute_float(i, n, v);
                   });
}

// A LayerNorm op's `epsilon` attribute (optional; *out keeps its default): > 0 and finite.
inline OrtStatus* epsilon_attribute(const std::string& node, const OrtKernelInfo* info, float* out) {
  BITMAPS_ORT_RETURN_IF_ERROR(float_attribute(node, info, "epsilon", false, out));
  if (!(*out > 0.0f) || !std::isfinite(*out)) {
    return error(ORT_INVALID_ARGUMENT,
                 node + ": epsilon must be > 0 and finite, got " + number(*out));
  }
  return nullptr;
}

// The CPU path (BITMAPS_CPU_PATH, as in bitmaps._C, else the best this CPU has) and the threads
// (BITMAPS_ORT_THREADS: "ort", the session's intra-op pool, default; "std", threads of our own;
// "serial") of a node called `node`.
inline OrtStatus* read_run_settings(const std::string& node, cpu::CpuPath* path,
                                    Threads* threads) {
  const auto invalid = [&](const std::string& what) {
    return error(ORT_INVALID_ARGUMENT, node + ": " + what);
  };
  *path = cpu::best_cpu_path();
  const char* name = std::getenv("BITMAPS_CPU_PATH");
  if (name != nullptr && name[0] != '\0' && std::string(name) != "auto") {
    if (!cpu::parse_cpu_path(name, path)) {
      return invalid(std::string("BITMAPS_CPU_PATH: unknown CPU path '") + name +
                     "' (expected auto, avx512, avx2, neon or scalar)");
    }
    if (!cpu::cpu_path_supported(*path)) {
      return invalid(std::string("BITMAPS_CPU_PATH: CPU path '") + name + "' needs " +
                     cpu::cpu_path_requirements(*path) + ", which this CPU or this build lacks");
    }
  }
  const char* mode_env = std::getenv("BITMAPS_ORT_THREADS");
  const std::string mode = mode_env == nullptr ? "" : mode_env;
  if (mode.empty() || mode == "ort") {
    *threads = Threads::kOrt;
  } else if (mode == "std") {
    *threads = Threads::kStd;
  } else if (mode == "serial") {
    *threads = Threads::kSerial;
  } else {
    return invalid("BITMAPS_ORT_THREADS must be ort, std or serial, got '" + mode + "'");
  }
  return nullptr;
}

inline void ORT_API_CALL parallel_trampoline(void* body, size_t worker) {
  (*static_cast<const std::function<void(int64_t)>*>(body))(static_cast<int64_t>(worker));
}

// The threads an op's work runs on (cpu_binary_linear.h's Parallel).
inline cpu::Parallel make_parallel(Threads threads, OrtKernelContext* context) {
  cpu::Parallel p;
  if (threads == Threads::kSerial) return p;
  // Workers beyond the threads that really exist find no item left and return at once.
  p.max_workers = std::max(1u, std::thread::hardware_concurrency());
  if (threads == Threads::kOrt) {
    p.run = [context](int64_t workers, const std::function<void(int64_t)>& body) {
      OrtStatus* status = g_api->KernelContext_ParallelFor(
          context, parallel_trampoline, static_cast<size_t>(workers), 0,
          const_cast<void*>(static_cast<const void*>(&body)));
      if (status != nullptr) {  // no pool to run on: the caller's thread does it all
        g_api->ReleaseStatus(status);
        body(0);
      }
    };
  } else {
    p.run = [](int64_t workers, const std::function<void(int64_t)>& body) {
      std::vector<std::thread> pool;
      for (int64_t w = 1; w < workers; ++w) pool.emplace_back(body, w);
      body(0);
      for (auto& t : pool) t.join();
    };
  }
  return p;
}

inline OrtStatus* input(OrtKernelContext* context, size_t index, const OrtValue** value, TensorDesc* d) {
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, index, value));
  if (*value == nullptr) return nullptr;
  return describe_value(*value, d);
}

template <class T>
inline OrtStatus* data_of(const OrtValue* value, const T** out) {
  void* data = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  *out = static_cast<const T*>(data);
  return nullptr;
}

// Shape inference: input i's type, dimensions and symbolic dimension names (null where none).
inline OrtStatus* infer_input(OrtShapeInferContext* context, size_t i, TensorDesc* d,
                              std::vector<const char*>* symbols) {
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context (ONNX Runtime frees it)
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->ShapeInferContext_GetInputTypeShape(context, i, &info));
  BITMAPS_ORT_RETURN_IF_ERROR(describe(info, d));
  symbols->assign(d->dims.size(), nullptr);
  if (d->dims.empty()) return nullptr;
  return g_api->GetSymbolicDimensions(info, symbols->data(), symbols->size());
}

// Shape inference: output 0 of `type` and, unless dims is empty, those dimensions (symbolic names
// where given, null or "" for none).
inline OrtStatus* infer_output(OrtShapeInferContext* context, ONNXTensorElementDataType type,
                               const std::vector<int64_t>& dims,
                               std::vector<const char*> symbols) {
  OrtTensorTypeAndShapeInfo* raw = nullptr;
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->CreateTensorTypeAndShapeInfo(&raw));
  const ShapeInfo y(raw);
  BITMAPS_ORT_RETURN_IF_ERROR(g_api->SetTensorElementType(y.get(), type));
  if (!dims.empty()) {
    for (auto& name : symbols) name = name == nullptr ? "" : name;
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->SetDimensions(y.get(), dims.data(), dims.size()));
    BITMAPS_ORT_RETURN_IF_ERROR(g_api->SetSymbolicDimensions(y.get(), symbols.data(), symbols.size()));
  }
  return g_api->ShapeInferContext_SetOutputTypeShape(context, 0, y.get());
}

// Schema callbacks both ops share. Every input is declared "any type" and checked by the kernel, so
// a wrong dtype fails session creation with the op's message (naming the node) rather than a
// generic type error.
inline const char* ORT_API_CALL cpu_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
inline ONNXTensorElementDataType ORT_API_CALL any_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
inline size_t ORT_API_CALL one_output(const OrtCustomOp*) { return 1; }
inline OrtCustomOpInputOutputCharacteristic ORT_API_CALL required_output(const OrtCustomOp*,
                                                                         size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
inline OrtMemType ORT_API_CALL default_memory(const OrtCustomOp*, size_t) {
  return OrtMemTypeDefault;
}
inline int ORT_API_CALL version_one(const OrtCustomOp*) { return 1; }
// Inputs 0-2 required, input 3 optional (all three ops have four inputs, the last optional).
template <size_t N>
size_t ORT_API_CALL n_inputs(const OrtCustomOp*) {
  return N;
}
template <size_t N, bool LastOptional = true>
OrtCustomOpInputOutputCharacteristic ORT_API_CALL last_input_optional(const OrtCustomOp*,
                                                                      size_t index) {
  return LastOptional && index + 1 == N ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// ONNX Runtime 1.21 and older refuse an op whose required output has "any type" when more than
// one of its inputs has any type (custom_ops.cc: "There must be one (and only one) dynamic typed
// input to the custom op"); 1.22 dropped that rule, and takes the output's type from the op's shape
// inference. For those older runtimes register.cpp adds each op with its output's type fixed,
// once per type the output can have (the inputs keep any type, so that their kernel still checks
// them and names the node); ONNX Runtime picks the copy whose type matches the node.
constexpr unsigned kOrtMinorWithDynamicOutputs = 22;
template <ONNXTensorElementDataType T>
ONNXTensorElementDataType ORT_API_CALL fixed_type(const OrtCustomOp*, size_t) {
  return T;
}
inline OrtCustomOp with_output_type(OrtCustomOp op, ONNXTensorElementDataType type) {
  op.GetOutputType = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                         ? fixed_type<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16>
                         : fixed_type<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT>;
  return op;
}

// Compute and destroy callbacks of an op whose kernel state is K, computed by compute(K, context).
template <class K, OrtStatus* (*Compute)(const K&, OrtKernelContext*)>
OrtStatus* ORT_API_CALL compute_kernel(void* kernel, OrtKernelContext* context) {
  return Compute(*static_cast<const K*>(kernel), context);
}
template <class K>
void ORT_API_CALL destroy_kernel(void* kernel) {
  delete static_cast<K*>(kernel);
}

// The OrtCustomOp of a CPU op of version 1 with `Inputs` inputs (the last optional unless
// LastOptional is false) and one
// output, every type checked by its kernel. `version`: the C API version the library asks for.
template <size_t Inputs = 4, bool LastOptional = true>
OrtCustomOp cpu_custom_op(
    uint32_t version, const char*(ORT_API_CALL* name)(const OrtCustomOp*),
    OrtStatus*(ORT_API_CALL* create)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*,
                                     void**),
    OrtStatus*(ORT_API_CALL* compute)(void*, OrtKernelContext*),
    void(ORT_API_CALL* destroy)(void*),
    OrtStatus*(ORT_API_CALL* infer)(const OrtCustomOp*, OrtShapeInferContext*)) {
  OrtCustomOp o;
  std::memset(&o, 0, sizeof(o));  // ONNX Runtime reads only the fields of C API `version`
  o.version = version;
  o.GetName = name;
  o.GetExecutionProviderType = cpu_provider;
  o.GetInputType = any_type;
  o.GetInputTypeCount = n_inputs<Inputs>;
  o.GetOutputType = any_type;
  o.GetOutputTypeCount = one_output;
  o.GetInputCharacteristic = last_input_optional<Inputs, LastOptional>;
  o.GetOutputCharacteristic = required_output;
  o.GetInputMemoryType = default_memory;
  o.KernelDestroy = destroy;
  o.CreateKernelV2 = create;
  o.KernelComputeV2 = compute;
  o.InferOutputShapeFn = infer;
  o.GetStartVersion = version_one;
  o.GetEndVersion = version_one;
  return o;
}

}  // namespace bitmaps::ort

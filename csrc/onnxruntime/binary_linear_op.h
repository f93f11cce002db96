// bitmaps::BinaryLinear (ONNX domain "bitmaps", op version 1) as an ONNX Runtime custom op on the
// CPU execution provider: the op of DESIGN.md over the torch-free driver of
// csrc/kernels/cpu_binary_linear.h. Inputs, attributes and output are in README.md beside this file.
//
// Written against ONNX Runtime's C API only (onnxruntime_c_api.h), through the OrtApi that
// RegisterCustomOps receives, so nothing links libonnxruntime and one build loads into every ONNX
// Runtime that offers C API version kOrtApiVersion or later. No exception leaves this library:
// failures are OrtStatus values (CreateKernelV2 / KernelComputeV2).
#pragma once

#include <onnxruntime_c_api.h>

namespace bitmaps::ort {

// The C API version this library asks ONNX Runtime for (1.17: KernelContext_ParallelFor and the
// shape-inference callbacks). A build can raise it (tests simulate a too old runtime that way).
#ifndef BITMAPS_ORT_API_VERSION
#define BITMAPS_ORT_API_VERSION 17
#endif
constexpr uint32_t kOrtApiVersion = BITMAPS_ORT_API_VERSION;

constexpr const char* kDomain = "bitmaps";
constexpr const char* kOpName = "BinaryLinear";

// The op's OrtCustomOp (static storage); `api` must outlive every session that uses it.
const OrtCustomOp* binary_linear_op(const OrtApi* api);

}  // namespace bitmaps::ort

// bitmaps::BinaryLinear, version 1: the TensorRT plugin (IPluginV3) for the ONNX node of the same
// name that `bitmaps export` writes. It binarizes and packs X, then runs the XNOR-popcount GEMM
// with the scale/bias epilogue through the torch-free launchers of
// csrc/kernels/binary_linear_cuda.h.
//
//   inputs : X [..., K] float32/float16 (linear), W [N, ceil(K/32)] int32, w_scale [N] float32,
//            bias [N] float32 (optional)
//   output : Y [..., N], dtype of X
//   fields : in_features (int32), out_features (int32), act_threshold (float32), act_scale
//            (float32), act_unsigned (int32, optional, default 0: files without it are signed)
//
// Written against the IPluginV3 API as it stands, unchanged, from TensorRT 10.0 to 11.1
// (IPluginV3OneCore/Build/Runtime, IPluginCreatorV3One). Build against the headers of the TensorRT
// you run with: the C++ ABI of the interfaces is not promised across major versions.
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/binary_linear_cuda.h"

namespace bitmaps {
namespace plugin {

inline constexpr char const* kPluginName = "BinaryLinear";
inline constexpr char const* kPluginVersion = "1";
inline constexpr char const* kPluginNamespace = "bitmaps";

// The op's attributes; the plugin's only state besides the layer name.
struct BinaryLinearParams {
  int32_t in_features{0};
  int32_t out_features{0};
  float act_threshold{0.0F};
  float act_scale{0.0F};
  int32_t act_unsigned{0};  // 1: activations binarized to {0, 1} (x - act_threshold > 0)
};

class BinaryLinearPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit BinaryLinearPlugin(BinaryLinearParams const& params);
  BinaryLinearPlugin(BinaryLinearPlugin const& other);
  BinaryLinearPlugin& operator=(BinaryLinearPlugin const&) = delete;
  ~BinaryLinearPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(
      nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs,
                          int32_t nbOutputs) const noexcept override;
  char const* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  BinaryLinearParams const& params() const noexcept { return mParams; }

 private:
  void initFieldsToSerialize();
  // Resolves the GEMM path for the current device (cached); called outside enqueue, so that
  // enqueue stays free of synchronous CUDA calls (it may be captured into a CUDA graph).
  int32_t resolvePath() noexcept;
  int32_t resolvePathOrThrow();

  BinaryLinearParams mParams;
  bitmaps::cuda::GemmPath mPath{bitmaps::cuda::GemmPath::kAuto};
  bool mPathResolved{false};
  bool mHasBias{true};  // 4 inputs; set from nbInputs in configurePlugin / onShapeChange
  std::string mMetadata;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

class BinaryLinearPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  BinaryLinearPluginCreator();
  ~BinaryLinearPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mFieldNames;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Parses and validates the fields (as the ONNX parser or a deserialized engine passes them).
// Returns false with a message in *error for missing, mistyped or out-of-range fields.
bool parseBinaryLinearFields(nvinfer1::PluginFieldCollection const* fc, BinaryLinearParams* out,
                             std::string* error);

// Logs through the logger TensorRT handed over in setLoggerFinder (nothing before that).
void logPluginMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

}  // namespace plugin
}  // namespace bitmaps

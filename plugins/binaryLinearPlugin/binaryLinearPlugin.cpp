// The BinaryLinear TensorRT plugin: IPluginV3 capabilities and the creator. Every virtual entry
// point is noexcept and catches what it could throw: no exception crosses the library boundary.
#include "binaryLinearPlugin.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>

#include "kernels/bit_layout.h"

namespace bitmaps {
namespace plugin {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace {

constexpr int32_t kMinInputs = 3;  // X, W, w_scale; bias is the optional 4th
constexpr int32_t kMaxInputs = 4;

void logError(std::string const& message) noexcept {
  logPluginMessage(ILogger::Severity::kERROR, message);
}

// Called from catch blocks: building the message may itself throw (bad_alloc), which must not
// leave the noexcept entry point either.
void logException(char const* where, char const* what) noexcept {
  try {
    logError(std::string("bitmaps::BinaryLinear ") + where + ": " + what);
  } catch (...) {
  }
}

bool readInt(PluginField const& f, int64_t* value) {
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kINT32:
      *value = *static_cast<int32_t const*>(f.data);
      return true;
    case PluginFieldType::kINT64:
      *value = *static_cast<int64_t const*>(f.data);
      return true;
    case PluginFieldType::kINT16:
      *value = *static_cast<int16_t const*>(f.data);
      return true;
    case PluginFieldType::kINT8:
      *value = *static_cast<int8_t const*>(f.data);
      return true;
    default:
      return false;
  }
}

bool readFloat(PluginField const& f, double* value) {
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kFLOAT32:
      *value = *static_cast<float const*>(f.data);
      return true;
    case PluginFieldType::kFLOAT64:
      *value = *static_cast<double const*>(f.data);
      return true;
    default:
      return false;
  }
}

// Rows of X: the product of every dimension but the last.
int64_t leadingRows(nvinfer1::Dims const& dims) {
  int64_t rows = 1;
  for (int32_t i = 0; i + 1 < dims.nbDims; ++i) rows *= dims.d[i];
  return rows;
}

bool xTypeOk(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

}  // namespace

bool parseBinaryLinearFields(PluginFieldCollection const* fc, BinaryLinearParams* out,
                             std::string* error) {
  if (fc == nullptr) {
    *error = "no plugin fields given";
    return false;
  }
  bool haveIn = false;
  bool haveOut = false;
  // act_unsigned is optional: engines and ONNX files written before it existed are signed (0).
  BinaryLinearParams p;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name == nullptr) continue;
    std::string const name(f.name);
    int64_t iv = 0;
    double fv = 0.0;
    if (name == "in_features" || name == "out_features") {
      if (!readInt(f, &iv) || iv <= 0 || iv > 0x7FFFFFDF) {
        *error = name + " must be a positive int32";
        return false;
      }
      (name == "in_features" ? p.in_features : p.out_features) = static_cast<int32_t>(iv);
      (name == "in_features" ? haveIn : haveOut) = true;
    } else if (name == "act_threshold" || name == "act_scale") {
      if (!readFloat(f, &fv) || !std::isfinite(fv)) {
        *error = name + " must be a finite float32";
        return false;
      }
      (name == "act_threshold" ? p.act_threshold : p.act_scale) = static_cast<float>(fv);
    } else if (name == "act_unsigned") {
      if (!readInt(f, &iv) || (iv != 0 && iv != 1)) {
        *error = "act_unsigned must be 0 (activations in {-1, +1}) or 1 (activations in {0, 1})";
        return false;
      }
      p.act_unsigned = static_cast<int32_t>(iv);
    }
    // plugin_version / plugin_namespace and unknown attributes are not plugin state.
  }
  if (!haveIn || !haveOut) {
    *error = "fields in_features and out_features are required";
    return false;
  }
  if (p.act_scale < 0.0F) {
    *error = "act_scale must be >= 0 (0 means: per-row mean |x - act_threshold|)";
    return false;
  }
  *out = p;
  return true;
}

// --------------------------------------------------------------------------- BinaryLinearPlugin

BinaryLinearPlugin::BinaryLinearPlugin(BinaryLinearParams const& params) : mParams(params) {
  initFieldsToSerialize();
}

BinaryLinearPlugin::BinaryLinearPlugin(BinaryLinearPlugin const& other)
    : nvinfer1::IPluginV3(other),
      nvinfer1::IPluginV3OneCore(other),
      nvinfer1::IPluginV3OneBuild(other),
      nvinfer1::IPluginV3OneRuntime(other),
      mParams(other.mParams),
      mPath(other.mPath),
      mPathResolved(other.mPathResolved),
      mHasBias(other.mHasBias) {
  initFieldsToSerialize();  // point at this object's members, not the original's
}

void BinaryLinearPlugin::initFieldsToSerialize() {
  mFields.clear();
  mFields.emplace_back("in_features", &mParams.in_features, PluginFieldType::kINT32, 1);
  mFields.emplace_back("out_features", &mParams.out_features, PluginFieldType::kINT32, 1);
  mFields.emplace_back("act_threshold", &mParams.act_threshold, PluginFieldType::kFLOAT32, 1);
  mFields.emplace_back("act_scale", &mParams.act_scale, PluginFieldType::kFLOAT32, 1);
  mFields.emplace_back("act_unsigned", &mParams.act_unsigned, PluginFieldType::kINT32, 1);
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginCapability* BinaryLinearPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* BinaryLinearPlugin::clone() noexcept {
  try {
    return new BinaryLinearPlugin(*this);
  } catch (std::exception const& e) {
    logException("clone", e.what());
  } catch (...) {
    logException("clone", "unknown exception");
  }
  return nullptr;
}

char const* BinaryLinearPlugin::getPluginName() const noexcept { return kPluginName; }
char const* BinaryLinearPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BinaryLinearPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t BinaryLinearPlugin::getNbOutputs() const noexcept { return 1; }

int32_t BinaryLinearPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            DynamicPluginTensorDesc const* /*out*/,
                                            int32_t nbOutputs) noexcept {
  try {
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1) return -1;
    mHasBias = nbInputs == kMaxInputs;
    nvinfer1::Dims const& x = in[0].desc.dims;
    nvinfer1::Dims const& w = in[1].desc.dims;
    int64_t const kw = bitmaps::packed_width(mParams.in_features);
    if (x.nbDims < 1 || (x.d[x.nbDims - 1] >= 0 && x.d[x.nbDims - 1] != mParams.in_features)) {
      logError("bitmaps::BinaryLinear: X's last dimension does not match in_features=" +
               std::to_string(mParams.in_features));
      return -1;
    }
    if (w.nbDims != 2 || (w.d[0] >= 0 && w.d[0] != mParams.out_features) ||
        (w.d[1] >= 0 && w.d[1] != kw)) {
      logError("bitmaps::BinaryLinear: W must be int32 [out_features=" +
               std::to_string(mParams.out_features) + ", " + std::to_string(kw) + "]");
      return -1;
    }
    return resolvePath();
  } catch (std::exception const& e) {
    logException("configurePlugin", e.what());
  } catch (...) {
    logException("configurePlugin", "unknown exception");
  }
  return -1;
}

bool BinaryLinearPlugin::supportsFormatCombination(int32_t pos,
                                                   DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1) return false;
  if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == 0) return xTypeOk(d.type);
  if (pos == 1) return d.type == DataType::kINT32;
  if (pos < nbInputs) return d.type == DataType::kFLOAT;  // w_scale, bias
  return d.type == inOut[0].desc.type;                    // Y: dtype of X
}

int32_t BinaryLinearPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                               DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs < kMinInputs || nbInputs > kMaxInputs) return -1;
  if (!xTypeOk(inputTypes[0])) return -1;
  outputTypes[0] = inputTypes[0];
  return 0;
}

int32_t BinaryLinearPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                            DimsExprs const* /*shapeInputs*/,
                                            int32_t /*nbShapeInputs*/, DimsExprs* outputs,
                                            int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& exprBuilder) noexcept {
  try {
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1) return -1;
    DimsExprs const& x = inputs[0];
    if (x.nbDims < 1) return -1;
    nvinfer1::IDimensionExpr const* k = x.d[x.nbDims - 1];
    if (k->isConstant() && k->getConstantValue() != mParams.in_features) {
      logError("bitmaps::BinaryLinear: X has " + std::to_string(k->getConstantValue()) +
               " features, the node says in_features=" + std::to_string(mParams.in_features));
      return -1;
    }
    outputs[0].nbDims = x.nbDims;  // Y = X[..., :-1] + [out_features]
    for (int32_t i = 0; i + 1 < x.nbDims; ++i) outputs[0].d[i] = x.d[i];
    outputs[0].d[x.nbDims - 1] = exprBuilder.constant(mParams.out_features);
    return 0;
  } catch (std::exception const& e) {
    logException("getOutputShapes", e.what());
  } catch (...) {
    logException("getOutputShapes", "unknown exception");
  }
  return -1;
}

size_t BinaryLinearPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                            DynamicPluginTensorDesc const* /*outputs*/,
                                            int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs < 1) return 0;
  // Enough for the largest X of the profile: packed rows + per-row scales.
  return bitmaps::cuda::binary_linear_workspace_size(leadingRows(inputs[0].max),
                                                     mParams.in_features);
}

char const* BinaryLinearPlugin::getMetadataString() noexcept {
  try {
    std::ostringstream s;
    s << "in_features=" << mParams.in_features << " out_features=" << mParams.out_features
      << " act_threshold=" << mParams.act_threshold << " act_scale=" << mParams.act_scale
      << " act_unsigned=" << mParams.act_unsigned;
    mMetadata = s.str();
    return mMetadata.c_str();
  } catch (std::exception const& e) {
    logException("getMetadataString", e.what());
  } catch (...) {
    logException("getMetadataString", "unknown exception");
  }
  return nullptr;
}

int32_t BinaryLinearPlugin::resolvePath() noexcept {
  try {
    return resolvePathOrThrow();
  } catch (std::exception const& e) {
    logException("resolvePath", e.what());
  } catch (...) {
    logException("resolvePath", "unknown exception");
  }
  return -1;
}

int32_t BinaryLinearPlugin::resolvePathOrThrow() {
  if (mPathResolved) return 0;
  namespace bc = bitmaps::cuda;
  bc::GemmPath requested = bc::GemmPath::kAuto;
  if (!bc::gemm_path_from_env(&requested)) {
    logError("bitmaps::BinaryLinear: BITMAPS_CUDA_GEMM_PATH must be auto, popc, mma or wgmma");
    return -1;
  }
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  bc::GemmPath resolved = bc::GemmPath::kPopc;
  if (err == cudaSuccess) err = bc::resolve_gemm_path(device, requested, &resolved);
  if (err != cudaSuccess) {
    logError(std::string("bitmaps::BinaryLinear: no usable GEMM path '") +
             bc::gemm_path_name(requested) + "' on device " + std::to_string(device) + ": " +
             cudaGetErrorString(err));
    return -1;
  }
  mPath = resolved;
  mPathResolved = true;
  return 0;
}

int32_t BinaryLinearPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                          PluginTensorDesc const* /*out*/,
                                          int32_t nbOutputs) noexcept {
  try {
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1) return -1;
    mHasBias = nbInputs == kMaxInputs;
    nvinfer1::Dims const& x = in[0].dims;
    if (x.nbDims < 1 || x.d[x.nbDims - 1] != mParams.in_features) {
      logError("bitmaps::BinaryLinear: X's last dimension does not match in_features=" +
               std::to_string(mParams.in_features));
      return -1;
    }
    return resolvePath();
  } catch (std::exception const& e) {
    logException("onShapeChange", e.what());
  } catch (...) {
    logException("onShapeChange", "unknown exception");
  }
  return -1;
}

int32_t BinaryLinearPlugin::enqueue(PluginTensorDesc const* inputDesc,
                                    PluginTensorDesc const* /*outputDesc*/,
                                    void const* const* inputs, void* const* outputs,
                                    void* workspace, cudaStream_t stream) noexcept {
  try {
    namespace bc = bitmaps::cuda;
    nvinfer1::Dims const& x = inputDesc[0].dims;
    int64_t const m = leadingRows(x);
    bc::DType const dtype =
        inputDesc[0].type == DataType::kHALF ? bc::DType::kFloat16 : bc::DType::kFloat32;
    // The bias is the optional 4th input (mHasBias comes from the input count TensorRT reported).
    float const* bias = nullptr;
    if (mHasBias) bias = static_cast<float const*>(inputs[3]);
    cudaError_t const err = bc::binary_linear(
        inputs[0], dtype, static_cast<int32_t const*>(inputs[1]),
        static_cast<float const*>(inputs[2]), bias, m, mParams.out_features, mParams.in_features,
        mParams.act_threshold, mParams.act_scale, mParams.act_unsigned != 0, outputs[0], workspace,
        bc::binary_linear_workspace_size(m, mParams.in_features), mPath, stream);
    if (err != cudaSuccess) {
      logError(std::string("bitmaps::BinaryLinear enqueue: ") + cudaGetErrorString(err));
      return -1;
    }
    return 0;
  } catch (std::exception const& e) {
    logException("enqueue", e.what());
  } catch (...) {
    logException("enqueue", "unknown exception");
  }
  return -1;
}

nvinfer1::IPluginV3* BinaryLinearPlugin::attachToContext(
    nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources: the workspace comes from TensorRT
}

PluginFieldCollection const* BinaryLinearPlugin::getFieldsToSerialize() noexcept {
  return &mFieldCollection;
}

// --------------------------------------------------------------------------- creator

BinaryLinearPluginCreator::BinaryLinearPluginCreator() {
  mFieldNames.emplace_back("in_features", nullptr, PluginFieldType::kINT32, 1);
  mFieldNames.emplace_back("out_features", nullptr, PluginFieldType::kINT32, 1);
  mFieldNames.emplace_back("act_threshold", nullptr, PluginFieldType::kFLOAT32, 1);
  mFieldNames.emplace_back("act_scale", nullptr, PluginFieldType::kFLOAT32, 1);
  mFieldNames.emplace_back("act_unsigned", nullptr, PluginFieldType::kINT32, 1);
  mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
  mFieldCollection.fields = mFieldNames.data();
}

char const* BinaryLinearPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* BinaryLinearPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BinaryLinearPluginCreator::getPluginNamespace() const noexcept {
  return kPluginNamespace;
}

PluginFieldCollection const* BinaryLinearPluginCreator::getFieldNames() noexcept {
  return &mFieldCollection;
}

nvinfer1::IPluginV3* BinaryLinearPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    BinaryLinearParams params;
    std::string error;
    if (!parseBinaryLinearFields(fc, &params, &error)) {
      logError(std::string("bitmaps::BinaryLinear '") + (name ? name : "") + "': " + error);
      return nullptr;
    }
    return new BinaryLinearPlugin(params);
  } catch (std::exception const& e) {
    logException("createPlugin", e.what());
  } catch (...) {
    logException("createPlugin", "unknown exception");
  }
  return nullptr;
}

}  // namespace plugin
}  // namespace bitmaps

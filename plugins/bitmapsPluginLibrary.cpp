// Entry points of libbitmaps_trt_plugin.so, the two symbols TensorRT looks up when it loads a
// plugin library dynamically (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins):
//   getCreators     - the plugin creators this library holds (here: bitmaps::BinaryLinear v1)
//   setLoggerFinder - how the library finds TensorRT's logger
// Everything else in the library is hidden (-fvisibility=hidden).
#include <NvInferRuntime.h>

#include <mutex>

#include "binaryLinearPlugin/binaryLinearPlugin.h"

// TENSORRTAPI is empty outside TensorRT's own build, so the export is spelled out here.
#define BITMAPS_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

namespace bitmaps {
namespace plugin {
namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

}  // namespace

void logPluginMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
  try {
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr) return;
    nvinfer1::ILogger* logger = gLoggerFinder->findLogger();
    if (logger != nullptr) logger->log(severity, message.c_str());
  } catch (...) {  // logging must never throw into TensorRT
  }
}

}  // namespace plugin
}  // namespace bitmaps

// Both are called by TensorRT through a C interface: nothing may throw out of them.
BITMAPS_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  try {
    std::lock_guard<std::mutex> lock(bitmaps::plugin::gLoggerMutex);
    bitmaps::plugin::gLoggerFinder = finder;
  } catch (...) {  // a failed lock leaves the previous logger
  }
}

BITMAPS_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) noexcept {
  try {
    static bitmaps::plugin::BinaryLinearPluginCreator sBinaryLinearCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sBinaryLinearCreator};
    nbCreators = 1;
    return sCreators;
  } catch (...) {  // the creator's field list could not be allocated
  }
  nbCreators = 0;
  return nullptr;
}

// Host-only smoke test of libbitmaps_trt_plugin.so, run by tests/test_tensorrt_plugin.py where
// TensorRT headers exist: dlopen the library as TensorRT would, find the creator through
// getCreators, and exercise everything that needs neither a GPU nor libnvinfer (fields,
// serialization round trip, format and type rules, workspace size, clone, bad fields, and that
// onShapeChange and friends return an error instead of letting an exception out, even when every
// allocation fails). Prints one line per check; exits non-zero if any failed.
// Build with -rdynamic: the replaced operator new below must also serve the dlopened plugin.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

using namespace nvinfer1;

// While set, every operator new throws std::bad_alloc, in this program and in the plugin: an
// entry point that builds a message without catching would call std::terminate (noexcept).
bool gFailAllocations = false;
long gAllocations = 0;  // proves the plugin's allocations come here (else the test is vacuous)

void* operator new(std::size_t size) {
  ++gAllocations;
  if (gFailAllocations) throw std::bad_alloc();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

int gFailures = 0;

void check(bool ok, char const* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAIL", what);
  if (!ok) ++gFailures;
}

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims) {
  DynamicPluginTensorDesc d{};
  d.desc.type = type;
  d.desc.format = TensorFormat::kLINEAR;
  d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = dims[i];
  d.min = d.opt = d.max = d.desc.dims;
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libbitmaps_trt_plugin.so\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  check(getCreators != nullptr, "getCreators is exported");
  check(dlsym(lib, "setLoggerFinder") != nullptr, "setLoggerFinder is exported");
  if (getCreators == nullptr) return 1;

  int32_t n = 0;
  IPluginCreatorInterface* const* creators = getCreators(n);
  check(n == 1 && creators != nullptr, "one creator");
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  check(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
        "creator is an IPluginCreatorV3One");
  check(std::strcmp(creator->getPluginName(), "BinaryLinear") == 0, "name BinaryLinear");
  check(std::strcmp(creator->getPluginVersion(), "1") == 0, "version 1");
  check(std::strcmp(creator->getPluginNamespace(), "bitmaps") == 0, "namespace bitmaps");
  PluginFieldCollection const* names = creator->getFieldNames();
  check(names->nbFields == 5 && std::strcmp(names->fields[0].name, "in_features") == 0 &&
            std::strcmp(names->fields[3].name, "act_scale") == 0 &&
            std::strcmp(names->fields[4].name, "act_unsigned") == 0,
        "fields in_features, out_features, act_threshold, act_scale, act_unsigned");

  int32_t inFeatures = 100;
  int32_t outFeatures = 33;
  float threshold = 0.25F;
  float scale = 0.0F;
  std::vector<PluginField> fields{
      PluginField("in_features", &inFeatures, PluginFieldType::kINT32, 1),
      PluginField("out_features", &outFeatures, PluginFieldType::kINT32, 1),
      PluginField("act_threshold", &threshold, PluginFieldType::kFLOAT32, 1),
      PluginField("act_scale", &scale, PluginFieldType::kFLOAT32, 1)};
  PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
  long const allocationsBefore = gAllocations;
  IPluginV3* plugin = creator->createPlugin("layer", &fc, TensorRTPhase::kBUILD);
  check(plugin != nullptr, "createPlugin with the four fields of an engine without act_unsigned");
  check(gAllocations > allocationsBefore, "the plugin allocates through this program's new");
  if (plugin == nullptr) return 1;

  auto* core =
      static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build =
      static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(
      plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  check(core && build && runtime, "core, build and runtime capabilities");
  check(std::strcmp(core->getPluginNamespace(), "bitmaps") == 0, "plugin namespace bitmaps");
  check(build->getNbOutputs() == 1, "one output");

  // Serialization round trip: the fields TensorRT stores are what createPlugin reads back.
  PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
  IPluginV3* again = creator->createPlugin("layer", ser, TensorRTPhase::kRUNTIME);
  check(again != nullptr, "createPlugin from getFieldsToSerialize (deserialization)");
  if (again != nullptr) {
    auto* rt2 = static_cast<IPluginV3OneRuntime*>(
        again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser2 = rt2->getFieldsToSerialize();
    bool same = ser2->nbFields == ser->nbFields;
    for (int32_t i = 0; same && i < ser->nbFields; ++i) {
      same = std::strcmp(ser->fields[i].name, ser2->fields[i].name) == 0 &&
             std::memcmp(ser->fields[i].data, ser2->fields[i].data, 4) == 0;
    }
    check(same, "serialized fields survive the round trip");
    delete again;
  }
  check(ser->nbFields == 5 && std::strcmp(ser->fields[4].name, "act_unsigned") == 0 &&
            *static_cast<int32_t const*>(ser->fields[4].data) == 0,
        "act_unsigned serialized, 0 when the node had none");

  int32_t unsignedAct = 1;
  std::vector<PluginField> fields5 = fields;
  fields5.emplace_back("act_unsigned", &unsignedAct, PluginFieldType::kINT32, 1);
  PluginFieldCollection fc5{static_cast<int32_t>(fields5.size()), fields5.data()};
  IPluginV3* twoSet = creator->createPlugin("relu_input", &fc5, TensorRTPhase::kBUILD);
  check(twoSet != nullptr, "createPlugin with act_unsigned=1");
  if (twoSet != nullptr) {
    auto* rt = static_cast<IPluginV3OneRuntime*>(
        twoSet->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* s5 = rt->getFieldsToSerialize();
    IPluginV3* back = creator->createPlugin("relu_input", s5, TensorRTPhase::kRUNTIME);
    auto* rtBack = back == nullptr ? nullptr
                                   : static_cast<IPluginV3OneRuntime*>(back->getCapabilityInterface(
                                         PluginCapabilityType::kRUNTIME));
    check(rtBack != nullptr &&
              *static_cast<int32_t const*>(rtBack->getFieldsToSerialize()->fields[4].data) == 1,
          "act_unsigned=1 survives the round trip");
    delete back;
    delete twoSet;
  }
  int32_t two = 2;
  fields5.back() = PluginField("act_unsigned", &two, PluginFieldType::kINT32, 1);
  check(creator->createPlugin("bad", &fc5, TensorRTPhase::kBUILD) == nullptr,
        "act_unsigned=2 rejected");

  // Formats: X fp32/fp16, W int32, w_scale/bias fp32, Y = dtype of X.
  std::vector<DynamicPluginTensorDesc> io{
      desc(DataType::kHALF, {2, 7, 100}), desc(DataType::kINT32, {33, 4}),
      desc(DataType::kFLOAT, {33}), desc(DataType::kFLOAT, {33}),
      desc(DataType::kHALF, {2, 7, 33})};
  bool all = true;
  for (int32_t pos = 0; pos < 5; ++pos)
    all = all && build->supportsFormatCombination(pos, io.data(), 4, 1);
  check(all, "fp16 X/Y, int32 W, fp32 w_scale/bias accepted");
  io[4].desc.type = DataType::kFLOAT;
  check(!build->supportsFormatCombination(4, io.data(), 4, 1), "Y must have X's dtype");
  io[0].desc.type = DataType::kINT8;
  check(!build->supportsFormatCombination(0, io.data(), 4, 1), "int8 X rejected");
  io[0].desc.type = DataType::kFLOAT;
  io[1].desc.type = DataType::kFLOAT;
  check(!build->supportsFormatCombination(1, io.data(), 4, 1), "float W rejected");
  io[1].desc.type = DataType::kINT32;
  io[0].desc.format = TensorFormat::kHWC8;
  check(!build->supportsFormatCombination(0, io.data(), 4, 1), "non-linear format rejected");

  DataType in[4] = {DataType::kHALF, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
  DataType out[1] = {DataType::kFLOAT};
  check(build->getOutputDataTypes(out, 1, in, 4) == 0 && out[0] == DataType::kHALF,
        "output dtype follows X (fp16)");
  in[0] = DataType::kFLOAT;
  check(build->getOutputDataTypes(out, 1, in, 3) == 0 && out[0] == DataType::kFLOAT,
        "output dtype follows X (fp32, no bias)");

  // Workspace for the profile's largest X: 2 * 7 rows of 4 packed words + 14 row scales.
  std::vector<DynamicPluginTensorDesc> ins{desc(DataType::kHALF, {2, 7, 100})};
  ins[0].max.d[0] = 8;
  ins[0].max.d[1] = 128;
  size_t const ws = build->getWorkspaceSize(ins.data(), 1, nullptr, 1);
  size_t const rows = 8 * 128;
  check(ws >= rows * 4 * sizeof(int32_t) + rows * sizeof(float) && ws < rows * 64,
        "workspace covers packed rows + scales of the max shape");

  IPluginV3* copy = plugin->clone();
  check(copy != nullptr && copy != plugin, "clone");
  delete copy;

  // onShapeChange: a wrong K is an error code; a right one resolves the GEMM path (0 on a GPU,
  // an error code on a machine without one). Neither may throw.
  std::vector<PluginTensorDesc> rt{io[0].desc, io[1].desc, io[2].desc, io[3].desc};
  PluginTensorDesc outDesc = io[4].desc;
  rt[0].dims.d[2] = 99;
  check(runtime->onShapeChange(rt.data(), 4, &outDesc, 1) == -1, "onShapeChange: wrong K is -1");
  rt[0].dims.d[2] = 100;
  int32_t const rc = runtime->onShapeChange(rt.data(), 4, &outDesc, 1);
  check(rc == 0 || rc == -1, "onShapeChange: right K returns a status (GPU path or no GPU)");
  check(runtime->onShapeChange(rt.data(), 2, &outDesc, 1) == -1, "onShapeChange: 2 inputs is -1");

  // With every allocation failing, building the error message throws std::bad_alloc inside the
  // plugin: it must come back as -1 / nullptr, not as std::terminate.
  rt[0].dims.d[2] = 99;
  std::vector<DynamicPluginTensorDesc> badIo = io;
  badIo[0].desc.dims.d[2] = 99;
  gFailAllocations = true;
  int32_t const shapeRc = runtime->onShapeChange(rt.data(), 4, &outDesc, 1);
  int32_t const configRc = build->configurePlugin(badIo.data(), 4, &badIo[4], 1);
  char const* meta = build->getMetadataString();
  IPluginV3* noCopy = plugin->clone();
  gFailAllocations = false;
  check(shapeRc == -1, "onShapeChange with failing allocations is -1, no exception");
  check(configRc == -1, "configurePlugin with failing allocations is -1, no exception");
  // getMetadataString's stream may swallow bad_alloc itself (badbit); returning at all is the test.
  std::printf("ok: getMetadataString with failing allocations returned (%s)\n",
              meta == nullptr ? "null" : "a string");
  check(noCopy == nullptr, "clone with failing allocations is null, no exception");
  delete noCopy;
  delete plugin;

  // Bad fields come back as nullptr, never as an exception.
  int32_t zero = 0;
  fields[0] = PluginField("in_features", &zero, PluginFieldType::kINT32, 1);
  check(creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD) == nullptr,
        "in_features=0 rejected");
  float negative = -1.0F;
  fields[0] = PluginField("in_features", &inFeatures, PluginFieldType::kINT32, 1);
  fields[3] = PluginField("act_scale", &negative, PluginFieldType::kFLOAT32, 1);
  check(creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD) == nullptr,
        "act_scale<0 rejected");
  PluginFieldCollection missing{1, fields.data()};
  check(creator->createPlugin("bad", &missing, TensorRTPhase::kBUILD) == nullptr,
        "missing out_features rejected");

  std::printf("%d failed\n", gFailures);
  return gFailures == 0 ? 0 : 1;
}

// A C++ client of an exported bitmaps model: ONNX Runtime's C++ API, libbitmaps_ort.so registered
// (or not: ONNX Runtime then runs the model-local functions). No Python, no torch. Tested on x86
// against the onnxruntime wheel's libonnxruntime and on aarch64 under qemu against Debian's
// (tests/test_cxx_client.py); the README's "In C++" points here.
//
//   run_model --ort libonnxruntime.so [--ops libbitmaps_ort.so] --model student.onnx
//             --ids ids.bin --batch B --seq S --out out.bin [--threads N]
//
// ids.bin: B x S token ids (int64, little-endian, row-major); attention_mask is all ones and
// token_type_ids (where the model has it) all zeros. out.bin: the first output as float32 (a
// float16 output converted); its shape is printed as one JSON line. Any error: one line on
// stderr, exit 2, and no out.bin.
//
// Build (header-only against ONNX Runtime's C/C++ headers; nothing links libonnxruntime, which is
// opened at run time, so one binary runs with any ONNX Runtime from 1.17 on):
//   g++ -std=c++17 -O2 -I<onnxruntime headers> run_model.cpp -ldl -o run_model
#define ORT_API_MANUAL_INIT
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace {

struct Options {
  std::string ort, ops, model, ids, out;
  int64_t batch = 0, seq = 0;
  int threads = 0;
};

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "run_model: " << message << "\n";
  std::exit(2);
}

int64_t positive(const std::string& flag, const std::string& value) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || n <= 0) fail(flag + " must be a positive integer, got '" + value + "'");
  return n;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) fail(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--ort") o.ort = value;
    else if (flag == "--ops") o.ops = value;
    else if (flag == "--model") o.model = value;
    else if (flag == "--ids") o.ids = value;
    else if (flag == "--out") o.out = value;
    else if (flag == "--batch") o.batch = positive(flag, value);
    else if (flag == "--seq") o.seq = positive(flag, value);
    else if (flag == "--threads") o.threads = static_cast<int>(positive(flag, value));
    else fail("unknown option " + flag);
  }
  if (o.ort.empty() || o.model.empty() || o.ids.empty() || o.out.empty() || o.batch == 0 ||
      o.seq == 0) {
    fail("usage: run_model --ort LIB --model M.onnx --ids IDS.bin --batch B --seq S --out OUT.bin "
         "[--ops libbitmaps_ort.so] [--threads N]");
  }
  return o;
}

// The oldest ONNX Runtime this client runs with: 1.17 (C API 17, which libbitmaps_ort.so needs;
// every call below exists from API 13 on).
constexpr unsigned kOldestApi = 17;

// ONNX Runtime's API table from the library at `path` (its OrtGetApiBase): the headers' API
// version, or the runtime's own where it is older (1.x offers API versions 1..x, and a table of an
// older version holds the same functions at the same places). `version`: the runtime's.
const OrtApi* load_runtime(const std::string& path, std::string& version) {
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) fail("cannot load ONNX Runtime from " + path + ": " + dlerror());
  using GetApiBase = const OrtApiBase* (*)();
  auto get = reinterpret_cast<GetApiBase>(dlsym(lib, "OrtGetApiBase"));
  if (get == nullptr) fail(path + " is not ONNX Runtime (no OrtGetApiBase)");
  const OrtApiBase* base = get();
  version = base->GetVersionString();
  unsigned major = 0, minor = 0;
  if (std::sscanf(version.c_str(), "%u.%u", &major, &minor) != 2 || major != 1) {
    fail("cannot read ONNX Runtime's version '" + version + "' at " + path);
  }
  if (minor < kOldestApi) {
    fail("ONNX Runtime " + version + " at " + path + " is older than 1." +
         std::to_string(kOldestApi) + ", the oldest this client and libbitmaps_ort.so run with");
  }
  const OrtApi* api = base->GetApi(std::min<unsigned>(ORT_API_VERSION, minor));
  if (api == nullptr) fail("ONNX Runtime " + version + " at " + path + " offers no C API table");
  return api;
}

std::vector<int64_t> read_ids(const Options& o) {
  std::ifstream f(o.ids, std::ios::binary);
  if (!f) fail("cannot read " + o.ids);
  std::vector<int64_t> ids(static_cast<std::size_t>(o.batch * o.seq));
  f.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 8));
  if (f.gcount() != static_cast<std::streamsize>(ids.size() * 8) || f.peek() != EOF) {
    fail(o.ids + " does not hold " + std::to_string(o.batch) + " x " + std::to_string(o.seq) +
         " int64 ids");
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::string version;
  Ort::InitApi(load_runtime(o.ort, version));
  std::vector<int64_t> ids = read_ids(o);
  std::vector<int64_t> ones(ids.size(), 1), zeros(ids.size(), 0);
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "bitmaps");
    Ort::SessionOptions so;
    if (o.threads > 0) so.SetIntraOpNumThreads(o.threads);
    if (!o.ops.empty()) so.RegisterCustomOpsLibrary(o.ops.c_str());
    Ort::Session session(env, o.model.c_str(), so);

    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const int64_t shape[2] = {o.batch, o.seq};
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> names;
    std::vector<Ort::Value> inputs;
    for (std::size_t i = 0; i < session.GetInputCount(); ++i) {
      names.push_back(session.GetInputNameAllocated(i, allocator).get());
      std::vector<int64_t>* data = nullptr;
      if (names.back() == "input_ids") data = &ids;
      else if (names.back() == "attention_mask") data = &ones;
      else if (names.back() == "token_type_ids") data = &zeros;
      else fail(o.model + " has an input this client does not feed: " + names.back());
      inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, data->data(), data->size(), shape, 2));
    }
    const std::string output = session.GetOutputNameAllocated(0, allocator).get();
    std::vector<const char*> input_names;
    for (const auto& n : names) input_names.push_back(n.c_str());
    const char* output_names[1] = {output.c_str()};
    std::vector<Ort::Value> y = session.Run(Ort::RunOptions{nullptr}, input_names.data(),
                                            inputs.data(), inputs.size(), output_names, 1);

    const Ort::TensorTypeAndShapeInfo info = y[0].GetTensorTypeAndShapeInfo();
    const std::size_t count = info.GetElementCount();
    std::vector<float> values(count);
    if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      std::copy_n(y[0].GetTensorData<float>(), count, values.data());
    } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
      const auto* half = y[0].GetTensorData<Ort::Float16_t>();
      for (std::size_t i = 0; i < count; ++i) values[i] = half[i].ToFloat();
    } else {
      fail("output " + output + " is neither float32 nor float16");
    }
    const std::vector<int64_t> dims = info.GetShape();
    const std::string partial = o.out + ".partial";  // renamed once whole: no half-written output
    {
      std::ofstream f(partial, std::ios::binary);
      f.write(reinterpret_cast<const char*>(values.data()),
              static_cast<std::streamsize>(count * sizeof(float)));
      if (!f) {
        std::remove(partial.c_str());
        fail("cannot write " + o.out);
      }
    }
    if (std::rename(partial.c_str(), o.out.c_str()) != 0) fail("cannot write " + o.out);
    std::ostringstream line;
    line << "{\"output\": \"" << output << "\", \"shape\": [";
    for (std::size_t i = 0; i < dims.size(); ++i) line << (i ? ", " : "") << dims[i];
    line << "], \"runtime\": \"" << version << "\"}";
    std::cout << line.str() << "\n";
  } catch (const Ort::Exception& e) {
    std::string message = e.what();
    for (char& c : message) c = c == '\n' ? ' ' : c;
    fail(message);
  }
  return 0;
}

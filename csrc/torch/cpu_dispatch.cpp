// The CPU path selection state of cpu_dispatch.h and the native call counters.
#include "cpu_dispatch.h"

#include <atomic>
#include <cstdlib>

namespace bitmaps {
namespace {

using cpu::CpuPath;

constexpr int kNoOverride = -1;
constexpr int kAuto = cpu::kNumCpuPaths;  // "auto" as an explicit override

std::atomic<int> g_override{kNoOverride};
std::atomic<int64_t> g_calls[kNumCpuOps][cpu::kNumCpuPaths];
std::atomic<int> g_last_workers{0};

const char* const kOpNames[kNumCpuOps] = {"pack_signs", "xnor_gemm", "binary_linear"};

// "auto, neon, avx512, avx2, scalar": every name the parser knows, whatever this build supports.
std::string known_names() {
  std::string names = "auto";
  for (int i = cpu::kNumCpuPaths - 1; i >= 0; --i) {
    names += std::string(", ") + cpu::cpu_path_name(static_cast<CpuPath>(i));
  }
  return names;
}

std::string supported_list() {
  std::string names;
  for (const auto& name : supported_cpu_paths()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

// Parses "auto" or a path name into kAuto / a path index, checking that the CPU supports it.
bool parse_choice(const std::string& name, const char* source, int* choice, std::string* error) {
  if (name == "auto") {
    *choice = kAuto;
    return true;
  }
  CpuPath path;
  if (!cpu::parse_cpu_path(name, &path)) {
    *error = std::string(source) + ": unknown CPU path '" + name + "' (expected one of " +
             known_names() + ")";
    return false;
  }
  if (!cpu::cpu_path_supported(path)) {
    *error = std::string(source) + ": CPU path '" + name + "' needs " +
             cpu::cpu_path_requirements(path) +
             ", which this CPU or this build lacks (supported: " + supported_list() + ")";
    return false;
  }
  *choice = static_cast<int>(path);
  return true;
}

}  // namespace

bool resolve_cpu_path(CpuPath* path, std::string* error) {
  int choice = g_override.load();
  if (choice == kNoOverride) {
    const char* env = std::getenv("BITMAPS_CPU_PATH");
    choice = kAuto;
    if (env != nullptr && env[0] != '\0' &&
        !parse_choice(env, "BITMAPS_CPU_PATH", &choice, error)) {
      return false;
    }
  }
  *path = choice == kAuto ? cpu::best_cpu_path() : static_cast<CpuPath>(choice);
  return true;
}

bool set_cpu_path_override(const std::string& name, std::string* error) {
  if (name.empty()) {
    g_override.store(kNoOverride);
    return true;
  }
  int choice = kNoOverride;
  if (!parse_choice(name, "bitmaps._C.set_cpu_path", &choice, error)) return false;
  g_override.store(choice);
  return true;
}

std::vector<std::string> supported_cpu_paths() {
  std::vector<std::string> names;
  for (int i = cpu::kNumCpuPaths - 1; i >= 0; --i) {
    if (cpu::cpu_path_supported(static_cast<CpuPath>(i))) {
      names.emplace_back(cpu::cpu_path_name(static_cast<CpuPath>(i)));
    }
  }
  return names;
}

void record_parallel_workers(int workers) { g_last_workers.store(workers); }

int last_parallel_workers() { return g_last_workers.load(); }

void count_cpu_call(int op, CpuPath path) {
  g_calls[op][static_cast<int>(path)].fetch_add(1, std::memory_order_relaxed);
}

std::vector<std::pair<std::string, int64_t>> cpu_call_counts() {
  std::vector<std::pair<std::string, int64_t>> counts;
  for (int op = 0; op < kNumCpuOps; ++op) {
    for (int p = 0; p < cpu::kNumCpuPaths; ++p) {
      counts.emplace_back(std::string(kOpNames[op]) + "/" +
                              cpu::cpu_path_name(static_cast<CpuPath>(p)),
                          g_calls[op][p].load());
    }
  }
  return counts;
}

}  // namespace bitmaps

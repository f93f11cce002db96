// Run-time CPU feature detection for the kernel paths of cpu_features.h.
#include "kernels/cpu_features.h"

namespace bitmaps::cpu {

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::kAvx512:
      return "avx512";
    case CpuPath::kAvx2:
      return "avx2";
    case CpuPath::kScalar:
      break;
  }
  return "scalar";
}

bool parse_cpu_path(const std::string& name, CpuPath* path) {
  for (int i = 0; i < kNumCpuPaths; ++i) {
    const auto candidate = static_cast<CpuPath>(i);
    if (name == cpu_path_name(candidate)) {
      *path = candidate;
      return true;
    }
  }
  return false;
}

const char* cpu_path_requirements(CpuPath path) {
  switch (path) {
    case CpuPath::kAvx512:
      return "x86-64 with avx512f, avx512bw, avx512vl, avx512dq, avx512vpopcntdq, avx2, fma, f16c";
    case CpuPath::kAvx2:
      return "x86-64 with avx2, f16c";
    case CpuPath::kScalar:
      break;
  }
  return "nothing";
}

bool cpu_path_supported(CpuPath path) {
  if (path == CpuPath::kScalar) return true;
#if defined(BITMAPS_HAVE_X86_PATHS)
  // libgcc / compiler-rt also check that the OS saves the wide registers (XCR0) before reporting
  // the AVX / AVX-512 features, so "supported" here means "will not fault".
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (path == CpuPath::kAvx2) return avx2;
  return avx2 && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

CpuPath best_cpu_path() {
  static const CpuPath best = [] {
    if (cpu_path_supported(CpuPath::kAvx512)) return CpuPath::kAvx512;
    if (cpu_path_supported(CpuPath::kAvx2)) return CpuPath::kAvx2;
    return CpuPath::kScalar;
  }();
  return best;
}

}  // namespace bitmaps::cpu

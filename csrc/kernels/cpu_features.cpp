// Run-time CPU feature detection for the kernel paths of cpu_features.h.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_NEON_PATH) && defined(__linux__)
#include <sys/auxv.h>
// The bits of asm/hwcap.h, spelled out so the build needs no kernel headers.
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

namespace bitmaps::cpu {

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::kNeon:
      return "neon";
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
    case CpuPath::kNeon:
      return "aarch64 with asimd (the dot-product extension asimddp is used where present)";
    case CpuPath::kAvx512:
      return "x86-64 with avx512f, avx512bw, avx512vl, avx512dq, avx512vpopcntdq, avx2, fma, f16c";
    case CpuPath::kAvx2:
      return "x86-64 with avx2, f16c";
    case CpuPath::kScalar:
      break;
  }
  return "nothing";
}

bool cpu_has_neon_dotprod() {
#if defined(BITMAPS_HAVE_NEON_PATH) && defined(__linux__)
  static const bool dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return dotprod;
#elif defined(BITMAPS_HAVE_NEON_PATH) && defined(__ARM_FEATURE_DOTPROD)
  return true;  // no auxiliary vector (macOS, ...): only what the compiler was told the CPU has
#else
  return false;
#endif
}

const char* cpu_path_variant(CpuPath path) {
  if (path != CpuPath::kNeon) return "";
  return cpu_has_neon_dotprod() ? "udot" : "cnt";
}

bool cpu_path_supported(CpuPath path) {
  if (path == CpuPath::kScalar) return true;
#if defined(BITMAPS_HAVE_X86_PATHS)
  if (path == CpuPath::kNeon) return false;
  // libgcc / compiler-rt also check that the OS saves the wide registers (XCR0) before reporting
  // the AVX / AVX-512 features, so "supported" here means "will not fault".
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (path == CpuPath::kAvx2) return avx2;
  return avx2 && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq");
#elif defined(BITMAPS_HAVE_NEON_PATH)
  if (path != CpuPath::kNeon) return false;
#if defined(__linux__)
  // Advanced SIMD is architecturally part of AArch64 Linux systems; the check costs nothing.
  static const bool asimd = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
  return asimd;
#else
  return true;
#endif
#else
  return false;
#endif
}

CpuPath best_cpu_path() {
  static const CpuPath best = [] {
    for (CpuPath path : {CpuPath::kNeon, CpuPath::kAvx512, CpuPath::kAvx2}) {
      if (cpu_path_supported(path)) return path;
    }
    return CpuPath::kScalar;
  }();
  return best;
}

}  // namespace bitmaps::cpu

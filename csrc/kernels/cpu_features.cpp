// Run-time CPU feature detection for the kernel paths of cpu_features.h.
#include "kernels/cpu_features.h"

#include <atomic>

#if defined(BITMAPS_HAVE_X86_PATHS)
#include <cpuid.h>
#endif

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
  if (path == CpuPath::kAvx2) return avx2_kloop() == Avx2KLoop::kFolded ? "folded" : "registers";
  if (path != CpuPath::kNeon) return "";
  return cpu_has_neon_dotprod() ? "udot" : "cnt";
}

Avx2KLoop avx2_kloop_of_cpu() {
#if defined(BITMAPS_HAVE_X86_PATHS)
  // Zen 1 / Zen+: AMD family 17h below model 30h (Zen 2 starts there), and Hygon's family 18h
  // (Dhyana, a Zen 1). Zen 3: AMD family 19h, models 00h-0Fh and 20h-5Fh (Zen 4, with AVX-512,
  // has 10h-1Fh and 60h on). Family and model as the CPUID leaf 1 signature composes them.
  static const Avx2KLoop loop = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return Avx2KLoop::kRegisters;
    const bool amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;  // AuthenticAMD
    const bool hygon = ebx == 0x6f677948u && edx == 0x6e65476eu && ecx == 0x656e6975u;  // HygonGenuine
    if ((!amd && !hygon) || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return Avx2KLoop::kRegisters;
    const unsigned family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF);
    const unsigned model = ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0);
    const bool zen1 = (amd && family == 0x17 && model < 0x30) || (hygon && family == 0x18);
    const bool zen3 = amd && family == 0x19 && (model < 0x10 || (model >= 0x20 && model < 0x60));
    return zen1 || zen3 ? Avx2KLoop::kFolded : Avx2KLoop::kRegisters;
  }();
  return loop;
#else
  return Avx2KLoop::kRegisters;
#endif
}

namespace {
// -1: not set (this CPU's form); else an Avx2KLoop value.
std::atomic<int> avx2_kloop_choice{-1};
}  // namespace

Avx2KLoop avx2_kloop() {
  const int choice = avx2_kloop_choice.load(std::memory_order_relaxed);
  return choice < 0 ? avx2_kloop_of_cpu() : static_cast<Avx2KLoop>(choice);
}

void set_avx2_kloop(Avx2KLoop loop) {
  avx2_kloop_choice.store(static_cast<int>(loop), std::memory_order_relaxed);
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

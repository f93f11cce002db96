// Which CPU code path the bitmaps kernels take: AVX-512 (VPOPCNTDQ), AVX2 (nibble-lookup popcount)
// or portable scalar C++, decided at run time from what the CPU reports.
//
// The SIMD code is compiled with per-function target attributes, not with -mavx512* flags for the
// whole library, so one binary runs on any x86-64 CPU and uses the best path it finds there. On
// other architectures only the scalar path exists. Torch-free.
#pragma once

#include <string>

// The SIMD paths exist on x86 builds; BITMAPS_SCALAR_ONLY builds what other architectures get
// (the scalar path alone), so that configuration can be compiled and tested on x86 too.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BITMAPS_SCALAR_ONLY)
#define BITMAPS_HAVE_X86_PATHS 1
#endif

namespace bitmaps::cpu {

enum class CpuPath : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

constexpr int kNumCpuPaths = 3;

// "scalar", "avx2" or "avx512".
const char* cpu_path_name(CpuPath path);

// Parses one of the names above; false for anything else.
bool parse_cpu_path(const std::string& name, CpuPath* path);

// Whether this CPU (and this build) can run the path.
bool cpu_path_supported(CpuPath path);

// The fastest path this CPU supports.
CpuPath best_cpu_path();

// The CPU features a path needs, for error messages ("avx2, f16c").
const char* cpu_path_requirements(CpuPath path);

}  // namespace bitmaps::cpu

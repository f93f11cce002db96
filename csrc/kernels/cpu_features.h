// Which CPU code path the bitmaps kernels take: AVX-512 (VPOPCNTDQ), AVX2 (nibble-lookup popcount),
// Arm NEON (CNT, or UDOT where the dot-product extension is present) or portable scalar C++,
// decided at run time from what the CPU reports.
//
// The SIMD code is compiled with per-function target attributes, not with -mavx512* flags for the
// whole library, so one binary runs on any x86-64 CPU and uses the best path it finds there. NEON
// is part of every aarch64 CPU; its dot-product variant is chosen at run time (getauxval). On other
// architectures only the scalar path exists. Torch-free.
#pragma once

#include <string>

// The SIMD paths exist on x86 / aarch64 builds; BITMAPS_SCALAR_ONLY builds what other
// architectures get (the scalar path alone), so that configuration can be compiled and tested too.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BITMAPS_SCALAR_ONLY)
#define BITMAPS_HAVE_X86_PATHS 1
#endif
#if defined(__aarch64__) && !defined(BITMAPS_SCALAR_ONLY)
#define BITMAPS_HAVE_NEON_PATH 1
#endif

namespace bitmaps::cpu {

// Values are indices (counters, name tables); a higher value is never slower on the CPUs that run it.
enum class CpuPath : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

constexpr int kNumCpuPaths = 4;

// "scalar", "avx2", "avx512" or "neon".
const char* cpu_path_name(CpuPath path);

// Parses one of the names above; false for anything else.
bool parse_cpu_path(const std::string& name, CpuPath* path);

// Whether this CPU (and this build) can run the path.
bool cpu_path_supported(CpuPath path);

// The fastest path this CPU supports.
CpuPath best_cpu_path();

// The CPU features a path needs, for error messages ("avx2, f16c").
const char* cpu_path_requirements(CpuPath path);

// Which variant of a path runs on this CPU, for logs and tests: "udot" or "cnt" for neon (the
// Armv8.2 dot-product extension, HWCAP_ASIMDDP, or CNT + UADALP), "registers" or "folded" for avx2
// (the K loop in use, avx2_kloop below), "" for the other paths.
const char* cpu_path_variant(CpuPath path);

// The AVX2 GEMM's K loop comes in two forms (cpu_kernels_avx2.cpp) that give the same bits.
// kRegisters (xnor_block_4x2): 4 activation rows x a 16-row panel, one K word at a time, the word's
// four split weight vectors loaded into registers once and used for the 4 rows. kFolded
// (xnor_pairs_2x4, the K-pair form): 2 rows x a panel, two K words at a time, each row's two words
// broadcast as one quadword and each logic op reading its weight vector from L1 (the load folded
// into the VPXOR / VPAND): half the broadcasts per logic op, no separate loads. On CPUs that issue
// each 256-bit op as two 128-bit halves (AMD Zen 1 / Zen+) the loop is bound by op slots, and a
// broadcast or a separate 256-bit load takes two of them, a folded load none more: there the K
// loop runs at 86-88 % of the popcount ceiling against 77-78 % in registers (stop 40; stop 37's
// first folded form, 4 x 16 one word at a time: 83 %); where a tile has two panels left, one row
// against both (xnor_pairs_1x8: one broadcast per 8 logic ops), 5 % faster again in L1 (stop 41).
// Where 256-bit ops are whole (Zen 2 on, Intel) it multiplies the vector loads for no op slot
// saved, yet on Zen 3 (whole 256-bit ops, three load ports) the folded form measured 1-3 % faster
// end to end and 2-10 % per node in ONNX Runtime, in three A/B runs (stop 46), so Zen 3 runs it
// too. Zen 2 and Intel CPUs without AVX-512 keep kRegisters: not measured there
// (benchmarks/bench_avx2_kloop.py compares the two on any AVX2 CPU).
enum class Avx2KLoop : int { kRegisters = 0, kFolded = 1 };

// This CPU's form: kFolded on AMD Zen 1 / Zen+ (family 17h, models below 30h), Hygon Dhyana
// (family 18h) and AMD Zen 3 (family 19h, models 00h-0Fh and 20h-5Fh), else kRegisters.
Avx2KLoop avx2_kloop_of_cpu();

// The form the AVX2 path runs: set_avx2_kloop's, else avx2_kloop_of_cpu().
Avx2KLoop avx2_kloop();

// Chooses the form for every later AVX2 GEMM of the process (the kernel harness and the benchmark
// run both on any CPU); not meant to change while GEMMs run on other threads.
void set_avx2_kloop(Avx2KLoop loop);

// Whether the NEON path may use UDOT (aarch64 with the dot-product extension; false elsewhere).
bool cpu_has_neon_dotprod();

}  // namespace bitmaps::cpu

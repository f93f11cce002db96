// Which CPU kernel path the bitmaps ops take, and how tests and users force one.
//
// Order of precedence: bitmaps._C.set_cpu_path(name) (process-wide override) > the environment
// variable BITMAPS_CPU_PATH (read on every call, so a test can monkeypatch it) > the best path the
// CPU supports. Names: "auto", "neon", "avx512", "avx2", "scalar". Asking for a path the CPU lacks is an
// error, never a silent fallback: a forced path is a promise about which code ran.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu_features.h"

namespace bitmaps {

// The path the next op call takes. False (with a one-line message in *error) when the override or
// BITMAPS_CPU_PATH names an unknown path or one this CPU cannot run.
bool resolve_cpu_path(cpu::CpuPath* path, std::string* error);

// Sets the process-wide override ("auto", "neon", "avx512", "avx2", "scalar"), or clears it (empty name).
// False with a message for an unknown or unsupported name; the override is then unchanged.
bool set_cpu_path_override(const std::string& name, std::string* error);

// Names of the paths this CPU supports, fastest first.
std::vector<std::string> supported_cpu_paths();

// How many times each op ran natively on each path: {"xnor_gemm/avx512": 3, ...}. Lets tests prove
// that the dispatcher picked the compiled kernel (and the forced path) rather than the reference.
std::vector<std::pair<std::string, int64_t>> cpu_call_counts();
void count_cpu_call(int op, cpu::CpuPath path);

// Threads that took part in the last parallel phase of an op (tests check that the ops really run
// on torch.get_num_threads() threads: without OpenMP, at::parallel_for silently runs serially).
void record_parallel_workers(int workers);
int last_parallel_workers();

enum CpuOp : int { kOpPackSigns = 0, kOpXnorGemm = 1, kOpBinaryLinear = 2, kNumCpuOps = 3 };

}  // namespace bitmaps

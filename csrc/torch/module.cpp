// The Python module bitmaps._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations of
// every adapter in the library (CPU here in csrc/torch/ops_cpu.cpp; CUDA in csrc/torch/*.cu when
// built with BITMAPS_WITH_CUDA), which override the plain-PyTorch reference kernels of
// bitmaps/core/ops.py for their device. This file is the only module init; adapters register ops only.
//
// The functions below let tests and users see and force which CPU path runs. Only pybind11 is
// included (not torch/extension.h, which takes 4x as long to compile and brings nothing used here).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "cpu_dispatch.h"

namespace {

std::string cpu_path() {
  bitmaps::cpu::CpuPath path;
  std::string error;
  if (!bitmaps::resolve_cpu_path(&path, &error)) throw std::runtime_error(error);
  return bitmaps::cpu::cpu_path_name(path);
}

void set_cpu_path(const std::optional<std::string>& name) {
  std::string error;
  if (!bitmaps::set_cpu_path_override(name.value_or(""), &error)) {
    // Unknown name: ValueError; unsupported path: RuntimeError (naming the missing features).
    if (error.find("unknown CPU path") != std::string::npos) throw pybind11::value_error(error);
    throw std::runtime_error(error);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bitmaps native kernels: importing registers the CPU (and CUDA) bitmaps ops";
  m.def("cpu_path", &cpu_path,
        "The CPU path the next op call takes: 'avx512', 'avx2' or 'scalar' (set_cpu_path, then "
        "BITMAPS_CPU_PATH, then the best this CPU supports). Raises RuntimeError if "
        "BITMAPS_CPU_PATH names an unknown or unsupported path.");
  m.def("set_cpu_path", &set_cpu_path, pybind11::arg("name"),
        "Force the CPU path for the whole process: 'avx512', 'avx2', 'scalar' or 'auto' (the best "
        "this CPU supports); None goes back to BITMAPS_CPU_PATH / auto. ValueError for an unknown "
        "name, RuntimeError for a path this CPU lacks.");
  m.def("cpu_paths_supported", &bitmaps::supported_cpu_paths,
        "Names of the CPU paths this CPU supports, fastest first.");
  m.def("native_call_counts", [] {
    pybind11::dict counts;
    for (const auto& [key, value] : bitmaps::cpu_call_counts()) counts[key.c_str()] = value;
    return counts;
  }, "Native op calls per 'op/path' since import (proves which kernel the dispatcher ran).");
  m.def("last_parallel_workers", &bitmaps::last_parallel_workers,
        "Threads that took part in the last parallel phase of a CPU op.");
#if defined(BITMAPS_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

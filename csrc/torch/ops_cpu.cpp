// The CPU implementations of the bitmaps ops (TORCH_LIBRARY_IMPL(bitmaps, CPU)): argument checks
// with messages users can act on, then the torch-free kernels of csrc/kernels spread over
// at::parallel_for, which honours torch.get_num_threads().
//
// Contiguity: the float activations x are made contiguous here (a copy when they are not); the
// packed int32 operands, w_scale and bias must already be contiguous (a strided packed matrix is
// almost always a bug, e.g. a transposed weight), and the error says so.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <thread>

#include "cpu_dispatch.h"
#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels.h"

namespace bitmaps {
namespace {

using cpu::CpuPath;

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "bitmaps::", op, ": ", name,
              " must be a CPU tensor like the other inputs of this CPU kernel, got device ",
              t.device());
}

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "bitmaps::", op, ": ", name,
              " must be contiguous (call .contiguous() on it), got shape ", t.sizes(),
              " with strides ", t.strides());
}

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, "bitmaps::", op, ": ", name, " must be ", dtype,
              ", got ", t.scalar_type());
}

CpuPath current_path() {
  CpuPath path;
  std::string error;
  TORCH_CHECK(resolve_cpu_path(&path, &error), error);
  return path;
}

// Runs first(i) for i in [0, first_items), then main(j) for j in [0, main_items), on up to
// torch.get_num_threads() threads in ONE parallel region (every region is a fork and a join).
// Threads claim items one at a time, in order, from a shared counter instead of taking a fixed
// share each: when one thread is descheduled (a busy machine) or its items are slower (ragged
// edges), the others take over what it has not started. A main item waits until every first item
// is done (e.g. packed operands before GEMM tiles); first items are claimed before any main item
// and run at once by live threads (kernels do not throw), so the wait always ends, also when the
// region runs serially.
template <class First, class Main>
void parallel_claim(int64_t first_items, const First& first, int64_t main_items, const Main& main) {
  const int64_t items = first_items + main_items;
  if (items <= 0) return;
  std::atomic<int64_t> next{0}, first_done{0};
  std::atomic<int> workers_started{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), items);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    workers_started.fetch_add(1, std::memory_order_relaxed);
    for (int64_t i = next.fetch_add(1); i < items; i = next.fetch_add(1)) {
      if (i < first_items) {
        first(i);
        first_done.fetch_add(1, std::memory_order_release);
        continue;
      }
      while (first_done.load(std::memory_order_acquire) < first_items) std::this_thread::yield();
      main(i - first_items);
    }
  });
  record_parallel_workers(workers_started.load());
}

template <class Fn>
void parallel_claim(int64_t items, const Fn& fn) {
  parallel_claim(0, [](int64_t) {}, items, fn);
}

// Rows per work item when packing rows of k values: ~32K values, so an item outweighs the cost of
// claiming it.
int64_t rows_per_item(int64_t k) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(k, 1)); }

// Packing weight rows [n, kw] into the GEMM's panel layout, as work items of a few panels.
struct PanelJob {
  const int32_t* b;
  int64_t n, kw, k;
  int32_t* panels;
  int64_t num_panels = (n + cpu::kPanelRows - 1) / cpu::kPanelRows;
  int64_t per_item = std::max<int64_t>(1, 8192 / (cpu::kPanelRows * kw));
  int64_t items() const { return (num_panels + per_item - 1) / per_item; }
  void run(int64_t item) const {
    const int64_t p0 = item * per_item;
    cpu::pack_panels(b, n, kw, k, p0, std::min(num_panels, p0 + per_item), panels);
  }
};

at::Tensor empty_panels(int64_t n, int64_t kw) {
  return at::empty({cpu::panel_words(n, kw)}, at::TensorOptions().dtype(at::kInt));
}

// The GEMM over tiles of kTileRows x kTileCols outputs, after `pack_items` packing items (which
// must produce the operands args points to): one parallel region for the whole op.
template <class Pack>
void pack_and_gemm(CpuPath path, const cpu::GemmArgs& args, int64_t pack_items, const Pack& pack) {
  constexpr int64_t kTileRows = 32;   // multiple of every path's micro-kernel rows
  constexpr int64_t kTileCols = 128;  // multiple of kPanelRows
  const int64_t col_tiles = (args.n + kTileCols - 1) / kTileCols;
  const int64_t tiles = (args.m + kTileRows - 1) / kTileRows * col_tiles;
  parallel_claim(pack_items, pack, tiles, [&](int64_t t) {
    const int64_t m0 = (t / col_tiles) * kTileRows;
    const int64_t n0 = (t % col_tiles) * kTileCols;
    cpu::xnor_gemm_tile(path, args, m0, std::min(args.m, m0 + kTileRows), n0,
                        std::min(args.n, n0 + kTileCols));
  });
}

at::Tensor pack_signs_cpu(const at::Tensor& x) {
  constexpr const char* op = "pack_signs";
  check_cpu(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, "bitmaps::pack_signs: x must have at least one dimension (packed "
              "along the last), got a 0-d tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kDouble,
              "bitmaps::pack_signs: x must be float32, float16, bfloat16 or float64, got ", dtype);
  const CpuPath path = current_path();
  const int64_t k = x.size(-1);
  const int64_t kw = packed_width(k);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = kw;
  at::Tensor out = at::empty(shape, x.options().dtype(at::kInt));
  count_cpu_call(kOpPackSigns, path);
  if (out.numel() == 0) return out;

  // bfloat16 -> float32 is exact (sign, zeros and NaNs included), so it reuses the float32 kernel.
  const at::Tensor xc = (dtype == at::kBFloat16 ? x.to(at::kFloat) : x).contiguous();
  const int64_t rows = xc.numel() / k;
  const int64_t per_item = rows_per_item(k);
  int32_t* dst = out.data_ptr<int32_t>();
  parallel_claim((rows + per_item - 1) / per_item, [&](int64_t item) {
    const int64_t r0 = item * per_item, count = std::min(rows - r0, per_item);
    switch (xc.scalar_type()) {
      case at::kHalf:
        cpu::pack_signs_f16(path, reinterpret_cast<const uint16_t*>(xc.const_data_ptr()) + r0 * k,
                            count, k, false, 0.0f, nullptr, dst + r0 * kw);
        break;
      case at::kDouble:
        cpu::pack_signs_f64(xc.const_data_ptr<double>() + r0 * k, count, k, dst + r0 * kw);
        break;
      default:
        cpu::pack_signs_f32(path, xc.const_data_ptr<float>() + r0 * k, count, k, false, 0.0f,
                            nullptr, dst + r0 * kw);
    }
  });
  return out;
}

at::Tensor xnor_gemm_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  constexpr const char* op = "xnor_gemm";
  check_cpu(a, op, "a");
  check_cpu(b, op, "b");
  check_dtype(a, at::kInt, op, "a");
  check_dtype(b, at::kInt, op, "b");
  TORCH_CHECK(k >= 1, "bitmaps::xnor_gemm: k (the number of packed bits per row) must be >= 1, "
              "got ", k);
  const int64_t kw = packed_width(k);
  TORCH_CHECK(a.dim() == 2 && a.size(1) == kw, "bitmaps::xnor_gemm: a must have shape [M, ", kw,
              "] (ceil(k/32) words for k=", k, "), got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(1) == kw, "bitmaps::xnor_gemm: b must have shape [N, ", kw,
              "] (ceil(k/32) words for k=", k, "), got ", b.sizes());
  check_contiguous(a, op, "a");
  check_contiguous(b, op, "b");
  const CpuPath path = current_path();
  const int64_t m = a.size(0), n = b.size(0);
  at::Tensor out = at::empty({m, n}, a.options());
  count_cpu_call(kOpXnorGemm, path);
  if (m == 0 || n == 0) return out;

  const at::Tensor panels = empty_panels(n, kw);
  const PanelJob panel_job{b.const_data_ptr<int32_t>(), n, kw, k, panels.data_ptr<int32_t>()};
  cpu::GemmArgs args;
  args.a = a.const_data_ptr<int32_t>();
  args.panels = panels.const_data_ptr<int32_t>();
  args.m = m;
  args.n = n;
  args.kw = kw;
  args.k = k;
  args.output = cpu::GemmOutput::kDotInt32;
  args.out = out.data_ptr<int32_t>();
  pack_and_gemm(path, args, panel_job.items(), [&](int64_t item) { panel_job.run(item); });
  return out;
}

void check_binary_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "binary_linear";
  check_cpu(x, op, "x");
  check_cpu(w, op, "w");
  check_cpu(w_scale, op, "w_scale");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
              "bitmaps::binary_linear: x must be float32 or float16, got ", x.scalar_type());
  check_dtype(w, at::kInt, op, "w (packed weight signs)");
  check_dtype(w_scale, at::kFloat, op, "w_scale");
  TORCH_CHECK(in_features >= 1, "bitmaps::binary_linear: in_features must be >= 1, got ",
              in_features);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "bitmaps::binary_linear: x.shape[-1] "
              "must equal in_features=", in_features, ", got x of shape ", x.sizes());
  const int64_t kw = packed_width(in_features);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == kw, "bitmaps::binary_linear: w must have shape "
              "[out_features, ", kw, "] (ceil(in_features/32) words for in_features=",
              in_features, "), got ", w.sizes());
  const int64_t n = w.size(0);
  TORCH_CHECK(w_scale.dim() == 1 && w_scale.size(0) == n, "bitmaps::binary_linear: w_scale must "
              "have shape [out_features] = [", n, "], got ", w_scale.sizes());
  check_contiguous(w, op, "w");
  check_contiguous(w_scale, op, "w_scale");
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_dtype(*bias, at::kFloat, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bitmaps::binary_linear: bias must have "
                "shape [out_features] = [", n, "], got ", bias->sizes());
    check_contiguous(*bias, op, "bias");
  }
}

at::Tensor binary_linear_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                             const std::optional<at::Tensor>& bias, int64_t in_features,
                             double act_threshold, double act_scale) {
  check_binary_linear(x, w, w_scale, bias, in_features);
  const CpuPath path = current_path();
  const int64_t k = in_features, kw = packed_width(k), n = w.size(0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n;
  at::Tensor out = at::empty(shape, x.options());
  count_cpu_call(kOpBinaryLinear, path);
  if (out.numel() == 0) return out;

  const at::Tensor xc = x.contiguous();
  const int64_t m = xc.numel() / k;
  // The reference computes x - beta and scales in float32: beta and a fixed scale are rounded
  // to float32 first, exactly as torch does for a Python scalar with a float32 tensor.
  const auto beta = static_cast<float>(act_threshold);
  const bool mean_scale = !(act_scale > 0.0);
  at::Tensor bits = at::empty({m, kw}, at::TensorOptions().dtype(at::kInt));
  at::Tensor row_scale = mean_scale ? at::empty({m}, at::TensorOptions().dtype(at::kFloat))
                                    : at::full({m}, static_cast<float>(act_scale),
                                               at::TensorOptions().dtype(at::kFloat));
  int32_t* bits_ptr = bits.data_ptr<int32_t>();
  float* scale_ptr = row_scale.data_ptr<float>();
  const at::Tensor panels = empty_panels(n, kw);
  const PanelJob panel_job{w.const_data_ptr<int32_t>(), n, kw, k, panels.data_ptr<int32_t>()};
  // Packing items: the weight panels, then the activation rows (x - beta, their signs and their
  // mean |x - beta|); then the GEMM tiles, all in one parallel region.
  const int64_t per_item = rows_per_item(k);
  const int64_t row_items = (m + per_item - 1) / per_item;
  const auto pack = [&](int64_t item) {
    if (item < panel_job.items()) return panel_job.run(item);
    const int64_t r0 = (item - panel_job.items()) * per_item, count = std::min(m - r0, per_item);
    float* mean = mean_scale ? scale_ptr + r0 : nullptr;
    if (xc.scalar_type() == at::kHalf) {
      cpu::pack_signs_f16(path, reinterpret_cast<const uint16_t*>(xc.const_data_ptr()) + r0 * k,
                          count, k, true, beta, mean, bits_ptr + r0 * kw);
    } else {
      cpu::pack_signs_f32(path, xc.const_data_ptr<float>() + r0 * k, count, k, true, beta, mean,
                          bits_ptr + r0 * kw);
    }
  };

  cpu::GemmArgs args;
  args.a = bits_ptr;
  args.panels = panels.const_data_ptr<int32_t>();
  args.m = m;
  args.n = n;
  args.kw = kw;
  args.k = k;
  args.output = x.scalar_type() == at::kHalf ? cpu::GemmOutput::kFloat16
                                             : cpu::GemmOutput::kFloat32;
  args.out = out.data_ptr();
  args.row_scale = scale_ptr;
  args.col_scale = w_scale.const_data_ptr<float>();
  args.bias = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
  pack_and_gemm(path, args, panel_job.items() + row_items, pack);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitmaps, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
}

}  // namespace bitmaps

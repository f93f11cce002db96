// The CPU op driver of cpu_binary_linear.h: work items over the kernels of cpu_kernels.h.
#include "kernels/cpu_binary_linear.h"

#include <memory>

#include "kernels/bit_layout.h"

namespace bitmaps::cpu {
namespace {

// Laying out weight rows [n, kw] into panels, as work items of a few panels.
struct PanelJob {
  const int32_t* w;
  int64_t n, kw, k;
  int32_t* panels;
  int64_t num_panels = (n + kPanelRows - 1) / kPanelRows;
  int64_t per_item = std::max<int64_t>(1, 8192 / (kPanelRows * kw));
  int64_t items() const { return w == nullptr ? 0 : (num_panels + per_item - 1) / per_item; }
  void run(int64_t item) const {
    const int64_t p0 = item * per_item;
    pack_panels(w, n, kw, k, p0, std::min(num_panels, p0 + per_item), panels);
  }
};

// The GEMM over tiles of kTileRows x kTileCols outputs, after `pack_items` packing items (which
// must produce the operands args points to): one parallel region for the whole op.
template <class Pack>
int pack_and_gemm(CpuPath path, const GemmArgs& args, const Parallel& parallel,
                  int64_t pack_items, const Pack& pack) {
  constexpr int64_t kTileRows = 32;   // multiple of every path's micro-kernel rows
  constexpr int64_t kTileCols = 128;  // multiple of kPanelRows
  const int64_t col_tiles = (args.n + kTileCols - 1) / kTileCols;
  const int64_t tiles = (args.m + kTileRows - 1) / kTileRows * col_tiles;
  return parallel_claim(parallel, pack_items, pack, tiles, [&](int64_t t) {
    const int64_t m0 = (t / col_tiles) * kTileRows;
    const int64_t n0 = (t % col_tiles) * kTileCols;
    xnor_gemm_tile(path, args, m0, std::min(args.m, m0 + kTileRows), n0,
                   std::min(args.n, n0 + kTileCols));
  });
}

template <class T>
std::unique_ptr<T[]> uninitialized(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(count, 1))]);
}

}  // namespace

int64_t prepacked_words(int64_t n, int64_t k) { return panel_words(n, packed_width(k)); }

int prepack_weights(const int32_t* w, int64_t n, int64_t k, int32_t* panels,
                    const Parallel& parallel) {
  const PanelJob job{w, n, packed_width(k), k, panels};
  return parallel_claim(parallel, job.items(), [&](int64_t item) { job.run(item); });
}

int xnor_gemm(CpuPath path, const int32_t* a, int64_t m, const int32_t* b, int64_t n, int64_t k,
              int32_t* out, const Parallel& parallel) {
  const int64_t kw = packed_width(k);
  const auto panels = uninitialized<int32_t>(panel_words(n, kw));
  const PanelJob job{b, n, kw, k, panels.get()};
  GemmArgs args;
  args.a = a;
  args.panels = panels.get();
  args.m = m;
  args.n = n;
  args.kw = kw;
  args.k = k;
  args.output = GemmOutput::kDotInt32;
  args.out = out;
  return pack_and_gemm(path, args, parallel, job.items(), [&](int64_t i) { job.run(i); });
}

int binary_linear(CpuPath path, const BinaryLinearArgs& a, const Parallel& parallel) {
  const int64_t m = a.m, k = a.k, kw = packed_width(k);
  const bool mean_scale = !(a.act_scale > 0.0f);
  const auto bits = uninitialized<int32_t>(m * kw);
  const auto row_scale = uninitialized<float>(m);
  const auto popcount = uninitialized<int32_t>(a.act_unsigned ? m : 0);
  if (!mean_scale) std::fill(row_scale.get(), row_scale.get() + m, a.act_scale);
  std::unique_ptr<int32_t[]> own_panels;
  const int32_t* panels = a.panels;
  if (panels == nullptr) {
    own_panels = uninitialized<int32_t>(panel_words(a.n, kw));
    panels = own_panels.get();
  }
  const PanelJob panel_job{a.panels == nullptr ? a.w : nullptr, a.n, kw, k, own_panels.get()};

  // Packing items: the weight panels (unless prepacked), then the activation rows (x - beta,
  // their bits, mean |x - beta| and, for unsigned activations, their popcount).
  const int64_t per_item = rows_per_item(m, k, parallel.max_workers);
  const int64_t row_items = (m + per_item - 1) / per_item;
  const auto pack = [&](int64_t item) {
    if (item < panel_job.items()) return panel_job.run(item);
    const int64_t r0 = (item - panel_job.items()) * per_item, rows = std::min(m - r0, per_item);
    float* mean = mean_scale ? row_scale.get() + r0 : nullptr;
    int32_t* out = bits.get() + r0 * kw;
    if (a.act_unsigned) {
      int32_t* pop = popcount.get() + r0;
      if (a.x_half) {
        pack_positive_f16(path, static_cast<const uint16_t*>(a.x) + r0 * k, rows, k, true,
                          a.act_threshold, mean, pop, out);
      } else {
        pack_positive_f32(path, static_cast<const float*>(a.x) + r0 * k, rows, k, true,
                          a.act_threshold, mean, pop, out);
      }
    } else if (a.x_half) {
      pack_signs_f16(path, static_cast<const uint16_t*>(a.x) + r0 * k, rows, k, true,
                     a.act_threshold, mean, out);
    } else {
      pack_signs_f32(path, static_cast<const float*>(a.x) + r0 * k, rows, k, true,
                     a.act_threshold, mean, out);
    }
  };

  GemmArgs args;
  args.a = bits.get();
  args.panels = panels;
  args.m = m;
  args.n = a.n;
  args.kw = kw;
  args.k = k;
  args.output = a.x_half ? GemmOutput::kFloat16 : GemmOutput::kFloat32;
  args.out = a.y;
  args.row_scale = row_scale.get();
  args.col_scale = a.w_scale;
  args.bias = a.bias;
  args.unsigned_a = a.act_unsigned;
  args.a_popcount = a.act_unsigned ? popcount.get() : nullptr;
  args.gelu = a.gelu;
  return pack_and_gemm(path, args, parallel, panel_job.items() + row_items, pack);
}

}  // namespace bitmaps::cpu

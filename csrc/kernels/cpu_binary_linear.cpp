// The CPU op driver of cpu_binary_linear.h: work items over the kernels of cpu_kernels.h.
#include "kernels/cpu_binary_linear.h"

#include <cmath>
#include <limits>
#include <memory>
#include <utility>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

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

// A number for GemmArgs::call that no other GEMM call of this process has had. One counter for
// every caller (not a static inside the template below: each instantiation would count alone, and
// two GEMMs of different ops would share numbers).
uint64_t next_gemm_call() {
  static std::atomic<uint64_t> calls{0};
  return calls.fetch_add(1, std::memory_order_relaxed) + 1;
}

constexpr int64_t kTileRows = 64;   // multiple of every path's micro-kernel rows
constexpr int64_t kTileCols = 128;  // multiple of kPanelRows

// Rows per GEMM tile. The AVX2 path splits each weight panel once per tile (split_panel_pairs /
// split_panel): twice as many rows per tile split each panel half as often. There tiles of 2 *
// kTileRows rows where that still leaves at least two tiles per worker (BERT-base at 1 x 128 on
// 2 threads: every linear); with stop 41's other AVX2 change, the whole model 1.01x faster at 1
// and 2 threads on the Zen 1 EPYC (RESULTS.md, stop 41). The other paths, not measured with it,
// keep kTileRows.
int64_t tile_rows(CpuPath path, int64_t m, int64_t n, int64_t workers) {
  const int64_t col_tiles = (n + kTileCols - 1) / kTileCols;
  const int64_t twice = 2 * kTileRows;
  if (path == CpuPath::kAvx2 && (m + twice - 1) / twice * col_tiles >= 2 * workers) return twice;
  return kTileRows;
}

// The GEMM over tiles of tile_rows x kTileCols outputs, after `pack_items` packing items (which
// must produce the operands args points to): one parallel region for the whole op.
template <class Pack>
int pack_and_gemm(CpuPath path, const GemmArgs& gemm, const Parallel& parallel,
                  int64_t pack_items, const Pack& pack) {
  GemmArgs args = gemm;
  args.call = next_gemm_call();
  const int64_t rows = tile_rows(path, args.m, args.n, parallel.max_workers);
  const int64_t col_tiles = (args.n + kTileCols - 1) / kTileCols;
  const int64_t tiles = (args.m + rows - 1) / rows * col_tiles;
  return parallel_claim(parallel, pack_items, pack, tiles, [&](int64_t t) {
    const int64_t m0 = (t / col_tiles) * rows;
    const int64_t n0 = (t % col_tiles) * kTileCols;
    xnor_gemm_tile(path, args, m0, std::min(args.m, m0 + rows), n0,
                   std::min(args.n, n0 + kTileCols));
  });
}

template <class T>
std::unique_ptr<T[]> uninitialized(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(count, 1))]);
}

}  // namespace

int64_t prepacked_words(int64_t n, int64_t k) { return panel_words(n, packed_width(k)); }

int64_t panel_row_with_bits_past_k(const int32_t* panels, int64_t n, int64_t k) {
  const int64_t tail = k % kWordBits;
  if (tail == 0) return -1;
  const uint32_t pad = ~((uint32_t{1} << tail) - 1u);
  const int64_t kw = packed_width(k);
  for (int64_t row = 0; row < n; ++row) {
    const int64_t p = row / kPanelRows, l = row % kPanelRows;
    if (static_cast<uint32_t>(panels[(p * kw + kw - 1) * kPanelRows + l]) & pad) return row;
  }
  return -1;
}

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

namespace {

// Packing one op's activation rows as work items: x - beta, their bits, mean |x - beta| (when the
// scale is per row) and, for unsigned activations, their popcount.
struct ActivationJob {
  CpuPath path;
  const BinaryLinearArgs& a;
  int32_t* bits;        // [m, ceil(k/32)]
  float* row_scale;     // [m]: filled with act_scale here when it is fixed
  int32_t* popcount;    // [m] (unsigned activations) or null
  int64_t per_item;
  int64_t items() const { return (a.m + per_item - 1) / per_item; }
  void run(int64_t item) const {
    const int64_t k = a.k, kw = packed_width(k);
    const int64_t r0 = item * per_item, rows = std::min(a.m - r0, per_item);
    const bool mean_scale = !(a.act_scale > 0.0f);
    float* mean = mean_scale ? row_scale + r0 : nullptr;
    if (!mean_scale) std::fill(row_scale + r0, row_scale + r0 + rows, a.act_scale);
    int32_t* out = bits + r0 * kw;
    if (a.act_unsigned) {
      int32_t* pop = popcount + r0;
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
  }
};

// One op's operands: its packed activations, row scales and popcounts, and its weight panels
// (prepacked, or laid out by panel_job's items into own_panels).
struct LinearOperands {
  std::unique_ptr<int32_t[]> bits;
  std::unique_ptr<float[]> row_scale;
  std::unique_ptr<int32_t[]> popcount;
  std::unique_ptr<int32_t[]> own_panels;
  const int32_t* panels;
  PanelJob panel_job;

  explicit LinearOperands(const BinaryLinearArgs& a)
      : bits(uninitialized<int32_t>(a.m * packed_width(a.k))),
        row_scale(uninitialized<float>(a.m)),
        popcount(uninitialized<int32_t>(a.act_unsigned ? a.m : 0)),
        own_panels(a.panels == nullptr ? uninitialized<int32_t>(panel_words(a.n, packed_width(a.k)))
                                       : nullptr),
        panels(a.panels != nullptr ? a.panels : own_panels.get()),
        panel_job{a.panels == nullptr ? a.w : nullptr, a.n, packed_width(a.k), a.k,
                  own_panels.get()} {}

  // The GEMM of the op (its output fields left to the caller).
  GemmArgs gemm(const BinaryLinearArgs& a) const {
    GemmArgs g;
    g.a = bits.get();
    g.panels = panels;
    g.m = a.m;
    g.n = a.n;
    g.kw = packed_width(a.k);
    g.k = a.k;
    g.row_scale = row_scale.get();
    g.col_scale = a.w_scale;
    g.bias = a.bias;
    g.unsigned_a = a.act_unsigned;
    g.a_popcount = a.act_unsigned ? popcount.get() : nullptr;
    return g;
  }
};

// Packs `a`'s weights (unless prepacked) and activations, then runs `g` over its tiles: one
// parallel region.
int pack_and_run(CpuPath path, const BinaryLinearArgs& a, LinearOperands& ops, const GemmArgs& g,
                 const Parallel& parallel) {
  const ActivationJob act{path, a, ops.bits.get(), ops.row_scale.get(), ops.popcount.get(),
                          rows_per_item(a.m, a.k, parallel.max_workers)};
  const PanelJob& panel_job = ops.panel_job;
  return pack_and_gemm(path, g, parallel, panel_job.items() + act.items(), [&](int64_t item) {
    if (item < panel_job.items()) return panel_job.run(item);
    act.run(item - panel_job.items());
  });
}

}  // namespace

int binary_linear(CpuPath path, const BinaryLinearArgs& a, const Parallel& parallel) {
  LinearOperands ops(a);
  GemmArgs g = ops.gemm(a);
  g.output = a.x_half ? GemmOutput::kFloat16 : GemmOutput::kFloat32;
  g.out = a.y;
  g.gelu = a.gelu;
  return pack_and_run(path, a, ops, g, parallel);
}

namespace {

// erfc(-y / sqrt 2) below which 1 + erf(y / sqrt 2) rounds to 0 in float32 (erf within half an
// ulp of -1: 2^-25), so that a float32 GELU is 0 (bitmaps.core.ops.GELU_FLOAT32_ZERO)
constexpr double kGeluFloat32Zero = 0x1p-25;

// The sign of GELU(y) - beta where bounds decide it without erfc: +1, -1, or 0 (evaluate it).
// GELU(y) = (0.5 y) erfc(-y / sqrt 2) lies in [y / 2, y] for y >= 0 (erfc in [1, 2]) and in
// [y / 2, 0] for y < 0 (erfc in (0, 1]; 0 in float32's far tail, ffn_bit); the 1e-9 relative
// margins keep a decision clear of libm's last-bit errors. Only a narrow band of y around the
// threshold (and y < 0 with beta = 0) is left to erfc (BERT-base: the table of each FFN took
// ~50 ms in erfc alone).
int gelu_sign_bound(float y, double beta) {
  if (!std::isfinite(y)) return 0;
  constexpr double kMargin = 1e-9;
  const double half = 0.5 * static_cast<double>(y);
  if (y >= 0.0f) {
    if (half * (1.0 - kMargin) > beta) return 1;
    if (static_cast<double>(y) * (1.0 + kMargin) < beta) return -1;
  } else {
    if (beta > 0.0) return -1;
    if (half * (1.0 + kMargin) > beta) return 1;
  }
  return 0;
}

// ffn_bit_exact, inlined into the table's loop over every dot product of every column.
inline bool ffn_bit(const BinaryLinearArgs& first, const BinaryLinearArgs& second, int64_t c,
                    int32_t d, bool bounds) {
  // y as the epilogue rounds it (store_output), then GELU in float64 with erfc, as float32
  // computes it: 0.5 y (1 + erf(y / sqrt 2)) is 0 where erf rounds to -1 (erfc < 2^-25, y below
  // about -5.56: torch's and ONNX Runtime's GELU), so there the bit is that of -beta
  float y = static_cast<float>(d) * first.act_scale;
  y = y * first.w_scale[c];
  if (first.bias != nullptr) y = y + first.bias[c];
  const double beta = second.act_threshold;
  double v = y;
  if (first.gelu) {
    if (const int sign = bounds ? gelu_sign_bound(y, beta) : 0; sign != 0) {
      return second.act_unsigned ? sign > 0 : sign < 0;
    }
    const double e = std::erfc(-static_cast<double>(y) * 0.70710678118654752440);
    v = e < kGeluFloat32Zero ? 0.0 : 0.5 * y * e;
  }
  return second.act_unsigned ? v - beta > 0.0 : v - beta < 0.0;
}

}  // namespace

bool ffn_bit_exact(const BinaryLinearArgs& first, const BinaryLinearArgs& second, int64_t c,
                   int32_t d, bool bounds) {
  return ffn_bit(first, second, c, d, bounds);
}

bool ffn_bit_table(const BinaryLinearArgs& first, const BinaryLinearArgs& second,
                   FfnBitTable* table) {
  if (first.x_half || !(first.act_scale > 0.0f) || !(second.act_scale > 0.0f)) return false;
  if (first.k > kMaxFfnTableFeatures) return false;
  const int64_t k = first.k, n = first.n;
  // The dot products the first GEMM can produce: K - 2 p for signed activations (p in [0, K]),
  // popcount(a) - 2 popcount(a AND w) for unsigned ones (every integer in [-K, K]).
  const int64_t step = first.act_unsigned ? 1 : 2;
  const int64_t count = 2 * k / step + 1;
  std::vector<std::vector<std::pair<int32_t, int32_t>>> ranges(static_cast<size_t>(n));
  int runs = 0;
  for (int64_t c = 0; c < n; ++c) {
    auto& r = ranges[c];
    bool open = false;
    for (int64_t i = 0; i < count; ++i) {
      const auto d = static_cast<int32_t>(-k + i * step);
      const bool bit = ffn_bit(first, second, c, d, true);
      if (bit && !open) r.emplace_back(d, d);
      if (bit) r.back().second = d;
      open = bit;
    }
    if (static_cast<int64_t>(r.size()) > kMaxFfnRuns) return false;
    runs = std::max(runs, static_cast<int>(r.size()));
  }
  table->runs = runs;
  table->lo.assign(static_cast<size_t>(runs * n), std::numeric_limits<int32_t>::max());
  table->hi.assign(static_cast<size_t>(runs * n), std::numeric_limits<int32_t>::min());
  for (int64_t c = 0; c < n; ++c) {
    for (size_t i = 0; i < ranges[c].size(); ++i) {
      table->lo[i * n + c] = ranges[c][i].first;
      table->hi[i * n + c] = ranges[c][i].second;
    }
  }
  return true;
}

int binary_ffn(CpuPath path, const BinaryFfnArgs& args, const Parallel& parallel) {
  const BinaryLinearArgs& first = args.first;
  BinaryLinearArgs second = args.second;
  second.m = first.m;
  second.x_half = first.x_half;
  second.y = args.y;
  const int64_t m = first.m, hidden = first.n;
  if (args.bit_runs < 0) {  // the two ops one after the other, through a float intermediate
    const auto h = uninitialized<uint32_t>(m * hidden);  // float32, or float16 in its first half
    BinaryLinearArgs a = first;
    a.y = h.get();
    const int used = binary_linear(path, a, parallel);
    second.x = h.get();
    return std::max(used, binary_linear(path, second, parallel));
  }

  // The first GEMM writes the second's input bits (FfnBitTable), then the second GEMM reads them.
  LinearOperands ops1(first);
  const int64_t kw2 = packed_width(hidden);
  BinaryLinearArgs bits_in = second;  // the second op, its activations packed already
  LinearOperands ops2(bits_in);
  std::fill(ops2.bits.get(), ops2.bits.get() + m * kw2, 0);
  GemmArgs g1 = ops1.gemm(first);
  g1.output = GemmOutput::kBits;
  g1.out = ops2.bits.get();
  g1.bit_lo = args.bit_lo;
  g1.bit_hi = args.bit_hi;
  g1.bit_runs = args.bit_runs;
  const int used = pack_and_run(path, first, ops1, g1, parallel);

  std::fill(ops2.row_scale.get(), ops2.row_scale.get() + m, second.act_scale);
  if (second.act_unsigned) detail::row_popcounts(ops2.bits.get(), m, kw2, ops2.popcount.get());
  GemmArgs g2 = ops2.gemm(second);
  g2.output = GemmOutput::kFloat32;
  g2.out = args.y;
  g2.gelu = second.gelu;
  const PanelJob& panel_job = ops2.panel_job;
  return std::max(used, pack_and_gemm(path, g2, parallel, panel_job.items(),
                                      [&](int64_t item) { panel_job.run(item); }));
}

}  // namespace bitmaps::cpu

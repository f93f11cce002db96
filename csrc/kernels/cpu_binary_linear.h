// The whole CPU bitmaps::BinaryLinear (and xnor_gemm) over the kernels of cpu_kernels.h, torch-free:
// weights laid out once into the GEMM's panel layout, activations binarized and packed, GEMM tiles,
// all spread over threads the caller provides. Both front doors use it: csrc/torch (threads from
// at::parallel_for) and csrc/onnxruntime (ONNX Runtime's intra-op pool, or serial).
//
// Work is split into items that threads claim one at a time instead of taking a fixed share each:
// when one thread is descheduled (a busy machine) or its items are slower (ragged edges), the others
// take over what it has not started. The items (in row order in every op: activation rows, GEMM
// tiles row block by row block, attention heads, LayerNorm rows) are cut into one range of
// consecutive items per worker. A thread first claims the items of a range of its own, the range
// with the same number as in the previous region where it is free, so from op to op each thread
// keeps to the same rows, whose values its own core's caches still hold; then it helps with the
// other ranges. An op is ONE parallel region: packing items first, then GEMM tiles that wait
// until every packing item is done. Packing items are claimed before any tile and are run at once
// by the thread that claimed them (kernels do not throw), so the wait always ends, also when the
// region runs serially.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "kernels/cpu_kernels.h"

namespace bitmaps::cpu {

// The threads an op may use. run(workers, body) calls body(w) for w in [0, workers), on up to
// `workers` threads, and returns when every call has returned. The calls may run concurrently or
// one after another, and a thread may make just one call for a whole range of w: each call claims
// items until none are left, so one call already does all the work. A null run (or max_workers 1)
// runs everything on the caller's thread.
struct Parallel {
  int64_t max_workers = 1;
  std::function<void(int64_t workers, const std::function<void(int64_t)>& body)> run;
};

namespace detail {

// The range a thread claims first in a region of `ranges` ranges (taken[r]: claimed already): the
// one it had in the previous region when that is free, else the first free one; -1 when every
// range is taken (the thread then only helps).
inline int64_t take_range(std::atomic<bool>* taken, int64_t ranges) {
  thread_local int64_t last = -1;
  if (last >= 0 && last < ranges && !taken[last].exchange(true, std::memory_order_relaxed)) {
    return last;
  }
  for (int64_t r = 0; r < ranges; ++r) {
    if (!taken[r].exchange(true, std::memory_order_relaxed)) return last = r;
  }
  return -1;
}

}  // namespace detail

// Runs first(i) for i in [0, first_items), then main(j) for j in [0, main_items), claimed as the
// header comment says. Returns how many workers took part.
template <class First, class Main>
int parallel_claim(const Parallel& parallel, int64_t first_items, const First& first,
                   int64_t main_items, const Main& main) {
  const int64_t items = first_items + main_items;
  if (items <= 0) return 0;
  const int64_t workers = std::max<int64_t>(1, std::min(parallel.max_workers, items));
  constexpr int64_t kMaxRanges = 64;
  const int64_t ranges = std::min(workers, kMaxRanges);
  // range r: first items [r * first_items / ranges, ...) and main items likewise; next_*[r] is
  // the next unclaimed item of range r
  std::atomic<int64_t> next_first[kMaxRanges], next_main[kMaxRanges];
  std::atomic<bool> taken[kMaxRanges];
  for (int64_t r = 0; r < ranges; ++r) {
    next_first[r].store(r * first_items / ranges, std::memory_order_relaxed);
    next_main[r].store(r * main_items / ranges, std::memory_order_relaxed);
    taken[r].store(false, std::memory_order_relaxed);
  }
  std::atomic<int64_t> first_done{0};
  std::atomic<int> started{0};
  const std::function<void(int64_t)> body = [&](int64_t) {
    started.fetch_add(1, std::memory_order_relaxed);
    const int64_t own = std::max<int64_t>(0, detail::take_range(taken, ranges));
    for (int64_t d = 0; d < ranges; ++d) {
      const int64_t r = (own + d) % ranges, end = (r + 1) * first_items / ranges;
      for (int64_t i = next_first[r].fetch_add(1); i < end; i = next_first[r].fetch_add(1)) {
        first(i);
        first_done.fetch_add(1, std::memory_order_release);
      }
    }
    while (first_done.load(std::memory_order_acquire) < first_items) std::this_thread::yield();
    for (int64_t d = 0; d < ranges; ++d) {
      const int64_t r = (own + d) % ranges, end = (r + 1) * main_items / ranges;
      for (int64_t i = next_main[r].fetch_add(1); i < end; i = next_main[r].fetch_add(1)) main(i);
    }
  };
  if (workers == 1 || !parallel.run) {
    body(0);
  } else {
    parallel.run(workers, body);
  }
  return started.load();
}

template <class Fn>
int parallel_claim(const Parallel& parallel, int64_t items, const Fn& fn) {
  return parallel_claim(parallel, 0, [](int64_t) {}, items, fn);
}

// Rows per work item for `rows` rows of n values: about `values` values per item (so an item
// outweighs the cost of claiming it) and, where the rows allow, a number of items that is a
// multiple of `workers`, so the last round leaves no thread idle (128 rows of 768 in items of
// ~32K values: 4 items of 32 rows, where 42-row items made 3 full ones and one of 2 rows).
inline int64_t rows_per_item(int64_t rows, int64_t n, int64_t workers, int64_t values = 32768) {
  const int64_t w = std::max<int64_t>(1, workers), r = std::max<int64_t>(1, rows);
  int64_t items = std::max<int64_t>(1, r * std::max<int64_t>(n, 1) / values);
  items = std::min(r, (items + w - 1) / w * w);
  return (r + items - 1) / items;
}

// Int32 words of the prepacked weights of n rows of k bits: the panel layout of pack_panels,
// [ceil(n / kPanelRows), ceil(k / 32), kPanelRows]. It is the same on every CPU path.
int64_t prepacked_words(int64_t n, int64_t k);

// Packed weight rows w [n, ceil(k/32)] -> the panel layout (padding rows and bits zeroed).
int prepack_weights(const int32_t* w, int64_t n, int64_t k, int32_t* panels,
                    const Parallel& parallel);

// The first row of prepacked weights (n rows of k bits, the layout above) whose last word holds
// bits past k, or -1 where none does. The GEMM counts every bit of that word and prepack_weights
// leaves those bits zero; panels made for another k of the same word count (40 for 33) do not.
// One word a row is read, and none where k is a multiple of 32.
int64_t panel_row_with_bits_past_k(const int32_t* panels, int64_t n, int64_t k);

// out[m, n] = k - 2 * popcount(a[m] XOR b[n]) for packed rows a [m, kw] and b [n, kw] (b is laid
// out into panels on the way).
int xnor_gemm(CpuPath path, const int32_t* a, int64_t m, const int32_t* b, int64_t n, int64_t k,
              int32_t* out, const Parallel& parallel);

// The op of DESIGN.md on row-major x [m, k] (float32, or float16 bits when x_half):
//   x' = x - act_threshold;  s[m] = act_scale if act_scale > 0 else mean_k |x'[m, k]|
//   signed:   y[m, n] = s[m] * w_scale[n] * (k - 2 * popcount(sign_bits(x'[m]) XOR W[n])) + bias[n]
//   unsigned: y[m, n] = s[m] * w_scale[n] * (popcount(a[m]) - 2 * popcount(a[m] AND W[n])) + bias[n]
//             with a = (x' > 0)
//   gelu:     y = gelu(y) before y is stored (and rounded to float16 for a float16 x)
// y [m, n] has the dtype of x. The weights come prepacked (panels), or as packed rows (w) that are
// laid out into panels inside the same parallel region.
struct BinaryLinearArgs {
  const void* x = nullptr;
  bool x_half = false;
  int64_t m = 0, k = 0, n = 0;
  const int32_t* panels = nullptr;  // prepack_weights layout, or null to use w
  const int32_t* w = nullptr;       // [n, ceil(k/32)] packed weight rows (when panels is null)
  const float* w_scale = nullptr;   // [n]
  const float* bias = nullptr;      // [n] or null
  float act_threshold = 0.0f;
  float act_scale = 0.0f;
  bool act_unsigned = false;
  bool gelu = false;  // y = gelu(...) (erf form), fused into the epilogue (cpu_kernels_internal.h)
  void* y = nullptr;
};

int binary_linear(CpuPath path, const BinaryLinearArgs& args, const Parallel& parallel);

// A binary feed-forward block: two BinaryLinear ops where the second binarizes the first's output
// (GELU applied or not), as `bitmaps export --target onnxruntime` fuses them
// (bitmaps::BinaryFeedForward, csrc/onnxruntime/README.md):
//   h = binary_linear(first) on x;  y = binary_linear(second) on h
// When both activation scales are fixed (act_scale > 0) and x is float32, the second op's input
// bit of column c depends only on the first op's integer dot product d at c: y = (d * s) *
// w_scale[c] + bias[c] (float32, as the epilogue rounds it), GELU, minus the second op's
// threshold, compared with 0. The table below holds, per column, the ranges of d that give bit 1,
// computed once from the first op's scales and bias by evaluating every reachable d, so the first
// GEMM writes the second's packed input bits straight from its popcounts: no float intermediate,
// no GELU at run time, no second packing pass.
// GELU is evaluated there in float64 (0.5 y erfc(-y / sqrt 2)), and 0 where a float32 GELU is
// (1 + erf(y / sqrt 2) rounds to 0: y below about -5.56, as in torch and ONNX Runtime, the model's
// GELU): one or two ranges per column. The two ops run one after the other round GELU to float32
// first (the epilogue's GELU is 0 in the same tail, cpu_kernels_internal.h kErfTailZero); their
// bits are the same unless GELU(y) is within a float32 rounding of the threshold.
struct FfnBitTable {
  int runs = 0;             // ranges per column
  std::vector<int32_t> lo;  // [runs, n] for the first op's n columns; an empty range: lo > hi
  std::vector<int32_t> hi;
};

// The most ranges a column may need: GELU(y) - beta changes sign at most twice (GELU has one
// minimum), so at most two ranges of 1 bits.
constexpr int kMaxFfnRuns = 2;

// The largest in_features a table is made for: it looks at every dot product the first op can
// produce (2 K + 1 of them, per column), so its cost grows with K (2^31 took minutes); BERT's
// layers have K <= 4096. Beyond it ffn_bit_table does not apply.
constexpr int64_t kMaxFfnTableFeatures = int64_t{1} << 20;

// Fills *table for `first` (its k, n, w_scale, bias, act_scale, act_unsigned, gelu) feeding
// `second` (its act_threshold, act_unsigned). False (table untouched) where the shortcut does not
// apply: a float16 x, act_scale 0 in either op (a scale per row), k > kMaxFfnTableFeatures, or a
// column whose bits need more
// than kMaxFfnRuns ranges (not seen: a guard); binary_ffn then runs the two ops one after the other.
bool ffn_bit_table(const BinaryLinearArgs& first, const BinaryLinearArgs& second,
                   FfnBitTable* table);

// The bit the table holds for the first op's column c and integer dot product d: GELU (or the
// identity) of the epilogue's float32 y, in float64, against the second op's threshold. bounds:
// GELU's bounds decide it where they can (the same bit; false: erfc for every d, for tests).
bool ffn_bit_exact(const BinaryLinearArgs& first, const BinaryLinearArgs& second, int64_t c,
                   int32_t d, bool bounds = true);

struct BinaryFfnArgs {
  BinaryLinearArgs first;   // x, m, k, n (hidden), its weights, scales and activation; y unused
  BinaryLinearArgs second;  // k = first.n, n, its weights, scales and activation; x, m unused
  // The table of ffn_bit_table for these ops ([bit_runs, first.n] each), or bit_runs < 0: none
  const int32_t* bit_lo = nullptr;
  const int32_t* bit_hi = nullptr;
  int bit_runs = -1;
  void* y = nullptr;  // [m, second.n], the dtype of x

  void use(const FfnBitTable& table) {
    bit_lo = table.lo.data();
    bit_hi = table.hi.data();
    bit_runs = table.runs;
  }
};

int binary_ffn(CpuPath path, const BinaryFfnArgs& args, const Parallel& parallel);

}  // namespace bitmaps::cpu

// cpu_layer_norm.h: the driver (work items of rows) and the portable rows.
#include "kernels/cpu_layer_norm.h"

#include <algorithm>
#include <cmath>

namespace bitmaps::cpu {

void detail::add_layer_norm_rows_portable(const AddLayerNormArgs& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n;
  for (int64_t r = r0; r < r1; ++r) {
    // out may not alias x or skip (the ops allocate it)
    const float* __restrict x = a.x + r * n;
    const float* __restrict skip = a.skip == nullptr ? nullptr : a.skip + r * n;
    float* __restrict out = a.out + r * n;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = skip == nullptr ? x[i] : x[i] + skip[i];
      sum += out[i];
    }
    const float mean = sum / static_cast<float>(n);
    float var = 0.0f;
    for (int64_t i = 0; i < n; ++i) var += (out[i] - mean) * (out[i] - mean);
    const float inv = 1.0f / std::sqrt(var / static_cast<float>(n) + a.epsilon);
    for (int64_t i = 0; i < n; ++i) {
      const float y = (out[i] - mean) * inv * a.gamma[i];
      out[i] = a.beta == nullptr ? y : y + a.beta[i];
    }
  }
}

int add_layer_norm(CpuPath path, const AddLayerNormArgs& args, const Parallel& parallel) {
  if (args.rows <= 0 || args.n <= 0) return 0;
  // ~16K values per item, items a multiple of the workers (128 rows of 768 were 7 items of 21
  // rows: 4 + 3 on two threads)
  const int64_t per_item = rows_per_item(args.rows, args.n, parallel.max_workers, 16384);
  const int64_t items = (args.rows + per_item - 1) / per_item;
  return parallel_claim(parallel, items, [&](int64_t item) {
    const int64_t r0 = item * per_item, r1 = std::min(args.rows, r0 + per_item);
    detail::add_layer_norm_rows(path, args, r0, r1);
  });
}

void detail::add_layer_norm_rows(CpuPath path, const AddLayerNormArgs& args, int64_t r0,
                                 int64_t r1) {
#if defined(BITMAPS_HAVE_X86_PATHS)
  if (path == CpuPath::kAvx512) return add_layer_norm_rows_avx512(args, r0, r1);
  if (path == CpuPath::kAvx2) return add_layer_norm_rows_avx2(args, r0, r1);
#endif
#if defined(BITMAPS_HAVE_NEON_PATH)
  if (path == CpuPath::kNeon) return add_layer_norm_rows_neon(args, r0, r1);
#endif
  (void)path;
  add_layer_norm_rows_portable(args, r0, r1);
}

}  // namespace bitmaps::cpu

// Dispatch of the CPU kernels (cpu_kernels.h) to the path the caller picked, and the parts that
// are the same on every path: the weight panel layout and float64 packing.
#include "kernels/cpu_kernels.h"

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

namespace bitmaps::cpu {

// A path this build lacks (AVX off x86, NEON off aarch64) falls back to scalar; callers check
// support beforehand.
#if defined(BITMAPS_HAVE_X86_PATHS)
#define BITMAPS_DISPATCH(path, fn, ...)             \
  switch (path) {                                   \
    case CpuPath::kAvx512:                          \
      return detail::fn##_avx512(__VA_ARGS__);      \
    case CpuPath::kAvx2:                            \
      return detail::fn##_avx2(__VA_ARGS__);        \
    case CpuPath::kNeon:                            \
    case CpuPath::kScalar:                          \
      break;                                        \
  }                                                 \
  return detail::fn##_scalar(__VA_ARGS__)
#elif defined(BITMAPS_HAVE_NEON_PATH)
#define BITMAPS_DISPATCH(path, fn, ...)                              \
  if (path == CpuPath::kNeon) return detail::fn##_neon(__VA_ARGS__); \
  return detail::fn##_scalar(__VA_ARGS__)
#else
#define BITMAPS_DISPATCH(path, fn, ...) \
  (void)path;                           \
  return detail::fn##_scalar(__VA_ARGS__)
#endif

void pack_signs_f32(CpuPath path, const float* x, int64_t rows, int64_t k, bool subtract,
                    float beta, float* row_abs_mean, int32_t* out) {
  BITMAPS_DISPATCH(path, pack_signs_f32, x, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16(CpuPath path, const uint16_t* x16, int64_t rows, int64_t k, bool subtract,
                    float beta, float* row_abs_mean, int32_t* out) {
  BITMAPS_DISPATCH(path, pack_signs_f16, x16, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_positive_f32(CpuPath path, const float* x, int64_t rows, int64_t k, bool subtract,
                       float beta, float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  BITMAPS_DISPATCH(path, pack_positive_f32, x, rows, k, subtract, beta, row_abs_mean, row_popcount,
                   out);
}

void pack_positive_f16(CpuPath path, const uint16_t* x16, int64_t rows, int64_t k, bool subtract,
                       float beta, float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  BITMAPS_DISPATCH(path, pack_positive_f16, x16, rows, k, subtract, beta, row_abs_mean,
                   row_popcount, out);
}

void xnor_gemm_tile(CpuPath path, const GemmArgs& args, int64_t m0, int64_t m1, int64_t n0,
                    int64_t n1) {
  BITMAPS_DISPATCH(path, xnor_gemm_tile, args, m0, m1, n0, n1);
}

#undef BITMAPS_DISPATCH

void gelu_f32(CpuPath path, const float* y, int64_t count, float* out) {
#if defined(BITMAPS_HAVE_X86_PATHS)
  if (path == CpuPath::kAvx512) return detail::gelu_f32_avx512(y, count, out);
#endif
  (void)path;  // the scalar definition, which the AVX2 and NEON epilogues match bit for bit
  for (int64_t i = 0; i < count; ++i) out[i] = detail::gelu(y[i]);
}

void pack_signs_f64(const double* x, int64_t rows, int64_t k, int32_t* out) {
  const int64_t kw = packed_width(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t w = 0; w < kw; ++w) {
      uint32_t word = 0;
      for (int64_t j = 0; j < kWordBits && w * kWordBits + j < k; ++j) {
        word |= static_cast<uint32_t>(x[r * k + w * kWordBits + j] < 0.0) << j;
      }
      out[r * kw + w] = static_cast<int32_t>(word);
    }
  }
}

void pack_panels(const int32_t* b, int64_t n, int64_t kw, int64_t k, int64_t p0, int64_t p1,
                 int32_t* panels) {
  const auto last_mask = static_cast<int32_t>(last_word_mask(k));
  for (int64_t p = p0; p < p1; ++p) {
    int32_t* panel = panels + p * kw * kPanelRows;
    for (int64_t l = 0; l < kPanelRows; ++l) {
      const int64_t row = p * kPanelRows + l;
      if (row >= n) {
        for (int64_t w = 0; w < kw; ++w) panel[w * kPanelRows + l] = 0;
        continue;
      }
      // Row-wise reads, strided writes: the 16 rows of a panel share the written cache lines.
      const int32_t* src = b + row * kw;
      for (int64_t w = 0; w + 1 < kw; ++w) panel[w * kPanelRows + l] = src[w];
      panel[(kw - 1) * kPanelRows + l] = src[kw - 1] & last_mask;
    }
  }
}

}  // namespace bitmaps::cpu

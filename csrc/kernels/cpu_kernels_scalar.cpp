// The portable scalar path: plain C++ (no intrinsics), any CPU. The reference the SIMD paths are
// tested against besides the PyTorch reference, and the fallback where no SIMD path runs.
#include <cmath>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

namespace bitmaps::cpu::detail {
namespace {

// kPositive: bit = (x' > 0) (unsigned activations); otherwise bit = (x' < 0) (signs).
template <bool kPositive, class LoadFloat>
void pack_rows(LoadFloat load, int64_t rows, int64_t k, bool subtract, float beta,
               float* row_abs_mean, int32_t* out) {
  const int64_t kw = packed_width(k);
  for (int64_t r = 0; r < rows; ++r) {
    double abs_sum = 0.0;
    for (int64_t w = 0; w < kw; ++w) {
      const int64_t base = w * kWordBits;
      const int64_t count = (k - base) < kWordBits ? (k - base) : kWordBits;
      uint32_t word = 0;
      for (int64_t j = 0; j < count; ++j) {
        float v = load(r * k + base + j);
        if (subtract) v = v - beta;
        word |= static_cast<uint32_t>(kPositive ? v > 0.0f : v < 0.0f) << j;
        abs_sum += static_cast<double>(std::fabs(v));
      }
      out[r * kw + w] = static_cast<int32_t>(word);
    }
    if (row_abs_mean != nullptr) {
      row_abs_mean[r] = static_cast<float>(abs_sum) / static_cast<float>(k);
    }
  }
}

}  // namespace

void pack_signs_f32_scalar(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                           float* row_abs_mean, int32_t* out) {
  pack_rows<false>([x](int64_t i) { return x[i]; }, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_scalar(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                           float* row_abs_mean, int32_t* out) {
  pack_rows<false>([x](int64_t i) { return half_to_float(x[i]); }, rows, k, subtract, beta,
                   row_abs_mean, out);
}

void pack_positive_f32_scalar(const float* x, int64_t rows, int64_t k, bool subtract, float beta,
                              float* row_abs_mean, int32_t* row_popcount, int32_t* out) {
  pack_rows<true>([x](int64_t i) { return x[i]; }, rows, k, subtract, beta, row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void pack_positive_f16_scalar(const uint16_t* x, int64_t rows, int64_t k, bool subtract,
                              float beta, float* row_abs_mean, int32_t* row_popcount,
                              int32_t* out) {
  pack_rows<true>([x](int64_t i) { return half_to_float(x[i]); }, rows, k, subtract, beta,
                  row_abs_mean, out);
  if (row_popcount != nullptr) row_popcounts(out, rows, packed_width(k), row_popcount);
}

void xnor_gemm_tile_scalar(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t kw = g.kw;
  const uint32_t last_mask = last_word_mask(g.k);
  const auto* panels = reinterpret_cast<const uint32_t*>(g.panels);
  const auto* a_words = reinterpret_cast<const uint32_t*>(g.a);
  for (int64_t n = n0; n < n1; n += kPanelRows) {
    const uint32_t* panel = panels + (n / kPanelRows) * kw * kPanelRows;
    const int64_t cols = (g.n - n) < kPanelRows ? (g.n - n) : kPanelRows;
    for (int64_t m = m0; m < m1; ++m) {
      const uint32_t* a = a_words + m * kw;
      uint32_t acc[kPanelRows] = {};
      for (int64_t w = 0; w < kw; ++w) {
        const uint32_t aw = a[w] & (w == kw - 1 ? last_mask : 0xFFFFFFFFu);
        const uint32_t* b = panel + w * kPanelRows;
        if (g.unsigned_a) {
          for (int64_t l = 0; l < kPanelRows; ++l) acc[l] += popcount32(aw & b[l]);
        } else {
          for (int64_t l = 0; l < kPanelRows; ++l) acc[l] += popcount32(aw ^ b[l]);
        }
      }
      for (int64_t l = 0; l < cols; ++l) store_output(g, m, n + l, gemm_dot(g, m, acc[l]));
    }
  }
}

}  // namespace bitmaps::cpu::detail

// The portable scalar path: plain C++ (no intrinsics), any CPU. The reference the SIMD paths are
// tested against besides the PyTorch reference, and the fallback off x86.
#include <cmath>

#include "kernels/bit_layout.h"
#include "kernels/cpu_kernels_internal.h"

namespace bitmaps::cpu::detail {
namespace {

// Bit-twiddling popcount: no dependence on a popcnt instruction (or a libgcc call) on old CPUs.
inline uint32_t popcount32(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  return (((v + (v >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24;
}

template <class LoadFloat>
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
        word |= static_cast<uint32_t>(v < 0.0f) << j;
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
  pack_rows([x](int64_t i) { return x[i]; }, rows, k, subtract, beta, row_abs_mean, out);
}

void pack_signs_f16_scalar(const uint16_t* x, int64_t rows, int64_t k, bool subtract, float beta,
                           float* row_abs_mean, int32_t* out) {
  pack_rows([x](int64_t i) { return half_to_float(x[i]); }, rows, k, subtract, beta,
            row_abs_mean, out);
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
        for (int64_t l = 0; l < kPanelRows; ++l) acc[l] += popcount32(aw ^ b[l]);
      }
      for (int64_t l = 0; l < cols; ++l) {
        store_output(g, m, n + l, binary_dot(g.k, acc[l]));
      }
    }
  }
}

}  // namespace bitmaps::cpu::detail

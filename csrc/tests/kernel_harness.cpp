// The torch-free test harness of the CPU kernels (csrc/kernels/cpu_kernels.h): no torch, no ONNX
// Runtime, one small program that builds with any C++17 compiler for any target, so the same checks
// run natively on x86 (AVX-512, AVX2, scalar) and under qemu-aarch64 for the NEON path.
//
// Every kernel is compared with a plain reference written here, independent of the kernels' own
// helpers (its own half <-> float conversions, popcount and masks), on the awkward sizes:
// K in {1, 31, 32, 33, 100, 768, 3072}, odd M and N, garbage in the weights' padding bits, for
// signed and unsigned activations. Bits, popcounts, int32 dot products and the fused epilogue
// (float32 / float16, with and without bias, fixed and per-row mean scale) must match bit for bit.
// Attention (cpu_attention.h) is float arithmetic in another order than any reference: it is checked
// against a float64 reference to kAttentionAtol, with masked keys (a large negative bias), every
// broadcast form of the bias, head sizes with and without a 16-wide tail, S != T and Dv != D.
// Its int8 scheme (AttentionArgs::int8) fixes every float32 operation and their order: checked bit
// for bit against a reference written from the header's comment, with strided and packed rows, zero
// rows, rounding ties, masked keys (whose values must not count), and the level function on its
// exact ties and below its floor.
// Add + LayerNorm (cpu_layer_norm.h) likewise, to kLayerNormAtol, with and without skip and beta.
// The int4 embedding lookups + LayerNorm (cpu_embed.h) likewise: 2 and 3 lookups, negative and
// broadcast indices, blocks from 2 values to a whole row; and its index check.
// The one tolerance of the binary kernels: a row's mean |x'| is summed in a different order on each path (documented in
// cpu_kernels.h), so it is checked to kMeanRtol; the epilogue is then checked exactly given the
// scale the kernel produced.
//
//   kernel_harness [--path NAME]... [--seed N] [--list]
//
// Without --path it tests every path this CPU supports (BITMAPS_CPU_PATH, when set, names one);
// the AVX2 path twice, once per form of its K loop (registers, folded: cpu_features.h).
// Prints one line per path and exits 0 when every check passed, 1 otherwise, 2 on bad arguments or
// a path this CPU cannot run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <bitset>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu_attention.h"
#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_embed.h"
#include "kernels/cpu_features.h"
#include "kernels/cpu_kernels.h"
#include "kernels/cpu_kernels_internal.h"
#include "kernels/cpu_layer_norm.h"

namespace {

using bitmaps::cpu::CpuPath;
using bitmaps::cpu::GemmArgs;
using bitmaps::cpu::GemmOutput;

const int64_t kSizesK[] = {1, 31, 32, 33, 100, 768, 3072};
// Relative tolerance of the per-row mean |x'|: float32 partial sums of 8 values (AVX-512) are
// within 8 * 2^-24 of exact, the float64 sums far closer; the rest is the final float32 rounding.
constexpr double kMeanRtol = 2e-6;
// AVX-512's fused GELU against the scalar definition, scaled by max(1, |GELU's input|): of the
// order of the definition's own error against the exact GELU (check_gelu_accuracy: 3e-7).
constexpr double kGeluAvx512Tol = 4e-7;

// ----------------------------------------------------------------------------- the reference

uint32_t ref_popcount(uint32_t v) { return static_cast<uint32_t>(std::bitset<32>(v).count()); }

int64_t ref_words(int64_t k) { return (k + 31) / 32; }

// Valid bits of word w of a row of k bits.
uint32_t ref_mask(int64_t k, int64_t w) {
  const int64_t bits = k - 32 * w;
  return bits >= 32 ? 0xFFFFFFFFu : ((uint32_t{1} << bits) - 1u);
}

float ref_half_to_float(uint16_t h) {
  const int e = (h >> 10) & 0x1F;
  const int m = h & 0x3FF;
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -24);
  if (e == 31) return m ? std::nanf("") : sign * INFINITY;
  return sign * std::ldexp(static_cast<float>(1024 + m), e - 25);
}

// Round to nearest, ties to even, through the quantum of the value's binade (not NaN).
uint16_t ref_float_to_half(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7C00;  // 65520 rounds (to even) up to 65536: infinity
  if (a < std::ldexp(1.0, -14)) {          // subnormal quanta of 2^-24 (1024 of them: 2^-14)
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(a, 24)));
  }
  int e = 0;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  const double units = std::nearbyint(std::ldexp(a, 11 - e));  // in [1024, 2048]
  return sign | static_cast<uint16_t>(((e - 1 + 15) << 10) + (static_cast<int>(units) - 1024));
}

struct RefPack {
  std::vector<uint32_t> words;
  std::vector<double> mean;
  std::vector<int32_t> popcount;
};

RefPack ref_pack(const std::vector<float>& x, int64_t rows, int64_t k, bool subtract, float beta,
                 bool positive) {
  const int64_t kw = ref_words(k);
  RefPack p{std::vector<uint32_t>(rows * kw, 0), std::vector<double>(rows, 0.0),
            std::vector<int32_t>(rows, 0)};
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      volatile float v = x[r * k + i];
      if (subtract) v = v - beta;
      if (positive ? v > 0.0f : v < 0.0f) {
        p.words[r * kw + i / 32] |= uint32_t{1} << (i % 32);
        ++p.popcount[r];
      }
      sum += std::fabs(static_cast<double>(v));
    }
    p.mean[r] = sum / static_cast<double>(k);
  }
  return p;
}

// dot[m, n] of packed rows a [m, kw] and w [n, kw], ignoring every padding bit of both.
std::vector<int32_t> ref_gemm(const std::vector<uint32_t>& a, const std::vector<uint32_t>& w,
                              int64_t m, int64_t n, int64_t k, bool unsigned_a) {
  const int64_t kw = ref_words(k);
  std::vector<int32_t> dot(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t ones = 0, both = 0, differ = 0;
      for (int64_t q = 0; q < kw; ++q) {
        const uint32_t av = a[i * kw + q] & ref_mask(k, q), wv = w[j * kw + q] & ref_mask(k, q);
        ones += ref_popcount(av);
        both += ref_popcount(av & wv);
        differ += ref_popcount(av ^ wv);
      }
      dot[i * n + j] = static_cast<int32_t>(unsigned_a ? ones - 2 * both : k - 2 * differ);
    }
  }
  return dot;
}

// (dot * s) * w_scale + bias in float32, each step rounded (volatile: no contraction into FMA).
float ref_epilogue(int32_t dot, float s, float ws, const float* bias) {
  volatile float y = static_cast<float>(dot) * s;
  y = y * ws;
  if (bias != nullptr) y = y + *bias;
  return y;
}

// -------------------------------------------------------------------------------- the checks

struct Checker {
  std::string path;
  int64_t checks = 0, failures = 0;

  void expect(bool ok, const std::string& what) {
    ++checks;
    if (ok) return;
    if (++failures <= 20) std::printf("FAIL [%s] %s\n", path.c_str(), what.c_str());
  }
};

std::string describe(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string describe(const char* fmt, ...) {
  char buf[256];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return buf;
}

// Activations with the values that decide bits: exact zeros, -0, values equal to beta (x' = 0),
// subnormals, wide magnitudes.
std::vector<float> random_activations(std::mt19937& rng, int64_t count, float beta) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 19);
  std::vector<float> x(count);
  for (auto& v : x) {
    switch (pick(rng)) {
      case 0: v = 0.0f; break;
      case 1: v = -0.0f; break;
      case 2: v = beta; break;
      case 3: v = normal(rng) * 1e-6f; break;
      case 4: v = normal(rng) * 300.0f; break;
      default: v = normal(rng);
    }
  }
  return x;
}

std::vector<uint32_t> random_words(std::mt19937& rng, int64_t count) {
  std::vector<uint32_t> w(count);
  for (auto& v : w) v = static_cast<uint32_t>(rng());
  return w;
}

struct Packed {
  std::vector<int32_t> words, popcount;
  std::vector<float> mean;
};

// Runs the kernel's pack (signs or positive) on float32 or float16 input and checks it.
Packed check_pack(Checker& c, CpuPath path, const std::vector<float>& x32, bool half, int64_t rows,
                  int64_t k, bool subtract, float beta, bool positive, bool want_mean,
                  bool want_popcount) {
  const int64_t kw = ref_words(k);
  std::vector<float> x(x32);
  std::vector<uint16_t> x16(x.size());
  if (half) {  // the kernel reads binary16; the reference reads the same values widened
    for (size_t i = 0; i < x.size(); ++i) {
      x16[i] = ref_float_to_half(x[i]);
      x[i] = ref_half_to_float(x16[i]);
    }
  }
  Packed p{std::vector<int32_t>(rows * kw, static_cast<int32_t>(0xA5A5A5A5u)),
           std::vector<int32_t>(rows, -7), std::vector<float>(rows, NAN)};
  float* mean = want_mean ? p.mean.data() : nullptr;
  int32_t* pc = want_popcount ? p.popcount.data() : nullptr;
  const float arg_beta = subtract ? beta : 123.0f;  // must be ignored without subtract
  if (positive && half) {
    bitmaps::cpu::pack_positive_f16(path, x16.data(), rows, k, subtract, arg_beta, mean, pc,
                                    p.words.data());
  } else if (positive) {
    bitmaps::cpu::pack_positive_f32(path, x.data(), rows, k, subtract, arg_beta, mean, pc,
                                    p.words.data());
  } else if (half) {
    bitmaps::cpu::pack_signs_f16(path, x16.data(), rows, k, subtract, arg_beta, mean,
                                 p.words.data());
  } else {
    bitmaps::cpu::pack_signs_f32(path, x.data(), rows, k, subtract, arg_beta, mean,
                                 p.words.data());
  }
  const RefPack ref = ref_pack(x, rows, k, subtract, beta, positive);
  const std::string what = describe("pack_%s_%s k=%lld rows=%lld subtract=%d",
                                    positive ? "positive" : "signs", half ? "f16" : "f32",
                                    static_cast<long long>(k), static_cast<long long>(rows),
                                    subtract);
  for (int64_t i = 0; i < rows * kw; ++i) {
    c.expect(static_cast<uint32_t>(p.words[i]) == ref.words[i],
             what + describe(" word %lld: %08x != %08x", static_cast<long long>(i),
                             static_cast<uint32_t>(p.words[i]), ref.words[i]));
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (want_mean) {
      const double err = std::fabs(p.mean[r] - ref.mean[r]);
      c.expect(err <= kMeanRtol * ref.mean[r] + 1e-30,
               what + describe(" mean row %lld: %.9g vs %.9g", static_cast<long long>(r),
                               p.mean[r], ref.mean[r]));
    }
    if (want_popcount) {
      c.expect(p.popcount[r] == ref.popcount[r],
               what + describe(" popcount row %lld: %d != %d", static_cast<long long>(r),
                               p.popcount[r], ref.popcount[r]));
    }
  }
  return p;
}

// Weight rows with garbage in their padding bits, in the panel layout (packed in two slices).
std::vector<int32_t> make_panels(const std::vector<uint32_t>& w, int64_t n, int64_t k) {
  const int64_t kw = ref_words(k);
  std::vector<int32_t> panels(bitmaps::cpu::panel_words(n, kw), static_cast<int32_t>(0x5A5A5A5A));
  const int64_t num_panels = (n + bitmaps::cpu::kPanelRows - 1) / bitmaps::cpu::kPanelRows;
  const auto* b = reinterpret_cast<const int32_t*>(w.data());
  bitmaps::cpu::pack_panels(b, n, kw, k, 0, num_panels / 2, panels.data());
  bitmaps::cpu::pack_panels(b, n, kw, k, num_panels / 2, num_panels, panels.data());
  return panels;
}

// xnor_gemm_tile over the whole output, in one tile or in four (split rows, split panels).
void run_gemm(CpuPath path, const GemmArgs& g, bool split) {
  if (!split) return bitmaps::cpu::xnor_gemm_tile(path, g, 0, g.m, 0, g.n);
  const int64_t panels = (g.n + bitmaps::cpu::kPanelRows - 1) / bitmaps::cpu::kPanelRows;
  const int64_t mid_m = g.m / 2, mid_n = std::min(g.n, (panels / 2) * bitmaps::cpu::kPanelRows);
  for (auto [m0, m1] : {std::pair{int64_t{0}, mid_m}, std::pair{mid_m, g.m}}) {
    for (auto [n0, n1] : {std::pair{int64_t{0}, mid_n}, std::pair{mid_n, g.n}}) {
      if (m0 < m1 && n0 < n1) bitmaps::cpu::xnor_gemm_tile(path, g, m0, m1, n0, n1);
    }
  }
}

void check_gemm_int32(Checker& c, CpuPath path, std::mt19937& rng, int64_t m, int64_t n,
                      int64_t k, bool unsigned_a, bool split) {
  const int64_t kw = ref_words(k);
  std::vector<uint32_t> a = random_words(rng, m * kw), w = random_words(rng, n * kw);
  std::vector<int32_t> a_popcount(m, 0);
  for (int64_t i = 0; i < m; ++i) {
    // Signed activations may carry padding garbage (the kernels ignore it); unsigned ones come
    // from pack_positive, whose padding bits are 0 (the API requires it).
    if (unsigned_a) a[i * kw + kw - 1] &= ref_mask(k, kw - 1);
    for (int64_t q = 0; q < kw; ++q) a_popcount[i] += ref_popcount(a[i * kw + q]);
  }
  const std::vector<int32_t> panels = make_panels(w, n, k);
  std::vector<int32_t> out(m * n, static_cast<int32_t>(0xDEADBEEF));
  GemmArgs g;
  g.a = reinterpret_cast<const int32_t*>(a.data());
  g.panels = panels.data();
  g.m = m, g.n = n, g.kw = kw, g.k = k;
  g.output = GemmOutput::kDotInt32;
  g.out = out.data();
  g.unsigned_a = unsigned_a;
  g.a_popcount = unsigned_a ? a_popcount.data() : nullptr;
  run_gemm(path, g, split);
  const std::vector<int32_t> ref = ref_gemm(a, w, m, n, k, unsigned_a);
  for (int64_t i = 0; i < m * n; ++i) {
    c.expect(out[i] == ref[i],
             describe("xnor_gemm %s m=%lld n=%lld k=%lld split=%d at %lld: %d != %d",
                      unsigned_a ? "unsigned" : "signed", static_cast<long long>(m),
                      static_cast<long long>(n), static_cast<long long>(k), split,
                      static_cast<long long>(i), out[i], ref[i]));
  }
}

struct FusedCase {
  bool half_in, half_out, unsigned_a, bias, mean_scale, gelu = false;
};

// binary_linear as the adapters run it: pack (+ mean, + popcount), panels, GEMM with epilogue.
void check_fused(Checker& c, CpuPath path, std::mt19937& rng, int64_t m, int64_t n, int64_t k,
                 const FusedCase& fc) {
  const int64_t kw = ref_words(k);
  const float beta = fc.unsigned_a ? 0.25f : -0.5f, act_scale = 0.37f;
  const std::vector<float> x = random_activations(rng, m * k, beta);
  const Packed p = check_pack(c, path, x, fc.half_in, m, k, true, beta, fc.unsigned_a,
                              fc.mean_scale, fc.unsigned_a);
  std::vector<uint32_t> w = random_words(rng, n * kw);
  const std::vector<int32_t> panels = make_panels(w, n, k);
  std::uniform_real_distribution<float> uni(-2.0f, 2.0f);
  std::vector<float> w_scale(n), bias(n), row_scale(m);
  for (auto& v : w_scale) v = uni(rng) * 1e-2f;
  for (auto& v : bias) v = uni(rng);
  for (int64_t i = 0; i < m; ++i) row_scale[i] = fc.mean_scale ? p.mean[i] : act_scale;
  std::vector<float> out32(m * n, NAN);
  std::vector<uint16_t> out16(m * n, 0xFFFF);
  GemmArgs g;
  g.a = p.words.data();
  g.panels = panels.data();
  g.m = m, g.n = n, g.kw = kw, g.k = k;
  g.output = fc.half_out ? GemmOutput::kFloat16 : GemmOutput::kFloat32;
  g.out = fc.half_out ? static_cast<void*>(out16.data()) : static_cast<void*>(out32.data());
  g.row_scale = row_scale.data();
  g.col_scale = w_scale.data();
  g.bias = fc.bias ? bias.data() : nullptr;
  g.unsigned_a = fc.unsigned_a;
  g.a_popcount = fc.unsigned_a ? p.popcount.data() : nullptr;
  g.gelu = fc.gelu;
  run_gemm(path, g, false);
  std::vector<uint32_t> a(p.words.begin(), p.words.end());
  const std::vector<int32_t> dot = ref_gemm(a, w, m, n, k, fc.unsigned_a);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float y = ref_epilogue(dot[i * n + j], row_scale[i], w_scale[j],
                             fc.bias ? &bias[j] : nullptr);
      // The scalar definition every vector path must reproduce bit for bit (AVX-512's GELU: below).
      const float y_in = y;
      if (fc.gelu) y = bitmaps::cpu::detail::gelu(y);
      uint32_t got, want;
      if (fc.half_out) {
        got = out16[i * n + j], want = ref_float_to_half(y);
      } else {
        std::memcpy(&got, &out32[i * n + j], 4);
        std::memcpy(&want, &y, 4);
      }
      // AVX-512's GELU (FMAs, a refined reciprocal) is the one epilogue allowed to differ from
      // the scalar definition: within kGeluAvx512Tol max(1, |y before GELU|) (one binary16
      // rounding step more for float16 outputs).
      bool same = got == want;
      if (!same && fc.gelu && path == CpuPath::kAvx512) {
        float g32;
        if (fc.half_out) {
          g32 = ref_half_to_float(static_cast<uint16_t>(got));
        } else {
          std::memcpy(&g32, &got, 4);
        }
        const double scale = std::max(1.0, std::fabs(double(y_in)));
        const double tol = fc.half_out ? std::ldexp(scale, -10) : kGeluAvx512Tol * scale;
        same = std::fabs(double(g32) - double(y)) <= tol;
      }
      c.expect(same,
               describe("binary_linear in=%s out=%s %s bias=%d gelu=%d scale=%s m=%lld n=%lld "
                        "k=%lld at [%lld, %lld]: %08x != %08x",
                        fc.half_in ? "f16" : "f32", fc.half_out ? "f16" : "f32",
                        fc.unsigned_a ? "unsigned" : "signed", fc.bias, fc.gelu,
                        fc.mean_scale ? "mean" : "fixed", static_cast<long long>(m),
                        static_cast<long long>(n), static_cast<long long>(k),
                        static_cast<long long>(i), static_cast<long long>(j), got, want));
    }
  }
}

// A pool of real threads for the drivers of cpu_binary_linear.h.
bitmaps::cpu::Parallel thread_pool(int64_t max_workers) {
  bitmaps::cpu::Parallel p;
  p.max_workers = max_workers;
  p.run = [](int64_t workers, const std::function<void(int64_t)>& body) {
    std::vector<std::thread> pool;
    for (int64_t w = 1; w < workers; ++w) pool.emplace_back([&body, w] { body(w); });
    body(0);
    for (auto& t : pool) t.join();
  };
  return p;
}

// ffn_bit_exact's GELU bounds (the table without erfc where they decide) against erfc for every
// dot product of every column: the same bit, also at extreme scales, biases and thresholds.
void check_ffn_bounds(Checker& c, const bitmaps::cpu::BinaryLinearArgs& first,
                      const bitmaps::cpu::BinaryLinearArgs& second) {
  const int64_t step = first.act_unsigned ? 1 : 2;
  int64_t wrong = 0;
  for (int64_t col = 0; col < first.n; ++col) {
    for (int64_t d = -first.k; d <= first.k; d += step) {
      const auto dot = static_cast<int32_t>(d);
      wrong += bitmaps::cpu::ffn_bit_exact(first, second, col, dot, true) !=
               bitmaps::cpu::ffn_bit_exact(first, second, col, dot, false);
    }
  }
  c.expect(wrong == 0, describe("ffn_bit_exact: GELU bounds change %lld bits (k=%lld n=%lld "
                                "beta2=%g)", static_cast<long long>(wrong),
                                static_cast<long long>(first.k), static_cast<long long>(first.n),
                                second.act_threshold));
}

// The bounds on columns whose y sweeps GELU's whole range and far beyond, thresholds on both
// sides of 0, inside GELU's dip and below its minimum, both activation kinds.
void check_ffn_bounds_extremes(Checker& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> ws(64), bias(64);
  for (size_t i = 0; i < ws.size(); ++i) {
    ws[i] = uni(rng) * std::pow(10.0f, static_cast<float>(i % 9) - 4.0f);  // 1e-4 .. 1e4
    bias[i] = uni(rng) * std::pow(10.0f, static_cast<float>(i % 5) - 2.0f);
  }
  for (const float beta : {0.0f, 1e-30f, -1e-30f, 0.05f, -0.05f, -0.1699f, -0.17f, -0.2f, 3.0f,
                           -3.0e38f, 3.0e38f}) {
    for (const bool unsigned2 : {false, true}) {
      bitmaps::cpu::BinaryLinearArgs first, second;
      first.k = 300, first.n = 64, first.act_scale = 0.37f, first.gelu = true;
      first.w_scale = ws.data(), first.bias = bias.data();
      second.act_threshold = beta, second.act_unsigned = unsigned2;
      check_ffn_bounds(c, first, second);
    }
  }
}

struct FfnCase {
  int64_t m, k, hidden, n;
  bool unsigned1, unsigned2, gelu, bias;
  float beta2;
};

// binary_ffn (cpu_binary_linear.h) with its table (the first GEMM writing the second's input bits
// from ranges of dot products) against the reference chain with GELU in float64 (the table's
// definition), and without its table (binary_linear twice) against the chain with this path's
// float32 GELU; bit for bit. act_scale 0 and float16 inputs get no table.
void check_binary_ffn(Checker& c, CpuPath path, std::mt19937& rng, const FfnCase& f) {
  using bitmaps::cpu::BinaryLinearArgs;
  const float beta1 = f.unsigned1 ? 0.25f : -0.5f, s1 = 0.37f, s2 = 0.61f;
  const std::vector<float> x = random_activations(rng, f.m * f.k, beta1);
  const int64_t kw1 = ref_words(f.k), kw2 = ref_words(f.hidden);
  const std::vector<uint32_t> w1 = random_words(rng, f.hidden * kw1), w2 = random_words(rng, f.n * kw2);
  const std::vector<int32_t> panels1 = make_panels(w1, f.hidden, f.k);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> ws1(f.hidden), b1(f.hidden), ws2(f.n), b2(f.n);
  // |dot| ~ sqrt(k): scales that spread the first output over GELU's whole shape, tails included
  const float spread = 6.0f / (s1 * std::sqrt(static_cast<float>(f.k)));
  for (auto& v : ws1) v = uni(rng) * spread;
  for (auto& v : b1) v = uni(rng);
  for (auto& v : ws2) v = uni(rng) * 0.05f;
  for (auto& v : b2) v = uni(rng);

  // The reference chains: the first linear, its GELU (float64 / this path's), the second's bits.
  const RefPack p1 = ref_pack(x, f.m, f.k, true, beta1, f.unsigned1);
  const std::vector<int32_t> dot1 = ref_gemm(p1.words, w1, f.m, f.hidden, f.k, f.unsigned1);
  std::vector<float> h(f.m * f.hidden), h_path(f.m * f.hidden);
  for (int64_t i = 0; i < f.m * f.hidden; ++i) {
    h[i] = ref_epilogue(dot1[i], s1, ws1[i % f.hidden], f.bias ? &b1[i % f.hidden] : nullptr);
  }
  h_path = h;
  if (f.gelu) bitmaps::cpu::gelu_f32(path, h.data(), f.m * f.hidden, h_path.data());
  std::vector<uint32_t> bits_exact(f.m * kw2, 0);
  for (int64_t i = 0; i < f.m * f.hidden; ++i) {
    const double y = h[i], beta = f.beta2;
    double v = y;
    if (f.gelu) {  // 0 where a float32 GELU is: 1 + erf(y / sqrt 2) rounds to 0 (erfc < 2^-25)
      const double e = std::erfc(-y / std::sqrt(2.0));
      v = e < 0x1p-25 ? 0.0 : 0.5 * y * e;
    }
    if (f.unsigned2 ? v - beta > 0.0 : v - beta < 0.0) {
      const int64_t r = i / f.hidden, col = i % f.hidden;
      bits_exact[r * kw2 + col / 32] |= uint32_t{1} << (col % 32);
    }
  }
  const RefPack p2 = ref_pack(h_path, f.m, f.hidden, true, f.beta2, f.unsigned2);
  const std::vector<int32_t> dot2_exact = ref_gemm(bits_exact, w2, f.m, f.n, f.hidden, f.unsigned2);
  const std::vector<int32_t> dot2_path = ref_gemm(p2.words, w2, f.m, f.n, f.hidden, f.unsigned2);
  int64_t differ = 0;
  for (size_t i = 0; i < bits_exact.size(); ++i) differ += bits_exact[i] != p2.words[i];

  bitmaps::cpu::BinaryFfnArgs a;
  BinaryLinearArgs& first = a.first;
  first.x = x.data();
  first.m = f.m, first.k = f.k, first.n = f.hidden;
  first.panels = panels1.data();
  first.w_scale = ws1.data();
  first.bias = f.bias ? b1.data() : nullptr;
  first.act_threshold = beta1, first.act_scale = s1, first.act_unsigned = f.unsigned1;
  first.gelu = f.gelu;
  BinaryLinearArgs& second = a.second;
  second.k = f.hidden, second.n = f.n;
  second.w = reinterpret_cast<const int32_t*>(w2.data());  // packed rows: laid out per call
  second.w_scale = ws2.data();
  second.bias = f.bias ? b2.data() : nullptr;
  second.act_threshold = f.beta2, second.act_scale = s2, second.act_unsigned = f.unsigned2;

  bitmaps::cpu::FfnBitTable table;
  const bool shortcut = bitmaps::cpu::ffn_bit_table(first, second, &table);
  check_ffn_bounds(c, first, second);
  const std::string what = describe(
      "binary_ffn m=%lld k=%lld hidden=%lld n=%lld %s->%s gelu=%d bias=%d beta2=%g",
      static_cast<long long>(f.m), static_cast<long long>(f.k), static_cast<long long>(f.hidden),
      static_cast<long long>(f.n), f.unsigned1 ? "unsigned" : "signed",
      f.unsigned2 ? "unsigned" : "signed", f.gelu, f.bias, f.beta2);
  c.expect(shortcut, what + ": no table");
  for (const bool use_table : {true, false}) {
    std::vector<float> y(f.m * f.n, NAN);
    a.bit_runs = -1;
    if (use_table && shortcut) a.use(table);
    a.y = y.data();
    bitmaps::cpu::binary_ffn(path, a, thread_pool(3));
    for (int64_t i = 0; i < f.m * f.n; ++i) {
      const int32_t dot2 = use_table ? dot2_exact[i] : dot2_path[i];
      const float want = ref_epilogue(dot2, s2, ws2[i % f.n], f.bias ? &b2[i % f.n] : nullptr);
      uint32_t got_bits, want_bits;
      std::memcpy(&got_bits, &y[i], 4);
      std::memcpy(&want_bits, &want, 4);
      if (got_bits != want_bits) {
        c.expect(false, what + describe(" table=%d at %lld: %.9g != %.9g", use_table,
                                        static_cast<long long>(i), y[i], want));
        break;
      }
      if (i + 1 == f.m * f.n) c.expect(true, what);
    }
  }
  // Only GELU's far tail and values within a rounding of beta2 may differ between the two.
  c.expect(f.gelu || differ == 0, what + describe(": %lld words of bits differ without GELU",
                                                  static_cast<long long>(differ)));
  BinaryLinearArgs mean_scale = first, half = first;
  mean_scale.act_scale = 0.0f;
  half.x_half = true;
  c.expect(!bitmaps::cpu::ffn_bit_table(mean_scale, second, &table),
           what + ": a table for a per-row mean scale");
  c.expect(!bitmaps::cpu::ffn_bit_table(half, second, &table),
           what + ": a table for float16 input");
}

// ----------------------------------------------------------------------------- attention

constexpr double kAttentionAtol = 4e-6;

void check_attention(Checker& c, CpuPath path, std::mt19937& rng) {
  struct Case {
    int64_t b, s, t, h, d, dv;
    int bias;  // 0: none, 1: [b, 1, 1, t], 2: [b, 1, s, t], 3: [1, h, s, t]
  };
  // keys and value columns past a multiple of a kernel's block width by up to its width minus
  // one: 16 (AVX2, NEON; 13-15 were left unwritten on NEON) and 64 (AVX-512; 49-63 were)
  const Case cases[] = {{1, 20, 20, 3, 64, 64, 2}, {2, 7, 9, 2, 17, 17, 1}, {1, 5, 33, 4, 32, 20, 3},
                        {2, 3, 1, 1, 1, 1, 0},     {1, 9, 16, 2, 16, 48, 2}, {1, 6, 13, 2, 16, 31, 2},
                        {1, 5, 30, 2, 8, 15, 1},   {1, 4, 57, 1, 31, 63, 2}, {1, 3, 127, 2, 8, 47, 3}};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Case& k : cases) {
    const int64_t hd = k.h * k.d, hv = k.h * k.dv;
    std::vector<float> q(k.b * k.s * hd), key(k.b * k.t * hd), v(k.b * k.t * hv);
    for (auto* buf : {&q, &key, &v}) {
      for (float& x : *buf) x = normal(rng);
    }
    const int64_t bb = k.bias == 3 ? 1 : k.b, bh = k.bias == 3 ? k.h : 1;
    const int64_t bs = k.bias >= 2 ? k.s : 1;
    std::vector<float> bias(bb * bh * bs * k.t);
    for (size_t i = 0; i < bias.size(); ++i) {
      bias[i] = (i % k.t) % 3 == 2 ? -3.0e38f : normal(rng);
    }
    bitmaps::cpu::AttentionArgs a;
    a.q = q.data();
    a.k = key.data();
    a.v = v.data();
    if (k.bias != 0) {
      a.bias = bias.data();
      a.bias_stride[2] = bs == 1 ? 0 : k.t;
      a.bias_stride[1] = bh == 1 ? 0 : bs * k.t;
      a.bias_stride[0] = bb == 1 ? 0 : bh * bs * k.t;
    }
    a.batch = k.b;
    a.q_len = k.s;
    a.kv_len = k.t;
    a.heads = k.h;
    a.head_dim = k.d;
    a.v_head_dim = k.dv;
    a.scale = 1.0f / std::sqrt(static_cast<float>(k.d));
    std::vector<float> out(k.b * k.s * hv, std::nanf(""));
    a.out = out.data();
    bitmaps::cpu::attention(path, a, bitmaps::cpu::Parallel{});
    double worst = 0.0;
    for (int64_t b = 0; b < k.b; ++b) {
      for (int64_t h = 0; h < k.h; ++h) {
        for (int64_t s = 0; s < k.s; ++s) {
          std::vector<double> p(k.t);
          double top = -1e300, sum = 0.0;
          for (int64_t t = 0; t < k.t; ++t) {
            double dot = 0.0;
            for (int64_t d = 0; d < k.d; ++d) {
              dot += double(q[(b * k.s + s) * hd + h * k.d + d]) * key[(b * k.t + t) * hd + h * k.d + d];
            }
            p[t] = dot * a.scale;
            if (a.bias != nullptr) {
              p[t] += a.bias[b * a.bias_stride[0] + h * a.bias_stride[1] + s * a.bias_stride[2] + t];
            }
            top = std::max(top, p[t]);
          }
          for (double& x : p) sum += (x = std::exp(x - top));
          for (int64_t d = 0; d < k.dv; ++d) {
            double y = 0.0;
            for (int64_t t = 0; t < k.t; ++t) y += p[t] / sum * v[(b * k.t + t) * hv + h * k.dv + d];
            const double err = std::fabs(y - out[(b * k.s + s) * hv + h * k.dv + d]);
            worst = std::isnan(err) ? INFINITY : std::max(worst, err);
          }
        }
      }
    }
    c.expect(worst <= kAttentionAtol,
             describe("attention b=%lld s=%lld t=%lld h=%lld d=%lld dv=%lld bias=%d: max error %.3g",
                      static_cast<long long>(k.b), static_cast<long long>(k.s),
                      static_cast<long long>(k.t), static_cast<long long>(k.h),
                      static_cast<long long>(k.d), static_cast<long long>(k.dv), k.bias, worst));
  }
}

// ----------------------------------------------------------------------------- int8 attention

// The int8 scheme of cpu_attention.h's header comment, written from that comment (the level from
// exp_level's definition) and none of the kernels' code: integer sums in int32, every other step
// one float32 operation in the comment's order (the harness is built with -ffp-contract=off, so
// none is fused into an FMA). Every path must give its bits.

// x[i * stride], i < n, rounded to x * (127 / max|x|), ties to even, into out; returns the scale
// max|x| / 127 that the integers stand for (a zero row: all 0, scale 1).
float ref_round_int8(const float* x, int64_t n, int64_t stride, int32_t* out) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i * stride]));
  if (amax == 0.0f) {
    std::fill_n(out, n, 0);
    return 1.0f;
  }
  const float mul = 127.0f / amax;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<int32_t>(std::nearbyint(x[i * stride] * mul));
  }
  return amax / 127.0f;
}

constexpr float kRefLog2e = 1.44269504088896341f, kRefLn2 = 0.693147180559945309f;

// exp(x) * 127 as cpu_attention_int8.cpp's exp_level makes it before its last rounding: x >= -6,
// 2^n (n = x log2 e to nearest even, 2^n here by ldexp) times a Taylor polynomial of r to r^4.
float ref_exp_times_127(float x) {
  x = std::max(x, -6.0f);
  const float n = std::nearbyint(x * kRefLog2e);
  const float r = x - n * kRefLn2;
  float p = 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_n = std::ldexp(1.0f, static_cast<int>(n));
  return p * two_n * 127.0f;
}

// The probability level (0..127) of x = score - row max: the above to nearest even.
int32_t ref_exp_level(float x) {
  return static_cast<int32_t>(std::nearbyint(ref_exp_times_127(x)));
}

// Q, K or V as the reference reads it: the width values of head h at position pos of batch b.
struct Int8Operand {
  float* data;
  int64_t len, row, width;  // positions per batch, floats from one position to the next, per head
  float* at(int64_t b, int64_t pos, int64_t h) const {
    return data + (b * len + pos) * row + h * width;
  }
};

// Head h of batch b of the scheme into out [batch, q_len, heads * v_width]; bias null or row-major
// of bias_dims, each of its first three dimensions 1 (broadcast) or full.
void ref_int8_head(const Int8Operand& q, const Int8Operand& k, const Int8Operand& v,
                   const float* bias, const int64_t* bias_dims, int64_t b, int64_t h,
                   int64_t heads, float scale, float* out) {
  const int64_t S = q.len, T = k.len, D = q.width, Dv = v.width;
  std::vector<int32_t> q8(D), k8(T * D), v8(Dv * T), p(S * T);  // v8: column-major
  std::vector<float> sk(T), sv(Dv), total(S), column(T);
  std::vector<bool> attended(T, false);  // some row's level > 0
  for (int64_t t = 0; t < T; ++t) sk[t] = ref_round_int8(k.at(b, t, h), D, 1, &k8[t * D]);
  for (int64_t s = 0; s < S; ++s) {
    const float sq = ref_round_int8(q.at(b, s, h), D, 1, q8.data());
    const int64_t* bd = bias_dims;
    const float* bias_row =
        bias == nullptr ? nullptr
                        : bias + (((bd[0] == 1 ? 0 : b) * bd[1] + (bd[1] == 1 ? 0 : h)) * bd[2] +
                                  (bd[2] == 1 ? 0 : s)) * bd[3];
    std::vector<float> score(T);
    float top = -INFINITY;
    for (int64_t t = 0; t < T; ++t) {
      int32_t dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += q8[d] * k8[t * D + d];
      float y = static_cast<float>(dot) * sq;
      y = y * (sk[t] * scale);
      if (bias_row != nullptr) y = y + bias_row[t];
      score[t] = y;
      top = std::max(top, y);
    }
    int32_t sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      p[s * T + t] = ref_exp_level(score[t] - top);
      sum += p[s * T + t];
      attended[t] = attended[t] || p[s * T + t] > 0;
    }
    total[s] = static_cast<float>(sum);
  }
  // V's columns over the attended keys: the others count as 0 (in the scale and in v8)
  for (int64_t d = 0; d < Dv; ++d) {
    for (int64_t t = 0; t < T; ++t) column[t] = attended[t] ? v.at(b, t, h)[d] : 0.0f;
    sv[d] = ref_round_int8(column.data(), T, 1, &v8[d * T]);
  }
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t d = 0; d < Dv; ++d) {
      int32_t acc = 0;
      for (int64_t t = 0; t < T; ++t) acc += p[s * T + t] * v8[d * T + t];
      const float y = static_cast<float>(acc) * sv[d];
      out[((b * S + s) * heads + h) * Dv + d] = y / total[s];
    }
  }
}

void ref_int8_attention(const Int8Operand& q, const Int8Operand& k, const Int8Operand& v,
                        const float* bias, const int64_t* bias_dims, int64_t batch,
                        int64_t heads, float scale, float* out) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      ref_int8_head(q, k, v, bias, bias_dims, b, h, heads, scale, out);
    }
  }
}

struct Int8Case {
  int64_t b, s, t, h, d, dv;
  int bias;     // 0: none, [b, 1, 1, t] with keys masked by 1: -1e30, 2: lowest(); 3: [b, h, s, t]
  int layout;   // 0: rows of the heads alone, 1: rows with padding (strides), 2: packed QKV
  bool grid;    // halves of integers, max |row| (|column| of V) 127: roundings of exact ties
  bool zeros;   // a zero row of Q, of K and of V, a zero column of V (scale 1)
  float spread; // the attention scale times sqrt(d): the scores' spread
  int threads;  // 0: no pool
};

// Q, K and V of a case in one buffer: three regions (layouts 0, 1; the padding 1e3, which a
// read by mistake would make a row's maximum) or one packed [b, s, 3 * h * d] tensor.
struct Int8Inputs {
  std::vector<float> buf;
  Int8Operand q, k, v;
};

Int8Inputs int8_inputs(std::mt19937& rng, const Int8Case& c) {
  const int64_t hd = c.h * c.d, hv = c.h * c.dv;
  Int8Inputs in;
  if (c.layout == 2) {
    in.buf.assign(c.b * c.s * 3 * hd, 0.0f);
    in.q = {in.buf.data(), c.s, 3 * hd, c.d};
    in.k = {in.buf.data() + hd, c.t, 3 * hd, c.d};
    in.v = {in.buf.data() + 2 * hd, c.t, 3 * hd, c.dv};
  } else {
    const int64_t pad = c.layout == 1 ? 3 : 0;
    in.buf.assign(c.b * (c.s * (hd + pad) + c.t * (hd + 2 * pad) + c.t * (hv + pad)), 1e3f);
    in.q = {in.buf.data(), c.s, hd + pad, c.d};
    in.k = {in.q.data + c.b * c.s * in.q.row, c.t, hd + 2 * pad, c.d};
    in.v = {in.k.data + c.b * c.t * in.k.row, c.t, hv + pad, c.dv};
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> half(-254, 254);
  for (const Int8Operand* x : {&in.q, &in.k, &in.v}) {
    for (int64_t b = 0; b < c.b; ++b) {
      for (int64_t pos = 0; pos < x->len; ++pos) {
        for (int64_t h = 0; h < c.h; ++h) {
          float* row = x->at(b, pos, h);
          for (int64_t i = 0; i < x->width; ++i) row[i] = c.grid ? half(rng) * 0.5f : normal(rng);
          if (c.grid && x != &in.v) row[0] = pos % 2 ? -127.0f : 127.0f;  // the row's maximum
          if (c.grid && x == &in.v && pos == 0) {  // every column's maximum
            for (int64_t i = 0; i < x->width; ++i) row[i] = i % 2 ? -127.0f : 127.0f;
          }
        }
      }
    }
  }
  if (c.zeros) {
    std::fill_n(in.q.at(c.b - 1, c.s - 1, c.h - 1), c.d, 0.0f);
    std::fill_n(in.k.at(0, c.t - 1, 0), c.d, 0.0f);
    std::fill_n(in.v.at(0, 0, c.h - 1), c.dv, 0.0f);
    for (int64_t t = 0; t < c.t; ++t) in.v.at(c.b - 1, t, 0)[c.dv - 1] = 0.0f;
  }
  return in;
}

// Empty when out and want hold the same bits, else how many floats differ and the first.
std::string bit_difference(const std::vector<float>& out, const std::vector<float>& want) {
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (std::memcmp(&out[i], &want[i], sizeof(float)) == 0) continue;
    if (differ++ == 0) first = static_cast<int64_t>(i);
  }
  if (differ == 0) return "";
  return describe("%lld of %zu floats differ, first [%lld]: %.9g, reference %.9g",
                  static_cast<long long>(differ), out.size(), static_cast<long long>(first),
                  out[first], want[first]);
}

// The int8 scheme (AttentionArgs::int8) on this path against ref_int8_attention, bit for bit,
// output and a guard past it (NaN before the call) compared whole.
void check_attention_int8(Checker& c, CpuPath path, std::mt19937& rng) {
  const Int8Case cases[] = {
      {1, 1, 1, 1, 1, 1, 0, 0, false, false, 1.0f, 0},
      {2, 3, 5, 2, 5, 9, 1, 0, false, true, 1.0f, 0},
      {1, 5, 3, 3, 1, 9, 3, 1, false, false, 2.0f, 0},
      {1, 6, 6, 2, 5, 5, 2, 2, true, true, 1.0f, 0},
      {2, 16, 16, 2, 32, 32, 2, 2, false, false, 1.0f, 0},
      {1, 17, 33, 3, 64, 9, 2, 1, true, true, 1.0f, 0},
      {2, 33, 17, 1, 72, 72, 3, 0, true, false, 1.0f, 0},
      {1, 128, 128, 2, 64, 64, 1, 2, false, true, 3.0f, 3},
      {1, 3, 128, 1, 72, 9, 0, 1, false, false, 1.0f, 0},
      {2, 128, 1, 2, 5, 5, 3, 1, false, true, 1.0f, 0},
      {1, 5, 17, 3, 32, 9, 1, 0, true, false, 1.0f, 0},
      {2, 1, 33, 2, 64, 64, 0, 1, false, true, 1.0f, 2},
      {1, 17, 17, 3, 72, 72, 3, 2, true, true, 1.0f, 0},
  };
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int64_t kGuard = 8;
  for (const Int8Case& k : cases) {
    Int8Inputs in = int8_inputs(rng, k);
    const int64_t dims[4] = {k.b, k.bias == 3 ? k.h : 1, k.bias == 3 ? k.s : 1, k.t};
    std::vector<float> bias(dims[0] * dims[1] * dims[2] * dims[3]);
    for (size_t i = 0; i < bias.size(); ++i) {
      const bool masked = k.bias != 3 && (i % k.t) % 3 == 2;
      bias[i] = !masked ? normal(rng)
                : k.bias == 1 ? -1e30f : std::numeric_limits<float>::lowest();
    }
    // a masked key's value leaves V's column scales alone: large values there would change them
    for (int64_t b = 0; b < k.b && (k.bias == 1 || k.bias == 2); ++b) {
      for (int64_t t = 2; t < k.t; t += 3) {
        for (int64_t h = 0; h < k.h; ++h) {
          for (int64_t i = 0; i < k.dv; ++i) in.v.at(b, t, h)[i] *= 100.0f;
        }
      }
    }
    bitmaps::cpu::AttentionArgs a;
    if (k.layout == 2) {
      a.set_packed(in.buf.data(), k.b, k.s, k.h, k.d);
    } else {
      a.q = in.q.data, a.k = in.k.data, a.v = in.v.data;
      a.batch = k.b, a.q_len = k.s, a.kv_len = k.t, a.heads = k.h;
      a.head_dim = k.d, a.v_head_dim = k.dv;
      if (k.layout == 1) a.q_stride = in.q.row, a.k_stride = in.k.row, a.v_stride = in.v.row;
    }
    if (k.bias != 0) a.set_bias(bias.data(), dims);
    a.scale = k.spread / std::sqrt(static_cast<float>(k.d)) / (k.grid ? 4096.0f : 1.0f);
    a.int8 = true;
    const int64_t n = k.b * k.s * k.h * k.dv;
    std::vector<float> out(n + kGuard, std::nanf("")), want(out);
    a.out = out.data();
    bitmaps::cpu::Parallel pool;
    if (k.threads != 0) pool = thread_pool(k.threads);
    bitmaps::cpu::attention(path, a, pool);
    ref_int8_attention(in.q, in.k, in.v, k.bias != 0 ? bias.data() : nullptr, dims, k.b, k.h,
                       a.scale, want.data());
    const std::string diff = bit_difference(out, want);
    c.expect(diff.empty(),
             describe("int8 attention b=%lld s=%lld t=%lld h=%lld d=%lld dv=%lld bias=%d "
                      "layout=%d: ", static_cast<long long>(k.b), static_cast<long long>(k.s),
                      static_cast<long long>(k.t), static_cast<long long>(k.h),
                      static_cast<long long>(k.d), static_cast<long long>(k.dv), k.bias,
                      k.layout) + diff);
  }
}

// Values of x = score - row max that random scores rarely reach: those whose exp(x) * 127 the
// level function finds exactly halfway between two levels (searched among the floats near where
// each must lie; ties go to even), a sweep of [-6.5, 0], -6 and below.
std::vector<float> int8_level_probes() {
  std::vector<float> x;
  const auto walk = [&x](double centre, const auto& halfway) {
    float down = static_cast<float>(centre), up = down;
    for (int i = 0; i < 64; ++i) {
      if (halfway(down)) return x.push_back(down);
      if (halfway(up)) return x.push_back(up);
      down = std::nextafter(down, -7.0f);
      up = std::nextafter(up, 0.0f);
    }
  };
  for (int m = 0; m < 127; ++m) {
    walk(std::log((m + 0.5) / 127.0), [m](float y) { return ref_exp_times_127(y) == m + 0.5f; });
  }
  for (int i = 0; i <= 130; ++i) x.push_back(-0.05f * static_cast<float>(i));
  for (float y : {-6.0f, std::nextafter(-6.0f, 0.0f), -6.0001f, -50.0f, -1e30f,
                  std::numeric_limits<float>::lowest(), -INFINITY}) {
    x.push_back(y);
  }
  return x;
}

// The level function on the probes, through the whole kernel: a zero query (each score is its
// bias; key 0's bias 0 is every row's maximum) and V the identity (out[s, d] = p[s, d] / the
// row's sum), so that each level shows in the output; bit for bit against ref_int8_attention.
void check_attention_int8_levels(Checker& c, CpuPath path) {
  const std::vector<float> probes = int8_level_probes();
  constexpr int64_t T = 16;
  const int64_t S = (static_cast<int64_t>(probes.size()) + T - 2) / (T - 1);
  std::vector<float> q(S, 0.0f), k(T, 1.0f), v(T * T, 0.0f), bias(S * T, -1e30f);
  for (int64_t t = 0; t < T; ++t) v[t * T + t] = 1.0f;
  for (int64_t s = 0; s < S; ++s) bias[s * T] = 0.0f;
  for (size_t i = 0; i < probes.size(); ++i) bias[i / (T - 1) * T + 1 + i % (T - 1)] = probes[i];
  bitmaps::cpu::AttentionArgs a;
  a.q = q.data(), a.k = k.data(), a.v = v.data();
  a.batch = 1, a.q_len = S, a.kv_len = T, a.heads = 1, a.head_dim = 1, a.v_head_dim = T;
  const int64_t dims[4] = {1, 1, S, T};
  a.set_bias(bias.data(), dims);
  a.int8 = true;
  std::vector<float> out(S * T + 8, std::nanf("")), want(out);
  a.out = out.data();
  bitmaps::cpu::attention(path, a, bitmaps::cpu::Parallel{});
  ref_int8_attention({q.data(), S, 1, 1}, {k.data(), T, 1, 1}, {v.data(), T, T, T}, bias.data(),
                     dims, 1, 1, 1.0f, want.data());
  const std::string diff = bit_difference(out, want);
  c.expect(diff.empty(), describe("int8 attention levels (%zu probes): ", probes.size()) + diff);
}

// ----------------------------------------------------------------------------- add + layer norm

constexpr double kLayerNormAtol = 1e-5;

void check_layer_norm(Checker& c, CpuPath path, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t n : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{100}, int64_t{768}}) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool with_skip = variant & 1, with_beta = variant & 2;
      const int64_t rows = 5;
      std::vector<float> x(rows * n), skip(rows * n), gamma(n), beta(n), out(rows * n, NAN);
      for (float& v : x) v = 3.0f * normal(rng) + 1.0f;
      for (auto* buf : {&skip, &gamma, &beta}) {
        for (float& v : *buf) v = normal(rng);
      }
      bitmaps::cpu::AddLayerNormArgs a;
      a.x = x.data();
      a.skip = with_skip ? skip.data() : nullptr;
      a.gamma = gamma.data();
      a.beta = with_beta ? beta.data() : nullptr;
      a.rows = rows;
      a.n = n;
      a.epsilon = 1e-5f;
      a.out = out.data();
      bitmaps::cpu::add_layer_norm(path, a, bitmaps::cpu::Parallel{});
      double worst = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        double mean = 0.0, var = 0.0;
        std::vector<double> s(n);
        for (int64_t i = 0; i < n; ++i) {
          s[i] = double(x[r * n + i]) + (with_skip ? skip[r * n + i] : 0.0f);
          mean += s[i];
        }
        mean /= double(n);
        for (double v : s) var += (v - mean) * (v - mean);
        var /= double(n);
        for (int64_t i = 0; i < n; ++i) {
          const double y = (s[i] - mean) / std::sqrt(var + 1e-5) * gamma[i] + (with_beta ? beta[i] : 0.0f);
          const double err = std::fabs(y - out[r * n + i]);
          worst = std::isnan(err) ? INFINITY : std::max(worst, err);
        }
      }
      c.expect(worst <= kLayerNormAtol,
               describe("add_layer_norm n=%lld skip=%d beta=%d: max error %.3g",
                        static_cast<long long>(n), int(with_skip), int(with_beta), worst));
    }
  }
}

void check_embed_layer_norm(Checker& c, CpuPath path, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto [n, block] : {std::pair{int64_t{2}, int64_t{2}}, std::pair{int64_t{34}, int64_t{2}},
                          std::pair{int64_t{96}, int64_t{32}}, std::pair{int64_t{64}, int64_t{64}},
                          std::pair{int64_t{768}, int64_t{64}}}) {
    for (int count : {2, 3}) {
      const int64_t batch = 3, seq = 5;
      const int64_t vocab[3] = {11, 2, 7};
      std::vector<uint8_t> data[3];
      std::vector<float> scale[3];
      std::vector<int64_t> ids[3];
      bitmaps::cpu::EmbedLayerNormArgs a;
      a.count = count;
      a.lead_dims = {batch, seq};
      a.n = n;
      a.block = block;
      for (int t = 0; t < count; ++t) {
        data[t].resize(vocab[t] * n / 2);
        for (auto& b : data[t]) b = static_cast<uint8_t>(rng());
        scale[t].resize(vocab[t] * n / block);
        for (float& v : scale[t]) v = 0.1f * normal(rng);
        // lookup 0: [batch, seq] with negative indices; the last: [1, seq] (position ids)
        const bool broadcast = t == count - 1;
        ids[t].resize(broadcast ? seq : batch * seq);
        for (auto& v : ids[t]) v = static_cast<int64_t>(rng() % (2 * vocab[t])) - vocab[t];
        a.lookups[t].ids = ids[t].data();
        a.lookups[t].ids_dims = {broadcast ? 1 : batch, seq};
        a.lookups[t].data = data[t].data();
        a.lookups[t].scale = scale[t].data();
        a.lookups[t].rows = vocab[t];
        c.expect(bitmaps::cpu::check_embedding_ids(a.lookups[t]).empty(),
                 describe("check_embedding_ids refused indices in range (lookup %d)", t));
      }
      std::vector<float> gamma(n), beta(n), out(batch * seq * n, NAN);
      for (float& v : gamma) v = normal(rng);
      for (float& v : beta) v = normal(rng);
      a.gamma = gamma.data();
      a.beta = beta.data();
      a.epsilon = 1e-12f;
      a.out = out.data();
      bitmaps::cpu::embed_layer_norm(path, a, bitmaps::cpu::Parallel{});
      const auto value = [&](int t, int64_t id, int64_t j) {
        const int64_t v = id < 0 ? id + vocab[t] : id;
        const uint8_t byte = data[t][v * (n / 2) + j / 2];
        const int q = ((j % 2) != 0 ? byte >> 4 : byte & 15) - 8;
        return static_cast<float>(q) * scale[t][v * (n / block) + j / block];
      };
      double worst = 0.0;
      for (int64_t r = 0; r < batch * seq; ++r) {
        std::vector<double> s(n);
        double mean = 0.0, var = 0.0;
        for (int64_t j = 0; j < n; ++j) {
          float x = value(0, ids[0][r], j);  // float32 sums in the graph's order
          for (int t = 1; t + 1 < count; ++t) x = x + value(t, ids[t][r], j);
          const float last = value(count - 1, ids[count - 1][r % seq], j);
          s[j] = static_cast<double>(x + last);
          mean += s[j];
        }
        mean /= double(n);
        for (double v : s) var += (v - mean) * (v - mean);
        var /= double(n);
        for (int64_t j = 0; j < n; ++j) {
          const double y = (s[j] - mean) / std::sqrt(var + 1e-12) * gamma[j] + beta[j];
          const double err = std::fabs(y - out[r * n + j]);
          worst = std::isnan(err) ? INFINITY : std::max(worst, err);
        }
      }
      c.expect(worst <= kLayerNormAtol,
               describe("embed_layer_norm n=%lld block=%lld lookups=%d: max error %.3g",
                        static_cast<long long>(n), static_cast<long long>(block), count, worst));
    }
  }
  bitmaps::cpu::EmbeddingLookup bad;
  const int32_t outside[3] = {0, -4, 3};  // int32 indices; -4 is outside [-3, 3)
  bad.ids = outside;
  bad.ids_int32 = true;
  bad.ids_dims = {3};
  bad.rows = 3;
  const std::string message = bitmaps::cpu::check_embedding_ids(bad);
  c.expect(message == "holds -4 at position 1, outside [-3, 3)",
           describe("check_embedding_ids: '%s'", message.c_str()));
}

void check_path(Checker& c, CpuPath path, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int64_t k : kSizesK) {
    for (int64_t rows : {1, 7}) {
      for (int kind = 0; kind < 8; ++kind) {
        const bool half = kind & 1, positive = kind & 2, subtract = kind & 4;
        const float beta = positive ? 0.25f : -0.5f;
        const std::vector<float> x = random_activations(rng, rows * k, beta);
        for (bool extras : {false, true}) {
          check_pack(c, path, x, half, rows, k, subtract, beta, positive, extras,
                     positive && extras);
        }
      }
    }
    for (int64_t m : {1, 5, 9}) {
      for (int64_t n : {1, 17, 67}) {
        for (int variant = 0; variant < 4; ++variant) {
          check_gemm_int32(c, path, rng, m, n, k, variant & 1, variant & 2);
        }
      }
    }
    for (auto [m, n] : {std::pair{int64_t{1}, int64_t{1}}, std::pair{int64_t{5}, int64_t{17}},
                        std::pair{int64_t{9}, int64_t{67}}}) {
      for (int bits = 0; bits < 32; ++bits) {
        const FusedCase fc{bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8),
                           bool(bits & 16)};
        check_fused(c, path, rng, m, n, k, fc);
      }
      for (int bits = 0; bits < 8; ++bits) {  // the fused GELU epilogue
        const FusedCase fc{bool(bits & 1), bool(bits & 2), false, bool(bits & 4), true, true};
        check_fused(c, path, rng, m, n, k, fc);
      }
    }
  }
  // An odd number of K words beyond the first pair (the AVX2 K-pair form pads a split row to
  // whole pairs), and over 62 of them (its byte counters are widened every 31 pairs).
  for (int64_t k : {80, 2000}) {
    for (int variant = 0; variant < 4; ++variant) {
      check_gemm_int32(c, path, rng, 5, 33, k, variant & 1, variant & 2);
    }
    for (bool unsigned_a : {false, true}) {
      check_fused(c, path, rng, 5, 33, k, FusedCase{false, true, unsigned_a, true, true});
    }
  }
  // The fused feed-forward block: beta2 = 0 (GELU's far tail flips bits where float32 erf is
  // flat), above 0, inside GELU's dip (two crossings) and below its minimum (no bit set).
  const FfnCase ffn_cases[] = {
      {37, 768, 3072, 48, false, false, true, true, 0.0f},
      {5, 33, 100, 17, false, false, true, true, 0.3f},
      {9, 100, 67, 33, true, false, true, false, -0.1f},
      {3, 31, 40, 20, false, true, true, true, -0.1f},
      {7, 64, 96, 16, true, true, false, true, 0.2f},
      {4, 32, 33, 5, false, false, true, true, -0.2f},
  };
  for (const FfnCase& f : ffn_cases) check_binary_ffn(c, path, rng, f);
  check_ffn_bounds_extremes(c, rng);
  check_attention(c, path, rng);
  check_layer_norm(c, path, rng);
  check_embed_layer_norm(c, path, rng);
  check_attention_int8(c, path, rng);
  check_attention_int8_levels(c, path);
}

// The GELU approximation itself against erf in double precision, over the range that matters
// and its tails: |error| <= 3e-7 * max(1, |y|) (the fit's 3.2e-7 on erf, times 0.5 y, plus the
// float32 roundings of the products; measured 2.3e-7).
void check_gelu_accuracy(Checker& c) {
  double worst = 0.0;
  for (int i = -200000; i <= 200000; ++i) {
    const float y = static_cast<float>(i) * 6e-5f;  // [-12, 12]
    const double want = 0.5 * y * (1.0 + std::erf(y / std::sqrt(2.0)));
    const double err = std::fabs(bitmaps::cpu::detail::gelu(y) - want) /
                       std::max(1.0, std::fabs(static_cast<double>(y)));
    worst = std::max(worst, err);
  }
  c.expect(worst <= 3e-7, describe("gelu: worst scaled error %.3g > 3e-7", worst));
}

// pack_signs_f64 is scalar-only (no path argument): checked once.
void check_pack_f64(Checker& c, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int64_t k : kSizesK) {
    const std::vector<float> x = random_activations(rng, 3 * k, 0.0f);
    const std::vector<double> xd(x.begin(), x.end());
    std::vector<int32_t> out(3 * ref_words(k), static_cast<int32_t>(0xA5A5A5A5u));
    bitmaps::cpu::pack_signs_f64(xd.data(), 3, k, out.data());
    const RefPack ref = ref_pack(x, 3, k, false, 0.0f, false);
    for (size_t i = 0; i < out.size(); ++i) {
      c.expect(static_cast<uint32_t>(out[i]) == ref.words[i],
               describe("pack_signs_f64 k=%lld word %zu", static_cast<long long>(k), i));
    }
  }
}

// parallel_claim (cpu_binary_linear.h): every item runs exactly once and every first item before
// any main item, whether the workers are threads (one of them late, so others take over its
// range), calls made one after another on one thread (a busy pool), or no pool; twice in a row,
// so the second region starts from the ranges the threads kept.
void check_scheduler(Checker& c) {
  using bitmaps::cpu::Parallel;
  const auto threads = [](bool late) {
    Parallel p;
    p.max_workers = 8;
    p.run = [late](int64_t workers, const std::function<void(int64_t)>& body) {
      std::vector<std::thread> pool;
      for (int64_t w = 1; w < workers; ++w) {
        pool.emplace_back([&body, w, late] {
          if (late && w == 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
          body(w);
        });
      }
      body(0);
      for (auto& t : pool) t.join();
    };
    return p;
  };
  Parallel one_thread;
  one_thread.max_workers = 3;
  one_thread.run = [](int64_t workers, const std::function<void(int64_t)>& body) {
    for (int64_t w = 0; w < workers; ++w) body(w);
  };
  const std::pair<const char*, Parallel> pools[] = {
      {"threads", threads(false)}, {"threads, one late", threads(true)},
      {"calls on one thread", one_thread}, {"no pool", Parallel{}}};
  const std::pair<int64_t, int64_t> shapes[] = {{0, 5}, {4, 0}, {3, 17}, {7, 64}, {1, 1}, {0, 1}};
  for (const auto& [name, pool] : pools) {
    for (const auto& [first_items, main_items] : shapes) {
      for (int round = 0; round < 2; ++round) {
        std::vector<std::atomic<int>> firsts(first_items), mains(main_items);
        std::atomic<int64_t> firsts_done{0};
        std::atomic<bool> early{false};
        const int workers = bitmaps::cpu::parallel_claim(
            pool, first_items,
            [&](int64_t i) {
              firsts[i].fetch_add(1);
              firsts_done.fetch_add(1);
            },
            main_items,
            [&](int64_t i) {
              if (firsts_done.load() < first_items) early = true;
              mains[i].fetch_add(1);
            });
        bool once = true;
        for (auto& n : firsts) once = once && n.load() == 1;
        for (auto& n : mains) once = once && n.load() == 1;
        const std::string what = describe("scheduler (%s): %lld first + %lld main items, round %d",
                                          name, static_cast<long long>(first_items),
                                          static_cast<long long>(main_items), round);
        c.expect(once, what + ": every item exactly once");
        c.expect(!early, what + ": no main item before every first item");
        c.expect(workers >= 1, what + ": at least one worker");
      }
    }
  }
}

int usage(const char* message) {
  std::fprintf(stderr, "kernel_harness: %s\nusage: kernel_harness [--path NAME]... [--seed N] "
                       "[--list]\n", message);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<CpuPath> paths;
  uint32_t seed = 20240531;
  auto add_path = [&paths](const std::string& name) {
    CpuPath path;
    if (!bitmaps::cpu::parse_cpu_path(name, &path)) return usage(("unknown path " + name).c_str());
    if (!bitmaps::cpu::cpu_path_supported(path)) {
      std::fprintf(stderr, "kernel_harness: path %s needs %s, which this CPU or build lacks\n",
                   name.c_str(), bitmaps::cpu::cpu_path_requirements(path));
      return 2;
    }
    paths.push_back(path);
    return 0;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--list") {
      for (int p = bitmaps::cpu::kNumCpuPaths - 1; p >= 0; --p) {
        if (bitmaps::cpu::cpu_path_supported(static_cast<CpuPath>(p))) {
          std::printf("%s\n", bitmaps::cpu::cpu_path_name(static_cast<CpuPath>(p)));
        }
      }
      return 0;
    }
    if (i + 1 >= argc) return usage(("missing value after " + arg).c_str());
    if (arg == "--path") {
      if (const int rc = add_path(argv[++i])) return rc;
    } else if (arg == "--seed") {
      seed = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      return usage(("unknown argument " + arg).c_str());
    }
  }
  const char* env = std::getenv("BITMAPS_CPU_PATH");
  if (paths.empty() && env != nullptr && env[0] != '\0' && std::string(env) != "auto") {
    if (const int rc = add_path(env)) return rc;
  }
  if (paths.empty()) {
    for (int p = bitmaps::cpu::kNumCpuPaths - 1; p >= 0; --p) {
      if (bitmaps::cpu::cpu_path_supported(static_cast<CpuPath>(p))) {
        paths.push_back(static_cast<CpuPath>(p));
      }
    }
  }
  int64_t failures = 0;
  Checker f64{"scalar"};
  check_pack_f64(f64, seed);
  check_gelu_accuracy(f64);
  check_scheduler(f64);
  failures += f64.failures;
  using bitmaps::cpu::Avx2KLoop;
  for (CpuPath path : paths) {
    // The AVX2 path in both forms of its K loop (cpu_features.h), whichever this CPU runs.
    std::vector<Avx2KLoop> kloops{bitmaps::cpu::avx2_kloop_of_cpu()};
    if (path == CpuPath::kAvx2) kloops = {Avx2KLoop::kRegisters, Avx2KLoop::kFolded};
    for (Avx2KLoop kloop : kloops) {
      bitmaps::cpu::set_avx2_kloop(kloop);
      const std::string variant = bitmaps::cpu::cpu_path_variant(path);
      Checker c{std::string(bitmaps::cpu::cpu_path_name(path)) +
                (variant.empty() ? "" : " (" + variant + ")")};
      check_path(c, path, seed);
      std::printf("path %s: %lld checks, %lld failed\n", c.path.c_str(),
                  static_cast<long long>(c.checks), static_cast<long long>(c.failures));
      failures += c.failures;
    }
    bitmaps::cpu::set_avx2_kloop(bitmaps::cpu::avx2_kloop_of_cpu());
  }
  std::printf("%s (seed %u)\n", failures == 0 ? "OK" : "FAILED", seed);
  return failures == 0 ? 0 : 1;
}

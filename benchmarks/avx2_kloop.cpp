// The AVX2 GEMM's two K loops (cpu_features.h, Avx2KLoop: weight vectors in registers, or the
// K-pair form with the weight loads folded into each row's logic op) on this CPU, in turns, on one
// thread: xnor_gemm_tile over whole BERT-base binary linears at 1 x 128 tokens (M = 128; K x N =
// 768 x 2304 for Q K V side by side, 768 x 768, 768 x 3072, 3072 x 768, and 3072 x 768 with
// unsigned activations: the FFN's second layer), float32 output with row and column scales. Each
// call takes the next of 12 copies of the weights (as a model's layers do: weights from L2 / L3,
// not L1). Built and run by bench_avx2_kloop.py; writes one JSON object per line: {"shape",
// "kloop", "us"} per round (the mean of `reps` calls), then {"check": ...}: whether both forms gave
// the same bits on every shape.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/cpu_kernels.h"

namespace {

using bitmaps::cpu::Avx2KLoop;
using bitmaps::cpu::GemmArgs;

constexpr int64_t kM = 128;
constexpr int kCopies = 12;

struct Shape {
  int64_t k, n;
  bool unsigned_a;
  std::string name;
};

struct Gemm {  // one shape's operands and output
  Shape shape;
  int64_t kw;
  std::vector<int32_t> a, a_popcount;
  std::vector<std::vector<int32_t>> panels;
  std::vector<float> row_scale, col_scale, out;

  Gemm(const Shape& s, std::mt19937& rng)
      : shape(s), kw((s.k + 31) / 32), a(kM * kw), a_popcount(kM, 0),
        panels(kCopies, std::vector<int32_t>(bitmaps::cpu::panel_words(s.n, kw))),
        row_scale(kM, 0.5f), col_scale(s.n, 0.25f), out(kM * s.n) {
    const uint32_t last = s.k % 32 == 0 ? ~0u : (1u << (s.k % 32)) - 1u;
    for (int64_t r = 0; r < kM; ++r) {
      for (int64_t w = 0; w < kw; ++w) {
        uint32_t bits = static_cast<uint32_t>(rng());
        if (w == kw - 1) bits &= last;
        a[r * kw + w] = static_cast<int32_t>(bits);
        a_popcount[r] += __builtin_popcount(bits);
      }
    }
    std::vector<int32_t> b(s.n * kw);
    for (auto& p : panels) {
      for (auto& w : b) w = static_cast<int32_t>(rng());
      bitmaps::cpu::pack_panels(b.data(), s.n, kw, s.k, 0, (s.n + 15) / 16, p.data());
    }
  }

  void run(int copy, uint64_t call) {
    GemmArgs g;
    g.a = a.data();
    g.panels = panels[copy].data();
    g.m = kM, g.n = shape.n, g.kw = kw, g.k = shape.k;
    g.output = bitmaps::cpu::GemmOutput::kFloat32;
    g.out = out.data();
    g.row_scale = row_scale.data();
    g.col_scale = col_scale.data();
    g.unsigned_a = shape.unsigned_a;
    g.a_popcount = shape.unsigned_a ? a_popcount.data() : nullptr;
    g.call = call;
    bitmaps::cpu::xnor_gemm_tile(bitmaps::cpu::CpuPath::kAvx2, g, 0, kM, 0, shape.n);
  }
};

const char* name_of(Avx2KLoop loop) { return loop == Avx2KLoop::kFolded ? "folded" : "registers"; }

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 50;
  if (!bitmaps::cpu::cpu_path_supported(bitmaps::cpu::CpuPath::kAvx2)) {
    std::fprintf(stderr, "this CPU cannot run the AVX2 path (%s)\n",
                 bitmaps::cpu::cpu_path_requirements(bitmaps::cpu::CpuPath::kAvx2));
    return 2;
  }
  std::mt19937 rng(5);
  std::vector<Gemm> gemms;
  for (const Shape& s : {Shape{768, 2304, false, "768 x 2304"}, Shape{768, 768, false, "768 x 768"},
                         Shape{768, 3072, false, "768 x 3072"}, Shape{3072, 768, false, "3072 x 768"},
                         Shape{3072, 768, true, "3072 x 768, unsigned"}}) {
    gemms.emplace_back(s, rng);
  }
  const Avx2KLoop loops[2] = {Avx2KLoop::kRegisters, Avx2KLoop::kFolded};
  uint64_t call = 1;
  bool same = true;
  for (Gemm& g : gemms) {  // both forms' outputs, bit for bit
    std::vector<float> first;
    for (Avx2KLoop loop : loops) {
      bitmaps::cpu::set_avx2_kloop(loop);
      g.run(0, call++);
      if (first.empty()) {
        first = g.out;
      } else {
        same = same && std::memcmp(first.data(), g.out.data(), first.size() * sizeof(float)) == 0;
      }
    }
  }
  for (int round = 0; round < rounds; ++round) {
    for (Gemm& g : gemms) {
      for (int i = 0; i < 2; ++i) {  // in turns, the first form alternating between rounds
        const Avx2KLoop loop = loops[(i + round) % 2];
        bitmaps::cpu::set_avx2_kloop(loop);
        const auto t0 = std::chrono::steady_clock::now();
        for (int rep = 0; rep < reps; ++rep) g.run(rep % kCopies, call++);
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count() / reps;
        std::printf("{\"shape\": \"%s\", \"kloop\": \"%s\", \"us\": %.3f}\n",
                    g.shape.name.c_str(), name_of(loop), us);
      }
    }
  }
  std::printf("{\"check\": true, \"same_bits\": %s, \"cpu_kloop\": \"%s\"}\n",
              same ? "true" : "false", name_of(bitmaps::cpu::avx2_kloop_of_cpu()));
  return 0;
}

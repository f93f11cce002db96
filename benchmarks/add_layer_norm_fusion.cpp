// Would fusing the residual add + LayerNorm into the binary GEMM before it pay on this CPU? An
// upper bound, on the kernels of csrc/kernels (no torch, no ONNX Runtime): BERT-base's attention
// output (BinaryLinear 768 -> 768 on 128 rows) followed by its add + LayerNorm, on W worker
// threads of one spinning pool (as ONNX Runtime's intra-op pool spins):
//   separate:  the GEMM over all rows (one parallel region), then add + LayerNorm over all rows
//              (a second region): what the onnxruntime target's two nodes do;
//   fused:     each worker runs the GEMM of its own rows and then their add + LayerNorm, in one
//              region: the GEMM's output rows are still in that core's caches and there is no
//              second region, which is the most a fused epilogue could win;
//   gemm, ln:  each alone (all rows, one region).
// "cold": a 64 MB buffer is swept before each call (inputs, residual and outputs come from
// memory, as in a model whose other layers ran in between); "warm": the same buffers again.
// Built and run by bench_add_layer_norm_fusion.py, which prints the table; this program writes
// one JSON object per line: {"cache", "variant", "us"} per round (the mean of `reps` calls).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "kernels/bit_layout.h"
#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_layer_norm.h"

namespace {

using bitmaps::cpu::Parallel;

// W - 1 spinning threads plus the caller; run(body) calls body(0 .. W-1) once each.
class Pool {
 public:
  explicit Pool(int workers) : workers_(workers) {
    for (int w = 1; w < workers; ++w) {
      threads_.emplace_back([this, w] {
        int seen = 0;
        while (!stop_.load(std::memory_order_acquire)) {
          const int g = generation_.load(std::memory_order_acquire);
          if (g == seen) continue;
          seen = g;
          (*body_)(w);
          done_.fetch_add(1, std::memory_order_acq_rel);
        }
      });
    }
  }
  ~Pool() {
    stop_.store(true, std::memory_order_release);
    for (auto& t : threads_) t.join();
  }
  int workers() const { return workers_; }
  void run(const std::function<void(int64_t)>& body) {
    body_ = &body;
    const int before = done_.load(std::memory_order_acquire);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    body(0);
    while (done_.load(std::memory_order_acquire) - before < workers_ - 1) {
    }
  }

 private:
  int workers_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t)>* body_ = nullptr;
  std::atomic<int> generation_{0}, done_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 200;
  const int workers = std::max(1u, std::thread::hardware_concurrency());
  const int64_t M = 128, K = 768, N = 768;
  const bitmaps::cpu::CpuPath path = bitmaps::cpu::best_cpu_path();
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> x(M * K), skip(M * N), y(M * N), out(M * N);
  std::vector<float> gamma(N, 1.1f), beta(N, 0.1f), w_scale(N, 0.01f), bias(N, 0.2f);
  for (auto& v : x) v = normal(rng);
  for (auto& v : skip) v = normal(rng);
  std::vector<int32_t> w(N * bitmaps::packed_width(K));
  for (auto& v : w) v = static_cast<int32_t>(rng());
  std::vector<int32_t> panels(bitmaps::cpu::prepacked_words(N, K));
  const Parallel serial;
  bitmaps::cpu::prepack_weights(w.data(), N, K, panels.data(), serial);
  std::vector<char> sweep(64 << 20);

  Pool pool(workers);
  Parallel all;
  all.max_workers = workers;
  all.run = [&](int64_t, const std::function<void(int64_t)>& body) { pool.run(body); };
  const auto gemm = [&](int64_t r0, int64_t r1, const Parallel& p) {
    bitmaps::cpu::BinaryLinearArgs a;
    a.x = x.data() + r0 * K;
    a.m = r1 - r0;
    a.k = K;
    a.n = N;
    a.panels = panels.data();
    a.w_scale = w_scale.data();
    a.bias = bias.data();
    a.act_scale = 0.5f;
    a.y = y.data() + r0 * N;
    bitmaps::cpu::binary_linear(path, a, p);
  };
  const auto layer_norm = [&](int64_t r0, int64_t r1, const Parallel& p) {
    bitmaps::cpu::AddLayerNormArgs a;
    a.x = y.data() + r0 * N;
    a.skip = skip.data() + r0 * N;
    a.gamma = gamma.data();
    a.beta = beta.data();
    a.rows = r1 - r0;
    a.n = N;
    a.out = out.data() + r0 * N;
    bitmaps::cpu::add_layer_norm(path, a, p);
  };
  const std::function<void(int64_t)> fused = [&](int64_t worker) {
    const int64_t r0 = M * worker / workers, r1 = M * (worker + 1) / workers;
    gemm(r0, r1, serial);
    layer_norm(r0, r1, serial);
  };
  const char* variants[] = {"separate", "fused", "gemm", "ln"};
  for (int cold = 0; cold < 2; ++cold) {
    for (int round = 0; round < rounds; ++round) {
      double total[4] = {0, 0, 0, 0};
      for (int rep = 0; rep < reps; ++rep) {
        for (int v = 0; v < 4; ++v) {  // the variants in turns
          if (cold) {
            for (size_t i = 0; i < sweep.size(); i += 64) sweep[i] = static_cast<char>(sweep[i] + 1);
          }
          const auto t0 = std::chrono::steady_clock::now();
          if (v == 0) {
            gemm(0, M, all);
            layer_norm(0, M, all);
          } else if (v == 1) {
            pool.run(fused);
          } else if (v == 2) {
            gemm(0, M, all);
          } else {
            layer_norm(0, M, all);
          }
          total[v] += std::chrono::duration<double, std::micro>(
                          std::chrono::steady_clock::now() - t0).count();
        }
      }
      for (int v = 0; v < 4; ++v) {
        std::printf("{\"cache\": \"%s\", \"variant\": \"%s\", \"workers\": %d, \"us\": %.3f}\n",
                    cold ? "cold" : "warm", variants[v], workers, total[v] / reps);
      }
    }
  }
  return static_cast<int>(out[0] != out[0]);  // keep the outputs alive
}

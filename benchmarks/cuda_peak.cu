// The tensor-core ceilings of this GPU for mma.sync: register-only loops, no memory traffic, one
// JSON line per instruction kind on stdout. Built and run by benchmarks/bench_cuda_peak.py:
//
//   nvcc -O3 -arch=sm_90a -o cuda_peak benchmarks/cuda_peak.cu && ./cuda_peak
//
// Kinds (ops = 2 * M * N * K per instruction, the convention of TOPS and of bench_kernels.py):
//   b1_and  mma.sync.m16n8k256 .b1 .and.popc  (sm_80+; the form Hopper runs natively)
//   b1_xor  mma.sync.m16n8k256 .b1 .xor.popc  (sm_80..sm_89; Hopper emulates it: not run there)
//   s8      mma.sync.m16n8k32  .s8 x .s8 -> s32 (the INT8 GEMM's instruction)
//   f16     mma.sync.m16n8k16  .f16 x .f16 -> f32 (cuBLAS FP16's class of instruction)
// Each warp runs kChains independent accumulator chains so that issue, not latency, bounds it.
// This is the mma.sync ceiling; Hopper's wgmma can go further, which this does not measure.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {

constexpr int kChains = 8;
enum Kind { kB1And = 0, kB1Xor = 1, kS8 = 2, kF16 = 3 };

// One mma.sync of shape and types `form`, d += a x b: the same registers for every kind (A four
// b32, B two, C/D four 32-bit).
#define BITMAPS_MMA(form)                                                             \
  asm volatile("mma.sync.aligned." form " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
               : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

template <int kKind>
__device__ __forceinline__ void mma(uint32_t (&d)[4], const uint32_t (&a)[4],
                                    const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kKind == kB1And) {
    BITMAPS_MMA("m16n8k256.row.col.s32.b1.b1.s32.and.popc");
  } else if constexpr (kKind == kB1Xor) {
#if __CUDA_ARCH__ < 900
    BITMAPS_MMA("m16n8k256.row.col.s32.b1.b1.s32.xor.popc");
#endif
  } else if constexpr (kKind == kS8) {
    BITMAPS_MMA("m16n8k32.row.col.s32.s8.s8.s32");
  } else {
    BITMAPS_MMA("m16n8k16.row.col.f32.f16.f16.f32");
  }
#endif
}

template <int kKind>
__global__ void peak_kernel(int iters, uint32_t* sink) {
  const uint32_t x = threadIdx.x + 1u;
  // Small values: f16 bit patterns of modest numbers, so the f32 accumulators stay finite.
  const uint32_t a[4] = {0x3c003c00u ^ (x & 3u), 0x3c003c00u, 0x3c003c00u ^ (x & 1u), 0x3c003c00u};
  const uint32_t b[2] = {0x3c003c00u ^ (x & 2u), 0x3c003c00u};
  uint32_t d[kChains][4];
#pragma unroll
  for (int c = 0; c < kChains; ++c)
#pragma unroll
    for (int r = 0; r < 4; ++r) d[c][r] = 0u;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) mma<kKind>(d[c], a, b);
  }
  uint32_t sum = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) sum += d[c][0] ^ d[c][1] ^ d[c][2] ^ d[c][3];
  sink[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

template <int kKind>
double measure(int blocks, int threads, int iters, uint32_t* sink, double ops_per_mma) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  peak_kernel<kKind><<<blocks, threads>>>(iters / 10, sink);  // warm-up (clocks, caches)
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    cudaEventRecord(start);
    peak_kernel<kKind><<<blocks, threads>>>(iters, sink);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    const double mmas = static_cast<double>(blocks) * (threads / 32) * iters * kChains;
    const double tops = mmas * ops_per_mma / (ms * 1e-3) / 1e12;
    if (tops > best) best = tops;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return cudaGetLastError() == cudaSuccess ? best : -1.0;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 20000;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::printf("{\"error\": \"no CUDA device\"}\n");
    return 2;
  }
  uint32_t* sink = nullptr;
  const int blocks = prop.multiProcessorCount * 4;
  const int threads = 256;
  cudaMalloc(&sink, sizeof(uint32_t) * blocks * threads);
  std::printf("{\"device\": \"%s\", \"cc\": \"%d.%d\", \"sms\": %d}\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount);
  struct Row {
    const char* kind;
    double ops;
    double (*fn)(int, int, int, uint32_t*, double);
    bool run;
  };
  const Row rows[] = {
      {"b1_and", 2.0 * 16 * 8 * 256, measure<kB1And>, true},
      {"b1_xor", 2.0 * 16 * 8 * 256, measure<kB1Xor>, prop.major == 8},
      {"s8", 2.0 * 16 * 8 * 32, measure<kS8>, true},
      {"f16", 2.0 * 16 * 8 * 16, measure<kF16>, true},
  };
  for (const Row& r : rows) {
    if (!r.run) continue;
    const double tops = r.fn(blocks, threads, iters, sink, r.ops);
    std::printf("{\"kind\": \"%s\", \"tops\": %.1f}\n", r.kind, tops);
  }
  cudaFree(sink);
  return 0;
}

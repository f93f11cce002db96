// XNOR GEMM on Hopper tensor cores: wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc
// (sm_90a only; SASS HGMMA ... .AND.POPC). Hopper has no XOR form of the b1 MMA, so the kernel
// computes and = popcount(a AND b) and recovers XOR from the row popcounts:
//   popcount(a XOR b) = popcount(a) + popcount(b) - 2 * popcount(a AND b)
// popcount(a) per activation row is summed from the A fragments already in registers, popcount(b)
// per weight row from the B tile in shared memory; padding words are zero in both, so they add 0,
// and the padding bits of word KW - 1 are cleared in shared memory (last stage) before any read.
// {0, 1} activations use the same product: dot = popcount(a) - 2 popcount(a AND b).
//
// Block: 2 warpgroups (256 threads), tile 128 x 128, K staged 16 words (two k256 steps) at a time
// through a two-stage cp.async pipeline. Warpgroup wg computes rows [64 wg, 64 wg + 64).
//   A: from registers, per warp the mma.m16n8k256 layout (a0 = A[g][word t], a1 = A[g + 8][t],
//      a2 = A[g][t + 4], a3 = A[g + 8][t + 4] for the warp's 16 rows), loaded from a padded
//      row-major shared tile (stride 20 words, conflict-free as in the mma.sync path).
//   B: from shared memory through a matrix descriptor, K-major, no swizzle. The canonical layout
//      is ((8, m), (T, 2k)) : ((1T, SBO), (1, LBO)) with T = 128 b1 elements = 16 bytes: "core
//      matrices" of 8 rows x 16 bytes (128 contiguous bytes, row r at byte 16 r). We store core
//      matrix (k-step s, k-half h, row group j) at byte ((2 s + h) * 16 + j) * 128, so for one
//      k256 step: SBO (next 8 rows) = 128 B and LBO (next 128 bits of K) = 16 * 128 = 2048 B.
//   D: s32, 64 registers per thread; d[4 j + 2 h + e] = D[16 warp + g + 8 h][8 j + 2 t + e].
#include "kernels/xnor_gemm_cuda_impl.cuh"

namespace bitmaps {
namespace cuda {
namespace detail {
namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BITMAPS_HAS_WGMMA_B1 1
#else
#define BITMAPS_HAS_WGMMA_B1 0
#endif

// probe_wgmma() reads this kernel's static shared memory size (xnor_gemm_cuda_impl.cuh): the
// "compiled" size only in sm_90a code.
__global__ void wgmma_probe_kernel(int* sink) {
  __shared__ int marker[BITMAPS_HAS_WGMMA_B1 ? kProbeCompiledWords : kProbeAbsentWords];
  constexpr int kWords = sizeof(marker) / sizeof(marker[0]);
  marker[threadIdx.x % kWords] = static_cast<int>(threadIdx.x);
  __syncthreads();
  sink[threadIdx.x] = marker[(threadIdx.x + 1) % kWords];
}

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kThreads = 256;

#if BITMAPS_HAS_WGMMA_B1
constexpr int kBkWords = 16;
constexpr int kStrideA = 20;
constexpr int kCoreWords = 32;                                  // 8 rows x 16 bytes
constexpr int kCoresPerHalf = kBN / 8;                          // row groups per 128-bit K half
constexpr uint32_t kLboBytes = kCoresPerHalf * kCoreWords * 4;  // 2048
constexpr uint32_t kSboBytes = kCoreWords * 4;                  // 128
constexpr int kStepWordsB = 2 * kCoresPerHalf * kCoreWords;     // B words per k256 step

// Word offset of W[n][w] (w in the stage's 16 words) in the core-matrix layout described above.
__device__ __forceinline__ int b_offset(int n, int w) {
  const int step = w / 8;
  const int half = (w % 8) / 4;
  return ((2 * step + half) * kCoresPerHalf + n / 8) * kCoreWords + (n % 8) * 4 + (w % 4);
}

__device__ __forceinline__ uint64_t smem_descriptor(const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);             // bits 0-13: start address
  desc |= static_cast<uint64_t>((kLboBytes & 0x3FFFF) >> 4) << 16;  // bits 16-29: LBO
  desc |= static_cast<uint64_t>((kSboBytes & 0x3FFFF) >> 4) << 32;  // bits 32-45: SBO
  return desc;  // base offset 0, swizzle mode 0 (none)
}

// Tells the compiler that `reg` is read and written here, so that it neither moves accesses to it
// across the wgmma fence / wait nor makes ptxas insert its own warpgroup.arrive (C7519): the
// same empty asm as CUTLASS's warpgroup_fence_operand, on every register wgmma reads or writes
// (the accumulators and the A fragments).
__device__ __forceinline__ void fence_operand(int32_t& reg) {
  asm volatile("" : "+r"(reg)::"memory");
}
__device__ __forceinline__ void fence_operand(uint32_t& reg) {
  asm volatile("" : "+r"(reg)::"memory");
}
template <typename T, int kN>
__device__ __forceinline__ void fence_operands(T (&regs)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) fence_operand(regs[i]);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

// D[64 x 128] += popcount(A[64 x 256] AND B[256 x 128]).
__device__ __forceinline__ void wgmma_and_128(int32_t (&d)[64], const uint32_t (&a)[4],
                                              uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]),
        "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]),
        "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]),
        "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]),
        "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]),
        "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]),
        "+r"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

template <int kSteps>
__device__ __forceinline__ void mma_steps(int32_t (&acc)[64], uint32_t (&a0)[4], uint32_t (&a1)[4],
                                          const uint32_t* b_stage) {
  fence_operands(acc);
  fence_operands(a0);
  fence_operands(a1);
  wgmma_fence();
  wgmma_and_128(acc, a0, smem_descriptor(b_stage));
  if constexpr (kSteps == 2) wgmma_and_128(acc, a1, smem_descriptor(b_stage + kStepWordsB));
  wgmma_commit();
  wgmma_wait_all();
  fence_operands(acc);
}

__device__ __forceinline__ void load_stage(uint32_t* sa, uint32_t* sb, const GemmProblem& p,
                                           int64_t m0, int64_t n0, int w0) {
  for (int i = threadIdx.x; i < kBM * kBkWords; i += kThreads) {
    const int r = i / kBkWords;
    const int w = i % kBkWords;
    const int64_t gm = m0 + r;
    const bool valid = gm < p.m && (w0 + w) < p.kw;
    cp_async<4>(sa + r * kStrideA + w, valid ? p.a + gm * p.kw + w0 + w : p.a, valid);
  }
  for (int i = threadIdx.x; i < kBN * kBkWords; i += kThreads) {
    const int r = i / kBkWords;
    const int w = i % kBkWords;
    const int64_t gn = n0 + r;
    const bool valid = gn < p.n && (w0 + w) < p.kw;
    cp_async<4>(sb + b_offset(r, w), valid ? p.b + gn * p.kw + w0 + w : p.b, valid);
  }
}
#endif  // BITMAPS_HAS_WGMMA_B1

template <OutKind kOut, bool kUnsigned>
__global__ void __launch_bounds__(kThreads) xnor_gemm_wgmma_kernel(GemmProblem p, Epilogue ep) {
#if BITMAPS_HAS_WGMMA_B1
  __shared__ __align__(128) uint32_t sb[2][kBN * kBkWords];
  __shared__ __align__(16) uint32_t sa[2][kBM * kStrideA];
  __shared__ int32_t pop_b[kBN];

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int row_in_tile = warp * 16 + g;  // warps 0-3: warpgroup 0, rows 0-63; 4-7: 64-127
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

  int32_t acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0;
  int32_t pop_a_lo = 0;  // this thread's share of popcount(A[row_in_tile])
  int32_t pop_a_hi = 0;  // ... of popcount(A[row_in_tile + 8])
  int32_t pop_b_mine = 0;

  const int num_k_tiles = (p.kw + kBkWords - 1) / kBkWords;
  load_stage(sa[0], sb[0], p, m0, n0, 0);
  cp_async_commit();

  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < num_k_tiles) {
      load_stage(sa[stage ^ 1], sb[stage ^ 1], p, m0, n0, (kt + 1) * kBkWords);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if (kt == num_k_tiles - 1 && p.last_mask != 0xFFFFFFFFu) {
      // Word KW - 1 lies in the last stage: clear its padding bits in A and B, once per block.
      __syncthreads();
      const int wl = p.kw - 1 - kt * kBkWords;
      mask_shared_word(sa[stage], kBM, [wl](int r) { return r * kStrideA + wl; }, p.last_mask);
      mask_shared_word(sb[stage], kBN, [wl](int r) { return b_offset(r, wl); }, p.last_mask);
    }
    // cp.async and the masking wrote through the generic proxy; wgmma reads B through the async
    // proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    if (threadIdx.x < kBN) {  // popcount of weight row threadIdx.x over this stage (all 16 words)
      const int n = threadIdx.x;
#pragma unroll
      for (int core = 0; core < 4; ++core) {
        const uint4 v = *reinterpret_cast<const uint4*>(
            &sb[stage][(core * kCoresPerHalf + n / 8) * kCoreWords + (n % 8) * 4]);
        pop_b_mine += __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
      }
    }

    const bool second_step = kt * kBkWords + 8 < p.kw;  // uniform across the block
    uint32_t a0[4];
    uint32_t a1[4];
    const uint32_t* a_s = sa[stage];
    a0[0] = a_s[row_in_tile * kStrideA + t];
    a0[1] = a_s[(row_in_tile + 8) * kStrideA + t];
    a0[2] = a_s[row_in_tile * kStrideA + t + 4];
    a0[3] = a_s[(row_in_tile + 8) * kStrideA + t + 4];
    a1[0] = a_s[row_in_tile * kStrideA + 8 + t];
    a1[1] = a_s[(row_in_tile + 8) * kStrideA + 8 + t];
    a1[2] = a_s[row_in_tile * kStrideA + 8 + t + 4];
    a1[3] = a_s[(row_in_tile + 8) * kStrideA + 8 + t + 4];
    // Words past KW were zero-filled, so both steps can be counted unconditionally.
    pop_a_lo += __popc(a0[0]) + __popc(a0[2]) + __popc(a1[0]) + __popc(a1[2]);
    pop_a_hi += __popc(a0[1]) + __popc(a0[3]) + __popc(a1[1]) + __popc(a1[3]);

    if (second_step) {
      mma_steps<2>(acc, a0, a1, &sb[stage][0]);
    } else {
      mma_steps<1>(acc, a0, a1, &sb[stage][0]);
    }
    __syncthreads();  // the next iteration's loads overwrite the stage just read
  }

  if (threadIdx.x < kBN) pop_b[threadIdx.x] = pop_b_mine;
  // The four threads of a quad hold words t and t + 4 of the same two rows: sum them.
  pop_a_lo += __shfl_xor_sync(0xFFFFFFFFu, pop_a_lo, 1);
  pop_a_lo += __shfl_xor_sync(0xFFFFFFFFu, pop_a_lo, 2);
  pop_a_hi += __shfl_xor_sync(0xFFFFFFFFu, pop_a_hi, 1);
  pop_a_hi += __shfl_xor_sync(0xFFFFFFFFu, pop_a_hi, 2);
  __syncthreads();

#pragma unroll
  for (int j = 0; j < 16; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col_in_tile = 8 * j + 2 * t + e;
        const int64_t row = m0 + row_in_tile + 8 * h;
        const int64_t col = n0 + col_in_tile;
        if (row < p.m && col < p.n) {
          const int32_t and_pop = acc[4 * j + 2 * h + e];
          const int32_t xor_pop = (h ? pop_a_hi : pop_a_lo) + pop_b[col_in_tile] - 2 * and_pop;
          store_output<kOut>(ep, p.n, row, col,
                             dot_from_xor<kUnsigned>(p.k, xor_pop, pop_b[col_in_tile]));
        }
      }
    }
  }
#endif  // BITMAPS_HAS_WGMMA_B1
}

}  // namespace

template <OutKind kOut, bool kUnsigned>
cudaError_t launch_wgmma(const GemmProblem& p, const Epilogue& ep, cudaStream_t stream) {
  const int64_t grid_m = (p.m + kBM - 1) / kBM;
  const int64_t grid_n = (p.n + kBN - 1) / kBN;
  if (grid_m > 0x7FFFFFFF || grid_n > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(grid_m), static_cast<unsigned>(grid_n));
  xnor_gemm_wgmma_kernel<kOut, kUnsigned><<<grid, kThreads, 0, stream>>>(p, ep);
  return cudaGetLastError();
}

BITMAPS_INSTANTIATE_GEMM_LAUNCHER(launch_wgmma, const GemmProblem&, const Epilogue&, cudaStream_t)

cudaError_t probe_wgmma(bool* available) {
  cudaFuncAttributes attr{};
  return probe_result(cudaFuncGetAttributes(&attr, wgmma_probe_kernel), attr, available);
}

}  // namespace detail
}  // namespace cuda
}  // namespace bitmaps

// XNOR GEMM on tensor cores with mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32:
//   sm_80..sm_89: .xor.popc directly (SASS BMMA.168256.XOR.POPC);
//   ({0, 1} activations: the same product, then dot = popcount(a XOR b) - popcount(b), with the
//    weight-row popcounts summed from the B fragments as the AND form does;)
//   sm_90+:       .and.popc (BMMA.168256.AND.POPC) plus the row-popcount identity
//                 popcount(a XOR b) = popcount(a) + popcount(b) - 2 popcount(a AND b), because
//                 Hopper has no XOR b1 MMA and ptxas would otherwise emulate .xor.popc through a
//                 called subroutine per MMA (seen in the sm_90a SASS).
//
// Padding bits: word KW - 1 of both shared tiles is ANDed with last_word_mask(K) once, in the
// last stage, so packed operands with non-zero padding give the CPU kernels' answer.
//
// Block tile BM x BN, K staged 16 words (512 bits, two k256 steps) at a time through a two-stage
// cp.async pipeline. Shared tiles are row-major with a row stride of 20 words: the fragment loads
// below touch words (g * 20 + t) for g in 0..7, t in 0..3, which fall in 32 distinct banks.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k256"; g = lane / 4, t = lane % 4;
// one b32 register = 32 consecutive K bits, LSB first, which is exactly our packed word):
//   A (16 x 256, row): a0 = A[g][word t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]
//   B (256 x 8, col):  b0 = W[n = g][word t], b1 = W[g][t + 4]
//   C/D (16 x 8):      c0, c1 = D[g][2t], D[g][2t + 1];  c2, c3 = D[g + 8][2t], D[g + 8][2t + 1]
#include "kernels/xnor_gemm_cuda_impl.cuh"

namespace bitmaps {
namespace cuda {
namespace detail {
namespace {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define BITMAPS_HAS_MMA_B1 1
#else
#define BITMAPS_HAS_MMA_B1 0
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BITMAPS_MMA_AND_FORM 1
#else
#define BITMAPS_MMA_AND_FORM 0
#endif

// probe_mma() reads this kernel's static shared memory size (xnor_gemm_cuda_impl.cuh).
__global__ void mma_probe_kernel(int* sink) {
  __shared__ int marker[BITMAPS_HAS_MMA_B1 ? kProbeCompiledWords : kProbeAbsentWords];
  constexpr int kWords = sizeof(marker) / sizeof(marker[0]);
  marker[threadIdx.x % kWords] = static_cast<int>(threadIdx.x);
  __syncthreads();
  sink[threadIdx.x] = marker[(threadIdx.x + 1) % kWords];
}

constexpr int kBkWords = 16;  // words of K per pipeline stage
constexpr int kStride = 20;   // shared row stride in words (bank-conflict-free fragments)

// d += popcount(a XOR b) on sm_80..sm_89, d += popcount(a AND b) on sm_90+ (see the top).
__device__ __forceinline__ void mma_b1(int32_t (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2]) {
#if BITMAPS_MMA_AND_FORM
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif BITMAPS_HAS_MMA_B1
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <int kRows, int kThreads>
__device__ __forceinline__ void load_stage(uint32_t* smem, const uint32_t* g, int64_t row0,
                                           int64_t rows, int kw, int w0, bool wide) {
  if (wide) {
    // 16-byte copies of 4 words: KW % 4 == 0 and g 16-byte aligned (the launcher checks), w0 a
    // multiple of kBkWords and the row stride 80 bytes, so both sides are aligned and a copy lies
    // wholly inside or wholly past a row's KW words.
    constexpr int kChunks = kBkWords / 4;
    for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
      const int r = i / kChunks;
      const int w = (i % kChunks) * 4;
      const int64_t gr = row0 + r;
      const bool valid = gr < rows && (w0 + w) < kw;
      cp_async<16>(smem + r * kStride + w, valid ? g + gr * kw + w0 + w : g, valid);
    }
    return;
  }
  // Consecutive threads copy consecutive words of a row: 64-byte coalesced segments.
  for (int i = threadIdx.x; i < kRows * kBkWords; i += kThreads) {
    const int r = i / kBkWords;
    const int w = i % kBkWords;
    const int64_t gr = row0 + r;
    const bool valid = gr < rows && (w0 + w) < kw;
    cp_async<4>(smem + r * kStride + w, valid ? g + gr * kw + w0 + w : g, valid);
  }
}

template <int kBM, int kBN, int kWarpsM, int kWarpsN, OutKind kOut, bool kUnsigned, bool kPair>
__global__ void __launch_bounds__(kWarpsM * kWarpsN * 32)
    xnor_gemm_mma_kernel(GemmProblem p, Epilogue ep, bool vector_ok, bool wide, bool ldmatrix) {
#if BITMAPS_HAS_MMA_B1
  constexpr int kThreads = kWarpsM * kWarpsN * 32;
  constexpr int kWarpRows = kBM / kWarpsM;
  constexpr int kWarpCols = kBN / kWarpsN;
  constexpr int kMTiles = kWarpRows / 16;
  constexpr int kNTiles = kWarpCols / 8;
  static_assert(kMTiles * 16 == kWarpRows && kNTiles * 8 == kWarpCols, "bad warp tile");
  // The AND form needs both row popcounts; {0, 1} activations need the weight rows' in any form.
  constexpr bool kAndForm = BITMAPS_MMA_AND_FORM != 0;
  constexpr bool kPopB = kAndForm || kUnsigned;

  __shared__ __align__(16) uint32_t sa[2][kBM * kStride];
  __shared__ __align__(16) uint32_t sb[2][kBN * kStride];

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int warp_m = warp / kWarpsN;
  const int warp_n = warp % kWarpsN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

  int32_t acc[kMTiles][kNTiles][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < kNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0;
  // This thread's share of the row popcounts: A rows g and g + 8 of each m tile, W row g of each
  // n tile (words t and t + 4 of every k step; the quad holds all 8).
  int32_t pop_a[kMTiles][2];
  int32_t pop_b[kNTiles];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) pop_a[i][0] = pop_a[i][1] = 0;
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) pop_b[j] = 0;

  const int num_k_tiles = (p.kw + kBkWords - 1) / kBkWords;
  load_stage<kBM, kThreads>(sa[0], p.a, m0, p.m, p.kw, 0, wide);
  load_stage<kBN, kThreads>(sb[0], p.b, n0, p.n, p.kw, 0, wide);
  cp_async_commit();

  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < num_k_tiles) {
      load_stage<kBM, kThreads>(sa[stage ^ 1], p.a, m0, p.m, p.kw, (kt + 1) * kBkWords, wide);
      load_stage<kBN, kThreads>(sb[stage ^ 1], p.b, n0, p.n, p.kw, (kt + 1) * kBkWords, wide);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (kt == num_k_tiles - 1 && p.last_mask != 0xFFFFFFFFu) {
      // Word KW - 1 lies in the last stage: clear its padding bits in both tiles, once per block.
      const int wl = p.kw - 1 - kt * kBkWords;
      mask_shared_word(sa[stage], kBM, [wl](int r) { return r * kStride + wl; }, p.last_mask);
      mask_shared_word(sb[stage], kBN, [wl](int r) { return r * kStride + wl; }, p.last_mask);
      __syncthreads();
    }

    const uint32_t* a_s = sa[stage];
    const uint32_t* b_s = sb[stage];
#pragma unroll
    for (int step = 0; step < kBkWords / 8; ++step) {
      if (kt * kBkWords + step * 8 >= p.kw) break;  // the rest of this stage is padding
      const int w = step * 8 + t;
      uint32_t af[kMTiles][4];
      uint32_t bf[kNTiles][2];
      if (ldmatrix) {
        // A: matrices (rows 0-7 | 8-15) x (words 0-3 | 4-7) of the m tile, in fragment order;
        // B: words 0-3 and 4-7 of n tile j, then of n tile j + 1 (kNTiles is even).
        const int q = lane / 8;
        const int wq = step * 8 + (q / 2) * 4;
#pragma unroll
        for (int i = 0; i < kMTiles; ++i) {
          const int r = warp_m * kWarpRows + i * 16 + (q % 2) * 8 + lane % 8;
          ldmatrix_x4(af[i], a_s + r * kStride + wq);
        }
        static_assert(kNTiles % 2 == 0, "B fragments are loaded two n tiles at a time");
#pragma unroll
        for (int j = 0; j < kNTiles; j += 2) {
          const int c = warp_n * kWarpCols + (j + q / 2) * 8 + lane % 8;
          uint32_t r4[4];
          ldmatrix_x4(r4, b_s + c * kStride + step * 8 + (q % 2) * 4);
          bf[j][0] = r4[0];
          bf[j][1] = r4[1];
          bf[j + 1][0] = r4[2];
          bf[j + 1][1] = r4[3];
        }
      } else {
#pragma unroll
        for (int i = 0; i < kMTiles; ++i) {
          const int r = warp_m * kWarpRows + i * 16 + g;
          af[i][0] = a_s[r * kStride + w];
          af[i][1] = a_s[(r + 8) * kStride + w];
          af[i][2] = a_s[r * kStride + w + 4];
          af[i][3] = a_s[(r + 8) * kStride + w + 4];
        }
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const int c = warp_n * kWarpCols + j * 8 + g;
          bf[j][0] = b_s[c * kStride + w];
          bf[j][1] = b_s[c * kStride + w + 4];
        }
      }
      if constexpr (kAndForm) {
#pragma unroll
        for (int i = 0; i < kMTiles; ++i) {
          pop_a[i][0] += __popc(af[i][0]) + __popc(af[i][2]);
          pop_a[i][1] += __popc(af[i][1]) + __popc(af[i][3]);
        }
      }
      if constexpr (kPopB) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) pop_b[j] += __popc(bf[j][0]) + __popc(bf[j][1]);
      }
#pragma unroll
      for (int i = 0; i < kMTiles; ++i)
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) mma_b1(acc[i][j], af[i], bf[j]);
    }
    __syncthreads();  // the next iteration's loads overwrite the stage just read
  }

  // Sum the quad's shares, fetch the popcount of W row (2t + e) of each n tile from the quad that
  // holds it (lanes 4 (2t + e) .. + 3), and turn AND counts into XOR counts in place.
  if constexpr (kAndForm) {
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        pop_a[i][h] += __shfl_xor_sync(0xFFFFFFFFu, pop_a[i][h], 1);
        pop_a[i][h] += __shfl_xor_sync(0xFFFFFFFFu, pop_a[i][h], 2);
      }
    }
  }
  int32_t pop_col[kNTiles][2];  // popcount of W rows (columns of D) 2t and 2t + 1 of each n tile
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
    pop_col[j][0] = pop_col[j][1] = 0;
    if constexpr (kPopB) {
      pop_b[j] += __shfl_xor_sync(0xFFFFFFFFu, pop_b[j], 1);
      pop_b[j] += __shfl_xor_sync(0xFFFFFFFFu, pop_b[j], 2);
      pop_col[j][0] = __shfl_sync(0xFFFFFFFFu, pop_b[j], 4 * (2 * t));
      pop_col[j][1] = __shfl_sync(0xFFFFFFFFu, pop_b[j], 4 * (2 * t + 1));
    }
    if constexpr (kAndForm) {
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int32_t pa = pop_a[i][c >= 2 ? 1 : 0];
          acc[i][j][c] = pa + pop_col[j][c & 1] - 2 * acc[i][j][c];
        }
      }
    }
  }

  if constexpr (kPair) {
    // c = 2h and 2h + 1 are columns 2t and 2t + 1 of row g + 8h: one 2-wide store per pair.
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + warp_m * kWarpRows + i * 16 + g + 8 * h;
        if (row >= p.m) continue;
        float row_scale = 0.0f;
        if constexpr (kOut != OutKind::kInt32) row_scale = ep.row_scale[row];
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const int64_t col = n0 + warp_n * kWarpCols + j * 8 + 2 * t;
          store_output_pair<kOut>(
              ep, p.n, row, col, dot_from_xor<kUnsigned>(p.k, acc[i][j][2 * h], pop_col[j][0]),
              dot_from_xor<kUnsigned>(p.k, acc[i][j][2 * h + 1], pop_col[j][1]), row_scale,
              vector_ok);
        }
      }
    }
  } else {
    (void)vector_ok;
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t row = m0 + warp_m * kWarpRows + i * 16 + g + (c >= 2 ? 8 : 0);
          const int64_t col = n0 + warp_n * kWarpCols + j * 8 + 2 * t + (c & 1);
          if (row < p.m && col < p.n) {
            store_output<kOut>(ep, p.n, row, col,
                               dot_from_xor<kUnsigned>(p.k, acc[i][j][c], pop_col[j][c & 1]));
          }
        }
      }
    }
  }
#endif
}

template <int kBM, int kBN, int kWarpsM, int kWarpsN, OutKind kOut, bool kUnsigned>
cudaError_t launch_tile(const GemmProblem& p, const Epilogue& ep, cudaStream_t stream) {
  const int64_t grid_m = (p.m + kBM - 1) / kBM;
  const int64_t grid_n = (p.n + kBN - 1) / kBN;
  if (grid_m > 0x7FFFFFFF || grid_n > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(grid_m), static_cast<unsigned>(grid_n));
  // A pair of outputs is 8-byte aligned when N is even and `out` is (int32 / float32; 4 for fp16).
  const bool vector_ok = p.n % 2 == 0 && reinterpret_cast<uintptr_t>(ep.out) % 8 == 0;
  // 16-byte copies where every row's words start 16-byte aligned (wide_copy_from_env)
  const bool wide = wide_copy_from_env() && p.kw % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(p.a) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.b) % 16 == 0;
  const bool ldmatrix = ldmatrix_fragments_from_env();
  if (pair_epilogue_from_env()) {
    xnor_gemm_mma_kernel<kBM, kBN, kWarpsM, kWarpsN, kOut, kUnsigned, true>
        <<<grid, kWarpsM * kWarpsN * 32, 0, stream>>>(p, ep, vector_ok, wide, ldmatrix);
  } else {
    xnor_gemm_mma_kernel<kBM, kBN, kWarpsM, kWarpsN, kOut, kUnsigned, false>
        <<<grid, kWarpsM * kWarpsN * 32, 0, stream>>>(p, ep, vector_ok, wide, ldmatrix);
  }
  return cudaGetLastError();
}

}  // namespace

template <OutKind kOut, bool kUnsigned>
cudaError_t launch_mma(const GemmProblem& p, const Epilogue& ep, int num_sms, cudaStream_t stream) {
  // Large tiles when they alone fill the GPU; otherwise 64 x 64 tiles for more blocks.
  const int64_t big_tiles = ((p.m + 127) / 128) * ((p.n + 127) / 128);
  if (big_tiles >= num_sms) return launch_tile<128, 128, 4, 2, kOut, kUnsigned>(p, ep, stream);
  return launch_tile<64, 64, 2, 2, kOut, kUnsigned>(p, ep, stream);
}

BITMAPS_INSTANTIATE_GEMM_LAUNCHER(launch_mma, const GemmProblem&, const Epilogue&, int,
                                  cudaStream_t)

cudaError_t probe_mma(bool* available) {
  cudaFuncAttributes attr{};
  return probe_result(cudaFuncGetAttributes(&attr, mma_probe_kernel), attr, available);
}

}  // namespace detail
}  // namespace cuda
}  // namespace bitmaps

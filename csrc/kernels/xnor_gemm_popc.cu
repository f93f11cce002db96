// The plain CUDA-core XNOR GEMM: dot = K - 2 * sum_w __popc(a[m, w] ^ b[n, w]) (signed), or
// sum_w __popc(a ^ b) - __popc(b) for {0, 1} activations (xnor_gemm_cuda_impl.cuh).
//
// Deliberately the textbook shared-memory tiled matrix product (16 x 16 outputs per block, one per
// thread, 16 words of K per step), so that it is obviously right: it is the fallback for GPUs
// without b1 tensor cores and the path the tensor-core paths are compared against on a GPU.
#include "kernels/xnor_gemm_cuda_impl.cuh"

namespace bitmaps {
namespace cuda {
namespace detail {
namespace {

constexpr int kTile = 16;

template <OutKind kOut, bool kUnsigned>
__global__ void __launch_bounds__(kTile* kTile) xnor_gemm_popc_kernel(GemmProblem p, Epilogue ep) {
  // +1 column: threads of a warp read bs[tx][j] for 16 different tx without bank conflicts.
  __shared__ uint32_t as[kTile][kTile + 1];
  __shared__ uint32_t bs[kTile][kTile + 1];

  const int tx = threadIdx.x;  // output column within the tile (n), so stores are coalesced
  const int ty = threadIdx.y;  // output row within the tile (m)
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;

  int32_t xor_pop = 0;
  int32_t pop_b = 0;  // popcount of weight row n0 + tx (unsigned activations only)
  for (int w0 = 0; w0 < p.kw; w0 += kTile) {
    const int w = w0 + tx;
    const int64_t am = m0 + ty;
    const int64_t bn = n0 + ty;
    const uint32_t mask = w == p.kw - 1 ? p.last_mask : 0xFFFFFFFFu;  // padding bits count 0
    as[ty][tx] = (am < p.m && w < p.kw) ? p.a[am * p.kw + w] & mask : 0u;
    bs[ty][tx] = (bn < p.n && w < p.kw) ? p.b[bn * p.kw + w] & mask : 0u;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      xor_pop += __popc(as[ty][j] ^ bs[tx][j]);
      if constexpr (kUnsigned) pop_b += __popc(bs[tx][j]);
    }
    __syncthreads();
  }

  const int64_t row = m0 + ty;
  const int64_t col = n0 + tx;
  if (row < p.m && col < p.n) {
    store_output<kOut>(ep, p.n, row, col, dot_from_xor<kUnsigned>(p.k, xor_pop, pop_b));
  }
}

}  // namespace

template <OutKind kOut, bool kUnsigned>
cudaError_t launch_popc(const GemmProblem& p, const Epilogue& ep, cudaStream_t stream) {
  const int64_t grid_m = (p.m + kTile - 1) / kTile;
  const int64_t grid_n = (p.n + kTile - 1) / kTile;
  if (grid_m > 0x7FFFFFFF || grid_n > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(grid_m), static_cast<unsigned>(grid_n));
  const dim3 block(kTile, kTile);
  xnor_gemm_popc_kernel<kOut, kUnsigned><<<grid, block, 0, stream>>>(p, ep);
  return cudaGetLastError();
}

BITMAPS_INSTANTIATE_GEMM_LAUNCHER(launch_popc, const GemmProblem&, const Epilogue&, cudaStream_t)

}  // namespace detail
}  // namespace cuda
}  // namespace bitmaps

// Deterministic block and grid reductions for the CUDA loss kernels: a fixed shared-memory tree inside a
// block, and a "last block" final pass that sums the per-block partials in block order (an integer ticket
// picks the block that runs it; the summation order never depends on the schedule).
#pragma once

#include <cstdint>

namespace pscfast {

// Sum of v over the block (blockDim.x a power of two <= 1024), returned to every thread.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();  // the shared array may be reused right after
  return r;
}

// Thread 0 publishes the block's partial(s) first; returns true in every thread of the last block to
// arrive, after which all partials are visible.
__device__ inline bool last_block(unsigned* ticket) {
  __shared__ bool last;
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(ticket, 1u) == gridDim.x * gridDim.y - 1;
  }
  __syncthreads();
  return last;
}

// Sum of partial[0 .. n) in a fixed order (strided per thread, then the block tree).
template <typename T>
__device__ T sum_partials(const T* partial, int64_t n, T* shared) {
  T acc = T(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += static_cast<const volatile T*>(partial)[i];
  return block_sum(acc, shared);
}

}  // namespace pscfast

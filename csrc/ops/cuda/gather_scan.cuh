// The deterministic image-b (or f_ab) gradient of the CUDA composition backwards (grid_composition.cuh,
// compose_displacement_kernel.cu): a scatter written as a gather. Each thread owns one node q of the small
// field and scans every pixel of its sample, tile by tile through shared memory, adding w_tap g[c] of each
// (pixel, tap) that reads q in pixel order: no atomics, and the summation order never depends on the schedule.
#pragma once

#include <cstdint>

#include "ops/common/field_sample.h"

namespace pscfast {

// acc[c] += sum over pixels p < P (in order) and taps k with taps.idx[k] == q of taps.w[k] g[c], where
// `const FieldTaps<T> taps = taps_of(p, g)` also fills the pixel's C gradient values g[0..C). Every thread of
// the block (blockDim.x == kThreads) must call it, q in range or not.
template <int C, int kThreads, typename T, typename TapsOf>
__device__ void gather_scan(int64_t P, int q, const TapsOf& taps_of, T acc[C]) {
  __shared__ int sidx[4][kThreads];
  __shared__ T swg[4][kThreads][C];
  for (int64_t tile = 0; tile < P; tile += kThreads) {
    const int64_t p = tile + threadIdx.x;
    if (p < P) {
      T g[C];
      const FieldTaps<T> t = taps_of(p, g);
      for (int k = 0; k < 4; ++k) {
        sidx[k][threadIdx.x] = t.idx[k];
        for (int c = 0; c < C; ++c) swg[k][threadIdx.x][c] = t.w[k] * g[c];
      }
    } else {
      for (int k = 0; k < 4; ++k) sidx[k][threadIdx.x] = -1;
    }
    __syncthreads();
    const int count = static_cast<int>(P - tile < kThreads ? P - tile : kThreads);
    for (int j = 0; j < count; ++j)
      for (int k = 0; k < 4; ++k)
        if (sidx[k][j] == q)
          for (int c = 0; c < C; ++c) acc[c] += swg[k][j][c];
    __syncthreads();
  }
}

}  // namespace pscfast

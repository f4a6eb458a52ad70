// Shared by the CUDA similarity loss forward (similarity_loss_kernel.cu) and backward
// (similarity_loss_backward_kernel.cu): the S tile recomputed in shared memory, the clamped L1 inverse, the
// launch and chunk sizes, and the backward's declaration (it is registered next to the forward).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "ops/common/similarity_loss_checks.h"

namespace pscfast {

constexpr int kB = 32, kK = 32, kThreads = 256, kRowsPerPass = kThreads / kB;

template <typename acc_t>
struct Smem {
  acc_t s[kB][kB + 1];
  acc_t wa[kK][kB];
  acc_t tb[kK][kB];
};

// s[ii][jj] = S[i0 + ii, j0 + jj] of one sample (0 outside P). Thread (ty, tx) owns rows ty + 8 q, column tx.
template <typename scalar_t, typename acc_t>
__device__ void tile(const scalar_t* w, const scalar_t* t, int C, int P, int i0, int j0, Smem<acc_t>& m) {
  const int tx = threadIdx.x % kB, ty = threadIdx.x / kB;
  acc_t acc[kB / kRowsPerPass] = {};
  for (int c0 = 0; c0 < C; c0 += kK) {
    for (int r = ty; r < kK; r += kRowsPerPass) {
      const int c = c0 + r;
      m.wa[r][tx] = (c < C && i0 + tx < P) ? static_cast<acc_t>(w[static_cast<int64_t>(c) * P + i0 + tx]) : acc_t(0);
      m.tb[r][tx] = (c < C && j0 + tx < P) ? static_cast<acc_t>(t[static_cast<int64_t>(c) * P + j0 + tx]) : acc_t(0);
    }
    __syncthreads();
    for (int k = 0; k < kK; ++k) {
      const acc_t tv = m.tb[k][tx];
#pragma unroll
      for (int q = 0; q < kB / kRowsPerPass; ++q) acc[q] += m.wa[k][ty + kRowsPerPass * q] * tv;
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kB / kRowsPerPass; ++q) m.s[ty + kRowsPerPass * q][tx] = acc[q];
  __syncthreads();
}

template <typename acc_t>
__device__ acc_t inv_clamped(acc_t x) {
  return acc_t(1) / (x > acc_t(kSimilarityEps) ? x : acc_t(kSimilarityEps));
}

inline unsigned blocks(int64_t P) { return static_cast<unsigned>((P + kB - 1) / kB); }

// Samples per chunk: the resized copies of a chunk (fw, ft and, in the backward, their gradients: 4 buffers
// of (C, P) per sample) stay under 256 MiB, small next to a training step's activations, while a chunk still
// gives the grid enough blocks (R18 at size 64: 10 samples x 128 column blocks). PSCFAST_SIMILARITY_CHUNK_BYTES
// overrides the budget (tests force several chunks with it; kernels/_resize.py reads the same variable).
// A chunk is the grids' y dimension, so at most 65535 samples.
inline int64_t chunk_samples(int64_t N, int64_t C, int64_t P, int64_t itemsize) {
  int64_t budget = int64_t(256) << 20;
  if (const char* e = std::getenv("PSCFAST_SIMILARITY_CHUNK_BYTES")) budget = std::atoll(e);
  return std::max<int64_t>(1, std::min({N, budget / (4 * C * P * itemsize), int64_t(65535)}));
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> similarity_loss_backward_cuda(
    const at::Tensor& grad_, at::TensorList fw_, at::TensorList ft_, const at::Tensor& stats_, double tau, int64_t size,
    std::array<bool, 2> output_mask);

}  // namespace pscfast

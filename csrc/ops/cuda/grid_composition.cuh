// The composition of absolute grids on CUDA, shared by compose and consistency_loss: f_ab (N, h, w, 2)
// sampled at the grid points of f_bc (N, h', w', 2) (align_corners=True, zeros outside), and the backward of
// both ops in one launch with blocks of two kinds, each launched only for a gradient asked for. Pointwise
// blocks write d f_bc per pixel; scatter blocks own kThreads nodes of f_ab each and gather d f_ab from every
// pixel of their sample, tile by tile through shared memory, in pixel order (deterministic, no atomics). For
// the loss the incoming gradient 2 grad (cycle - identity) mask / count is recomputed from the cycle.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "ops/common/field_sample.h"
#include "ops/cuda/gather_scan.cuh"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace cuda_compose {

constexpr int kThreads = 256;

struct Dims {
  int64_t N, P;  // batch, pixels of f_bc's (the output's) grid
  int h, w, wo;  // f_ab's grid, the output's width
};

inline Dims dims_of(const at::Tensor& f_ab, const at::Tensor& f_bc) {
  return {f_ab.size(0), f_bc.size(1) * f_bc.size(2), static_cast<int>(f_ab.size(1)), static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_bc.size(2))};
}

template <typename scalar_t>
struct BackwardArgs {
  const scalar_t *grad, *fab, *fbc, *xs, *ys;  // grad: (N, h', w', 2) for compose, a scalar for the loss
  const int64_t* count;                        // the loss's count (loss only)
  scalar_t *dfab, *dfbc;                       // null: not wanted
  Dims D;
  bool nearest, loss;
  int scatter_blocks;  // per sample
};

// Taps of pixel p of sample n and d L / d cycle there.
template <typename scalar_t, typename T>
__device__ FieldTaps<T> pixel_grad(const BackwardArgs<scalar_t>& A, int64_t n, int64_t p, T g[2], T* dpx, T* dpy) {
  const Dims& D = A.D;
  const scalar_t* fab_n = A.fab + n * D.h * D.w * 2;
  const auto t = compose_taps<T>(A.fbc + n * D.P * 2, p, D.h, D.w, A.nearest, dpx, dpy);
  if (A.loss) {
    const int64_t c = *A.count;
    const T scale = static_cast<T>(*A.grad) * T(2) / static_cast<T>(c > 0 ? c : 1);
    const T id[2] = {static_cast<T>(A.xs[p % D.wo]), static_cast<T>(A.ys[p / D.wo])};
    for (int k = 0; k < 2; ++k) {
      const T v = field_value(t, fab_n, 2, k);
      g[k] = consistency_term(v, id[k]) ? scale * (v - id[k]) : T(0);
    }
  } else {
    const scalar_t* gp = A.grad + (n * D.P + p) * 2;
    g[0] = static_cast<T>(gp[0]);
    g[1] = static_cast<T>(gp[1]);
  }
  return t;
}

template <typename scalar_t>
__global__ void backward_kernel(BackwardArgs<scalar_t> A) {
  using T = at::opmath_type<scalar_t>;
  const Dims& D = A.D;
  const int64_t n = blockIdx.y;
  if (static_cast<int>(blockIdx.x) >= A.scatter_blocks) {  // pointwise: d f_bc
    const int64_t p = static_cast<int64_t>(blockIdx.x - A.scatter_blocks) * kThreads + threadIdx.x;
    if (p >= D.P) return;
    T g[2], dpx, dpy;
    const auto t = pixel_grad(A, n, p, g, &dpx, &dpy);
    T ax = T(0), ay = T(0);
    if (!A.nearest) {
      const scalar_t* fab_n = A.fab + n * D.h * D.w * 2;
      field_coord_grad(t, fab_n, 2, 0, g[0], &ax, &ay);
      field_coord_grad(t, fab_n, 2, 1, g[1], &ax, &ay);
    }
    A.dfbc[(n * D.P + p) * 2] = static_cast<scalar_t>(ax * dpx);
    A.dfbc[(n * D.P + p) * 2 + 1] = static_cast<scalar_t>(ay * dpy);
    return;
  }
  // scatter: node q of f_ab gathers w_k g from every (pixel, tap) that reads it, in pixel order
  const int q = blockIdx.x * kThreads + threadIdx.x;
  T acc[2] = {T(0), T(0)};
  gather_scan<2, kThreads>(
      D.P, q,
      [&](int64_t p, T* g) {
        T dpx, dpy;
        return pixel_grad(A, n, p, g, &dpx, &dpy);
      },
      acc);
  if (q < D.h * D.w) {
    A.dfab[(n * D.h * D.w + q) * 2] = static_cast<scalar_t>(acc[0]);
    A.dfab[(n * D.h * D.w + q) * 2 + 1] = static_cast<scalar_t>(acc[1]);
  }
}

// Launches the scatter blocks only for a wanted d f_ab and the pointwise blocks only for a wanted d f_bc.
template <typename scalar_t>
void launch_backward(BackwardArgs<scalar_t> A) {
  TORCH_CHECK(A.D.N < 65536,
              "pscfast: the CUDA backward of compose and consistency_loss takes batches of fewer "
              "than 65536 flows, got ",
              A.D.N);
  A.scatter_blocks = A.dfab ? static_cast<int>(blocks_for<kThreads>(static_cast<int64_t>(A.D.h) * A.D.w)) : 0;
  const unsigned pointwise_blocks = A.dfbc ? blocks_for<kThreads>(A.D.P) : 0;
  if (A.D.N == 0 || A.scatter_blocks + pointwise_blocks == 0) return;
  const dim3 grid(A.scatter_blocks + pointwise_blocks, static_cast<unsigned>(A.D.N));
  backward_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(A);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_compose
}  // namespace pscfast

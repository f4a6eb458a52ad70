// pscfast::correlation on CUDA: float, double, half and bfloat16 (accumulation in float for the half types).
//
// Forward, one launch per layer: block (t tile, s tile, n) computes a 64 x 64 tile of
// out[n, l S_t + t, s] = sum_c R_t[c, t] R_s[c, s] (t on the ht x wt target grid, s on the hs x ws source
// grid). The taps of its 64 tgt and 64 src positions (resize, or
// grid sample for src; csrc/ops/common/correlation_taps.h) go to shared memory once; each step over 16
// channels resamples the two 16 x 64 slabs while loading them into shared memory, so no resized copy of a
// map is ever written to global memory; each thread accumulates a 4 x 4 sub-tile, multiplied by the scale
// (RAFT's 1 / sqrt(C)) as it is stored.
// A layer whose maps are both already at their grids' sizes (direct, correlation_taps.h) is one batched
// product instead, cuBLAS's (the scale its alpha): GLU-Net's, SFNet's and RAFT's global correlations run at
// bmm's speed.
// The backward is in correlation_backward_kernel.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/cuda/correlation_common.cuh"

namespace pscfast {
namespace {

// Block (t tile, s tile, n): out[n, layer S_t + t, s] for 64 x 64 (t, s).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ tgt,
                   const scalar_t* __restrict__ grid, scalar_t* __restrict__ out, int C, int Hs, int Ws, int Ht, int Wt,
                   CorrelationGrids g, int layer, int layers, at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  __shared__ int toff[kTile][4], soff[kTile][4];
  __shared__ T tw[kTile][4], sw[kTile][4];
  __shared__ T As[kChunk][kTile], Bs[kChunk][kTile];
  const int St = g.ht * g.wt, Ss = g.hs * g.ws, tid = threadIdx.x;
  const int64_t n = blockIdx.z;
  const int t0 = blockIdx.x * kTile, s0 = blockIdx.y * kTile;
  if (tid < kTile) {
    const Tap4<T> q = position_taps<T, scalar_t>(nullptr, t0 + tid, g.ht, g.wt, Ht, Wt);
    for (int k = 0; k < 4; ++k) toff[tid][k] = q.off[k], tw[tid][k] = q.w[k];
  } else if (tid < 2 * kTile) {
    const int p = tid - kTile;
    const Tap4<T> q = position_taps<T, scalar_t>(grid ? grid + n * Ss * 2 : nullptr, s0 + p, g.hs, g.ws, Hs, Ws);
    for (int k = 0; k < 4; ++k) soff[p][k] = q.off[k], sw[p][k] = q.w[k];
  }
  __syncthreads();
  const int64_t pt = static_cast<int64_t>(Ht) * Wt, ps = static_cast<int64_t>(Hs) * Ws;
  const scalar_t* tg = tgt + n * C * pt;
  const scalar_t* sr = src + n * C * ps;
  const int ty = tid / 16, tx = tid % 16;
  T acc[4][4] = {};
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    for (int i = tid; i < kChunk * kTile; i += kThreads) {
      const int c = i / kTile, p = i % kTile;
      T a = T(0), b = T(0);
      if (c0 + c < C) {
        a = resampled(tg + (c0 + c) * pt, toff[p], tw[p]);
        b = resampled(sr + (c0 + c) * ps, soff[p], sw[p]);
      }
      As[c][p] = a;
      Bs[c][p] = b;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      T a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = As[c][ty * 4 + i], b[i] = Bs[c][tx * 4 + i];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int t = t0 + ty * 4 + i;
    if (t >= St) continue;
    scalar_t* row = out + ((n * layers + layer) * St + t) * static_cast<int64_t>(Ss);
    for (int j = 0; j < 4; ++j) {
      const int s = s0 + tx * 4 + j;
      if (s < Ss) row[s] = static_cast<scalar_t>(acc[i][j] * scale);
    }
  }
}

at::Tensor correlation_cuda(at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
                            c10::IntArrayRef size, c10::IntArrayRef target_size, double scale) {
  const CorrelationGrids grids = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const c10::cuda::CUDAGuard guard(src_[0].device());
  const auto src = contiguous(src_), tgt = contiguous(tgt_);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const int64_t N = src[0].size(0), L = static_cast<int64_t>(src.size());
  TORCH_CHECK(N < 65536, "pscfast::correlation: batch sizes of 65536 or more are not supported on CUDA");
  auto out = at::empty({N, L * grids.St(), grids.hs, grids.ws}, src[0].options());
  if (N == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto out3 = out.view({N, L * grids.St(), grids.Ss()});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src[0].scalar_type(), "correlation_cuda", [&] {
    const scalar_t* g = grid.defined() ? grid.const_data_ptr<scalar_t>() : nullptr;
    for (int64_t l = 0; l < L; ++l) {
      if (direct_tgt(tgt[l], grids) && direct_src(src[l], grids, grid.defined())) {
        const int64_t C = src[l].size(1);
        auto block = out3.narrow(1, l * grids.St(), grids.St());
        bmm_scaled(block, tgt[l].view({N, C, grids.St()}).transpose(1, 2), src[l].view({N, C, grids.Ss()}), scale);
        continue;
      }
      forward_kernel<scalar_t><<<tiles(grids.St(), grids.Ss(), N), kThreads, 0, stream>>>(
          src[l].const_data_ptr<scalar_t>(), tgt[l].const_data_ptr<scalar_t>(), g, out.mutable_data_ptr<scalar_t>(),
          static_cast<int>(src[l].size(1)), static_cast<int>(src[l].size(2)), static_cast<int>(src[l].size(3)),
          static_cast<int>(tgt[l].size(2)), static_cast<int>(tgt[l].size(3)), grids, static_cast<int>(l),
          static_cast<int>(L), static_cast<at::opmath_type<scalar_t>>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("correlation", &correlation_cuda);
  m.impl("_correlation_backward", &correlation_backward_cuda);
}

}  // namespace pscfast

// pscfast::_correlation_backward on CUDA; the forward and both registrations are in correlation_kernel.cu.
// Deterministic (no atomics), per layer with G = grad block (S_t, S_s):
//  - dR_t = R_s G^T and dR_s = R_t G with the same tiling (R resampled on the fly), times the forward's
//    scale where they are stored (so the map and grid gradients below carry it), into an (N, C, S_t) or
//    (N, C, S_s) float buffer;
//  - map gradients: the (position, tap) pairs are sorted by the element they read (a stable sort; one
//    table for the resize, one per sample for the grid), and one thread per element sums its segment in
//    that order (gather form);
//  - dgrid: one thread per grid point sums over channels in order, layers added in order.
// A direct side (correlation_taps.h) needs no adjoint: dR is its gradient. A layer direct on both sides is
// two batched products (cuBLAS, the scale their alpha), dsrc = tgt G and dtgt = src G^T.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <vector>

#include "ops/cuda/correlation_common.cuh"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace {

// Block (c tile, p tile, n): dR_y[c, p] = sum_k R_x[c, k] G'[k, p], x the other map (resampled on the fly
// to its grid, or sampled at the grid when grid is given), G' = G (wrt_src: k = t, p = s) or G^T (k = s,
// p = t); G is (S_t, S_s), row-major; dR is stored times scale.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    resampled_grad_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grid,
                          const scalar_t* __restrict__ gout, at::opmath_type<scalar_t>* __restrict__ dr, int C, int Hx,
                          int Wx, CorrelationGrids g, int layer, int layers, bool wrt_src,
                          at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  __shared__ int xoff[kChunk][4];
  __shared__ T xw[kChunk][4];
  __shared__ T As[kChunk][kTile], Bs[kChunk][kTile];
  const int St = g.ht * g.wt, Ss = g.hs * g.ws, tid = threadIdx.x;
  const int K = wrt_src ? St : Ss, P = wrt_src ? Ss : St;  // x's positions, y's positions
  const int kh = wrt_src ? g.ht : g.hs, kw = wrt_src ? g.wt : g.ws;
  const int64_t n = blockIdx.z;
  const int c0 = blockIdx.x * kTile, p0 = blockIdx.y * kTile;
  const int64_t plane = static_cast<int64_t>(Hx) * Wx;
  const scalar_t* xn = x + n * C * plane;
  const scalar_t* gn = gout + (n * layers + layer) * static_cast<int64_t>(St) * Ss;
  const scalar_t* grid_n = grid ? grid + n * Ss * 2 : nullptr;
  const int ty = tid / 16, tx = tid % 16;
  T acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kChunk) {
    if (tid < kChunk) {
      const Tap4<T> q = position_taps<T, scalar_t>(grid_n, k0 + tid, kh, kw, Hx, Wx);
      for (int k = 0; k < 4; ++k) xoff[tid][k] = q.off[k], xw[tid][k] = q.w[k];
    }
    __syncthreads();
    for (int i = tid; i < kChunk * kTile; i += kThreads) {
      const int k = i / kTile, j = i % kTile;
      As[k][j] = c0 + j < C ? resampled(xn + (c0 + j) * plane, xoff[k], xw[k]) : T(0);
      const int kk = k0 + k, p = p0 + j;
      T gv = T(0);
      if (kk < K && p < P)
        gv = static_cast<T>(wrt_src ? gn[static_cast<int64_t>(kk) * Ss + p] : gn[static_cast<int64_t>(p) * Ss + kk]);
      Bs[k][j] = gv;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      T a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty * 4 + i], b[i] = Bs[k][tx * 4 + i];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int c = c0 + ty * 4 + i;
    if (c >= C) continue;
    for (int j = 0; j < 4; ++j) {
      const int p = p0 + tx * 4 + j;
      if (p < P) dr[(n * C + c) * P + p] = acc[i][j] * scale;
    }
  }
}

// One thread per (n, s): dgrid[n, s] += sum_c dR_s[c, s] * d(sample)/d(pixel) * d(pixel)/d(grid), S = the
// grid's positions.
template <typename scalar_t>
__global__ void grid_grad_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ grid,
                                 const at::opmath_type<scalar_t>* __restrict__ dr,
                                 at::opmath_type<scalar_t>* __restrict__ dgrid, int64_t N, int C, int H, int W, int S) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * S) return;
  const int64_t n = idx / S;
  const int s = static_cast<int>(idx % S);
  T dpx, dpy;
  const Taps<T> b = grid_taps(static_cast<T>(grid[idx * 2]), static_cast<T>(grid[idx * 2 + 1]), H, W, &dpx, &dpy);
  const Tap4<T> q = to_tap4(b, W);
  const int64_t plane = static_cast<int64_t>(H) * W;
  T ax = T(0), ay = T(0);
  for (int c = 0; c < C; ++c) {
    const scalar_t* xc = src + (n * C + c) * plane;
    T v[4];
    for (int k = 0; k < 4; ++k) v[k] = b.in[k] ? static_cast<T>(xc[q.off[k]]) : T(0);
    T gx, gy;
    bilinear_coord_grad(b, v, &gx, &gy);
    const T g = dr[(n * C + c) * S + s];
    ax += g * gx;
    ay += g * gy;
  }
  dgrid[idx * 2] += ax * dpx;
  dgrid[idx * 2 + 1] += ay * dpy;
}

// Key (n * H * W + element read, or nk * H * W for taps that read nothing) and weight of each tap of
// every position of nk tap tables of an oh x ow grid (nk = N for the grid, 1 for the resize).
template <typename scalar_t>
__global__ void tap_keys_kernel(const scalar_t* __restrict__ grid, int32_t* __restrict__ keys,
                                at::opmath_type<scalar_t>* __restrict__ weights, int64_t nk, int oh, int ow, int H,
                                int W) {
  using T = at::opmath_type<scalar_t>;
  const int S = oh * ow;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= nk * S) return;
  const int64_t n = idx / S;
  const int s = static_cast<int>(idx % S);
  const Tap4<T> q = position_taps<T, scalar_t>(grid ? grid + n * S * 2 : nullptr, s, oh, ow, H, W);
  const int64_t plane = static_cast<int64_t>(H) * W;
  for (int k = 0; k < 4; ++k) {
    keys[idx * 4 + k] = static_cast<int32_t>(q.w[k] != T(0) ? n * plane + q.off[k] : nk * plane);
    weights[idx * 4 + k] = q.w[k];
  }
}

// One thread per map element (n, c, q): the sum of weight * dR[n, c, s] over q's sorted taps.
template <typename scalar_t>
__global__ void gather_kernel(const at::opmath_type<scalar_t>* __restrict__ dr, const int64_t* __restrict__ order,
                              const int64_t* __restrict__ offsets,
                              const at::opmath_type<scalar_t>* __restrict__ weights, scalar_t* __restrict__ dx,
                              int64_t N, int C, int64_t plane, int S, bool per_sample) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * C * plane) return;
  const int64_t q = idx % plane, row = idx / plane, n = row / C;
  const int64_t ks = per_sample ? n : 0, key = ks * plane + q;
  T acc = T(0);
  for (int64_t e = offsets[key]; e < offsets[key + 1]; ++e) {
    const int64_t entry = order[e];
    acc += weights[entry] * dr[row * S + (entry / 4 - ks * S)];
  }
  dx[idx] = static_cast<scalar_t>(acc);
}

// Map gradient (N, C, H, W) from dR (N, C, oh * ow) through the taps of the oh x ow grid (grid given:
// per-sample tables).
template <typename scalar_t>
at::Tensor adjoint(const at::Tensor& dr, const scalar_t* grid, c10::IntArrayRef shape, int oh, int ow,
                   const at::TensorOptions& out_options, cudaStream_t stream) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = shape[0], C = shape[1], plane = shape[2] * shape[3], S = static_cast<int64_t>(oh) * ow;
  const int64_t nk = grid ? N : 1;
  TORCH_CHECK(nk * plane < (int64_t(1) << 31) && nk * S * 4 < (int64_t(1) << 31),
              "pscfast::_correlation_backward: maps too large for the CUDA backward");
  auto keys = at::empty({nk * S * 4}, dr.options().dtype(at::kInt));
  auto weights = at::empty({nk * S * 4}, dr.options());
  tap_keys_kernel<scalar_t><<<blocks_for<kThreads>(nk * S), kThreads, 0, stream>>>(
      grid, keys.mutable_data_ptr<int32_t>(), weights.mutable_data_ptr<T>(), nk, oh, ow, static_cast<int>(shape[2]),
      static_cast<int>(shape[3]));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto offsets = at::searchsorted(std::get<0>(sorted), at::arange(nk * plane + 1, keys.options())).to(at::kLong);
  const auto order = std::get<1>(sorted);
  auto dx = at::empty(shape, out_options);
  if (dx.numel() == 0) return dx;
  gather_kernel<scalar_t><<<blocks_for<kThreads>(N * C * plane), kThreads, 0, stream>>>(
      dr.const_data_ptr<T>(), order.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
      weights.const_data_ptr<T>(), dx.mutable_data_ptr<scalar_t>(), N, static_cast<int>(C), plane, static_cast<int>(S),
      grid != nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> correlation_backward_cuda(
    const at::Tensor& grad_out, at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
    c10::IntArrayRef size, c10::IntArrayRef target_size, double scale, std::array<bool, 3> mask) {
  const CorrelationGrids grids = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const c10::cuda::CUDAGuard guard(src_[0].device());
  const auto src = contiguous(src_), tgt = contiguous(tgt_);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const int64_t N = src[0].size(0), L = static_cast<int64_t>(src.size()), Ss = grids.Ss(), St = grids.St();
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == N && grad_out.size(1) == L * St &&
                  grad_out.size(2) == grids.hs && grad_out.size(3) == grids.ws,
              "pscfast::_correlation_backward: grad_out must be (N, L * ht * wt, hs, ws), got ", grad_out.sizes());
  TORCH_CHECK(N < 65536, "pscfast::_correlation_backward: batch sizes of 65536 or more are not supported on CUDA");
  const bool need_src = mask[0], need_tgt = mask[1], need_grid = mask[2] && grid.defined();
  const auto gout = grad_out.to(src[0].scalar_type()).contiguous();
  std::vector<at::Tensor> dsrc, dtgt;
  at::Tensor dgrid;  // masked or without a grid: undefined (None)
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src[0].scalar_type(), "correlation_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto acc_options = src[0].options().dtype(c10::CppTypeToScalarType<T>::value);
    const scalar_t* g = grid.defined() ? grid.const_data_ptr<scalar_t>() : nullptr;
    at::Tensor dgrid_acc = need_grid ? at::zeros({N, grids.hs, grids.ws, 2}, acc_options) : at::Tensor();
    for (int64_t l = 0; l < L; ++l) {
      const int C = static_cast<int>(src[l].size(1));
      const int Hs = static_cast<int>(src[l].size(2)), Ws = static_cast<int>(src[l].size(3));
      const int Ht = static_cast<int>(tgt[l].size(2)), Wt = static_cast<int>(tgt[l].size(3));
      if (N == 0 || C == 0) {
        if (need_src) dsrc.push_back(at::zeros(src[l].sizes(), src[l].options()));
        if (need_tgt) dtgt.push_back(at::zeros(tgt[l].sizes(), tgt[l].options()));
        continue;
      }
      const bool dt = direct_tgt(tgt[l], grids), ds = direct_src(src[l], grids, grid.defined());
      if (dt && ds) {
        const auto G = gout.view({N, L * St, Ss}).narrow(1, l * St, St);
        if (need_tgt) {
          auto d = at::empty(tgt[l].sizes(), tgt[l].options());
          auto d3 = d.view({N, C, St});
          bmm_scaled(d3, src[l].view({N, C, Ss}), G.transpose(1, 2), scale);
          dtgt.push_back(d);
        }
        if (need_src) {
          auto d = at::empty(src[l].sizes(), src[l].options());
          auto d3 = d.view({N, C, Ss});
          bmm_scaled(d3, tgt[l].view({N, C, St}), G, scale);
          dsrc.push_back(d);
        }
        continue;
      }
      if (need_tgt) {  // dR_t = R_s G^T
        auto dr = at::empty({N, C, St}, acc_options);
        resampled_grad_kernel<scalar_t><<<tiles(C, St, N), kThreads, 0, stream>>>(
            src[l].const_data_ptr<scalar_t>(), g, gout.const_data_ptr<scalar_t>(), dr.mutable_data_ptr<T>(), C, Hs, Ws,
            grids, static_cast<int>(l), static_cast<int>(L), false, static_cast<T>(scale));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dtgt.push_back(
            dt ? dr.view(tgt[l].sizes()).to(tgt[l].scalar_type())
               : adjoint<scalar_t>(dr, nullptr, tgt[l].sizes(), grids.ht, grids.wt, tgt[l].options(), stream));
      }
      if (need_src || need_grid) {  // dR_s = R_t G
        auto dr = at::empty({N, C, Ss}, acc_options);
        resampled_grad_kernel<scalar_t><<<tiles(C, Ss, N), kThreads, 0, stream>>>(
            tgt[l].const_data_ptr<scalar_t>(), nullptr, gout.const_data_ptr<scalar_t>(), dr.mutable_data_ptr<T>(), C,
            Ht, Wt, grids, static_cast<int>(l), static_cast<int>(L), true, static_cast<T>(scale));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (need_src)
          dsrc.push_back(ds ? dr.view(src[l].sizes()).to(src[l].scalar_type())
                            : adjoint<scalar_t>(dr, g, src[l].sizes(), grids.hs, grids.ws, src[l].options(), stream));
        if (need_grid) {
          grid_grad_kernel<scalar_t><<<blocks_for<kThreads>(N * Ss), kThreads, 0, stream>>>(
              src[l].const_data_ptr<scalar_t>(), g, dr.const_data_ptr<T>(), dgrid_acc.mutable_data_ptr<T>(), N, C, Hs,
              Ws, static_cast<int>(Ss));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    }
    if (need_grid) dgrid = dgrid_acc.to(grid.scalar_type());
  });
  return {dsrc, dtgt, dgrid};
}

}  // namespace pscfast

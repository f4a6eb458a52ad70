// pscfast::_warp_backward on CUDA; the forward and the registrations are in warp_kernel.cu. Deterministic,
// without atomics:
//  - grid gradient: one thread per pixel when the grid has the output size; otherwise one block per cell
//    of the low-resolution grid reduces its pixels in a fixed tree (stage 1) and one thread per grid node
//    adds the corners of the cells around it (stage 2);
//  - image gradient: the (pixel, tap) pairs are sorted by the image pixel they read (a stable sort), and one
//    thread per image element sums its segment in that order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <array>
#include <string>
#include <tuple>
#include <type_traits>

#include "ops/common/output_mask.h"
#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/warp_common.cuh"

namespace pscfast {
namespace {

// d L / d (grid point of pixel (oy, ox)), summed over channels.
template <typename scalar_t, typename T>
__device__ void pixel_grid_grad(const scalar_t* x, const scalar_t* grid, const scalar_t* gout, const Geometry& G,
                                int64_t n, int oy, int ox, const Lerp<T>& ly, const Lerp<T>& lx, Padding pad,
                                bool align, T* gx, T* gy) {
  const auto p =
      warp_pixel(grid + n * G.h * G.w * 2, G.w, G.direct, oy, ox, ly, lx, G.H, G.W, SampleMode::kBilinear, pad, align);
  const int64_t plane = static_cast<int64_t>(G.H) * G.W, oplane = static_cast<int64_t>(G.Ho) * G.Wo;
  const scalar_t* xn = x + n * G.C * plane;
  const scalar_t* gn = gout + n * G.C * oplane + static_cast<int64_t>(oy) * G.Wo + ox;
  T ax = T(0), ay = T(0);
  for (int64_t c = 0; c < G.C; ++c)
    warp_accumulate_coord_grad(p, xn + c * plane, G.W, static_cast<T>(gn[c * oplane]), &ax, &ay);
  *gx = ax * p.dpx;
  *gy = ay * p.dpy;
}

template <typename scalar_t>
__global__ void grid_grad_direct_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grid,
                                        const scalar_t* __restrict__ gout, scalar_t* __restrict__ dgrid, Geometry G,
                                        Padding pad, bool align) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G.N * G.Ho * G.Wo) return;
  const auto [n, oy, ox] = out_pixel(idx, G);
  T gx, gy;
  pixel_grid_grad(x, grid, gout, G, n, oy, ox, resize_index<T>(oy, G.h, G.Ho), resize_index<T>(ox, G.w, G.Wo), pad,
                  align, &gx, &gy);
  dgrid[idx * 2] = static_cast<scalar_t>(gx);
  dgrid[idx * 2 + 1] = static_cast<scalar_t>(gy);
}

// First output index whose cell (resize_index(.).i0) is >= cell; i0 grows with the output index.
template <typename T>
__device__ int first_index_of_cell(int cell, int in, int out) {
  int lo = 0, hi = out;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (resize_index<T>(mid, in, out).i0 < cell)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Stage 1: block (n, a, b) reduces the pixels of cell (a, b) onto its four corners: partial[n, a, b, 4, 2].
template <typename scalar_t>
__global__ void grid_grad_cells_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grid,
                                       const scalar_t* __restrict__ gout,
                                       at::opmath_type<scalar_t>* __restrict__ partial, Geometry G, Padding pad,
                                       bool align) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T red[8][kThreads];
  const int64_t cell = blockIdx.x;
  const int b = static_cast<int>(cell % G.w);
  const int a = static_cast<int>((cell / G.w) % G.h);
  const int64_t n = cell / (static_cast<int64_t>(G.w) * G.h);
  const int y0 = first_index_of_cell<T>(a, G.h, G.Ho), y1 = first_index_of_cell<T>(a + 1, G.h, G.Ho);
  const int x0 = first_index_of_cell<T>(b, G.w, G.Wo), x1 = first_index_of_cell<T>(b + 1, G.w, G.Wo);
  const int cols = x1 - x0;
  const int64_t count = static_cast<int64_t>(y1 - y0) * cols;
  T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int oy = y0 + static_cast<int>(i / cols), ox = x0 + static_cast<int>(i % cols);
    const Lerp<T> ly = resize_index<T>(oy, G.h, G.Ho), lx = resize_index<T>(ox, G.w, G.Wo);
    T gx, gy, wc[4];
    pixel_grid_grad(x, grid, gout, G, n, oy, ox, ly, lx, pad, align, &gx, &gy);
    cell_corner_weights(ly, lx, wc);
    for (int k = 0; k < 4; ++k) {
      acc[2 * k] += wc[k] * gx;
      acc[2 * k + 1] += wc[k] * gy;
    }
  }
  for (int k = 0; k < 8; ++k) red[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s)
      for (int k = 0; k < 8; ++k) red[k][threadIdx.x] += red[k][threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x < 8) partial[cell * 8 + threadIdx.x] = red[threadIdx.x][0];
}

// Stage 2: node (n, i, j) adds corner k = 2 * dy + dx of cell (i - dy, j - dx).
template <typename scalar_t>
__global__ void grid_grad_nodes_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                       scalar_t* __restrict__ dgrid, Geometry G) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G.N * G.h * G.w) return;
  const int j = static_cast<int>(idx % G.w);
  const int i = static_cast<int>((idx / G.w) % G.h);
  const int64_t n = idx / (static_cast<int64_t>(G.w) * G.h);
  T s0 = T(0), s1 = T(0);
  for (int k = 0; k < 4; ++k) {
    const int a = i - (k >> 1), b = j - (k & 1);
    if (a < 0 || b < 0) continue;
    const T* c = partial + ((n * G.h + a) * G.w + b) * 8;
    s0 += c[2 * k];
    s1 += c[2 * k + 1];
  }
  dgrid[idx * 2] = static_cast<scalar_t>(s0);
  dgrid[idx * 2 + 1] = static_cast<scalar_t>(s1);
}

// Image gradient, step 1: the image element each (pixel, tap) of samples [n0, n0 + ns) reads, as a key
// n_local * H * W + q, or the past-the-end key ns * H * W for taps that read nothing.
template <typename scalar_t>
__global__ void tap_keys_kernel(const scalar_t* __restrict__ grid, int32_t* __restrict__ keys, Geometry G, int64_t n0,
                                int64_t ns, int taps, SampleMode mode, Padding pad, bool align) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t pixels = static_cast<int64_t>(G.Ho) * G.Wo;
  if (idx >= ns * pixels) return;
  const int64_t nl = idx / pixels, pix = idx % pixels;
  const int oy = static_cast<int>(pix / G.Wo), ox = static_cast<int>(pix % G.Wo);
  const auto p = warp_pixel(grid + (n0 + nl) * G.h * G.w * 2, G.w, G.direct, oy, ox, resize_index<T>(oy, G.h, G.Ho),
                            resize_index<T>(ox, G.w, G.Wo), G.H, G.W, mode, pad, align);
  const int64_t plane = static_cast<int64_t>(G.H) * G.W;
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // unrolled, so k is a constant and the taps stay in registers
    if (k >= taps) break;
    const int q = mode == SampleMode::kNearest ? p.nearest : tap_index(p.taps, k, G.W);
    keys[idx * taps + k] = static_cast<int32_t>(q >= 0 ? nl * plane + q : ns * plane);
  }
}

// Image gradient, step 2: element (n, c, q) sums gout * weight over its sorted segment of (pixel, tap) pairs.
template <typename scalar_t>
__global__ void gather_x_grad_kernel(const scalar_t* __restrict__ grid, const scalar_t* __restrict__ gout,
                                     const int64_t* __restrict__ order, const int64_t* __restrict__ offsets,
                                     scalar_t* __restrict__ dx, Geometry G, int64_t n0, int64_t ns, int taps,
                                     SampleMode mode, Padding pad, bool align) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = static_cast<int64_t>(G.H) * G.W, pixels = static_cast<int64_t>(G.Ho) * G.Wo;
  if (idx >= ns * G.C * plane) return;
  const int64_t q = idx % plane, c = (idx / plane) % G.C, nl = idx / (plane * G.C);
  const int64_t key = nl * plane + q;
  T acc = T(0);
  for (int64_t e = offsets[key]; e < offsets[key + 1]; ++e) {
    const int64_t entry = order[e];
    const int64_t pix = entry / taps - nl * pixels;
    const int k = static_cast<int>(entry % taps);
    const int oy = static_cast<int>(pix / G.Wo), ox = static_cast<int>(pix % G.Wo);
    const auto p = warp_pixel(grid + (n0 + nl) * G.h * G.w * 2, G.w, G.direct, oy, ox, resize_index<T>(oy, G.h, G.Ho),
                              resize_index<T>(ox, G.w, G.Wo), G.H, G.W, mode, pad, align);
    // a select, not p.taps.w[k]: indexing with a runtime k would put the taps in local memory
    const T w = mode == SampleMode::kNearest ? T(1)
                : k == 0                     ? p.taps.w[0]
                : k == 1                     ? p.taps.w[1]
                : k == 2                     ? p.taps.w[2]
                                             : p.taps.w[3];
    acc += w * static_cast<T>(gout[((n0 + nl) * G.C + c) * pixels + pix]);
  }
  dx[(n0 + nl) * G.C * plane + c * plane + q] = static_cast<scalar_t>(acc);
}

// The grid gradient (bilinear; nearest sampling has none) of contiguous x, grid, gout into dgrid.
void grid_gradient(const at::Tensor& x, const at::Tensor& grid, const at::Tensor& gout, const Geometry& G, Padding p,
                   bool align_corners, at::Tensor& dgrid) {
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "warp_backward_grid_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    if (G.direct) {
      grid_grad_direct_kernel<scalar_t><<<blocks_for<kThreads>(G.N * G.Ho * G.Wo), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(),
          dgrid.mutable_data_ptr<scalar_t>(), G, p, align_corners);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const auto acc_type = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
    auto partial = at::empty({G.N * G.h * G.w * 8}, grid.options().dtype(acc_type));
    grid_grad_cells_kernel<scalar_t><<<static_cast<unsigned>(G.N * G.h * G.w), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<T>(), G, p, align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grid_grad_nodes_kernel<scalar_t><<<blocks_for<kThreads>(G.N * G.h * G.w), kThreads, 0, stream>>>(
        partial.const_data_ptr<T>(), dgrid.mutable_data_ptr<scalar_t>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The image gradient of contiguous grid, gout into the zero-filled dx.
void image_gradient(const at::Tensor& grid, const at::Tensor& gout, const Geometry& G, SampleMode m, Padding p,
                    bool align_corners, at::Tensor& dx) {
  const int taps = m == SampleMode::kNearest ? 1 : 4;
  const int64_t plane = static_cast<int64_t>(G.H) * G.W, pixels = static_cast<int64_t>(G.Ho) * G.Wo;
  if (G.N == 0 || G.C == 0 || pixels == 0) return;
  // Samples per chunk: keys (and the sort's int64 order) stay within int32 range and ~16M entries.
  const int64_t per_sample = std::max(pixels * taps, plane + 1);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(G.N, (int64_t(1) << 24) / per_sample));
  TORCH_CHECK(chunk * per_sample < (int64_t(1) << 31), "pscfast::_warp_backward: one sample is too large");
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t n0 = 0; n0 < G.N; n0 += chunk) {
    const int64_t ns = std::min(chunk, G.N - n0);
    auto keys = at::empty({ns * pixels * taps}, grid.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "warp_tap_keys_cuda", [&] {
      tap_keys_kernel<scalar_t><<<blocks_for<kThreads>(ns * pixels), kThreads, 0, stream>>>(
          grid.const_data_ptr<scalar_t>(), keys.mutable_data_ptr<int32_t>(), G, n0, ns, taps, m, p, align_corners);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    auto bounds = at::arange(ns * plane + 1, keys.options());
    auto offsets = at::searchsorted(std::get<0>(sorted), bounds).to(at::kLong);
    const auto order = std::get<1>(sorted);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "warp_backward_x_cuda", [&] {
      gather_x_grad_kernel<scalar_t><<<blocks_for<kThreads>(ns * G.C * plane), kThreads, 0, stream>>>(
          grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(),
          offsets.const_data_ptr<int64_t>(), dx.mutable_data_ptr<scalar_t>(), G, n0, ns, taps, m, p, align_corners);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

// Only the gradients in output_mask are computed; the image is read only for the grid's.
std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& grid_, c10::string_view mode,
                                                      c10::string_view padding_mode, bool align_corners,
                                                      std::array<bool, 2> output_mask) {
  check_warp_inputs(x, grid_, grad_out.sizes().slice(2));
  check_warp_grad(grad_out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto grid = grid_.contiguous();
  const auto gout = grad_out.contiguous();
  const Geometry G = geometry(x.sizes(), grid, gout.size(2), gout.size(3));
  const auto m = parse_mode(std::string(mode));
  const auto p = parse_padding(std::string(padding_mode));
  at::Tensor dx = zeros_if(output_mask[0], x.sizes(), x.options());  // left as is when there is no pixel
  at::Tensor dgrid;
  if (dx.defined()) image_gradient(grid, gout, G, m, p, align_corners, dx);
  if (output_mask[1]) {
    const bool none = m == SampleMode::kNearest || G.N == 0;  // nearest sampling has no grid gradient
    dgrid = none ? at::zeros_like(grid) : at::empty_like(grid);
    if (!none) grid_gradient(x.contiguous(), grid, gout, G, p, align_corners, dgrid);
  }
  return {dx, dgrid};
}

}  // namespace pscfast

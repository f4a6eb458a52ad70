// pscfast::kernel_soft_argmax on CUDA: float, double, half and bfloat16 (accumulation in float for the half
// types). One thread per source position streams its correlation row (stride S between target positions, so
// a warp reads consecutive addresses). Math and conventions: ops/common/kernel_soft_argmax_math.h.
// Forward: pass 1 norm and first argmax, pass 2 maximum of k n, pass 3 sum and expected position.
// Backward: the same, then pass 4 <n, nb> and pass 5 writes each gradient element once: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "ops/common/kernel_soft_argmax_checks.h"
#include "ops/common/kernel_soft_argmax_math.h"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace {

constexpr int kThreads = 128;

// A running sum in two levels, blocks of 32 terms and then the blocks: about (32 + n / 32) eps of rounding
// where one running float sum of n terms has up to n eps (1e-5 over a 32x32 target row).
template <typename T>
struct BlockedSum {
  T total = T(0), part = T(0);
  int count = 0;
  __device__ void add(T v) {
    part += v;
    if (++count == 32) total += part, part = T(0), count = 0;
  }
  __device__ T value() const { return total + part; }
};

// Divisor r, argmax (bx, by) of c, max of k n and its position (zx, zy), softmax sum, expected offset
// (dx, dy) from (zx, zy) in cells.
template <typename T>
struct RowStats {
  T r, zmax, sum, dx, dy;
  int bx, by, zx, zy;
  bool project;
};

// The Gaussian-weighted normalised correlation z_q = k_q n_q of target position q.
template <typename scalar_t, typename T>
__device__ T kernel_n(const scalar_t* c, int64_t q, const SoftArgmaxShape& sh, const RowStats<T>& st, T inv2s2) {
  const T dx = static_cast<T>(static_cast<int>(q % sh.Wt) - st.bx);
  const T dy = static_cast<T>(static_cast<int>(q / sh.Wt) - st.by);
  return exp(-(dx * dx + dy * dy) * inv2s2) * (static_cast<T>(c[q * sh.S]) / st.r);
}

template <typename scalar_t, typename T>
__device__ RowStats<T> row_stats(const scalar_t* c, const SoftArgmaxShape& sh, T beta, T inv2s2) {
  RowStats<T> st;
  BlockedSum<T> sq;
  T best = static_cast<T>(c[0]);
  int arg = 0;
  for (int64_t q = 0; q < sh.T; ++q) {
    const T v = static_cast<T>(c[q * sh.S]);
    sq.add(v * v);
    if (v > best) best = v, arg = static_cast<int>(q);
  }
  st.r = row_scale(sh.norm, sq.value(), &st.project);
  st.bx = arg % sh.Wt;
  st.by = arg / sh.Wt;
  st.zmax = -INFINITY;
  int zarg = 0;
  for (int64_t q = 0; q < sh.T; ++q) {
    const T z = kernel_n(c, q, sh, st, inv2s2);
    if (z > st.zmax) st.zmax = z, zarg = static_cast<int>(q);
  }
  st.zx = zarg % sh.Wt;
  st.zy = zarg / sh.Wt;
  BlockedSum<T> sum, sx, sy;
  for (int64_t q = 0; q < sh.T; ++q) {
    const T e = exp(beta * (kernel_n(c, q, sh, st, inv2s2) - st.zmax));
    sum.add(e);
    sx.add(e * static_cast<T>(static_cast<int>(q % sh.Wt) - st.zx));
    sy.add(e * static_cast<T>(static_cast<int>(q / sh.Wt) - st.zy));
  }
  st.sum = sum.value();
  st.dx = sx.value() / st.sum;
  st.dy = sy.value() / st.sum;
  return st;
}

// d L / d n_q (returned) and n_q (in nq) for target position q.
template <typename scalar_t, typename T>
__device__ T grad_n(const scalar_t* c, int64_t q, const SoftArgmaxShape& sh, const RowStats<T>& st, T beta, T inv2s2,
                    T xb, T yb, T& nq) {
  const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
  const T dx = static_cast<T>(qx - st.bx), dy = static_cast<T>(qy - st.by);
  const T k = exp(-(dx * dx + dy * dy) * inv2s2);
  nq = static_cast<T>(c[q * sh.S]) / st.r;
  const T m = exp(beta * (k * nq - st.zmax)) / st.sum;
  return beta * k * m * (xb * (static_cast<T>(qx - st.zx) - st.dx) + yb * (static_cast<T>(qy - st.zy) - st.dy));
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ corr, scalar_t* __restrict__ out, SoftArgmaxShape sh,
                               at::opmath_type<scalar_t> beta, at::opmath_type<scalar_t> inv2s2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= sh.N * sh.S) return;
  const int64_t n = idx / sh.S, s = idx % sh.S;
  const auto st = row_stats<scalar_t, T>(corr + n * sh.T * sh.S + s, sh, beta, inv2s2);
  out[idx * 2] = static_cast<scalar_t>(to_normalised(static_cast<T>(st.zx) + st.dx, sh.Wt));
  out[idx * 2 + 1] = static_cast<scalar_t>(to_normalised(static_cast<T>(st.zy) + st.dy, sh.Ht));
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ corr,
                                scalar_t* __restrict__ grad, SoftArgmaxShape sh, at::opmath_type<scalar_t> beta,
                                at::opmath_type<scalar_t> inv2s2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= sh.N * sh.S) return;
  const int64_t n = idx / sh.S, s = idx % sh.S;
  const scalar_t* c = corr + n * sh.T * sh.S + s;
  scalar_t* g = grad + n * sh.T * sh.S + s;
  const auto st = row_stats<scalar_t, T>(c, sh, beta, inv2s2);
  const T xb = static_cast<T>(gout[idx * 2]) * cell_scale<T>(sh.Wt);
  const T yb = static_cast<T>(gout[idx * 2 + 1]) * cell_scale<T>(sh.Ht);
  BlockedSum<T> dot;
  for (int64_t q = 0; q < sh.T; ++q) {
    T nq;
    const T nb = grad_n(c, q, sh, st, beta, inv2s2, xb, yb, nq);
    dot.add(nq * nb);
  }
  const T dn = dot.value();
  for (int64_t q = 0; q < sh.T; ++q) {
    T nq;
    const T nb = grad_n(c, q, sh, st, beta, inv2s2, xb, yb, nq);
    g[q * sh.S] = static_cast<scalar_t>((st.project ? nb - nq * dn : nb) / st.r);
  }
}

at::Tensor soft_argmax_cuda(const at::Tensor& corr_, double beta, double sigma, c10::IntArrayRef target_size,
                            c10::string_view normalize) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, beta, sigma, target_size, normalize);
  const c10::cuda::CUDAGuard guard(corr_.device());
  const auto corr = corr_.contiguous();
  auto out = at::empty({sh.N, corr.size(2), corr.size(3), 2}, corr.options());
  const int64_t total = sh.N * sh.S;
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, corr.scalar_type(), "kernel_soft_argmax_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t><<<blocks_for<kThreads>(total), kThreads, 0, stream>>>(
        corr.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), sh, static_cast<T>(beta),
        static_cast<T>(1.0 / (2.0 * sigma * sigma)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor soft_argmax_backward_cuda(const at::Tensor& grad_out, const at::Tensor& corr_, double beta, double sigma,
                                     c10::IntArrayRef target_size, c10::string_view normalize,
                                     std::array<bool, 1> output_mask) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, beta, sigma, target_size, normalize);
  if (!output_mask[0]) return at::Tensor();
  check_soft_argmax_grad(grad_out, corr_, sh);
  const c10::cuda::CUDAGuard guard(corr_.device());
  const auto corr = corr_.contiguous();
  const auto gout = grad_out.contiguous();
  auto grad = at::empty_like(corr);
  const int64_t total = sh.N * sh.S;
  if (total == 0) return grad;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, corr.scalar_type(), "kernel_soft_argmax_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        backward_kernel<scalar_t><<<blocks_for<kThreads>(total), kThreads, 0, stream>>>(
            gout.const_data_ptr<scalar_t>(), corr.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), sh,
            static_cast<T>(beta), static_cast<T>(1.0 / (2.0 * sigma * sigma)));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("kernel_soft_argmax", &soft_argmax_cuda);
  m.impl("_kernel_soft_argmax_backward", &soft_argmax_backward_cuda);
}

}  // namespace pscfast

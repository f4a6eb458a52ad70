// pscfast::compose and pscfast::consistency_loss on CUDA: float, double, half, bfloat16 (float accumulation
// for the half types). One launch each way:
//  - loss forward: one thread per output pixel computes the cycle, the release's mask and the squared
//    error; each block reduces its partial (sum, count) in a fixed tree; the last block sums the partials
//    in block order (deterministic);
//  - backward (compose and loss): blocks of two kinds. Pointwise blocks write d f_bc per pixel; scatter
//    blocks own 256 nodes of f_ab each and gather d f_ab from every pixel of their sample, tile by tile
//    through shared memory, in pixel order (deterministic, no atomics). For the loss the incoming gradient
//    2 grad (cycle - identity) mask / count is recomputed from the cycle.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/common/field_sample.h"
#include "ops/common/flow_checks.h"
#include "ops/cuda/gather_scan.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/reduce.cuh"

namespace pscfast {
namespace {

constexpr int kThreads = 256;

struct Dims {
  int64_t N, P;  // batch, pixels of f_bc's (the output's) grid
  int h, w, wo;  // f_ab's grid, the output's width
};

Dims dims_of(const at::Tensor& f_ab, const at::Tensor& f_bc) {
  return {f_ab.size(0), f_bc.size(1) * f_bc.size(2), static_cast<int>(f_ab.size(1)), static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_bc.size(2))};
}

template <typename scalar_t>
__global__ void compose_kernel(const scalar_t* __restrict__ fab, const scalar_t* __restrict__ fbc,
                               scalar_t* __restrict__ out, Dims D, bool nearest) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= D.N * D.P) return;
  const int64_t n = idx / D.P, p = idx % D.P;
  const scalar_t* fab_n = fab + n * D.h * D.w * 2;
  T dpx, dpy;
  const auto t = compose_taps<T>(fbc + n * D.P * 2, p, D.h, D.w, nearest, &dpx, &dpy);
  out[2 * idx] = static_cast<scalar_t>(field_value(t, fab_n, 2, 0));
  out[2 * idx + 1] = static_cast<scalar_t>(field_value(t, fab_n, 2, 1));
}

template <typename scalar_t>
__global__ void loss_forward_kernel(const scalar_t* __restrict__ fwd, const scalar_t* __restrict__ bwd,
                                    const scalar_t* __restrict__ xs, const scalar_t* __restrict__ ys,
                                    at::opmath_type<scalar_t>* psum, int64_t* pcnt, unsigned* ticket,
                                    scalar_t* loss, int64_t* count, Dims D, int64_t blocks_per_sample,
                                    bool nearest) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T ssum[kThreads];
  __shared__ int64_t scnt[kThreads];
  const int64_t n = blockIdx.x / blocks_per_sample;
  const int64_t p = (blockIdx.x % blocks_per_sample) * kThreads + threadIdx.x;
  T sq = T(0);
  int64_t c = 0;
  if (p < D.P) {
    T dpx, dpy;
    const scalar_t* fab_n = fwd + n * D.h * D.w * 2;
    const auto t = compose_taps<T>(bwd + n * D.P * 2, p, D.h, D.w, nearest, &dpx, &dpy);
    const T id[2] = {static_cast<T>(xs[p % D.wo]), static_cast<T>(ys[p / D.wo])};
    for (int k = 0; k < 2; ++k) {
      const T v = field_value(t, fab_n, 2, k);
      if (consistency_term(v, id[k])) {
        sq += (v - id[k]) * (v - id[k]);
        ++c;
      }
    }
  }
  const T bs = block_sum(sq, ssum);
  const int64_t bc = block_sum(c, scnt);
  if (threadIdx.x == 0) {
    psum[blockIdx.x] = bs;
    pcnt[blockIdx.x] = bc;
  }
  __syncthreads();
  if (!last_block(ticket)) return;
  const T total = sum_partials(psum, gridDim.x, ssum);
  const int64_t total_count = sum_partials(pcnt, gridDim.x, scnt);
  if (threadIdx.x == 0) {
    *loss = static_cast<scalar_t>(total / static_cast<T>(total_count > 0 ? total_count : 1));
    *count = total_count;
  }
}

template <typename scalar_t>
struct BackwardArgs {
  const scalar_t *grad, *fab, *fbc, *xs, *ys;  // grad: (N, h', w', 2) for compose, a scalar for the loss
  const int64_t* count;                         // the loss's count (loss only)
  scalar_t *dfab, *dfbc;
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
  gather_scan<2, kThreads>(D.P, q, [&](int64_t p, T* g) {
    T dpx, dpy;
    return pixel_grad(A, n, p, g, &dpx, &dpy);
  }, acc);
  if (q < D.h * D.w) {
    A.dfab[(n * D.h * D.w + q) * 2] = static_cast<scalar_t>(acc[0]);
    A.dfab[(n * D.h * D.w + q) * 2 + 1] = static_cast<scalar_t>(acc[1]);
  }
}

template <typename scalar_t>
void launch_backward(BackwardArgs<scalar_t> A) {
  TORCH_CHECK(A.D.N < 65536, "pscfast: the CUDA backward of compose and consistency_loss takes batches of fewer "
              "than 65536 flows, got ", A.D.N);
  A.scatter_blocks = static_cast<int>(blocks_for<kThreads>(static_cast<int64_t>(A.D.h) * A.D.w));
  const dim3 grid(A.scatter_blocks + blocks_for<kThreads>(A.D.P), static_cast<unsigned>(A.D.N));
  backward_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(A);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor compose_cuda(const at::Tensor& f_ab_, const at::Tensor& f_bc_, c10::string_view mode) {
  check_grid_pair("compose", f_ab_, f_bc_);
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous();
  auto out = at::empty_like(f_bc);
  const Dims D = dims_of(f_ab, f_bc);
  if (D.N * D.P == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_cuda", [&] {
    compose_kernel<scalar_t><<<blocks_for<kThreads>(D.N * D.P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        f_ab.const_data_ptr<scalar_t>(), f_bc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), D,
        nearest);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> compose_backward_cuda(const at::Tensor& grad_out, const at::Tensor& f_ab_,
                                                         const at::Tensor& f_bc_, c10::string_view mode) {
  check_grid_pair("_compose_backward", f_ab_, f_bc_);
  TORCH_CHECK(grad_out.sizes() == f_bc_.sizes(), "pscfast::_compose_backward: grad_out must have f_bc's shape");
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), gout = grad_out.contiguous();
  auto dfab = at::zeros_like(f_ab);
  auto dfbc = at::zeros_like(f_bc);
  const Dims D = dims_of(f_ab, f_bc);
  if (D.N == 0) return {dfab, dfbc};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_backward_cuda", [&] {
    launch_backward(BackwardArgs<scalar_t>{gout.const_data_ptr<scalar_t>(), f_ab.const_data_ptr<scalar_t>(),
                                           f_bc.const_data_ptr<scalar_t>(), nullptr, nullptr, nullptr,
                                           dfab.mutable_data_ptr<scalar_t>(), dfbc.mutable_data_ptr<scalar_t>(), D,
                                           parse_mode(std::string(mode)) == SampleMode::kNearest, false, 0});
  });
  return {dfab, dfbc};
}

std::tuple<at::Tensor, at::Tensor> consistency_loss_cuda(const at::Tensor& fwd_, const at::Tensor& bwd_,
                                                         const at::Tensor& xs_, const at::Tensor& ys_,
                                                         c10::string_view mode) {
  check_grid_pair("consistency_loss", fwd_, bwd_);
  check_identity("consistency_loss", bwd_, xs_, ys_);
  const c10::cuda::CUDAGuard guard(fwd_.device());
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const Dims D = dims_of(fwd, bwd);
  auto loss = at::zeros({}, fwd.options());
  auto count = at::zeros({}, fwd.options().dtype(at::kLong));
  const int64_t per_sample = blocks_for<kThreads>(D.P), blocks = D.N * per_sample;
  if (blocks == 0) return {loss, count};
  TORCH_CHECK(blocks < (int64_t(1) << 31), "pscfast::consistency_loss: too many pixels");
  auto ticket = at::zeros({1}, fwd.options().dtype(at::kInt));
  auto pcnt = at::empty({blocks}, fwd.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fwd.scalar_type(), "consistency_loss_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto psum = at::empty({blocks}, fwd.options().dtype(c10::CppTypeToScalarType<T>::value));
    loss_forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        fwd.const_data_ptr<scalar_t>(), bwd.const_data_ptr<scalar_t>(), xs.const_data_ptr<scalar_t>(),
        ys.const_data_ptr<scalar_t>(), psum.mutable_data_ptr<T>(), pcnt.mutable_data_ptr<int64_t>(),
        reinterpret_cast<unsigned*>(ticket.mutable_data_ptr<int32_t>()), loss.mutable_data_ptr<scalar_t>(),
        count.mutable_data_ptr<int64_t>(), D, per_sample, nearest);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, count};
}

std::tuple<at::Tensor, at::Tensor> consistency_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& count,
                                                                  const at::Tensor& fwd_, const at::Tensor& bwd_,
                                                                  const at::Tensor& xs_, const at::Tensor& ys_,
                                                                  c10::string_view mode) {
  check_grid_pair("_consistency_loss_backward", fwd_, bwd_);
  check_identity("_consistency_loss_backward", bwd_, xs_, ys_);
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1 && count.scalar_type() == at::kLong,
              "pscfast::_consistency_loss_backward: grad must be a scalar and count an int64 scalar");
  const c10::cuda::CUDAGuard guard(fwd_.device());
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const auto g = grad.to(fwd.scalar_type()).contiguous(), c = count.contiguous();
  auto dfwd = at::zeros_like(fwd);
  auto dbwd = at::zeros_like(bwd);
  const Dims D = dims_of(fwd, bwd);
  if (D.N == 0) return {dfwd, dbwd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fwd.scalar_type(), "consistency_loss_backward_cuda", [&] {
    launch_backward(BackwardArgs<scalar_t>{g.const_data_ptr<scalar_t>(), fwd.const_data_ptr<scalar_t>(),
                                           bwd.const_data_ptr<scalar_t>(), xs.const_data_ptr<scalar_t>(),
                                           ys.const_data_ptr<scalar_t>(), c.const_data_ptr<int64_t>(),
                                           dfwd.mutable_data_ptr<scalar_t>(), dbwd.mutable_data_ptr<scalar_t>(), D,
                                           parse_mode(std::string(mode)) == SampleMode::kNearest, true, 0});
  });
  return {dfwd, dbwd};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("compose", &compose_cuda);
  m.impl("_compose_backward", &compose_backward_cuda);
  m.impl("consistency_loss", &consistency_loss_cuda);
  m.impl("_consistency_loss_backward", &consistency_loss_backward_cuda);
}

}  // namespace pscfast

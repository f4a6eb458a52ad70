// pscfast::compose_displacement on CUDA: float, double, half, bfloat16 (float accumulation for the half
// types). One launch each way; in the backward, pointwise blocks write the image-a gradients (d f_ab, d m_ab)
// per pixel and scatter blocks own 256 image-b nodes each and gather d f_bc, d m_bc from every pixel of
// image a, tile by tile through shared memory, in pixel order (deterministic, no atomics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "ops/common/compose_displacement_checks.h"
#include "ops/common/compose_displacement_pixel.h"
#include "ops/common/output_mask.h"
#include "ops/cuda/gather_scan.cuh"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
struct CycleArgs {
  const scalar_t *fab, *fbc, *mab, *mbc, *gf, *gm;
  scalar_t *fac, *mac, *dfab, *dfbc, *dmab, *dmbc;  // a null gradient is not wanted
  CycleDims D;
  int scatter_blocks;
};

template <typename scalar_t>
__global__ void compose_displacement_kernel(CycleArgs<scalar_t> A) {
  using T = at::opmath_type<scalar_t>;
  const CycleDims& D = A.D;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= D.N * D.P) return;
  const int64_t n = idx / D.P, p = idx % D.P;
  const int i = static_cast<int>(p / D.W), j = static_cast<int>(p % D.W);
  T u, v;
  const auto t = cycle_taps<T>(A.fab + n * 2 * D.P, D.P, i, j, D.W, D.Hb, D.Wb, &u, &v);
  const scalar_t* fbc = A.fbc + n * 2 * D.Pb;
  A.fac[n * 2 * D.P + p] = static_cast<scalar_t>(u + field_value(t, fbc, 1, 0));
  A.fac[n * 2 * D.P + D.P + p] = static_cast<scalar_t>(v + field_value(t, fbc + D.Pb, 1, 0));
  A.mac[idx] = static_cast<scalar_t>(static_cast<T>(A.mab[idx]) * field_value(t, A.mbc + n * D.Pb, 1, 0));
}

template <typename scalar_t>
__global__ void compose_displacement_backward_kernel(CycleArgs<scalar_t> A) {
  using T = at::opmath_type<scalar_t>;
  const CycleDims& D = A.D;
  const int64_t n = blockIdx.y;
  const scalar_t* fab = A.fab + n * 2 * D.P;
  const scalar_t* fbc = A.fbc + n * 2 * D.Pb;
  const scalar_t* mbc = A.mbc + n * D.Pb;
  if (static_cast<int>(blockIdx.x) >= A.scatter_blocks) {  // pointwise: d f_ab, d m_ab
    const int64_t p = static_cast<int64_t>(blockIdx.x - A.scatter_blocks) * kThreads + threadIdx.x;
    if (p >= D.P) return;
    const int64_t k = n * D.P + p;
    T u, v;
    const auto t =
        cycle_taps<T>(fab, D.P, static_cast<int>(p / D.W), static_cast<int>(p % D.W), D.W, D.Hb, D.Wb, &u, &v);
    const T g0 = static_cast<T>(A.gf[n * 2 * D.P + p]), g1 = static_cast<T>(A.gf[n * 2 * D.P + D.P + p]);
    const T gm = static_cast<T>(A.gm[k]);
    if (A.dfab) {
      T ax = T(0), ay = T(0);
      field_coord_grad(t, fbc, 1, 0, g0, &ax, &ay);
      field_coord_grad(t, fbc + D.Pb, 1, 0, g1, &ax, &ay);
      field_coord_grad(t, mbc, 1, 0, gm * static_cast<T>(A.mab[k]), &ax, &ay);
      A.dfab[n * 2 * D.P + p] = static_cast<scalar_t>(g0 + ax);
      A.dfab[n * 2 * D.P + D.P + p] = static_cast<scalar_t>(g1 + ay);
    }
    if (A.dmab) A.dmab[k] = static_cast<scalar_t>(gm * field_value(t, mbc, 1, 0));
    return;
  }
  // scatter: image-b node q gathers w_tap g from every (pixel, tap) of image a that reads it, in pixel order
  const int q = blockIdx.x * kThreads + threadIdx.x;
  T acc[3] = {T(0), T(0), T(0)};
  gather_scan<3, kThreads>(
      D.P, q,
      [&](int64_t p, T* g) {
        T u, v;
        const auto t =
            cycle_taps<T>(fab, D.P, static_cast<int>(p / D.W), static_cast<int>(p % D.W), D.W, D.Hb, D.Wb, &u, &v);
        g[0] = static_cast<T>(A.gf[n * 2 * D.P + p]);
        g[1] = static_cast<T>(A.gf[n * 2 * D.P + D.P + p]);
        g[2] = static_cast<T>(A.gm[n * D.P + p]) * static_cast<T>(A.mab[n * D.P + p]);
        return t;
      },
      acc);
  if (q >= D.Pb) return;
  if (A.dfbc) {
    A.dfbc[n * 2 * D.Pb + q] = static_cast<scalar_t>(acc[0]);
    A.dfbc[n * 2 * D.Pb + D.Pb + q] = static_cast<scalar_t>(acc[1]);
  }
  if (A.dmbc) A.dmbc[n * D.Pb + q] = static_cast<scalar_t>(acc[2]);
}

std::tuple<at::Tensor, at::Tensor> compose_displacement_cuda(const at::Tensor& f_ab_, const at::Tensor& f_bc_,
                                                             const at::Tensor& m_ab_, const at::Tensor& m_bc_) {
  const CycleDims D = check_cycle("compose_displacement", f_ab_, f_bc_, m_ab_, m_bc_);
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), m_ab = m_ab_.contiguous(), m_bc = m_bc_.contiguous();
  auto f_ac = at::empty_like(f_ab);
  auto m_ac = at::empty_like(m_ab);
  if (D.N * D.P == 0) return {f_ac, m_ac};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_displacement_cuda", [&] {
    CycleArgs<scalar_t> A{f_ab.const_data_ptr<scalar_t>(),
                          f_bc.const_data_ptr<scalar_t>(),
                          m_ab.const_data_ptr<scalar_t>(),
                          m_bc.const_data_ptr<scalar_t>(),
                          nullptr,
                          nullptr,
                          f_ac.mutable_data_ptr<scalar_t>(),
                          m_ac.mutable_data_ptr<scalar_t>(),
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr,
                          D,
                          0};
    compose_displacement_kernel<scalar_t>
        <<<blocks_for<kThreads>(D.N * D.P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(A);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {f_ac, m_ac};
}

// Only the gradients in output_mask are computed (and allocated): the scatter blocks run for d f_bc or d m_bc,
// the pointwise blocks for d f_ab or d m_ab.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compose_displacement_backward_cuda(
    const at::Tensor& grad_f, const at::Tensor& grad_m, const at::Tensor& f_ab_, const at::Tensor& f_bc_,
    const at::Tensor& m_ab_, const at::Tensor& m_bc_, std::array<bool, 4> output_mask) {
  const CycleDims D = check_cycle("_compose_displacement_backward", f_ab_, f_bc_, m_ab_, m_bc_);
  TORCH_CHECK(grad_f.sizes() == f_ab_.sizes() && grad_m.sizes() == m_ab_.sizes(),
              "pscfast::_compose_displacement_backward: gradients must have the outputs' shapes");
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  // every element of a wanted gradient is written (the scatter as a gather)
  auto d_fab = empty_if(output_mask[0], f_ab_.sizes(), f_ab_.options());
  auto d_fbc = empty_if(output_mask[1], f_bc_.sizes(), f_bc_.options());
  auto d_mab = empty_if(output_mask[2], m_ab_.sizes(), m_ab_.options());
  auto d_mbc = empty_if(output_mask[3], m_bc_.sizes(), m_bc_.options());
  const int scatter_blocks = output_mask[1] || output_mask[3] ? static_cast<int>(blocks_for<kThreads>(D.Pb)) : 0;
  const unsigned pointwise_blocks = output_mask[0] || output_mask[2] ? blocks_for<kThreads>(D.P) : 0;
  if (D.N == 0 || scatter_blocks + pointwise_blocks == 0) return {d_fab, d_fbc, d_mab, d_mbc};
  TORCH_CHECK(D.N < 65536,
              "pscfast: the CUDA backward of compose_displacement takes batches of fewer than "
              "65536 flows, got ",
              D.N);
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), m_ab = m_ab_.contiguous(), m_bc = m_bc_.contiguous();
  const auto gf = grad_f.contiguous(), gm = grad_m.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_displacement_backward_cuda", [&] {
        CycleArgs<scalar_t> A{f_ab.const_data_ptr<scalar_t>(),
                              f_bc.const_data_ptr<scalar_t>(),
                              m_ab.const_data_ptr<scalar_t>(),
                              m_bc.const_data_ptr<scalar_t>(),
                              gf.const_data_ptr<scalar_t>(),
                              gm.const_data_ptr<scalar_t>(),
                              nullptr,
                              nullptr,
                              data_or_null<scalar_t>(d_fab),
                              data_or_null<scalar_t>(d_fbc),
                              data_or_null<scalar_t>(d_mab),
                              data_or_null<scalar_t>(d_mbc),
                              D,
                              scatter_blocks};
        const dim3 grid(scatter_blocks + pointwise_blocks, static_cast<unsigned>(D.N));
        compose_displacement_backward_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(A);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {d_fab, d_fbc, d_mab, d_mbc};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("compose_displacement", &compose_displacement_cuda);
  m.impl("_compose_displacement_backward", &compose_displacement_backward_cuda);
}

}  // namespace pscfast

// pscfast::compose_displacement on the CPU (float, double; OpenMP via at::parallel_for). The forward runs over
// rows in parallel; the backward gives each sample to one task, which writes the pointwise image-a gradients
// and scatters the image-b gradients in raster order: bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "ops/common/compose_displacement_checks.h"
#include "ops/common/compose_displacement_pixel.h"
#include "ops/common/output_mask.h"

namespace pscfast {
namespace {

std::tuple<at::Tensor, at::Tensor> compose_displacement_cpu(const at::Tensor& f_ab_, const at::Tensor& f_bc_,
                                                            const at::Tensor& m_ab_, const at::Tensor& m_bc_) {
  const CycleDims D = check_cycle("compose_displacement", f_ab_, f_bc_, m_ab_, m_bc_);
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), m_ab = m_ab_.contiguous(), m_bc = m_bc_.contiguous();
  auto f_ac = at::empty_like(f_ab);
  auto m_ac = at::empty_like(m_ab);
  AT_DISPATCH_FLOATING_TYPES(f_ab.scalar_type(), "compose_displacement_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, D.N * D.H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / D.H;
        const int i = static_cast<int>(row % D.H);
        const T* fab = f_ab.const_data_ptr<T>() + n * 2 * D.P;
        const T* fbc = f_bc.const_data_ptr<T>() + n * 2 * D.Pb;
        const T* mab = m_ab.const_data_ptr<T>() + n * D.P;
        const T* mbc = m_bc.const_data_ptr<T>() + n * D.Pb;
        T* fac = f_ac.mutable_data_ptr<T>() + n * 2 * D.P;
        T* mac = m_ac.mutable_data_ptr<T>() + n * D.P;
        for (int j = 0; j < D.W; ++j) {
          T u, v;
          const auto t = cycle_taps(fab, D.P, i, j, D.W, D.Hb, D.Wb, &u, &v);
          const int64_t p = static_cast<int64_t>(i) * D.W + j;
          fac[p] = u + field_value(t, fbc, 1, 0);
          fac[D.P + p] = v + field_value(t, fbc + D.Pb, 1, 0);
          mac[p] = mab[p] * field_value(t, mbc, 1, 0);
        }
      }
    });
  });
  return {f_ac, m_ac};
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compose_displacement_backward_cpu(
    const at::Tensor& grad_f, const at::Tensor& grad_m, const at::Tensor& f_ab_, const at::Tensor& f_bc_,
    const at::Tensor& m_ab_, const at::Tensor& m_bc_, std::array<bool, 4> output_mask) {
  const CycleDims D = check_cycle("_compose_displacement_backward", f_ab_, f_bc_, m_ab_, m_bc_);
  TORCH_CHECK(grad_f.sizes() == f_ab_.sizes() && grad_m.sizes() == m_ab_.sizes(),
              "pscfast::_compose_displacement_backward: gradients must have the outputs' shapes");
  // the image-a gradients are written pixel by pixel, the image-b gradients scattered into
  auto d_fab = empty_if(output_mask[0], f_ab_.sizes(), f_ab_.options());
  auto d_fbc = zeros_if(output_mask[1], f_bc_.sizes(), f_bc_.options());
  auto d_mab = empty_if(output_mask[2], m_ab_.sizes(), m_ab_.options());
  auto d_mbc = zeros_if(output_mask[3], m_bc_.sizes(), m_bc_.options());
  if (!(output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3])) return {d_fab, d_fbc, d_mab, d_mbc};
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), m_ab = m_ab_.contiguous(), m_bc = m_bc_.contiguous();
  const auto gf = grad_f.contiguous(), gm = grad_m.contiguous();
  AT_DISPATCH_FLOATING_TYPES(f_ab.scalar_type(), "compose_displacement_backward_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* fab = f_ab.const_data_ptr<T>() + n * 2 * D.P;
        const T* fbc = f_bc.const_data_ptr<T>() + n * 2 * D.Pb;
        const T* mab = m_ab.const_data_ptr<T>() + n * D.P;
        const T* mbc = m_bc.const_data_ptr<T>() + n * D.Pb;
        const T* gfn = gf.const_data_ptr<T>() + n * 2 * D.P;
        const T* gmn = gm.const_data_ptr<T>() + n * D.P;
        T* dfab = data_or_null<T>(d_fab, n * 2 * D.P);
        T* dmab = data_or_null<T>(d_mab, n * D.P);
        T* dfbc = data_or_null<T>(d_fbc, n * 2 * D.Pb);
        T* dmbc = data_or_null<T>(d_mbc, n * D.Pb);
        for (int64_t p = 0; p < D.P; ++p) {
          const int i = static_cast<int>(p / D.W), j = static_cast<int>(p % D.W);
          T u, v;
          const auto t = cycle_taps(fab, D.P, i, j, D.W, D.Hb, D.Wb, &u, &v);
          const T g0 = gfn[p], g1 = gfn[D.P + p], gmm = gmn[p] * mab[p];
          if (dfab) {
            T ax = T(0), ay = T(0);
            field_coord_grad(t, fbc, 1, 0, g0, &ax, &ay);
            field_coord_grad(t, fbc + D.Pb, 1, 0, g1, &ax, &ay);
            field_coord_grad(t, mbc, 1, 0, gmm, &ax, &ay);
            dfab[p] = g0 + ax;
            dfab[D.P + p] = g1 + ay;
          }
          if (dmab) dmab[p] = gmn[p] * field_value(t, mbc, 1, 0);
          for (int k = 0; k < 4; ++k) {
            if (t.idx[k] < 0) continue;
            if (dfbc) {
              dfbc[t.idx[k]] += t.w[k] * g0;
              dfbc[D.Pb + t.idx[k]] += t.w[k] * g1;
            }
            if (dmbc) dmbc[t.idx[k]] += t.w[k] * gmm;
          }
        }
      }
    });
  });
  return {d_fab, d_fbc, d_mab, d_mbc};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("compose_displacement", &compose_displacement_cpu);
  m.impl("_compose_displacement_backward", &compose_displacement_backward_cpu);
}

}  // namespace pscfast

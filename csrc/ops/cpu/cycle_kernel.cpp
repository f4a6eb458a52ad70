// pscfast::compose_displacement and pscfast::truncated_flow_loss on the CPU (float, double; OpenMP via
// at::parallel_for). compose_displacement's forward runs over rows in parallel; its backward gives each
// sample to one task, which writes the pointwise image-a gradients and scatters the image-b gradients in
// raster order. The loss sums one partial per sample, then the partials in order. All bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <vector>

#include "ops/common/cycle_pixel.h"
#include "ops/common/cycle_checks.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compose_displacement_backward_cpu(
    const at::Tensor& grad_f, const at::Tensor& grad_m, const at::Tensor& f_ab_, const at::Tensor& f_bc_,
    const at::Tensor& m_ab_, const at::Tensor& m_bc_) {
  const CycleDims D = check_cycle("_compose_displacement_backward", f_ab_, f_bc_, m_ab_, m_bc_);
  TORCH_CHECK(grad_f.sizes() == f_ab_.sizes() && grad_m.sizes() == m_ab_.sizes(),
              "pscfast::_compose_displacement_backward: gradients must have the outputs' shapes");
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), m_ab = m_ab_.contiguous(), m_bc = m_bc_.contiguous();
  const auto gf = grad_f.contiguous(), gm = grad_m.contiguous();
  auto d_fab = at::empty_like(f_ab), d_mab = at::empty_like(m_ab);
  auto d_fbc = at::zeros_like(f_bc), d_mbc = at::zeros_like(m_bc);
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
        T* dfab = d_fab.mutable_data_ptr<T>() + n * 2 * D.P;
        T* dmab = d_mab.mutable_data_ptr<T>() + n * D.P;
        T* dfbc = d_fbc.mutable_data_ptr<T>() + n * 2 * D.Pb;
        T* dmbc = d_mbc.mutable_data_ptr<T>() + n * D.Pb;
        for (int64_t p = 0; p < D.P; ++p) {
          const int i = static_cast<int>(p / D.W), j = static_cast<int>(p % D.W);
          T u, v;
          const auto t = cycle_taps(fab, D.P, i, j, D.W, D.Hb, D.Wb, &u, &v);
          const T g0 = gfn[p], g1 = gfn[D.P + p], gmm = gmn[p] * mab[p];
          T ax = T(0), ay = T(0);
          field_coord_grad(t, fbc, 1, 0, g0, &ax, &ay);
          field_coord_grad(t, fbc + D.Pb, 1, 0, g1, &ax, &ay);
          field_coord_grad(t, mbc, 1, 0, gmm, &ax, &ay);
          dfab[p] = g0 + ax;
          dfab[D.P + p] = g1 + ay;
          dmab[p] = gmn[p] * field_value(t, mbc, 1, 0);
          for (int k = 0; k < 4; ++k) {
            if (t.idx[k] < 0) continue;
            dfbc[t.idx[k]] += t.w[k] * g0;
            dfbc[D.Pb + t.idx[k]] += t.w[k] * g1;
            dmbc[t.idx[k]] += t.w[k] * gmm;
          }
        }
      }
    });
  });
  return {d_fab, d_fbc, d_mab, d_mbc};
}

at::Tensor truncated_flow_loss_cpu(const at::Tensor& pred_, const at::Tensor& target_,
                                   const c10::optional<at::Tensor>& mask_, double trunc) {
  check_loss("truncated_flow_loss", pred_, target_, mask_);
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const int64_t N = pred.size(0), plane = pred.size(2) * pred.size(3);
  auto loss = at::empty({}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "truncated_flow_loss_cpu", [&] {
    using T = scalar_t;
    const T cap = static_cast<T>(trunc * trunc);
    std::vector<double> partial(N, 0.0);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* a = pred.const_data_ptr<T>() + n * 2 * plane;
        const T* b = target.const_data_ptr<T>() + n * 2 * plane;
        const T* m = mask.defined() ? mask.const_data_ptr<T>() + n * plane : nullptr;
        double s = 0.0;
        for (int64_t p = 0; p < plane; ++p) {
          const T dx = a[p] - b[p], dy = a[plane + p] - b[plane + p];
          T e = dx * dx + dy * dy;
          e = e > cap ? cap : e;
          s += static_cast<double>(m ? e * m[p] : e);
        }
        partial[n] = s;
      }
    });
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += partial[n];
    *loss.mutable_data_ptr<T>() = static_cast<T>(s);
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> truncated_flow_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred_, const at::Tensor& target_, const c10::optional<at::Tensor>& mask_,
    double trunc) {
  check_loss("_truncated_flow_loss_backward", pred_, target_, mask_);
  TORCH_CHECK(grad.numel() == 1, "pscfast::_truncated_flow_loss_backward: grad must be a scalar");
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const int64_t N = pred.size(0), plane = pred.size(2) * pred.size(3);
  auto d_pred = at::empty_like(pred), d_target = at::empty_like(pred);
  auto d_mask = at::empty({N, 1, pred.size(2), pred.size(3)}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "truncated_flow_loss_backward_cpu", [&] {
    using T = scalar_t;
    const T cap = static_cast<T>(trunc * trunc), g = grad.item<T>();
    at::parallel_for(0, N * plane, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t n = k / plane, p = k % plane, i0 = n * 2 * plane + p, i1 = i0 + plane;
        const T* a = pred.const_data_ptr<T>();
        const T* b = target.const_data_ptr<T>();
        const T m = mask.defined() ? mask.const_data_ptr<T>()[k] : T(1);
        const T dx = a[i0] - b[i0], dy = a[i1] - b[i1];
        const T e = dx * dx + dy * dy;
        const T scale = e <= cap ? g * m * T(2) : T(0);  // clamp_max passes the gradient where e <= T^2
        d_pred.mutable_data_ptr<T>()[i0] = scale * dx;
        d_pred.mutable_data_ptr<T>()[i1] = scale * dy;
        d_target.mutable_data_ptr<T>()[i0] = -scale * dx;
        d_target.mutable_data_ptr<T>()[i1] = -scale * dy;
        d_mask.mutable_data_ptr<T>()[k] = g * (e > cap ? cap : e);
      }
    });
  });
  return {d_pred, d_target, d_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("compose_displacement", &compose_displacement_cpu);
  m.impl("_compose_displacement_backward", &compose_displacement_backward_cpu);
  m.impl("truncated_flow_loss", &truncated_flow_loss_cpu);
  m.impl("_truncated_flow_loss_backward", &truncated_flow_loss_backward_cpu);
}

}  // namespace pscfast

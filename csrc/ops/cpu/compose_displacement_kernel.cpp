// pscfast::compose_displacement and pscfast::truncated_flow_loss on the CPU (float, double; OpenMP via
// at::parallel_for). compose_displacement's forward runs over rows in parallel; its backward gives each
// sample to one task, which writes the pointwise image-a gradients and scatters the image-b gradients in
// raster order. The loss sums one partial per sample, then the partials in order; its backward is pointwise
// and writes only the gradients asked for. All bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/compose_displacement_pixel.h"
#include "ops/common/compose_displacement_checks.h"

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

// Pixels per task of the loss kernels (ATen's grain for elementwise ops): below it, waking a second thread
// costs more than the few microseconds of memory-bound work it would take over.
constexpr int64_t kLossGrain = 32768;

// One sample's sum of mask min(err, T^2) in double. Pixel p adds to accumulator p % kLanes and the lanes are
// summed in order at the end: a fixed order (deterministic) without one serial chain of dependent adds.
template <typename T>
double truncated_sum(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ m, int64_t plane,
                     T cap) {
  constexpr int kLanes = 8;
  const auto term = [&](int64_t p) {
    T dx, dy;
    const T e = squared_error(a, b, plane, p, &dx, &dy);
    return (e > cap ? cap : e) * (m ? m[p] : T(1));
  };
  double lane[kLanes] = {};
  int64_t p = 0;
  for (; p + kLanes <= plane; p += kLanes) {
    T t[kLanes];  // the terms in T first (a vector loop), then one widening add per lane
    for (int j = 0; j < kLanes; ++j) t[j] = term(p + j);
    for (int j = 0; j < kLanes; ++j) lane[j] += static_cast<double>(t[j]);
  }
  for (; p < plane; ++p) lane[p % kLanes] += static_cast<double>(term(p));
  double s = 0.0;
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
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
    const T* a = pred.const_data_ptr<T>();
    const T* b = target.const_data_ptr<T>();
    const T* m = mask.defined() ? mask.const_data_ptr<T>() : nullptr;
    std::vector<double> partial(N, 0.0);
    const int64_t grain = std::max<int64_t>(1, kLossGrain / std::max<int64_t>(plane, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        partial[n] = truncated_sum(a + n * 2 * plane, b + n * 2 * plane, m ? m + n * plane : nullptr, plane, cap);
      }
    });
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += partial[n];
    *loss.mutable_data_ptr<T>() = static_cast<T>(s);
  });
  return loss;
}

// d loss / d pred (coef = 2 g) or d loss / d target (coef = -2 g) on pixels [0, len) of one sample:
// coef mask (pred - target) where the error is within T^2, 0 where clamp_max truncates it. Pointers
// hoisted out of the loop and no per-pixel index division, so the loop vectorises.
template <typename T>
void flow_grad_span(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ m, T* __restrict__ d,
                    int64_t plane, int64_t len, T cap, T coef) {
  for (int64_t p = 0; p < len; ++p) {
    T dx, dy;
    const T w = coef * (m ? m[p] : T(1));  // loaded unconditionally, so the select below needs no branch
    const T s = squared_error(a, b, plane, p, &dx, &dy) <= cap ? w : T(0);
    d[p] = s * dx;
    d[plane + p] = s * dy;
  }
}

// d loss / d mask = g min(err, T^2) on pixels [0, len) of one sample.
template <typename T>
void mask_grad_span(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ d, int64_t plane, int64_t len,
                    T cap, T g) {
  for (int64_t p = 0; p < len; ++p) {
    T dx, dy;
    const T e = squared_error(a, b, plane, p, &dx, &dy);
    d[p] = g * (e > cap ? cap : e);
  }
}

// Pointwise, so any split of the (N, plane) pixels is deterministic: chunks of the flattened range, each cut
// at sample boundaries into per-sample spans. Only the gradients in output_mask are computed; the others
// come back empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> truncated_flow_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred_, const at::Tensor& target_, const c10::optional<at::Tensor>& mask_,
    double trunc, std::array<bool, 3> output_mask) {
  check_loss("_truncated_flow_loss_backward", pred_, target_, mask_);
  TORCH_CHECK(grad.numel() == 1, "pscfast::_truncated_flow_loss_backward: grad must be a scalar");
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const int64_t N = pred.size(0), plane = pred.size(2) * pred.size(3);
  at::Tensor d_pred, d_target, d_mask;
  std::tie(d_pred, d_target, d_mask) = loss_grad_buffers(pred, output_mask);
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "truncated_flow_loss_backward_cpu", [&] {
    using T = scalar_t;
    const T cap = static_cast<T>(trunc * trunc), g = grad.item<T>();
    const T* a = pred.const_data_ptr<T>();
    const T* b = target.const_data_ptr<T>();
    const T* m = mask.defined() ? mask.const_data_ptr<T>() : nullptr;
    T* dp = output_mask[0] ? d_pred.mutable_data_ptr<T>() : nullptr;
    T* dt = output_mask[1] ? d_target.mutable_data_ptr<T>() : nullptr;
    T* dm = output_mask[2] ? d_mask.mutable_data_ptr<T>() : nullptr;
    at::parallel_for(0, N * plane, kLossGrain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end;) {
        const int64_t n = k / plane, p0 = k - n * plane, len = std::min(plane - p0, end - k);
        const int64_t f = n * 2 * plane + p0;  // pixel p0's channel-0 offset in the flows
        const T* mk = m ? m + k : nullptr;
        if (dp) flow_grad_span(a + f, b + f, mk, dp + f, plane, len, cap, T(2) * g);
        if (dt) flow_grad_span(a + f, b + f, mk, dt + f, plane, len, cap, T(-2) * g);
        if (dm) mask_grad_span(a + f, b + f, dm + k, plane, len, cap, g);
        k += len;
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

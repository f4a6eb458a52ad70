// pscfast::truncated_flow_loss on the CPU (float, double; OpenMP via at::parallel_for). The forward sums one
// partial per sample, then the partials in order; the backward is pointwise and writes only the gradients
// asked for. Bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/truncated_flow_loss_checks.h"
#include "ops/common/truncated_flow_loss_math.h"

namespace pscfast {
namespace {

// Pixels per task of the loss kernels (ATen's grain for elementwise ops): below it, waking a second thread
// costs more than the few microseconds of memory-bound work it would take over.
constexpr int64_t kLossGrain = 32768;

// One sample's sum of mask min(err, T^2) in double. Pixel p adds to accumulator p % kLanes and the lanes are
// summed in order at the end: a fixed order (deterministic) without one serial chain of dependent adds.
template <typename T>
double truncated_sum(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ m, int64_t plane, T cap) {
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
// at sample boundaries into per-sample spans. Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor, at::Tensor> truncated_flow_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred_, const at::Tensor& target_, const c10::optional<at::Tensor>& mask_,
    double trunc, std::array<bool, 3> output_mask) {
  check_loss("_truncated_flow_loss_backward", pred_, target_, mask_);
  TORCH_CHECK(grad.numel() == 1, "pscfast::_truncated_flow_loss_backward: grad must be a scalar");
  at::Tensor d_pred, d_target, d_mask;
  std::tie(d_pred, d_target, d_mask) = loss_grad_buffers(pred_, mask_, output_mask);
  if (!(d_pred.defined() || d_target.defined() || d_mask.defined())) return {d_pred, d_target, d_mask};
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const int64_t N = pred.size(0), plane = pred.size(2) * pred.size(3);
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "truncated_flow_loss_backward_cpu", [&] {
    using T = scalar_t;
    const T cap = static_cast<T>(trunc * trunc), g = grad.item<T>();
    const T* a = pred.const_data_ptr<T>();
    const T* b = target.const_data_ptr<T>();
    const T* m = mask.defined() ? mask.const_data_ptr<T>() : nullptr;
    T* dp = data_or_null<T>(d_pred);
    T* dt = data_or_null<T>(d_target);
    T* dm = data_or_null<T>(d_mask);
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
  m.impl("truncated_flow_loss", &truncated_flow_loss_cpu);
  m.impl("_truncated_flow_loss_backward", &truncated_flow_loss_backward_cpu);
}

}  // namespace pscfast

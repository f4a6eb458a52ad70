// pscfast::consistency_loss on the CPU (float, double; OpenMP via at::parallel_for). Forward: one partial
// (sum, count) per sample, summed over samples in order afterwards. Backward: one task per sample visits its
// pixels in raster order, writes the pointwise bwd gradient and scatters the fwd gradient: bitwise
// reproducible for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/flow_checks.h"
#include "ops/common/output_mask.h"
#include "ops/cpu/grid_composition.h"

namespace pscfast {
namespace {

using cpu_compose::backward_sample;
using cpu_compose::compose_range;
using cpu_compose::Dims;
using cpu_compose::dims_of;

std::tuple<at::Tensor, at::Tensor> consistency_loss_cpu(const at::Tensor& fwd_, const at::Tensor& bwd_,
                                                        const at::Tensor& xs_, const at::Tensor& ys_,
                                                        c10::string_view mode) {
  check_grid_pair("consistency_loss", fwd_, bwd_);
  check_identity("consistency_loss", bwd_, xs_, ys_);
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const Dims D = dims_of(fwd, bwd);
  auto loss = at::empty({}, fwd.options());
  auto count = at::empty({}, fwd.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(fwd.scalar_type(), "consistency_loss_cpu", [&] {
    using T = scalar_t;
    std::vector<double> sums(D.N, 0.0);
    std::vector<int64_t> counts(D.N, 0);
    const T* x = xs.const_data_ptr<T>();
    const T* y = ys.const_data_ptr<T>();
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> cycle(D.pixels * 2);
      for (int64_t n = begin; n < end; ++n) {
        compose_range(D, fwd.const_data_ptr<T>() + n * D.h * D.w * 2, bwd.const_data_ptr<T>() + n * D.pixels * 2,
                      nearest, 0, D.pixels, cycle.data());
        double s = 0.0;
        int64_t c = 0;
        for (int64_t p = 0; p < D.pixels; ++p) {
          const T id[2] = {x[p % D.wo], y[p / D.wo]};
          for (int k = 0; k < 2; ++k) {
            const T v = cycle[2 * p + k];
            if (!consistency_term(v, id[k])) continue;
            const T diff = v - id[k];
            s += static_cast<double>(diff * diff);
            ++c;
          }
        }
        sums[n] = s;
        counts[n] = c;
      }
    });
    double s = 0.0;
    int64_t c = 0;
    for (int64_t n = 0; n < D.N; ++n) {
      s += sums[n];
      c += counts[n];
    }
    *loss.mutable_data_ptr<T>() = static_cast<T>(s / static_cast<double>(c > 0 ? c : 1));
    *count.mutable_data_ptr<int64_t>() = c;
  });
  return {loss, count};
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> consistency_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& fwd_,
                                                                 const at::Tensor& bwd_, const at::Tensor& xs_,
                                                                 const at::Tensor& ys_, c10::string_view mode,
                                                                 const at::Tensor& count,
                                                                 std::array<bool, 2> output_mask) {
  check_grid_pair("_consistency_loss_backward", fwd_, bwd_);
  check_identity("_consistency_loss_backward", bwd_, xs_, ys_);
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1,
              "pscfast::_consistency_loss_backward: grad and count "
              "must be scalars");
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  auto dfwd = zeros_if(output_mask[0], fwd_.sizes(), fwd_.options());  // scattered into
  auto dbwd = empty_if(output_mask[1], bwd_.sizes(), bwd_.options());
  if (!dfwd.defined() && !dbwd.defined()) return {dfwd, dbwd};
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const Dims D = dims_of(fwd, bwd);
  AT_DISPATCH_FLOATING_TYPES(fwd.scalar_type(), "consistency_loss_backward_cpu", [&] {
    using T = scalar_t;
    const int64_t c = count.item<int64_t>();
    const T scale = grad.item<T>() * T(2) / static_cast<T>(c > 0 ? c : 1);
    const T* x = xs.const_data_ptr<T>();
    const T* y = ys.const_data_ptr<T>();
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        backward_sample(
            D, fwd.const_data_ptr<T>(), bwd.const_data_ptr<T>(), nearest, n,
            [&](int64_t p, const T* cyc, T* o) {
              const T id[2] = {x[p % D.wo], y[p / D.wo]};
              for (int k = 0; k < 2; ++k) o[k] = consistency_term(cyc[k], id[k]) ? scale * (cyc[k] - id[k]) : T(0);
            },
            data_or_null<T>(dfwd), data_or_null<T>(dbwd));
    });
  });
  return {dfwd, dbwd};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("consistency_loss", &consistency_loss_cpu);
  m.impl("_consistency_loss_backward", &consistency_loss_backward_cpu);
}

}  // namespace pscfast

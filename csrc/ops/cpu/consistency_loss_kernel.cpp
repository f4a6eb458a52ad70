// pscfast::consistency_loss on the CPU (float, double). The cycle compose(fwd, bwd) is ATen's grid sampler
// reading fwd (N, h, w, 2) as a two-channel image (N, 2, h, w) at bwd's points (align_corners=True, zeros
// outside): its vectorised kernel is 4-5x faster on this CPU than a per-pixel composition. The loss is then one
// pass over the cycle: one partial (sum, count) per sample, summed over samples in order afterwards. Backward:
// the pointwise gradient of the cycle, then the sampler's backward, whose image gradient each sample scatters on
// one thread: bitwise reproducible for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/grid_sampler_2d.h>
#include <ATen/ops/grid_sampler_2d_backward.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/field_sample.h"
#include "ops/common/flow_checks.h"
#include "ops/common/output_mask.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

// fwd sampled at bwd's points: (N, 2, h', w'), channel 0 the cycle's x and 1 its y.
at::Tensor cycle_of(const at::Tensor& fwd, const at::Tensor& bwd, bool nearest) {
  return at::grid_sampler_2d(fwd.permute({0, 3, 1, 2}), bwd, nearest ? 1 : 0, /*padding: zeros*/ 0,
                             /*align_corners*/ true);
}

// The release's mask (consistency_term) as 1 or 0. Written from the same unit_nonzero rather than through
// consistency_term's bool, whose conversion to a float keeps GCC from vectorising the loops below.
template <typename T>
inline T mask_of(T c, T i) {
  return static_cast<T>(unit_nonzero(c) & unit_nonzero(i));
}

// One coordinate plane (h', w') of a sample's cycle against the identity's x (per column, IsX) or y (per row):
// adds the squared masked differences and their count, summed in 16 lanes per row and in a fixed order.
template <bool IsX, typename T>
PSC_MULTIVERSION void plane_sum(const T* __restrict cyc, const T* __restrict xs, const T* __restrict ys, int64_t h,
                                int64_t w, double* sum, int64_t* count) {
  constexpr int L = 16;
  for (int64_t row = 0; row < h; ++row, cyc += w) {
    T acc[L] = {}, cnt[L] = {};
    int64_t col = 0;
    for (; col + L <= w; col += L)
      for (int j = 0; j < L; ++j) {
        const T id = IsX ? xs[col + j] : ys[row];
        const T m = mask_of(cyc[col + j], id), d = (cyc[col + j] - id) * m;
        acc[j] += d * d;
        cnt[j] += m;
      }
    for (int j = 0; col < w; ++col, ++j) {
      const T id = IsX ? xs[col] : ys[row];
      const T m = mask_of(cyc[col], id), d = (cyc[col] - id) * m;
      acc[j] += d * d;
      cnt[j] += m;
    }
    for (int j = 0; j < L; ++j) {
      *sum += static_cast<double>(acc[j]);
      *count += static_cast<int64_t>(cnt[j]);
    }
  }
}

// d loss / d cycle of one plane: scale * the masked difference.
template <bool IsX, typename T>
PSC_MULTIVERSION void plane_grad(const T* __restrict cyc, const T* __restrict xs, const T* __restrict ys, int64_t h,
                                 int64_t w, T scale, T* __restrict g) {
  for (int64_t row = 0; row < h; ++row, cyc += w, g += w)
    for (int64_t col = 0; col < w; ++col) {
      const T id = IsX ? xs[col] : ys[row];
      g[col] = scale * (cyc[col] - id) * mask_of(cyc[col], id);
    }
}

std::tuple<at::Tensor, at::Tensor> consistency_loss_cpu(const at::Tensor& fwd, const at::Tensor& bwd,
                                                        const at::Tensor& xs_, const at::Tensor& ys_,
                                                        c10::string_view mode) {
  check_grid_pair("consistency_loss", fwd, bwd);
  check_identity("consistency_loss", bwd, xs_, ys_);
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto xs = xs_.contiguous(), ys = ys_.contiguous();
  const auto cycle = cycle_of(fwd, bwd, nearest).contiguous();
  const int64_t N = bwd.size(0), h = bwd.size(1), w = bwd.size(2);
  auto loss = at::empty({}, fwd.options());
  auto count = at::empty({}, fwd.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(fwd.scalar_type(), "consistency_loss_cpu", [&] {
    using T = scalar_t;
    std::vector<double> sums(N, 0.0);
    std::vector<int64_t> counts(N, 0);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* cyc = cycle.const_data_ptr<T>() + n * 2 * h * w;
        plane_sum<true>(cyc, xs.const_data_ptr<T>(), ys.const_data_ptr<T>(), h, w, &sums[n], &counts[n]);
        plane_sum<false>(cyc + h * w, xs.const_data_ptr<T>(), ys.const_data_ptr<T>(), h, w, &sums[n], &counts[n]);
      }
    });
    double s = 0.0;
    int64_t c = 0;
    for (int64_t n = 0; n < N; ++n) {
      s += sums[n];
      c += counts[n];
    }
    *loss.mutable_data_ptr<T>() = static_cast<T>(s / static_cast<double>(c > 0 ? c : 1));
    *count.mutable_data_ptr<int64_t>() = c;
  });
  return {loss, count};
}

// Only the gradients in output_mask are returned; nearest sampling gives bwd none (zeros, as the release).
std::tuple<at::Tensor, at::Tensor> consistency_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& fwd,
                                                                 const at::Tensor& bwd, const at::Tensor& xs_,
                                                                 const at::Tensor& ys_, c10::string_view mode,
                                                                 const at::Tensor& count,
                                                                 std::array<bool, 2> output_mask) {
  check_grid_pair("_consistency_loss_backward", fwd, bwd);
  check_identity("_consistency_loss_backward", bwd, xs_, ys_);
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1,
              "pscfast::_consistency_loss_backward: grad and count must be scalars");
  if (!output_mask[0] && !output_mask[1]) return {};
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto xs = xs_.contiguous(), ys = ys_.contiguous();
  const auto cycle = cycle_of(fwd, bwd, nearest).contiguous();
  const int64_t N = bwd.size(0), h = bwd.size(1), w = bwd.size(2);
  auto gcycle = at::empty_like(cycle);
  AT_DISPATCH_FLOATING_TYPES(fwd.scalar_type(), "consistency_loss_backward_cpu", [&] {
    using T = scalar_t;
    const int64_t c = count.item<int64_t>();
    const T scale = grad.item<T>() * T(2) / static_cast<T>(c > 0 ? c : 1);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      const T* x = xs.const_data_ptr<T>();
      const T* y = ys.const_data_ptr<T>();
      for (int64_t n = begin; n < end; ++n) {
        const T* cyc = cycle.const_data_ptr<T>() + n * 2 * h * w;
        T* g = gcycle.mutable_data_ptr<T>() + n * 2 * h * w;
        plane_grad<true>(cyc, x, y, h, w, scale, g);
        plane_grad<false>(cyc + h * w, x, y, h, w, scale, g + h * w);
      }
    });
  });
  const bool grid_grad = output_mask[1] && !nearest;
  auto [dimage, dgrid] = at::grid_sampler_2d_backward(gcycle, fwd.permute({0, 3, 1, 2}), bwd, nearest ? 1 : 0, 0, true,
                                                      {output_mask[0], grid_grad});
  at::Tensor dfwd = output_mask[0] ? dimage.permute({0, 2, 3, 1}).contiguous() : at::Tensor();
  at::Tensor dbwd;
  if (output_mask[1]) dbwd = grid_grad ? dgrid : at::zeros(bwd.sizes(), bwd.options());
  return {dfwd, dbwd};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("consistency_loss", &consistency_loss_cpu);
  m.impl("_consistency_loss_backward", &consistency_loss_backward_cpu);
}

}  // namespace pscfast

// pscfast::compose and pscfast::consistency_loss on the CPU (float, double; OpenMP via at::parallel_for).
// Forward: compose in parallel over pixel ranges; the loss as one partial (sum, count) per sample, summed
// over samples in order afterwards. Backward: one task per sample visits its pixels in raster order, writes
// the pointwise f_bc gradient and scatters the f_ab gradient: bitwise reproducible for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/field_sample.h"
#include "ops/common/flow_checks.h"

namespace pscfast {
namespace {

struct Dims {
  int64_t N, pixels;  // pixels of f_bc's grid (the output's)
  int h, w, ho, wo;   // f_ab's grid, the output's grid
};

Dims dims_of(const at::Tensor& f_ab, const at::Tensor& f_bc) {
  return {f_ab.size(0), f_bc.size(1) * f_bc.size(2), static_cast<int>(f_ab.size(1)), static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_bc.size(1)), static_cast<int>(f_bc.size(2))};
}

// cycle = f_ab sampled at f_bc[pix] for the pixels [begin, end) of one sample (pointers at the sample).
template <typename T>
void compose_range(const Dims& D, const T* fab_n, const T* fbc_n, bool nearest, int64_t begin, int64_t end,
                   T* out_n) {
  for (int64_t p = begin; p < end; ++p) {
    T dpx, dpy;
    const auto t = compose_taps(fbc_n, p, D.h, D.w, nearest, &dpx, &dpy);
    out_n[2 * p] = field_value(t, fab_n, 2, 0);
    out_n[2 * p + 1] = field_value(t, fab_n, 2, 1);
  }
}

// Backward of one sample. gout(p, cycle, g) gives d L / d cycle at pixel p; the f_ab gradient is scattered
// in raster order, the f_bc gradient is pointwise (0 for nearest: the sampling position has no gradient).
template <typename T, typename GradFn>
void backward_sample(const Dims& D, const T* fab, const T* fbc, bool nearest, int64_t n, GradFn gout, T* dfab,
                     T* dfbc) {
  const T* fab_n = fab + n * D.h * D.w * 2;
  const T* fbc_n = fbc + n * D.pixels * 2;
  T* dfab_n = dfab + n * D.h * D.w * 2;
  T* dfbc_n = dfbc + n * D.pixels * 2;
  for (int64_t p = 0; p < D.pixels; ++p) {
    T dpx, dpy;
    const auto t = compose_taps(fbc_n, p, D.h, D.w, nearest, &dpx, &dpy);
    const T c[2] = {field_value(t, fab_n, 2, 0), field_value(t, fab_n, 2, 1)};
    T g[2];
    gout(p, c, g);
    T ax = T(0), ay = T(0);
    if (!nearest) {
      field_coord_grad(t, fab_n, 2, 0, g[0], &ax, &ay);
      field_coord_grad(t, fab_n, 2, 1, g[1], &ax, &ay);
    }
    dfbc_n[2 * p] = ax * dpx;
    dfbc_n[2 * p + 1] = ay * dpy;
    for (int k = 0; k < 4; ++k) {
      if (t.idx[k] < 0) continue;
      dfab_n[2 * t.idx[k]] += t.w[k] * g[0];
      dfab_n[2 * t.idx[k] + 1] += t.w[k] * g[1];
    }
  }
}

at::Tensor compose_cpu(const at::Tensor& f_ab_, const at::Tensor& f_bc_, c10::string_view mode) {
  check_grid_pair("compose", f_ab_, f_bc_);
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous();
  auto out = at::empty_like(f_bc);
  const Dims D = dims_of(f_ab, f_bc);
  AT_DISPATCH_FLOATING_TYPES(f_ab.scalar_type(), "compose_cpu", [&] {
    const scalar_t* fab = f_ab.const_data_ptr<scalar_t>();
    const scalar_t* fbc = f_bc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, D.N * D.pixels, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t n = i / D.pixels, p0 = i % D.pixels, p1 = std::min(D.pixels, p0 + (end - i));
        compose_range(D, fab + n * D.h * D.w * 2, fbc + n * D.pixels * 2, nearest, p0, p1, o + n * D.pixels * 2);
        i += p1 - p0;
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> compose_backward_cpu(const at::Tensor& grad_out, const at::Tensor& f_ab_,
                                                        const at::Tensor& f_bc_, c10::string_view mode) {
  check_grid_pair("_compose_backward", f_ab_, f_bc_);
  TORCH_CHECK(grad_out.sizes() == f_bc_.sizes(), "pscfast::_compose_backward: grad_out must have f_bc's shape");
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), gout = grad_out.contiguous();
  auto dfab = at::zeros_like(f_ab);
  auto dfbc = at::empty_like(f_bc);
  const Dims D = dims_of(f_ab, f_bc);
  AT_DISPATCH_FLOATING_TYPES(f_ab.scalar_type(), "compose_backward_cpu", [&] {
    const scalar_t* g = gout.const_data_ptr<scalar_t>();
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* gn = g + n * D.pixels * 2;
        backward_sample(D, f_ab.const_data_ptr<scalar_t>(), f_bc.const_data_ptr<scalar_t>(), nearest, n,
                        [&](int64_t p, const scalar_t*, scalar_t* o) {
                          o[0] = gn[2 * p];
                          o[1] = gn[2 * p + 1];
                        },
                        dfab.mutable_data_ptr<scalar_t>(), dfbc.mutable_data_ptr<scalar_t>());
      }
    });
  });
  return {dfab, dfbc};
}

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

std::tuple<at::Tensor, at::Tensor> consistency_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& count,
                                                                 const at::Tensor& fwd_, const at::Tensor& bwd_,
                                                                 const at::Tensor& xs_, const at::Tensor& ys_,
                                                                 c10::string_view mode) {
  check_grid_pair("_consistency_loss_backward", fwd_, bwd_);
  check_identity("_consistency_loss_backward", bwd_, xs_, ys_);
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1, "pscfast::_consistency_loss_backward: grad and count "
              "must be scalars");
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const Dims D = dims_of(fwd, bwd);
  auto dfwd = at::zeros_like(fwd);
  auto dbwd = at::empty_like(bwd);
  AT_DISPATCH_FLOATING_TYPES(fwd.scalar_type(), "consistency_loss_backward_cpu", [&] {
    using T = scalar_t;
    const int64_t c = count.item<int64_t>();
    const T scale = grad.item<T>() * T(2) / static_cast<T>(c > 0 ? c : 1);
    const T* x = xs.const_data_ptr<T>();
    const T* y = ys.const_data_ptr<T>();
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        backward_sample(D, fwd.const_data_ptr<T>(), bwd.const_data_ptr<T>(), nearest, n,
                        [&](int64_t p, const T* cyc, T* o) {
                          const T id[2] = {x[p % D.wo], y[p / D.wo]};
                          for (int k = 0; k < 2; ++k)
                            o[k] = consistency_term(cyc[k], id[k]) ? scale * (cyc[k] - id[k]) : T(0);
                        },
                        dfwd.mutable_data_ptr<T>(), dbwd.mutable_data_ptr<T>());
    });
  });
  return {dfwd, dbwd};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("compose", &compose_cpu);
  m.impl("_compose_backward", &compose_backward_cpu);
  m.impl("consistency_loss", &consistency_loss_cpu);
  m.impl("_consistency_loss_backward", &consistency_loss_backward_cpu);
}

}  // namespace pscfast

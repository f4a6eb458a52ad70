// pscfast::compose on the CPU (float, double; OpenMP via at::parallel_for). Forward in parallel over pixel
// ranges; backward: one task per sample visits its pixels in raster order, writes the pointwise f_bc
// gradient and scatters the f_ab gradient: bitwise reproducible for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string>
#include <tuple>

#include "ops/common/flow_checks.h"
#include "ops/common/output_mask.h"
#include "ops/cpu/grid_composition.h"

namespace pscfast {
namespace {

using cpu_compose::backward_sample;
using cpu_compose::compose_range;
using cpu_compose::Dims;
using cpu_compose::dims_of;

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

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> compose_backward_cpu(const at::Tensor& grad_out, const at::Tensor& f_ab_,
                                                        const at::Tensor& f_bc_, c10::string_view mode,
                                                        std::array<bool, 2> output_mask) {
  check_grid_pair("_compose_backward", f_ab_, f_bc_);
  TORCH_CHECK(grad_out.sizes() == f_bc_.sizes(), "pscfast::_compose_backward: grad_out must have f_bc's shape");
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  auto dfab = zeros_if(output_mask[0], f_ab_.sizes(), f_ab_.options());  // scattered into
  auto dfbc = empty_if(output_mask[1], f_bc_.sizes(), f_bc_.options());
  if (!dfab.defined() && !dfbc.defined()) return {dfab, dfbc};
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), gout = grad_out.contiguous();
  const Dims D = dims_of(f_ab, f_bc);
  AT_DISPATCH_FLOATING_TYPES(f_ab.scalar_type(), "compose_backward_cpu", [&] {
    const scalar_t* g = gout.const_data_ptr<scalar_t>();
    at::parallel_for(0, D.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* gn = g + n * D.pixels * 2;
        backward_sample(
            D, f_ab.const_data_ptr<scalar_t>(), f_bc.const_data_ptr<scalar_t>(), nearest, n,
            [&](int64_t p, const scalar_t*, scalar_t* o) {
              o[0] = gn[2 * p];
              o[1] = gn[2 * p + 1];
            },
            data_or_null<scalar_t>(dfab), data_or_null<scalar_t>(dfbc));
      }
    });
  });
  return {dfab, dfbc};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("compose", &compose_cpu);
  m.impl("_compose_backward", &compose_backward_cpu);
}

}  // namespace pscfast

// The composition of absolute grids in compose's CPU kernels: f_ab (N, h, w, 2) sampled at the grid points of
// f_bc (N, h', w', 2) (align_corners=True, zeros outside), and the backward of one sample given d L / d cycle
// per pixel.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ops/common/field_sample.h"

namespace pscfast {
namespace cpu_compose {

struct Dims {
  int64_t N, pixels;  // pixels of f_bc's grid (the output's)
  int h, w, ho, wo;   // f_ab's grid, the output's grid
};

inline Dims dims_of(const at::Tensor& f_ab, const at::Tensor& f_bc) {
  return {f_ab.size(0),
          f_bc.size(1) * f_bc.size(2),
          static_cast<int>(f_ab.size(1)),
          static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_bc.size(1)),
          static_cast<int>(f_bc.size(2))};
}

// cycle = f_ab sampled at f_bc[pix] for the pixels [begin, end) of one sample (pointers at the sample).
template <typename T>
void compose_range(const Dims& D, const T* fab_n, const T* fbc_n, bool nearest, int64_t begin, int64_t end, T* out_n) {
  for (int64_t p = begin; p < end; ++p) {
    T dpx, dpy;
    const auto t = compose_taps(fbc_n, p, D.h, D.w, nearest, &dpx, &dpy);
    out_n[2 * p] = field_value(t, fab_n, 2, 0);
    out_n[2 * p + 1] = field_value(t, fab_n, 2, 1);
  }
}

// Backward of one sample. gout(p, cycle, g) gives d L / d cycle at pixel p; the f_ab gradient is scattered
// in raster order, the f_bc gradient is pointwise (0 for nearest: the sampling position has no gradient). A
// null dfab or dfbc is a gradient not wanted: its work is skipped.
template <typename T, typename GradFn>
void backward_sample(const Dims& D, const T* fab, const T* fbc, bool nearest, int64_t n, GradFn gout, T* dfab,
                     T* dfbc) {
  const T* fab_n = fab + n * D.h * D.w * 2;
  const T* fbc_n = fbc + n * D.pixels * 2;
  T* dfab_n = dfab ? dfab + n * D.h * D.w * 2 : nullptr;
  T* dfbc_n = dfbc ? dfbc + n * D.pixels * 2 : nullptr;
  for (int64_t p = 0; p < D.pixels; ++p) {
    T dpx, dpy;
    const auto t = compose_taps(fbc_n, p, D.h, D.w, nearest, &dpx, &dpy);
    const T c[2] = {field_value(t, fab_n, 2, 0), field_value(t, fab_n, 2, 1)};
    T g[2];
    gout(p, c, g);
    if (dfbc_n) {
      T ax = T(0), ay = T(0);
      if (!nearest) {
        field_coord_grad(t, fab_n, 2, 0, g[0], &ax, &ay);
        field_coord_grad(t, fab_n, 2, 1, g[1], &ax, &ay);
      }
      dfbc_n[2 * p] = ax * dpx;
      dfbc_n[2 * p + 1] = ay * dpy;
    }
    if (!dfab_n) continue;
    for (int k = 0; k < 4; ++k) {
      if (t.idx[k] < 0) continue;
      dfab_n[2 * t.idx[k]] += t.w[k] * g[0];
      dfab_n[2 * t.idx[k] + 1] += t.w[k] * g[1];
    }
  }
}

}  // namespace cpu_compose
}  // namespace pscfast

// The per-pixel part of compose_displacement (Zhou et al.), shared by the CPU and CUDA kernels.
//
// Pixel p = (i, j) of image a with displacement (u, v) = f_ab(p) reads image b at q = (j + u, i + v)
// (bilinear, zeros outside): s_c = f_bc[c](q), s_m = m_bc(q);  f_ac[c] = f_ab[c] + s_c,  m_ac = m_ab * s_m.
// Backward, with gf_c = d L / d f_ac[c] and gm = d L / d m_ac:
//   d f_ab[c] = gf_c + sum_k g_k d s_k / d q_c       (g = gf_0, gf_1, gm m_ab for the channels f_bc0, f_bc1, m_bc)
//   d m_ab    = gm s_m
//   d f_bc[c][tap] += w_tap gf_c,  d m_bc[tap] += w_tap gm m_ab     (scattered in raster order)
#pragma once

#include "ops/common/field_sample.h"

namespace pscfast {

template <typename T, typename S>
PSC_HD FieldTaps<T> cycle_taps(const S* f_ab_n, int64_t plane, int i, int j, int W, int Hb, int Wb, T* u, T* v) {
  const int64_t p = static_cast<int64_t>(i) * W + j;
  *u = static_cast<T>(f_ab_n[p]);
  *v = static_cast<T>(f_ab_n[plane + p]);
  const T px = clamp_pixel(static_cast<T>(j) + *u, Wb);
  const T py = clamp_pixel(static_cast<T>(i) + *v, Hb);
  return field_taps(px, py, Hb, Wb, false);
}

}  // namespace pscfast

// Kernel soft-argmax (SFNet eq. 2-3), shared conventions of the CPU and CUDA kernels.
// Per source position s, over target positions q = (qy, qx) (row-major q = qy * Wt + qx):
//   r = max(||c||_2, kNormEps), n_q = c_q / r (F.normalize), q* = first argmax_q n_q,
//   k_q = exp(-((qx - qx*)^2 + (qy - qy*)^2) / (2 sigma^2)), z_q = beta k_q n_q, m = softmax_q(z),
//   (x, y) = sum_q m_q (qx, qy) in target cells, output (x * 2 / (Wt - 1) - 1, y * 2 / (Ht - 1) - 1)
//   (0 for a size of 1).
// Backward with (xb, yb) = d L / d(x, y) in cells: zb_q = m_q (xb qx + yb qy - (xb x + yb y)),
//   nb_q = beta k_q zb_q, d L / d c_q = (nb_q - n_q <n, nb>) / r when ||c|| > kNormEps, else nb_q / kNormEps.
#pragma once

#include <cmath>

namespace pscfast {

constexpr double kNormEps = 1e-12;  // F.normalize's default eps

#ifdef __CUDACC__
#define PSC_HD __host__ __device__
#else
#define PSC_HD
#endif

// d(normalised coordinate) / d(cell coordinate) along an axis of `size` cells (align_corners=True).
template <typename T>
PSC_HD inline T cell_scale(int size) {
  return size > 1 ? T(2) / static_cast<T>(size - 1) : T(0);
}

template <typename T>
PSC_HD inline T to_normalised(T cells, int size) {
  return size > 1 ? cells * cell_scale<T>(size) - T(1) : T(0);
}

#undef PSC_HD

}  // namespace pscfast

// Kernel soft-argmax (SFNet eq. 2-3), shared conventions of the CPU and CUDA kernels.
// Per source position s, over target positions q = (qy, qx) (row-major q = qy * Wt + qx):
//   n_q = c_q / r with r by the row normalisation (row_scale below), q* = first argmax_q c_q,
//   k_q = exp(-((qx - qx*)^2 + (qy - qy*)^2) / (2 sigma^2)), z_q = k_q n_q, p = first argmax_q z_q,
//   m_q = exp(beta (z_q - z_p)) / sum: the difference is taken before the scaling by beta, as SFNet's
//   softmax_with_temperature does (beta z_q - beta z_p loses up to beta times more in float32);
//   (dx, dy) = sum_q m_q (q - p) in cells, the expected offset from p, and (x, y) = p + (dx, dy);
//   output (x * 2 / (Wt - 1) - 1, y * 2 / (Ht - 1) - 1) (0 for a size of 1).
// Backward with (xb, yb) = d L / d(x, y) in cells: nb_q = beta k_q m_q (xb (qx - x) + yb (qy - y)) with
//   q - x formed as (q - p) - dx: at q = p, where m is close to 1 and the gradient is a small difference of
//   large terms, it is -dx, exact to the precision of dx (SFNet's autograd gets the same by sending the
//   gradient of its max back to p). Then
//   d L / d c_q = (nb_q - n_q <n, nb>) / r when r depends on c (project), else nb_q / r.
#pragma once

#include <cmath>

namespace pscfast {

constexpr double kNormEps = 1e-12;      // F.normalize's default eps: r = max(||c||, eps)
constexpr double kSfnetNormEps = 1e-6;  // SFNet's L2normalize: r = sqrt(||c||^2 + eps)

// The normalize argument of the op, as an int the kernels branch on.
enum class RowNorm : int { kL2 = 0, kSfnet = 1, kNone = 2 };

#ifdef __CUDACC__
#define PSC_HD __host__ __device__
#else
#define PSC_HD
#endif

// The divisor r of a row with sum of squares sq, and whether it varies with the row (then the backward
// projects out the radial part): "l2" the clamped norm (constant once clamped), "sfnet" always, "none" r = 1.
template <typename T>
PSC_HD inline T row_scale(RowNorm mode, T sq, bool* project) {
  if (mode == RowNorm::kNone) {
    *project = false;
    return T(1);
  }
  using std::sqrt;
  if (mode == RowNorm::kSfnet) {
    *project = true;
    return sqrt(sq + static_cast<T>(kSfnetNormEps));
  }
  const T norm = sqrt(sq);
  *project = norm > static_cast<T>(kNormEps);
  return *project ? norm : static_cast<T>(kNormEps);
}

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

// Geometry and argument checks of the local_correlation op, shared by the CPU and CUDA kernels.
// out[n, p, i, j], p = py * P + px, P = 2 d + 1: displacement (oy, ox) = ((py - d), (px - d)) * dilation_patch;
// value = sum over c and the kernel window (ki, kj) of a[n, c, ya, xa] * b[n, c, ya + oy, xa + ox] with
// ya = i * stride - padding + ki * dilation (xa likewise); terms with either position outside the maps are 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#ifdef __CUDACC__
#define PSC_CORR_HD __host__ __device__
#else
#define PSC_CORR_HD
#endif

namespace pscfast {

struct CorrGeometry {
  int64_t N, C;
  int H, W, Ho, Wo;
  int k, d, P, stride, pad, dil, dilp;

  // displacement of channel p, in pixels
  PSC_CORR_HD int oy(int p) const { return (p / P - d) * dilp; }
  PSC_CORR_HD int ox(int p) const { return (p % P - d) * dilp; }
};

inline CorrGeometry corr_geometry(const at::Tensor& a, const at::Tensor& b, int64_t kernel_size,
                                  int64_t max_displacement, int64_t stride, int64_t padding, int64_t dilation,
                                  int64_t dilation_patch) {
  TORCH_CHECK(a.dim() == 4 && b.dim() == 4, "pscfast::local_correlation: a and b must be (N, C, H, W), got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.sizes() == b.sizes(), "pscfast::local_correlation: a and b must have one shape, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "pscfast::local_correlation: a and b must have one dtype");
  TORCH_CHECK(a.device() == b.device(), "pscfast::local_correlation: a and b are on different devices");
  TORCH_CHECK(kernel_size >= 1 && max_displacement >= 0 && stride >= 1 && padding >= 0 && dilation >= 1 &&
                  dilation_patch >= 1,
              "pscfast::local_correlation: need kernel_size, stride, dilation, dilation_patch >= 1 and "
              "max_displacement, padding >= 0");
  CorrGeometry g{};
  g.N = a.size(0);
  g.C = a.size(1);
  g.H = static_cast<int>(a.size(2));
  g.W = static_cast<int>(a.size(3));
  g.k = static_cast<int>(kernel_size);
  g.d = static_cast<int>(max_displacement);
  g.P = 2 * g.d + 1;
  g.stride = static_cast<int>(stride);
  g.pad = static_cast<int>(padding);
  g.dil = static_cast<int>(dilation);
  g.dilp = static_cast<int>(dilation_patch);
  const int64_t span = static_cast<int64_t>(g.dil) * (g.k - 1) + 1;
  TORCH_CHECK(a.size(2) + 2 * padding >= span && a.size(3) + 2 * padding >= span,
              "pscfast::local_correlation: the dilated kernel (", span, ") is larger than the padded input ",
              a.sizes());
  TORCH_CHECK(a.size(2) * a.size(3) < (int64_t(1) << 31), "pscfast::local_correlation: planes too large");
  g.Ho = static_cast<int>((a.size(2) + 2 * padding - span) / stride + 1);
  g.Wo = static_cast<int>((a.size(3) + 2 * padding - span) / stride + 1);
  return g;
}

inline void check_corr_grad(const at::Tensor& grad_out, const at::Tensor& a, const CorrGeometry& G) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == G.N && grad_out.size(1) == G.P * G.P &&
                  grad_out.size(2) == G.Ho && grad_out.size(3) == G.Wo && grad_out.scalar_type() == a.scalar_type(),
              "pscfast::_local_correlation_backward: grad_out must be (", G.N, ", ", G.P * G.P, ", ", G.Ho, ", ",
              G.Wo, ") in a's dtype, got ", grad_out.sizes(), " ", grad_out.scalar_type());
}

// The output rows i whose window row ki reads input row y: i = (y + pad - ki * dil) / stride when exact.
// Returns -1 when none.
inline PSC_CORR_HD int window_index(int y, int kk, int pad, int dil, int stride, int n_out) {
  const int t = y + pad - kk * dil;
  if (t < 0 || t % stride != 0) return -1;
  const int i = t / stride;
  return i < n_out ? i : -1;
}

}  // namespace pscfast

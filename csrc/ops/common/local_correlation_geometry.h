// Geometry and argument checks of the local_correlation op, shared by the CPU and CUDA kernels.
// Every argument is an (h, w) pair, spatial_correlation_sampler's semantics. out[n, p, i, j],
// p = py * PW + px: displacement (oy, ox) = (py - rh) * dph, (px - rw) * dpw with rh = (PH - 1) / 2
// (rounded down: an even patch reaches one step further forward than back); value = sum over c and the kernel
// window (ki, kj) of a[n, c, ya, xa] * b[n, c, ya + oy, xa + ox] with ya = i * sh - padh + ki * dilh (xa
// likewise); terms with either position outside the maps are 0.
// The kernels index in int: corr_geometry refuses any argument or size that would not fit (the same bounds as
// pscfast/ops/local_correlation.py, which checks first with friendlier messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#ifdef __CUDACC__
#define PSC_CORR_HD __host__ __device__
#else
#define PSC_CORR_HD
#endif

namespace pscfast {

struct CorrGeometry {
  int64_t N, C;
  int H, W, Ho, Wo;
  int kh, kw, PH, PW, P2, rh, rw, sh, sw, padh, padw, dilh, dilw, dph, dpw;

  // displacement of channel p, in pixels
  PSC_CORR_HD int oy(int p) const { return (p / PW - rh) * dph; }
  PSC_CORR_HD int ox(int p) const { return (p % PW - rw) * dpw; }
};

constexpr int64_t kCorrIntMax = INT32_MAX;

// Output size of one axis after checking that every position, window tap and displacement the kernels form
// along it fits in int: size + 2 pad plus the largest displacement.
inline int64_t corr_axis(const char* axis, int64_t size, int64_t k, int64_t P, int64_t stride, int64_t pad, int64_t dil,
                         int64_t dilp) {
  const int64_t padded = size + 2 * pad;
  TORCH_CHECK(padded <= kCorrIntMax, "pscfast::local_correlation: the padded ", axis, " (", padded,
              ") exceeds 2^31 - 1");
  const int64_t span = dil * (k - 1) + 1;
  TORCH_CHECK(span <= padded, "pscfast::local_correlation: the dilated kernel (", span, ") is larger than the ",
              "padded ", axis, " (", padded, ")");
  const int64_t reach = (P / 2) * dilp;  // the largest displacement, forward: P - 1 - (P - 1) / 2 = P / 2
  TORCH_CHECK(reach <= kCorrIntMax - padded, "pscfast::local_correlation: displacements of up to ", reach,
              " pixels along the ", axis, " exceed int32 indexing");
  return (padded - span) / stride + 1;
}

inline CorrGeometry corr_geometry(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef kernel_size,
                                  at::IntArrayRef patch_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, at::IntArrayRef dilation_patch) {
  TORCH_CHECK(a.dim() == 4 && b.dim() == 4, "pscfast::local_correlation: a and b must be (N, C, H, W), got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.sizes() == b.sizes(), "pscfast::local_correlation: a and b must have one shape, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "pscfast::local_correlation: a and b must have one dtype");
  TORCH_CHECK(a.device() == b.device(), "pscfast::local_correlation: a and b are on different devices");
  for (const auto& arg : {kernel_size, patch_size, stride, padding, dilation, dilation_patch})
    TORCH_CHECK(arg.size() == 2, "pscfast::local_correlation: every size argument is an (h, w) pair");
  for (int d = 0; d < 2; ++d)
    TORCH_CHECK(kernel_size[d] >= 1 && patch_size[d] >= 1 && stride[d] >= 1 && padding[d] >= 0 && dilation[d] >= 1 &&
                    dilation_patch[d] >= 1 &&
                    std::max({kernel_size[d], patch_size[d], stride[d], padding[d], dilation[d], dilation_patch[d]}) <=
                        kCorrIntMax,
                "pscfast::local_correlation: need kernel_size, patch_size, stride, dilation, dilation_patch in "
                "[1, 2^31 - 1] and padding in [0, 2^31 - 1]");
  TORCH_CHECK(a.size(2) <= kCorrIntMax && a.size(3) <= kCorrIntMax && a.size(2) * a.size(3) <= kCorrIntMax,
              "pscfast::local_correlation: planes of 2^31 pixels or more");
  TORCH_CHECK(patch_size[0] * patch_size[1] <= kCorrIntMax,
              "pscfast::local_correlation: patch_size gives 2^31 or more channels");
  const int64_t Ho = corr_axis("height", a.size(2), kernel_size[0], patch_size[0], stride[0], padding[0], dilation[0],
                               dilation_patch[0]);
  const int64_t Wo = corr_axis("width", a.size(3), kernel_size[1], patch_size[1], stride[1], padding[1], dilation[1],
                               dilation_patch[1]);
  TORCH_CHECK(Ho * Wo <= kCorrIntMax, "pscfast::local_correlation: output planes of 2^31 pixels or more");
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  return {a.size(0),
          a.size(1),
          i(a.size(2)),
          i(a.size(3)),
          i(Ho),
          i(Wo),
          i(kernel_size[0]),
          i(kernel_size[1]),
          i(patch_size[0]),
          i(patch_size[1]),
          i(patch_size[0] * patch_size[1]),
          i((patch_size[0] - 1) / 2),
          i((patch_size[1] - 1) / 2),
          i(stride[0]),
          i(stride[1]),
          i(padding[0]),
          i(padding[1]),
          i(dilation[0]),
          i(dilation[1]),
          i(dilation_patch[0]),
          i(dilation_patch[1])};
}

inline void check_corr_grad(const at::Tensor& grad_out, const at::Tensor& a, const CorrGeometry& G) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == G.N && grad_out.size(1) == G.P2 && grad_out.size(2) == G.Ho &&
                  grad_out.size(3) == G.Wo && grad_out.scalar_type() == a.scalar_type(),
              "pscfast::_local_correlation_backward: grad_out must be (", G.N, ", ", G.P2, ", ", G.Ho, ", ", G.Wo,
              ") in a's dtype, got ", grad_out.sizes(), " ", grad_out.scalar_type());
}

// The output rows i whose window row kk reads input row y: i = (y + pad - kk * dil) / stride when exact.
// Returns -1 when none.
inline PSC_CORR_HD int window_index(int y, int kk, int pad, int dil, int stride, int n_out) {
  const int t = y + pad - kk * dil;
  if (t < 0 || t % stride != 0) return -1;
  const int i = t / stride;
  return i < n_out ? i : -1;
}

}  // namespace pscfast

// The two 4-tap linear maps of the correlation op, shared by the CPU and CUDA kernels: each maps an
// H x W plane to an oh x ow grid of the correlation (position s = row-major (i, j)): the source grid
// (hs x ws, the output's spatial size) or the target grid (ht x wt, the output's channels per layer).
//   resize (tgt always, src without grid): F.interpolate(mode="bilinear", align_corners=False), no
//     antialias: src = max((dst + 0.5) * in / out - 0.5, 0), i0 = floor(src) (<= in - 1),
//     i1 = min(i0 + 1, in - 1), weights (1 - l, l) per axis; separable, so the taps are the products.
//   sample (src with grid): grid_sample(bilinear, zeros, align_corners=True) at grid point s; taps outside
//     the plane read nothing (weight 0, offset 0).
// Tap order: 0 = (y0, x0), 1 = (y0, x1), 2 = (y1, x0), 3 = (y1, x1).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "ops/common/sampling.h"

namespace pscfast {

// Four taps of one grid position: flat offsets into the plane and weights (0 for taps outside).
template <typename T>
struct Tap4 {
  int off[4];
  T w[4];
};

template <typename T>
PSC_HD Tap4<T> resize_taps(int s, int oh, int ow, int H, int W) {
  const Lerp<T> ly = resize_index_half_pixel<T>(s / ow, H, oh);
  const Lerp<T> lx = resize_index_half_pixel<T>(s % ow, W, ow);
  Tap4<T> t;
  t.off[0] = ly.i0 * W + lx.i0;
  t.off[1] = ly.i0 * W + lx.i1;
  t.off[2] = ly.i1 * W + lx.i0;
  t.off[3] = ly.i1 * W + lx.i1;
  t.w[0] = ly.l0 * lx.l0;
  t.w[1] = ly.l0 * lx.l1;
  t.w[2] = ly.l1 * lx.l0;
  t.w[3] = ly.l1 * lx.l1;
  return t;
}

// Bilinear taps of grid point (gx, gy) (zeros padding, align_corners=True) and d(pixel)/d(grid) per axis.
template <typename T>
PSC_HD Taps<T> grid_taps(T gx, T gy, int H, int W, T* dpx, T* dpy) {
  const T px = grid_to_pixel(gx, W, true, Padding::kZeros, dpx);
  const T py = grid_to_pixel(gy, H, true, Padding::kZeros, dpy);
  return bilinear_taps(px, py, H, W);
}

template <typename T>
PSC_HD Tap4<T> to_tap4(const Taps<T>& b, int W) {
  Tap4<T> t;
  for (int k = 0; k < 4; ++k) {
    const bool in = b.in[k];
    t.off[k] = in ? (b.y0 + (k >> 1)) * W + b.x0 + (k & 1) : 0;
    t.w[k] = in ? b.w[k] : T(0);
  }
  return t;
}

// The source grid (hs x ws: the output's spatial size, where src is resized or sampled) and the target grid
// (ht x wt: tgt resized, the output's channels per layer).
struct CorrelationGrids {
  int hs, ws, ht, wt;
  int64_t Ss() const { return static_cast<int64_t>(hs) * ws; }
  int64_t St() const { return static_cast<int64_t>(ht) * wt; }
};

// A side of a layer is direct when its map is already at its grid's size (src: and is not sampled at a grid):
// the resize is the identity there (the reference skips interpolate), so the kernels multiply the map as
// it lies, with the BLAS, and its gradient is the product itself.
inline bool direct_tgt(const at::Tensor& tgt, const CorrelationGrids& g) {
  return tgt.size(2) == g.ht && tgt.size(3) == g.wt;
}

inline bool direct_src(const at::Tensor& src, const CorrelationGrids& g, bool has_grid) {
  return !has_grid && src.size(2) == g.hs && src.size(3) == g.ws;
}

// Argument checks for direct torch.ops.pscfast calls (pscfast.ops.correlation checks first, in words).
inline CorrelationGrids check_correlation_inputs(at::TensorList src, at::TensorList tgt,
                                                 const c10::optional<at::Tensor>& grid, c10::IntArrayRef size,
                                                 c10::IntArrayRef target_size) {
  TORCH_CHECK(!src.empty(), "pscfast::correlation: src and tgt must hold at least one layer");
  TORCH_CHECK(src.size() == tgt.size(), "pscfast::correlation: src has ", src.size(), " layers, tgt ", tgt.size());
  TORCH_CHECK(size.size() == 2 && target_size.size() == 2,
              "pscfast::correlation: size and target_size must be (height, width)");
  for (const auto& g : {size, target_size})
    TORCH_CHECK(g[0] > 0 && g[1] > 0 && g[0] < (int64_t(1) << 31) && g[1] < (int64_t(1) << 31) &&
                    g[0] * g[1] < (int64_t(1) << 31),
                "pscfast::correlation: bad grid size ", g);
  const CorrelationGrids grids{static_cast<int>(size[0]), static_cast<int>(size[1]), static_cast<int>(target_size[0]),
                               static_cast<int>(target_size[1])};
  const auto& ref = src[0];
  for (size_t l = 0; l < src.size(); ++l) {
    for (const auto* t : {&src[l], &tgt[l]}) {
      TORCH_CHECK(t->dim() == 4, "pscfast::correlation: layer ", l, " must be (N, C, H, W), got ", t->sizes());
      TORCH_CHECK(t->size(0) == ref.size(0), "pscfast::correlation: layer ", l, " has batch ", t->size(0),
                  ", layer 0 has ", ref.size(0));
      TORCH_CHECK(t->scalar_type() == ref.scalar_type() && t->device() == ref.device(),
                  "pscfast::correlation: every map must share one dtype and device");
      TORCH_CHECK(t->size(2) > 0 && t->size(3) > 0 && t->size(2) * t->size(3) < (int64_t(1) << 31),
                  "pscfast::correlation: layer ", l, " has a bad spatial size ", t->sizes());
    }
    TORCH_CHECK(src[l].size(1) == tgt[l].size(1) && src[l].size(1) > 0, "pscfast::correlation: layer ", l, ": src has ",
                src[l].size(1), " channels, tgt ", tgt[l].size(1), " (at least one)");
  }
  if (grid.has_value()) {
    const auto& g = *grid;
    TORCH_CHECK(
        g.dim() == 4 && g.size(0) == ref.size(0) && g.size(1) == grids.hs && g.size(2) == grids.ws && g.size(3) == 2,
        "pscfast::correlation: grid must be (N, hs, ws, 2) = (", ref.size(0), ", ", grids.hs, ", ", grids.ws,
        ", 2), got ", g.sizes());
    TORCH_CHECK(g.scalar_type() == ref.scalar_type() && g.device() == ref.device(),
                "pscfast::correlation: grid must share the maps' dtype and device");
  }
  return grids;
}

}  // namespace pscfast

// The per-pixel part of the warp op, shared by the CPU and CUDA kernels.
//
// Output pixel (oy, ox) of sample n reads the grid point g = grid[n](oy, ox) (resized on the fly, see
// sampling.h), converts it to a pixel position (px, py) of the H x W image and samples every channel there.
// Backward:
//   d out / d px = sum over taps of v_tap * d w_tap / d px           (bilinear; 0 for nearest)
//   d L / d g_x  = sum_c gout_c * (d out_c / d px) * dpx/dg_x        (dpx/dg_x = 0 where border clips)
//   d L / d x[q] = sum over (pixel, tap) reading q of gout * w_tap   (taps outside the image read nothing)
#pragma once

#include "ops/common/sampling.h"

namespace pscfast {

template <typename T>
struct WarpPixel {
  Taps<T> taps;  // bilinear taps (weights of outside taps kept for the coordinate gradient)
  int nearest;   // nearest mode: flat index of the pixel read, -1 when outside
  T dpx, dpy;    // d(pixel coordinate)/d(grid coordinate)
};

template <typename T, typename S>
PSC_HD WarpPixel<T> warp_pixel(const S* grid_n, int w, bool direct, int oy, int ox, const Lerp<T>& ly,
                               const Lerp<T>& lx, int H, int W, SampleMode mode, Padding pad, bool align) {
  T gx, gy;
  grid_point(grid_n, w, direct, oy, ox, ly, lx, &gx, &gy);
  WarpPixel<T> p;
  const T px = grid_to_pixel(gx, W, align, pad, &p.dpx);
  const T py = grid_to_pixel(gy, H, align, pad, &p.dpy);
  if (mode == SampleMode::kNearest) {
    const int ix = round_half_even(px), iy = round_half_even(py);
    p.nearest = (ix >= 0 && ix < W && iy >= 0 && iy < H) ? iy * W + ix : -1;
  } else {
    p.taps = bilinear_taps(px, py, H, W);
  }
  return p;
}

// Flat index of tap k in the plane, or -1 when the tap lies outside.
template <typename T>
PSC_HD int tap_index(const Taps<T>& t, int k, int W) {
  return t.in[k] ? (t.y0 + (k >> 1)) * W + t.x0 + (k & 1) : -1;
}

template <typename T, typename S>
PSC_HD T warp_sample(const WarpPixel<T>& p, const S* plane, int W, SampleMode mode) {
  if (mode == SampleMode::kNearest) return p.nearest >= 0 ? static_cast<T>(plane[p.nearest]) : T(0);
  T acc = T(0);
  for (int k = 0; k < 4; ++k) {
    const int q = tap_index(p.taps, k, W);
    if (q >= 0) acc += p.taps.w[k] * static_cast<T>(plane[q]);
  }
  return acc;
}

// Adds gout * d(sample)/d(px, py) of one channel to (*ax, *ay); bilinear mode only.
template <typename T, typename S>
PSC_HD void warp_accumulate_coord_grad(const WarpPixel<T>& p, const S* plane, int W, T gout, T* ax, T* ay) {
  T v[4];
  for (int k = 0; k < 4; ++k) {
    const int q = tap_index(p.taps, k, W);
    v[k] = q >= 0 ? static_cast<T>(plane[q]) : T(0);
  }
  T dx, dy;
  bilinear_coord_grad(p.taps, v, &dx, &dy);
  *ax += gout * dx;
  *ay += gout * dy;
}

// Where one cell of the low-resolution grid sends a pixel's grid gradient: the four corners of the cell
// (a, b) = (ly.i0, lx.i0) with bilinear weights. When the cell is the last row (column), i1 == i0 and the
// weight of the second corner is folded into the first, so corner (1, .) always means node (a + 1, .).
template <typename T>
PSC_HD void cell_corner_weights(const Lerp<T>& ly, const Lerp<T>& lx, T wc[4]) {
  const T y0 = ly.i1 == ly.i0 ? T(1) : ly.l0, y1 = ly.i1 == ly.i0 ? T(0) : ly.l1;
  const T x0 = lx.i1 == lx.i0 ? T(1) : lx.l0, x1 = lx.i1 == lx.i0 ? T(0) : lx.l1;
  wc[0] = y0 * x0;
  wc[1] = y0 * x1;
  wc[2] = y1 * x0;
  wc[3] = y1 * x1;
}

}  // namespace pscfast

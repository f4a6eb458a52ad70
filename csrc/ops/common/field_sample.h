// Sampling a small multi-channel field (a flow, a matchability map) at pixel positions, shared by the CPU
// and CUDA kernels of the compose / consistency_loss and compose_displacement ops.
//
// A position (px, py) in pixels of an H x W plane (zeros outside) reads up to four taps; FieldTaps keeps
// their flat indices (-1 outside) and weights, and the distances that give the coordinate gradient:
//   bilinear: value = sum_k w_k v_k, d value/d px = (v1 - v0) s + (v3 - v2) d,
//             d value/d py = (v2 - v0) e + (v3 - v1) r        (v_k = 0 for taps outside)
//   nearest:  tap 0 = round half to even (grid_sample), weight 1; the coordinate gradient is 0.
// Tap order as sampling.h: 0 = (y0, x0), 1 = (y0, x0 + 1), 2 = (y0 + 1, x0), 3 = (y0 + 1, x0 + 1).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/common/sampling.h"

namespace pscfast {

template <typename T>
struct FieldTaps {
  int idx[4];
  T w[4];
  T e, r, s, d;  // distances to the right / left tap columns and to the lower / upper tap rows
};

// (px, py) must lie within a few pixels of the plane (callers clamp to [-2, size + 1]).
template <typename T>
PSC_HD FieldTaps<T> field_taps(T px, T py, int H, int W, bool nearest) {
  FieldTaps<T> t;
  if (nearest) {
    const int ix = round_half_even(px), iy = round_half_even(py);
    t.idx[0] = (ix >= 0 && ix < W && iy >= 0 && iy < H) ? iy * W + ix : -1;
    t.w[0] = T(1);
    for (int k = 1; k < 4; ++k) {
      t.idx[k] = -1;
      t.w[k] = T(0);
    }
    t.e = t.r = t.s = t.d = T(0);
    return t;
  }
  const Taps<T> b = bilinear_taps(px, py, H, W);
  const int q = b.y0 * W + b.x0;
  const int off[4] = {q, q + 1, q + W, q + W + 1};
  for (int k = 0; k < 4; ++k) {
    t.idx[k] = b.in[k] ? off[k] : -1;
    t.w[k] = b.w[k];
  }
  const T fx = static_cast<T>(b.x0), fy = static_cast<T>(b.y0);
  t.e = fx + T(1) - px;
  t.r = px - fx;
  t.s = fy + T(1) - py;
  t.d = py - fy;
  return t;
}

// Clamp of a pixel coordinate to [-2, size + 1]: outside that every tap is outside and the value and the
// coordinate gradient are 0 either way; the clamp keeps the integer conversion defined.
template <typename T>
PSC_HD T clamp_pixel(T p, int size) {
  if (p < T(-2)) return T(-2);
  if (p > static_cast<T>(size + 1)) return static_cast<T>(size + 1);
  return p;
}

// Channel value of the field at the taps: v(q) = field[q * pstride + coff].
template <typename T, typename S>
PSC_HD T field_value(const FieldTaps<T>& t, const S* field, int64_t pstride, int64_t coff) {
  T v = T(0);
  for (int k = 0; k < 4; ++k)
    if (t.idx[k] >= 0) v += t.w[k] * static_cast<T>(field[t.idx[k] * pstride + coff]);
  return v;
}

// Adds g * d(value)/d(px, py) of one channel to *ax, *ay (bilinear only).
template <typename T, typename S>
PSC_HD void field_coord_grad(const FieldTaps<T>& t, const S* field, int64_t pstride, int64_t coff, T g, T* ax, T* ay) {
  T v[4];
  for (int k = 0; k < 4; ++k) v[k] = t.idx[k] >= 0 ? static_cast<T>(field[t.idx[k] * pstride + coff]) : T(0);
  *ax += g * ((v[1] - v[0]) * t.s + (v[3] - v[2]) * t.d);
  *ay += g * ((v[2] - v[0]) * t.e + (v[3] - v[1]) * t.r);
}

// The taps of output pixel `pix` of compose: f_ab (h x w, 2 channels) sampled at the absolute grid point
// f_bc[pix] (align_corners=True, zeros outside); dpx/dpy = d(pixel)/d(grid) = (size - 1) / 2.
template <typename T, typename S>
PSC_HD FieldTaps<T> compose_taps(const S* f_bc_n, int64_t pix, int h, int w, bool nearest, T* dpx, T* dpy) {
  const T gx = static_cast<T>(f_bc_n[2 * pix]), gy = static_cast<T>(f_bc_n[2 * pix + 1]);
  const T px = grid_to_pixel(gx, w, true, Padding::kZeros, dpx);
  const T py = grid_to_pixel(gy, h, true, Padding::kZeros, dpy);
  return field_taps(px, py, h, w, nearest);
}

// 0 < |v| <= 1 (false for NaN), read from the bits: compilers vectorise the integer compares where float ones,
// which may trap, keep a branch in a CPU loop (on random flows a coin toss).
template <typename T>
PSC_HD bool unit_nonzero(T v) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U bits;
  memcpy(&bits, &v, sizeof bits);
  const U magnitude = bits & (~U(0) >> 1), one = sizeof(T) == 4 ? U(0x3f800000u) : U(0x3ff0000000000000ull);
  return magnitude - 1 < one;  // magnitude 0 wraps around
}

// The masked squared error of one cycle coordinate c against the identity coordinate i, as the release:
// counted where c != 0, i != 0, |c| <= 1 and |i| <= 1. Returns whether it counts.
template <typename T>
PSC_HD bool consistency_term(T c, T i) {
  return unit_nonzero(c) & unit_nonzero(i);
}

}  // namespace pscfast

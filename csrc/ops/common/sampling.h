// Coordinate conventions shared by the CPU and CUDA kernels (compiled by both g++ and nvcc).
//
// They reproduce torch.nn.functional.grid_sample and F.interpolate(mode="bilinear") bit for bit in
// their order of operations, so that every backend agrees with the PyTorch reference:
//   grid coordinate g in [-1, 1] (x, y) -> pixel coordinate
//     align_corners=True:  p = (g + 1) / 2 * (size - 1)      (-1 and 1 are the centres of the end pixels)
//     align_corners=False: p = ((g + 1) * size - 1) / 2      (-1 and 1 are the outer edges of the end pixels)
//   padding "border" clips p to [0, size - 1] first; the clipped coordinate has gradient 0 (as grid_sample,
//   which treats the border itself as out of bounds for the gradient);
//   padding "zeros" lets taps outside the image contribute 0;
//   "nearest" rounds half to even (std::nearbyint, as grid_sample).
// A low-resolution grid (h, w) is resized to the output size (Ho, Wo) bilinearly with align_corners=True
// on the fly: src = dst * (in - 1) / (out - 1), i0 = floor(src), i1 = min(i0 + 1, in - 1); feature maps
// are resized with align_corners=False (resize_index_half_pixel).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define PSC_HD __host__ __device__ __forceinline__
#else
#define PSC_HD inline
#endif

namespace pscfast {

enum class SampleMode : int { kBilinear = 0, kNearest = 1 };
enum class Padding : int { kZeros = 0, kBorder = 1 };

// String arguments of the schemas; the Python layer validates them first, these checks guard direct
// torch.ops calls.
inline SampleMode parse_mode(const std::string& s) {
  if (s == "bilinear") return SampleMode::kBilinear;
  if (s == "nearest") return SampleMode::kNearest;
  throw std::invalid_argument("pscfast: mode must be 'bilinear' or 'nearest', got '" + s + "'");
}

inline Padding parse_padding(const std::string& s) {
  if (s == "zeros") return Padding::kZeros;
  if (s == "border") return Padding::kBorder;
  throw std::invalid_argument("pscfast: padding_mode must be 'zeros' or 'border', got '" + s + "'");
}

// One axis of a bilinear resize: output index -> two source indices and their weights.
template <typename T>
struct Lerp {
  int i0, i1;
  T l0, l1;
};

// The two taps of source position src (>= 0) on an axis of `in` pixels, clamped at the last one.
template <typename T>
PSC_HD Lerp<T> lerp_at(T src, int in) {
  int i0 = static_cast<int>(src);
  if (i0 > in - 1) i0 = in - 1;
  T l1 = src - static_cast<T>(i0);
  l1 = l1 < T(0) ? T(0) : (l1 > T(1) ? T(1) : l1);
  Lerp<T> r;
  r.i0 = i0;
  r.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  r.l1 = l1;
  r.l0 = T(1) - l1;
  return r;
}

// Source position of output index dst when resizing in -> out with align_corners=True.
template <typename T>
PSC_HD Lerp<T> resize_index(int dst, int in, int out) {
  const T scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  return lerp_at<T>(scale * static_cast<T>(dst), in);
}

// Source position of output index dst when resizing in -> out with align_corners=False (F.interpolate's
// bilinear, no antialias): src = max((dst + 0.5) * in / out - 0.5, 0).
template <typename T>
PSC_HD Lerp<T> resize_index_half_pixel(int dst, int in, int out) {
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  const T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  return lerp_at<T>(src < T(0) ? T(0) : src, in);
}

// Grid coordinate -> pixel coordinate along one axis, with the derivative dp/dg (0 where clipped).
template <typename T>
PSC_HD T grid_to_pixel(T g, int size, bool align_corners, Padding padding, T* dp_dg) {
  T p, d;
  if (align_corners) {
    p = ((g + T(1)) / T(2)) * static_cast<T>(size - 1);
    d = static_cast<T>(size - 1) / T(2);
  } else {
    p = ((g + T(1)) * static_cast<T>(size) - T(1)) / T(2);
    d = static_cast<T>(size) / T(2);
  }
  if (padding == Padding::kBorder) {
    const T hi = static_cast<T>(size - 1);
    if (p <= T(0)) {
      p = T(0);
      d = T(0);
    } else if (p >= hi) {
      p = hi;
      d = T(0);
    }
  } else {
    // Far outside the image every tap is out of bounds and the gradient is 0; clamping keeps the
    // integer conversion below defined for any finite coordinate without changing either.
    if (p < T(-2)) p = T(-2);
    if (p > static_cast<T>(size + 1)) p = static_cast<T>(size + 1);
  }
  *dp_dg = d;
  return p;
}

// The grid point of output pixel (oy, ox) from a (h, w, 2) grid, resized on the fly when the output is
// larger (ly, lx from resize_index); `direct` when the grid already has the output's size.
template <typename T, typename S>
PSC_HD void grid_point(const S* g, int w, bool direct, int oy, int ox, const Lerp<T>& ly, const Lerp<T>& lx, T* gx,
                       T* gy) {
  if (direct) {
    const S* p = g + (static_cast<int64_t>(oy) * w + ox) * 2;
    *gx = static_cast<T>(p[0]);
    *gy = static_cast<T>(p[1]);
    return;
  }
  const S* r0 = g + static_cast<int64_t>(ly.i0) * w * 2;
  const S* r1 = g + static_cast<int64_t>(ly.i1) * w * 2;
  T v[2];
  for (int c = 0; c < 2; ++c) {
    const T a = lx.l0 * static_cast<T>(r0[lx.i0 * 2 + c]) + lx.l1 * static_cast<T>(r0[lx.i1 * 2 + c]);
    const T b = lx.l0 * static_cast<T>(r1[lx.i0 * 2 + c]) + lx.l1 * static_cast<T>(r1[lx.i1 * 2 + c]);
    v[c] = ly.l0 * a + ly.l1 * b;
  }
  *gx = v[0];
  *gy = v[1];
}

// floor() as an int, without a libm call (coordinates are clamped to a few pixels around the image, so
// they always fit).
template <typename T>
PSC_HD int floor_int(T v) {
  const int i = static_cast<int>(v);
  return i - (static_cast<T>(i) > v ? 1 : 0);
}

// Round half to even, as std::nearbyint in the default rounding mode (and grid_sample's nearest mode).
template <typename T>
PSC_HD int round_half_even(T v) {
  int r = floor_int(v + T(0.5));
  if (static_cast<T>(r) - v == T(0.5) && (r & 1)) r -= 1;
  return r;
}

// The four bilinear taps of pixel coordinate (px, py) in an H x W plane. Weights of taps outside the
// plane are kept (the gradient formula needs them); `in[k]` says whether tap k may be read.
// Tap order: 0 = (y0, x0), 1 = (y0, x0 + 1), 2 = (y0 + 1, x0), 3 = (y0 + 1, x0 + 1).
template <typename T>
struct Taps {
  int x0, y0;
  T px, py;
  T w[4];
  bool in[4];
};

template <typename T>
PSC_HD Taps<T> bilinear_taps(T px, T py, int H, int W) {
  Taps<T> t;
  t.x0 = floor_int(px);
  t.y0 = floor_int(py);
  const T fx = static_cast<T>(t.x0), fy = static_cast<T>(t.y0);
  t.px = px;
  t.py = py;
  const T e = fx + T(1) - px, wgt = px - fx;  // distances to the right and left taps
  const T s = fy + T(1) - py, n = py - fy;
  t.w[0] = e * s;
  t.w[1] = wgt * s;
  t.w[2] = e * n;
  t.w[3] = wgt * n;
  const bool x0in = t.x0 >= 0 && t.x0 < W, x1in = t.x0 + 1 >= 0 && t.x0 + 1 < W;
  const bool y0in = t.y0 >= 0 && t.y0 < H, y1in = t.y0 + 1 >= 0 && t.y0 + 1 < H;
  t.in[0] = y0in && x0in;
  t.in[1] = y0in && x1in;
  t.in[2] = y1in && x0in;
  t.in[3] = y1in && x1in;
  return t;
}

// d(output)/d(px, py) given the four tap values v (0 for taps outside), as grid_sample's backward.
template <typename T>
PSC_HD void bilinear_coord_grad(const Taps<T>& t, const T v[4], T* dpx, T* dpy) {
  const T fx = static_cast<T>(t.x0), fy = static_cast<T>(t.y0);
  const T e = fx + T(1) - t.px, wgt = t.px - fx;
  const T s = fy + T(1) - t.py, n = t.py - fy;
  *dpx = -v[0] * s + v[1] * s - v[2] * n + v[3] * n;
  *dpy = -v[0] * e - v[1] * wgt + v[2] * e + v[3] * wgt;
}

}  // namespace pscfast

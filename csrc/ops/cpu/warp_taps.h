// The CPU warp's tap machinery: the plan of a call (sizes, modes, the grid's resize tables, how the output points
// split into blocks) and BlockTaps, which turns a block of output points into arrays of tap offsets and
// coefficients that the kernels in warp_kernel.cpp loop over, channel by channel. Free functions over
// __restrict pointers with integer masks and no branches, so that their loops vectorise (PSC_MULTIVERSION adds
// an AVX2 + FMA build).
//
// A block is up to kBlock consecutive output points of one sample, or, for a one-channel image (RAFT's lookups,
// SFNet's masks: many samples of a few dozen points each), of consecutive samples: the per-call and per-block
// work (coordinates, taps, loop set-up) then spreads over hundreds of points instead of one row.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cpu/vectorize.h"
#include "ops/cpu/warp_avx2.h"

namespace pscfast {
namespace cpu_warp {

constexpr int kBlock = 256;  // output points per block: the taps of a block stay in L1

template <typename T>
struct Plan {
  int64_t N, C;
  int H, W, h, w, Ho, Wo;
  bool direct;  // the grid already has the output size
  SampleMode mode;
  Padding pad;
  bool align;
  // Blocks may span samples: one channel, the grid read directly, and offsets from the first sample of a block
  // within int32.
  bool across;
  std::vector<Lerp<T>> ly;        // resize of the grid along rows
  std::vector<int32_t> xi0, xi1;  // ... and along columns, as arrays
  std::vector<T> xl0, xl1;
  std::vector<Lerp<T>> lx;

  Plan(c10::IntArrayRef x_size, const at::Tensor& grid, int64_t Ho_, int64_t Wo_, c10::string_view mode_,
       c10::string_view pad_, bool align_)
      : N(x_size[0]),
        C(x_size[1]),
        H(static_cast<int>(x_size[2])),
        W(static_cast<int>(x_size[3])),
        h(static_cast<int>(grid.size(1))),
        w(static_cast<int>(grid.size(2))),
        Ho(static_cast<int>(Ho_)),
        Wo(static_cast<int>(Wo_)),
        direct(h == Ho && w == Wo),
        mode(parse_mode(std::string(mode_))),
        pad(parse_padding(std::string(pad_))),
        align(align_) {
    // a block spans at most kBlock points, so at most kBlock + 1 samples: its offsets stay below that many planes
    across = direct && C == 1 && (static_cast<int64_t>(kBlock) + 1) * plane() < (int64_t(1) << 31);
    if (direct) return;
    for (int i = 0; i < Ho; ++i) ly.push_back(resize_index<T>(i, h, Ho));
    for (int i = 0; i < Wo; ++i) {
      lx.push_back(resize_index<T>(i, w, Wo));
      xi0.push_back(lx.back().i0);
      xi1.push_back(lx.back().i1);
      xl0.push_back(lx.back().l0);
      xl1.push_back(lx.back().l1);
    }
  }

  int64_t plane() const { return static_cast<int64_t>(H) * W; }
  int64_t oplane() const { return static_cast<int64_t>(Ho) * Wo; }
  int64_t points() const { return N * oplane(); }

  // Blocks of the direct path, numbered 0 .. blocks() - 1 (see block()).
  int64_t blocks_per_sample() const { return (oplane() + kBlock - 1) / kBlock; }
  int64_t blocks() const { return across ? (points() + kBlock - 1) / kBlock : N * blocks_per_sample(); }
};

// A run of consecutive output points (flattened over samples and pixels): `first` and `count`, and n0, the
// sample of the first (later points of a run that spans samples lie in later ones).
struct Run {
  int64_t first, n0;
  int count;
};

// Block b of the direct path (Plan::blocks()).
template <typename T>
Run block(const Plan<T>& P, int64_t b) {
  const int64_t S = P.oplane();
  if (P.across) {
    const int64_t first = b * kBlock;
    return {first, first / S, static_cast<int>(std::min<int64_t>(kBlock, P.points() - first))};
  }
  const int64_t n = b / P.blocks_per_sample(), j = (b % P.blocks_per_sample()) * kBlock;
  return {n * S + j, n, static_cast<int>(std::min<int64_t>(kBlock, S - j))};
}

// The offset of each point's image plane from that of the run's first sample, for a run that spans samples
// (Plan::across).
template <typename T>
void sample_offsets(const Plan<T>& P, const Run& run, int32_t* base) {
  const int64_t S = P.oplane();
  for (int i = 0; i < run.count;) {
    const int64_t sample = (run.first + i) / S;
    const int end = static_cast<int>(std::min<int64_t>(run.count, (sample + 1) * S - run.first));
    std::fill(base + i, base + end, static_cast<int32_t>((sample - run.n0) * P.plane()));
    i = end;
  }
}

// Grid coordinate -> pixel coordinate for n grid values (g[kStride * i], so that x and y are read straight from
// an (x, y)-interleaved grid), written without branches so that it vectorises; the arithmetic of grid_to_pixel
// in sampling.h. Returns 1 when a value is NaN or infinite (the forward then refuses the grid). A NaN samples
// as a point far outside (zeros padding; the first pixel with border padding), so that no index is formed
// from it.
template <int kStride, typename T>
PSC_MULTIVERSION int row_to_pixel(const T* __restrict g, int n, int size, bool align, Padding pad, T* __restrict p,
                                  T* __restrict dp) {
  const T scale = align ? static_cast<T>(size - 1) : static_cast<T>(size);
  const T d0 = scale / T(2), hi = static_cast<T>(size - 1), far = static_cast<T>(size + 1);
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const T gi = g[kStride * i];
    bad |= !(gi - gi == T(0));  // false for NaN and +-inf
    T v = align ? ((gi + T(1)) / T(2)) * scale : ((gi + T(1)) * scale - T(1)) / T(2);
    v = v == v ? v : T(-2);
    if (pad == Padding::kBorder) {
      dp[i] = (v > T(0) && v < hi) ? d0 : T(0);
      v = v < T(0) ? T(0) : (v > hi ? hi : v);
    } else {
      dp[i] = d0;
      v = v < T(-2) ? T(-2) : (v > far ? far : v);
    }
    p[i] = v;
  }
  return bad;
}

// Whether any of n values is NaN or infinite (the resized grid: a node between output points is read by none).
template <typename T>
PSC_MULTIVERSION int any_nonfinite(const T* __restrict g, int64_t n) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(g[i] - g[i] == T(0));
  return bad;
}

// One pixel's bilinear taps, k = 0..3 for upper-left, upper-right, lower-left, lower-right: the offset q of
// tap 0, masks mk (1 when tap k is inside the image) and the distances e, r to the right and left tap columns
// and s, d to the lower and upper tap rows. Tap k has weight (e or r) * (s or d); with v_k = mk x[offset k],
// d(sample)/d(px) = (v1 - v0) s + (v3 - v2) d and d(sample)/d(py) = (v2 - v0) e + (v3 - v1) r.
// Integer masks and no branches, so that the loops below vectorise.
template <typename T>
struct Bilinear {
  T e, r, s, d;
  int m0, m1, m2, m3, q;

  Bilinear(T px, T py, int W, int H) {
    const int x0 = floor_int(px), y0 = floor_int(py);
    const T fx = static_cast<T>(x0), fy = static_cast<T>(y0);
    e = fx + T(1) - px, r = px - fx, s = fy + T(1) - py, d = py - fy;
    const int mx0 = (x0 >= 0) & (x0 < W), mx1 = (x0 >= -1) & (x0 + 1 < W);
    const int my0 = (y0 >= 0) & (y0 < H), my1 = (y0 >= -1) & (y0 + 1 < H);
    m0 = my0 & mx0, m1 = my0 & mx1, m2 = my1 & mx0, m3 = my1 & mx1;
    q = y0 * W + x0;
  }
  // Element offsets of the taps from `base`; a tap outside reads element `base` (and its mask is 0).
  void offsets(int W, int base, int32_t& o0, int32_t& o1, int32_t& o2, int32_t& o3) const {
    o0 = base + q * m0, o1 = base + (q + 1) * m1, o2 = base + (q + W) * m2, o3 = base + (q + W + 1) * m3;
  }
};

// Offsets, weights and masks of n pixel positions (the image backward).
template <typename T>
PSC_MULTIVERSION void bilinear_taps_masked(int n, int W, int H, const T* __restrict px, const T* __restrict py,
                                           const int32_t* __restrict base, T* __restrict w0, T* __restrict w1,
                                           T* __restrict w2, T* __restrict w3, T* __restrict m0, T* __restrict m1,
                                           T* __restrict m2, T* __restrict m3, int32_t* __restrict o0,
                                           int32_t* __restrict o1, int32_t* __restrict o2, int32_t* __restrict o3) {
  for (int i = 0; i < n; ++i) {
    const Bilinear<T> b(px[i], py[i], W, H);
    b.offsets(W, base[i], o0[i], o1[i], o2[i], o3[i]);
    m0[i] = static_cast<T>(b.m0), m1[i] = static_cast<T>(b.m1), m2[i] = static_cast<T>(b.m2);
    m3[i] = static_cast<T>(b.m3);
    w0[i] = b.e * b.s, w1[i] = b.r * b.s, w2[i] = b.e * b.d, w3[i] = b.r * b.d;
  }
}

// Offsets and masked weights c_k = mk wk of n pixel positions (the forward).
template <typename T>
PSC_MULTIVERSION void bilinear_taps(int n, int W, int H, const T* __restrict px, const T* __restrict py,
                                    const int32_t* __restrict base, T* __restrict c0, T* __restrict c1,
                                    T* __restrict c2, T* __restrict c3, int32_t* __restrict o0, int32_t* __restrict o1,
                                    int32_t* __restrict o2, int32_t* __restrict o3) {
  for (int i = 0; i < n; ++i) {
    const Bilinear<T> b(px[i], py[i], W, H);
    b.offsets(W, base[i], o0[i], o1[i], o2[i], o3[i]);
    c0[i] = static_cast<T>(b.m0) * b.e * b.s, c1[i] = static_cast<T>(b.m1) * b.r * b.s;
    c2[i] = static_cast<T>(b.m2) * b.e * b.d, c3[i] = static_cast<T>(b.m3) * b.r * b.d;
  }
}

// Offsets and the coefficients of d(sample)/d(grid) = (sum_k ax_k x[o_k], sum_k ay_k x[o_k]) of n pixel positions
// (the grid backward): the masks, the distances and d(pixel)/d(grid) (dpx, dpy) folded into one number per tap.
template <typename T>
PSC_MULTIVERSION void bilinear_taps_grad(int n, int W, int H, const T* __restrict px, const T* __restrict py,
                                         const T* __restrict dpx, const T* __restrict dpy,
                                         const int32_t* __restrict base, T* __restrict ax0, T* __restrict ax1,
                                         T* __restrict ax2, T* __restrict ax3, T* __restrict ay0, T* __restrict ay1,
                                         T* __restrict ay2, T* __restrict ay3, int32_t* __restrict o0,
                                         int32_t* __restrict o1, int32_t* __restrict o2, int32_t* __restrict o3) {
  for (int i = 0; i < n; ++i) {
    const Bilinear<T> b(px[i], py[i], W, H);
    b.offsets(W, base[i], o0[i], o1[i], o2[i], o3[i]);
    const T n0 = static_cast<T>(b.m0), n1 = static_cast<T>(b.m1), n2 = static_cast<T>(b.m2), n3 = static_cast<T>(b.m3);
    const T sx = b.s * dpx[i], dx = b.d * dpx[i], ey = b.e * dpy[i], ry = b.r * dpy[i];
    ax0[i] = -n0 * sx, ax1[i] = n1 * sx, ax2[i] = -n2 * dx, ax3[i] = n3 * dx;
    ay0[i] = -n0 * ey, ay1[i] = -n1 * ry, ay2[i] = n2 * ey, ay3[i] = n3 * ry;
  }
}

// A view of n elements of a BlockTaps buffer, indexed and iterated like the vector it replaces.
template <typename E>
struct Slice {
  E* p = nullptr;
  E* data() const { return p; }
  E* begin() const { return p; }
  E& operator[](int64_t i) const { return p[i]; }
};

// The taps of a run of output points, as arrays (offsets off; then, depending on the pass, weights w and masks m,
// or the grid-gradient coefficients ax, ay), from the pixel coordinates px, py and d(pixel)/d(grid) dpx, dpy.
// Offsets count from the image plane of the run's first sample (base: the planes of later samples).
// Sized for a block, or for a row when the grid is resized (one run per output row).
template <typename T>
struct BlockTaps {
  int size;
  Slice<T> gx, gy, px, py, dpx, dpy, rowx, rowy;
  Slice<T> w[4], m[4], ax[4], ay[4];
  Slice<int32_t> off[4], base;

  // One uninitialised allocation for every array (a task of a small call pays one malloc, not thirty, and no
  // clearing); only base, which the direct path within one sample reads as 0, is zeroed.
  explicit BlockTaps(const Plan<T>& P) : size(P.direct ? kBlock : P.Wo) {
    const size_t n = static_cast<size_t>(size), row = static_cast<size_t>(P.w);
    static_assert(sizeof(T) >= sizeof(int32_t) && sizeof(T) % sizeof(int32_t) == 0);
    const size_t ints = (5 * n * sizeof(int32_t) + sizeof(T) - 1) / sizeof(T);
    storage_.reset(new T[22 * n + 2 * row + ints]);
    T* next = storage_.get();
    const auto take = [&](Slice<T>& s, size_t count) {
      s.p = next;
      next += count;
    };
    for (auto* s : {&gx, &gy, &px, &py, &dpx, &dpy}) take(*s, n);
    take(rowx, row);
    take(rowy, row);
    for (int k = 0; k < 4; ++k)
      for (auto* s : {&w[k], &m[k], &ax[k], &ay[k]}) take(*s, n);
    auto* ints_at = reinterpret_cast<int32_t*>(next);
    for (int k = 0; k < 4; ++k) off[k].p = ints_at + k * n;
    base.p = ints_at + 4 * n;
    std::fill(base.p, base.p + n, 0);
  }

  // Pixel coordinates px, py of the run and d(pixel)/d(grid) dpx, dpy; with the grid resized the run is the
  // output row run.first / Wo. Returns 1 when a grid value it read is NaN or infinite.
  int coords(const Plan<T>& P, const T* grid, const Run& run) {
    const int n = run.count;
    if (P.direct) {
      const T* g = grid + run.first * 2;
      if (P.across) sample_offsets(P, run, base.data());
      int bad = 0, done = 0;
      if constexpr (std::is_same_v<T, float>)
        done = pixel_coords_avx2(g, n, P.W, P.H, P.align, P.pad == Padding::kBorder, px.data(), dpx.data(), py.data(),
                                 dpy.data(), bad);
      return bad | row_to_pixel<2>(g + 2 * done, n - done, P.W, P.align, P.pad, px.data() + done, dpx.data() + done) |
             row_to_pixel<2>(g + 2 * done + 1, n - done, P.H, P.align, P.pad, py.data() + done, dpy.data() + done);
    }
    const int oy = static_cast<int>((run.first / P.Wo) % P.Ho);
    const T* gn = grid + run.n0 * P.h * P.w * 2;
    const Lerp<T>& ly = P.ly[oy];
    const T* r0 = gn + static_cast<int64_t>(ly.i0) * P.w * 2;
    const T* r1 = gn + static_cast<int64_t>(ly.i1) * P.w * 2;
    for (int j = 0; j < P.w; ++j) {
      rowx[j] = ly.l0 * r0[2 * j] + ly.l1 * r1[2 * j];
      rowy[j] = ly.l0 * r0[2 * j + 1] + ly.l1 * r1[2 * j + 1];
    }
    for (int i = 0; i < n; ++i) {
      gx[i] = P.xl0[i] * rowx[P.xi0[i]] + P.xl1[i] * rowx[P.xi1[i]];
      gy[i] = P.xl0[i] * rowy[P.xi0[i]] + P.xl1[i] * rowy[P.xi1[i]];
    }
    return row_to_pixel<1>(gx.data(), n, P.W, P.align, P.pad, px.data(), dpx.data()) |
           row_to_pixel<1>(gy.data(), n, P.H, P.align, P.pad, py.data(), dpy.data());
  }

  // Offsets, weights and masks of the run (the image backward).
  void compute(const Plan<T>& P, const T* grid, const Run& run) {
    coords(P, grid, run);
    const int n = run.count, W = P.W, H = P.H;
    if (P.mode == SampleMode::kNearest) {
      nearest(P, n);
      return;
    }
    bilinear_taps_masked(n, W, H, px.data(), py.data(), base.data(), w[0].data(), w[1].data(), w[2].data(), w[3].data(),
                         m[0].data(), m[1].data(), m[2].data(), m[3].data(), off[0].data(), off[1].data(),
                         off[2].data(), off[3].data());
  }

  // Offsets and masked weights (into w) of the run (the forward); returns 1 when a grid value is not finite.
  int compute_forward(const Plan<T>& P, const T* grid, const Run& run) {
    const int bad = coords(P, grid, run);
    const int n = run.count;
    if (P.mode == SampleMode::kNearest) {
      nearest(P, n);
      for (int i = 0; i < n; ++i) w[0][i] *= m[0][i];
      return bad;
    }
    bilinear_taps(n, P.W, P.H, px.data(), py.data(), base.data(), w[0].data(), w[1].data(), w[2].data(), w[3].data(),
                  off[0].data(), off[1].data(), off[2].data(), off[3].data());
    return bad;
  }

  // Offsets and grid-gradient coefficients of the run; bilinear only (nearest has no grid gradient). With
  // `masked`, also the weights and masks of the image gradient (compute's), from the same coordinates.
  void compute_grad(const Plan<T>& P, const T* grid, const Run& run, bool masked = false) {
    coords(P, grid, run);
    if (masked)
      bilinear_taps_masked(run.count, P.W, P.H, px.data(), py.data(), base.data(), w[0].data(), w[1].data(),
                           w[2].data(), w[3].data(), m[0].data(), m[1].data(), m[2].data(), m[3].data(), off[0].data(),
                           off[1].data(), off[2].data(), off[3].data());
    bilinear_taps_grad(run.count, P.W, P.H, px.data(), py.data(), dpx.data(), dpy.data(), base.data(), ax[0].data(),
                       ax[1].data(), ax[2].data(), ax[3].data(), ay[0].data(), ay[1].data(), ay[2].data(), ay[3].data(),
                       off[0].data(), off[1].data(), off[2].data(), off[3].data());
  }

 private:
  // Nearest mode: tap 0 reads the nearest pixel (weight 1, mask 0 outside); taps 1-3 have weight 0.
  void nearest(const Plan<T>& P, int n) {
    for (int i = 0; i < n; ++i) {
      const int ix = round_half_even(px[i]), iy = round_half_even(py[i]);
      const bool in = static_cast<unsigned>(ix) < static_cast<unsigned>(P.W) &&
                      static_cast<unsigned>(iy) < static_cast<unsigned>(P.H);
      off[0][i] = base[i] + (in ? iy * P.W + ix : 0);
      m[0][i] = in ? T(1) : T(0);
      w[0][i] = T(1);
    }
    for (int k = 1; k < 4; ++k) {
      std::fill(off[k].begin(), off[k].begin() + n, 0);
      std::fill(m[k].begin(), m[k].begin() + n, T(0));
      std::fill(w[k].begin(), w[k].begin() + n, T(0));
    }
  }

  std::unique_ptr<T[]> storage_;
};

}  // namespace cpu_warp
}  // namespace pscfast

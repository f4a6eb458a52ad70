// pscfast::warp on the CPU: forward, grid backward, image backward; float and double, OpenMP through
// at::parallel_for. Each task handles whole output rows: first the taps of every pixel of the row (one
// coordinate computation per pixel), then branch-free loops over channels and pixels.
// Every backward writes each output element from exactly one task, in a fixed order: results are bitwise
// reproducible and independent of the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

template <typename T>
struct Plan {
  int64_t N, C;
  int H, W, h, w, Ho, Wo;
  bool direct;  // the grid already has the output size
  SampleMode mode;
  Padding pad;
  bool align;
  std::vector<Lerp<T>> ly;        // resize of the grid along rows
  std::vector<int32_t> xi0, xi1;  // ... and along columns, as arrays
  std::vector<T> xl0, xl1;
  std::vector<Lerp<T>> lx;

  Plan(c10::IntArrayRef x_size, const at::Tensor& grid, int64_t Ho_, int64_t Wo_, c10::string_view mode_,
       c10::string_view pad_, bool align_)
      : N(x_size[0]), C(x_size[1]), H(static_cast<int>(x_size[2])), W(static_cast<int>(x_size[3])),
        h(static_cast<int>(grid.size(1))), w(static_cast<int>(grid.size(2))), Ho(static_cast<int>(Ho_)),
        Wo(static_cast<int>(Wo_)), direct(h == Ho && w == Wo), mode(parse_mode(std::string(mode_))),
        pad(parse_padding(std::string(pad_))), align(align_) {
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
};

// Grid coordinate -> pixel coordinate for a whole row, written without branches so that it vectorises;
// the same arithmetic as grid_to_pixel in sampling.h.
template <typename T>
PSC_MULTIVERSION void row_to_pixel(const T* g, int n, int size, bool align, Padding pad, T* p, T* dp) {
  const T scale = align ? static_cast<T>(size - 1) : static_cast<T>(size);
  const T d0 = scale / T(2), hi = static_cast<T>(size - 1), far = static_cast<T>(size + 1);
  for (int i = 0; i < n; ++i) {
    T v = align ? ((g[i] + T(1)) / T(2)) * scale : ((g[i] + T(1)) * scale - T(1)) / T(2);
    if (pad == Padding::kBorder) {
      dp[i] = (v > T(0) && v < hi) ? d0 : T(0);
      v = v < T(0) ? T(0) : (v > hi ? hi : v);
    } else {
      dp[i] = d0;
      v = v < T(-2) ? T(-2) : (v > far ? far : v);
    }
    p[i] = v;
  }
}

// The bilinear taps of a row of pixel positions (px, py) (see RowTaps). A free function over restrict
// pointers with integer masks, so that the loop vectorises.
template <typename T>
PSC_MULTIVERSION void bilinear_row(int n, int W, int H, const T* __restrict px, const T* __restrict py, T* __restrict e,
                  T* __restrict r, T* __restrict s, T* __restrict d, T* __restrict w0, T* __restrict w1,
                  T* __restrict w2, T* __restrict w3, T* __restrict m0, T* __restrict m1, T* __restrict m2,
                  T* __restrict m3, int32_t* __restrict o0, int32_t* __restrict o1, int32_t* __restrict o2,
                  int32_t* __restrict o3) {
  for (int i = 0; i < n; ++i) {
    const int x0 = floor_int(px[i]), y0 = floor_int(py[i]);
    const T fx = static_cast<T>(x0), fy = static_cast<T>(y0);
    const T ei = fx + T(1) - px[i], ri = px[i] - fx, si = fy + T(1) - py[i], di = py[i] - fy;
    const int mx0 = (x0 >= 0) & (x0 < W), mx1 = (x0 >= -1) & (x0 + 1 < W);
    const int my0 = (y0 >= 0) & (y0 < H), my1 = (y0 >= -1) & (y0 + 1 < H);
    const int k0 = my0 & mx0, k1 = my0 & mx1, k2 = my1 & mx0, k3 = my1 & mx1;
    const int q = y0 * W + x0;
    o0[i] = q * k0;
    o1[i] = (q + 1) * k1;
    o2[i] = (q + W) * k2;
    o3[i] = (q + W + 1) * k3;
    m0[i] = static_cast<T>(k0);
    m1[i] = static_cast<T>(k1);
    m2[i] = static_cast<T>(k2);
    m3[i] = static_cast<T>(k3);
    w0[i] = ei * si;
    w1[i] = ri * si;
    w2[i] = ei * di;
    w3[i] = ri * di;
    e[i] = ei;
    r[i] = ri;
    s[i] = si;
    d[i] = di;
  }
}

// The taps of every pixel of one output row, as arrays: offsets (element 0 for taps outside, with mask
// m = 0), weights w, the distances e, r (to the right and left tap columns) and s, d (to the lower and
// upper tap rows), and d(pixel)/d(grid). Forward value: sum_k m_k w_k x[off_k]; coordinate gradient with
// v_k = m_k x[off_k]: d/dpx = (v1 - v0) s + (v3 - v2) d, d/dpy = (v2 - v0) e + (v3 - v1) r.
template <typename T>
struct RowTaps {
  std::vector<T> gx, gy, px, py, dpx, dpy, e, r, s, d, rowx, rowy;
  std::vector<T> w[4], m[4];
  std::vector<int32_t> off[4];

  explicit RowTaps(const Plan<T>& P)
      : gx(P.Wo), gy(P.Wo), px(P.Wo), py(P.Wo), dpx(P.Wo), dpy(P.Wo), e(P.Wo), r(P.Wo), s(P.Wo), d(P.Wo),
        rowx(P.w), rowy(P.w) {
    for (int k = 0; k < 4; ++k) {
      w[k].resize(P.Wo);
      m[k].resize(P.Wo);
      off[k].resize(P.Wo);
    }
  }

  void compute(const Plan<T>& P, const T* grid, int64_t n, int oy) {
    const int Wo = P.Wo;
    const T* gn = grid + n * P.h * P.w * 2;
    if (P.direct) {
      const T* row = gn + static_cast<int64_t>(oy) * P.w * 2;
      for (int i = 0; i < Wo; ++i) {
        gx[i] = row[2 * i];
        gy[i] = row[2 * i + 1];
      }
    } else {
      const Lerp<T>& ly = P.ly[oy];
      const T* r0 = gn + static_cast<int64_t>(ly.i0) * P.w * 2;
      const T* r1 = gn + static_cast<int64_t>(ly.i1) * P.w * 2;
      for (int j = 0; j < P.w; ++j) {
        rowx[j] = ly.l0 * r0[2 * j] + ly.l1 * r1[2 * j];
        rowy[j] = ly.l0 * r0[2 * j + 1] + ly.l1 * r1[2 * j + 1];
      }
      for (int i = 0; i < Wo; ++i) {
        gx[i] = P.xl0[i] * rowx[P.xi0[i]] + P.xl1[i] * rowx[P.xi1[i]];
        gy[i] = P.xl0[i] * rowy[P.xi0[i]] + P.xl1[i] * rowy[P.xi1[i]];
      }
    }
    row_to_pixel(gx.data(), Wo, P.W, P.align, P.pad, px.data(), dpx.data());
    row_to_pixel(gy.data(), Wo, P.H, P.align, P.pad, py.data(), dpy.data());
    const int W = P.W, H = P.H;
    if (P.mode == SampleMode::kNearest) {
      for (int i = 0; i < Wo; ++i) {
        const int ix = round_half_even(px[i]), iy = round_half_even(py[i]);
        const bool in = static_cast<unsigned>(ix) < static_cast<unsigned>(W) &&
                        static_cast<unsigned>(iy) < static_cast<unsigned>(H);
        off[0][i] = in ? iy * W + ix : 0;
        m[0][i] = in ? T(1) : T(0);
        w[0][i] = T(1);
      }
      for (int k = 1; k < 4; ++k) {
        std::fill(off[k].begin(), off[k].end(), 0);
        std::fill(m[k].begin(), m[k].end(), T(0));
        std::fill(w[k].begin(), w[k].end(), T(0));
      }
      return;
    }
    bilinear_row(Wo, P.W, P.H, px.data(), py.data(), e.data(), r.data(), s.data(), d.data(), w[0].data(),
                 w[1].data(), w[2].data(), w[3].data(), m[0].data(), m[1].data(), m[2].data(), m[3].data(),
                 off[0].data(), off[1].data(), off[2].data(), off[3].data());
  }
};

// out[i] = sum_k cw_k[i] x[off_k[i]] for one channel of one row.
template <typename T>
PSC_MULTIVERSION void sample_row(int n, const T* __restrict x, const int32_t* __restrict o0,
                                 const int32_t* __restrict o1, const int32_t* __restrict o2,
                                 const int32_t* __restrict o3, const T* __restrict c0, const T* __restrict c1,
                                 const T* __restrict c2, const T* __restrict c3, T* __restrict out) {
  for (int i = 0; i < n; ++i) out[i] = c0[i] * x[o0[i]] + c1[i] * x[o1[i]] + c2[i] * x[o2[i]] + c3[i] * x[o3[i]];
}

template <typename T>
void forward_impl(const Plan<T>& P, const T* x, const T* grid, T* out) {
  at::parallel_for(0, P.N * P.Ho, 1, [&](int64_t begin, int64_t end) {
    RowTaps<T> t(P);
    std::vector<T> cw[4];
    for (auto& v : cw) v.resize(P.Wo);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / P.Ho;
      const int oy = static_cast<int>(row % P.Ho);
      t.compute(P, grid, n, oy);
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < P.Wo; ++i) cw[k][i] = t.m[k][i] * t.w[k][i];
      for (int64_t c = 0; c < P.C; ++c)
        sample_row(P.Wo, x + (n * P.C + c) * P.plane(), t.off[0].data(), t.off[1].data(), t.off[2].data(),
                   t.off[3].data(), cw[0].data(), cw[1].data(), cw[2].data(), cw[3].data(),
                   out + (n * P.C + c) * P.oplane() + static_cast<int64_t>(oy) * P.Wo);
    }
  });
}

// Adds one channel's gout * d(sample)/d(px, py) to gx, gy (see RowTaps for the formula).
template <typename T>
PSC_MULTIVERSION void coord_grad_row(int n, const T* __restrict x, const T* __restrict g,
                                     const int32_t* __restrict o0, const int32_t* __restrict o1,
                                     const int32_t* __restrict o2, const int32_t* __restrict o3,
                                     const T* __restrict m0, const T* __restrict m1, const T* __restrict m2,
                                     const T* __restrict m3, const T* __restrict e, const T* __restrict r,
                                     const T* __restrict s, const T* __restrict d, T* __restrict gx,
                                     T* __restrict gy) {
  for (int i = 0; i < n; ++i) {
    const T v0 = m0[i] * x[o0[i]], v1 = m1[i] * x[o1[i]], v2 = m2[i] * x[o2[i]], v3 = m3[i] * x[o3[i]];
    gx[i] += g[i] * ((v1 - v0) * s[i] + (v3 - v2) * d[i]);
    gy[i] += g[i] * ((v2 - v0) * e[i] + (v3 - v1) * r[i]);
  }
}

template <typename T>
void coord_grad_row(int n, const T* x, const T* g, const RowTaps<T>& t, T* gx, T* gy) {
  coord_grad_row(n, x, g, t.off[0].data(), t.off[1].data(), t.off[2].data(), t.off[3].data(), t.m[0].data(),
                 t.m[1].data(), t.m[2].data(), t.m[3].data(), t.e.data(), t.r.data(), t.s.data(), t.d.data(), gx,
                 gy);
}

// d L / d (grid point) of every pixel of row (n, oy), summed over channels, into gx, gy.
template <typename T>
void row_grid_grad(const Plan<T>& P, const T* x, const T* grid, const T* gout, int64_t n, int oy, RowTaps<T>& t,
                   T* gx, T* gy) {
  t.compute(P, grid, n, oy);
  std::fill(gx, gx + P.Wo, T(0));
  std::fill(gy, gy + P.Wo, T(0));
  for (int64_t c = 0; c < P.C; ++c)
    coord_grad_row(P.Wo, x + (n * P.C + c) * P.plane(),
                   gout + (n * P.C + c) * P.oplane() + static_cast<int64_t>(oy) * P.Wo, t, gx, gy);
  for (int i = 0; i < P.Wo; ++i) {
    gx[i] *= t.dpx[i];
    gy[i] *= t.dpy[i];
  }
}

// Grid gradient. Without resize each pixel owns its grid point. With resize, stage 1 gives each cell of
// the low-resolution grid the weighted sums for its four corners (one task per cell row), and stage 2 adds,
// for each node, the corners of the (up to) four cells that touch it, in a fixed order.
template <typename T>
void backward_grid_impl(const Plan<T>& P, const T* x, const T* grid, const T* gout, T* dgrid) {
  if (P.direct) {
    at::parallel_for(0, P.N * P.Ho, 1, [&](int64_t begin, int64_t end) {
      RowTaps<T> taps(P);
      std::vector<T> gx(P.Wo), gy(P.Wo);
      for (int64_t r = begin; r < end; ++r) {
        row_grid_grad(P, x, grid, gout, r / P.Ho, static_cast<int>(r % P.Ho), taps, gx.data(), gy.data());
        T* d = dgrid + r * P.Wo * 2;
        for (int ox = 0; ox < P.Wo; ++ox) {
          d[2 * ox] = gx[ox];
          d[2 * ox + 1] = gy[ox];
        }
      }
    });
    return;
  }
  // Output rows of each cell row: contiguous, since i0 never decreases along the output.
  std::vector<int> row_start(P.h + 1, P.Ho);
  for (int oy = P.Ho - 1; oy >= 0; --oy) row_start[P.ly[oy].i0] = oy;
  for (int a = P.h - 1; a >= 0; --a) row_start[a] = std::min(row_start[a], row_start[a + 1]);

  std::vector<T> partial(static_cast<size_t>(P.N) * P.h * P.w * 8, T(0));  // [n][a][b][corner][xy]
  at::parallel_for(0, P.N * P.h, 1, [&](int64_t begin, int64_t end) {
    RowTaps<T> taps(P);
    std::vector<T> gx(P.Wo), gy(P.Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / P.h;
      const int a = static_cast<int>(t % P.h);
      T* cells = partial.data() + static_cast<size_t>(t) * P.w * 8;
      for (int oy = row_start[a]; oy < row_start[a + 1]; ++oy) {
        row_grid_grad(P, x, grid, gout, n, oy, taps, gx.data(), gy.data());
        for (int ox = 0; ox < P.Wo; ++ox) {
          T wc[4];
          cell_corner_weights(P.ly[oy], P.lx[ox], wc);
          T* cell = cells + static_cast<size_t>(P.lx[ox].i0) * 8;
          for (int k = 0; k < 4; ++k) {
            cell[2 * k] += wc[k] * gx[ox];
            cell[2 * k + 1] += wc[k] * gy[ox];
          }
        }
      }
    }
  });
  at::parallel_for(0, P.N * P.h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / P.h;
      const int i = static_cast<int>(t % P.h);
      for (int j = 0; j < P.w; ++j) {
        T s0 = T(0), s1 = T(0);
        for (int k = 0; k < 4; ++k) {  // corner k = 2 * dy + dx of cell (i - dy, j - dx) is node (i, j)
          const int a = i - (k >> 1), b = j - (k & 1);
          if (a < 0 || b < 0) continue;
          const T* cell = partial.data() + ((static_cast<size_t>(n) * P.h + a) * P.w + b) * 8;
          s0 += cell[2 * k];
          s1 += cell[2 * k + 1];
        }
        T* d = dgrid + ((n * P.h + i) * P.w + j) * 2;
        d[0] = s0;
        d[1] = s1;
      }
    }
  });
}

// Image gradient: each task owns a block of channels of one sample, so no two tasks write the same
// element; pixels are visited in raster order.
template <typename T>
void backward_x_impl(const Plan<T>& P, const T* grid, const T* gout, T* dx) {
  constexpr int64_t kChannelBlock = 16;
  const int64_t blocks = (P.C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, P.N * blocks, 1, [&](int64_t begin, int64_t end) {
    RowTaps<T> taps(P);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t c1 = std::min(P.C, c0 + kChannelBlock);
      for (int oy = 0; oy < P.Ho; ++oy) {
        taps.compute(P, grid, n, oy);
        for (int64_t c = c0; c < c1; ++c) {
          const T* gc = gout + (n * P.C + c) * P.oplane() + static_cast<int64_t>(oy) * P.Wo;
          T* dc = dx + (n * P.C + c) * P.plane();
          for (int i = 0; i < P.Wo; ++i)
            for (int k = 0; k < 4; ++k)
              if (taps.m[k][i] != T(0)) dc[taps.off[k][i]] += taps.w[k][i] * gc[i];
        }
      }
    }
  });
}

at::Tensor warp_cpu(const at::Tensor& x_, const at::Tensor& grid_, c10::IntArrayRef out_size, c10::string_view mode,
                    c10::string_view padding_mode, bool align_corners) {
  check_warp_inputs(x_, grid_, out_size);
  const auto x = x_.contiguous();
  const auto grid = grid_.contiguous();
  auto out = at::empty({x.size(0), x.size(1), out_size[0], out_size[1]}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_cpu", [&] {
    const Plan<scalar_t> P(x.sizes(), grid, out_size[0], out_size[1], mode, padding_mode, align_corners);
    forward_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor warp_backward_grid_cpu(const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& grid_,
                                  c10::string_view mode, c10::string_view padding_mode, bool align_corners) {
  check_warp_inputs(x_, grid_, grad_out.sizes().slice(2));
  const auto x = x_.contiguous();
  const auto grid = grid_.contiguous();
  const auto gout = grad_out.contiguous();
  if (parse_mode(std::string(mode)) == SampleMode::kNearest) return at::zeros(grid.sizes(), grid.options());
  auto dgrid = at::empty_like(grid);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_backward_grid_cpu", [&] {
    const Plan<scalar_t> P(x.sizes(), grid, gout.size(2), gout.size(3), mode, padding_mode, align_corners);
    backward_grid_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                       gout.const_data_ptr<scalar_t>(), dgrid.mutable_data_ptr<scalar_t>());
  });
  return dgrid;
}

at::Tensor warp_backward_x_cpu(const at::Tensor& grad_out, const at::Tensor& grid_, c10::IntArrayRef x_size,
                               c10::string_view mode, c10::string_view padding_mode, bool align_corners) {
  TORCH_CHECK(x_size.size() == 4, "pscfast::_warp_backward_x: x_size must have 4 entries");
  const auto grid = grid_.contiguous();
  const auto gout = grad_out.contiguous();
  auto dx = at::zeros(x_size, gout.options());
  check_warp_inputs(dx, grid, gout.sizes().slice(2));
  AT_DISPATCH_FLOATING_TYPES(gout.scalar_type(), "warp_backward_x_cpu", [&] {
    const Plan<scalar_t> P(x_size, grid, gout.size(2), gout.size(3), mode, padding_mode, align_corners);
    backward_x_impl(P, grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("warp", &warp_cpu);
  m.impl("_warp_backward_grid", &warp_backward_grid_cpu);
  m.impl("_warp_backward_x", &warp_backward_x_cpu);
}

}  // namespace pscfast

// pscfast::warp on the CPU: the forward and the backward's image and grid gradients; float and double, OpenMP
// through at::parallel_for. Each task handles whole output rows: first the taps of every pixel of the row (one
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
#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/output_mask.h"
#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cpu/vectorize.h"
#include "ops/cpu/warp_taps.h"

namespace pscfast {
namespace {

using cpu_warp::Plan;
using cpu_warp::RowTaps;

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
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / P.Ho;
      const int oy = static_cast<int>(row % P.Ho);
      t.compute_forward(P, grid, n, oy);
      for (int64_t c = 0; c < P.C; ++c)
        sample_row(P.Wo, x + (n * P.C + c) * P.plane(), t.off[0].data(), t.off[1].data(), t.off[2].data(),
                   t.off[3].data(), t.w[0].data(), t.w[1].data(), t.w[2].data(), t.w[3].data(),
                   out + (n * P.C + c) * P.oplane() + static_cast<int64_t>(oy) * P.Wo);
    }
  });
}

// Adds one channel's gout * d(sample)/d(grid) to gx, gy (coefficients from bilinear_row_grad).
template <typename T>
PSC_MULTIVERSION void grid_grad_row(int n, const T* __restrict x, const T* __restrict g,
                                    const int32_t* __restrict o0, const int32_t* __restrict o1,
                                    const int32_t* __restrict o2, const int32_t* __restrict o3,
                                    const T* __restrict ax0, const T* __restrict ax1, const T* __restrict ax2,
                                    const T* __restrict ax3, const T* __restrict ay0, const T* __restrict ay1,
                                    const T* __restrict ay2, const T* __restrict ay3, T* __restrict gx,
                                    T* __restrict gy) {
  for (int i = 0; i < n; ++i) {
    const T v0 = x[o0[i]], v1 = x[o1[i]], v2 = x[o2[i]], v3 = x[o3[i]];
    gx[i] += g[i] * (ax0[i] * v0 + ax1[i] * v1 + ax2[i] * v2 + ax3[i] * v3);
    gy[i] += g[i] * (ay0[i] * v0 + ay1[i] * v1 + ay2[i] * v2 + ay3[i] * v3);
  }
}

// out = (a0, b0, a1, b1, ...).
template <typename T>
PSC_MULTIVERSION void interleave(int n, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  for (int i = 0; i < n; ++i) {
    out[2 * i] = a[i];
    out[2 * i + 1] = b[i];
  }
}

// d L / d (grid point) of every pixel of row (n, oy), summed over channels, into gx, gy.
template <typename T>
void row_grid_grad(const Plan<T>& P, const T* x, const T* grid, const T* gout, int64_t n, int oy, RowTaps<T>& t,
                   T* gx, T* gy) {
  t.compute_grad(P, grid, n, oy);
  std::fill(gx, gx + P.Wo, T(0));
  std::fill(gy, gy + P.Wo, T(0));
  for (int64_t c = 0; c < P.C; ++c)
    grid_grad_row(P.Wo, x + (n * P.C + c) * P.plane(),
                  gout + (n * P.C + c) * P.oplane() + static_cast<int64_t>(oy) * P.Wo, t.off[0].data(),
                  t.off[1].data(), t.off[2].data(), t.off[3].data(), t.ax[0].data(), t.ax[1].data(), t.ax[2].data(),
                  t.ax[3].data(), t.ay[0].data(), t.ay[1].data(), t.ay[2].data(), t.ay[3].data(), gx, gy);
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
        interleave(P.Wo, gx.data(), gy.data(), dgrid + r * P.Wo * 2);
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

// Only the gradients in output_mask are computed; the image is read only for the grid's.
std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_,
                                                     const at::Tensor& grid_, c10::string_view mode,
                                                     c10::string_view padding_mode, bool align_corners,
                                                     std::array<bool, 2> output_mask) {
  check_warp_inputs(x_, grid_, grad_out.sizes().slice(2));
  check_warp_grad(grad_out, x_);
  const auto grid = grid_.contiguous();
  const auto gout = grad_out.contiguous();
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  at::Tensor dx = zeros_if(output_mask[0], x_.sizes(), x_.options());  // backward_x_impl accumulates
  at::Tensor dgrid;
  if (output_mask[1]) dgrid = nearest ? at::zeros(grid.sizes(), grid.options()) : at::empty_like(grid);
  if (!dx.defined() && !(dgrid.defined() && !nearest)) return {dx, dgrid};
  AT_DISPATCH_FLOATING_TYPES(x_.scalar_type(), "warp_backward_cpu", [&] {
    const Plan<scalar_t> P(x_.sizes(), grid, gout.size(2), gout.size(3), mode, padding_mode, align_corners);
    if (dx.defined())
      backward_x_impl(P, grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(),
                      dx.mutable_data_ptr<scalar_t>());
    if (dgrid.defined() && !nearest) {  // nearest sampling has no grid gradient: dgrid stays 0
      const auto x = x_.contiguous();
      backward_grid_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                         gout.const_data_ptr<scalar_t>(), dgrid.mutable_data_ptr<scalar_t>());
    }
  });
  return {dx, dgrid};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("warp", &warp_cpu);
  m.impl("_warp_backward", &warp_backward_cpu);
}

}  // namespace pscfast

// pscfast::warp on the CPU: the forward and the backward's image and grid gradients; float and double, OpenMP
// through at::parallel_for; float16 and bfloat16 through float32 (the inputs widened once, the results rounded
// once). Each task handles blocks of output points (warp_taps.h): first the taps of every point of the block
// (one coordinate computation per point), then branch-free loops over channels and points.
// The forward refuses a grid holding NaN or infinity (the flag the coordinate loops raise as they read it) unless
// PSCFAST_CHECK_FINITE=0. Without a resize: one bilinear float channel runs a fused loop of its own (AVX2
// intrinsics, fused_forward below), a few more channels ATen's grid sampler (aten_forward). The autograd kernel's
// forward for a one-channel image whose grid alone requires grad also returns d(out)/d(grid), so that the grid's
// gradient is a product (warp_jacobian_cpu).
// Every backward writes each output element from exactly one task, in a fixed order: results are bitwise
// reproducible and independent of the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/grid_sampler_2d.h>
#include <ATen/ops/grid_sampler_2d_backward.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/common/finite_check.h"
#include "ops/common/output_mask.h"
#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cpu/vectorize.h"
#include "ops/cpu/warp_avx2.h"
#include "ops/cpu/warp_taps.h"

namespace pscfast {
namespace {

using cpu_warp::BlockTaps;
using cpu_warp::Plan;
using cpu_warp::Run;

// The output row u = n * Ho + oy as a run (the resized-grid path works row by row).
template <typename T>
Run row_run(const Plan<T>& P, int64_t u) {
  return {u * P.Wo, u / P.Ho, P.Wo};
}

// out[i] = sum_k cw_k[i] x[off_k[i]] for one channel of a run.
template <typename T>
PSC_MULTIVERSION void sample_run(int n, const T* __restrict x, const int32_t* __restrict o0,
                                 const int32_t* __restrict o1, const int32_t* __restrict o2,
                                 const int32_t* __restrict o3, const T* __restrict c0, const T* __restrict c1,
                                 const T* __restrict c2, const T* __restrict c3, T* __restrict out) {
  for (int i = 0; i < n; ++i) out[i] = c0[i] * x[o0[i]] + c1[i] * x[o1[i]] + c2[i] * x[o2[i]] + c3[i] * x[o3[i]];
}

// Returns 1 when a grid value it read is NaN or infinite.
template <typename T>
int forward_impl(const Plan<T>& P, const T* x, const T* grid, T* out) {
  std::atomic<int> bad{0};  // a resized grid was checked whole before (warp_cpu)
  const int64_t units = P.direct ? P.blocks() : P.N * P.Ho;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    BlockTaps<T> t(P);
    int seen = 0;
    for (int64_t u = begin; u < end; ++u) {
      const Run run = P.direct ? cpu_warp::block(P, u) : row_run(P, u);
      seen |= t.compute_forward(P, grid, run);
      const int64_t local = run.first - run.n0 * P.oplane();  // the run's first point within its sample
      for (int64_t c = 0; c < P.C; ++c)
        sample_run(run.count, x + (run.n0 * P.C + c) * P.plane(), t.off[0].data(), t.off[1].data(), t.off[2].data(),
                   t.off[3].data(), t.w[0].data(), t.w[1].data(), t.w[2].data(), t.w[3].data(),
                   out + (run.n0 * P.C + c) * P.oplane() + local);
    }
    if (seen) bad = 1;
  });
  return bad;
}

// One channel of a run, point by point from its pixel coordinates (BlockTaps::coords): the bilinear sample out[i]
// and, where jac is not null, its gradient in the grid point, (jac[2 i], jac[2 i + 1]): the forward's and the grid
// backward's coefficients (bilinear_taps, bilinear_taps_grad) applied to the same four reads (for float,
// warp_avx2.h's sample_grid_avx2 does the same from the grid).
template <typename T>
void sample_points(int n, int W, int H, const T* __restrict x, const T* __restrict px, const T* __restrict py,
                   const T* __restrict dpx, const T* __restrict dpy, const int32_t* __restrict base, T* __restrict out,
                   T* __restrict jac) {
  for (int i = 0; i < n; ++i) {
    const cpu_warp::Bilinear<T> b(px[i], py[i], W, H);
    int32_t o0, o1, o2, o3;
    b.offsets(W, base[i], o0, o1, o2, o3);
    const T v0 = b.m0 ? x[o0] : T(0), v1 = b.m1 ? x[o1] : T(0), v2 = b.m2 ? x[o2] : T(0), v3 = b.m3 ? x[o3] : T(0);
    out[i] = b.e * b.s * v0 + b.r * b.s * v1 + b.e * b.d * v2 + b.r * b.d * v3;
    if (jac == nullptr) continue;
    jac[2 * i] = dpx[i] * (b.s * (v1 - v0) + b.d * (v3 - v2));
    jac[2 * i + 1] = dpy[i] * (b.e * (v2 - v0) + b.r * (v3 - v1));
  }
}

// The forward of a bilinear grid at the output size, with d(out)/d(grid) per output point and channel into jac
// (N, C, Ho, Wo, 2) unless jac is null. Returns 1 when a grid value it read is NaN or infinite.
// A task takes at least kTaskPoints points (channels counted), about 6 us of work on the 2-core EPYC we measure
// on. Tasks of 2048 made SFNet's 4096-point mask warps 2-3 us faster while the second thread was awake, but in a
// loop of warps alone, whose backward runs on one thread, it had gone to sleep by the next forward: 59 us per
// forward and backward instead of 41.
template <typename T>
int fused_forward_impl(const Plan<T>& P, const T* x, const T* grid, T* out, T* jac) {
  constexpr int64_t kTaskPoints = 4096;
  std::atomic<int> bad{0};
  const int64_t grain = std::max<int64_t>(1, kTaskPoints / (cpu_warp::kBlock * P.C));
  at::parallel_for(0, P.blocks(), grain, [&](int64_t begin, int64_t end) {
    std::optional<BlockTaps<T>> t;  // the portable loop's arrays, made for the points the AVX2 loop leaves
    int32_t base[cpu_warp::kBlock] = {};
    int seen = 0;
    for (int64_t b = begin; b < end; ++b) {
      const Run run = cpu_warp::block(P, b);
      const int64_t local = run.first - run.n0 * P.oplane();
      const auto plane_of = [&](int64_t c) { return (run.n0 * P.C + c) * P.oplane() + local; };
      int done = 0;
      if constexpr (std::is_same_v<T, float>) {
        if (P.across) cpu_warp::sample_offsets(P, run, base);
        for (int64_t c = 0; c < P.C; ++c)
          done = cpu_warp::sample_grid_avx2(grid + 2 * run.first, run.count, P.W, P.H, P.align,
                                            P.pad == Padding::kBorder, x + (run.n0 * P.C + c) * P.plane(), base,
                                            out + plane_of(c), jac == nullptr ? nullptr : jac + 2 * plane_of(c), seen);
      }
      if (done == run.count) continue;
      if (!t) t.emplace(P);
      const Run rest{run.first + done, run.n0, run.count - done};
      seen |= t->coords(P, grid, rest);
      for (int64_t c = 0; c < P.C; ++c) {
        const int64_t o = plane_of(c) + done;
        sample_points(rest.count, P.W, P.H, x + (run.n0 * P.C + c) * P.plane(), t->px.data(), t->py.data(),
                      t->dpx.data(), t->dpy.data(), t->base.data(), out + o, jac == nullptr ? nullptr : jac + 2 * o);
      }
    }
    if (seen) bad = 1;
  });
  return bad;
}

// Adds one channel's gout * d(sample)/d(grid) to gx, gy (coefficients from bilinear_taps_grad).
template <typename T>
PSC_MULTIVERSION void grid_grad_run(int n, const T* __restrict x, const T* __restrict g, const int32_t* __restrict o0,
                                    const int32_t* __restrict o1, const int32_t* __restrict o2,
                                    const int32_t* __restrict o3, const T* __restrict ax0, const T* __restrict ax1,
                                    const T* __restrict ax2, const T* __restrict ax3, const T* __restrict ay0,
                                    const T* __restrict ay1, const T* __restrict ay2, const T* __restrict ay3,
                                    T* __restrict gx, T* __restrict gy) {
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

// gx, gy = the sums over kC channels (planes `plane` and `oplane` apart) of gout * d(sample)/d(grid), in one loop
// over the points: the offsets and coefficients are read once for all channels, and the sums stay in registers.
template <typename T, int kC>
PSC_MULTIVERSION void grid_grad_channels(int n, const T* __restrict x, int64_t plane, const T* __restrict g,
                                         int64_t oplane, const int32_t* __restrict o0, const int32_t* __restrict o1,
                                         const int32_t* __restrict o2, const int32_t* __restrict o3,
                                         const T* __restrict ax0, const T* __restrict ax1, const T* __restrict ax2,
                                         const T* __restrict ax3, const T* __restrict ay0, const T* __restrict ay1,
                                         const T* __restrict ay2, const T* __restrict ay3, T* __restrict gx,
                                         T* __restrict gy) {
  for (int i = 0; i < n; ++i) {
    T sx = T(0), sy = T(0);
    for (int c = 0; c < kC; ++c) {
      const T* xc = x + c * plane;
      const T v0 = xc[o0[i]], v1 = xc[o1[i]], v2 = xc[o2[i]], v3 = xc[o3[i]];
      const T gc = g[c * oplane + i];
      sx += gc * (ax0[i] * v0 + ax1[i] * v1 + ax2[i] * v2 + ax3[i] * v3);
      sy += gc * (ay0[i] * v0 + ay1[i] * v1 + ay2[i] * v2 + ay3[i] * v3);
    }
    gx[i] = sx;
    gy[i] = sy;
  }
}

// d L / d (grid point) of every point of a run whose taps are computed (compute_grad), summed over channels, into
// gx, gy: up to four channels in one loop, more channel by channel.
template <typename T>
void grid_grad_sum(const Plan<T>& P, const T* x, const T* gout, const Run& run, const BlockTaps<T>& t, T* gx, T* gy) {
  const int64_t local = run.first - run.n0 * P.oplane();
  const T* xn = x + run.n0 * P.C * P.plane();
  const T* gn = gout + run.n0 * P.C * P.oplane() + local;
  const auto fused = [&](auto channels) {
    grid_grad_channels<T, decltype(channels)::value>(run.count, xn, P.plane(), gn, P.oplane(), t.off[0].data(),
                                                     t.off[1].data(), t.off[2].data(), t.off[3].data(), t.ax[0].data(),
                                                     t.ax[1].data(), t.ax[2].data(), t.ax[3].data(), t.ay[0].data(),
                                                     t.ay[1].data(), t.ay[2].data(), t.ay[3].data(), gx, gy);
  };
  switch (P.C) {
    case 1:
      return fused(std::integral_constant<int, 1>());
    case 2:
      return fused(std::integral_constant<int, 2>());
    case 3:
      return fused(std::integral_constant<int, 3>());
    case 4:
      return fused(std::integral_constant<int, 4>());
  }
  std::fill(gx, gx + run.count, T(0));
  std::fill(gy, gy + run.count, T(0));
  for (int64_t c = 0; c < P.C; ++c)
    grid_grad_run(run.count, xn + c * P.plane(), gn + c * P.oplane(), t.off[0].data(), t.off[1].data(), t.off[2].data(),
                  t.off[3].data(), t.ax[0].data(), t.ax[1].data(), t.ax[2].data(), t.ax[3].data(), t.ay[0].data(),
                  t.ay[1].data(), t.ay[2].data(), t.ay[3].data(), gx, gy);
}

// d L / d (grid point) of every point of a run, summed over channels, into gx, gy.
template <typename T>
void run_grid_grad(const Plan<T>& P, const T* x, const T* grid, const T* gout, const Run& run, BlockTaps<T>& t, T* gx,
                   T* gy) {
  t.compute_grad(P, grid, run);
  grid_grad_sum(P, x, gout, run, t, gx, gy);
}

// Grid gradient. Without resize each point owns its grid point. With resize, stage 1 gives each cell of
// the low-resolution grid the weighted sums for its four corners (one task per cell row), and stage 2 adds,
// for each node, the corners of the (up to) four cells that touch it, in a fixed order.
template <typename T>
void backward_grid_impl(const Plan<T>& P, const T* x, const T* grid, const T* gout, T* dgrid) {
  if (P.direct) {
    at::parallel_for(0, P.blocks(), 1, [&](int64_t begin, int64_t end) {
      BlockTaps<T> taps(P);
      std::vector<T> gx(taps.size), gy(taps.size);
      for (int64_t b = begin; b < end; ++b) {
        const Run run = cpu_warp::block(P, b);
        run_grid_grad(P, x, grid, gout, run, taps, gx.data(), gy.data());
        interleave(run.count, gx.data(), gy.data(), dgrid + run.first * 2);
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
    BlockTaps<T> taps(P);
    std::vector<T> gx(P.Wo), gy(P.Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / P.h;
      const int a = static_cast<int>(t % P.h);
      T* cells = partial.data() + static_cast<size_t>(t) * P.w * 8;
      for (int oy = row_start[a]; oy < row_start[a + 1]; ++oy) {
        run_grid_grad(P, x, grid, gout, row_run(P, n * P.Ho + oy), taps, gx.data(), gy.data());
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

// dx[off_k] += w_k * g for the taps inside the image, point by point.
template <typename T>
void scatter_run(const BlockTaps<T>& t, int n, const T* __restrict g, T* __restrict dx) {
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < 4; ++k)
      if (t.m[k][i] != T(0)) dx[t.off[k][i]] += t.w[k][i] * g[i];
}

// Image gradient: each task owns the image planes it writes (a block of channels of one sample; with one channel
// and blocks across samples, a range of samples), so no two tasks write the same element; points are visited in
// raster order.
template <typename T>
void backward_x_impl(const Plan<T>& P, const T* grid, const T* gout, T* dx) {
  if (P.across) {
    const int64_t S = P.oplane();
    at::parallel_for(0, P.N, 1, [&](int64_t begin, int64_t end) {
      BlockTaps<T> taps(P);
      for (int64_t first = begin * S; first < end * S; first += cpu_warp::kBlock) {
        const Run run{first, first / S, static_cast<int>(std::min<int64_t>(cpu_warp::kBlock, end * S - first))};
        taps.compute(P, grid, run);
        scatter_run(taps, run.count, gout + first, dx + run.n0 * P.plane());
      }
    });
    return;
  }
  constexpr int64_t kChannelBlock = 16;
  const int64_t blocks = (P.C + kChannelBlock - 1) / kChannelBlock;
  const int64_t runs = P.direct ? P.blocks_per_sample() : P.Ho;
  at::parallel_for(0, P.N * blocks, 1, [&](int64_t begin, int64_t end) {
    BlockTaps<T> taps(P);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t c1 = std::min(P.C, c0 + kChannelBlock);
      for (int64_t r = 0; r < runs; ++r) {
        const Run run = P.direct ? cpu_warp::block(P, n * runs + r) : row_run(P, n * P.Ho + r);
        taps.compute(P, grid, run);
        const int64_t local = run.first - n * P.oplane();
        for (int64_t c = c0; c < c1; ++c)
          scatter_run(taps, run.count, gout + (n * P.C + c) * P.oplane() + local, dx + (n * P.C + c) * P.plane());
      }
    }
  });
}

// Both gradients of the direct bilinear path in one pass: the taps of each run computed once, then per channel
// the image gradient's scatter and the grid gradient's sums (the separate passes would each recompute them). Each
// task owns whole samples, their image planes and grid points, and visits points in raster order: the results
// are those of the separate passes, independent of the thread count.
template <typename T>
void backward_both_direct(const Plan<T>& P, const T* x, const T* grid, const T* gout, T* dx, T* dgrid) {
  const int64_t S = P.oplane();
  at::parallel_for(0, P.N, 1, [&](int64_t begin, int64_t end) {
    BlockTaps<T> taps(P);
    std::vector<T> gx(taps.size), gy(taps.size);
    for (int64_t first = begin * S; first < end * S;) {
      const int64_t n = first / S;
      const int64_t stop = P.across ? end * S : (n + 1) * S;  // a run spans samples only in the across layout
      const Run run{first, n, static_cast<int>(std::min<int64_t>(cpu_warp::kBlock, stop - first))};
      taps.compute_grad(P, grid, run, /*masked=*/true);
      grid_grad_sum(P, x, gout, run, taps, gx.data(), gy.data());
      const int64_t local = first - n * S;
      for (int64_t c = 0; c < P.C; ++c)
        scatter_run(taps, run.count, gout + (n * P.C + c) * S + local, dx + (n * P.C + c) * P.plane());
      interleave(run.count, gx.data(), gy.data(), dgrid + first * 2);
      first += run.count;
    }
  });
}

// The forward's refusal of a grid holding NaN or infinity (pscfast.ops.warp matches its end, NONFINITE_GRID).
constexpr const char* kNonfinite = "pscfast.ops.warp: grid contains NaN or infinite values";

// float16 and bfloat16 are computed in float32; float and double in their own type.
at::ScalarType compute_type(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 ? at::kFloat : s;
}

// `t` in the compute type (a copy only for half precision) and contiguous; no dispatched call when it already is
// (a small warp's whole budget is a few microseconds).
at::Tensor widened(const at::Tensor& t, at::ScalarType compute) {
  return t.scalar_type() == compute ? t.contiguous() : t.to(compute).contiguous();
}

// A result in the compute type back in the inputs' dtype (undefined stays undefined).
at::Tensor narrowed(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.scalar_type() != dtype ? t.to(dtype) : t;
}

// Where ATen's vectorised grid sampler is faster than the kernels above, the op hands it the work: it computes
// exactly this op when the grid is not resized. Measured against it on an AVX-512 CPU (AMD EPYC, 1 and 2 threads,
// one to sixteen channels, the peers' shapes in bench/): the forward of one or two channels, the grid-only
// gradient of up to 16 channels and both gradients of one channel; everywhere else, and whenever the grid is
// resized, the kernels above are faster. The forward still refuses a non-finite grid, in a pass of its own; with
// the refusal off (PSCFAST_CHECK_FINITE=0) the kernels above run, which sample a NaN as a point outside the image
// where ATen's sampler gives NaN.
constexpr int64_t kAtenForwardChannels = 2, kAtenGridGradChannels = 16;

bool resized(const at::Tensor& grid, c10::IntArrayRef out_size) {
  return grid.size(1) != out_size[0] || grid.size(2) != out_size[1];
}

bool aten_forward(const at::Tensor& x, const at::Tensor& grid, c10::IntArrayRef out_size) {
  return x.size(1) <= kAtenForwardChannels && !resized(grid, out_size) && check_finite_enabled();
}

// Faster still for one float channel, bilinear, on a CPU with AVX2: the intrinsics loop (warp_avx2.h), which
// checks the grid as it converts it instead of in a pass of its own.
bool fused_forward(const at::Tensor& x, const at::Tensor& grid, c10::IntArrayRef out_size, c10::string_view mode) {
  return x.scalar_type() == at::kFloat && x.size(1) == 1 && !resized(grid, out_size) &&
         parse_mode(std::string(mode)) == SampleMode::kBilinear && cpu_warp::has_avx2();
}

bool aten_backward(const at::Tensor& x, const at::Tensor& grid, c10::IntArrayRef out_size, bool nearest,
                   std::array<bool, 2> mask) {
  if (nearest || resized(grid, out_size) || !mask[1] || !check_finite_enabled()) return false;
  return mask[0] ? x.size(1) == 1 : x.size(1) <= kAtenGridGradChannels;
}

// Whether a contiguous floating tensor holds NaN or infinity: the forward's check of a grid that its kernels do
// not read whole (ATen's sampler; a resized grid, whose nodes between output points no point reads).
bool any_nonfinite(const at::Tensor& t) {
  std::atomic<int> bad{0};
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "warp_cpu_finite", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      if (cpu_warp::any_nonfinite(p + begin, end - begin)) bad = 1;
    });
  });
  return bad;
}

int64_t aten_mode(c10::string_view mode) { return static_cast<int64_t>(parse_mode(std::string(mode))); }
int64_t aten_padding(c10::string_view pad) { return static_cast<int64_t>(parse_padding(std::string(pad))); }

at::Tensor warp_cpu(const at::Tensor& x_, const at::Tensor& grid_, c10::IntArrayRef out_size, c10::string_view mode,
                    c10::string_view padding_mode, bool align_corners) {
  check_warp_inputs(x_, grid_, out_size);
  const auto compute = compute_type(x_);
  const auto x = widened(x_, compute), grid = widened(grid_, compute);
  if (fused_forward(x, grid, out_size, mode)) {
    auto out = at::empty({x.size(0), 1, out_size[0], out_size[1]}, x.options());
    const Plan<float> P(x.sizes(), grid, out_size[0], out_size[1], mode, padding_mode, align_corners);
    const int bad = fused_forward_impl(P, x.const_data_ptr<float>(), grid.const_data_ptr<float>(),
                                       out.mutable_data_ptr<float>(), static_cast<float*>(nullptr));
    TORCH_CHECK_VALUE(!bad || !check_finite_enabled(), kNonfinite);
    return narrowed(out, x_.scalar_type());
  }
  if (aten_forward(x, grid, out_size)) {
    TORCH_CHECK_VALUE(!any_nonfinite(grid), kNonfinite);
    const auto out = at::grid_sampler_2d(x, grid, aten_mode(mode), aten_padding(padding_mode), align_corners);
    return narrowed(out, x_.scalar_type());
  }
  const bool check = check_finite_enabled();
  TORCH_CHECK_VALUE(!check || !resized(grid, out_size) || !any_nonfinite(grid), kNonfinite);
  auto out = at::empty({x.size(0), x.size(1), out_size[0], out_size[1]}, x.options());
  int bad = 0;
  AT_DISPATCH_FLOATING_TYPES(compute, "warp_cpu", [&] {
    const Plan<scalar_t> P(x.sizes(), grid, out_size[0], out_size[1], mode, padding_mode, align_corners);
    bad = forward_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                       out.mutable_data_ptr<scalar_t>());
  });
  TORCH_CHECK_VALUE(!bad || !check, kNonfinite);
  return narrowed(out, x_.scalar_type());
}

// The forward with d(out)/d(grid), (N, C, Ho, Wo, 2), for the autograd kernel (warp_autograd.cpp), which then
// computes the grid's gradient as a product: bilinear sampling at a grid of the output's size, float and double.
std::tuple<at::Tensor, at::Tensor> warp_jacobian_cpu(const at::Tensor& x_, const at::Tensor& grid_,
                                                     c10::string_view mode, c10::string_view padding_mode,
                                                     bool align_corners) {
  const std::array<int64_t, 2> size = {grid_.dim() == 4 ? grid_.size(1) : 0, grid_.dim() == 4 ? grid_.size(2) : 0};
  check_warp_inputs(x_, grid_, size);
  TORCH_CHECK(parse_mode(std::string(mode)) == SampleMode::kBilinear,
              "pscfast::_warp_with_jacobian: bilinear sampling only, got mode ", mode);
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "pscfast::_warp_with_jacobian: float or double only, got ", x_.scalar_type());
  const auto x = x_.contiguous(), grid = grid_.contiguous();
  auto out = at::empty({x.size(0), x.size(1), size[0], size[1]}, x.options());
  auto jac = at::empty({x.size(0), x.size(1), size[0], size[1], 2}, x.options());
  int bad = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_jacobian_cpu", [&] {
    const Plan<scalar_t> P(x.sizes(), grid, size[0], size[1], mode, padding_mode, align_corners);
    bad = fused_forward_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), jac.mutable_data_ptr<scalar_t>());
  });
  TORCH_CHECK_VALUE(!bad || !check_finite_enabled(), kNonfinite);
  return {out, jac};
}

// out[2 i + k] = g[i] j[2 i + k], k = 0, 1.
template <typename T>
PSC_MULTIVERSION void scale_pairs(const T* __restrict g, const T* __restrict j, int64_t n, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    out[2 * i] = g[i] * j[2 * i];
    out[2 * i + 1] = g[i] * j[2 * i + 1];
  }
}

// The grid's gradient from _warp_with_jacobian's: dgrid[n, p] = sum over c of grad_out[n, c, p] jacobian[n, c, p]
// (a broadcast multiply over the last dimension of two costs ATen four times this loop).
at::Tensor warp_jacobian_product_cpu(const at::Tensor& grad_out, const at::Tensor& jacobian) {
  TORCH_CHECK(jacobian.dim() == 5 && jacobian.size(4) == 2 && grad_out.dim() == 4 &&
                  grad_out.sizes() == jacobian.sizes().slice(0, 4) && grad_out.scalar_type() == jacobian.scalar_type(),
              "pscfast::_warp_jacobian_product: grad_out (N, C, h, w) and jacobian (N, C, h, w, 2) of one dtype, got ",
              grad_out.sizes(), " ", grad_out.scalar_type(), " and ", jacobian.sizes(), " ", jacobian.scalar_type());
  const auto g = grad_out.contiguous(), j = jacobian.contiguous();
  const int64_t N = j.size(0), C = j.size(1), S = j.size(2) * j.size(3);
  auto dgrid = at::empty({N, j.size(2), j.size(3), 2}, j.options());
  AT_DISPATCH_FLOATING_TYPES(j.scalar_type(), "warp_jacobian_product_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* jp = j.const_data_ptr<scalar_t>();
    scalar_t* dp = dgrid.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, C * S)),
                     [&](int64_t begin, int64_t end) {
                       if (C == 1)
                         return scale_pairs(gp + begin * S, jp + 2 * begin * S, (end - begin) * S, dp + 2 * begin * S);
                       for (int64_t n = begin; n < end; ++n)
                         for (int64_t p = 0; p < S; ++p) {
                           scalar_t sx = 0, sy = 0;
                           for (int64_t c = 0; c < C; ++c) {
                             const int64_t i = (n * C + c) * S + p;
                             sx += gp[i] * jp[2 * i];
                             sy += gp[i] * jp[2 * i + 1];
                           }
                           dp[2 * (n * S + p)] = sx;
                           dp[2 * (n * S + p) + 1] = sy;
                         }
                     });
  });
  return dgrid;
}

// Only the gradients in output_mask are computed; the image is read only for the grid's.
std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_,
                                                     const at::Tensor& grid_, c10::string_view mode,
                                                     c10::string_view padding_mode, bool align_corners,
                                                     std::array<bool, 2> output_mask) {
  check_warp_inputs(x_, grid_, grad_out.sizes().slice(2));
  check_warp_grad(grad_out, x_);
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto compute = compute_type(x_);
  if (aten_backward(x_, grid_, grad_out.sizes().slice(2), nearest, output_mask)) {
    const auto [dx, dgrid] = at::grid_sampler_2d_backward(
        widened(grad_out, compute), widened(x_, compute), widened(grid_, compute), aten_mode(mode),
        aten_padding(padding_mode), align_corners, {output_mask[0], output_mask[1]});
    return {narrowed(output_mask[0] ? dx : at::Tensor(), x_.scalar_type()), narrowed(dgrid, x_.scalar_type())};
  }
  const auto options = x_.options().dtype(compute);
  at::Tensor dx = zeros_if(output_mask[0], x_.sizes(), options);  // backward_x_impl accumulates
  at::Tensor dgrid;
  if (output_mask[1]) dgrid = nearest ? at::zeros(grid_.sizes(), options) : at::empty(grid_.sizes(), options);
  const bool grid_grad = dgrid.defined() && !nearest;  // nearest sampling has no grid gradient: dgrid stays 0
  if (dx.defined() || grid_grad) {
    const auto grid = widened(grid_, compute), gout = widened(grad_out, compute);
    AT_DISPATCH_FLOATING_TYPES(compute, "warp_backward_cpu", [&] {
      const Plan<scalar_t> P(x_.sizes(), grid, gout.size(2), gout.size(3), mode, padding_mode, align_corners);
      // one pass for both where every thread gets whole samples to own
      if (dx.defined() && grid_grad && P.direct && P.N >= at::get_num_threads()) {
        const auto x = widened(x_, compute);
        backward_both_direct(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                             gout.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                             dgrid.mutable_data_ptr<scalar_t>());
        return;
      }
      if (dx.defined())
        backward_x_impl(P, grid.const_data_ptr<scalar_t>(), gout.const_data_ptr<scalar_t>(),
                        dx.mutable_data_ptr<scalar_t>());
      if (grid_grad) {
        const auto x = widened(x_, compute);
        backward_grid_impl(P, x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
                           gout.const_data_ptr<scalar_t>(), dgrid.mutable_data_ptr<scalar_t>());
      }
    });
  }
  return {narrowed(dx, x_.scalar_type()), narrowed(dgrid, x_.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("warp", &warp_cpu);
  m.impl("_warp_backward", &warp_backward_cpu);
  m.impl("_warp_with_jacobian", &warp_jacobian_cpu);
  m.impl("_warp_jacobian_product", &warp_jacobian_product_cpu);
}

}  // namespace pscfast

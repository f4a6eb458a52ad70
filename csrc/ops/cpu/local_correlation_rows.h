// The CPU local correlation's backward for kernel_size 1, stride 1 and no padding (PWC-Net's, GLU-Net's and
// FlowNetC's volumes, any patch and dilation_patch). With out[n, (py, px), i, j] = sum_c a[n, c, i, j]
// b[n, c, i + oy, j + ox], each gradient is a sum over displacements of products of rows shifted by the
// displacement, so the kernels read a, b and the output gradient in their own (N, C, H, W) layout, eight columns
// at a time, and copy nothing larger than a few planes (those of b between zero borders, so that a shifted read
// needs no bounds check). float16 and bfloat16 are read as such and accumulated in float32.
//
//   grad a[c, i, j] = sum_p gout[p, i, j] b[c, i + oy, j + ox]: per block of kChannels channels (their planes of b
//     between zero borders), registers hold the sums over displacements.
//   grad b[c, r, x] = sum_p gout[p, r - oy, x - ox] a[c, r - oy, x - ox]: per channel, one accumulator plane per
//     displacement along x, filled row by row without shifts (rows r = i + oy), then summed shifted.
// (A forward of the same form, row by row over all channels, measured 3-6x slower than the channels-last dot
// products of local_correlation_kernel.cpp on one core, at GLU-Net's, PWC-Net's and FlowNetC's shapes.)
// Every output element is written by one task, its sums in a fixed order: bitwise reproducible, independent of
// the thread count.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/common/local_correlation_geometry.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace cpu_local_correlation {

constexpr int kLanes = 8;     // output columns per step (one AVX2 vector of float)
constexpr int kChannels = 4;  // channels of grad a summed at once: each output-gradient load feeds four

// Whether these kernels serve geometry G (the rows at least one step wide).
inline bool applies(const CorrGeometry& G) {
  return G.kh == 1 && G.kw == 1 && G.sh == 1 && G.sw == 1 && G.padh == 0 && G.padw == 0 && G.W >= kLanes;
}

// Left columns of zeros before a row of b so that column j + ox of every displacement is inside the padded row,
// and the padded width.
inline int left_pad(const CorrGeometry& G) { return G.rw * G.dpw; }
inline int padded_width(const CorrGeometry& G) { return G.W + (G.PW - 1) * G.dpw; }

// Step starts along a row: every kLanes columns; the last step ends at the row's end (it overlaps the one before
// when kLanes does not divide W: both write the same values).
inline std::vector<int> steps(int W) {
  std::vector<int> s;
  for (int j = 0; j + kLanes <= W; j += kLanes) s.push_back(j);
  if (W % kLanes) s.push_back(W - kLanes);
  return s;
}

// Copies n values of `src` into dst as A.
template <typename T, typename A>
PSC_MULTIVERSION void widen(const T* __restrict src, int n, A* __restrict dst) {
  for (int i = 0; i < n; ++i) dst[i] = static_cast<A>(src[i]);
}

// grad_k[l] = sum over displacements (py, px) with a partner row of gout_p[l] bp_k[row(py) + col(px) + l], for K
// channels and kLanes columns.
template <int K, typename T, typename A>
PSC_MULTIVERSION void grad_a_step(int PH, int PW, const T* __restrict gout, int64_t g_step, const A* __restrict bp,
                                  int64_t bp_step, const int* __restrict rows, const int* __restrict cols,
                                  T* __restrict out, int64_t out_step) {
  A acc[K][kLanes] = {};
  for (int py = 0; py < PH; ++py) {
    if (rows[py] < 0) continue;
    const A* br = bp + rows[py];
    for (int px = 0; px < PW; ++px) {
      A gv[kLanes];
      const T* g = gout + (static_cast<int64_t>(py) * PW + px) * g_step;
      for (int l = 0; l < kLanes; ++l) gv[l] = static_cast<A>(g[l]);
      for (int k = 0; k < K; ++k)
        for (int l = 0; l < kLanes; ++l) acc[k][l] += gv[l] * br[k * bp_step + cols[px] + l];
    }
  }
  for (int k = 0; k < K; ++k)
    for (int l = 0; l < kLanes; ++l) out[k * out_step + l] = static_cast<T>(acc[k][l]);
}

template <typename T, typename A>
void grad_a_step_n(int K, int PH, int PW, const T* gout, int64_t g_step, const A* bp, int64_t bp_step, const int* rows,
                   const int* cols, T* out, int64_t out_step) {
  switch (K) {
#define PSC_CASE(k) \
  case k:           \
    return grad_a_step<k>(PH, PW, gout, g_step, bp, bp_step, rows, cols, out, out_step);
    PSC_CASE(1) PSC_CASE(2) PSC_CASE(3) PSC_CASE(4)
#undef PSC_CASE
  }
}

template <typename T>
void grad_a(const CorrGeometry& G, const T* gout, const T* b, T* da) {
  using A = at::opmath_type<T>;
  const int H = G.H, W = G.W, Wp = padded_width(G), lpad = left_pad(G);
  const int64_t plane = static_cast<int64_t>(H) * W, C = G.C, bp_step = static_cast<int64_t>(H) * Wp;
  const int64_t blocks = (C + kChannels - 1) / kChannels;
  const auto js = steps(W);
  std::vector<int> cols(G.PW);
  for (int px = 0; px < G.PW; ++px) cols[px] = G.ox(px) + lpad;
  at::parallel_for(0, G.N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> bp(static_cast<size_t>(kChannels) * bp_step, A(0));  // planes of b between zero borders
    std::vector<int> rows(G.PH);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kChannels;
      const int K = static_cast<int>(std::min<int64_t>(kChannels, C - c0));
      for (int k = 0; k < K; ++k)
        for (int y = 0; y < H; ++y)
          widen(b + ((n * C + c0 + k) * H + y) * W, W, &bp[k * bp_step + static_cast<int64_t>(y) * Wp + lpad]);
      for (int i = 0; i < H; ++i) {
        for (int py = 0; py < G.PH; ++py) {
          const int r = i + G.oy(py * G.PW);
          rows[py] = r >= 0 && r < H ? r * Wp : -1;
        }
        for (const int j : js)
          grad_a_step_n(K, G.PH, G.PW, gout + (n * G.P2 * H + i) * W + j, plane, bp.data() + j, bp_step, rows.data(),
                        cols.data(), da + ((n * C + c0) * H + i) * W + j, plane);
      }
    }
  });
}

// acc_px[l] += gout_(py, px)[l] * av[l] for every displacement px along x of one displacement row.
template <typename T, typename A>
PSC_MULTIVERSION void grad_b_accumulate(int W, int PW, const T* __restrict gout, int64_t g_step, const A* __restrict av,
                                        A* __restrict acc, int64_t acc_step) {
  for (int px = 0; px < PW; ++px) {
    const T* g = gout + px * g_step;
    A* d = acc + px * acc_step;
    for (int j = 0; j < W; ++j) d[j] += static_cast<A>(g[j]) * av[j];
  }
}

// sum[x] = sum_px acc_px[shift_px + x].
template <typename A>
PSC_MULTIVERSION void grad_b_collect(int W, int PW, const A* __restrict acc, int64_t acc_step,
                                     const int* __restrict shift, A* __restrict sum) {
  std::fill(sum, sum + W, A(0));
  for (int px = 0; px < PW; ++px) {
    const A* s = acc + px * acc_step + shift[px];
    for (int x = 0; x < W; ++x) sum[x] += s[x];
  }
}

template <typename T, typename A>
PSC_MULTIVERSION void narrow(const A* __restrict src, int n, T* __restrict dst) {
  for (int i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

template <typename T>
void grad_b(const CorrGeometry& G, const T* gout, const T* a, T* db) {
  using A = at::opmath_type<T>;
  const int H = G.H, W = G.W, PW = G.PW;
  // accumulator rows hold column x - ox of a product row at x - ox + pad: pad covers the largest forward ox
  const int pad = (G.PW - 1 - G.rw) * G.dpw, Wp = padded_width(G);
  const int64_t plane = static_cast<int64_t>(H) * W, C = G.C, acc_step = static_cast<int64_t>(H) * Wp;
  std::vector<int> shift(PW);
  for (int px = 0; px < PW; ++px) shift[px] = pad - G.ox(px);
  at::parallel_for(0, G.N * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(PW) * acc_step), av(W), sum(W);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / C;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int i = 0; i < H; ++i) {
        widen(a + t * plane + static_cast<int64_t>(i) * W, W, av.data());
        for (int py = 0; py < G.PH; ++py) {
          const int r = i + G.oy(py * PW);
          if (r < 0 || r >= H) continue;
          grad_b_accumulate(W, PW, gout + ((n * G.P2 + py * PW) * H + i) * W, plane, av.data(),
                            acc.data() + static_cast<int64_t>(r) * Wp + pad, acc_step);
        }
      }
      for (int r = 0; r < H; ++r) {
        grad_b_collect(W, PW, acc.data() + static_cast<int64_t>(r) * Wp, acc_step, shift.data(), sum.data());
        narrow(sum.data(), W, db + t * plane + static_cast<int64_t>(r) * W);
      }
    }
  });
}

}  // namespace cpu_local_correlation
}  // namespace pscfast

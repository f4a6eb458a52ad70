// pscfast::kernel_soft_argmax on the CPU: forward and backward, float and double, OpenMP through
// at::parallel_for over tiles of source positions. corr (N, T, S) is read target-row by target-row, so the
// inner loops run over contiguous source positions. Math and conventions: ops/common/soft_argmax_math.h.
// Every output and gradient element is written by one task in a fixed order: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "ops/common/soft_argmax_checks.h"
#include "ops/common/soft_argmax_math.h"

namespace pscfast {
namespace {

constexpr int kTile = 64;  // source positions per task

// The per-source statistics of one tile: norm, argmax, softmax max and sum, expected position (cells).
template <typename T>
struct Tile {
  int ns;
  T r[kTile], zmax[kTile], sum[kTile], x[kTile], y[kTile];
  int bx[kTile], by[kTile];
  bool big[kTile];  // ||c|| > eps: the norm is not clamped
};

template <typename T>
struct Rows {
  const SoftArgmaxShape& sh;
  const T* c;  // corr of this sample, offset to the tile's first source position
  const std::vector<T>& g;  // g[d] = exp(-d^2 / (2 sigma^2))
  T beta;

  const T* row(int64_t q) const { return c + q * sh.S; }
  T kernel(int qx, int qy, const Tile<T>& t, int s) const { return g[std::abs(qx - t.bx[s])] * g[std::abs(qy - t.by[s])]; }

  void stats(Tile<T>& t) const {
    T sq[kTile], best[kTile];
    int arg[kTile];
    for (int s = 0; s < t.ns; ++s) sq[s] = T(0), best[s] = row(0)[s], arg[s] = 0;
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      for (int s = 0; s < t.ns; ++s) {
        sq[s] += cq[s] * cq[s];
        if (cq[s] > best[s]) best[s] = cq[s], arg[s] = static_cast<int>(q);
      }
    }
    for (int s = 0; s < t.ns; ++s) {
      const T norm = std::sqrt(sq[s]);
      t.big[s] = norm > static_cast<T>(kNormEps);
      t.r[s] = t.big[s] ? norm : static_cast<T>(kNormEps);
      t.bx[s] = arg[s] % sh.Wt;
      t.by[s] = arg[s] / sh.Wt;
      t.zmax[s] = -INFINITY;
      t.sum[s] = t.x[s] = t.y[s] = T(0);
    }
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
      for (int s = 0; s < t.ns; ++s) t.zmax[s] = std::max(t.zmax[s], beta * kernel(qx, qy, t, s) * (cq[s] / t.r[s]));
    }
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
      for (int s = 0; s < t.ns; ++s) {
        const T e = std::exp(beta * kernel(qx, qy, t, s) * (cq[s] / t.r[s]) - t.zmax[s]);
        t.sum[s] += e;
        t.x[s] += e * static_cast<T>(qx);
        t.y[s] += e * static_cast<T>(qy);
      }
    }
    for (int s = 0; s < t.ns; ++s) t.x[s] /= t.sum[s], t.y[s] /= t.sum[s];
  }
};

template <typename T>
std::vector<T> gaussian_table(int size, double sigma) {
  std::vector<T> g(size);
  for (int d = 0; d < size; ++d) g[d] = std::exp(-static_cast<T>(d * d) / static_cast<T>(2 * sigma * sigma));
  return g;
}

template <typename T, typename F>
void for_tiles(const SoftArgmaxShape& sh, F body) {
  const int64_t tiles = (sh.S + kTile - 1) / kTile;
  at::parallel_for(0, sh.N * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, s0 = (job % tiles) * kTile;
      body(n, s0, static_cast<int>(std::min<int64_t>(kTile, sh.S - s0)));
    }
  });
}

at::Tensor soft_argmax_cpu(const at::Tensor& corr_, int64_t Ht, int64_t Wt, double beta, double sigma) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, Ht, Wt, sigma);
  const auto corr = corr_.contiguous();
  auto out = at::empty({sh.N, corr.size(2), corr.size(3), 2}, corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "kernel_soft_argmax_cpu", [&] {
    using T = scalar_t;
    const auto g = gaussian_table<T>(std::max(sh.Ht, sh.Wt), sigma);
    const T* c = corr.const_data_ptr<T>();
    T* o = out.mutable_data_ptr<T>();
    for_tiles<T>(sh, [&](int64_t n, int64_t s0, int ns) {
      const Rows<T> rows{sh, c + n * sh.T * sh.S + s0, g, static_cast<T>(beta)};
      Tile<T> t;
      t.ns = ns;
      rows.stats(t);
      for (int s = 0; s < ns; ++s) {
        T* os = o + (n * sh.S + s0 + s) * 2;
        os[0] = to_normalised(t.x[s], sh.Wt);
        os[1] = to_normalised(t.y[s], sh.Ht);
      }
    });
  });
  return out;
}

at::Tensor soft_argmax_backward_cpu(const at::Tensor& grad_out, const at::Tensor& corr_, int64_t Ht, int64_t Wt,
                                   double beta, double sigma) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, Ht, Wt, sigma);
  check_soft_argmax_grad(grad_out, corr_, sh);
  const auto corr = corr_.contiguous();
  const auto gout = grad_out.contiguous();
  auto grad = at::empty_like(corr);
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "kernel_soft_argmax_backward_cpu", [&] {
    using T = scalar_t;
    const auto g = gaussian_table<T>(std::max(sh.Ht, sh.Wt), sigma);
    const T* c = corr.const_data_ptr<T>();
    const T* go = gout.const_data_ptr<T>();
    T* gc = grad.mutable_data_ptr<T>();
    const T B = static_cast<T>(beta), eps = static_cast<T>(kNormEps);
    for_tiles<T>(sh, [&](int64_t n, int64_t s0, int ns) {
      const Rows<T> rows{sh, c + n * sh.T * sh.S + s0, g, B};
      Tile<T> t;
      t.ns = ns;
      rows.stats(t);
      T xb[kTile], yb[kTile], dv[kTile], dn[kTile];
      for (int s = 0; s < ns; ++s) {
        const T* gs = go + (n * sh.S + s0 + s) * 2;
        xb[s] = gs[0] * cell_scale<T>(sh.Wt);
        yb[s] = gs[1] * cell_scale<T>(sh.Ht);
        dv[s] = xb[s] * t.x[s] + yb[s] * t.y[s];
        dn[s] = T(0);
      }
      T* gn = gc + n * sh.T * sh.S + s0;
      for (int64_t q = 0; q < sh.T; ++q) {  // nb_q, kept in the gradient buffer
        const T* cq = rows.row(q);
        T* gq = gn + q * sh.S;
        const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
        for (int s = 0; s < ns; ++s) {
          const T k = rows.kernel(qx, qy, t, s), nq = cq[s] / t.r[s];
          const T m = std::exp(B * k * nq - t.zmax[s]) / t.sum[s];
          const T nb = B * k * m * (xb[s] * static_cast<T>(qx) + yb[s] * static_cast<T>(qy) - dv[s]);
          gq[s] = nb;
          dn[s] += nq * nb;
        }
      }
      for (int64_t q = 0; q < sh.T; ++q) {
        const T* cq = rows.row(q);
        T* gq = gn + q * sh.S;
        for (int s = 0; s < ns; ++s)
          gq[s] = t.big[s] ? (gq[s] - (cq[s] / t.r[s]) * dn[s]) / t.r[s] : gq[s] / eps;
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("kernel_soft_argmax", &soft_argmax_cpu);
  m.impl("_kernel_soft_argmax_backward", &soft_argmax_backward_cpu);
}

}  // namespace pscfast

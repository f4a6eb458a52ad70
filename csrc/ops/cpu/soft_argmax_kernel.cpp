// pscfast::kernel_soft_argmax on the CPU: forward and backward, float and double, OpenMP through
// at::parallel_for over tiles of source positions. corr (N, T, S) is read target-row by target-row, so the
// inner loops run over contiguous source positions. Math and conventions: ops/common/soft_argmax_math.h.
// Every output and gradient element is written by one task in a fixed order: deterministic.
// The arithmetic runs in double for float maps too (rounded once on the way out): a sequential float sum of
// T terms loses up to T eps (1e-5 on a 32x32 target) where SFNet's vectorised torch sums lose log(T) eps,
// and each float rounding of the divisor r moves every logit by beta eps. Double costs the CPU's scalar
// loops little next to their exp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>
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
using Acc = double;

// The per-source statistics of one tile: divisor r, argmax of c, max of k n and its position, softmax sum,
// expected offset (dx, dy) from that position (cells).
struct Tile {
  int ns;
  Acc r[kTile], zmax[kTile], sum[kTile], dx[kTile], dy[kTile];
  int bx[kTile], by[kTile], zx[kTile], zy[kTile];
  bool project[kTile];  // r varies with the row: the backward removes the radial part
};

template <typename T>
struct Rows {
  const SoftArgmaxShape& sh;
  const T* c;  // corr of this sample, offset to the tile's first source position
  const std::vector<Acc>& g;  // g[d] = exp(-d^2 / (2 sigma^2))
  Acc beta;

  const T* row(int64_t q) const { return c + q * sh.S; }
  Acc kernel(int qx, int qy, const Tile& t, int s) const { return g[std::abs(qx - t.bx[s])] * g[std::abs(qy - t.by[s])]; }
  // m_q up to the factor 1 / sum
  Acc weight(Acc z, const Tile& t, int s) const { return std::exp(beta * (z - t.zmax[s])); }

  void stats(Tile& t) const {
    Acc sq[kTile];
    T best[kTile];
    int arg[kTile], zarg[kTile];
    for (int s = 0; s < t.ns; ++s) sq[s] = Acc(0), best[s] = row(0)[s], arg[s] = 0;
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      for (int s = 0; s < t.ns; ++s) {
        sq[s] += static_cast<Acc>(cq[s]) * cq[s];
        if (cq[s] > best[s]) best[s] = cq[s], arg[s] = static_cast<int>(q);
      }
    }
    for (int s = 0; s < t.ns; ++s) {
      t.r[s] = row_scale(sh.norm, sq[s], &t.project[s]);
      t.bx[s] = arg[s] % sh.Wt;
      t.by[s] = arg[s] / sh.Wt;
      t.zmax[s] = -INFINITY;
      zarg[s] = 0;
      t.sum[s] = t.dx[s] = t.dy[s] = Acc(0);
    }
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
      for (int s = 0; s < t.ns; ++s) {
        const Acc z = kernel(qx, qy, t, s) * (cq[s] / t.r[s]);
        if (z > t.zmax[s]) t.zmax[s] = z, zarg[s] = static_cast<int>(q);
      }
    }
    for (int s = 0; s < t.ns; ++s) t.zx[s] = zarg[s] % sh.Wt, t.zy[s] = zarg[s] / sh.Wt;
    for (int64_t q = 0; q < sh.T; ++q) {
      const T* cq = row(q);
      const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
      for (int s = 0; s < t.ns; ++s) {
        const Acc e = weight(kernel(qx, qy, t, s) * (cq[s] / t.r[s]), t, s);
        t.sum[s] += e;
        t.dx[s] += e * (qx - t.zx[s]);
        t.dy[s] += e * (qy - t.zy[s]);
      }
    }
    for (int s = 0; s < t.ns; ++s) t.dx[s] /= t.sum[s], t.dy[s] /= t.sum[s];
  }
};

std::vector<Acc> gaussian_table(int size, double sigma) {
  std::vector<Acc> g(size);
  for (int d = 0; d < size; ++d) g[d] = std::exp(-static_cast<Acc>(d * d) / (2 * sigma * sigma));
  return g;
}

template <typename F>
void for_tiles(const SoftArgmaxShape& sh, F body) {
  const int64_t tiles = (sh.S + kTile - 1) / kTile;
  at::parallel_for(0, sh.N * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, s0 = (job % tiles) * kTile;
      body(n, s0, static_cast<int>(std::min<int64_t>(kTile, sh.S - s0)));
    }
  });
}

at::Tensor soft_argmax_cpu(const at::Tensor& corr_, double beta, double sigma, c10::IntArrayRef target_size,
                           c10::string_view normalize) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, beta, sigma, target_size, normalize);
  const auto corr = corr_.contiguous();
  auto out = at::empty({sh.N, corr.size(2), corr.size(3), 2}, corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "kernel_soft_argmax_cpu", [&] {
    using T = scalar_t;
    const auto g = gaussian_table(std::max(sh.Ht, sh.Wt), sigma);
    const T* c = corr.const_data_ptr<T>();
    T* o = out.mutable_data_ptr<T>();
    for_tiles(sh, [&](int64_t n, int64_t s0, int ns) {
      const Rows<T> rows{sh, c + n * sh.T * sh.S + s0, g, beta};
      Tile t;
      t.ns = ns;
      rows.stats(t);
      for (int s = 0; s < ns; ++s) {
        T* os = o + (n * sh.S + s0 + s) * 2;
        os[0] = static_cast<T>(to_normalised(t.zx[s] + t.dx[s], sh.Wt));
        os[1] = static_cast<T>(to_normalised(t.zy[s] + t.dy[s], sh.Ht));
      }
    });
  });
  return out;
}

at::Tensor soft_argmax_backward_cpu(const at::Tensor& grad_out, const at::Tensor& corr_, double beta, double sigma,
                                    c10::IntArrayRef target_size, c10::string_view normalize) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, beta, sigma, target_size, normalize);
  check_soft_argmax_grad(grad_out, corr_, sh);
  const auto corr = corr_.contiguous();
  const auto gout = grad_out.contiguous();
  auto grad = at::empty_like(corr);
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "kernel_soft_argmax_backward_cpu", [&] {
    using T = scalar_t;
    const auto g = gaussian_table(std::max(sh.Ht, sh.Wt), sigma);
    const T* c = corr.const_data_ptr<T>();
    const T* go = gout.const_data_ptr<T>();
    T* gc = grad.mutable_data_ptr<T>();
    for_tiles(sh, [&](int64_t n, int64_t s0, int ns) {
      const Rows<T> rows{sh, c + n * sh.T * sh.S + s0, g, beta};
      Tile t;
      t.ns = ns;
      rows.stats(t);
      Acc xb[kTile], yb[kTile], dn[kTile];
      for (int s = 0; s < ns; ++s) {
        const T* gs = go + (n * sh.S + s0 + s) * 2;
        xb[s] = gs[0] * cell_scale<Acc>(sh.Wt);
        yb[s] = gs[1] * cell_scale<Acc>(sh.Ht);
        dn[s] = Acc(0);
      }
      // nb_q, kept in double for the second pass (a float copy would round it before the projection's
      // cancellation); one buffer per thread, reused across tasks
      thread_local std::vector<Acc> nbuf;
      nbuf.resize(static_cast<size_t>(sh.T) * ns);
      for (int64_t q = 0; q < sh.T; ++q) {
        const T* cq = rows.row(q);
        Acc* nbq = nbuf.data() + q * ns;
        const int qx = static_cast<int>(q % sh.Wt), qy = static_cast<int>(q / sh.Wt);
        for (int s = 0; s < ns; ++s) {
          const Acc k = rows.kernel(qx, qy, t, s), nq = cq[s] / t.r[s];
          const Acc m = rows.weight(k * nq, t, s) / t.sum[s];
          const Acc nb = beta * k * m * (xb[s] * ((qx - t.zx[s]) - t.dx[s]) + yb[s] * ((qy - t.zy[s]) - t.dy[s]));
          nbq[s] = nb;
          dn[s] += nq * nb;
        }
      }
      T* gn = gc + n * sh.T * sh.S + s0;
      for (int64_t q = 0; q < sh.T; ++q) {
        const T* cq = rows.row(q);
        const Acc* nbq = nbuf.data() + q * ns;
        T* gq = gn + q * sh.S;
        for (int s = 0; s < ns; ++s)
          gq[s] = static_cast<T>((t.project[s] ? nbq[s] - (cq[s] / t.r[s]) * dn[s] : nbq[s]) / t.r[s]);
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

// pscfast::kernel_soft_argmax on the CPU: forward and backward, float and double. Math and conventions:
// ops/common/kernel_soft_argmax_math.h.
// corr (N, T, S) is read target row by target row, so every loop runs over a tile of contiguous source
// positions: free functions over __restrict arrays without branches, which vectorise (PSC_MULTIVERSION adds
// an AVX2 build); tiles of (sample, source positions) run in parallel (at::parallel_for).
// Passes over a tile, one row at a time: 1. squared norm and first argmax of c; 2. z = k n and its first
// argmax p; 3. e = exp(beta (z - z_p)), the softmax sum and moments. The backward repeats them, then
// 4. nb and <n, nb>, 5. the projection: recomputing the statistics costs less than keeping per-element
// state between the calls, and the backward's only (N, T, S) memory is its output.
// Precision: the map's type elementwise, as SFNet's own code (float exp: exp_poly.h), except z, which is
// formed in double (see kernel_row); every sum over the target positions (squared norm, softmax sum and
// moments, <n, nb>) accumulates in double: a running float sum of T terms loses up to T eps (1e-5 on a
// 32x32 target) where SFNet's torch sums lose log(T) eps.
// Every output and gradient element is written by one task in a fixed order: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "ops/common/kernel_soft_argmax_checks.h"
#include "ops/common/kernel_soft_argmax_math.h"
#include "ops/cpu/exp_poly.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

constexpr int kTile = 64;  // source positions per task, at most

// Pass 1 over one row: sum of squares of c (sq: nullptr when the row is not normalised) and its first
// argmax.
template <typename T>
PSC_MULTIVERSION void norm_argmax_row(const T* __restrict c, int ns, int32_t q, double* __restrict sq,
                                      T* __restrict best, int32_t* __restrict arg) {
  if (sq != nullptr)
    for (int s = 0; s < ns; ++s) sq[s] += static_cast<double>(c[s]) * c[s];
  for (int s = 0; s < ns; ++s) {
    const bool gt = c[s] > best[s];
    best[s] = gt ? c[s] : best[s];
    arg[s] = gt ? q : arg[s];
  }
}

// The Gaussian's factors along one axis for every source position of a tile: w[i * ns + s] = g[|i - b[s]|],
// i over the axis' n cells.
PSC_MULTIVERSION void gaussian_factors(const double* __restrict g, int n, int ns, const int32_t* __restrict b,
                                       double* __restrict w) {
  for (int i = 0; i < n; ++i)
    for (int s = 0; s < ns; ++s) {
      const int32_t d = i - b[s];
      w[i * ns + s] = g[d < 0 ? -d : d];
    }
}

// Pass 2 over row q = (qx, qy): z = k c / r in double (z_out), k = wx[qx] wy[qy] (also in T into k_out when
// given), and the running first argmax of z. z is formed in double because its rounding error reaches the
// softmax multiplied by beta: a float z (k and n rounded, 1.5 ulp) moves the exponent beta (z - z_p) by
// 1e-4 at beta = 1000, and gave 2.2-2.7x SFNet's float32 gradient error (test_kernel_soft_argmax_sfnet).
template <typename T>
PSC_MULTIVERSION void kernel_row(const T* __restrict c, int ns, int32_t q, const double* __restrict wx,
                                 const double* __restrict wy, const double* __restrict inv_r, T* __restrict k_out,
                                 double* __restrict z_out, double* __restrict zmax, int32_t* __restrict zarg) {
  for (int s = 0; s < ns; ++s) {
    const double k = wx[s] * wy[s];
    const double z = k * (c[s] * inv_r[s]);
    if (k_out != nullptr) k_out[s] = static_cast<T>(k);
    z_out[s] = z;
    const bool gt = z > zmax[s];
    zmax[s] = gt ? z : zmax[s];
    zarg[s] = gt ? q : zarg[s];
  }
}

// Pass 3 over row (qx, qy): e = exp(beta (z - z_p)) (e_out; the exponent rounded to T once), and the sums of
// e and of e times the offset from p.
template <typename T>
PSC_MULTIVERSION void softmax_row(const double* __restrict z, int ns, double beta, T qx, T qy,
                                  const double* __restrict zmax, const T* __restrict px, const T* __restrict py,
                                  T* __restrict e_out, double* __restrict sum, double* __restrict sx,
                                  double* __restrict sy) {
  for (int s = 0; s < ns; ++s) {
    const T e = exp_poly(static_cast<T>(beta * (z[s] - zmax[s])));
    e_out[s] = e;
    sum[s] += e;
    sx[s] += static_cast<double>(e) * (qx - px[s]);
    sy[s] += static_cast<double>(e) * (qy - py[s]);
  }
}

// Pass 4 over row (qx, qy): nb = beta k m (xb ((qx - px) - dx) + yb ((qy - py) - dy)) with m = e / sum (into
// out), and dn += n nb.
template <typename T>
PSC_MULTIVERSION void nb_row(const T* __restrict c, const T* __restrict k, const T* __restrict e, int ns, T beta, T qx,
                             T qy, const T* __restrict r, const T* __restrict sum, const T* __restrict px,
                             const T* __restrict py, const T* __restrict dx, const T* __restrict dy,
                             const T* __restrict xb, const T* __restrict yb, T* __restrict out, double* __restrict dn) {
  for (int s = 0; s < ns; ++s) {
    const T m = e[s] / sum[s];
    const T nb = beta * k[s] * m * (xb[s] * ((qx - px[s]) - dx[s]) + yb[s] * ((qy - py[s]) - dy[s]));
    out[s] = nb;
    dn[s] += static_cast<double>(c[s] / r[s]) * nb;
  }
}

// Pass 5 over one row: d L / d c = (nb - n <n, nb>) / r, pdn = <n, nb> where the row's norm varies, else 0.
template <typename T>
PSC_MULTIVERSION void project_row(const T* __restrict c, int ns, const T* __restrict r, const T* __restrict pdn,
                                  T* __restrict out) {
  for (int s = 0; s < ns; ++s) out[s] = (out[s] - (c[s] / r[s]) * pdn[s]) / r[s];
}

// The per-source statistics of one tile of source positions: divisor r, argmax of c (bx, by), argmax p of
// k n (px, py), softmax sum and expected offset (dx, dy) from p, in cells.
template <typename T>
struct Tile {
  int ns;
  T r[kTile], px[kTile], py[kTile], sum[kTile], dx[kTile], dy[kTile];
  int32_t bx[kTile], by[kTile];
  bool project[kTile];  // r varies with the row: the backward removes the radial part
};

// Buffers of a tile, reused across a chunk of tiles: the Gaussian's factors (Wt x ns, Ht x ns); z, e and, for the
// backward, k of every row (T x ns).
template <typename T>
struct Buffers {
  std::vector<double> wx, wy, z;
  std::vector<T> e, k;
};

template <typename T>
class Rows {
 public:
  Rows(const SoftArgmaxShape& sh, const T* c, const std::vector<double>& g, double beta)
      : sh_(sh), c_(c), g_(g), beta_(beta) {}

  const T* row(int64_t q) const { return c_ + q * sh_.S; }

  // Passes 1-3: the tile's statistics; e and, when keep_k, k of every row left in buf.
  void stats(Tile<T>& t, Buffers<T>& buf, bool keep_k) const {
    const int ns = t.ns;
    const size_t size = static_cast<size_t>(sh_.T) * ns;
    buf.z.resize(size);
    buf.e.resize(size);
    if (keep_k) buf.k.resize(size);
    double sq[kTile], inv_r[kTile], zmax[kTile], sum[kTile], sx[kTile], sy[kTile];
    T best[kTile];
    int32_t arg[kTile], zarg[kTile];
    std::fill(sq, sq + ns, 0.0);
    std::copy(row(0), row(0) + ns, best);
    std::fill(arg, arg + ns, 0);
    const bool normalised = sh_.norm != RowNorm::kNone;
    for (int64_t q = 0; q < sh_.T; ++q)
      norm_argmax_row(row(q), ns, static_cast<int32_t>(q), normalised ? sq : nullptr, best, arg);
    for (int s = 0; s < ns; ++s) {
      const double r = row_scale(sh_.norm, sq[s], &t.project[s]);
      t.r[s] = static_cast<T>(r);
      inv_r[s] = 1.0 / r;
      t.bx[s] = arg[s] % sh_.Wt;
      t.by[s] = arg[s] / sh_.Wt;
    }
    buf.wx.resize(static_cast<size_t>(sh_.Wt) * ns);
    buf.wy.resize(static_cast<size_t>(sh_.Ht) * ns);
    gaussian_factors(g_.data(), sh_.Wt, ns, t.bx, buf.wx.data());
    gaussian_factors(g_.data(), sh_.Ht, ns, t.by, buf.wy.data());
    std::fill(zmax, zmax + ns, -INFINITY);
    std::fill(zarg, zarg + ns, 0);
    for (int64_t q = 0; q < sh_.T; ++q)
      kernel_row(row(q), ns, static_cast<int32_t>(q), buf.wx.data() + (q % sh_.Wt) * ns,
                 buf.wy.data() + (q / sh_.Wt) * ns, inv_r, keep_k ? buf.k.data() + q * ns : nullptr,
                 buf.z.data() + q * ns, zmax, zarg);
    for (int s = 0; s < ns; ++s) {
      t.px[s] = static_cast<T>(zarg[s] % sh_.Wt);
      t.py[s] = static_cast<T>(zarg[s] / sh_.Wt);
    }
    std::fill(sum, sum + ns, 0.0);
    std::fill(sx, sx + ns, 0.0);
    std::fill(sy, sy + ns, 0.0);
    for (int64_t q = 0; q < sh_.T; ++q)
      softmax_row(buf.z.data() + q * ns, ns, beta_, static_cast<T>(q % sh_.Wt), static_cast<T>(q / sh_.Wt), zmax, t.px,
                  t.py, buf.e.data() + q * ns, sum, sx, sy);
    for (int s = 0; s < ns; ++s) {
      t.sum[s] = static_cast<T>(sum[s]);
      t.dx[s] = static_cast<T>(sx[s] / sum[s]);
      t.dy[s] = static_cast<T>(sy[s] / sum[s]);
    }
  }

 private:
  const SoftArgmaxShape& sh_;
  const T* c_;  // corr of this sample, offset to the tile's first source position
  const std::vector<double>& g_;
  double beta_;
};

// g[d] = exp(-d^2 / (2 sigma^2)).
std::vector<double> gaussian_table(int size, double sigma) {
  std::vector<double> g(size);
  for (int d = 0; d < size; ++d) g[d] = std::exp(-static_cast<double>(d) * d / (2 * sigma * sigma));
  return g;
}

// Runs body(n, s0, ns, buffers) over tiles of source positions, in parallel, with buffers per chunk of
// tiles. Tiles are narrowed on long rows so that a tile's row buffers (16 bytes per element) stay near 1 MiB.
template <typename T, typename F>
void for_tiles(const SoftArgmaxShape& sh, F body) {
  const int64_t width = std::clamp<int64_t>((int64_t(1) << 20) / (16 * sh.T) / 8 * 8, 8, kTile);
  const int64_t tiles = (sh.S + width - 1) / width;
  at::parallel_for(0, sh.N * tiles, 1, [&](int64_t begin, int64_t end) {
    Buffers<T> buf;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, s0 = (job % tiles) * width;
      body(n, s0, static_cast<int>(std::min<int64_t>(width, sh.S - s0)), buf);
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
    for_tiles<T>(sh, [&](int64_t n, int64_t s0, int ns, Buffers<T>& buf) {
      const Rows<T> rows(sh, c + n * sh.T * sh.S + s0, g, beta);
      Tile<T> t;
      t.ns = ns;
      rows.stats(t, buf, false);
      for (int s = 0; s < ns; ++s) {
        T* os = o + (n * sh.S + s0 + s) * 2;
        os[0] = static_cast<T>(to_normalised(static_cast<double>(t.px[s]) + t.dx[s], sh.Wt));
        os[1] = static_cast<T>(to_normalised(static_cast<double>(t.py[s]) + t.dy[s], sh.Ht));
      }
    });
  });
  return out;
}

at::Tensor soft_argmax_backward_cpu(const at::Tensor& grad_out, const at::Tensor& corr_, double beta, double sigma,
                                    c10::IntArrayRef target_size, c10::string_view normalize,
                                    std::array<bool, 1> output_mask) {
  const SoftArgmaxShape sh = check_soft_argmax(corr_, beta, sigma, target_size, normalize);
  if (!output_mask[0]) return at::Tensor();
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
    const T b = static_cast<T>(beta);
    for_tiles<T>(sh, [&](int64_t n, int64_t s0, int ns, Buffers<T>& buf) {
      const Rows<T> rows(sh, c + n * sh.T * sh.S + s0, g, beta);
      Tile<T> t;
      t.ns = ns;
      rows.stats(t, buf, true);
      T xb[kTile], yb[kTile], pdn[kTile];
      double dn[kTile];
      for (int s = 0; s < ns; ++s) {
        const T* gs = go + (n * sh.S + s0 + s) * 2;
        xb[s] = gs[0] * cell_scale<T>(sh.Wt);
        yb[s] = gs[1] * cell_scale<T>(sh.Ht);
        dn[s] = 0.0;
      }
      T* gn = gc + n * sh.T * sh.S + s0;
      for (int64_t q = 0; q < sh.T; ++q)
        nb_row(rows.row(q), buf.k.data() + q * ns, buf.e.data() + q * ns, ns, b, static_cast<T>(q % sh.Wt),
               static_cast<T>(q / sh.Wt), t.r, t.sum, t.px, t.py, t.dx, t.dy, xb, yb, gn + q * sh.S, dn);
      if (sh.norm == RowNorm::kNone) return;  // r = 1 and nothing to project: nb is the gradient
      for (int s = 0; s < ns; ++s) pdn[s] = t.project[s] ? static_cast<T>(dn[s]) : T(0);
      for (int64_t q = 0; q < sh.T; ++q) project_row(rows.row(q), ns, t.r, pdn, gn + q * sh.S);
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

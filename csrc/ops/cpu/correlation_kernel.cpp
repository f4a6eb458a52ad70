// pscfast::correlation on the CPU: float and double.
//
// Per sample and layer, each side is a (C, S) matrix: tgt on the target grid (S_t = ht * wt positions), src
// on the source grid (S_s = hs * ws). A side whose map is already at its grid's size (src: and no grid) is
// "direct": the matrix is the map itself, never copied (the reference skips interpolate there too).
// Otherwise the side is resampled into a scratch buffer, reused across a block of samples (never a copy of
// the whole batch): resized separably (A_y X A_x^T: a blend of two rows, then two taps along the row), or
// sampled at the grid (four taps). One GEMM per sample and layer writes
// out[n, l S_t : (l + 1) S_t] = R_t^T R_s; a layer with both sides direct is one batched product over the
// samples, so a single-layer correlation of maps at their grid sizes (GLU-Net's, SFNet's and RAFT's global
// correlation) is the torch.bmm of the plain PyTorch version, through the same BLAS, and costs what it costs.
// Backward, per sample and layer (batched over the samples where both sides are direct), with G = grad block
// (S_t, S_s):
//   dR_t = R_s G^T and dR_s = R_t G (GEMMs), written straight into the gradient of a direct side; otherwise
//   into scratch and sent back through the adjoint of the resampling (A_y^T dR A_x; the grid's taps), one
//   task per channel block visiting the positions in order, so every element of the input gradient is
//   summed in a fixed order; dgrid[n, s] = sum over layers (in order) and channels (in order) of
//   dR_s[c, s] * d(sample)/d(pixel) * d(pixel)/d(grid).
// A scale (RAFT's 1 / sqrt(C)) is every GEMM's alpha, forward and backward, so the output and every gradient
// (the grid's too, which is computed from dR_s) carry it without a pass of their own; with scale 1 the GEMMs
// are the plain products, bitwise torch.bmm's.
// Samples run in parallel (see for_sample_blocks). Results are bitwise reproducible for a fixed thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/common/correlation_taps.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

// One axis of a resize in -> out (F.interpolate's bilinear, align_corners=False): output d reads inputs
// i0[d], i1[d] with weights l0[d], l1[d].
template <typename T>
struct Axis {
  std::vector<int32_t> i0, i1;
  std::vector<T> l0, l1;
  Axis() = default;
  Axis(int in, int out) : i0(out), i1(out), l0(out), l1(out) {
    for (int d = 0; d < out; ++d) {
      const Lerp<T> l = resize_index_half_pixel<T>(d, in, out);
      i0[d] = l.i0, i1[d] = l.i1, l0[d] = l.l0, l1[d] = l.l1;
    }
  }
};

// out = wa a + wb b over n elements.
template <typename T>
PSC_MULTIVERSION void blend(const T* __restrict a, const T* __restrict b, T wa, T wb, int n, T* __restrict out) {
  for (int i = 0; i < n; ++i) out[i] = wa * a[i] + wb * b[i];
}

// y += w x over n elements.
template <typename T>
PSC_MULTIVERSION void axpy(const T* __restrict x, T w, int n, T* __restrict y) {
  for (int i = 0; i < n; ++i) y[i] += w * x[i];
}

// out[j] = l0[j] row[i0[j]] + l1[j] row[i1[j]]: one row's resize along x.
template <typename T>
PSC_MULTIVERSION void gather2(const T* __restrict row, const int32_t* __restrict i0, const int32_t* __restrict i1,
                              const T* __restrict l0, const T* __restrict l1, int n, T* __restrict out) {
  for (int j = 0; j < n; ++j) out[j] = l0[j] * row[i0[j]] + l1[j] * row[i1[j]];
}

// How one side of one layer reaches its grid (oh x ow) from its H x W map.
enum class Route { kDirect, kResize, kGrid };

template <typename T>
struct Side {
  Route route;
  int64_t C;
  int H, W, oh, ow;
  Axis<T> y, x;  // kResize: the taps along each axis

  Side(const at::Tensor& map, int oh_, int ow_, Route route_)
      : route(route_),
        C(map.size(1)),
        H(static_cast<int>(map.size(2))),
        W(static_cast<int>(map.size(3))),
        oh(oh_),
        ow(ow_) {
    if (route == Route::kResize) y = Axis<T>(H, oh), x = Axis<T>(W, ow);
  }
  int64_t plane() const { return static_cast<int64_t>(H) * W; }
  int S() const { return oh * ow; }
};

inline int64_t channel_grain(int64_t work) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work)); }

// R[c] = A_y X[c] A_x^T for every channel of one sample (X: C planes H x W, R: C rows of oh * ow).
template <typename T>
void resize(const T* x, const Side<T>& sd, T* R) {
  at::parallel_for(0, sd.C, channel_grain(static_cast<int64_t>(sd.oh) * (sd.W + sd.ow)), [&](int64_t c0, int64_t c1) {
    std::vector<T> row(sd.W);
    for (int64_t c = c0; c < c1; ++c) {
      const T* xc = x + c * sd.plane();
      for (int i = 0; i < sd.oh; ++i) {
        T* r = R + c * sd.S() + static_cast<int64_t>(i) * sd.ow;
        T* blended = sd.W == sd.ow ? r : row.data();  // no resize along x: the blend is the output row
        blend(xc + static_cast<int64_t>(sd.y.i0[i]) * sd.W, xc + static_cast<int64_t>(sd.y.i1[i]) * sd.W, sd.y.l0[i],
              sd.y.l1[i], sd.W, blended);
        if (sd.W != sd.ow)
          gather2(row.data(), sd.x.i0.data(), sd.x.i1.data(), sd.x.l0.data(), sd.x.l1.data(), sd.ow, r);
      }
    }
  });
}

// The adjoint of resize: dX[c] += A_y^T dR[c] A_x, output rows and positions in order.
template <typename T>
void resize_adjoint(const T* dR, const Side<T>& sd, T* dx) {
  at::parallel_for(0, sd.C, channel_grain(static_cast<int64_t>(sd.oh) * (sd.W + sd.ow)), [&](int64_t c0, int64_t c1) {
    std::vector<T> row(sd.W);
    for (int64_t c = c0; c < c1; ++c) {
      T* dc = dx + c * sd.plane();
      for (int i = 0; i < sd.oh; ++i) {
        const T* g = dR + c * sd.S() + static_cast<int64_t>(i) * sd.ow;
        const T* spread = g;  // the row spread back along x (the row itself when x is not resized)
        if (sd.W != sd.ow) {
          std::fill(row.begin(), row.end(), T(0));
          for (int j = 0; j < sd.ow; ++j) {
            row[sd.x.i0[j]] += sd.x.l0[j] * g[j];
            row[sd.x.i1[j]] += sd.x.l1[j] * g[j];
          }
          spread = row.data();
        }
        axpy(spread, sd.y.l0[i], sd.W, dc + static_cast<int64_t>(sd.y.i0[i]) * sd.W);
        axpy(spread, sd.y.l1[i], sd.W, dc + static_cast<int64_t>(sd.y.i1[i]) * sd.W);
      }
    }
  });
}

// The four taps of every grid point of one sample: (S, 4) offsets and weights (0 outside the map).
template <typename T>
struct GridTaps {
  std::vector<int32_t> off;
  std::vector<T> w;

  void fill(const T* grid_n, int S, int H, int W) {
    off.resize(4 * S);
    w.resize(4 * S);
    for (int s = 0; s < S; ++s) {
      T dpx, dpy;
      const Tap4<T> q = to_tap4(grid_taps(grid_n[2 * s], grid_n[2 * s + 1], H, W, &dpx, &dpy), W);
      for (int k = 0; k < 4; ++k) {
        off[4 * s + k] = q.off[k];
        w[4 * s + k] = q.w[k];
      }
    }
  }
};

// R[c, s] = sum_k w[s, k] x[c, off[s, k]] for every channel of one sample.
template <typename T>
void sample(const T* x, const Side<T>& sd, const GridTaps<T>& t, T* R) {
  const int S = sd.S();
  at::parallel_for(0, sd.C, channel_grain(4 * static_cast<int64_t>(S)), [&](int64_t c0, int64_t c1) {
    const int32_t* off = t.off.data();
    const T* w = t.w.data();
    for (int64_t c = c0; c < c1; ++c) {
      const T* xc = x + c * sd.plane();
      T* r = R + c * S;
      for (int s = 0; s < S; ++s) {
        const int32_t* o = off + 4 * s;
        const T* ws = w + 4 * s;
        r[s] = ws[0] * xc[o[0]] + ws[1] * xc[o[1]] + ws[2] * xc[o[2]] + ws[3] * xc[o[3]];
      }
    }
  });
}

// The adjoint of sample: dx[c, off[s, k]] += w[s, k] dR[c, s], positions and taps in order.
template <typename T>
void sample_adjoint(const T* dR, const Side<T>& sd, const GridTaps<T>& t, T* dx) {
  const int S = sd.S();
  at::parallel_for(0, sd.C, channel_grain(4 * static_cast<int64_t>(S)), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T* d = dx + c * sd.plane();
      const T* g = dR + c * S;
      for (int s = 0; s < S; ++s)
        for (int k = 0; k < 4; ++k) d[t.off[4 * s + k]] += t.w[4 * s + k] * g[s];
    }
  });
}

// dgrid[s] += sum_c dR[c, s] * d(sample_c)/d(pixel) * d(pixel)/d(grid) for one sample and layer.
template <typename T>
void grid_grad(const T* x, const Side<T>& sd, const T* grid_n, const T* dR, T* dgrid_n) {
  const int S = sd.S(), H = sd.H, W = sd.W;
  at::parallel_for(0, S, 16, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T dpx, dpy;
      const Taps<T> b = grid_taps(grid_n[2 * s], grid_n[2 * s + 1], H, W, &dpx, &dpy);
      const Tap4<T> q = to_tap4(b, W);
      const T m[4] = {T(b.in[0]), T(b.in[1]), T(b.in[2]), T(b.in[3])};
      const T fx = static_cast<T>(b.x0), fy = static_cast<T>(b.y0);
      const T e = fx + T(1) - b.px, r = b.px - fx, sy = fy + T(1) - b.py, dy = b.py - fy;
      T ax = T(0), ay = T(0);
      for (int64_t c = 0; c < sd.C; ++c) {
        const T* xc = x + c * sd.plane();
        const T v0 = m[0] * xc[q.off[0]], v1 = m[1] * xc[q.off[1]], v2 = m[2] * xc[q.off[2]], v3 = m[3] * xc[q.off[3]];
        const T g = dR[c * S + s];
        ax += g * ((v1 - v0) * sy + (v3 - v2) * dy);
        ay += g * ((v2 - v0) * e + (v3 - v1) * r);
      }
      dgrid_n[2 * s] += ax * dpx;
      dgrid_n[2 * s + 1] += ay * dpy;
    }
  });
}

// Runs fn(n0, n1) over blocks of samples. With at least as many samples as threads, the blocks run in
// parallel and each sample's resampling and GEMMs run on one thread (one parallel region per layer, and
// scratch buffers per block); otherwise one block, with the parallelism inside the resampling and GEMMs.
// Either way every sample is computed by the same code in the same order: results do not depend on timing.
// The worker threads do not inherit the caller's dispatch state, so each block leaves autograd out itself:
// the GEMMs write into outputs (mm_out, or addmm_ in place for a scale), which autograd refuses (or would
// record) for inputs that require grad.
template <typename F>
void for_sample_blocks(int64_t N, const F& fn) {
  if (N >= at::get_num_threads() && N > 1)
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      fn(n0, n1);
    });
  else
    fn(0, N);
}

// One side's matrix for a block of samples: the map's (C, S) slice of a sample when direct, else a scratch
// buffer filled by the resize or the grid sample.
template <typename T>
class SideMatrix {
 public:
  SideMatrix(const Side<T>& sd, const at::Tensor& map, const at::Tensor& grid) : sd_(sd), map_(map), grid_(grid) {
    if (sd.route != Route::kDirect) scratch_ = at::empty({sd.C, sd.S()}, map.options());
  }

  // R of sample n: a view of the map, or the scratch buffer.
  at::Tensor of(int64_t n) {
    if (sd_.route == Route::kDirect) return map_.select(0, n).reshape({sd_.C, sd_.S()});
    if (sd_.route == Route::kResize)
      resize(plane(n), sd_, scratch_.mutable_data_ptr<T>());
    else
      sample(plane(n), sd_, taps(n), scratch_.mutable_data_ptr<T>());
    return scratch_;
  }

  // A buffer for dR of a resampled side.
  at::Tensor grad_buffer() const { return at::empty_like(scratch_); }

  // dmap[n] += the adjoint of the resampling of sample n applied to dR.
  void adjoint(const at::Tensor& dR, int64_t n, at::Tensor& dmap) {
    T* d = dmap.mutable_data_ptr<T>() + n * sd_.C * sd_.plane();
    if (sd_.route == Route::kResize)
      resize_adjoint(dR.const_data_ptr<T>(), sd_, d);
    else
      sample_adjoint(dR.const_data_ptr<T>(), sd_, taps(n), d);
  }

 private:
  const T* plane(int64_t n) const { return map_.const_data_ptr<T>() + n * sd_.C * sd_.plane(); }

  // the grid's taps of sample n, filled once per sample
  const GridTaps<T>& taps(int64_t n) {
    if (taps_of_ != n) taps_.fill(grid_.const_data_ptr<T>() + n * sd_.S() * 2, sd_.S(), sd_.H, sd_.W), taps_of_ = n;
    return taps_;
  }

  const Side<T>& sd_;
  const at::Tensor& map_;
  const at::Tensor& grid_;
  at::Tensor scratch_;
  GridTaps<T> taps_;
  int64_t taps_of_ = -1;
};

// out = scale * a b, out uninitialised. Scale 1 is the plain product (what torch.bmm and torch.mm compute, to
// the bit); otherwise the BLAS takes scale as its alpha with beta = 0, which never reads out (the ATen
// kernels and the BLAS skip C when beta is 0), rather than a second pass over out.
inline void bmm_scaled(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale) {
  if (scale == 1.0)
    at::bmm_out(out, a, b);
  else
    out.baddbmm_(a, b, /*beta=*/0, /*alpha=*/scale);
}

inline void mm_scaled(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale) {
  if (scale == 1.0)
    at::mm_out(out, a, b);
  else
    out.addmm_(a, b, /*beta=*/0, /*alpha=*/scale);
}

// Each layer's routes (correlation_taps.h decides which sides are direct).
struct Plan {
  std::vector<Route> src, tgt;
};

Plan plan(at::TensorList src, at::TensorList tgt, const CorrelationGrids& g, bool has_grid) {
  Plan p;
  for (size_t l = 0; l < src.size(); ++l) {
    p.src.push_back(direct_src(src[l], g, has_grid) ? Route::kDirect : (has_grid ? Route::kGrid : Route::kResize));
    p.tgt.push_back(direct_tgt(tgt[l], g) ? Route::kDirect : Route::kResize);
  }
  return p;
}

// Both sides of layer l as they lie: the layer is one batched product (a single call, as torch.bmm is; the
// BLAS parallelises over the batch), forward and backward.
inline bool both_direct(const Plan& p, int64_t l) { return p.src[l] == Route::kDirect && p.tgt[l] == Route::kDirect; }

// A direct side's maps as (N, C, S) matrices: a view of contiguous or channels-last maps.
inline at::Tensor batch_matrix(const at::Tensor& map, int64_t S) { return map.reshape({map.size(0), map.size(1), S}); }

// The layers' maps, contiguous where they are resampled (a direct side's matrix is a view of the map in
// either stride order, which the BLAS takes as it is).
std::vector<at::Tensor> prepared(at::TensorList maps, const std::vector<Route>& routes) {
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < maps.size(); ++l) out.push_back(routes[l] == Route::kDirect ? maps[l] : maps[l].contiguous());
  return out;
}

at::Tensor correlation_cpu(at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
                           c10::IntArrayRef size, c10::IntArrayRef target_size, double scale) {
  const CorrelationGrids g = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const Plan p = plan(src_, tgt_, g, grid.defined());
  const auto src = prepared(src_, p.src), tgt = prepared(tgt_, p.tgt);
  const int64_t N = src[0].size(0), nL = static_cast<int64_t>(src.size());
  const int64_t Ss = g.Ss(), St = g.St();
  auto out = at::empty({N, nL * St, g.hs, g.ws}, src[0].options());
  if (N == 0) return out;
  auto out3 = out.view({N, nL * St, Ss});
  AT_DISPATCH_FLOATING_TYPES(src[0].scalar_type(), "correlation_cpu", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < nL; ++l) {
      auto block = out3.narrow(1, l * St, St);
      if (both_direct(p, l)) {
        bmm_scaled(block, batch_matrix(tgt[l], St).transpose(1, 2), batch_matrix(src[l], Ss), scale);
        continue;
      }
      const Side<T> ts(tgt[l], g.ht, g.wt, p.tgt[l]), ss(src[l], g.hs, g.ws, p.src[l]);
      for_sample_blocks(N, [&](int64_t n0, int64_t n1) {
        SideMatrix<T> Rt(ts, tgt[l], grid), Rs(ss, src[l], grid);
        for (int64_t n = n0; n < n1; ++n) {
          auto sample_block = block.select(0, n);
          mm_scaled(sample_block, Rt.of(n).t(), Rs.of(n), scale);
        }
      });
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> correlation_backward_cpu(
    const at::Tensor& grad_out, at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
    c10::IntArrayRef size, c10::IntArrayRef target_size, double scale, std::array<bool, 3> mask) {
  const CorrelationGrids g = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const Plan p = plan(src_, tgt_, g, grid.defined());
  const auto src = prepared(src_, p.src), tgt = prepared(tgt_, p.tgt);
  const int64_t N = src[0].size(0), nL = static_cast<int64_t>(src.size());
  const int64_t Ss = g.Ss(), St = g.St();
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == N && grad_out.size(1) == nL * St && grad_out.size(2) == g.hs &&
                  grad_out.size(3) == g.ws,
              "pscfast::_correlation_backward: grad_out must be (N, L * ht * wt, hs, ws), got ", grad_out.sizes());
  const bool need_src = mask[0], need_tgt = mask[1], need_grid = mask[2] && grid.defined();
  const auto gout = grad_out.to(src[0].scalar_type()).reshape({N, nL * St, Ss});
  // a direct side's gradient is written whole by its GEMMs; a resampled one accumulates its adjoint
  const auto grad = [&](const at::Tensor& t, bool direct) {
    return direct ? at::empty(t.sizes(), t.options()) : at::zeros(t.sizes(), t.options());
  };
  std::vector<at::Tensor> dsrc, dtgt;
  for (int64_t l = 0; l < nL; ++l) {
    if (need_src) dsrc.push_back(grad(src[l], p.src[l] == Route::kDirect));
    if (need_tgt) dtgt.push_back(grad(tgt[l], p.tgt[l] == Route::kDirect));
  }
  auto dgrid = need_grid ? at::zeros(grid.sizes(), grid.options()) : at::Tensor();  // masked: undefined (None)
  if (N == 0) return {dsrc, dtgt, dgrid};
  AT_DISPATCH_FLOATING_TYPES(src[0].scalar_type(), "correlation_backward_cpu", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < nL; ++l) {
      if (both_direct(p, l)) {
        const auto G = gout.narrow(1, l * St, St);  // (N, S_t, S_s)
        if (need_tgt) {
          auto d = dtgt[l].view({N, -1, St});
          bmm_scaled(d, batch_matrix(src[l], Ss), G.transpose(1, 2), scale);
        }
        if (need_src) {
          auto d = dsrc[l].view({N, -1, Ss});
          bmm_scaled(d, batch_matrix(tgt[l], St), G, scale);
        }
        continue;
      }
      const Side<T> ts(tgt[l], g.ht, g.wt, p.tgt[l]), ss(src[l], g.hs, g.ws, p.src[l]);
      for_sample_blocks(N, [&](int64_t n0, int64_t n1) {
        SideMatrix<T> Rt(ts, tgt[l], grid), Rs(ss, src[l], grid);
        at::Tensor dRt = need_tgt && ts.route != Route::kDirect ? Rt.grad_buffer() : at::Tensor();
        at::Tensor dRs = (need_src || need_grid) && ss.route != Route::kDirect ? Rs.grad_buffer() : at::Tensor();
        for (int64_t n = n0; n < n1; ++n) {
          const auto G = gout.select(0, n).narrow(0, l * St, St);  // (S_t, S_s)
          if (need_tgt) {
            if (ts.route == Route::kDirect) {
              auto d = dtgt[l].select(0, n).view({ts.C, St});
              mm_scaled(d, Rs.of(n), G.t(), scale);
            } else {
              mm_scaled(dRt, Rs.of(n), G.t(), scale);
              Rt.adjoint(dRt, n, dtgt[l]);
            }
          }
          if (need_src && ss.route == Route::kDirect) {
            auto d = dsrc[l].select(0, n).view({ss.C, Ss});
            mm_scaled(d, Rt.of(n), G, scale);
          } else if (need_src || need_grid) {
            mm_scaled(dRs, Rt.of(n), G, scale);
            if (need_src) Rs.adjoint(dRs, n, dsrc[l]);
            if (need_grid)
              grid_grad(src[l].const_data_ptr<T>() + n * ss.C * ss.plane(), ss, grid.const_data_ptr<T>() + n * Ss * 2,
                        dRs.const_data_ptr<T>(), dgrid.mutable_data_ptr<T>() + n * Ss * 2);
          }
        }
      });
    }
  });
  return {dsrc, dtgt, dgrid};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("correlation", &correlation_cpu);
  m.impl("_correlation_backward", &correlation_backward_cpu);
}

}  // namespace pscfast

// pscfast::correlation on the CPU: float and double.
//
// Per sample and layer: the resized tgt map R_t (C, S_t) and the resized or grid-sampled src map R_s
// (C, S_s), S_t = ht * wt and S_s = hs * ws, go to two scratch buffers reused across a block of samples (never
// a copy of the whole batch), and one GEMM writes the output block out[n, l S_t : (l + 1) S_t] = R_t^T R_s.
// Samples run in parallel (see for_sample_blocks).
// Backward, per sample and layer, with G = grad block (S_t, S_s):
//   dR_t = R_s G^T and dR_s = R_t G (GEMMs), then each is sent back through its taps (the adjoint of the
//   resampling): one task per channel block visits the positions in order, so every element of the input
//   gradient is summed in a fixed order; dgrid[n, s] = sum over layers (in order) and channels (in
//   order) of dR_s[c, s] * d(sample)/d(pixel) * d(pixel)/d(grid).
// Results are bitwise reproducible for a fixed thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/common/correlation_taps.h"

namespace pscfast {
namespace {

// The taps of every position of one map: (S, 4) offsets and weights.
template <typename T>
struct TapTable {
  std::vector<int32_t> off;
  std::vector<T> w;
};

template <typename T>
void resize_table(int oh, int ow, int H, int W, TapTable<T>& t) {
  const int S = oh * ow;
  t.off.resize(4 * S);
  t.w.resize(4 * S);
  for (int s = 0; s < S; ++s) {
    const Tap4<T> q = resize_taps<T>(s, oh, ow, H, W);
    for (int k = 0; k < 4; ++k) {
      t.off[4 * s + k] = q.off[k];
      t.w[4 * s + k] = q.w[k];
    }
  }
}

template <typename T>
void grid_table(const T* grid_n, int S, int H, int W, TapTable<T>& t) {
  t.off.resize(4 * S);
  t.w.resize(4 * S);
  for (int s = 0; s < S; ++s) {
    T dpx, dpy;
    const Tap4<T> q = to_tap4(grid_taps(grid_n[2 * s], grid_n[2 * s + 1], H, W, &dpx, &dpy), W);
    for (int k = 0; k < 4; ++k) {
      t.off[4 * s + k] = q.off[k];
      t.w[4 * s + k] = q.w[k];
    }
  }
}

inline int64_t channel_grain(int S) { return std::max<int64_t>(1, 16384 / (4 * static_cast<int64_t>(S))); }

// R[c, s] = sum_k w[s, k] x[c, off[s, k]] for every channel of one sample.
template <typename T>
void resample(const T* x, int64_t C, int64_t plane, const TapTable<T>& t, int S, T* R) {
  at::parallel_for(0, C, channel_grain(S), [&](int64_t c0, int64_t c1) {
    const int32_t* off = t.off.data();
    const T* w = t.w.data();
    for (int64_t c = c0; c < c1; ++c) {
      const T* xc = x + c * plane;
      T* r = R + c * S;
      for (int s = 0; s < S; ++s) {
        const int32_t* o = off + 4 * s;
        const T* ws = w + 4 * s;
        r[s] = ws[0] * xc[o[0]] + ws[1] * xc[o[1]] + ws[2] * xc[o[2]] + ws[3] * xc[o[3]];
      }
    }
  });
}

// The adjoint of resample: dx[c, off[s, k]] += w[s, k] dR[c, s], positions and taps in order.
template <typename T>
void scatter(const T* dR, int64_t C, int64_t plane, const TapTable<T>& t, int S, T* dx) {
  at::parallel_for(0, C, channel_grain(S), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T* d = dx + c * plane;
      const T* g = dR + c * S;
      for (int s = 0; s < S; ++s)
        for (int k = 0; k < 4; ++k) d[t.off[4 * s + k]] += t.w[4 * s + k] * g[s];
    }
  });
}

// dgrid[s] += sum_c dR[c, s] * d(sample_c)/d(pixel) * d(pixel)/d(grid) for one sample and layer.
template <typename T>
void grid_grad(const T* x, int64_t C, int H, int W, const T* grid_n, const T* dR, int S, T* dgrid_n) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  at::parallel_for(0, S, 16, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T dpx, dpy;
      const Taps<T> b = grid_taps(grid_n[2 * s], grid_n[2 * s + 1], H, W, &dpx, &dpy);
      const Tap4<T> q = to_tap4(b, W);
      const T m[4] = {T(b.in[0]), T(b.in[1]), T(b.in[2]), T(b.in[3])};
      const T fx = static_cast<T>(b.x0), fy = static_cast<T>(b.y0);
      const T e = fx + T(1) - b.px, r = b.px - fx, sy = fy + T(1) - b.py, dy = b.py - fy;
      T ax = T(0), ay = T(0);
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + c * plane;
        const T v0 = m[0] * xc[q.off[0]], v1 = m[1] * xc[q.off[1]], v2 = m[2] * xc[q.off[2]],
                v3 = m[3] * xc[q.off[3]];
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
template <typename F>
void for_sample_blocks(int64_t N, const F& fn) {
  if (N >= at::get_num_threads() && N > 1)
    at::parallel_for(0, N, 1, fn);
  else
    fn(0, N);
}

struct Layer {
  int64_t C;
  int Hs, Ws, Ht, Wt;
  int64_t ps, pt;  // plane sizes Hs * Ws, Ht * Wt
};

std::vector<Layer> layers_of(at::TensorList src, at::TensorList tgt) {
  std::vector<Layer> out;
  for (size_t l = 0; l < src.size(); ++l) {
    const int Hs = static_cast<int>(src[l].size(2)), Ws = static_cast<int>(src[l].size(3));
    const int Ht = static_cast<int>(tgt[l].size(2)), Wt = static_cast<int>(tgt[l].size(3));
    out.push_back({src[l].size(1), Hs, Ws, Ht, Wt, static_cast<int64_t>(Hs) * Ws, static_cast<int64_t>(Ht) * Wt});
  }
  return out;
}

// One layer's resize tables, built once per layer: tgt's, and src's when there is no grid (with a grid, each
// block of samples fills its own copy of src's table per sample with grid_table).
template <typename T>
struct LayerTables {
  TapTable<T> tgt, src;
  LayerTables(const Layer& ly, const CorrelationGrids& g, bool has_grid) {
    resize_table(g.ht, g.wt, ly.Ht, ly.Wt, tgt);
    if (!has_grid) resize_table(g.hs, g.ws, ly.Hs, ly.Ws, src);
  }
};

std::vector<at::Tensor> contiguous(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

at::Tensor correlation_cpu(at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
                           c10::IntArrayRef size, c10::IntArrayRef target_size) {
  const CorrelationGrids g = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const auto src = contiguous(src_), tgt = contiguous(tgt_);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const auto L = layers_of(src, tgt);
  const int64_t N = src[0].size(0), nL = static_cast<int64_t>(L.size());
  const int Ss = static_cast<int>(g.Ss()), St = static_cast<int>(g.St());
  auto out = at::empty({N, nL * St, g.hs, g.ws}, src[0].options());
  if (N == 0) return out;
  auto out3 = out.view({N, nL * St, Ss});
  AT_DISPATCH_FLOATING_TYPES(src[0].scalar_type(), "correlation_cpu", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < nL; ++l) {
      const Layer& ly = L[l];
      const LayerTables<T> tab(ly, g, grid.defined());
      for_sample_blocks(N, [&](int64_t n0, int64_t n1) {
        auto Rt = at::empty({ly.C, St}, out.options()), Rs = at::empty({ly.C, Ss}, out.options());
        TapTable<T> ts = tab.src;
        for (int64_t n = n0; n < n1; ++n) {
          resample(tgt[l].const_data_ptr<T>() + n * ly.C * ly.pt, ly.C, ly.pt, tab.tgt, St, Rt.mutable_data_ptr<T>());
          if (grid.defined()) grid_table(grid.const_data_ptr<T>() + n * Ss * 2, Ss, ly.Hs, ly.Ws, ts);
          resample(src[l].const_data_ptr<T>() + n * ly.C * ly.ps, ly.C, ly.ps, ts, Ss, Rs.mutable_data_ptr<T>());
          auto block = out3.select(0, n).narrow(0, l * St, St);
          at::mm_out(block, Rt.t(), Rs);
        }
      });
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> correlation_backward_cpu(
    const at::Tensor& grad_out, at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
    c10::IntArrayRef size, c10::IntArrayRef target_size, std::array<bool, 3> mask) {
  const CorrelationGrids g = check_correlation_inputs(src_, tgt_, grid_, size, target_size);
  const auto src = contiguous(src_), tgt = contiguous(tgt_);
  const auto grid = grid_.has_value() ? grid_->contiguous() : at::Tensor();
  const auto L = layers_of(src, tgt);
  const int64_t N = src[0].size(0), nL = static_cast<int64_t>(L.size());
  const int Ss = static_cast<int>(g.Ss()), St = static_cast<int>(g.St());
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == N && grad_out.size(1) == nL * St && grad_out.size(2) == g.hs &&
                  grad_out.size(3) == g.ws,
              "pscfast::_correlation_backward: grad_out must be (N, L * ht * wt, hs, ws), got ", grad_out.sizes());
  const bool need_src = mask[0], need_tgt = mask[1], need_grid = mask[2] && grid.defined();
  const auto gout = grad_out.to(src[0].scalar_type()).contiguous().view({N, nL * St, Ss});
  std::vector<at::Tensor> dsrc, dtgt;
  for (int64_t l = 0; l < nL; ++l) {
    if (need_src) dsrc.push_back(at::zeros(src[l].sizes(), src[l].options()));
    if (need_tgt) dtgt.push_back(at::zeros(tgt[l].sizes(), tgt[l].options()));
  }
  auto dgrid = need_grid ? at::zeros(grid.sizes(), grid.options()) : at::empty({0}, src[0].options());
  if (N == 0) return {dsrc, dtgt, dgrid};
  AT_DISPATCH_FLOATING_TYPES(src[0].scalar_type(), "correlation_backward_cpu", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < nL; ++l) {
      const Layer& ly = L[l];
      const LayerTables<T> tab(ly, g, grid.defined());
      const auto opts = gout.options();
      for_sample_blocks(N, [&](int64_t n0, int64_t n1) {
        auto Rt = at::empty({ly.C, St}, opts), Rs = at::empty({ly.C, Ss}, opts);
        auto dRt = at::empty({ly.C, St}, opts), dRs = at::empty({ly.C, Ss}, opts);
        TapTable<T> ts = tab.src;
        for (int64_t n = n0; n < n1; ++n) {
          const T* xs = src[l].const_data_ptr<T>() + n * ly.C * ly.ps;
          const T* gn = grid.defined() ? grid.const_data_ptr<T>() + n * Ss * 2 : nullptr;
          const auto G = gout.select(0, n).narrow(0, l * St, St);  // (S_t, S_s)
          if (grid.defined()) grid_table(gn, Ss, ly.Hs, ly.Ws, ts);
          if (need_tgt) {
            resample(xs, ly.C, ly.ps, ts, Ss, Rs.mutable_data_ptr<T>());
            at::mm_out(dRt, Rs, G.t());
            scatter(dRt.const_data_ptr<T>(), ly.C, ly.pt, tab.tgt, St, dtgt[l].mutable_data_ptr<T>() + n * ly.C * ly.pt);
          }
          if (need_src || need_grid) {
            resample(tgt[l].const_data_ptr<T>() + n * ly.C * ly.pt, ly.C, ly.pt, tab.tgt, St, Rt.mutable_data_ptr<T>());
            at::mm_out(dRs, Rt, G);
            if (need_src)
              scatter(dRs.const_data_ptr<T>(), ly.C, ly.ps, ts, Ss, dsrc[l].mutable_data_ptr<T>() + n * ly.C * ly.ps);
            if (need_grid)
              grid_grad(xs, ly.C, ly.Hs, ly.Ws, gn, dRs.const_data_ptr<T>(), Ss,
                        dgrid.mutable_data_ptr<T>() + n * Ss * 2);
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

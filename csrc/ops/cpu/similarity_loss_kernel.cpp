// pscfast::similarity_loss on the CPU, float and double; one task per sample (at::parallel_for).
// Per sample, the layers are resized and concatenated into per-thread buffers Fw, Ft (C, P)
// (resize_matrix.h), so memory beyond the inputs and outputs is O(C P) per thread, never O(N C P); the
// backward maps dFw (one block of grid rows at a time, never stored whole) and dFt back through the adjoint
// resize into that sample's slice of each layer's gradient.
// S = Fw^T Ft (P x P) is never stored: it is recomputed in blocks of kRows rows (whole grid rows in the
// backward; a BLAS product into a tile of a block's rows x P, the only O(P) x O(P) memory, per thread).
//   a_j = sum_i |S_ij|, b_i = sum_j |S_ij| / a_j, S2 = diag(1/b) S diag(1/a), z = S2 / tau.
// Non-negative features: |S| = S, so a = Ft^T (Fw 1) and b = Fw^T (Ft (1/a)) are matrix-vector products
// and the forward is one pass over the tiles; signed features take one more pass for the exact a.
// Forward pass: per column j an online log-sum-exp over i (running max and sum, merged block by block),
// the diagonal logit, and per row the max of S2 (the weight before the batch-wide min-max).
// Backward (g = dL/dce; P_ij = exp(z_ij - lse_j); signs sgn(S_ij); a, b clamped at eps pass no gradient):
//   G2_ij = g_j (P_ij - [i == j]) / tau                       dL/dS2
//   G1_ij = (G2_ij - sgn_ij u_i) / b_i,  u_i = sum_j G2_ij S2_ij        dL/dS1 (S1 = S / a)
//   G0_ij = (G1_ij - sgn_ij v_j) / a_j,  v_j = sum_i G1_ij S1_ij = sum_i (G2_ij S2_ij - u_i |S2_ij|)
//   dFw_i = sum_j G0_ij Ft_j,  dFt_j = sum_i G0_ij Fw_i.
// Pass 1 computes u (row-local) and v (column sums); pass 2 recomputes the tile, forms G0 and multiplies.
// Every sum runs in a fixed order inside one task (each sample, and so each sample's slice of the layer
// gradients, is owned by one task): results are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/common/resize_matrix.h"
#include "ops/common/similarity_loss_checks.h"
#include "ops/cpu/exp_poly.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

constexpr int64_t kRows = 64;

// x <- exp(x) over a row (exp_poly.h).
PSC_MULTIVERSION void exp_row(float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_poly(x[i]);
}

void exp_row(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_poly(x[i]);
}

template <typename T>
T sgn(T x) {
  return static_cast<T>((x > T(0)) - (x < T(0)));
}

// The row block [i0, i0 + n) of S into tile (n x P, contiguous).
inline at::Tensor block(const at::Tensor& Wn, const at::Tensor& Tn, at::Tensor& tile, int64_t i0, int64_t n) {
  at::Tensor out = tile.narrow(0, 0, n);
  at::mm_out(out, Wn.narrow(1, i0, n).t(), Tn);
  return out;
}

// Raw column and row L1 sums a, b of one sample (written to a, b; length P).
template <typename T>
void l1_sums(const at::Tensor& Wn, const at::Tensor& Tn, bool nonneg, at::Tensor& tile, T* a, T* b) {
  const int64_t P = Wn.size(1);
  if (nonneg) {
    at::Tensor av = at::mv(Tn.t(), Wn.sum(1));
    std::copy_n(av.data_ptr<T>(), P, a);
    at::Tensor ia = av.clamp_min(kSimilarityEps).reciprocal();
    at::Tensor bv = at::mv(Wn.t(), at::mv(Tn, ia));
    std::copy_n(bv.data_ptr<T>(), P, b);
    return;
  }
  std::fill_n(a, P, T(0));
  for (int64_t i0 = 0; i0 < P; i0 += kRows) {
    const int64_t n = std::min(kRows, P - i0);
    const T* s = block(Wn, Tn, tile, i0, n).data_ptr<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < P; ++j) a[j] += std::abs(s[i * P + j]);
  }
  std::vector<T> ia(P);
  for (int64_t j = 0; j < P; ++j) ia[j] = T(1) / std::max(a[j], T(kSimilarityEps));
  for (int64_t i0 = 0; i0 < P; i0 += kRows) {
    const int64_t n = std::min(kRows, P - i0);
    const T* s = block(Wn, Tn, tile, i0, n).data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      T acc = 0;
      for (int64_t j = 0; j < P; ++j) acc += std::abs(s[i * P + j]) * ia[j];
      b[i0 + i] = acc;
    }
  }
}

template <typename T>
std::vector<T> inverse_clamped(const T* x, int64_t P) {
  std::vector<T> out(P);
  for (int64_t j = 0; j < P; ++j) out[j] = T(1) / std::max(x[j], T(kSimilarityEps));
  return out;
}

template <typename T>
void forward_sample(const at::Tensor& Wn, const at::Tensor& Tn, T tau, bool nonneg, at::Tensor& tile, T* ce, T* wmax,
                    T* stats) {
  const int64_t P = Wn.size(1);
  T *a = stats, *b = stats + P, *lse = stats + 2 * P;
  l1_sums<T>(Wn, Tn, nonneg, tile, a, b);
  const std::vector<T> ia = inverse_clamped(a, P), ib = inverse_clamped(b, P);
  const T itau = T(1) / tau;
  std::vector<T> m(P, -std::numeric_limits<T>::infinity()), sum(P, T(0)), bm(P), diag(P);
  for (int64_t i0 = 0; i0 < P; i0 += kRows) {
    const int64_t n = std::min(kRows, P - i0);
    T* z = block(Wn, Tn, tile, i0, n).data_ptr<T>();
    std::fill(bm.begin(), bm.end(), -std::numeric_limits<T>::infinity());
    for (int64_t i = 0; i < n; ++i) {
      T* zi = z + i * P;
      const T bi = ib[i0 + i];
      T rmax = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < P; ++j) {
        const T s2 = zi[j] * (ia[j] * bi);
        rmax = std::max(rmax, s2);
        zi[j] = s2 * itau;
        bm[j] = std::max(bm[j], zi[j]);
      }
      wmax[i0 + i] = rmax;
      diag[i0 + i] = zi[i0 + i];
    }
    for (int64_t j = 0; j < P; ++j) {
      const T nm = std::max(m[j], bm[j]);
      sum[j] *= std::exp(m[j] - nm);
      m[j] = nm;
    }
    for (int64_t i = 0; i < n; ++i) {
      T* zi = z + i * P;
      for (int64_t j = 0; j < P; ++j) zi[j] -= m[j];
      exp_row(zi, P);
      for (int64_t j = 0; j < P; ++j) sum[j] += zi[j];
    }
  }
  for (int64_t j = 0; j < P; ++j) {
    lse[j] = m[j] + std::log(sum[j]);
    ce[j] = lse[j] - diag[j];
  }
}

// Blocks of whole grid rows (size S each) for the backward, so that dFw can go through the adjoint resize
// block by block (on_dw(i0, n, dFw[:, i0:i0 + n])) instead of being stored whole.
int64_t grid_row_block(int64_t S) { return std::max<int64_t>(1, kRows / S) * S; }

template <typename T, typename OnDw>
void backward_sample(const T* g, const at::Tensor& Wn, const at::Tensor& Tn, const T* stats, T tau, int64_t rows,
                     at::Tensor& tile, at::Tensor& dw_scratch, at::Tensor dTn, const OnDw& on_dw) {
  const int64_t P = Wn.size(1);
  const T *a = stats, *b = stats + P, *lse = stats + 2 * P;
  const std::vector<T> ia = inverse_clamped(a, P), ib = inverse_clamped(b, P);
  const T itau = T(1) / tau;
  std::vector<T> u(P), v(P, T(0)), row(P);
  // G2 * S2 of one row of a tile, into row; returns its sum u_i
  auto g2s2 = [&](const T* s, int64_t i) {
    for (int64_t j = 0; j < P; ++j) row[j] = s[j] * (ia[j] * ib[i]) * itau - lse[j];
    exp_row(row.data(), P);
    row[i] -= T(1);
    T acc = 0;
    for (int64_t j = 0; j < P; ++j) {
      row[j] = g[j] * row[j] * itau * (s[j] * (ia[j] * ib[i]));
      acc += row[j];
    }
    return acc;
  };
  for (int64_t i0 = 0; i0 < P; i0 += rows) {
    const int64_t n = std::min(rows, P - i0);
    const T* s = block(Wn, Tn, tile, i0, n).data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* si = s + i * P;
      const T sum = g2s2(si, i0 + i);
      const T ui = b[i0 + i] >= T(kSimilarityEps) ? sum : T(0);
      u[i0 + i] = ui;
      const T w = ui * ib[i0 + i];
      for (int64_t j = 0; j < P; ++j) v[j] += row[j] - w * std::abs(si[j]) * ia[j];
    }
  }
  for (int64_t j = 0; j < P; ++j)
    if (a[j] < T(kSimilarityEps)) v[j] = 0;
  for (int64_t i0 = 0; i0 < P; i0 += rows) {
    const int64_t n = std::min(rows, P - i0);
    at::Tensor t = block(Wn, Tn, tile, i0, n);
    T* s = t.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      T* si = s + i * P;
      const int64_t r = i0 + i;
      for (int64_t j = 0; j < P; ++j) row[j] = si[j] * (ia[j] * ib[r]) * itau - lse[j];
      exp_row(row.data(), P);
      row[r] -= T(1);
      for (int64_t j = 0; j < P; ++j) {
        const T g2 = g[j] * row[j] * itau;
        const T sg = sgn(si[j]);
        si[j] = ((g2 - sg * u[r]) * ib[r] - sg * v[j]) * ia[j];
      }
    }
    at::Tensor dw = dw_scratch.narrow(0, 0, Tn.size(0) * n).view({Tn.size(0), n});
    at::mm_out(dw, Tn, t.t());
    on_dw(i0, n, dw);
    if (dTn.defined()) dTn.addmm_(Wn.narrow(1, i0, n), t);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_loss_cpu(at::TensorList fw_, at::TensorList ft_, double tau,
                                                                   int64_t size) {
  check_similarity_inputs(fw_, ft_, tau, size);
  const std::vector<at::Tensor> fw = detached(fw_), ft = detached(ft_);
  const auto opts = fw[0].options();
  const ConcatResize rw(fw, size, opts.dtype().toScalarType()), rt(ft, size, opts.dtype().toScalarType());
  const int64_t N = fw[0].size(0), C = rw.channels(), P = size * size;
  const bool nonneg = all_nonneg(fw) && all_nonneg(ft);
  at::Tensor ce = at::empty({N, P}, opts), weight = at::empty({N, P}, opts);
  at::Tensor stats = at::empty({N, 3, P}, opts);
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "similarity_loss_cpu", [&] {
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      at::Tensor tile = at::empty({std::min(kRows, P), P}, opts);
      at::Tensor wn = at::empty({1, C, P}, opts), tn = at::empty({1, C, P}, opts);
      for (int64_t n = n0; n < n1; ++n) {
        rw.resize(fw, n, wn);
        rt.resize(ft, n, tn);
        forward_sample<scalar_t>(wn[0], tn[0], static_cast<scalar_t>(tau), nonneg, tile,
                                 ce.data_ptr<scalar_t>() + n * P, weight.data_ptr<scalar_t>() + n * P,
                                 stats.data_ptr<scalar_t>() + n * 3 * P);
      }
    });
  });
  // the batch-wide min-max of the reference, on the row maxima (max and min are order-independent)
  weight = weight.sub(weight.min());
  const double tiny =
      ce.scalar_type() == at::kFloat ? std::numeric_limits<float>::min() : std::numeric_limits<double>::min();
  weight = weight.div(weight.max().clamp_min(tiny));
  return {ce, weight, stats};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> similarity_loss_backward_cpu(
    const at::Tensor& grad_, at::TensorList fw_, at::TensorList ft_, const at::Tensor& stats_, double tau, int64_t size,
    std::array<bool, 2> output_mask) {
  const bool need_fw = output_mask[0], need_ft = output_mask[1];
  check_similarity_inputs(fw_, ft_, tau, size);
  check_similarity_backward(grad_, fw_, stats_, size);
  const std::vector<at::Tensor> fw = detached(fw_), ft = detached(ft_);
  const auto opts = fw[0].options();
  const ConcatResize rw(fw, size, opts.dtype().toScalarType()), rt(ft, size, opts.dtype().toScalarType());
  const int64_t N = fw[0].size(0), C = rw.channels(), P = size * size, rows = grid_row_block(size);
  const at::Tensor grad = grad_.detach().to(opts.dtype()).contiguous();
  const at::Tensor stats = stats_.detach().to(opts.dtype()).contiguous();
  std::vector<at::Tensor> dfw = need_fw ? empty_like_layers(fw) : std::vector<at::Tensor>();
  std::vector<at::Tensor> dft = need_ft ? empty_like_layers(ft) : std::vector<at::Tensor>();
  if (!need_fw && !need_ft) return {dfw, dft};
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "similarity_loss_backward_cpu", [&] {
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      at::Tensor tile = at::empty({rows, P}, opts), dw = at::empty({C * rows}, opts);
      at::Tensor wn = at::empty({1, C, P}, opts), tn = at::empty({1, C, P}, opts);
      at::Tensor dtn = need_ft ? at::empty({1, C, P}, opts) : at::Tensor();
      for (int64_t n = n0; n < n1; ++n) {
        rw.resize(fw, n, wn);
        rt.resize(ft, n, tn);
        for (auto& x : dfw) x[n].zero_();  // the row blocks of dFw are added
        if (need_ft) dtn.zero_();          // backward_sample accumulates dFt over row blocks
        backward_sample<scalar_t>(grad.data_ptr<scalar_t>() + n * P, wn[0], tn[0],
                                  stats.data_ptr<scalar_t>() + n * 3 * P, static_cast<scalar_t>(tau), rows, tile, dw,
                                  need_ft ? dtn[0] : at::Tensor(), [&](int64_t i0, int64_t k, const at::Tensor& d) {
                                    if (need_fw) rw.adjoint_rows_add(d, n, i0 / size, k / size, dfw);
                                  });
        if (need_ft) rt.adjoint(dtn, n, dft);
      }
    });
  });
  return {dfw, dft};
}

at::Tensor similarity_resize_cpu(at::TensorList layers, int64_t size) {
  check_similarity_inputs(layers, layers, 1.0, size);
  const ConcatResize r(layers, size, layers[0].scalar_type());
  at::Tensor out = at::empty({layers[0].size(0), r.channels(), size * size}, layers[0].options());
  r.resize(detached(layers), 0, out);
  return out;
}

std::vector<at::Tensor> similarity_resize_adjoint_cpu(const at::Tensor& grad, at::TensorList layers, int64_t size) {
  check_similarity_inputs(layers, layers, 1.0, size);
  const ConcatResize r(layers, size, layers[0].scalar_type());
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == layers[0].size(0) && grad.size(1) == r.channels() &&
                  grad.size(2) == size * size,
              "pscfast_testing::similarity_resize_adjoint: grad must be (N, sum C_l, size^2), got ", grad.sizes());
  std::vector<at::Tensor> out = empty_like_layers(layers);
  r.adjoint(grad.detach().to(layers[0].scalar_type()), 0, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("similarity_loss", &similarity_loss_cpu);
  m.impl("_similarity_loss_backward", &similarity_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(pscfast_testing, CPU, m) {
  m.impl("similarity_resize", &similarity_resize_cpu);
  m.impl("similarity_resize_adjoint", &similarity_resize_adjoint_cpu);
}

}  // namespace pscfast

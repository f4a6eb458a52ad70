// pscfast::local_correlation on the CPU: forward and backward, float, double, float16 and bfloat16 (half precision
// accumulated in float32), OpenMP through at::parallel_for. The forward, and the backward of any geometry but the
// one below, read the inputs channels-last (N, H, W, C), so that every term is a dot product (forward) or an axpy
// (backward) over contiguous channels (half precision in float32): the forward copies, per task, only the rows a
// band of output rows reads, the general backward whole tensors. The backward for kernel size
// 1, stride 1 and no padding (the correlation layers of PWC-Net, GLU-Net and FlowNetC) takes the row kernels of
// local_correlation_rows.h, which read the inputs in their own layout: no copies.
// The general backward is in gather form: each element of grad_a / grad_b sums, in a fixed order (displacement,
// then the window taps), every output it contributed to; one task writes it. No atomics: results are bitwise
// reproducible and independent of the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/common/local_correlation_geometry.h"
#include "ops/cpu/local_correlation_rows.h"
#include "ops/cpu/vectorize.h"

namespace pscfast {
namespace {

constexpr int kLanes = 16;  // independent partial sums of a dot product (a fixed order: deterministic)
constexpr int kChunk = 64;  // channels whose gradient is accumulated in registers at once

template <typename T>
inline __attribute__((always_inline)) T dot(const T* __restrict a, const T* __restrict b, int64_t C) {
  T acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[c + l] * b[c + l];
  T s = T(0);
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; c < C; ++c) s += a[c] * b[c];
  return s;
}

inline bool inside(int y, int x, int H, int W) { return y >= 0 && y < H && x >= 0 && x < W; }

// One output row i of a sample's cost volume; a and b hold the sample's rows from a_first and b_first on,
// channels-last (rows, W, C); out is the sample's (P*P, Ho, Wo).
template <typename T>
PSC_MULTIVERSION void forward_row(const CorrGeometry& G, const T* __restrict a, int a_first, const T* __restrict b,
                                  int b_first, T* __restrict out, int i) {
  const int P2 = G.P2;
  const int64_t plane = static_cast<int64_t>(G.Ho) * G.Wo;
  T* on = out + static_cast<int64_t>(i) * G.Wo;
  for (int j = 0; j < G.Wo; ++j) {
    for (int p = 0; p < P2; ++p) {
      const int oy = G.oy(p), ox = G.ox(p);
      T acc = T(0);
      for (int ki = 0; ki < G.kh; ++ki) {
        const int ya = i * G.sh - G.padh + ki * G.dilh;
        for (int kj = 0; kj < G.kw; ++kj) {
          const int xa = j * G.sw - G.padw + kj * G.dilw;
          if (!inside(ya, xa, G.H, G.W) || !inside(ya + oy, xa + ox, G.H, G.W)) continue;
          acc += dot(a + (static_cast<int64_t>(ya - a_first) * G.W + xa) * G.C,
                     b + (static_cast<int64_t>(ya + oy - b_first) * G.W + xa + ox) * G.C, G.C);
        }
      }
      on[p * plane + j] = acc;
    }
  }
}

// The input rows [first, last) that output rows [i0, i1) read (of a with reach 0, of b with the displacements'
// reach lo..hi), within the image.
std::pair<int, int> band_rows(const CorrGeometry& G, int i0, int i1, int lo, int hi) {
  const int first = i0 * G.sh - G.padh + lo, last = (i1 - 1) * G.sh - G.padh + (G.kh - 1) * G.dilh + hi + 1;
  return {std::max(first, 0), std::max(std::min(last, G.H), std::max(first, 0))};
}

// Rows [first, last) of sample n of t (N, C, H, W, any layout and floating dtype) into buf, channels-last.
const at::Tensor& rows_channels_last(const at::Tensor& t, int64_t n, std::pair<int, int> rows, at::Tensor& buf) {
  const int count = rows.second - rows.first;
  if (count > 0) buf.narrow(0, 0, count).copy_(t.select(0, n).narrow(1, rows.first, count).permute({1, 2, 0}));
  return buf;
}

// Tasks take bands of output rows of one sample, and copy channels-last only the rows of a and b that their band
// reads (a band's rows of b overlap the next band's by the displacements' reach): no copy of the whole inputs.
template <typename T>
void forward_impl(const CorrGeometry& G, const at::Tensor& a, const at::Tensor& b, T* out) {
  const int64_t threads = at::get_num_threads();
  const int band = static_cast<int>(std::clamp<int64_t>(G.N * G.Ho / (4 * threads), 1, 8));
  const int bands = (G.Ho + band - 1) / band;
  const int lo = -G.rh * G.dph, hi = (G.PH - 1 - G.rh) * G.dph;
  const int64_t plane = static_cast<int64_t>(G.Ho) * G.Wo;
  at::parallel_for(0, G.N * bands, 1, [&](int64_t begin, int64_t end) {
    const auto options = a.options().dtype(c10::CppTypeToScalarType<T>::value);
    const int most = (band - 1) * G.sh + (G.kh - 1) * G.dilh + 1;  // rows of a a band reads at most
    at::Tensor a_rows = at::empty({std::min(most, G.H), G.W, G.C}, options);
    at::Tensor b_rows = at::empty({std::min(most + hi - lo, G.H), G.W, G.C}, options);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / bands;
      const int i0 = static_cast<int>(t % bands) * band, i1 = std::min(G.Ho, i0 + band);
      const auto ra = band_rows(G, i0, i1, 0, 0), rb = band_rows(G, i0, i1, lo, hi);
      const T* ap = rows_channels_last(a, n, ra, a_rows).template const_data_ptr<T>();
      const T* bp = rows_channels_last(b, n, rb, b_rows).template const_data_ptr<T>();
      for (int i = i0; i < i1; ++i) forward_row(G, ap, ra.first, bp, rb.first, out + n * G.P2 * plane, i);
    }
  });
}

// One input row (n, y) of the gradient of a (sign = +1: partner b at (y + oy, x + ox), window position (y, x))
// or of b (sign = -1: partner a at (y - oy, x - ox), which is also the window position). gout_t is
// (N, Ho, Wo, P*P), other and grad channels-last (N, H, W, C). The channels go in chunks whose sums stay in
// registers across displacements and taps.
// rows[y * kh + ki] (cols[x * kw + kj]): the output row (column) whose window tap ki (kj) reads input row y
// (column x), or -1; tables so that the inner loops do no integer division.
template <typename T>
PSC_MULTIVERSION void backward_row(const CorrGeometry& G, const T* __restrict gout_t, const T* __restrict other,
                                   T* __restrict grad, const int* __restrict rows, const int* __restrict cols, int sign,
                                   int64_t n, int y) {
  const int P2 = G.P2;
  const T* on = other + n * G.H * G.W * G.C;
  const T* gn = gout_t + n * G.Ho * G.Wo * P2;
  for (int x = 0; x < G.W; ++x) {
    T* out = grad + ((n * G.H + y) * G.W + x) * G.C;
    for (int64_t c0 = 0; c0 < G.C; c0 += kChunk) {
      const int width = static_cast<int>(std::min<int64_t>(kChunk, G.C - c0));
      T acc[kChunk] = {};
      for (int p = 0; p < P2; ++p) {
        const int py = y + sign * G.oy(p), px = x + sign * G.ox(p);
        if (!inside(py, px, G.H, G.W)) continue;
        const int wy = sign > 0 ? y : py, wx = sign > 0 ? x : px;  // the position of a in the window
        T g = T(0);
        for (int ki = 0; ki < G.kh; ++ki) {
          const int i = rows[static_cast<int64_t>(wy) * G.kh + ki];
          if (i < 0) continue;
          for (int kj = 0; kj < G.kw; ++kj) {
            const int j = cols[static_cast<int64_t>(wx) * G.kw + kj];
            if (j >= 0) g += gn[(static_cast<int64_t>(i) * G.Wo + j) * P2 + p];
          }
        }
        const T* partner = on + (static_cast<int64_t>(py) * G.W + px) * G.C + c0;
        if (width == kChunk) {
          for (int l = 0; l < kChunk; ++l) acc[l] += g * partner[l];
        } else {
          for (int l = 0; l < width; ++l) acc[l] += g * partner[l];
        }
      }
      for (int l = 0; l < width; ++l) out[c0 + l] = acc[l];
    }
  }
}

template <typename T>
void backward_impl(const CorrGeometry& G, const T* gout_t, const T* other, T* grad, int sign) {
  std::vector<int> rows(static_cast<size_t>(G.H) * G.kh), cols(static_cast<size_t>(G.W) * G.kw);
  for (int y = 0; y < G.H; ++y)
    for (int kk = 0; kk < G.kh; ++kk)
      rows[static_cast<size_t>(y) * G.kh + kk] = window_index(y, kk, G.padh, G.dilh, G.sh, G.Ho);
  for (int x = 0; x < G.W; ++x)
    for (int kk = 0; kk < G.kw; ++kk)
      cols[static_cast<size_t>(x) * G.kw + kk] = window_index(x, kk, G.padw, G.dilw, G.sw, G.Wo);
  at::parallel_for(0, G.N * G.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      backward_row(G, gout_t, other, grad, rows.data(), cols.data(), sign, row / G.H, static_cast<int>(row % G.H));
  });
}

at::Tensor channels_last(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

// float16 and bfloat16 take the general path in float32 (the row kernels read them as they are).
at::ScalarType general_type(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 ? at::kFloat : s;
}

at::Tensor general_forward(const CorrGeometry& G, const at::Tensor& a, const at::Tensor& b) {
  const auto dtype = general_type(a);
  auto out = at::empty({G.N, G.P2, G.Ho, G.Wo}, a.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "local_correlation_cpu",
                             [&] { forward_impl(G, a, b, out.mutable_data_ptr<scalar_t>()); });
  return out.to(a.scalar_type());
}

// The gradient of a (sign +1, partner b) or of b (sign -1, partner a) on the general path.
at::Tensor general_gradient(const CorrGeometry& G, const at::Tensor& grad_out, const at::Tensor& partner, int sign) {
  const auto dtype = general_type(partner);
  const auto gout_t = channels_last(grad_out.to(dtype)), partner_t = channels_last(partner.to(dtype));
  auto grad_t = at::empty({G.N, G.H, G.W, G.C}, partner.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "local_correlation_backward_cpu", [&] {
    backward_impl(G, gout_t.const_data_ptr<scalar_t>(), partner_t.const_data_ptr<scalar_t>(),
                  grad_t.mutable_data_ptr<scalar_t>(), sign);
  });
  return grad_t.permute({0, 3, 1, 2}).contiguous().to(partner.scalar_type());
}

at::Tensor local_correlation_cpu(const at::Tensor& a_, const at::Tensor& b_, at::IntArrayRef kernel_size,
                                 at::IntArrayRef patch_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, at::IntArrayRef dilation_patch) {
  return general_forward(corr_geometry(a_, b_, kernel_size, patch_size, stride, padding, dilation, dilation_patch), a_,
                         b_);
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& a_,
                                                                  const at::Tensor& b_, at::IntArrayRef kernel_size,
                                                                  at::IntArrayRef patch_size, at::IntArrayRef stride,
                                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                  at::IntArrayRef dilation_patch,
                                                                  std::array<bool, 2> output_mask) {
  const auto G = corr_geometry(a_, b_, kernel_size, patch_size, stride, padding, dilation, dilation_patch);
  check_corr_grad(grad_out_, a_, G);
  at::Tensor grad_a, grad_b;
  if (!cpu_local_correlation::applies(G)) {
    if (output_mask[0]) grad_a = general_gradient(G, grad_out_, b_, 1);
    if (output_mask[1]) grad_b = general_gradient(G, grad_out_, a_, -1);
    return {grad_a, grad_b};
  }
  const auto gout = grad_out_.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a_.scalar_type(), "local_correlation_backward_cpu", [&] {
    if (output_mask[0]) {
      const auto b = b_.contiguous();
      grad_a = at::empty(a_.sizes(), a_.options());
      cpu_local_correlation::grad_a(G, gout.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                                    grad_a.mutable_data_ptr<scalar_t>());
    }
    if (output_mask[1]) {
      const auto a = a_.contiguous();
      grad_b = at::empty(b_.sizes(), b_.options());
      cpu_local_correlation::grad_b(G, gout.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                                    grad_b.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CPU, m) {
  m.impl("local_correlation", &local_correlation_cpu);
  m.impl("_local_correlation_backward", &local_correlation_backward_cpu);
}

}  // namespace pscfast

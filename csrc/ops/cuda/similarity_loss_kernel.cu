// pscfast::similarity_loss on CUDA: float, double, half, bfloat16 (float accumulation, float log-sum-exp).
// The layers are resized and concatenated one chunk of samples at a time (resize_matrix.h: cuBLAS products,
// deterministic, where interpolate's backward would scatter with atomics); every kernel below works on one
// chunk (ce, row maxima and stats are per sample), and the batch-wide min-max of the weight runs once after
// the last chunk. The same passes as the CPU and Triton kernels (csrc/ops/cpu/similarity_loss_kernel.cpp):
// S = Fw^T Ft is recomputed in 32 x 32 shared-memory tiles (K-loop over channels), never stored.
//   forward:  one block per (column block, sample): online log-sum-exp over i, diagonal logit, and partial
//             row maxima per (column block, row) whose max is the weight (order-independent);
//   backward: u_i (row blocks), v_j (column blocks), then dFw (c block, i block) and dFt (c block, j block),
//             each a fixed-order loop inside one block: no atomics, bitwise reproducible.
// Non-negative features: the L1 sums a, b are matrix-vector products (ATen bmm); signed: two tile passes.
// stats (N, 3, P) holds raw a, raw b and lse in the accumulation type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/common/resize_matrix.h"
#include "ops/common/similarity_loss_checks.h"

namespace pscfast {
namespace {

constexpr int kB = 32, kK = 32, kThreads = 256, kRowsPerPass = kThreads / kB;

template <typename acc_t>
struct Smem {
  acc_t s[kB][kB + 1];
  acc_t wa[kK][kB];
  acc_t tb[kK][kB];
};

// s[ii][jj] = S[i0 + ii, j0 + jj] of one sample (0 outside P). Thread (ty, tx) owns rows ty + 8 q, column tx.
template <typename scalar_t, typename acc_t>
__device__ void tile(const scalar_t* w, const scalar_t* t, int C, int P, int i0, int j0, Smem<acc_t>& m) {
  const int tx = threadIdx.x % kB, ty = threadIdx.x / kB;
  acc_t acc[kB / kRowsPerPass] = {};
  for (int c0 = 0; c0 < C; c0 += kK) {
    for (int r = ty; r < kK; r += kRowsPerPass) {
      const int c = c0 + r;
      m.wa[r][tx] = (c < C && i0 + tx < P) ? static_cast<acc_t>(w[static_cast<int64_t>(c) * P + i0 + tx]) : acc_t(0);
      m.tb[r][tx] = (c < C && j0 + tx < P) ? static_cast<acc_t>(t[static_cast<int64_t>(c) * P + j0 + tx]) : acc_t(0);
    }
    __syncthreads();
    for (int k = 0; k < kK; ++k) {
      const acc_t tv = m.tb[k][tx];
#pragma unroll
      for (int q = 0; q < kB / kRowsPerPass; ++q) acc[q] += m.wa[k][ty + kRowsPerPass * q] * tv;
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kB / kRowsPerPass; ++q) m.s[ty + kRowsPerPass * q][tx] = acc[q];
  __syncthreads();
}

template <typename acc_t>
__device__ acc_t inv_clamped(acc_t x) {
  return acc_t(1) / (x > acc_t(kSimilarityEps) ? x : acc_t(kSimilarityEps));
}

template <typename scalar_t, typename acc_t>
__global__ void colsum_abs_kernel(const scalar_t* fw, const scalar_t* ft, acc_t* stats, int C, int P) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int j0 = blockIdx.x * kB;
  acc_t acc = 0;
  for (int i0 = 0; i0 < P; i0 += kB) {
    tile(fw + base, ft + base, C, P, i0, j0, m);
    if (threadIdx.x < kB)
      for (int ii = 0; ii < kB; ++ii) acc += fabs(m.s[ii][threadIdx.x]);
  }
  if (threadIdx.x < kB && j0 + threadIdx.x < P) stats[n * 3 * P + j0 + threadIdx.x] = acc;
}

template <typename scalar_t, typename acc_t>
__global__ void rowsum_abs_kernel(const scalar_t* fw, const scalar_t* ft, acc_t* stats, int C, int P) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int i0 = blockIdx.x * kB;
  acc_t acc = 0;
  for (int j0 = 0; j0 < P; j0 += kB) {
    tile(fw + base, ft + base, C, P, i0, j0, m);
    if (threadIdx.x < kB)
      for (int jj = 0; jj < kB && j0 + jj < P; ++jj)
        acc += fabs(m.s[threadIdx.x][jj]) * inv_clamped(stats[n * 3 * P + j0 + jj]);
  }
  if (threadIdx.x < kB && i0 + threadIdx.x < P) stats[(n * 3 + 1) * P + i0 + threadIdx.x] = acc;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* fw, const scalar_t* ft, acc_t* stats, acc_t* ce, acc_t* rowmax,
                               int C, int P, acc_t itau) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int j0 = blockIdx.x * kB, tx = threadIdx.x, j = j0 + tx;
  const acc_t* a = stats + n * 3 * P;
  const acc_t* b = a + P;
  const acc_t ia = (tx < kB && j < P) ? inv_clamped(a[j]) : acc_t(0);
  acc_t mx = -std::numeric_limits<acc_t>::infinity(), sum = 0, diag = 0;
  for (int i0 = 0; i0 < P; i0 += kB) {
    tile(fw + base, ft + base, C, P, i0, j0, m);
    if (tx >= kB) continue;
    const int rows = min(kB, P - i0), cols = min(kB, P - j0);
    // row maxima of S2 over this column block (thread tx = row i0 + tx)
    if (tx < rows) {
      const acc_t ib = inv_clamped(b[i0 + tx]);
      acc_t r = -std::numeric_limits<acc_t>::infinity();
      for (int jj = 0; jj < cols; ++jj) r = fmax(r, m.s[tx][jj] * inv_clamped(a[j0 + jj]) * ib);
      rowmax[(n * gridDim.x + blockIdx.x) * P + i0 + tx] = r;
    }
    if (j >= P) continue;
    acc_t bm = -std::numeric_limits<acc_t>::infinity();
    for (int ii = 0; ii < rows; ++ii) bm = fmax(bm, m.s[ii][tx] * ia * inv_clamped(b[i0 + ii]) * itau);
    const acc_t nm = fmax(mx, bm);
    sum *= exp(mx - nm);
    mx = nm;
    for (int ii = 0; ii < rows; ++ii) {
      const acc_t z = m.s[ii][tx] * ia * inv_clamped(b[i0 + ii]) * itau;
      sum += exp(z - mx);
      if (i0 + ii == j) diag = z;
    }
  }
  if (tx < kB && j < P) {
    const acc_t lse = mx + log(sum);
    stats[(n * 3 + 2) * P + j] = lse;
    ce[n * P + j] = lse - diag;
  }
}

// G2 = dL/dS2 and S2 of element (i, j) from the raw S.
template <typename acc_t>
struct Elem {
  acc_t s2, g2;
  __device__ Elem(acc_t s, int i, int j, const acc_t* g, const acc_t* st, int P, acc_t itau) {
    s2 = s * inv_clamped(st[j]) * inv_clamped(st[P + i]);
    g2 = g[j] * (exp(s2 * itau - st[2 * P + j]) - acc_t(i == j)) * itau;
  }
};

template <typename scalar_t, typename acc_t>
__global__ void backward_u_kernel(const scalar_t* fw, const scalar_t* ft, const acc_t* g, const acc_t* stats,
                                  acc_t* u, int C, int P, acc_t itau) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int i0 = blockIdx.x * kB, i = i0 + threadIdx.x;
  const acc_t* st = stats + n * 3 * P;
  acc_t acc = 0;
  for (int j0 = 0; j0 < P; j0 += kB) {
    tile(fw + base, ft + base, C, P, i0, j0, m);
    if (threadIdx.x < kB && i < P)
      for (int jj = 0; jj < kB && j0 + jj < P; ++jj) {
        const Elem<acc_t> e(m.s[threadIdx.x][jj], i, j0 + jj, g + n * P, st, P, itau);
        acc += e.g2 * e.s2;
      }
  }
  if (threadIdx.x < kB && i < P) u[n * P + i] = st[P + i] >= acc_t(kSimilarityEps) ? acc : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void backward_v_kernel(const scalar_t* fw, const scalar_t* ft, const acc_t* g, const acc_t* stats,
                                  const acc_t* u, acc_t* v, int C, int P, acc_t itau) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int j0 = blockIdx.x * kB, j = j0 + threadIdx.x;
  const acc_t* st = stats + n * 3 * P;
  acc_t acc = 0;
  for (int i0 = 0; i0 < P; i0 += kB) {
    tile(fw + base, ft + base, C, P, i0, j0, m);
    if (threadIdx.x < kB && j < P)
      for (int ii = 0; ii < kB && i0 + ii < P; ++ii) {
        const Elem<acc_t> e(m.s[ii][threadIdx.x], i0 + ii, j, g + n * P, st, P, itau);
        acc += e.g2 * e.s2 - u[n * P + i0 + ii] * fabs(e.s2);
      }
  }
  if (threadIdx.x < kB && j < P) v[n * P + j] = st[j] >= acc_t(kSimilarityEps) ? acc : acc_t(0);
}

// FOR_FW: out = dFw[c block, i block] = sum_j G0_ij Ft[c, j]; else out = dFt[c block, j block] = sum_i G0_ij Fw[c, i].
template <typename scalar_t, typename acc_t, bool FOR_FW>
__global__ void backward_df_kernel(const scalar_t* fw, const scalar_t* ft, const acc_t* g, const acc_t* stats,
                                   const acc_t* u, const acc_t* v, scalar_t* out, int C, int P, acc_t itau) {
  __shared__ Smem<acc_t> m;
  const int64_t n = blockIdx.y, base = n * C * P;
  const int o0 = blockIdx.x * kB, c0 = blockIdx.z * kK;
  const int tx = threadIdx.x % kB, ty = threadIdx.x / kB;
  const acc_t* st = stats + n * 3 * P;
  const scalar_t* y = (FOR_FW ? ft : fw) + base;
  acc_t acc[kK / kRowsPerPass] = {};
  for (int r0 = 0; r0 < P; r0 += kB) {
    const int i0 = FOR_FW ? o0 : r0, j0 = FOR_FW ? r0 : o0;
    tile(fw + base, ft + base, C, P, i0, j0, m);
    // G0 in place; elements outside P become 0
#pragma unroll
    for (int q = 0; q < kB / kRowsPerPass; ++q) {
      const int ii = ty + kRowsPerPass * q, i = i0 + ii, j = j0 + tx;
      acc_t g0 = 0;
      if (i < P && j < P) {
        const acc_t s = m.s[ii][tx];
        const Elem<acc_t> e(s, i, j, g + n * P, st, P, itau);
        const acc_t sg = acc_t((s > acc_t(0)) - (s < acc_t(0)));
        g0 = ((e.g2 - sg * u[n * P + i]) * inv_clamped(st[P + i]) - sg * v[n * P + j]) * inv_clamped(st[j]);
      }
      m.s[ii][tx] = g0;
    }
    for (int r = ty; r < kK; r += kRowsPerPass) {  // y[c0 + r, r0 + tx] into wa[r][tx]
      const int c = c0 + r;
      m.wa[r][tx] = (c < C && r0 + tx < P) ? static_cast<acc_t>(y[static_cast<int64_t>(c) * P + r0 + tx]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kK / kRowsPerPass; ++q) {
      const int cc = ty + kRowsPerPass * q;
      for (int rr = 0; rr < kB; ++rr) acc[q] += m.wa[cc][rr] * (FOR_FW ? m.s[tx][rr] : m.s[rr][tx]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kK / kRowsPerPass; ++q) {
    const int c = c0 + ty + kRowsPerPass * q, o = o0 + tx;
    if (c < C && o < P) out[base + static_cast<int64_t>(c) * P + o] = static_cast<scalar_t>(acc[q]);
  }
}

unsigned blocks(int64_t P) { return static_cast<unsigned>((P + kB - 1) / kB); }

// Samples per chunk: the resized copies of a chunk (fw, ft and, in the backward, their gradients: 4 buffers
// of (C, P) per sample) stay under 256 MiB, small next to a training step's activations, while a chunk still
// gives the grid enough blocks (R18 at size 64: 10 samples x 128 column blocks). PSCFAST_SIMILARITY_CHUNK_BYTES
// overrides the budget (tests force several chunks with it; kernels/_resize.py reads the same variable).
int64_t chunk_samples(int64_t N, int64_t C, int64_t P, int64_t itemsize) {
  int64_t budget = int64_t(256) << 20;
  if (const char* e = std::getenv("PSCFAST_SIMILARITY_CHUNK_BYTES")) budget = std::atoll(e);
  return std::max<int64_t>(1, std::min(N, budget / (4 * C * P * itemsize)));
}

// One chunk: resized w, t (B, C, P) -> its rows of stats, ce and the raw row maxima wmax.
void forward_chunk(const at::Tensor& w, const at::Tensor& t, bool nonneg, double tau, at::Tensor stats,
                   at::Tensor ce, at::Tensor wmax) {
  const int64_t B = w.size(0), C = w.size(1), P = w.size(2);
  const auto acc_type = stats.scalar_type();
  at::Tensor rowmax = at::empty({B, static_cast<int64_t>(blocks(P)), P}, stats.options());
  if (nonneg) {  // |S| = S: a = Ft^T (Fw 1), b = Fw^T (Ft (1/a))
    const at::Tensor wa = w.to(acc_type), ta = t.to(acc_type);
    const at::Tensor a = at::bmm(wa.sum(2).unsqueeze(1), ta).squeeze(1);
    const at::Tensor y = at::bmm(ta, a.clamp_min(kSimilarityEps).reciprocal().unsqueeze(2));
    stats.select(1, 0).copy_(a);
    stats.select(1, 1).copy_(at::bmm(wa.transpose(1, 2), y).squeeze(2));
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(blocks(P), static_cast<unsigned>(B));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "similarity_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *wp = w.data_ptr<scalar_t>(), *tp = t.data_ptr<scalar_t>();
    if (!nonneg) {
      colsum_abs_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(wp, tp, stats.data_ptr<acc_t>(), C, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      rowsum_abs_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(wp, tp, stats.data_ptr<acc_t>(), C, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(wp, tp, stats.data_ptr<acc_t>(),
                                                                   ce.data_ptr<acc_t>(), rowmax.data_ptr<acc_t>(),
                                                                   C, P, static_cast<acc_t>(1.0 / tau));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  wmax.copy_(at::amax(rowmax, {1}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_loss_cuda(at::TensorList fw_, at::TensorList ft_,
                                                                    double tau, int64_t size) {
  check_similarity_inputs(fw_, ft_, tau, size);
  const c10::cuda::CUDAGuard guard(fw_[0].device());
  const std::vector<at::Tensor> fw = detached(fw_), ft = detached(ft_);
  const auto dtype = fw[0].scalar_type();
  const auto acc_type = at::toOpMathType(dtype);
  const ConcatResize rw(fw, size, acc_type), rt(ft, size, acc_type);
  const int64_t N = fw[0].size(0), C = rw.channels(), P = size * size;
  const auto opts = fw[0].options().dtype(acc_type);
  at::Tensor stats = at::empty({N, 3, P}, opts), ce = at::empty({N, P}, opts), weight = at::empty({N, P}, opts);
  const bool nonneg = all_nonneg(fw) && all_nonneg(ft);
  const int64_t chunk = chunk_samples(N, C, P, fw[0].element_size());
  const at::Tensor wbuf = at::empty({chunk, C, P}, fw[0].options()), tbuf = at::empty({chunk, C, P}, fw[0].options());
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t B = std::min(chunk, N - n0);
    const at::Tensor w = wbuf.narrow(0, 0, B), t = tbuf.narrow(0, 0, B);
    rw.resize(fw, n0, w);
    rt.resize(ft, n0, t);
    forward_chunk(w, t, nonneg, tau, stats.narrow(0, n0, B), ce.narrow(0, n0, B), weight.narrow(0, n0, B));
  }
  weight = weight.sub(weight.min());
  weight = weight.div(weight.max().clamp_min(acc_type == at::kDouble ? std::numeric_limits<double>::min()
                                                                     : std::numeric_limits<float>::min()));
  return {ce.to(dtype), weight.to(dtype), stats};
}

// One chunk: resized w, t (B, C, P), its rows of g and stats -> dw and (when defined) dt (B, C, P).
void backward_chunk(const at::Tensor& w, const at::Tensor& t, const at::Tensor& g, const at::Tensor& stats,
                    double tau, at::Tensor& dw, at::Tensor& dt) {
  const int64_t B = w.size(0), C = w.size(1), P = w.size(2);
  at::Tensor u = at::empty({B, P}, g.options()), v = at::empty({B, P}, g.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(blocks(P), static_cast<unsigned>(B));
  const dim3 grid_c(blocks(P), static_cast<unsigned>(B), static_cast<unsigned>((C + kK - 1) / kK));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "similarity_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *wp = w.data_ptr<scalar_t>(), *tp = t.data_ptr<scalar_t>();
    const acc_t *gp = g.data_ptr<acc_t>(), *st = stats.data_ptr<acc_t>();
    const acc_t itau = static_cast<acc_t>(1.0 / tau);
    backward_u_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(wp, tp, gp, st, u.data_ptr<acc_t>(), C, P, itau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_v_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(wp, tp, gp, st, u.data_ptr<acc_t>(),
                                                                      v.data_ptr<acc_t>(), C, P, itau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_df_kernel<scalar_t, acc_t, true><<<grid_c, kThreads, 0, stream>>>(
        wp, tp, gp, st, u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), dw.data_ptr<scalar_t>(), C, P, itau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dt.defined()) {
      backward_df_kernel<scalar_t, acc_t, false><<<grid_c, kThreads, 0, stream>>>(
          wp, tp, gp, st, u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), dt.data_ptr<scalar_t>(), C, P, itau);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> similarity_loss_backward_cuda(
    const at::Tensor& grad_, at::TensorList fw_, at::TensorList ft_, const at::Tensor& stats_, double tau,
    int64_t size, bool need_ft) {
  check_similarity_inputs(fw_, ft_, tau, size);
  check_similarity_backward(grad_, fw_, stats_, size);
  const c10::cuda::CUDAGuard guard(fw_[0].device());
  const std::vector<at::Tensor> fw = detached(fw_), ft = detached(ft_);
  const auto acc_type = at::toOpMathType(fw[0].scalar_type());
  const ConcatResize rw(fw, size, acc_type), rt(ft, size, acc_type);
  const int64_t N = fw[0].size(0), C = rw.channels(), P = size * size;
  const at::Tensor g = grad_.detach().to(acc_type).contiguous(), stats = stats_.detach().to(acc_type).contiguous();
  std::vector<at::Tensor> dfw = empty_like_layers(fw);
  std::vector<at::Tensor> dft = need_ft ? empty_like_layers(ft) : std::vector<at::Tensor>();
  const int64_t chunk = chunk_samples(N, C, P, fw[0].element_size());
  const auto opts = fw[0].options();
  const at::Tensor wbuf = at::empty({chunk, C, P}, opts), tbuf = at::empty({chunk, C, P}, opts);
  const at::Tensor dwbuf = at::empty({chunk, C, P}, opts);
  const at::Tensor dtbuf = need_ft ? at::empty({chunk, C, P}, opts) : at::Tensor();
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t B = std::min(chunk, N - n0);
    const at::Tensor w = wbuf.narrow(0, 0, B), t = tbuf.narrow(0, 0, B);
    rw.resize(fw, n0, w);
    rt.resize(ft, n0, t);
    at::Tensor dw = dwbuf.narrow(0, 0, B), dt = need_ft ? dtbuf.narrow(0, 0, B) : at::Tensor();
    backward_chunk(w, t, g.narrow(0, n0, B), stats.narrow(0, n0, B), tau, dw, dt);
    rw.adjoint(dw, n0, dfw);
    if (need_ft) rt.adjoint(dt, n0, dft);
  }
  return {dfw, dft};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("similarity_loss", &similarity_loss_cuda);
  m.impl("_similarity_loss_backward", &similarity_loss_backward_cuda);
}

}  // namespace pscfast

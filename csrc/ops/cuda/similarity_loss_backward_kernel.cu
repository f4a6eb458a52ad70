// pscfast::_similarity_loss_backward on CUDA; the forward, both registrations and the design of the passes
// are in similarity_loss_kernel.cu. Per chunk: u_i (row blocks), v_j (column blocks), then dFw (c block,
// i block) and dFt (c block, j block), each a fixed-order loop inside one block: no atomics, bitwise
// reproducible; the resize's adjoint (resize_matrix.h) takes dFw, dFt back to the layers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/common/resize_matrix.h"
#include "ops/cuda/similarity_loss_common.cuh"

namespace pscfast {
namespace {

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
__global__ void backward_u_kernel(const scalar_t* fw, const scalar_t* ft, const acc_t* g, const acc_t* stats, acc_t* u,
                                  int C, int P, acc_t itau) {
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

// One chunk: resized w, t (B, C, P), its rows of g and stats -> dw and dt (B, C, P), each when defined.
void backward_chunk(const at::Tensor& w, const at::Tensor& t, const at::Tensor& g, const at::Tensor& stats, double tau,
                    at::Tensor& dw, at::Tensor& dt) {
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
    backward_v_kernel<scalar_t, acc_t>
        <<<grid, kThreads, 0, stream>>>(wp, tp, gp, st, u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), C, P, itau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dw.defined()) {
      backward_df_kernel<scalar_t, acc_t, true><<<grid_c, kThreads, 0, stream>>>(
          wp, tp, gp, st, u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), dw.data_ptr<scalar_t>(), C, P, itau);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (dt.defined()) {
      backward_df_kernel<scalar_t, acc_t, false><<<grid_c, kThreads, 0, stream>>>(
          wp, tp, gp, st, u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), dt.data_ptr<scalar_t>(), C, P, itau);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> similarity_loss_backward_cuda(
    const at::Tensor& grad_, at::TensorList fw_, at::TensorList ft_, const at::Tensor& stats_, double tau, int64_t size,
    std::array<bool, 2> output_mask) {
  const bool need_fw = output_mask[0], need_ft = output_mask[1];
  check_similarity_inputs(fw_, ft_, tau, size);
  check_similarity_backward(grad_, fw_, stats_, size);
  const c10::cuda::CUDAGuard guard(fw_[0].device());
  const std::vector<at::Tensor> fw = detached(fw_), ft = detached(ft_);
  const auto acc_type = at::toOpMathType(fw[0].scalar_type());
  const ConcatResize rw(fw, size, acc_type), rt(ft, size, acc_type);
  const int64_t N = fw[0].size(0), C = rw.channels(), P = size * size;
  const at::Tensor g = grad_.detach().to(acc_type).contiguous(), stats = stats_.detach().to(acc_type).contiguous();
  std::vector<at::Tensor> dfw = need_fw ? empty_like_layers(fw) : std::vector<at::Tensor>();
  std::vector<at::Tensor> dft = need_ft ? empty_like_layers(ft) : std::vector<at::Tensor>();
  if (!need_fw && !need_ft) return {dfw, dft};
  const int64_t chunk = chunk_samples(N, C, P, fw[0].element_size());
  const auto opts = fw[0].options();
  const at::Tensor wbuf = at::empty({chunk, C, P}, opts), tbuf = at::empty({chunk, C, P}, opts);
  const at::Tensor dwbuf = need_fw ? at::empty({chunk, C, P}, opts) : at::Tensor();
  const at::Tensor dtbuf = need_ft ? at::empty({chunk, C, P}, opts) : at::Tensor();
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t B = std::min(chunk, N - n0);
    const at::Tensor w = wbuf.narrow(0, 0, B), t = tbuf.narrow(0, 0, B);
    rw.resize(fw, n0, w);
    rt.resize(ft, n0, t);
    at::Tensor dw = need_fw ? dwbuf.narrow(0, 0, B) : at::Tensor();
    at::Tensor dt = need_ft ? dtbuf.narrow(0, 0, B) : at::Tensor();
    backward_chunk(w, t, g.narrow(0, n0, B), stats.narrow(0, n0, B), tau, dw, dt);
    if (need_fw) rw.adjoint(dw, n0, dfw);
    if (need_ft) rt.adjoint(dt, n0, dft);
  }
  return {dfw, dft};
}

}  // namespace pscfast

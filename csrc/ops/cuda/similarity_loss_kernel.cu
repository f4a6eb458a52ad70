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
// The backward is in similarity_loss_backward_kernel.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/common/resize_matrix.h"
#include "ops/cuda/similarity_loss_common.cuh"

namespace pscfast {
namespace {

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
__global__ void forward_kernel(const scalar_t* fw, const scalar_t* ft, acc_t* stats, acc_t* ce, acc_t* rowmax, int C,
                               int P, acc_t itau) {
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

// One chunk: resized w, t (B, C, P) -> its rows of stats, ce and the raw row maxima wmax.
void forward_chunk(const at::Tensor& w, const at::Tensor& t, bool nonneg, double tau, at::Tensor stats, at::Tensor ce,
                   at::Tensor wmax) {
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
                                                                   ce.data_ptr<acc_t>(), rowmax.data_ptr<acc_t>(), C, P,
                                                                   static_cast<acc_t>(1.0 / tau));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  wmax.copy_(at::amax(rowmax, {1}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_loss_cuda(at::TensorList fw_, at::TensorList ft_, double tau,
                                                                    int64_t size) {
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

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("similarity_loss", &similarity_loss_cuda);
  m.impl("_similarity_loss_backward", &similarity_loss_backward_cuda);
}

}  // namespace pscfast

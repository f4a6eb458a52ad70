// Shared by the CUDA correlation forward (correlation_kernel.cu) and backward (correlation_backward_kernel.cu):
// the tiling, the taps of a position, the on-the-fly resampling, the scaled batched product, and the
// backward's declaration (it is registered next to the forward).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>

#include <array>
#include <tuple>
#include <vector>

#include "ops/common/correlation_taps.h"

namespace pscfast {

constexpr int kTile = 64;      // positions (or channels) per tile side
constexpr int kChunk = 16;     // reduction step
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

// Taps of position p of an oh x ow grid in an H x W plane: the resize, or the grid sample when grid_n (the
// sample's (oh, ow, 2) grid) is given; all-zero weights for p >= oh * ow (tile padding).
template <typename T, typename scalar_t>
__device__ Tap4<T> position_taps(const scalar_t* grid_n, int p, int oh, int ow, int H, int W) {
  Tap4<T> q;
  if (p >= oh * ow) {
    for (int k = 0; k < 4; ++k) {
      q.off[k] = 0;
      q.w[k] = T(0);
    }
    return q;
  }
  if (grid_n == nullptr) return resize_taps<T>(p, oh, ow, H, W);
  T dpx, dpy;
  return to_tap4(grid_taps(static_cast<T>(grid_n[2 * p]), static_cast<T>(grid_n[2 * p + 1]), H, W, &dpx, &dpy), W);
}

template <typename T, typename scalar_t>
__device__ __forceinline__ T resampled(const scalar_t* plane, const int off[4], const T w[4]) {
  return w[0] * static_cast<T>(plane[off[0]]) + w[1] * static_cast<T>(plane[off[1]]) +
         w[2] * static_cast<T>(plane[off[2]]) + w[3] * static_cast<T>(plane[off[3]]);
}

inline std::vector<at::Tensor> contiguous(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

// out = scale * a b (cuBLAS), out uninitialised: scale 1 is torch.bmm's product; otherwise scale is the GEMM's
// alpha, with beta = 0 so that cuBLAS never reads out, rather than a second pass over out.
inline void bmm_scaled(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale) {
  if (scale == 1.0)
    at::bmm_out(out, a, b);
  else
    out.baddbmm_(a, b, /*beta=*/0, /*alpha=*/scale);
}

inline dim3 tiles(int64_t rows, int64_t cols, int64_t N) {
  return dim3(static_cast<unsigned>((rows + kTile - 1) / kTile), static_cast<unsigned>((cols + kTile - 1) / kTile),
              static_cast<unsigned>(N));
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> correlation_backward_cuda(
    const at::Tensor& grad_out, at::TensorList src_, at::TensorList tgt_, const c10::optional<at::Tensor>& grid_,
    c10::IntArrayRef size, c10::IntArrayRef target_size, double scale, std::array<bool, 3> mask);

}  // namespace pscfast

// Shared by the CUDA warp forward (warp_kernel.cu) and backward (warp_backward_kernel.cu): the launch width,
// the sizes of one call, and the backward's declaration (they are registered next to the forward).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

namespace pscfast {

constexpr int kThreads = 256;

struct Geometry {
  int64_t N, C;
  int H, W, h, w, Ho, Wo;
  bool direct;
};

inline Geometry geometry(c10::IntArrayRef x_size, const at::Tensor& grid, int64_t Ho, int64_t Wo) {
  Geometry g{x_size[0],
             x_size[1],
             static_cast<int>(x_size[2]),
             static_cast<int>(x_size[3]),
             static_cast<int>(grid.size(1)),
             static_cast<int>(grid.size(2)),
             static_cast<int>(Ho),
             static_cast<int>(Wo),
             false};
  g.direct = g.h == g.Ho && g.w == g.Wo;
  return g;
}

// Output pixel (n, oy, ox) of flat index idx over (N, Ho, Wo).
struct OutPixel {
  int64_t n;
  int oy, ox;
};

__device__ inline OutPixel out_pixel(int64_t idx, const Geometry& G) {
  return {idx / (static_cast<int64_t>(G.Wo) * G.Ho), static_cast<int>((idx / G.Wo) % G.Ho),
          static_cast<int>(idx % G.Wo)};
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& grid, c10::string_view mode,
                                                      c10::string_view padding_mode, bool align_corners,
                                                      std::array<bool, 2> output_mask);

}  // namespace pscfast

// Schemas of the warp op: sample x (N, C, H, W) at an absolute grid (N, h, w, 2) resized on the fly to
// out_size. Kernels: csrc/ops/cpu/warp_kernel.cpp, csrc/ops/cuda/warp{,_backward}_kernel.cu; autograd and
// fake: pscfast/ops/warp.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("warp(Tensor x, Tensor grid, SymInt[2] out_size, str mode, str padding_mode, bool align_corners) -> Tensor");
  // output_mask: (x, grid); out_size is grad_out's spatial size
  m.def("_warp_backward(Tensor grad_out, Tensor x, Tensor grid, str mode, str padding_mode, bool align_corners, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
}

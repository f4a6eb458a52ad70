// Schemas of the warp op: sample x (N, C, H, W) at an absolute grid (N, h, w, 2) resized on the fly to
// out_size. Kernels: csrc/ops/cpu/warp_kernel.cpp, csrc/ops/cuda/warp{,_backward}_kernel.cu; autograd:
// csrc/ops/warp_autograd.cpp; fake: pscfast/ops/warp.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("warp(Tensor x, Tensor grid, SymInt[2] out_size, str mode, str padding_mode, bool align_corners) -> Tensor");
  // output_mask: (x, grid); out_size is grad_out's spatial size
  m.def(
      "_warp_backward(Tensor grad_out, Tensor x, Tensor grid, str mode, str padding_mode, bool align_corners, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // The forward and d(out)/d(grid) per output point and channel, (N, C, h, w, 2), of bilinear sampling at a grid
  // of the output's size: the autograd kernel's forward for a one-channel CPU image whose grid alone requires
  // grad (csrc/ops/warp_autograd.cpp).
  m.def(
      "_warp_with_jacobian(Tensor x, Tensor grid, str mode, str padding_mode, bool align_corners) -> (Tensor, Tensor)");
  // The grid's gradient from that d(out)/d(grid): sum over channels of grad_out times it, (N, h, w, 2).
  m.def("_warp_jacobian_product(Tensor grad_out, Tensor jacobian) -> Tensor");
  // The gradients of the plain PyTorch reference, recorded (for a backward with create_graph=True): one per set
  // output_mask entry. Implemented in Python (pscfast/ops/warp.py); called by the autograd kernel,
  // csrc/ops/warp_autograd.cpp.
  m.def(
      "_warp_backward_reference(Tensor grad_out, Tensor x, Tensor grid, str mode, str padding_mode, "
      "bool align_corners, bool[2] output_mask) -> Tensor[]");
}

// Schemas of the fused similarity loss on resized, concatenated features fw, ft (N, C, h, w); P = h * w.
// stats (N, 3, P) = raw column L1 sums a, raw row L1 sums b (before the eps clamp of F.normalize) and the
// log-sum-exp over i of each column's logits: what the backward needs besides the features.
// Kernels: csrc/ops/{cpu,cuda}/similarity_loss_kernel.*; autograd and fake: pscfast/ops/similarity_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("similarity_loss(Tensor fw, Tensor ft, float tau) -> (Tensor ce, Tensor weight, Tensor stats)");
  m.def("_similarity_loss_backward(Tensor grad_ce, Tensor fw, Tensor ft, Tensor stats, float tau, "
        "bool need_ft) -> (Tensor grad_fw, Tensor grad_ft)");
}

// Bilinear resize (F.interpolate, align_corners=False, no antialias) of per-layer maps (N, C_l, H_l, W_l) to
// size x size, concatenated on channels, as separable dense matrices; host code shared by the CPU and CUDA
// kernels. Per plane X (H x W):
//   R = A_y X A_x^T,   A_y (S x H), A_x (S x W): row d holds the weights (1 - l, l) at (i0, i1) of
//                      resize_index_half_pixel(d) (sampling.h), PyTorch's upsample_bilinear2d source indices
//                      and weights, computed in the accumulation type as PyTorch does;
//   dX = A_y^T dR A_x  (the adjoint: two plain matmuls).
// interpolate's CUDA backward scatters with atomics; these matmuls have no atomics, so gradients are
// bitwise reproducible. A layer already at size x size is copied (the reference skips interpolate there).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/min.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "ops/common/sampling.h"

namespace pscfast {

// (out x in) matrix of a 1-D resize in -> out, on the CPU in the scalar type T.
template <typename T>
at::Tensor resize_matrix_cpu(int64_t in, int64_t out) {
  at::Tensor a = at::zeros({out, in}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* p = a.data_ptr<T>();
  for (int64_t d = 0; d < out; ++d) {
    const Lerp<T> l = resize_index_half_pixel<T>(static_cast<int>(d), static_cast<int>(in), static_cast<int>(out));
    p[d * in + l.i0] += l.l0;
    p[d * in + l.i1] += l.l1;
  }
  return a;
}

inline at::Tensor resize_matrix(int64_t in, int64_t out, at::ScalarType acc, at::Device device) {
  const at::Tensor a = acc == at::kDouble ? resize_matrix_cpu<double>(in, out) : resize_matrix_cpu<float>(in, out);
  return a.to(device);
}

// The resize of one list of layers into a channel-concatenated buffer (B, sum C_l, size^2) and its adjoint,
// for any block of samples [n0, n0 + B): CPU kernels call it per sample, CUDA per chunk of samples.
class ConcatResize {
 public:
  // acc: the type of the matrices and of the products (float for half and bfloat16 maps).
  ConcatResize(at::TensorList layers, int64_t size, at::ScalarType acc) : size_(size), acc_(acc) {
    int64_t off = 0;
    for (const auto& x : layers) {
      Layer l{x.size(1), x.size(2), x.size(3), off, {}, {}};
      if (!l.same_size(size)) {
        l.ay = resize_matrix(l.H, size, acc, x.device());
        l.ax = resize_matrix(l.W, size, acc, x.device());
      }
      layers_.push_back(l);
      off += l.C;
    }
    channels_ = off;
  }

  int64_t channels() const { return channels_; }

  // out (B, channels, size^2), contiguous: samples [n0, n0 + B) of every layer, resized.
  void resize(at::TensorList layers, int64_t n0, const at::Tensor& out) const {
    const int64_t B = out.size(0), S = size_;
    for (size_t k = 0; k < layers_.size(); ++k) {
      const Layer& l = layers_[k];
      const at::Tensor x = layers[k].narrow(0, n0, B);
      at::Tensor dst = out.narrow(1, l.offset, l.C);  // (B, C, S^2), contiguous when B == 1
      if (l.same_size(S)) {
        dst.copy_(x.reshape({B, l.C, S * S}));
        continue;
      }
      // A_y first (batched over planes), then A_x as one GEMM straight into the buffer when it is contiguous
      const at::Tensor u = at::bmm(l.ay.expand({B * l.C, S, l.H}), x.to(acc_).reshape({B * l.C, l.H, l.W}));
      const at::Tensor u2 = u.view({B * l.C * S, l.W});
      if (dst.is_contiguous() && dst.scalar_type() == acc_) {
        at::Tensor d2 = dst.view({B * l.C * S, S});
        at::mm_out(d2, u2, l.ax.t());
      } else {
        dst.copy_(at::mm(u2, l.ax.t()).view({B, l.C, S * S}));
      }
    }
  }

  // The adjoint: dout (B, channels, size^2) -> grads[k][n0, n0 + B) (overwritten; grads contiguous).
  void adjoint(const at::Tensor& dout, int64_t n0, at::TensorList grads) const {
    const int64_t B = dout.size(0), S = size_;
    for (size_t k = 0; k < layers_.size(); ++k) {
      const Layer& l = layers_[k];
      at::Tensor dst = grads[k].narrow(0, n0, B);
      const at::Tensor dr = dout.narrow(1, l.offset, l.C);
      if (l.same_size(S)) {
        dst.copy_(dr.reshape(dst.sizes()));
        continue;
      }
      const at::Tensor v = at::bmm(l.ay.t().expand({B * l.C, l.H, S}), dr.to(acc_).reshape({B * l.C, S, S}));
      const at::Tensor v2 = v.view({B * l.C * l.H, S});
      if (dst.scalar_type() == acc_) {
        at::Tensor d2 = dst.view({B * l.C * l.H, l.W});
        at::mm_out(d2, v2, l.ax);
      } else {
        dst.copy_(at::mm(v2, l.ax).view(dst.sizes()));
      }
    }
  }

  // The adjoint of grid rows [r0, r0 + rows) alone: db (channels, rows * size), contiguous -> added to
  // grads[k][n] (zeroed before the first block). The CPU backward maps dFw block by block with it, so no
  // (channels, size^2) buffer of dFw exists.
  void adjoint_rows_add(const at::Tensor& db, int64_t n, int64_t r0, int64_t rows, at::TensorList grads) const {
    const int64_t S = size_;
    for (size_t k = 0; k < layers_.size(); ++k) {
      const Layer& l = layers_[k];
      at::Tensor g = grads[k][n];  // (C, H, W), contiguous
      const at::Tensor d = db.narrow(0, l.offset, l.C);
      if (l.same_size(S)) {
        g.view({l.C, S * S}).narrow(1, r0 * S, rows * S).add_(d);
        continue;
      }
      const at::Tensor t = at::mm(d.view({l.C * rows, S}), l.ax);
      g.baddbmm_(l.ay.narrow(0, r0, rows).t().expand({l.C, l.H, rows}), t.view({l.C, rows, l.W}));
    }
  }

 private:
  struct Layer {
    int64_t C, H, W, offset;
    at::Tensor ay, ax;
    bool same_size(int64_t s) const { return H == s && W == s; }
  };
  std::vector<Layer> layers_;
  int64_t size_, channels_ = 0;
  at::ScalarType acc_;
};

// Layer-list helpers of the host code.
// The layers detached (the kernels' products are plain ATen calls that autograd must not record).
inline std::vector<at::Tensor> detached(at::TensorList layers) {
  std::vector<at::Tensor> out;
  for (const auto& x : layers) out.push_back(x.detach());
  return out;
}

// A bilinear resize of non-negative maps is non-negative, so the inputs decide the L1 sums' fast path.
inline bool all_nonneg(at::TensorList layers) {
  for (const auto& x : layers)
    if (x.min().item<double>() < 0) return false;
  return true;
}

inline std::vector<at::Tensor> empty_like_layers(at::TensorList layers) {
  std::vector<at::Tensor> out;
  for (const auto& x : layers) out.push_back(at::empty(x.sizes(), x.options()));
  return out;
}

}  // namespace pscfast

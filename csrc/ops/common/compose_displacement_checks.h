// Shapes and checks of the compose_displacement arguments, shared by the CPU and CUDA kernels (direct
// torch.ops.pscfast calls; the Python layer validates first with friendlier messages).
#pragma once

#include "ops/common/flow_checks.h"

namespace pscfast {

struct CycleDims {
  int64_t N, P, Pb;  // batch, pixels of image a, pixels of image b
  int H, W, Hb, Wb;
};

inline CycleDims check_cycle(const char* op, const at::Tensor& f_ab, const at::Tensor& f_bc, const at::Tensor& m_ab,
                             const at::Tensor& m_bc) {
  TORCH_CHECK(f_ab.dim() == 4 && f_ab.size(1) == 2, "pscfast::", op, ": f_ab must be (N, 2, H, W), got ", f_ab.sizes());
  check_field(op, "f_bc", f_bc, f_ab, 2);
  check_field(op, "m_ab", m_ab, f_ab, 1);
  check_field(op, "m_bc", m_bc, f_ab, 1);
  TORCH_CHECK(m_ab.sizes().slice(2) == f_ab.sizes().slice(2) && m_bc.sizes().slice(2) == f_bc.sizes().slice(2),
              "pscfast::", op, ": m_ab must match f_ab's spatial size and m_bc f_bc's");
  return {f_ab.size(0),
          f_ab.size(2) * f_ab.size(3),
          f_bc.size(2) * f_bc.size(3),
          static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_ab.size(3)),
          static_cast<int>(f_bc.size(2)),
          static_cast<int>(f_bc.size(3))};
}

}  // namespace pscfast

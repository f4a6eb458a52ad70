// The per-pixel part of truncated_flow_loss (Zhou et al.), shared by the CPU and CUDA kernels.
#pragma once

#include "ops/common/sampling.h"

namespace pscfast {

// truncated_flow_loss's squared error |pred - target|^2 at pixel p of one sample (channels `plane` apart).
template <typename T, typename S>
PSC_HD T squared_error(const S* pred, const S* target, int64_t plane, int64_t p, T* dx, T* dy) {
  *dx = static_cast<T>(pred[p]) - static_cast<T>(target[p]);
  *dy = static_cast<T>(pred[plane + p]) - static_cast<T>(target[plane + p]);
  return *dx * *dx + *dy * *dy;
}

}  // namespace pscfast

// Launch arithmetic shared by the CUDA kernels.
#pragma once

#include <cstdint>

namespace pscfast {

// Blocks of kThreads threads covering n elements, one thread each.
template <int kThreads>
inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

}  // namespace pscfast

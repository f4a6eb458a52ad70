// PSCFAST_CHECK_FINITE=0 turns off the refusal of NaN or infinite sampling positions (grids, flows). Read at every
// call, as the Python layer reads it: users and tests set it at run time.
#pragma once

#include <cstdlib>
#include <cstring>

namespace pscfast {

inline bool check_finite_enabled() {
  const char* value = std::getenv("PSCFAST_CHECK_FINITE");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace pscfast

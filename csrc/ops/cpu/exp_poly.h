// exp that vectorises, for the CPU kernels' loops (std::exp does not without -ffast-math). float:
// Cody-Waite reduction and Cephes' expf polynomial, < 1 ulp (measured over every float) for x in [-87, 88],
// x clamped there (below -87 it gives ~1e-38 instead of 0, negligible next to a softmax's largest term 1);
// double (gradcheck, parity) keeps std::exp.
// Written for GCC's vectoriser under the default -ftrapping-math, which leaves a loop scalar when it holds
// std::floor, a float-to-int conversion, or a float select that it can turn into a branch around the
// arithmetic after it: k = round(x / ln 2) comes from adding and subtracting 1.5 * 2^23 (the sum holds k in
// its low mantissa bits), and the clamps select bit patterns.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace pscfast {

// c ? a : b on bit patterns.
inline float select_bits(bool c, float a, float b) {
  const int32_t m = -static_cast<int32_t>(c);
  return std::bit_cast<float>((std::bit_cast<int32_t>(a) & m) | (std::bit_cast<int32_t>(b) & ~m));
}

inline float exp_poly(float x) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23, bit pattern 0x4B400000
  const float lo = select_bits(x < -87.0f, -87.0f, x), v = select_bits(lo > 88.0f, 88.0f, lo);
  const float shifted = v * 1.44269504088896341f + kShift;
  const float k = shifted - kShift;
  const float r = (v - k * 0.693359375f) + k * 2.12194440e-4f;  // ln 2 in two parts: k * 0.693359375 is exact
  // Cephes' expf polynomial: exp(r) = 1 + r + r^2 P(r) on [-ln 2 / 2, ln 2 / 2]
  const float P = 5.0000001201e-1f +
                  r * (1.6666665459e-1f +
                       r * (4.1665795894e-2f + r * (8.3334519073e-3f + r * (1.3981999507e-3f + r * 1.9875691500e-4f))));
  const float p = 1.0f + (r + r * r * P);
  const int32_t scale = (std::bit_cast<int32_t>(shifted) - 0x4B400000 + 127) << 23;  // 2^k
  return p * std::bit_cast<float>(scale);
}

inline double exp_poly(double x) { return std::exp(x); }

}  // namespace pscfast

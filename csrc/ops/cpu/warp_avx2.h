// Two hot loops of the CPU warp in AVX2 intrinsics, eight points at a time, for float where the CPU has AVX2 and
// FMA (checked at run time; each returns how many points it did, a multiple of 8, or 0, and the caller does the
// rest with the portable loops):
// - pixel_coords_avx2: an (x, y)-interleaved grid to pixel coordinates, as row_to_pixel (warp_taps.h) does for
//   each coordinate with a stride of 2, which compilers vectorise with a load per element;
// - sample_grid_avx2: one-channel bilinear samples straight from the grid and, where jac is not null, their
//   gradients in the grid point (warp_kernel.cpp's fused forward). The coordinates stay in registers: writing
//   them to arrays and reading them back, with the arrays' allocation, took 1 of the 12 us of a 16 x 1 x 16 x 16
//   warp with its Jacobian (SFNet's mask warps). Compilers do not emit hardware gathers for the four taps (their
//   generic tuning assumes slow gathers), and the emulated ones made the loop twice as slow as ATen's grid
//   sampler, which gathers in hardware, a cycle per element on the AMD EPYC we measure on. This loop reads each
//   row's two adjacent taps with one plain 64-bit load instead: the taps of eight points are 16 loads, not four
//   gathers of 8. Taps outside the image count as 0; the Jacobian is written (x, y)-interleaved, as the grid is.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

namespace pscfast {
namespace cpu_warp {

inline bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

// A lane that reads NaN or infinity turns `acc` NaN (their product with 0 is NaN; a finite value's is +-0).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 flag_nonfinite(__m256 acc, __m256 g) {
  return _mm256_fmadd_ps(g, _mm256_setzero_ps(), acc);
}

// One coordinate of row_to_pixel, eight at a time, with the same arithmetic: ((g + 1) / 2) * scale is
// (g + 1) * (scale / 2), both one rounding of the same value. A NaN becomes the lower bound through max's operand
// order (vmaxps returns its second operand when either is NaN), as row_to_pixel's NaN becomes -2 before the clamp.
template <bool kAlign, bool kBorder>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 to_pixel_avx2(__m256 g, int size, __m256& dp) {
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 scale = _mm256_set1_ps(static_cast<float>(kAlign ? size - 1 : size));
  const __m256 d0 = _mm256_mul_ps(scale, half);
  const __m256 lo = _mm256_set1_ps(kBorder ? 0.0f : -2.0f);
  const __m256 hi = _mm256_set1_ps(static_cast<float>(kBorder ? size - 1 : size + 1));
  __m256 v = kAlign ? _mm256_mul_ps(_mm256_add_ps(g, one), d0)
                    : _mm256_mul_ps(_mm256_fmsub_ps(_mm256_add_ps(g, one), scale, one), half);
  v = _mm256_max_ps(v, lo);
  // border: the derivative is 0 where the clamp holds the point (strictly inside: the clamp's lower bound is 0)
  dp = kBorder ? _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(v, lo, _CMP_GT_OQ), _mm256_cmp_ps(v, hi, _CMP_LT_OQ)), d0)
               : d0;
  return _mm256_min_ps(v, hi);
}

// (x0 y0 x1 y1 x2 y2 x3 y3 | x4 ...) at g -> x0..x7 and y0..y7: shuffle within 128-bit lanes, then order the lanes.
__attribute__((target("avx2,fma"), always_inline)) inline void deinterleave_avx2(const float* g, __m256& gx, __m256& gy,
                                                                                 __m256& nonfinite) {
  const __m256 a = _mm256_loadu_ps(g), b = _mm256_loadu_ps(g + 8);
  nonfinite = flag_nonfinite(flag_nonfinite(nonfinite, a), b);
  gx =
      _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
  gy =
      _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
}

__attribute__((target("avx2,fma"), always_inline)) inline int any_lane(__m256 nonfinite) {
  return _mm256_movemask_ps(_mm256_cmp_ps(nonfinite, nonfinite, _CMP_UNORD_Q)) != 0;
}

template <bool kAlign, bool kBorder>
__attribute__((target("avx2,fma"))) int pixel_coords_avx2_body(const float* g, int n, int W, int H, float* px,
                                                               float* dpx, float* py, float* dpy, int& bad) {
  __m256 nonfinite = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gx, gy, dx, dy;
    deinterleave_avx2(g + 2 * i, gx, gy, nonfinite);
    _mm256_storeu_ps(px + i, to_pixel_avx2<kAlign, kBorder>(gx, W, dx));
    _mm256_storeu_ps(py + i, to_pixel_avx2<kAlign, kBorder>(gy, H, dy));
    _mm256_storeu_ps(dpx + i, dx);
    _mm256_storeu_ps(dpy + i, dy);
  }
  bad |= any_lane(nonfinite);
  return i;
}

inline int pixel_coords_avx2(const float* g, int n, int W, int H, bool align, bool border, float* px, float* dpx,
                             float* py, float* dpy, int& bad) {
  if (!has_avx2()) return 0;
  const auto body = align ? (border ? pixel_coords_avx2_body<true, true> : pixel_coords_avx2_body<true, false>)
                          : (border ? pixel_coords_avx2_body<false, true> : pixel_coords_avx2_body<false, false>);
  return body(g, n, W, H, px, dpx, py, dpy, bad);
}

// Two adjacent floats, x[a] and x[a + 1], and x[b] and x[b + 1], as one vector (a, a + 1, b, b + 1).
__attribute__((target("avx2,fma"), always_inline)) inline __m128 two_pairs(const float* x, int32_t a, int32_t b) {
  return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadu_si64(x + a)), reinterpret_cast<const __m64*>(x + b));
}

// The two taps of one row for eight points whose pairs start at the lanes of `start`: left and right come back as
// each pair's first and second values. Plain loads: gathering the same pairs as 64-bit elements took twice as long.
__attribute__((target("avx2,fma"), always_inline)) inline void row_pairs_avx2(const float* x, __m256i start,
                                                                              __m256& left, __m256& right) {
  const __m128i lo = _mm256_castsi256_si128(start), hi = _mm256_extracti128_si256(start, 1);
  // (0, 1 | 4, 5) and (2, 3 | 6, 7), so that shuffling within the 128-bit lanes puts the points in order
  const __m256 a = _mm256_set_m128(two_pairs(x, _mm_cvtsi128_si32(hi), _mm_extract_epi32(hi, 1)),
                                   two_pairs(x, _mm_cvtsi128_si32(lo), _mm_extract_epi32(lo, 1)));
  const __m256 b = _mm256_set_m128(two_pairs(x, _mm_extract_epi32(hi, 2), _mm_extract_epi32(hi, 3)),
                                   two_pairs(x, _mm_extract_epi32(lo, 2), _mm_extract_epi32(lo, 3)));
  left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  right = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}

// The lanes with 0 <= v < size, as one unsigned comparison: v <= size - 1.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 inside_avx2(__m256i v, __m256i last) {
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_min_epu32(v, last), v));
}

// Needs W >= 2 (a pair of columns per row).
template <bool kAlign, bool kBorder, bool kJacobian>
__attribute__((target("avx2,fma"))) int sample_grid_avx2_body(const float* g, int n, int W, int H, const float* x,
                                                              const int32_t* base, float* out, float* jac, int& bad) {
  const __m256i w = _mm256_set1_epi32(W), last_col = _mm256_set1_epi32(W - 1), last_row = _mm256_set1_epi32(H - 1);
  const __m256i col_hi = _mm256_set1_epi32(W - 2), zero_i = _mm256_setzero_si256(), minus1 = _mm256_set1_epi32(-1);
  const __m256 fone = _mm256_set1_ps(1.0f);
  __m256 nonfinite = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gx, gy, dpx, dpy;
    deinterleave_avx2(g + 2 * i, gx, gy, nonfinite);
    const __m256 X = to_pixel_avx2<kAlign, kBorder>(gx, W, dpx), Y = to_pixel_avx2<kAlign, kBorder>(gy, H, dpy);
    const __m256 fx = _mm256_floor_ps(X), fy = _mm256_floor_ps(Y);
    const __m256i x0 = _mm256_cvttps_epi32(fx), y0 = _mm256_cvttps_epi32(fy);
    const __m256i x1 = _mm256_sub_epi32(x0, minus1), y1 = _mm256_sub_epi32(y0, minus1);
    // e = (fx + 1) - X and 1 - (X - fx) round the same value once: X - fx is exact
    const __m256 r = _mm256_sub_ps(X, fx), d = _mm256_sub_ps(Y, fy);
    const __m256 e = _mm256_sub_ps(fone, r), s = _mm256_sub_ps(fone, d);
    // Each row's pair starts at a column clamped to [0, W - 2], on a row clamped to [0, H - 1]: every read lies in
    // the image. Column x0 is the pair's first value but at x0 = W - 1, column x0 + 1 its second but at x0 = -1;
    // the masks zero the taps outside.
    const __m256i b = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + i)),
                                       _mm256_min_epi32(_mm256_max_epi32(x0, zero_i), col_hi));
    const __m256i top =
        _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(y0, zero_i), last_row), w));
    const __m256i bottom =
        _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(y1, zero_i), last_row), w));
    __m256 t0, t1, b0, b1;
    row_pairs_avx2(x, top, t0, t1);
    row_pairs_avx2(x, bottom, b0, b1);
    const __m256 my0 = inside_avx2(y0, last_row), my1 = inside_avx2(y1, last_row);
    const __m256 mx0 = inside_avx2(x0, last_col), mx1 = inside_avx2(x1, last_col);
    t0 = _mm256_and_ps(t0, my0);
    t1 = _mm256_and_ps(t1, my0);
    b0 = _mm256_and_ps(b0, my1);
    b1 = _mm256_and_ps(b1, my1);
    const __m256 at_last = _mm256_castsi256_ps(_mm256_cmpeq_epi32(x0, last_col));
    const __m256 at_minus1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(x0, minus1));
    const __m256 v0 = _mm256_and_ps(_mm256_blendv_ps(t0, t1, at_last), mx0);
    const __m256 v1 = _mm256_and_ps(_mm256_blendv_ps(t1, t0, at_minus1), mx1);
    const __m256 v2 = _mm256_and_ps(_mm256_blendv_ps(b0, b1, at_last), mx0);
    const __m256 v3 = _mm256_and_ps(_mm256_blendv_ps(b1, b0, at_minus1), mx1);
    __m256 o = _mm256_mul_ps(_mm256_mul_ps(e, s), v0);
    o = _mm256_fmadd_ps(_mm256_mul_ps(r, s), v1, o);
    o = _mm256_fmadd_ps(_mm256_mul_ps(e, d), v2, o);
    o = _mm256_fmadd_ps(_mm256_mul_ps(r, d), v3, o);
    _mm256_storeu_ps(out + i, o);
    if constexpr (kJacobian) {
      const __m256 jx =
          _mm256_mul_ps(dpx, _mm256_fmadd_ps(s, _mm256_sub_ps(v1, v0), _mm256_mul_ps(d, _mm256_sub_ps(v3, v2))));
      const __m256 jy =
          _mm256_mul_ps(dpy, _mm256_fmadd_ps(e, _mm256_sub_ps(v2, v0), _mm256_mul_ps(r, _mm256_sub_ps(v3, v1))));
      // (x, y) pairs: unpack within 128-bit lanes, then put the lanes in order
      const __m256 lo = _mm256_unpacklo_ps(jx, jy), hi = _mm256_unpackhi_ps(jx, jy);
      _mm256_storeu_ps(jac + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(jac + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
  }
  bad |= any_lane(nonfinite);
  return i;
}

template <bool kAlign>
int sample_grid_avx2_aligned(const float* g, int n, int W, int H, bool border, const float* x, const int32_t* base,
                             float* out, float* jac, int& bad) {
  if (jac == nullptr)
    return (border ? sample_grid_avx2_body<kAlign, true, false>
                   : sample_grid_avx2_body<kAlign, false, false>)(g, n, W, H, x, base, out, jac, bad);
  return (border ? sample_grid_avx2_body<kAlign, true, true>
                 : sample_grid_avx2_body<kAlign, false, true>)(g, n, W, H, x, base, out, jac, bad);
}

inline int sample_grid_avx2(const float* g, int n, int W, int H, bool align, bool border, const float* x,
                            const int32_t* base, float* out, float* jac, int& bad) {
  if (!has_avx2() || W < 2) return 0;
  return align ? sample_grid_avx2_aligned<true>(g, n, W, H, border, x, base, out, jac, bad)
               : sample_grid_avx2_aligned<false>(g, n, W, H, border, x, base, out, jac, bad);
}

}  // namespace cpu_warp
}  // namespace pscfast

#else

namespace pscfast {
namespace cpu_warp {

inline bool has_avx2() { return false; }

inline int pixel_coords_avx2(const float*, int, int, int, bool, bool, float*, float*, float*, float*, int&) {
  return 0;
}

inline int sample_grid_avx2(const float*, int, int, int, bool, bool, const float*, const int32_t*, float*, float*,
                            int&) {
  return 0;
}

}  // namespace cpu_warp
}  // namespace pscfast

#endif

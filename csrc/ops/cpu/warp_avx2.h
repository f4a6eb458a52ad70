// Two hot loops of the CPU warp in AVX2 intrinsics, eight points at a time, for float where the CPU has AVX2 and
// FMA (checked at run time; each returns how many points it did, a multiple of 8, or 0, and the caller does the
// rest with the portable loops):
// - pixel_coords_avx2: an (x, y)-interleaved grid to pixel coordinates, as row_to_pixel (warp_taps.h) does for
//   each coordinate with a stride of 2, which compilers vectorise with a load per element;
// - sample_avx2: one-channel bilinear samples and, where jac is not null, their gradients in the grid point
//   (warp_kernel.cpp's sample_points). Compilers do not emit hardware gathers for the four taps (their generic
//   tuning assumes slow gathers), and the emulated ones made the loop twice as slow as ATen's grid sampler, which
//   gathers in hardware, a cycle per element on the AMD EPYC we measured. This loop reads each row's two
//   adjacent taps with one plain 64-bit load instead: the taps of eight points are 16 loads, not four gathers of
//   8. Taps outside the image count as 0; the Jacobian is written (x, y)-interleaved, as the grid is.
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

// One coordinate of row_to_pixel, eight at a time, with the same arithmetic; `bad` collects the lanes that are
// NaN or infinite.
__attribute__((target("avx2,fma"))) inline __m256 to_pixel_avx2(__m256 g, int size, bool align, bool border, __m256& dp,
                                                                __m256& bad) {
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  const __m256 scale = _mm256_set1_ps(static_cast<float>(align ? size - 1 : size));
  const __m256 d0 = _mm256_div_ps(scale, two), hi = _mm256_set1_ps(static_cast<float>(size - 1));
  bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(g, g), _mm256_setzero_ps(), _CMP_NEQ_UQ));
  __m256 v = align ? _mm256_mul_ps(_mm256_div_ps(_mm256_add_ps(g, one), two), scale)
                   : _mm256_div_ps(_mm256_fmsub_ps(_mm256_add_ps(g, one), scale, one), two);
  v = _mm256_blendv_ps(_mm256_set1_ps(-2.0f), v, _mm256_cmp_ps(v, v, _CMP_EQ_OQ));  // NaN: far outside
  if (border) {
    const __m256 inside =
        _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_cmp_ps(v, hi, _CMP_LT_OQ));
    dp = _mm256_and_ps(inside, d0);
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), hi);
  }
  dp = d0;
  return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-2.0f)), _mm256_set1_ps(static_cast<float>(size + 1)));
}

__attribute__((target("avx2,fma"))) inline int pixel_coords_avx2_body(const float* g, int n, int W, int H, bool align,
                                                                      bool border, float* px, float* dpx, float* py,
                                                                      float* dpy, int& bad) {
  __m256 nonfinite = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // (x0 y0 x1 y1 x2 y2 x3 y3 | x4 ...) -> x0..x7 and y0..y7: shuffle within 128-bit lanes, then order the lanes
    const __m256 a = _mm256_loadu_ps(g + 2 * i), b = _mm256_loadu_ps(g + 2 * i + 8);
    const __m256 gx = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
    const __m256 gy = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
    __m256 dx, dy;
    _mm256_storeu_ps(px + i, to_pixel_avx2(gx, W, align, border, dx, nonfinite));
    _mm256_storeu_ps(py + i, to_pixel_avx2(gy, H, align, border, dy, nonfinite));
    _mm256_storeu_ps(dpx + i, dx);
    _mm256_storeu_ps(dpy + i, dy);
  }
  bad |= _mm256_movemask_ps(nonfinite) != 0;
  return i;
}

inline int pixel_coords_avx2(const float* g, int n, int W, int H, bool align, bool border, float* px, float* dpx,
                             float* py, float* dpy, int& bad) {
  return has_avx2() ? pixel_coords_avx2_body(g, n, W, H, align, border, px, dpx, py, dpy, bad) : 0;
}

// Two adjacent floats, x[a] and x[a + 1], and x[b] and x[b + 1], as one vector (a, a + 1, b, b + 1).
__attribute__((target("avx2,fma"))) inline __m128 two_pairs(const float* x, int32_t a, int32_t b) {
  return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadu_si64(x + a)), reinterpret_cast<const __m64*>(x + b));
}

// The two taps of one row for eight points whose pairs start at start[0..7]: left and right come back as each
// pair's first and second values. Plain loads: gathering the same pairs as 64-bit elements took twice as long.
__attribute__((target("avx2,fma"))) inline void row_pairs_avx2(const float* x, const int32_t* start, __m256& left,
                                                               __m256& right) {
  // (0, 1 | 4, 5) and (2, 3 | 6, 7), so that shuffling within the 128-bit lanes puts the points in order
  const __m256 a = _mm256_set_m128(two_pairs(x, start[4], start[5]), two_pairs(x, start[0], start[1]));
  const __m256 b = _mm256_set_m128(two_pairs(x, start[6], start[7]), two_pairs(x, start[2], start[3]));
  left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  right = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}

// Needs W >= 2 (a pair of columns per row); returns 0 otherwise.
__attribute__((target("avx2,fma"))) inline int sample_avx2_body(int n, int W, int H, const float* x, const float* px,
                                                                const float* py, const float* dpx, const float* dpy,
                                                                const int32_t* base, float* out, float* jac) {
  if (W < 2) return 0;
  const __m256i w = _mm256_set1_epi32(W), h = _mm256_set1_epi32(H), last_col = _mm256_set1_epi32(W - 1);
  const __m256i col_hi = _mm256_set1_epi32(W - 2), row_hi = _mm256_set1_epi32(H - 1), zero_i = _mm256_setzero_si256();
  const __m256i minus1 = _mm256_set1_epi32(-1), minus2 = _mm256_set1_epi32(-2), one = _mm256_set1_epi32(1);
  const __m256 fone = _mm256_set1_ps(1.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 X = _mm256_loadu_ps(px + i), Y = _mm256_loadu_ps(py + i);
    const __m256 fx = _mm256_floor_ps(X), fy = _mm256_floor_ps(Y);
    const __m256i x0 = _mm256_cvttps_epi32(fx), y0 = _mm256_cvttps_epi32(fy);
    const __m256 e = _mm256_sub_ps(_mm256_add_ps(fx, fone), X), r = _mm256_sub_ps(X, fx);
    const __m256 s = _mm256_sub_ps(_mm256_add_ps(fy, fone), Y), d = _mm256_sub_ps(Y, fy);
    // inside the image: column x0 in [0, W), x0 + 1 in [0, W); rows likewise
    const __m256i mx0 = _mm256_and_si256(_mm256_cmpgt_epi32(x0, minus1), _mm256_cmpgt_epi32(w, x0));
    const __m256i mx1 =
        _mm256_and_si256(_mm256_cmpgt_epi32(x0, minus2), _mm256_cmpgt_epi32(w, _mm256_add_epi32(x0, one)));
    const __m256i my0 = _mm256_and_si256(_mm256_cmpgt_epi32(y0, minus1), _mm256_cmpgt_epi32(h, y0));
    const __m256i my1 =
        _mm256_and_si256(_mm256_cmpgt_epi32(y0, minus2), _mm256_cmpgt_epi32(h, _mm256_add_epi32(y0, one)));
    // Each row's pair starts at a column clamped to [0, W - 2], on a row clamped to [0, H - 1]: every read lies in
    // the image. Column x0 is the pair's first value but at x0 = W - 1, column x0 + 1 its second but at x0 = -1;
    // the masks zero the taps outside.
    const __m256i col = _mm256_min_epi32(_mm256_max_epi32(x0, zero_i), col_hi);
    const __m256i b = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + i)), col);
    const __m256i top =
        _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(y0, zero_i), row_hi), w));
    const __m256i bottom = _mm256_add_epi32(
        b, _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(y0, one), zero_i), row_hi), w));
    alignas(32) int32_t starts[2][8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(starts[0]), top);
    _mm256_store_si256(reinterpret_cast<__m256i*>(starts[1]), bottom);
    __m256 t0, t1, b0, b1;
    row_pairs_avx2(x, starts[0], t0, t1);
    row_pairs_avx2(x, starts[1], b0, b1);
    const __m256 at_last = _mm256_castsi256_ps(_mm256_cmpeq_epi32(x0, last_col));
    const __m256 at_minus1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(x0, minus1));
    const __m256 first_top = _mm256_blendv_ps(t0, t1, at_last), second_top = _mm256_blendv_ps(t1, t0, at_minus1);
    const __m256 first_bottom = _mm256_blendv_ps(b0, b1, at_last), second_bottom = _mm256_blendv_ps(b1, b0, at_minus1);
    const __m256 v0 = _mm256_and_ps(first_top, _mm256_castsi256_ps(_mm256_and_si256(my0, mx0)));
    const __m256 v1 = _mm256_and_ps(second_top, _mm256_castsi256_ps(_mm256_and_si256(my0, mx1)));
    const __m256 v2 = _mm256_and_ps(first_bottom, _mm256_castsi256_ps(_mm256_and_si256(my1, mx0)));
    const __m256 v3 = _mm256_and_ps(second_bottom, _mm256_castsi256_ps(_mm256_and_si256(my1, mx1)));
    __m256 o = _mm256_mul_ps(_mm256_mul_ps(e, s), v0);
    o = _mm256_fmadd_ps(_mm256_mul_ps(r, s), v1, o);
    o = _mm256_fmadd_ps(_mm256_mul_ps(e, d), v2, o);
    o = _mm256_fmadd_ps(_mm256_mul_ps(r, d), v3, o);
    _mm256_storeu_ps(out + i, o);
    if (jac == nullptr) continue;
    const __m256 jx = _mm256_mul_ps(_mm256_loadu_ps(dpx + i),
                                    _mm256_fmadd_ps(s, _mm256_sub_ps(v1, v0), _mm256_mul_ps(d, _mm256_sub_ps(v3, v2))));
    const __m256 jy = _mm256_mul_ps(_mm256_loadu_ps(dpy + i),
                                    _mm256_fmadd_ps(e, _mm256_sub_ps(v2, v0), _mm256_mul_ps(r, _mm256_sub_ps(v3, v1))));
    // (x, y) pairs: unpack within 128-bit lanes, then put the lanes in order
    const __m256 lo = _mm256_unpacklo_ps(jx, jy), hi = _mm256_unpackhi_ps(jx, jy);
    _mm256_storeu_ps(jac + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(jac + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  return i;
}

inline int sample_avx2(int n, int W, int H, const float* x, const float* px, const float* py, const float* dpx,
                       const float* dpy, const int32_t* base, float* out, float* jac) {
  return has_avx2() ? sample_avx2_body(n, W, H, x, px, py, dpx, dpy, base, out, jac) : 0;
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

inline int sample_avx2(int, int, int, const float*, const float*, const float*, const float*, const float*,
                       const int32_t*, float*, float*) {
  return 0;
}

}  // namespace cpu_warp
}  // namespace pscfast

#endif

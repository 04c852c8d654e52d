// Vector math of the CPU kernels: GCC vector-extension types and branch-free float32 exp, expm1,
// log, sqrt and the noise stream's cos/sin, written once as templates over the vector type. The
// kernels instantiate them with 8 float lanes inside functions compiled for AVX2 + FMA and with 4
// lanes (SSE2, NEON: the baseline's native width, so that comparisons and blends stay vector
// instructions) elsewhere (dtype.h, launch). No intrinsics and no libm calls in the float32 code;
// float64 vectors call libm (std::) per lane.
//
// Semantics are libm's: NaN propagates, exp(-inf) = 0, exp(+inf) = inf, expm1(-inf) = -1,
// expm1(-0) = -0, log(0) = -inf, log(x < 0) = NaN, log(+inf) = inf; overflow gives inf and
// underflow gradual subnormals (exp), never a trap. Nothing here may be built with -ffast-math
// (the range checks compare against inf and NaN); the build adds -fno-math-errno, on which vsqrt
// relies to become one sqrtps / vsqrtps instead of a libm call per lane.
//
// Accuracy, measured against the correctly rounded float32 results (float64 libm, rounded) on every
// 5th float32 of each range (4.5e8 inputs for exp and expm1, 4.3e8 for log, 4e7 for cos/sin),
// both with FMA contraction (the AVX2 + FMA instantiation) and without (the baseline): the largest
// distance from the correctly rounded result, and in brackets the largest error against the exact
// value, in ulps of the result:
//   exp          x in [-104, 89] (all finite results, subnormals included)   1 ulp  (1.01)
//   expm1        x in [-104, 89]                                              2 ulps (1.56; 1.43 FMA)
//   log          every positive float32 (subnormals included)                 1 ulp  (0.82)
//   cos_sin_2pi  u in [2^-24, 1)                                              2 ulps (1.56)
// exp, expm1 and log also give libm's values for +-0, +-inf and NaN; sqrt is the hardware's,
// correctly rounded.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

// Every function taking or returning a 32- or 64-byte vector is always_inline, so the psABI difference
// between AVX and non-AVX argument passing that GCC warns about never reaches a real call. Vector
// arguments are passed by const reference for the same reason (GCC's note about them ignores
// this pragma).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastvae::cpu {

typedef float f32x2 __attribute__((vector_size(8)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x2 __attribute__((vector_size(16)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef std::int32_t i32x4 __attribute__((vector_size(16)));
typedef std::int32_t i32x8 __attribute__((vector_size(32)));
typedef std::int32_t i32x16 __attribute__((vector_size(64)));
typedef std::uint32_t u32x4 __attribute__((vector_size(16)));
typedef std::uint32_t u32x8 __attribute__((vector_size(32)));
typedef std::uint32_t u32x16 __attribute__((vector_size(64)));
typedef std::int64_t i64x2 __attribute__((vector_size(16)));
typedef std::int64_t i64x4 __attribute__((vector_size(32)));
typedef std::uint64_t u64x2 __attribute__((vector_size(16)));
typedef std::uint64_t u64x4 __attribute__((vector_size(32)));
typedef std::uint64_t u64x8 __attribute__((vector_size(64)));
typedef std::uint16_t u16x4 __attribute__((vector_size(8)));
typedef std::uint16_t u16x8 __attribute__((vector_size(16)));

#define FASTVAE_INLINE inline __attribute__((always_inline))

// The shapes that go with a floating-point vector V: its element, lane count, the signed integer
// vector of the same shape (comparison masks, bit patterns), the unsigned one, and the float32
// vector with as many lanes (the noise stream widened to V).
template <typename V>
struct VecTraits;
template <>
struct VecTraits<f32x4> {
  using elem = float;
  using mask = i32x4;
  using uint = u32x4;
  using f32 = f32x4;
  static constexpr int lanes = 4;
};
template <>
struct VecTraits<f32x8> {
  using elem = float;
  using mask = i32x8;
  using uint = u32x8;
  using f32 = f32x8;
  static constexpr int lanes = 8;
};
template <>
struct VecTraits<f32x16> {
  using elem = float;
  using mask = i32x16;
  using uint = u32x16;
  using f32 = f32x16;
  static constexpr int lanes = 16;
};
template <>
struct VecTraits<f64x2> {
  using elem = double;
  using mask = i64x2;
  using uint = u64x2;
  using f32 = f32x2;
  static constexpr int lanes = 2;
};
template <>
struct VecTraits<f64x4> {
  using elem = double;
  using mask = i64x4;
  using uint = u64x4;
  using f32 = f32x4;
  static constexpr int lanes = 4;
};
template <typename V>
using elem_t = typename VecTraits<V>::elem;
template <typename V>
using mask_t = typename VecTraits<V>::mask;
template <typename V>
using uint_t = typename VecTraits<V>::uint;
template <typename V>
constexpr int kLanesOf = VecTraits<V>::lanes;
template <typename V>
constexpr bool kIsDouble = std::is_same_v<elem_t<V>, double>;

// --- lane utilities ------------------------------------------------------------------------------

template <typename V>
FASTVAE_INLINE V splat(elem_t<V> x) {
  return V{} + x;
}

template <typename V>
FASTVAE_INLINE mask_t<V> as_int(const V& x) {
  return reinterpret_cast<mask_t<V>>(x);
}
template <typename V>
FASTVAE_INLINE V as_float(const mask_t<V>& x) {
  return reinterpret_cast<V>(x);
}

// Lane-wise `mask ? a : b` for a comparison mask (all ones or all zeros per lane).
template <typename V>
FASTVAE_INLINE V select(const mask_t<V>& mask, const V& a, const V& b) {
  return mask ? a : b;
}

// 0, 1, ..., lanes - 1.
template <typename V>
FASTVAE_INLINE V iota() {
  V v{};
  for (int i = 0; i < kLanesOf<V>; ++i) {
    v[i] = static_cast<elem_t<V>>(i);
  }
  return v;
}

// Lanes i < n all ones, the rest zero: masks the tail of a row. (A floating-point comparison:
// SSE2 has no 64-bit integer one.)
template <typename V>
FASTVAE_INLINE mask_t<V> lanes_below(int n) {
  return iota<V>() < static_cast<elem_t<V>>(n);
}

// Whether each lane is finite: x - x is 0 for finite x and NaN for inf and NaN.
template <typename V>
FASTVAE_INLINE mask_t<V> is_finite(const V& x) {
  return (x - x) == elem_t<V>(0);
}

// Lane-wise max, NaN-propagating from `x` (the new element): `m > x ? m : x` takes x when x is
// NaN. A NaN in a running max only ever feeds a sum that is NaN already.
template <typename V>
FASTVAE_INLINE V vmax(const V& m, const V& x) {
  return m > x ? m : x;
}

// Sum of the lanes, halving the vector each step.
template <typename V>
FASTVAE_INLINE elem_t<V> hsum(const V& v) {
  if constexpr (std::is_same_v<V, f32x8>) {
    return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) +
                __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else if constexpr (std::is_same_v<V, f32x4> || std::is_same_v<V, f64x4>) {
    const V s = v + __builtin_shufflevector(v, v, 2, 3, 0, 1);
    return s[0] + s[1];
  } else {
    return v[0] + v[1];
  }
}

// --- exp and expm1 -------------------------------------------------------------------------------

namespace detail {

// 2^k for integer lanes k in [-126, 127], by building the exponent field (other k, which only NaN
// inputs produce, give some float: the NaN carries through elsewhere).
template <typename V>
FASTVAE_INLINE V pow2i(const mask_t<V>& k) {
  return reinterpret_cast<V>(reinterpret_cast<uint_t<V>>(k + 127) << 23);
}

// Cephes' minimax P for e^r = 1 + r + r^2 P(r) on |r| <= ln 2 / 2: r + r^2 P(r) is expm1(r) with a
// small relative error for every r, tiny ones included (no cancellation: it never forms 1 + ...).
template <typename V>
FASTVAE_INLINE V expm1_reduced(const V& r) {
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return r + (r * r) * p;
}

// x = n ln 2 + r with |r| <= ln 2 / 2 (plus rounding), for |x| <= 2^21. n is rounded to nearest by
// the 1.5 * 2^23 shifter; ln 2 is in two parts, the first with 9 significant bits so that n times
// it is exact, the second making up the rest (Cody-Waite).
template <typename V>
FASTVAE_INLINE V reduce_ln2(const V& x, mask_t<V>* n) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V t = x * 1.44269504088896341f + shifter;
  const V nf = t - shifter;
  *n = as_int(t) - as_int(splat<V>(shifter));
  const V r = x - nf * 0.693359375f;
  return r - nf * -2.12194440e-4f;
}

// ln(x 2^e_offset) for positive normal finite x: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// f = m - 1 (exact), ln x = e ln 2 + f - f^2 / 2 + f^3 Q(f) with Cephes' logf minimax Q; ln 2 in
// two parts as above.
template <typename V>
FASTVAE_INLINE V log_normal(const V& x, const mask_t<V>& e_offset) {
  using I = mask_t<V>;
  const I bits = as_int(x);
  // Mantissa into [1, 2), then halved (and e incremented) where above sqrt(2).
  I e = (bits >> 23) - 127 + e_offset;
  V m = as_float<V>((bits & 0x007fffff) | 0x3f800000);
  const I big = m > 1.41421356237309505f;
  m = select(big, m * 0.5f, m);
  e = e - big;  // big is -1 where true
  const V f = m - 1.0f;
  const V ef = __builtin_convertvector(e, V);
  const V z = f * f;
  V q = splat<V>(7.0376836292e-2f);
  q = q * f + -1.1514610310e-1f;
  q = q * f + 1.1676998740e-1f;
  q = q * f + -1.2420140846e-1f;
  q = q * f + 1.4249322787e-1f;
  q = q * f + -1.6668057665e-1f;
  q = q * f + 2.0000714765e-1f;
  q = q * f + -2.4999993993e-1f;
  q = q * f + 3.3333331174e-1f;
  V y = f * z * q;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + ef * 0.693359375f;
}

template <typename V, typename F>
FASTVAE_INLINE V per_lane(const V& x, F f) {
  V y;
  for (int i = 0; i < kLanesOf<V>; ++i) {
    y[i] = f(x[i]);
  }
  return y;
}

}  // namespace detail

// e^x. The scale 2^n is applied as two halves (2^(n - n/2) 2^(n/2)), both normal numbers, so the
// result overflows to inf and underflows gradually into the subnormals with one rounding.
template <typename V>
FASTVAE_INLINE V vexp(const V& input) {
  if constexpr (kIsDouble<V>) {
    return detail::per_lane(input, [](double x) { return std::exp(x); });
  } else {
    using I = mask_t<V>;
    // Clamping keeps n in [-150, 129] (NaN passes: both comparisons are false).
    V x = select(input < -104.0f, splat<V>(-104.0f), input);
    x = select(x > 89.0f, splat<V>(89.0f), x);
    I n;
    const V r = detail::reduce_ln2(x, &n);
    const V p = detail::expm1_reduced(r);
    const I n1 = n >> 1;
    const V s1 = detail::pow2i<V>(n1);
    return (p * s1 + s1) * detail::pow2i<V>(n - n1);
  }
}

// e^x - 1, relatively accurate for small |x| (e^x computed and then decremented would lose it):
// with x = n ln 2 + r, e^x - 1 = 2^n expm1(r) + (2^n - 1), where 2^n - 1 is exact for |n| <= 24,
// and for n = 0 the result is expm1(r) itself. Below -25 the result is -1 to float32 precision;
// for n > 64 the -1 is far below an ulp, and the excess of n goes into a second, exact, scaling.
template <typename V>
FASTVAE_INLINE V vexpm1(const V& input) {
  if constexpr (kIsDouble<V>) {
    return detail::per_lane(input, [](double x) { return std::expm1(x); });
  } else {
    using I = mask_t<V>;
    V x = select(input < -25.0f, splat<V>(-25.0f), input);
    x = select(x > 89.0f, splat<V>(89.0f), x);
    I n;
    const V r = detail::reduce_ln2(x, &n);
    const V p = detail::expm1_reduced(r);
    const I n_low = n < 64 ? n : I{} + 64;
    const V s = detail::pow2i<V>(n_low);
    const V y = (s * p + (s - 1.0f)) * detail::pow2i<V>(n - n_low);
    // expm1(+-0) = +-0 (the polynomial would give +0 for -0).
    return select(input == 0.0f, input, y);
  }
}

// --- log -----------------------------------------------------------------------------------------

// ln x of positive normal finite lanes (the stream's uniforms), without the special cases.
template <typename V>
FASTVAE_INLINE V vlog_normal(const V& x) {
  return detail::log_normal(x, mask_t<V>{});
}

// ln x, with libm's special values: subnormals are scaled by 2^23 into the normal range first.
template <typename V>
FASTVAE_INLINE V vlog(const V& x) {
  if constexpr (kIsDouble<V>) {
    return detail::per_lane(x, [](double v) { return std::log(v); });
  } else {
    const mask_t<V> tiny = x < 1.17549435e-38f;  // below FLT_MIN (zero and negatives too)
    const V scaled = select(tiny, x * 8388608.0f, x);
    V y = detail::log_normal(scaled, tiny & -23);
    const V inf = splat<V>(__builtin_inff());
    y = select(x < 0.0f, splat<V>(__builtin_nanf("")), y);
    y = select(x == 0.0f, -inf, y);
    y = select(x == inf, inf, y);
    return select(x != x, x, y);
  }
}

// --- sqrt ----------------------------------------------------------------------------------------

// The hardware's correctly rounded sqrt: without errno (-fno-math-errno) GCC turns the lane loop
// into one sqrtps / vsqrtps.
template <typename V>
FASTVAE_INLINE V vsqrt(const V& x) {
  V y;
  for (int i = 0; i < kLanesOf<V>; ++i) {
    y[i] = __builtin_sqrtf(x[i]);
  }
  return y;
}

// --- the noise stream's cos and sin --------------------------------------------------------------

// cos and sin of the float32 angle a = float32(2 pi) u for uniforms u in (0, 1), exactly as
// csrc/philox.cuh and kernels/gaussian.py (_cos_sin_2pi) compute them, so every backend agrees to
// rounding: a = q pi/2 + r with |r| <= pi/4 (Cody-Waite with pi/2 in three float32 parts, the first
// two short enough that q <= 4 times them is exact), Cephes' minimax polynomials on [-pi/4, pi/4],
// and the quadrant q mod 4 choosing and negating. a >= 0, so truncation is the floor.
template <typename V>
FASTVAE_INLINE void vcos_sin_2pi(const V& u, V* cos_a, V* sin_a) {
  using I = mask_t<V>;
  using U = uint_t<V>;
  const V a = u * 6.28318530717958647692f;
  const I q = __builtin_convertvector(a * 0.6366197723675814f + 0.5f, I);
  const V qf = __builtin_convertvector(q, V);
  V r = a - qf * 1.5703125f;
  r = r - qf * 4.837512969970703e-04f;
  r = r - qf * 7.549790126404332e-08f;
  const V r2 = r * r;
  const V sin_r =
      r + r * r2 * (-1.6666654611e-01f + r2 * (8.3321608736e-03f + r2 * -1.9515295891e-04f));
  const V cos_r =
      1.0f - 0.5f * r2 +
      r2 * r2 * (4.166664568e-02f + r2 * (-1.388731625e-03f + r2 * 2.443315711e-05f));
  // Quadrants 0..3 give (c, s), (-s, c), (-c, -s), (s, -c): odd q swaps, and the sign bits flip
  // for cos in quadrants 1, 2 and for sin in 2, 3.
  const I odd = (q & 1) != 0;
  const V x = select(odd, sin_r, cos_r);
  const V y = select(odd, cos_r, sin_r);
  const U uq = reinterpret_cast<U>(q);
  *cos_a = as_float<V>(as_int(x) ^ reinterpret_cast<I>(((uq + 1) & 2) << 30));
  *sin_a = as_float<V>(as_int(y) ^ reinterpret_cast<I>((uq & 2) << 30));
}

}  // namespace fastvae::cpu

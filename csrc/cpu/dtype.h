// What the CPU kernels share besides the math: the dtype codes and their storage types, float16 and
// bfloat16 conversions written with integer bit operations (no compiler half type, no CUDA
// headers), vector loads and stores that convert any storage type to the compute vector, the dtype
// and feature-flag dispatch, and `launch`, which runs a kernel at the vector width of this CPU.
//
// Compute types follow csrc/dispatch.cuh: float32, float16 and bfloat16 compute in float32, float64
// in float64; results are rounded once to the storage type, to nearest even.
//
// Widths. A kernel is a struct with `template <int W> static void run(...)`, W the float32 lanes of
// its vectors (float64 vectors have W / 2). launch() runs run<8> inside a function compiled for
// AVX2 + FMA when the CPU has them (x86-64 with GCC: the run<8> body, always_inline, takes on that
// function's target), and run<4> otherwise: 4 lanes are the native width of SSE2 and NEON, so the
// baseline build keeps its comparisons and blends in vector registers (GCC splits wider generic
// vectors into scalars for those).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vmath.h"

// AVX2 + FMA variants with run-time selection: x86-64 with GCC. -DFASTVAE_CPU_BASELINE_ONLY
// builds the 4-lane kernels alone, to check them on an AVX2 machine (by hand: CI does not build it).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(FASTVAE_CPU_BASELINE_ONLY)
#define FASTVAE_CPU_AVX2 1
#define FASTVAE_CPU_TARGET_AVX2 __attribute__((target("avx2,fma")))
// The noise stream alone also has a 16-lane AVX-512 build (csrc/cpu/gaussian.cpp), which the
// 8-lane kernels call where the CPU has AVX-512F, DQ, BW and VL.
#define FASTVAE_CPU_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#else
#define FASTVAE_CPU_AVX2 0
#endif

namespace fastvae::cpu {

// --- storage and compute types -------------------------------------------------------------------

// IEEE binary16 and bfloat16 as their bit patterns.
struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

// The compute type of storage type T, and its vector at width W: W float32 lanes, or W / 2
// float64 lanes.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
template <int W, typename T>
using vec_t = std::conditional_t<
    std::is_same_v<T, double>, std::conditional_t<W == 8, f64x4, f64x2>,
    std::conditional_t<W == 16, f32x16, std::conditional_t<W == 8, f32x8, f32x4>>>;

// --- scalar conversions --------------------------------------------------------------------------

inline float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// binary16 -> float32, exact. The 15 exponent-and-mantissa bits shifted into float position and
// rebiased (+112 in the exponent) give every normal half; inf/NaN get 112 more, all ones (NaNs
// keep their payload and are quieted, as F16C and PyTorch do); subnormals get one more exponent
// step and then lose the implicit one by subtracting 2^-14, exactly, without forming a float
// subnormal.
inline float half_to_float(std::uint16_t h) {
  std::uint32_t magnitude = static_cast<std::uint32_t>(h & 0x7fffu) << 13;
  const std::uint32_t exponent = magnitude & 0x0f800000u;
  magnitude += 112u << 23;
  float f;
  if (exponent == 0x0f800000u) {
    // inf, or NaN quieted as hardware conversions do (payload kept)
    f = bits_to_float((magnitude + (112u << 23)) | ((h & 0x3ffu) != 0 ? 0x00400000u : 0u));
  } else if (exponent == 0) {
    f = bits_to_float(magnitude + (1u << 23)) - 6.103515625e-05f;  // 2^-14
  } else {
    f = bits_to_float(magnitude);
  }
  return bits_to_float(float_to_bits(f) | (static_cast<std::uint32_t>(h & 0x8000u) << 16));
}

// float32 -> binary16, rounding to nearest even: overflow to inf, NaN to a quiet NaN of the same
// sign. Results below 2^-14 are rounded by the float adder: adding 0.5 puts the half subnormal's
// last bit at the float's last bit, so the hardware rounds it, to nearest even. Normal results
// round by adding 0xfff plus the lowest kept bit, whose carry may step the exponent (to inf too).
inline std::uint16_t float_to_half(float x) {
  std::uint32_t f = float_to_bits(x);
  const std::uint32_t sign = f & 0x80000000u;
  f ^= sign;
  std::uint32_t h;
  if (f >= (143u << 23)) {  // 2^16: above the largest half after rounding, or inf or NaN
    h = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (f < (113u << 23)) {  // below 2^-14: half subnormal or zero
    h = float_to_bits(bits_to_float(f) + 0.5f) - 0x3f000000u;
  } else {
    f += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u);
    h = f >> 13;
  }
  return static_cast<std::uint16_t>(h | (sign >> 16));
}

inline float bfloat16_to_float(std::uint16_t b) {
  return bits_to_float(static_cast<std::uint32_t>(b) << 16);
}

// float32 -> bfloat16, rounding to nearest even; NaN stays NaN (quieted, sign kept).
inline std::uint16_t float_to_bfloat16(float x) {
  const std::uint32_t f = float_to_bits(x);
  if ((f & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((f >> 16) | 0x40u);
  }
  return static_cast<std::uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

// Storage <-> compute, one element.
inline float to_acc(float x) { return x; }
inline double to_acc(double x) { return x; }
inline float to_acc(Half x) { return half_to_float(x.bits); }
inline float to_acc(BFloat16 x) { return bfloat16_to_float(x.bits); }

template <typename T>
inline T from_acc(acc_t<T> x) {
  if constexpr (std::is_same_v<T, Half>) {
    return Half{float_to_half(x)};
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return BFloat16{float_to_bfloat16(x)};
  } else {
    return x;
  }
}

// --- vector conversions: the same algorithms, branch-free ---------------------------------------

// The 16-bit patterns of a float32 vector's lanes.
template <typename V>
using bits16_t = std::conditional_t<kLanesOf<V> == 8, u16x8, u16x4>;

template <typename V>
FASTVAE_INLINE V half_to_float(const bits16_t<V>& h) {
  using U = uint_t<V>;
  const U h32 = __builtin_convertvector(h, U);
  U magnitude = (h32 & 0x7fffu) << 13;
  const U exponent = magnitude & 0x0f800000u;
  magnitude += 112u << 23;
  const V normal = reinterpret_cast<V>(magnitude);
  const U quiet = reinterpret_cast<U>((h32 & 0x3ffu) != 0u) & 0x00400000u;  // NaN: quieted
  const V inf_nan = reinterpret_cast<V>((magnitude + (112u << 23)) | quiet);
  const V small = reinterpret_cast<V>(magnitude + (1u << 23)) - 6.103515625e-05f;
  const V f = exponent == 0x0f800000u ? inf_nan : (exponent == 0u ? small : normal);
  return reinterpret_cast<V>(reinterpret_cast<U>(f) | ((h32 & 0x8000u) << 16));
}

template <typename V>
FASTVAE_INLINE bits16_t<V> float_to_half(const V& x) {
  using U = uint_t<V>;
  U f = reinterpret_cast<U>(x);
  const U sign = f & 0x80000000u;
  f ^= sign;
  const U big = f > 0x7f800000u ? U{} + 0x7e00u : U{} + 0x7c00u;
  const U small = reinterpret_cast<U>(reinterpret_cast<V>(f) + 0.5f) - 0x3f000000u;
  const U normal =
      (f + ((static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu) + ((f >> 13) & 1u)) >> 13;
  const U h = f >= (143u << 23) ? big : (f < (113u << 23) ? small : normal);
  return __builtin_convertvector(h | (sign >> 16), bits16_t<V>);
}

template <typename V>
FASTVAE_INLINE V bfloat16_to_float(const bits16_t<V>& b) {
  return reinterpret_cast<V>(__builtin_convertvector(b, uint_t<V>) << 16);
}

template <typename V>
FASTVAE_INLINE bits16_t<V> float_to_bfloat16(const V& x) {
  using U = uint_t<V>;
  const U f = reinterpret_cast<U>(x);
  const U rounded = (f + 0x7fffu + ((f >> 16) & 1u)) >> 16;
  const U quiet = (f >> 16) | 0x40u;
  return __builtin_convertvector((f & 0x7fffffffu) > 0x7f800000u ? quiet : rounded, bits16_t<V>);
}

// --- vector loads and stores ---------------------------------------------------------------------

// kLanesOf<V> elements at p (any alignment) as V.
template <typename V, typename T>
FASTVAE_INLINE V load_vec(const T* p) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    bits16_t<V> bits;
    std::memcpy(&bits, p, sizeof bits);
    if constexpr (std::is_same_v<T, Half>) {
      return half_to_float<V>(bits);
    } else {
      return bfloat16_to_float<V>(bits);
    }
  } else {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}

template <typename V, typename T>
FASTVAE_INLINE void store_vec(T* p, const V& v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    bits16_t<V> bits;
    if constexpr (std::is_same_v<T, Half>) {
      bits = float_to_half(v);
    } else {
      bits = float_to_bfloat16(v);
    }
    std::memcpy(p, &bits, sizeof bits);
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

// The first n (<= lanes) elements at p; the other lanes hold `fill`. n == lanes is one vector
// load; a shorter tail goes through a small buffer, never touching memory past p + n.
template <typename V, typename T>
FASTVAE_INLINE V load(const T* p, int n, elem_t<V> fill = 0) {
  if (n == kLanesOf<V>) {
    return load_vec<V>(p);
  }
  V v = splat<V>(fill);
  for (int i = 0; i < n; ++i) {
    v[i] = to_acc(p[i]);
  }
  return v;
}

// n elements at p, p + stride, ... (any stride, 0 included); the other lanes 0.
template <typename V, typename T>
FASTVAE_INLINE V load_strided(const T* p, std::int64_t stride, int n) {
  V v{};
  for (int i = 0; i < n; ++i) {
    v[i] = to_acc(p[i * stride]);
  }
  return v;
}

// The first n (<= lanes) lanes of v, rounded to T, to p.
template <typename V, typename T>
FASTVAE_INLINE void store(T* p, const V& v, int n) {
  if (n == kLanesOf<V>) {
    store_vec(p, v);
    return;
  }
  for (int i = 0; i < n; ++i) {
    p[i] = from_acc<T>(v[i]);
  }
}

// Walks a row segment [0, width) in vectors of L lanes: step(d, L) for each whole vector, then
// step(d, n) once for a tail of n < L lanes (loads fill, stores skip the lanes past it).
template <int L, typename Step>
FASTVAE_INLINE void for_each_vector(std::int64_t width, Step&& step) {
  std::int64_t d = 0;
  for (; d + L <= width; d += L) {
    step(d, L);
  }
  if (d < width) {
    step(d, static_cast<int>(width - d));
  }
}

// kLanesOf<V> float32 normals of the noise stream at p, widened to V.
template <typename V>
FASTVAE_INLINE V load_noise(const float* p) {
  using F = typename VecTraits<V>::f32;
  F v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (kIsDouble<V>) {
    return __builtin_convertvector(v, V);
  } else {
    return v;
  }
}

// --- dispatch ------------------------------------------------------------------------------------

// Runs f(T{}) with T the storage type of dtype code `code`; an unknown code throws
// std::invalid_argument naming `what` and the code.
template <typename F>
void dispatch_dtype(int code, const char* what, F&& f) {
  switch (code) {
    case 0:
      f(float{});
      break;
    case 1:
      f(Half{});
      break;
    case 2:
      f(BFloat16{});
      break;
    case 3:
      f(double{});
      break;
    default:
      throw std::invalid_argument(std::string(what) + ": unsupported dtype code " +
                                  std::to_string(code) +
                                  " (expected 0 float32, 1 float16, 2 bfloat16, 3 float64)");
  }
}

// f(std::bool_constant<flags>...) for runtime flags: a kernel is instantiated per feature set.
template <typename F>
void dispatch_bools(F&& f) {
  f();
}
template <typename F, typename... Rest>
void dispatch_bools(F&& f, bool flag, Rest... rest) {
  if (flag) {
    dispatch_bools([&](auto... tail) { f(std::true_type{}, tail...); }, rest...);
  } else {
    dispatch_bools([&](auto... tail) { f(std::false_type{}, tail...); }, rest...);
  }
}

#if FASTVAE_CPU_AVX2
// Whether this CPU runs the AVX2 + FMA kernels (checked once).
inline bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

// Whether this CPU runs the AVX-512 noise stream (checked once): AVX-512F, DQ, BW and VL, and the
// environment variable FASTVAE_CPU_NO_AVX512 unset or empty (set, the AVX2 stream runs instead:
// how the tests compare the two on one machine).
inline bool cpu_has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    const char* off = std::getenv("FASTVAE_CPU_NO_AVX512");
    return (off == nullptr || *off == '\0') && cpu_has_avx2_fma() &&
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return has;
}

template <typename Kernel, typename... Args>
FASTVAE_CPU_TARGET_AVX2 __attribute__((noinline)) void run_avx2(Args... args) {
  Kernel::template run<8>(args...);
}
#endif

template <typename Kernel, typename... Args>
__attribute__((noinline)) void run_baseline(Args... args) {
  Kernel::template run<4>(args...);
}

// Kernel::run<W>(args...) at the widest width this CPU has.
template <typename Kernel, typename... Args>
void launch(Args... args) {
#if FASTVAE_CPU_AVX2
  if (cpu_has_avx2_fma()) {
    run_avx2<Kernel>(args...);
    return;
  }
#endif
  run_baseline<Kernel>(args...);
}

// --- threads -------------------------------------------------------------------------------------

// Whether this process was forked from one that had loaded the kernels (csrc/cpu/threads.cpp): there
// OpenMP's thread pool is gone, and a parallel region would wait for it forever.
bool forked_child() noexcept;

// The work for_row_ranges gives each thread at least: 8,192 units of about a nanosecond of one
// core's time (a kernel states its cost per row in the same units), so a call needs 16 us of work
// to be split, enough to pay for waking the pool's threads when they sleep.
constexpr std::int64_t kRowGrain = 8192;

// f(begin, end) over contiguous ranges that cover rows [0, rows): on the calling thread alone, or,
// when the rows hold at least two grains of work (rows * cost_per_row) and OpenMP may use more than
// one thread here, split evenly over min(that thread count, work / grain) threads of one OpenMP
// parallel region. Calls too small to split ask OpenMP nothing.
//
// The extension links the OpenMP runtime that PyTorch itself loads (libgomp.so.1: PyTorch is
// imported first, so the loader reuses its copy), so the threads are PyTorch's intra-op pool and
// follow torch.set_num_threads (it sets OpenMP's thread count). A pool of the kernels' own would
// compete with PyTorch's for the same cores (its workers spin for a while after each parallel op);
// one pool shares them.
//
// Every row is computed by one thread exactly as it would be alone, so results do not depend on the
// split or the thread count. A child process forked from this one stays on one thread (see
// forked_child). f must not throw.
template <typename F>
void for_row_ranges(std::int64_t rows, std::int64_t cost_per_row, F&& f) {
#ifdef _OPENMP
  const std::int64_t most = std::min(rows * cost_per_row / kRowGrain, rows);
  if (most > 1 && !omp_in_parallel() && !forked_child()) {
    const std::int64_t threads = std::min<std::int64_t>(most, omp_get_max_threads());
    if (threads > 1) {
#pragma omp parallel num_threads(static_cast<int>(threads))
      {
        const std::int64_t team = omp_get_num_threads();
        const std::int64_t index = omp_get_thread_num();
        const std::int64_t begin = rows * index / team;
        const std::int64_t end = rows * (index + 1) / team;
        if (begin < end) {
          f(begin, end);
        }
      }
      return;
    }
  }
#else
  (void)cost_per_row;
#endif
  f(std::int64_t{0}, rows);
}

}  // namespace fastvae::cpu

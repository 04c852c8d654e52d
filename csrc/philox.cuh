// fastvae's noise stream on the device: counter-based Philox4x32-10 and Box-Muller, bit for bit the
// stream of fastvae/reference/philox.py (and of the Triton kernels), so every backend draws the
// same normals from the same seed, to the rounding of log, sqrt, cos and sin.
//
// Element (r, d) of a (R, D) noise tensor is lane d % 4 of group g = d / 4 of row r:
//   words  = philox4x32_10(counter (g, r mod 2^32, r div 2^32, 0),
//                          key (seed mod 2^32, seed div 2^32))
//   u_i    = ((w_i >> 9) + 0.5) * 2^-23                     (exact in float32, in (0, 1))
//   n0, n1 = sqrt(-2 ln u0) (cos, sin)(2 pi u1),  n2, n3 = sqrt(-2 ln u2) (cos, sin)(2 pi u3)
// all in float32. Callers take stream_normals(seed, row, group) and use lane k's n_k. The functions
// are __host__ __device__ so that the stream can be checked against the reference on a CPU.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace fastvae {

// Random123's Philox4x32 multipliers and Weyl key increments.
constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Full unrolling of the rounds in device code; the host compiler (CPU checks) has no such pragma.
#ifdef __CUDA_ARCH__
#define FASTVAE_PHILOX_UNROLL _Pragma("unroll")
#else
#define FASTVAE_PHILOX_UNROLL
#endif

// Philox4x32 with 10 rounds of `counter` under the key (k0, k1).
// Each 32x32 -> 64-bit product is one wide multiply (IMAD.WIDE.U32) giving both halves.
__host__ __device__ __forceinline__ uint4 philox4x32_10(uint4 counter, std::uint32_t k0,
                                                        std::uint32_t k1) {
  FASTVAE_PHILOX_UNROLL
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const std::uint64_t product0 = static_cast<std::uint64_t>(counter.x) * kPhiloxM0;
    const std::uint64_t product1 = static_cast<std::uint64_t>(counter.z) * kPhiloxM1;
    const auto hi0 = static_cast<std::uint32_t>(product0 >> 32);
    const auto lo0 = static_cast<std::uint32_t>(product0);
    const auto hi1 = static_cast<std::uint32_t>(product1 >> 32);
    const auto lo1 = static_cast<std::uint32_t>(product1);
    counter = make_uint4(hi1 ^ counter.y ^ k0, lo1, hi0 ^ counter.w ^ k1, lo0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return counter;
}

// A Philox word as a float32 uniform in the open interval (0, 1): ((w >> 9) + 0.5) * 2^-23, exact.
__host__ __device__ __forceinline__ float uniform_open01(std::uint32_t word) {
  return (static_cast<float>(word >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

// cos and sin, in float32, of the float32 angle a = 2 pi u for a uniform u in (0, 1), as the Triton
// kernels compute them (kernels/gaussian.py, _cos_sin_2pi): a = q pi/2 + r with |r| <= pi/4
// (Cody-Waite, pi/2 in three float32 parts whose first two times q <= 4 are exact), then Cephes'
// minimax polynomials on [-pi/4, pi/4]; within 1.6 ulp of the exact values over the stream's 2^23
// uniforms. Unlike sincosf it has no slow path for huge arguments, hence no local memory.
__host__ __device__ __forceinline__ void cos_sin_2pi(float u, float* cos_a, float* sin_a) {
  const float a = 6.28318530717958647692f * u;
  const float q = floorf(a * 0.6366197723675814f + 0.5f);
  float r = a - q * 1.5703125f;
  r = r - q * 4.837512969970703e-04f;
  r = r - q * 7.549790126404332e-08f;
  const float r2 = r * r;
  const float sin_r =
      r + r * r2 * (-1.6666654611e-01f + r2 * (8.3321608736e-03f + r2 * -1.9515295891e-04f));
  const float cos_r =
      1.0f - 0.5f * r2 +
      r2 * r2 * (4.166664568e-02f + r2 * (-1.388731625e-03f + r2 * 2.443315711e-05f));
  switch (static_cast<int>(q) & 3) {
    case 0:
      *cos_a = cos_r;
      *sin_a = sin_r;
      break;
    case 1:
      *cos_a = -sin_r;
      *sin_a = cos_r;
      break;
    case 2:
      *cos_a = -cos_r;
      *sin_a = -sin_r;
      break;
    default:
      *cos_a = sin_r;
      *sin_a = -cos_r;
      break;
  }
}

// The four float32 normals of one Philox call: Box-Muller on (u0, u1) and on (u2, u3).
__host__ __device__ __forceinline__ float4 box_muller(uint4 words) {
  // sqrtf is correctly rounded (nvcc's default -prec-sqrt=true; never built with fast math).
  const float radius01 = sqrtf(-2.0f * logf(uniform_open01(words.x)));
  const float radius23 = sqrtf(-2.0f * logf(uniform_open01(words.z)));
  float cos1, sin1, cos3, sin3;
  cos_sin_2pi(uniform_open01(words.y), &cos1, &sin1);
  cos_sin_2pi(uniform_open01(words.w), &cos3, &sin3);
  return make_float4(radius01 * cos1, radius01 * sin1, radius23 * cos3, radius23 * sin3);
}

// The stream's normals of group `group` (columns 4 group .. 4 group + 3) of row `row` under `seed`.
__host__ __device__ __forceinline__ float4 stream_normals(std::uint64_t seed, std::uint64_t row,
                                                          std::uint32_t group) {
  const uint4 counter = make_uint4(group, static_cast<std::uint32_t>(row),
                                   static_cast<std::uint32_t>(row >> 32), 0u);
  return box_muller(philox4x32_10(counter, static_cast<std::uint32_t>(seed),
                                  static_cast<std::uint32_t>(seed >> 32)));
}

// Writes the stream's normals for columns d0 .. d0 + N - 1 of `row` into out (d0 a multiple of 4,
// N a multiple of 4): one Philox call per group of four.
template <int N>
__device__ __forceinline__ void stream_normals(std::uint64_t seed, std::uint64_t row,
                                               std::int64_t d0, float (&out)[N]) {
  static_assert(N % 4 == 0, "the stream comes in groups of four normals");
#pragma unroll
  for (int g = 0; g < N / 4; ++g) {
    const float4 n = stream_normals(seed, row, static_cast<std::uint32_t>((d0 >> 2) + g));
    out[4 * g + 0] = n.x;
    out[4 * g + 1] = n.y;
    out[4 * g + 2] = n.z;
    out[4 * g + 3] = n.w;
  }
}

}  // namespace fastvae

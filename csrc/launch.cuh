// Launch helpers shared by the kernel families (host code, but for ceil_div): turning runtime
// feature flags into template arguments (the bool counterpart of FASTVAE_DISPATCH_FLOAT), and grid
// arithmetic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastvae {

// Threads per block of every kernel in gaussian.cu and iwae.cu.
constexpr int kThreads = 256;
// Resident blocks per SM that kernels on storage type T ask of __launch_bounds__, which caps their
// registers at 65536 / (kThreads * kMinBlocks<T>): 64 for 4-byte types (half the SM's threads
// resident, each with 16-byte loads in flight: enough for these memory-bound kernels), 80 for
// 2-byte types (whose chunks hold twice the elements) and 128 for float64. Without a minimum, ptxas
// trades registers for occupancy on its own and spills.
template <typename T>
inline constexpr int kMinBlocks = sizeof(T) == 8 ? 2 : sizeof(T) == 4 ? 4 : 3;

// Cap on gridDim.x: enough blocks to fill any current GPU many times over; kernels stride over the
// rest with grid-stride loops, so row and column counts past 2^31 still work.
constexpr std::int64_t kMaxBlocks = std::int64_t{1} << 16;
// Blocks worth launching before a kernel splits more work across blocks (at some cost, e.g. less
// coalescing): enough to fill a 132-SM H200 with 8 resident 256-thread blocks per SM.
constexpr std::int64_t kTargetBlocks = 1024;
// CUDA's limit on gridDim.y and gridDim.z.
constexpr std::int64_t kMaxGridY = 65535;

__host__ __device__ constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// The smallest power of two >= n (n >= 1), as an int64.
inline std::int64_t next_pow2(std::int64_t n) {
  std::int64_t p = 1;
  while (p < n) {
    p *= 2;
  }
  return p;
}

// Blocks for `work` items of which a block takes `per_block` per sweep, at most kMaxBlocks.
inline unsigned int grid_blocks(std::int64_t work, std::int64_t per_block) {
  const std::int64_t blocks = std::min(ceil_div(work, per_block), kMaxBlocks);
  return static_cast<unsigned int>(std::max<std::int64_t>(1, blocks));
}

// dispatch_bools(f, b1, ..., bn) calls f(std::bool_constant<b1>{}, ..., std::bool_constant<bn>{}):
// runtime flags become compile-time template arguments (read them as decltype(arg)::value), so a
// kernel is written once with `if constexpr` feature switches and instantiated per combination.
template <typename F>
void dispatch_bools(F&& f) {
  f();
}

template <typename F, typename... Flags>
void dispatch_bools(F&& f, bool first, Flags... rest) {
  if (first) {
    dispatch_bools([&](auto... flags) { f(std::true_type{}, flags...); }, rest...);
  } else {
    dispatch_bools([&](auto... flags) { f(std::false_type{}, flags...); }, rest...);
  }
}

}  // namespace fastvae

// Warp- and block-level reductions shared by the kernels, and the online log-sum-exp.
//
// Warp reductions are xor butterflies: every participating lane ends with the result, and all 32
// lanes of the warp must call them together (the shuffles use the full mask), so loops that
// contain them must have warp-uniform trip counts. Two shapes:
//   warp_reduce(v, op, width)          over each aligned group of `width` consecutive lanes
//                                      (width a power of two <= 32): several rows per warp;
//   warp_reduce_strided(v, op, stride) over the lanes that share lane % stride (stride a power of
//                                      two <= 32): several slices of the same columns per warp.
// block_reduce(v, op) reduces over the whole block (blockDim.x a multiple of 32, every thread
// calls it) and returns the result to every thread; it ends with __syncthreads(), so it can be
// called again straight away.
//
// Any type with a shfl_xor overload works: float, double, int and LogSumExp<T> here; a kernel
// family may add overloads for its own pair types (e.g. an arg-min) next to its kernels.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace fastvae {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float shfl_xor(float v, int offset) {
  return __shfl_xor_sync(kFullMask, v, offset);
}
__device__ __forceinline__ double shfl_xor(double v, int offset) {
  return __shfl_xor_sync(kFullMask, v, offset);
}
__device__ __forceinline__ int shfl_xor(int v, int offset) {
  return __shfl_xor_sync(kFullMask, v, offset);
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

// Maximum that ignores a NaN operand (fmax); a reduction that must propagate NaN carries it
// separately (as LogSumExp does in its sum).
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// Reduces `v` over each aligned group of `width` consecutive lanes; every lane gets its group's
// result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op, int width = kWarpSize) {
  for (int offset = width / 2; offset > 0; offset /= 2) {
    v = op(v, shfl_xor(v, offset));
  }
  return v;
}

// Reduces `v` over the lanes with equal lane % stride; every lane gets its class's result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce_strided(T v, Op op, int stride) {
  for (int offset = kWarpSize / 2; offset >= stride; offset /= 2) {
    v = op(v, shfl_xor(v, offset));
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v, int width = kWarpSize) {
  return warp_reduce(v, SumOp{}, width);
}

template <typename T>
__device__ __forceinline__ T warp_max(T v, int width = kWarpSize) {
  return warp_reduce(v, MaxOp{}, width);
}

// Reduces `v` over the block and returns the result to every thread. blockDim.x must be a multiple
// of 32 (at most 1024) and every thread of the block must call it.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op) {
  __shared__ T partials[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_reduce(v, op);
  if (lane == 0) {
    partials[warp] = v;
  }
  __syncthreads();
  // Every thread folds the per-warp partials itself (broadcast reads), in warp order, so no
  // second broadcast is needed and the result is the same in every thread.
  v = partials[0];
  for (int w = 1; w < warps; ++w) {
    v = op(v, partials[w]);
  }
  __syncthreads();
  return v;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce(v, SumOp{});
}

template <typename T>
__device__ __forceinline__ T block_max(T v) {
  return block_reduce(v, MaxOp{});
}

// `x` where it is finite, 0 where it is +-inf or NaN: the shift of exp(x - shift) in a log-sum-exp,
// so that exp(-inf - -inf) is never formed.
template <typename T>
__device__ __forceinline__ T finite_or_zero(T x) {
  return isfinite(x) ? x : T(0);
}

// Online (streaming) log-sum-exp: `max` is the largest element seen (-inf for none) and
// `sum` = sum_i exp(x_i - finite_or_zero(max)). Elements are added in any order and states merge
// associatively, so it reduces across loop steps, lanes and warps. NaN inputs propagate through
// `sum` (fmax ignores them), -inf inputs add nothing, and an all -inf set gives value() = -inf.
template <typename T>
struct LogSumExp {
  T max;
  T sum;

  __device__ __forceinline__ static LogSumExp empty() { return {-INFINITY, T(0)}; }

  // Adds N elements, rescaling the running sum once.
  template <int N>
  __device__ __forceinline__ void add(const T (&x)[N]) {
    T new_max = max;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      new_max = MaxOp{}(new_max, x[i]);
    }
    const T shift = finite_or_zero(new_max);
    T new_sum = sum * exp(max - shift);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      new_sum += exp(x[i] - shift);
    }
    max = new_max;
    sum = new_sum;
  }

  // The state of the union of both element sets. Each sum is rescaled by exp(its max - shift):
  // an empty side (max = -inf, sum = 0) contributes exactly 0, never 0 * inf.
  __device__ __forceinline__ LogSumExp merge(const LogSumExp& other) const {
    const T new_max = MaxOp{}(max, other.max);
    const T shift = finite_or_zero(new_max);
    return {new_max, sum * exp(max - shift) + other.sum * exp(other.max - shift)};
  }

  // log sum_i exp(x_i).
  __device__ __forceinline__ T value() const { return finite_or_zero(max) + log(sum); }
};

struct LogSumExpMerge {
  template <typename T>
  __device__ __forceinline__ LogSumExp<T> operator()(const LogSumExp<T>& a,
                                                     const LogSumExp<T>& b) const {
    return a.merge(b);
  }
};

template <typename T>
__device__ __forceinline__ LogSumExp<T> shfl_xor(const LogSumExp<T>& v, int offset) {
  return {shfl_xor(v.max, offset), shfl_xor(v.sum, offset)};
}

}  // namespace fastvae

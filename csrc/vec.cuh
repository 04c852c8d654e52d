// Vectorised global-memory access shared by the kernels: 16-byte loads and stores of N elements of
// a storage type T, converted to and from T's compute type (acc_t<T>, see dispatch.cuh), with a
// scalar fallback for tails, unaligned pointers and strided tensors.
//
// The pattern every kernel follows:
//   1. the host launcher asks can_vectorize<T>(row_elements, pointers...) whether every base
//      pointer it will access with vectors is 16-byte aligned and the row length a multiple of the
//      vector width (so every row starts aligned too), and instantiates the kernel with a
//      `bool VEC` template argument accordingly;
//   2. the kernel moves data in chunks of N elements with load<N, VEC>() / store<N, VEC>(): with
//      VEC the chunk is N / kVecWidth<T> 16-byte accesses (the caller guarantees the chunk is whole
//      and aligned), without it N scalar accesses of which only the first `count` are made (a row's
//      tail), the others reading as `fill`.
// All element offsets are the caller's int64 arithmetic; nothing here multiplies indices.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "dispatch.cuh"

namespace fastvae {

// Elements of T in one 16-byte vector: 4 float, 8 half or bfloat16, 2 double.
template <typename T>
inline constexpr int kVecWidth = static_cast<int>(16 / sizeof(T));

// N elements of T that move as one aligned access (16 bytes when N == kVecWidth<T>).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// Whether `ptr` may be accessed with 16-byte vectors.
__host__ __device__ inline bool is_aligned16(const void* ptr) {
  return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0;
}

// Host-side test for the VEC path: every pointer is 16-byte aligned (a null pointer, an absent
// optional tensor, passes) and rows of `row_elements` elements of T keep the next row aligned.
template <typename T, typename... Pointers>
inline bool can_vectorize(std::int64_t row_elements, const Pointers*... pointers) {
  return row_elements % kVecWidth<T> == 0 &&
         ((pointers == nullptr || is_aligned16(pointers)) && ...);
}

// Storage type -> compute type, and back with round-to-nearest-even (as torch's .to(dtype)).
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements at `ptr` (16-byte aligned; N a multiple of kVecWidth<T>) as N / kVecWidth<T> vectors.
template <int N, typename T>
__device__ __forceinline__ void load_vec(const T* ptr, acc_t<T> (&out)[N]) {
  constexpr int W = kVecWidth<T>;
  static_assert(N % W == 0, "load_vec moves whole 16-byte vectors");
#pragma unroll
  for (int v = 0; v < N / W; ++v) {
    const Vec<T, W> vec = reinterpret_cast<const Vec<T, W>*>(ptr)[v];
#pragma unroll
    for (int i = 0; i < W; ++i) {
      out[v * W + i] = to_acc(vec.val[i]);
    }
  }
}

// Stores N elements at `ptr` (16-byte aligned; N a multiple of kVecWidth<T>) as vectors.
template <int N, typename T>
__device__ __forceinline__ void store_vec(T* ptr, const acc_t<T> (&in)[N]) {
  constexpr int W = kVecWidth<T>;
  static_assert(N % W == 0, "store_vec moves whole 16-byte vectors");
#pragma unroll
  for (int v = 0; v < N / W; ++v) {
    Vec<T, W> vec;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      vec.val[i] = from_acc<T>(in[v * W + i]);
    }
    reinterpret_cast<Vec<T, W>*>(ptr)[v] = vec;
  }
}

// Elements ptr[i * stride] for i < count (count <= N) into out[i]; out[i] = fill for i >= count.
template <int N, typename T>
__device__ __forceinline__ void load_scalar(const T* ptr, std::int64_t count, acc_t<T> (&out)[N],
                                            acc_t<T> fill, std::int64_t stride = 1) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    out[i] = i < count ? to_acc(ptr[i * stride]) : fill;
  }
}

// Stores in[i] to ptr[i] for i < count (count <= N).
template <int N, typename T>
__device__ __forceinline__ void store_scalar(T* ptr, std::int64_t count, const acc_t<T> (&in)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i < count) {
      ptr[i] = from_acc<T>(in[i]);
    }
  }
}

// A chunk of N elements at `ptr`: with VEC as vectors (the chunk is whole, count >= N, and
// aligned), else the first `count` elements as scalars and `fill` for the rest.
template <int N, bool VEC, typename T>
__device__ __forceinline__ void load(const T* ptr, std::int64_t count, acc_t<T> (&out)[N],
                                     acc_t<T> fill) {
  if constexpr (VEC) {
    load_vec<N>(ptr, out);
  } else {
    load_scalar<N>(ptr, count, out, fill);
  }
}

// Stores a chunk of N elements at `ptr`: with VEC as vectors (whole and aligned), else the first
// `count` as scalars.
template <int N, bool VEC, typename T>
__device__ __forceinline__ void store(T* ptr, std::int64_t count, const acc_t<T> (&in)[N]) {
  if constexpr (VEC) {
    store_vec<N>(ptr, in);
  } else {
    store_scalar<N>(ptr, count, in);
  }
}

}  // namespace fastvae

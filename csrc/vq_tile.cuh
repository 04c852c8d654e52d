// Tile and tensor-core primitives of the vector-quantisation search (vq.cu): asynchronous copies of
// row-major tiles into an XOR-swizzled shared-memory layout, ldmatrix, the warp-level mma.sync
// wrappers for fp16/bf16 (m16n8k16) and tf32 (m16n8k8) with float32 accumulation, and the
// (score, code) arg-min pair that the search reduces with reduce.cuh's warp_reduce.
//
// Shared-memory tile layout. A tile is ROWS rows of CHUNKS 16-byte chunks (CHUNKS = 2, 4 or 8, so
// a row is 32, 64 or 128 bytes: 16, 32 or 64 fp16/bf16 elements, 8, 16 or 32 fp32). Chunk c of
// row r is stored at chunk position c ^ ((r >> S) & (CHUNKS - 1)) of that row, S = log2(8 / CHUNKS).
// ldmatrix reads one 16-byte chunk from each of 8 consecutive rows (an aligned group of 8); the
// swizzle puts those 8 chunks in 8 different 16-byte bank groups of the 128-byte bank window, so the
// read is conflict-free for every CHUNKS (with 2^S rows per 128 bytes, rows that share a window
// position differ in (r >> S)).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "Matrix Fragments for mma.m16n8k8", .tf32; "Warp-level matrix load instruction: ldmatrix"), with
// g = lane >> 2 (groupID) and t = lane & 3 (threadID_in_group):
//   m16n8k16 .f16/.bf16, A (16 x 16, row-major), four .b32 registers of two elements each:
//     a[0] = A[g][2t, 2t+1]  a[1] = A[g+8][2t, 2t+1]  a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col": element (k, n) of code n), two registers:
//     b[0] = B[2t, 2t+1][g]  b[1] = B[2t+8, 2t+9][g]
//   m16n8k8 .tf32, A (16 x 8), four .b32 registers of one element each:
//     a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//   B (8 x 8): b[0] = B[t][g]  b[1] = B[t+4][g]
//   C/D (16 x 8 float32), both shapes: c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]
//     c[3] = C[g+8][2t+1]
//   ldmatrix.m8n8.x4.b16: lanes 8i .. 8i+7 give the addresses of the 8 rows (16 bytes each) of
//     matrix i, and register i of lane l receives bytes 4(l & 3) .. 4(l & 3) + 3 of row l >> 2 of
//     matrix i.
// In bytes, one k-step of either shape covers 32 bytes of a row (16 fp16/bf16 or 8 fp32 elements):
// two 16-byte chunks. Byte for byte both layouts above are then the same: register i of an A
// fragment holds 4 bytes at (row g + 8 (i & 1), byte 4t of chunk i >> 1), and B register i holds
// (code g, byte 4t of chunk i). So one ldmatrix.x4 addressing serves both: for A, lane l points at
// row (l & 15), chunk (l >> 4) of the 16-row block, giving a[0..3]; for two n8 tiles of B, lane l
// points at code (l & 7) + 8 (l >> 4), chunk ((l >> 3) & 1), giving b[0], b[1] of the first tile and
// b[0], b[1] of the second.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "reduce.cuh"

namespace fastvae {
namespace vq {

// --- asynchronous copies -------------------------------------------------------------------------

// The .shared window address of a generic pointer into shared memory.
__device__ __forceinline__ std::uint32_t smem_address(const void* ptr) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(ptr));
}

// cp.async of BYTES (4, 8 or 16) from global `src` to shared `dst`; when !valid nothing is read
// (src-size 0) and the destination is zero-filled. 16-byte copies bypass L1 (.cg).
template <int BYTES>
__device__ __forceinline__ void cp_async(std::uint32_t dst, const void* src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  const int src_bytes = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src),
                 "n"(BYTES), "r"(src_bytes));
  }
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// --- swizzled tiles ------------------------------------------------------------------------------

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of CHUNKS chunks per row.
template <int CHUNKS>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  static_assert(CHUNKS == 2 || CHUNKS == 4 || CHUNKS == 8, "tile rows are 32, 64 or 128 bytes");
  constexpr int kShift = CHUNKS == 8 ? 0 : (CHUNKS == 4 ? 1 : 2);
  return row * (CHUNKS * 16) + ((chunk ^ ((row >> kShift) & (CHUNKS - 1))) << 4);
}

// Copies rows [0, ROWS) and columns [0, CHUNKS * 16 / sizeof(T)) of the row-major matrix at `src`
// (row stride `stride` elements) into the swizzled tile at `tile`, zero-filling rows >= rows_valid
// and columns >= cols_valid. Units of VB bytes move by cp.async: every row start and column offset
// must be VB-aligned and cols_valid * sizeof(T) a multiple of VB, so a unit is wholly in or out.
// Thread t copies unit t % U of rows t / U + p * (THREADS / U), U units per row, for every pass p:
// a multiple of 8 rows apart, so its swizzled chunk position is the same in every pass and one
// base address per operand plus a constant step covers them all. A tile of fewer rows than one pass
// leaves the threads past its last row idle.
template <int VB, int ROWS, int CHUNKS, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(unsigned char* tile, const T* src, int rows_valid,
                                                std::int64_t cols_valid, std::int64_t stride) {
  constexpr int kUnitsPerRow = CHUNKS * 16 / VB;
  constexpr int kUnitElems = VB / static_cast<int>(sizeof(T));
  constexpr int kRowsPerPass = THREADS / kUnitsPerRow;
  static_assert(THREADS % kUnitsPerRow == 0 && (ROWS % kRowsPerPass == 0 || ROWS < kRowsPerPass),
                "whole passes, or a single partial one");
  static_assert(kRowsPerPass % 8 == 0, "passes keep the swizzle pattern of a thread's units");
  const int row = static_cast<int>(threadIdx.x) / kUnitsPerRow;
  const int unit = static_cast<int>(threadIdx.x) % kUnitsPerRow;
  if (ROWS < kRowsPerPass && row >= ROWS) {
    return;
  }
  const bool col_valid = unit * kUnitElems < cols_valid;
  const std::uint32_t dst = smem_address(tile) + swizzle<CHUNKS>(row, (unit * VB) >> 4) +
                            ((unit * VB) & 15);
  const T* from = src + row * stride + unit * kUnitElems;
#pragma unroll
  for (int pass = 0; pass < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++pass) {
    const bool valid = col_valid && row + pass * kRowsPerPass < rows_valid;
    cp_async<VB>(dst + pass * kRowsPerPass * (CHUNKS * 16),
                 valid ? from + pass * kRowsPerPass * stride : src, valid);
  }
}

// load_tile_async's tile through registers, one element at a time: for 2-byte elements whose rows
// are not 4-byte aligned (odd D, or a base pointer 2 bytes past a 4-byte boundary). Eight loads at
// a time are in flight, which keeps the registers of the search's main loop free.
template <int ROWS, int CHUNKS, int THREADS, typename T>
__device__ __forceinline__ void load_tile_sync(unsigned char* tile, const T* src, int rows_valid,
                                               std::int64_t cols_valid, std::int64_t stride) {
  constexpr int kCols = CHUNKS * 16 / static_cast<int>(sizeof(T));
  constexpr int kRowsPerPass = THREADS / kCols;
  static_assert(THREADS % kCols == 0 && ROWS % kRowsPerPass == 0,
                "every thread copies the same number of elements");
  using Bits = std::conditional_t<sizeof(T) == 2, std::uint16_t, std::uint32_t>;
  static_assert(sizeof(Bits) == sizeof(T), "the search stages 2- or 4-byte elements");
  const int row = static_cast<int>(threadIdx.x) / kCols;
  const int col = static_cast<int>(threadIdx.x) % kCols;
  const bool col_valid = col < cols_valid;
  const int byte = col * static_cast<int>(sizeof(T));
  const Bits* from = reinterpret_cast<const Bits*>(src) + row * stride + col;
#pragma unroll 8
  for (int pass = 0; pass < ROWS / kRowsPerPass; ++pass) {
    const int r = row + pass * kRowsPerPass;
    const Bits bits = col_valid && r < rows_valid ? from[pass * kRowsPerPass * stride] : Bits(0);
    *reinterpret_cast<Bits*>(tile + swizzle<CHUNKS>(r, byte >> 4) + (byte & 15)) = bits;
  }
}

// The tile of load_tile_async with the widest copy `vec_bytes` allows (16, 8 or 4; any other value
// copies element by element).
template <int ROWS, int CHUNKS, int THREADS, typename T>
__device__ __forceinline__ void load_tile(unsigned char* tile, const T* src, int rows_valid,
                                          std::int64_t cols_valid, std::int64_t stride,
                                          int vec_bytes) {
  switch (vec_bytes) {
    case 16:
      load_tile_async<16, ROWS, CHUNKS, THREADS>(tile, src, rows_valid, cols_valid, stride);
      break;
    case 8:
      load_tile_async<8, ROWS, CHUNKS, THREADS>(tile, src, rows_valid, cols_valid, stride);
      break;
    case 4:
      load_tile_async<4, ROWS, CHUNKS, THREADS>(tile, src, rows_valid, cols_valid, stride);
      break;
    default:
      load_tile_sync<ROWS, CHUNKS, THREADS>(tile, src, rows_valid, cols_valid, stride);
  }
}

// Four 8 x 8 matrices of 16-bit elements (see the layout at the top of this file).
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// --- tensor-core products ------------------------------------------------------------------------

// d = a * b + c on one m16n8 tile for storage type T, fragments as at the top of this file:
// __half and __nv_bfloat16 take mma.m16n8k16, float takes mma.m16n8k8 on TF32 operands (made with
// operand()). kSignBits flips the sign of every element of an A register.
template <typename T>
struct TensorOp;

template <>
struct TensorOp<__half> {
  static constexpr std::uint32_t kSignBits = 0x80008000u;
  __device__ __forceinline__ static std::uint32_t operand(std::uint32_t bits) { return bits; }
  __device__ __forceinline__ static void mma(float (&d)[4], const std::uint32_t (&a)[4],
                                             const std::uint32_t (&b)[2], const float (&c)[4]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  }
};

template <>
struct TensorOp<__nv_bfloat16> {
  static constexpr std::uint32_t kSignBits = 0x80008000u;
  __device__ __forceinline__ static std::uint32_t operand(std::uint32_t bits) { return bits; }
  __device__ __forceinline__ static void mma(float (&d)[4], const std::uint32_t (&a)[4],
                                             const std::uint32_t (&b)[2], const float (&c)[4]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  }
};

template <>
struct TensorOp<float> {
  static constexpr std::uint32_t kSignBits = 0x80000000u;
  // float32 bits rounded to TF32 (round to nearest, ties away from zero), as the PTX ISA asks of
  // .tf32 operands.
  __device__ __forceinline__ static std::uint32_t operand(std::uint32_t bits) {
    std::uint32_t tf32;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(tf32) : "f"(__uint_as_float(bits)));
    return tf32;
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const std::uint32_t (&a)[4],
                                             const std::uint32_t (&b)[2], const float (&c)[4]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  }
};

// --- the arg-min pair ----------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A infinity();
template <>
__device__ __forceinline__ float infinity<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double infinity<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

// A candidate nearest code: its score and index. Scores are never NaN where pairs are merged (the
// running minima only take values that compared below the current one).
template <typename A>
struct ArgMin {
  A score;
  int code;
};

// The lower score; on equal scores the lower code, so every merge order keeps the lowest index.
struct ArgMinOp {
  template <typename A>
  __device__ __forceinline__ ArgMin<A> operator()(const ArgMin<A>& a, const ArgMin<A>& b) const {
    return b.score < a.score || (b.score == a.score && b.code < a.code) ? b : a;
  }
};

// The shuffle warp_reduce (reduce.cuh) moves an ArgMin with; found by argument-dependent lookup.
template <typename A>
__device__ __forceinline__ ArgMin<A> shfl_xor(const ArgMin<A>& v, int offset) {
  return {::fastvae::shfl_xor(v.score, offset), ::fastvae::shfl_xor(v.code, offset)};
}

}  // namespace vq
}  // namespace fastvae

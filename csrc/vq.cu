// Vector-quantisation kernels and their launchers (declared in vq.h): the nearest-code search behind
// vq_nearest and vector_quantize, its epilogues, the VQ statistics, the backward pass, and the
// per-code statistics of the EMA codebook update. The formulas are those of fastvae/reference/vq.py;
// the host side (codebook split, allocation) is fastvae/cuda/vq.py with fastvae/plan/vq.py, and the
// tiles are chosen here, next to the launches (with_search_tile, kVqRowsPerBlock).
//
// Search. Row n takes the code k of lowest score(n, k) = |e_k|^2 / 2 - x_n . e_k (half the squared
// distance minus |x_n|^2 / 2, which every code shares); the N x K scores only ever exist one tile at
// a time. A CTA owns a block of rows and walks its split of the codebook tile by tile, keeping per
// row a running (score, index) minimum; grid = (row blocks, codebook splits), and each CTA writes
// one (score, index) per row and split. The epilogue merges the splits and recomputes the chosen
// distance exactly as |x - e|^2 in the accumulation dtype, so the products of the search only decide
// near-ties.
//
// Ties go to the lowest index everywhere: a thread walks its codes in increasing order and replaces
// its minimum only on a strictly lower score (inside a tile it takes the first position holding the
// tile's minimum); every merge of minima (lanes, warps, splits) takes the lower score and, on equal
// scores, the lower index (vq::ArgMinOp). Codes past K score +inf and never win.
//
// Tensor-core search (fp16, bf16; fp32 with tf32): 256 threads, 8 warps each owning 64 rows x 32
// codes (4 x 4 m16n8 tiles) on mma.sync (m16n8k16 fp16/bf16, m16n8k8 tf32; fragment layouts in
// vq_tile.cuh) with float32 accumulators, arranged as 256 rows x 64 codes per tile when x stays
// resident and 128 x 128 when it streams (MmaTile). D is staged in chunks of 32, 64 or 128 bytes
// per row (d_tile elements), zero-filled past D, in XOR-swizzled shared memory fed by a cp.async
// pipeline (4 stages, or 3 when x streams too) that moves 16, 8 or 4 bytes per copy as the
// alignment of the pointers and of D * sizeof(T) allows, element by element for 2-byte rows that
// are not 4-byte aligned. When D fits one chunk ("resident"), the x tile is
// loaded once and each warp keeps its A fragments in registers for the whole codebook walk, with x
// negated so that the tensor cores produce the score directly: the first k-step takes
// C = |e|^2 / 2 (staged with each code tile), so D = C + (-x) . e = score. Longer rows stream x and
// codebook chunks through the same pipeline and accumulate over chunks. After a tile's last chunk
// each thread folds its 8 scores per row into the running minimum with a min tree and touches the
// index only when the tile improved on it.
//
// Exact search (fp32 "ieee", fp64): 256 threads, 64 x 64 tiles, D in chunks of 16 transposed into
// shared memory, a 4 x 4 block of FMA products per thread, the next chunk's global loads in flight
// while the current one is multiplied.
//
// Row-wise kernels (epilogues, backward, code statistics) give a warp to a row at a time, lanes
// striding along D (coalesced), kVqRowsPerBlock rows to a block, with int64 offsets throughout. The
// segment sums of the backward pass and of the code statistics are atomics into the accumulation
// dtype; block sums of the losses (squared distances over D, so that the losses are means over the
// N D elements) are reduced in a fixed order, so the losses are deterministic.
#include "vq.h"

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "check.cuh"
#include "dispatch.cuh"
#include "launch.cuh"
#include "reduce.cuh"
#include "vec.cuh"
#include "vq_tile.cuh"

namespace fastvae {

namespace {

constexpr int kWarps = kThreads / kWarpSize;
// Threads of the one-block statistics kernel.
constexpr int kStatsThreads = 1024;
// Resident blocks per SM the row-wise kernels are compiled for (at most 128 registers a thread).
constexpr int kRowKernelBlocks = 2;

__device__ __forceinline__ std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }

// --- |e|^2 / 2 ------------------------------------------------------------------------------------

// half_sq[k] = |codebook[k]|^2 / 2 for k < num_codes, +inf up to padded_codes; a warp per code.
template <typename T>
__global__ void __launch_bounds__(kThreads, kRowKernelBlocks)
    vq_code_half_sq_kernel(const T* __restrict__ codebook, acc_t<T>* __restrict__ half_sq,
                           std::int64_t num_codes, std::int64_t padded_codes, std::int64_t dim) {
  using A = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const std::int64_t code =
      static_cast<std::int64_t>(blockIdx.x) * kWarps + static_cast<int>(threadIdx.x) / kWarpSize;
  if (code >= padded_codes) {
    return;
  }
  if (code >= num_codes) {
    if (lane == 0) {
      half_sq[code] = vq::infinity<A>();
    }
    return;
  }
  const T* e = codebook + code * dim;
  A sum = 0;
  for (std::int64_t d = lane; d < dim; d += kWarpSize) {
    const A v = to_acc(e[d]);
    sum += v * v;
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    half_sq[code] = A(0.5) * sum;
  }
}

// --- tensor-core search ---------------------------------------------------------------------------

// Tiles of the tensor-core search for storage type T, CHUNKS 16-byte chunks of D per stage and
// RESIDENT (D fits one chunk: x loaded once, A fragments kept in registers). Every warp owns 64 rows
// x 32 codes. Resident, the 8 warps stand 4 x 2 (256 rows x 64 codes): only codebook tiles stream,
// and each is shared by 256 rows, which halves the L2 traffic of 128 x 128. Streaming x chunks too,
// they stand 2 x 4 (128 x 128), balancing the two operands.
template <typename T, int CHUNKS, bool RESIDENT>
struct MmaTile {
  static constexpr int kThreads = 256;
  static constexpr int kWarpsN = RESIDENT ? 2 : 4;  // warps along the codes
  static constexpr int kWarpsM = kThreads / kWarpSize / kWarpsN;
  static constexpr int kWarpRows = 64;
  static constexpr int kWarpCodes = 32;
  static constexpr int kBlockN = kWarpsM * kWarpRows;
  static constexpr int kBlockK = kWarpsN * kWarpCodes;
  static constexpr int kMTiles = kWarpRows / 16;
  static constexpr int kNTiles = kWarpCodes / 8;
  static constexpr int kKSteps = CHUNKS / 2;  // a k-step is 32 bytes of a row
  static constexpr int kRowBytes = CHUNKS * 16;
  static constexpr int kDTile = kRowBytes / static_cast<int>(sizeof(T));
  static constexpr int kStages = RESIDENT ? 4 : 3;
  // A stage: the code tile, its |e|^2 / 2, and (streaming x) the x chunk.
  static constexpr int kCodeBytes = kBlockK * kRowBytes;
  static constexpr int kHalfSqBytes = kBlockK * static_cast<int>(sizeof(float));
  static constexpr int kRowTileBytes = kBlockN * kRowBytes;
  static constexpr int kStageBytes = kCodeBytes + kHalfSqBytes + (RESIDENT ? 0 : kRowTileBytes);
  // The resident x tile follows the stages.
  static constexpr int kSmemBytes = kStages * kStageBytes + (RESIDENT ? kRowTileBytes : 0);
  static_assert(kNTiles % 2 == 0, "B fragments load two n8 tiles per ldmatrix.x4");
  static_assert(kBlockN <= kThreads, "one thread per row writes the CTA's results");
  static_assert(kBlockK % 4 == 0 && kBlockK / 4 <= kThreads,
                "a tile's |e|^2 / 2 moves in 16-byte copies, at most one per thread");
  static_assert(kSmemBytes >= kWarpsN * kBlockN * 8, "the final merge reuses the pipeline's memory");
};

// A fragments of rows row0 .. row0 + 15, k-step ks, negated (and made TF32 for float).
template <typename T, int CHUNKS>
__device__ __forceinline__ void load_a(std::uint32_t (&a)[4], std::uint32_t tile, int row0, int ks,
                                       int lane) {
  vq::ldmatrix_x4(a, tile + vq::swizzle<CHUNKS>(row0 + (lane & 15), 2 * ks + (lane >> 4)));
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    a[r] = vq::TensorOp<T>::operand(a[r]) ^ vq::TensorOp<T>::kSignBits;
  }
}

// B fragments of the NTILES n8 tiles of codes code0 .. code0 + 8 NTILES - 1, k-step ks.
template <typename T, int CHUNKS, int NTILES>
__device__ __forceinline__ void load_b(std::uint32_t (&b)[NTILES][2], std::uint32_t tile, int code0,
                                       int ks, int lane) {
#pragma unroll
  for (int pair = 0; pair < NTILES / 2; ++pair) {
    std::uint32_t r[4];
    vq::ldmatrix_x4(r, tile + vq::swizzle<CHUNKS>(code0 + 16 * pair + (lane & 7) + ((lane >> 4) << 3),
                                                  2 * ks + ((lane >> 3) & 1)));
    b[2 * pair][0] = vq::TensorOp<T>::operand(r[0]);
    b[2 * pair][1] = vq::TensorOp<T>::operand(r[1]);
    b[2 * pair + 1][0] = vq::TensorOp<T>::operand(r[2]);
    b[2 * pair + 1][1] = vq::TensorOp<T>::operand(r[3]);
  }
}

// The tensor-core search (see the top of the file). Grid (ceil(N / kBlockN), splits), 256 threads,
// MmaTile::kSmemBytes of dynamic shared memory. copy_bytes: the cp.async width (16, 8, 4; other
// values copy element by element). Iteration counts are int: a codebook would need 2^44 elements
// to overflow them.
template <typename T, int CHUNKS, bool RESIDENT>
__global__ void __launch_bounds__(256, 1)
    vq_search_mma_kernel(const T* __restrict__ x, const T* __restrict__ codebook,
                         const float* __restrict__ half_sq, float* __restrict__ part_score,
                         std::int32_t* __restrict__ part_index, int num_rows, int num_codes, int dim,
                         int tiles_per_split, int copy_bytes) {
  using Tile = MmaTile<T, CHUNKS, RESIDENT>;
  using Op = vq::TensorOp<T>;
  constexpr int kBlockN = Tile::kBlockN;
  constexpr int kBlockK = Tile::kBlockK;
  constexpr int kMTiles = Tile::kMTiles;
  constexpr int kNTiles = Tile::kNTiles;
  constexpr int kStages = Tile::kStages;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int warp_row0 = (warp / Tile::kWarpsN) * Tile::kWarpRows;
  const int warp_code0 = (warp % Tile::kWarpsN) * Tile::kWarpCodes;
  const int group = lane >> 2;  // the fragment row (and B column) of this lane
  const int quad = lane & 3;    // the fragment column pair of this lane

  const std::int64_t row_start = static_cast<std::int64_t>(blockIdx.x) * kBlockN;
  const int rows_valid = static_cast<int>(min64(kBlockN, num_rows - row_start));
  const std::int64_t split_begin =
      static_cast<std::int64_t>(blockIdx.y) * tiles_per_split * kBlockK;
  const int k_begin = static_cast<int>(split_begin);
  const int k_end = static_cast<int>(min64(split_begin + std::int64_t{tiles_per_split} * kBlockK,
                                           num_codes));
  const int num_tiles = (k_end - k_begin + kBlockK - 1) / kBlockK;
  const int d_chunks = RESIDENT ? 1 : (dim + Tile::kDTile - 1) / Tile::kDTile;
  const int iterations = num_tiles * d_chunks;
  const T* x_block = x + row_start * dim;

  // Stage loads walk (tile, chunk) in iteration order.
  int load_tile_index = 0;
  int load_chunk = 0;
  auto load_stage = [&](int slot) {
    unsigned char* stage = smem + slot * Tile::kStageBytes;
    const int code0 = k_begin + load_tile_index * kBlockK;
    const int d0 = load_chunk * Tile::kDTile;
    vq::load_tile<kBlockK, CHUNKS, Tile::kThreads>(stage, codebook + std::int64_t{code0} * dim + d0,
                                                   k_end - code0, dim - d0, dim, copy_bytes);
    if (tid < kBlockK / 4) {  // half_sq is padded to whole tiles and 16-byte aligned
      vq::cp_async<16>(vq::smem_address(stage + Tile::kCodeBytes) + 16 * tid,
                       half_sq + code0 + 4 * tid, true);
    }
    if constexpr (!RESIDENT) {
      vq::load_tile<kBlockN, CHUNKS, Tile::kThreads>(stage + Tile::kCodeBytes + Tile::kHalfSqBytes,
                                                     x_block + d0, rows_valid, dim - d0, dim,
                                                     copy_bytes);
    }
    if (++load_chunk == d_chunks) {
      load_chunk = 0;
      ++load_tile_index;
    }
  };

  // Prologue: the resident x tile (after the stages) joins the first group; kStages - 1 stages
  // in flight.
  if constexpr (RESIDENT) {
    vq::load_tile<kBlockN, CHUNKS, Tile::kThreads>(smem + kStages * Tile::kStageBytes, x_block,
                                                   rows_valid, dim, dim, copy_bytes);
  }
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < iterations) {
      load_stage(s);
    }
    vq::cp_async_commit();
  }

  std::uint32_t a_resident[RESIDENT ? kMTiles : 1][RESIDENT ? Tile::kKSteps : 1][4];
  if constexpr (RESIDENT) {
    vq::cp_async_wait<kStages - 2>();
    __syncthreads();
    const std::uint32_t x_address = vq::smem_address(smem + kStages * Tile::kStageBytes);
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int ks = 0; ks < Tile::kKSteps; ++ks) {
        load_a<T, CHUNKS>(a_resident[mi][ks], x_address, warp_row0 + 16 * mi, ks, lane);
      }
    }
  }

  // Running minima of this thread's rows warp_row0 + 16 mi + group + 8 h, slot 2 mi + h.
  float best_score[2 * kMTiles];
  int best_code[2 * kMTiles];
#pragma unroll
  for (int r = 0; r < 2 * kMTiles; ++r) {
    best_score[r] = vq::infinity<float>();
    best_code[r] = k_begin;
  }
  float acc[kMTiles][kNTiles][4] = {};

  int tile = 0;
  int chunk = 0;
  int read_slot = 0;
  int write_slot = kStages - 1;
  for (int it = 0; it < iterations; ++it) {
    vq::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage `it` is in; every warp is done with the slot refilled next
    if (it + kStages - 1 < iterations) {
      load_stage(write_slot);
    }
    vq::cp_async_commit();
    write_slot = write_slot == kStages - 1 ? 0 : write_slot + 1;

    unsigned char* stage = smem + read_slot * Tile::kStageBytes;
    read_slot = read_slot == kStages - 1 ? 0 : read_slot + 1;
    const std::uint32_t codes_address = vq::smem_address(stage);
    // C fragment columns of n8 tile nj: codes warp_code0 + 8 nj + 2 quad + {0, 1}.
    const float2* stage_half_sq = reinterpret_cast<const float2*>(stage + Tile::kCodeBytes);
    float2 half_sq_pair[kNTiles];
#pragma unroll
    for (int nj = 0; nj < kNTiles; ++nj) {
      half_sq_pair[nj] = stage_half_sq[(warp_code0 + 8 * nj) / 2 + quad];
    }

    if constexpr (RESIDENT) {
#pragma unroll
      for (int ks = 0; ks < Tile::kKSteps; ++ks) {
        std::uint32_t b[kNTiles][2];
        load_b<T, CHUNKS, kNTiles>(b, codes_address, warp_code0, ks, lane);
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
          for (int nj = 0; nj < kNTiles; ++nj) {
            if (ks == 0) {
              const float c[4] = {half_sq_pair[nj].x, half_sq_pair[nj].y, half_sq_pair[nj].x,
                                  half_sq_pair[nj].y};
              Op::mma(acc[mi][nj], a_resident[mi][ks], b[nj], c);
            } else {
              Op::mma(acc[mi][nj], a_resident[mi][ks], b[nj], acc[mi][nj]);
            }
          }
        }
      }
    } else {
      if (chunk == 0) {
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
          for (int nj = 0; nj < kNTiles; ++nj) {
            acc[mi][nj][0] = half_sq_pair[nj].x;
            acc[mi][nj][1] = half_sq_pair[nj].y;
            acc[mi][nj][2] = half_sq_pair[nj].x;
            acc[mi][nj][3] = half_sq_pair[nj].y;
          }
        }
      }
      const std::uint32_t x_address =
          vq::smem_address(stage + Tile::kCodeBytes + Tile::kHalfSqBytes);
#pragma unroll
      for (int ks = 0; ks < Tile::kKSteps; ++ks) {
        std::uint32_t b[kNTiles][2];
        load_b<T, CHUNKS, kNTiles>(b, codes_address, warp_code0, ks, lane);
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
          std::uint32_t a[4];
          load_a<T, CHUNKS>(a, x_address, warp_row0 + 16 * mi, ks, lane);
#pragma unroll
          for (int nj = 0; nj < kNTiles; ++nj) {
            Op::mma(acc[mi][nj], a, b[nj], acc[mi][nj]);
          }
        }
      }
    }

    if (chunk == d_chunks - 1) {
      // acc[mi][nj][2 h + i] is the score of row slot 2 mi + h and code code_base + 8 nj + i.
      const int code_base = k_begin + tile * kBlockK + warp_code0 + 2 * quad;
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float tile_min = acc[mi][0][2 * h];
#pragma unroll
          for (int j = 1; j < 2 * kNTiles; ++j) {
            tile_min = fminf(tile_min, acc[mi][j >> 1][2 * h + (j & 1)]);
          }
          if (tile_min < best_score[2 * mi + h]) {
            int offset = 0;
#pragma unroll
            for (int j = 2 * kNTiles - 1; j >= 0; --j) {
              if (acc[mi][j >> 1][2 * h + (j & 1)] == tile_min) {
                offset = 8 * (j >> 1) + (j & 1);
              }
            }
            best_score[2 * mi + h] = tile_min;
            best_code[2 * mi + h] = code_base + offset;
          }
        }
      }
    }
    if (++chunk == d_chunks) {
      chunk = 0;
      ++tile;
    }
  }

  // Merge the four lanes of a row's quad, then the four warps along the codes, through shared memory.
  vq::cp_async_wait<0>();
  __syncthreads();
  float* merge_score = reinterpret_cast<float*>(smem);
  int* merge_code = reinterpret_cast<int*>(smem + Tile::kWarpsN * kBlockN * sizeof(float));
  const int warp_n = warp % Tile::kWarpsN;
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const vq::ArgMin<float> row_best = warp_reduce(
          vq::ArgMin<float>{best_score[2 * mi + h], best_code[2 * mi + h]}, vq::ArgMinOp{}, 4);
      if (quad == 0) {
        const int row = warp_row0 + 16 * mi + group + 8 * h;
        merge_score[warp_n * kBlockN + row] = row_best.score;
        merge_code[warp_n * kBlockN + row] = row_best.code;
      }
    }
  }
  __syncthreads();
  if (tid < rows_valid) {
    vq::ArgMin<float> row_best{merge_score[tid], merge_code[tid]};
#pragma unroll
    for (int w = 1; w < Tile::kWarpsN; ++w) {
      row_best = vq::ArgMinOp{}(row_best,
                                vq::ArgMin<float>{merge_score[w * kBlockN + tid], merge_code[w * kBlockN + tid]});
    }
    const std::int64_t out = static_cast<std::int64_t>(blockIdx.y) * num_rows + row_start + tid;
    part_score[out] = row_best.score;
    part_index[out] = row_best.code;
  }
}

// --- exact search ---------------------------------------------------------------------------------

template <typename T>
struct SimtTile {
  static constexpr int kThreads = 256;
  static constexpr int kBlockN = 64;
  static constexpr int kBlockK = 64;
  static constexpr int kDChunk = 16;
  // Row pitch of the transposed chunks: padded against bank conflicts on the transposing stores,
  // a multiple of 4 so that each thread's 4 consecutive rows (codes) stay 16-byte aligned.
  static constexpr int kPitch = kBlockN + 4;
  static constexpr int kLoads = kBlockN * kDChunk / kThreads;  // elements of x (and of e) per thread
  static_assert(kBlockN == kBlockK, "x and codebook chunks share the load mapping");
};

__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}

__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 lo = reinterpret_cast<const double2*>(p)[0];
  const double2 hi = reinterpret_cast<const double2*>(p)[1];
  v[0] = lo.x;
  v[1] = lo.y;
  v[2] = hi.x;
  v[3] = hi.y;
}

// The exact search (see the top of the file) for T = float or double, scores in T. Grid
// (ceil(N / 64), splits), 256 threads: thread (tr, tc) = (tid / 16, tid % 16) owns rows 4 tr .. 4 tr
// + 3 and codes 4 tc .. 4 tc + 3 of each 64 x 64 tile.
template <typename T>
__global__ void __launch_bounds__(256, 2)
    vq_search_simt_kernel(const T* __restrict__ x, const T* __restrict__ codebook,
                          const T* __restrict__ half_sq, T* __restrict__ part_score,
                          std::int32_t* __restrict__ part_index, int num_rows, int num_codes,
                          int dim, int tiles_per_split) {
  using Tile = SimtTile<T>;
  constexpr int kBlockN = Tile::kBlockN;
  constexpr int kBlockK = Tile::kBlockK;
  constexpr int kDChunk = Tile::kDChunk;
  __shared__ __align__(16) T x_chunk[kDChunk][Tile::kPitch];
  __shared__ __align__(16) T e_chunk[kDChunk][Tile::kPitch];

  const int tid = static_cast<int>(threadIdx.x);
  const int tr = tid / 16;
  const int tc = tid % 16;
  const std::int64_t row_start = static_cast<std::int64_t>(blockIdx.x) * kBlockN;
  const int rows_valid = static_cast<int>(min64(kBlockN, num_rows - row_start));
  const std::int64_t split_begin =
      static_cast<std::int64_t>(blockIdx.y) * tiles_per_split * kBlockK;
  const int k_begin = static_cast<int>(split_begin);
  const int k_end = static_cast<int>(min64(split_begin + std::int64_t{tiles_per_split} * kBlockK,
                                           num_codes));
  const int num_tiles = (k_end - k_begin + kBlockK - 1) / kBlockK;
  const int d_chunks = dim > 0 ? (dim + kDChunk - 1) / kDChunk : 1;
  const int iterations = num_tiles * d_chunks;

  // Element q of this thread's share of a chunk: row (code) (tid + 256 q) / 16, column tid % 16.
  T x_next[Tile::kLoads];
  T e_next[Tile::kLoads];
  auto fetch = [&](int tile, int chunk) {
    const int code0 = k_begin + tile * kBlockK;
    const int d = chunk * kDChunk + tid % kDChunk;
#pragma unroll
    for (int q = 0; q < Tile::kLoads; ++q) {
      const int r = (tid + q * Tile::kThreads) / kDChunk;
      x_next[q] = r < rows_valid && d < dim ? x[(row_start + r) * dim + d] : T(0);
      e_next[q] = r < k_end - code0 && d < dim ? codebook[std::int64_t{code0 + r} * dim + d] : T(0);
    }
  };

  fetch(0, 0);
  T best_score[4];
  int best_code[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best_score[i] = vq::infinity<T>();
    best_code[i] = k_begin;
  }
  T acc[4][4] = {};
  int tile = 0;
  int chunk = 0;
  for (int it = 0; it < iterations; ++it) {
    __syncthreads();  // every thread is done reading the previous chunk
#pragma unroll
    for (int q = 0; q < Tile::kLoads; ++q) {
      const int r = (tid + q * Tile::kThreads) / kDChunk;
      x_chunk[tid % kDChunk][r] = x_next[q];
      e_chunk[tid % kDChunk][r] = e_next[q];
    }
    __syncthreads();
    if (it + 1 < iterations) {
      const bool last_chunk = chunk + 1 == d_chunks;
      fetch(last_chunk ? tile + 1 : tile, last_chunk ? 0 : chunk + 1);
    }
    if (chunk == 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[i][j] = T(0);
        }
      }
    }
#pragma unroll
    for (int d = 0; d < kDChunk; ++d) {
      T xv[4];
      T ev[4];
      load4(&x_chunk[d][4 * tr], xv);
      load4(&e_chunk[d][4 * tc], ev);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[i][j] = fma(xv[i], ev[j], acc[i][j]);
        }
      }
    }
    if (chunk == d_chunks - 1) {
      const int code0 = k_begin + tile * kBlockK + 4 * tc;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const T h = half_sq[code0 + j];  // +inf past K: half_sq is padded to whole tiles
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const T score = h - acc[i][j];
          if (score < best_score[i]) {
            best_score[i] = score;
            best_code[i] = code0 + j;
          }
        }
      }
    }
    if (++chunk == d_chunks) {
      chunk = 0;
      ++tile;
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const vq::ArgMin<T> row_best =
        warp_reduce(vq::ArgMin<T>{best_score[i], best_code[i]}, vq::ArgMinOp{}, 16);
    const int row = 4 * tr + i;
    if (tc == 0 && row < rows_valid) {
      const std::int64_t out = static_cast<std::int64_t>(blockIdx.y) * num_rows + row_start + row;
      part_score[out] = row_best.score;
      part_index[out] = row_best.code;
    }
  }
}

// --- epilogues --------------------------------------------------------------------------------------

// Per row: merge the splits' minima, store the int64 index, and recompute |x - e|^2 exactly.
// QUANTIZE = false (vq_nearest): store the distance in T. QUANTIZE = true (vector_quantize): store
// the gathered code as the quantized row, the block's sum of distances over D, and count the code's
// usage.
template <typename T, bool QUANTIZE>
__global__ void __launch_bounds__(kThreads, kRowKernelBlocks)
    vq_epilogue_kernel(const T* __restrict__ x, const T* __restrict__ codebook,
                       const acc_t<T>* __restrict__ part_score,
                       const std::int32_t* __restrict__ part_index,
                       std::int64_t* __restrict__ indices, T* __restrict__ distances,
                       T* __restrict__ quantized, acc_t<T>* __restrict__ block_sums,
                       std::int32_t* __restrict__ usage, std::int64_t num_rows, std::int64_t dim,
                       std::int64_t splits, std::int64_t rows_per_block) {
  using A = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * rows_per_block;
  const std::int64_t end = min64(first + rows_per_block, num_rows);
  A warp_total = 0;
  for (std::int64_t row = first + warp; row < end; row += kWarps) {
    vq::ArgMin<A> best{vq::infinity<A>(), 0x7fffffff};
    for (std::int64_t s = lane; s < splits; s += kWarpSize) {
      best = vq::ArgMinOp{}(best, vq::ArgMin<A>{part_score[s * num_rows + row],
                                                part_index[s * num_rows + row]});
    }
    best = warp_reduce(best, vq::ArgMinOp{});
    const std::int64_t code = best.code;
    const T* x_row = x + row * dim;
    const T* e_row = codebook + code * dim;
    A sq = 0;
    for (std::int64_t d = lane; d < dim; d += kWarpSize) {
      const T e = e_row[d];
      const A diff = to_acc(x_row[d]) - to_acc(e);
      sq += diff * diff;
      if constexpr (QUANTIZE) {
        quantized[row * dim + d] = e;
      }
    }
    sq = warp_sum(sq);
    if (lane == 0) {
      indices[row] = code;
      if constexpr (QUANTIZE) {
        warp_total += sq;
        atomicAdd(usage + code, 1);
      } else {
        distances[row] = from_acc<T>(sq);
      }
    }
  }
  if constexpr (QUANTIZE) {
    __shared__ A warp_totals[kWarps];
    if (lane == 0) {
      warp_totals[warp] = warp_total;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      A total = 0;
      for (int w = 0; w < kWarps; ++w) {
        total += warp_totals[w];
      }
      block_sums[blockIdx.x] = total / static_cast<A>(dim);
    }
  }
}

// One block: the two (equal) losses, sum(block_sums) / N (the mean over the N D elements), and the
// perplexity of the code usage.
template <typename T>
__global__ void __launch_bounds__(kStatsThreads)
    vector_quantize_stats_kernel(const acc_t<T>* __restrict__ block_sums,
                                 const std::int32_t* __restrict__ usage, T* __restrict__ commitment,
                                 T* __restrict__ codebook_loss, T* __restrict__ perplexity,
                                 std::int64_t num_blocks, std::int64_t num_codes,
                                 std::int64_t num_rows) {
  using A = acc_t<T>;
  const A rows = static_cast<A>(num_rows);
  A total = 0;
  for (std::int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) {
    total += block_sums[b];
  }
  total = block_sum(total);
  A entropy = 0;
  for (std::int64_t k = threadIdx.x; k < num_codes; k += blockDim.x) {
    const std::int32_t count = usage[k];
    if (count > 0) {
      const A p = static_cast<A>(count) / rows;
      entropy -= p * log(p);
    }
  }
  entropy = block_sum(entropy);
  if (threadIdx.x == 0) {
    const T mean = from_acc<T>(total / rows);
    *commitment = mean;
    *codebook_loss = mean;
    *perplexity = from_acc<T>(exp(entropy));
  }
}

// --- backward and code statistics -----------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads, kRowKernelBlocks)
    vector_quantize_bwd_kernel(const T* __restrict__ grad_quantized,
                               const T* __restrict__ grad_commitment,
                               const T* __restrict__ grad_codebook_loss, const T* __restrict__ x,
                               const T* __restrict__ codebook,
                               const std::int64_t* __restrict__ indices, T* __restrict__ grad_x,
                               acc_t<T>* __restrict__ grad_codebook, std::int64_t num_rows,
                               std::int64_t dim, std::int64_t rows_per_block) {
  using A = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  // The losses are means over the N D elements.
  const A two_over_elements = A(2) / (static_cast<A>(num_rows) * static_cast<A>(dim));
  const A commitment_scale = to_acc(*grad_commitment) * two_over_elements;
  const A codebook_scale = -to_acc(*grad_codebook_loss) * two_over_elements;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * rows_per_block;
  const std::int64_t end = min64(first + rows_per_block, num_rows);
  for (std::int64_t row = first + warp; row < end; row += kWarps) {
    const std::int64_t code = indices[row];
    const std::int64_t offset = row * dim;
    const T* e_row = codebook + code * dim;
    A* grad_e_row = grad_codebook + code * dim;
    for (std::int64_t d = lane; d < dim; d += kWarpSize) {
      const A diff = to_acc(x[offset + d]) - to_acc(e_row[d]);
      grad_x[offset + d] = from_acc<T>(to_acc(grad_quantized[offset + d]) + commitment_scale * diff);
      atomicAdd(grad_e_row + d, codebook_scale * diff);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, kRowKernelBlocks)
    vq_code_stats_kernel(const T* __restrict__ x, const std::int64_t* __restrict__ indices,
                         acc_t<T>* __restrict__ counts, acc_t<T>* __restrict__ sums,
                         std::int64_t num_rows, std::int64_t num_codes, std::int64_t dim,
                         std::int64_t rows_per_block) {
  using A = acc_t<T>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * rows_per_block;
  const std::int64_t end = min64(first + rows_per_block, num_rows);
  for (std::int64_t row = first + warp; row < end; row += kWarps) {
    const std::int64_t code = indices[row];
    if (code < 0 || code >= num_codes) {
      continue;
    }
    if (lane == 0) {
      atomicAdd(counts + code, A(1));
    }
    const T* x_row = x + row * dim;
    A* sums_row = sums + code * dim;
    for (std::int64_t d = lane; d < dim; d += kWarpSize) {
      atomicAdd(sums_row + d, to_acc(x_row[d]));
    }
  }
}

// --- launchers --------------------------------------------------------------------------------------

struct SearchShape {
  int num_rows;
  int num_codes;
  int dim;
  int splits;
  int tiles_per_split;
};

// The widest cp.async copy (16, 8 or 4 bytes; 0 for none) that keeps every row of x and the
// codebook aligned: both base pointers and the row length dim * sizeof(T) must be multiples of it.
template <typename T>
int copy_width(const void* x, const void* codebook, int dim) {
  const std::uintptr_t bits = reinterpret_cast<std::uintptr_t>(x) |
                              reinterpret_cast<std::uintptr_t>(codebook) |
                              static_cast<std::uintptr_t>(dim) * sizeof(T);
  for (const int width : {16, 8, 4}) {
    if (bits % width == 0) {
      return width;
    }
  }
  return 0;
}

// The search's tile heuristic, next to its launch (as flash-attention's num_splits_heuristic):
// calls f(Tile{}) with the tile the search runs for storage type T, tf32 and dim. Exact products
// (float64; float32 without tf32) take SimtTile. Tensor cores stage D in rows of 32, 64 or 128
// bytes, the narrowest that holds all of D, with x resident (256 x 64 tiles); longer rows stream x
// and codebook chunks of 128 bytes (128 x 128 tiles).
template <typename T, typename F>
void with_search_tile(bool tf32, std::int64_t dim, F&& f) {
  if constexpr (std::is_same_v<T, double>) {
    f(SimtTile<T>{});
  } else {
    if constexpr (std::is_same_v<T, float>) {
      if (!tf32) {
        f(SimtTile<T>{});
        return;
      }
    }
    const std::int64_t row_bytes = dim * static_cast<std::int64_t>(sizeof(T));
    if (row_bytes <= 32) {
      f(MmaTile<T, 2, true>{});
    } else if (row_bytes <= 64) {
      f(MmaTile<T, 4, true>{});
    } else if (row_bytes <= 128) {
      f(MmaTile<T, 8, true>{});
    } else {
      f(MmaTile<T, 8, false>{});
    }
  }
}

// The tensor-core search on one of its tiles; half_sq and the scores are float.
template <typename T, int CHUNKS, bool RESIDENT>
void launch_search(MmaTile<T, CHUNKS, RESIDENT>, const T* x, const T* codebook, const void* half_sq,
                   void* part_score, std::int32_t* part_index, const SearchShape& shape,
                   cudaStream_t stream) {
  using Tile = MmaTile<T, CHUNKS, RESIDENT>;
  const auto kernel = vq_search_mma_kernel<T, CHUNKS, RESIDENT>;
  FASTVAE_CHECK_CUDA(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes));
  const dim3 grid(static_cast<unsigned int>(ceil_div(shape.num_rows, Tile::kBlockN)),
                  static_cast<unsigned int>(shape.splits));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(
      x, codebook, static_cast<const float*>(half_sq), static_cast<float*>(part_score), part_index,
      shape.num_rows, shape.num_codes, shape.dim, shape.tiles_per_split,
      copy_width<T>(x, codebook, shape.dim));
  FASTVAE_CHECK_LAUNCH(vq_search_mma_kernel);
}

// The exact search (T = float or double); half_sq and the scores are T.
template <typename T>
void launch_search(SimtTile<T>, const T* x, const T* codebook, const void* half_sq,
                   void* part_score, std::int32_t* part_index, const SearchShape& shape,
                   cudaStream_t stream) {
  using Tile = SimtTile<T>;
  const dim3 grid(static_cast<unsigned int>(ceil_div(shape.num_rows, Tile::kBlockN)),
                  static_cast<unsigned int>(shape.splits));
  vq_search_simt_kernel<T><<<grid, Tile::kThreads, 0, stream>>>(
      x, codebook, static_cast<const T*>(half_sq), static_cast<T*>(part_score), part_index,
      shape.num_rows, shape.num_codes, shape.dim, shape.tiles_per_split);
  FASTVAE_CHECK_LAUNCH(vq_search_simt_kernel);
}

template <typename T>
void search(bool tf32, const void* x, const void* codebook, const void* half_sq, void* part_score,
            std::int32_t* part_index, const SearchShape& shape, cudaStream_t stream) {
  if ((reinterpret_cast<std::uintptr_t>(half_sq) & 15u) != 0) {
    throw std::invalid_argument("vq_search: half_sq must be 16-byte aligned");
  }
  with_search_tile<T>(tf32, shape.dim, [&](auto tile) {
    launch_search(tile, static_cast<const T*>(x), static_cast<const T*>(codebook), half_sq,
                  part_score, part_index, shape, stream);
  });
}

unsigned int row_blocks(std::int64_t num_rows) {
  return static_cast<unsigned int>(ceil_div(num_rows, kVqRowsPerBlock));
}

}  // namespace

VqSearchTile vq_search_tile(int dtype, bool tf32, std::int64_t dim) {
  VqSearchTile tile{};
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype",
                         with_search_tile<scalar_t>(tf32, dim, [&](auto chosen) {
                           tile = {decltype(chosen)::kBlockN, decltype(chosen)::kBlockK};
                         }));
  return tile;
}

void vq_code_half_sq(int dtype, const void* codebook, void* half_sq, std::int64_t num_codes,
                     std::int64_t padded_codes, std::int64_t dim, cudaStream_t stream) {
  if (padded_codes == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vq_code_half_sq_kernel<scalar_t>
        <<<static_cast<unsigned int>(ceil_div(padded_codes, kWarps)), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(codebook), static_cast<acc_t<scalar_t>*>(half_sq), num_codes,
        padded_codes, dim);
    FASTVAE_CHECK_LAUNCH(vq_code_half_sq_kernel);
  });
}

void vq_search(int dtype, bool tf32, const void* x, const void* codebook, const void* half_sq,
               void* part_score, std::int32_t* part_index, std::int64_t num_rows,
               std::int64_t num_codes, std::int64_t dim, std::int64_t splits,
               std::int64_t tiles_per_split, cudaStream_t stream) {
  if (num_rows == 0) {
    return;
  }
  const SearchShape shape{static_cast<int>(num_rows), static_cast<int>(num_codes),
                          static_cast<int>(dim), static_cast<int>(splits),
                          static_cast<int>(tiles_per_split)};
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype",
                         search<scalar_t>(tf32, x, codebook, half_sq, part_score, part_index,
                                          shape, stream));
}

void vq_nearest_epilogue(int dtype, const void* x, const void* codebook, const void* part_score,
                         const std::int32_t* part_index, std::int64_t* indices, void* distances,
                         std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                         cudaStream_t stream) {
  if (num_rows == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vq_epilogue_kernel<scalar_t, false><<<row_blocks(num_rows), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(codebook),
        static_cast<const acc_t<scalar_t>*>(part_score), part_index, indices,
        static_cast<scalar_t*>(distances), nullptr, nullptr, nullptr, num_rows, dim, splits,
        kVqRowsPerBlock);
    FASTVAE_CHECK_LAUNCH(vq_epilogue_kernel);
  });
}

void vector_quantize_epilogue(int dtype, const void* x, const void* codebook,
                              const void* part_score, const std::int32_t* part_index,
                              std::int64_t* indices, void* quantized, void* block_sums,
                              std::int32_t* usage, std::int64_t num_rows, std::int64_t dim,
                              std::int64_t splits, cudaStream_t stream) {
  if (num_rows == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vq_epilogue_kernel<scalar_t, true><<<row_blocks(num_rows), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(codebook),
        static_cast<const acc_t<scalar_t>*>(part_score), part_index, indices, nullptr,
        static_cast<scalar_t*>(quantized), static_cast<acc_t<scalar_t>*>(block_sums), usage,
        num_rows, dim, splits, kVqRowsPerBlock);
    FASTVAE_CHECK_LAUNCH(vq_epilogue_kernel);
  });
}

void vector_quantize_stats(int dtype, const void* block_sums, const std::int32_t* usage,
                           void* commitment, void* codebook_loss, void* perplexity,
                           std::int64_t num_blocks, std::int64_t num_codes, std::int64_t num_rows,
                           cudaStream_t stream) {
  if (num_rows == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vector_quantize_stats_kernel<scalar_t><<<1, kStatsThreads, 0, stream>>>(
        static_cast<const acc_t<scalar_t>*>(block_sums), usage,
        static_cast<scalar_t*>(commitment), static_cast<scalar_t*>(codebook_loss),
        static_cast<scalar_t*>(perplexity), num_blocks, num_codes, num_rows);
    FASTVAE_CHECK_LAUNCH(vector_quantize_stats_kernel);
  });
}

void vector_quantize_bwd(int dtype, const void* grad_quantized, const void* grad_commitment,
                         const void* grad_codebook_loss, const void* x, const void* codebook,
                         const std::int64_t* indices, void* grad_x, void* grad_codebook,
                         std::int64_t num_rows, std::int64_t dim, cudaStream_t stream) {
  if (num_rows == 0 || dim == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vector_quantize_bwd_kernel<scalar_t><<<row_blocks(num_rows), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(grad_quantized), static_cast<const scalar_t*>(grad_commitment),
        static_cast<const scalar_t*>(grad_codebook_loss), static_cast<const scalar_t*>(x),
        static_cast<const scalar_t*>(codebook), indices, static_cast<scalar_t*>(grad_x),
        static_cast<acc_t<scalar_t>*>(grad_codebook), num_rows, dim, kVqRowsPerBlock);
    FASTVAE_CHECK_LAUNCH(vector_quantize_bwd_kernel);
  });
}

void vq_code_stats(int dtype, const void* x, const std::int64_t* indices, void* counts, void* sums,
                   std::int64_t num_rows, std::int64_t num_codes, std::int64_t dim,
                   cudaStream_t stream) {
  if (num_rows == 0) {
    return;
  }
  FASTVAE_DISPATCH_FLOAT(dtype, scalar_t, "dtype", {
    vq_code_stats_kernel<scalar_t><<<row_blocks(num_rows), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), indices, static_cast<acc_t<scalar_t>*>(counts),
        static_cast<acc_t<scalar_t>*>(sums), num_rows, num_codes, dim, kVqRowsPerBlock);
    FASTVAE_CHECK_LAUNCH(vq_code_stats_kernel);
  });
}

}  // namespace fastvae

// Host API of vq.cu: launchers of the vector-quantisation kernels (nearest-code search and its
// epilogues, the VQ statistics, the backward pass, the per-code statistics of the EMA update).
//
// Plain C++ (no CUDA syntax), so bindings.cpp can include it. Tensors are device pointers to
// contiguous row-major data: x (num_rows, dim) and codebook (num_codes, dim) of the dtype with code
// `dtype` (dispatch.cuh: 0 float32, 1 float16, 2 bfloat16, 3 float64; the "storage" dtype below),
// int64 indices, int32 per-split indices and usage counts, and buffers of the "accumulation" dtype:
// float32, or float64 for float64 inputs. Launches are asynchronous on `stream`; the caller
// (fastvae/cuda/vq.py, with fastvae/plan/vq.py) allocates every buffer, checks sizes (bindings.cpp)
// and launches nothing for num_rows == 0. Code indices are int32 inside the kernels: num_rows and
// num_codes must be below 2^31. An unknown dtype code throws std::invalid_argument; a failed launch
// throws std::runtime_error naming the kernel.
//
// The search runs in three launches: vq_code_half_sq, vq_search, and an epilogue
// (vq_nearest_epilogue or vector_quantize_epilogue, the latter followed by vector_quantize_stats).
// Tiles are chosen here, next to the launches, not by the caller: vq_search_tile tells the caller
// the search's tile so that it can size the search's buffers, and kVqRowsPerBlock the row-wise
// kernels' blocks.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastvae {

// Rows per block of the row-wise kernels (the epilogues, the backward pass, the code statistics):
// vector_quantize_epilogue writes one block sum per block of kVqRowsPerBlock rows.
constexpr std::int64_t kVqRowsPerBlock = 32;

// The search's CTA tile: block_n rows by block_k codes.
struct VqSearchTile {
  int block_n;
  int block_k;
};

// The tile vq_search launches for `dtype`, `tf32` and dim, by the heuristic next to its launch
// (vq.cu): float32 without tf32 and float64 take exact FMA products on 64 x 64 tiles; float16,
// bfloat16 and float32 with tf32 take tensor cores on 256 x 64 tiles when a row of D fits one
// 32-, 64- or 128-byte staging chunk (x stays resident), else 128 x 128 tiles streaming x and
// the codebook in 128-byte chunks.
VqSearchTile vq_search_tile(int dtype, bool tf32, std::int64_t dim);

// half_sq[k] = |codebook[k]|^2 / 2 in the accumulation dtype for k < num_codes, and +inf for
// num_codes <= k < padded_codes (the search reads whole code tiles of it, so padded_codes is
// num_codes rounded up to vq_search_tile's block_k).
void vq_code_half_sq(int dtype, const void* codebook, void* half_sq, std::int64_t num_codes,
                     std::int64_t padded_codes, std::int64_t dim, cudaStream_t stream);

// The tiled search, on the tile of vq_search_tile(dtype, tf32, dim) (block_n x block_k). For every
// row n and every split s (codes [s, s + 1) * tiles_per_split * block_k, clipped to num_codes),
// the lowest score |e_k|^2 / 2 - x_n . e_k over the split and its lowest index k:
// part_score[s * num_rows + n] (accumulation dtype) and part_index[...] (int32). `half_sq` (16-byte
// aligned) holds ceil(num_codes / block_k) * block_k entries from vq_code_half_sq.
// 1 <= splits <= 65535, and the splits cover num_codes with none empty.
void vq_search(int dtype, bool tf32, const void* x, const void* codebook, const void* half_sq,
               void* part_score, std::int32_t* part_index, std::int64_t num_rows,
               std::int64_t num_codes, std::int64_t dim, std::int64_t splits,
               std::int64_t tiles_per_split, cudaStream_t stream);

// vq_nearest's epilogue: per row, the first minimum over the splits' (score, index) pairs in split
// order (the lowest index), indices[n] (int64) and distances[n] = |x_n - e_k|^2 recomputed exactly
// in the accumulation dtype and rounded to the storage dtype.
void vq_nearest_epilogue(int dtype, const void* x, const void* codebook, const void* part_score,
                         const std::int32_t* part_index, std::int64_t* indices, void* distances,
                         std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                         cudaStream_t stream);

// vector_quantize's epilogue: indices as vq_nearest_epilogue, quantized[n] = codebook[k(n)],
// block_sums[b] = sum of |x_n - e_k(n)|^2 over block b's rows, divided by dim (accumulation dtype;
// one entry per block of kVqRowsPerBlock rows), and usage[k] += 1 per row on code k (int32,
// zeroed by the caller). dim >= 1.
void vector_quantize_epilogue(int dtype, const void* x, const void* codebook,
                              const void* part_score, const std::int32_t* part_index,
                              std::int64_t* indices, void* quantized, void* block_sums,
                              std::int32_t* usage, std::int64_t num_rows, std::int64_t dim,
                              std::int64_t splits, cudaStream_t stream);

// One block: commitment = codebook_loss = sum(block_sums) / num_rows (the mean over the
// num_rows * dim elements, as block_sums are divided by dim) and perplexity =
// exp(-sum_k p_k log p_k), p_k = usage[k] / num_rows (0 log 0 = 0); three 0-dim outputs of the
// storage dtype.
void vector_quantize_stats(int dtype, const void* block_sums, const std::int32_t* usage,
                           void* commitment, void* codebook_loss, void* perplexity,
                           std::int64_t num_blocks, std::int64_t num_codes, std::int64_t num_rows,
                           cudaStream_t stream);

// Gradients of vector_quantize: grad_x = grad_quantized + grad_commitment * 2 (x - e) / (N D), and
// grad_codebook[k(n)] += -grad_codebook_loss * 2 (x_n - e) / (N D) by atomics (accumulation dtype,
// zeroed by the caller). grad_commitment and grad_codebook_loss are 0-dim device tensors of the
// storage dtype, read by the kernel. grad_quantized is contiguous (num_rows, dim).
void vector_quantize_bwd(int dtype, const void* grad_quantized, const void* grad_commitment,
                         const void* grad_codebook_loss, const void* x, const void* codebook,
                         const std::int64_t* indices, void* grad_x, void* grad_codebook,
                         std::int64_t num_rows, std::int64_t dim, cudaStream_t stream);

// counts[k] += 1 and sums[k] += x_n for every row n with k = indices[n], by atomics into buffers of
// the accumulation dtype zeroed by the caller. Rows whose index is outside [0, num_codes) are
// skipped (the op's contract excludes them; the check only keeps them from writing out of bounds).
void vq_code_stats(int dtype, const void* x, const std::int64_t* indices, void* counts, void* sums,
                   std::int64_t num_rows, std::int64_t num_codes, std::int64_t dim,
                   cudaStream_t stream);

}  // namespace fastvae

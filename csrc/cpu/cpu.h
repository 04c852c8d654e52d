// Host API of the CPU kernels (csrc/cpu/*.cpp): the Gaussian and importance-weighted ops, forward
// and backward, and the exact selection step of the VQ search, compiled for CPU tensors. They are
// the `cpu` backend of fastvae.backend, the path a CPU tensor takes by default when fastvae._C is
// built (with or without a CUDA toolkit).
//
// Every Gaussian and IWAE function has the argument list of its CUDA launcher (csrc/gaussian.h,
// csrc/iwae.h) without the stream (vq_select, below, has no CUDA twin): the same layouts, dtype
// codes (0 float32, 1 float16, 2 bfloat16, 3 float64), optional (null) pointers and gradient
// strides, so fastvae/cuda/gaussian.py and iwae.py drive both. Pointers are host memory.
// Arithmetic runs in float32 (float64 for float64), results are rounded once to the dtype; float32
// work is vectorised (AVX2 + FMA where the CPU has them, chosen at run time). The functions run on
// the calling thread, and where a call holds enough work, on PyTorch's OpenMP threads too: rows
// split into one contiguous range per thread, each row computed as it would be alone, so results
// do not depend on the thread count (dtype.h, for_row_ranges). They do nothing when an output is
// empty. They are reentrant: no state beyond the CPU-feature check made once, block buffers (at
// most 24 KiB per thread) on the stack. An unknown dtype
// code throws std::invalid_argument.
#pragma once

#include <cstdint>

namespace fastvae::cpu {

// --- Gaussian family (see csrc/gaussian.h for the formulas) ---

void reparameterize_fwd(int dtype, const void* mu, const void* logvar, const void* eps, void* z,
                        void* kl, std::int64_t rows, std::int64_t dim, std::uint64_t seed);

void reparameterize_bwd(int dtype, const void* grad_z, std::int64_t grad_z_stride_row,
                        std::int64_t grad_z_stride_col, const void* grad_kl,
                        std::int64_t grad_kl_stride, const void* mu, const void* logvar,
                        void* grad_mu, void* grad_logvar, std::int64_t rows, std::int64_t dim,
                        std::uint64_t seed);

void gaussian_kl_fwd(int dtype, const void* mu, const void* logvar, const void* mu_p,
                     const void* logvar_p, void* kl, std::int64_t rows, std::int64_t dim);

void gaussian_kl_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* mu,
                     const void* logvar, const void* mu_p, const void* logvar_p, void* grad_mu,
                     void* grad_logvar, void* grad_mu_p, void* grad_logvar_p, std::int64_t rows,
                     std::int64_t dim);

void gaussian_log_prob_fwd(int dtype, const void* x, const void* mu, const void* logvar, void* out,
                           std::int64_t rows, std::int64_t dim);

void gaussian_log_prob_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* x,
                           const void* mu, const void* logvar, void* grad_x, void* grad_mu,
                           void* grad_logvar, std::int64_t rows, std::int64_t dim);

// The stream's normals for rows 0..rows-1 of `dim` elements, as float32 (fastvae/reference/philox.py):
// the noise every sampling function above draws, exposed for tests and for fastvae.reference.
void normal_stream(float* out, std::int64_t rows, std::int64_t dim, std::uint64_t seed);

// --- importance-weighted family (see csrc/iwae.h for the formulas) ---

void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z, const void* mu,
                          const void* logvar, void* log_w, std::int64_t samples,
                          std::int64_t batch, std::int64_t dim);

void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                          std::int64_t grad_stride_b, const void* z, const void* mu,
                          const void* logvar, void* grad_z, void* grad_mu, void* grad_logvar,
                          std::int64_t samples, std::int64_t batch, std::int64_t dim);

void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse, std::int64_t samples,
                    std::int64_t groups, std::int64_t batch);

void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* log_w,
                    const void* lse, void* grad_log_w, std::int64_t samples, std::int64_t groups,
                    std::int64_t batch);

// --- vector quantisation (the exact selection of csrc/cpu/vq.cpp) ---

// Per row n of x (rows, dim), the nearest code of codebook (codes, dim) given the chunk's BLAS scores
// (rows, codes), s_nk = |e_k|^2 - 2 x_n.e_k, and code_sq (codes,) = |e_k|^2, all contiguous in the
// compute dtype (0 float32 or 3 float64; another code throws std::invalid_argument): the lowest
// index among the least exact |x_n - e_k|^2 of the codes within tau_scale * (C + |x_n| sqrt(C)) of
// the least score (C = max_k |e_k|^2; fastvae/reference/vq.py derives the bound). Writes the int64
// index and that squared distance. codes >= 1.
void vq_select(int dtype, const void* x, const void* codebook, const void* code_sq,
               const void* scores, std::int64_t* indices, void* distances, std::int64_t rows,
               std::int64_t codes, std::int64_t dim, double tau_scale);

}  // namespace fastvae::cpu

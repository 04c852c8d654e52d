// Host API of gaussian.cu: launchers of the Gaussian op kernels (reparameterised sampling with its
// KL, KL divergence, log-density), forward and backward.
//
// Plain C++ (no CUDA syntax), so bindings.cpp can include it. Every tensor is a device pointer to
// `rows x dim` elements, row-major and contiguous (the canonical (R, D) layout of
// fastvae/ops/gaussian.py), of the dtype with code `dtype` (dispatch.cuh: 0 float32, 1 float16,
// 2 bfloat16, 3 float64), except the incoming gradients of backward passes, which are read through
// the strides given (in elements; 0 for a gradient autograd expanded from a sum). Row outputs
// (KL, log-density) have `rows` contiguous elements. A null optional pointer means "absent", as
// each function says. Arithmetic runs in float32 (float64 for float64), results are rounded once
// to `dtype`. Launches are asynchronous on `stream`; nothing is launched when rows or dim is 0 (the
// caller fills row outputs of dim == 0 itself). An unknown dtype code throws std::invalid_argument;
// a failed launch throws std::runtime_error naming the kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastvae {

// z = mu + exp(logvar / 2) * eps, with eps the Philox stream of `seed` (philox.cuh) when `eps` is
// null. With `kl` non-null also kl[r] = sum_d (mu^2 + e^logvar - 1 - logvar) / 2.
void reparameterize_fwd(int dtype, const void* mu, const void* logvar, const void* eps, void* z,
                        void* kl, std::int64_t rows, std::int64_t dim, std::uint64_t seed,
                        cudaStream_t stream);

// Gradients of reparameterize_fwd with stream noise (regenerated from `seed`):
// grad_logvar = grad_z exp(logvar / 2) eps / 2. With `grad_kl` non-null (reparameterize_kl) also
// grad_mu = grad_z + grad_kl[r] mu and grad_logvar += grad_kl[r] (e^logvar - 1) / 2; `mu` and
// `grad_mu` are then required, otherwise unused. grad_z[r, d] is at grad_z + r * grad_z_stride_row
// + d * grad_z_stride_col, grad_kl[r] at grad_kl + r * grad_kl_stride.
void reparameterize_bwd(int dtype, const void* grad_z, std::int64_t grad_z_stride_row,
                        std::int64_t grad_z_stride_col, const void* grad_kl,
                        std::int64_t grad_kl_stride, const void* mu, const void* logvar,
                        void* grad_mu, void* grad_logvar, std::int64_t rows, std::int64_t dim,
                        std::uint64_t seed, cudaStream_t stream);

// kl[r] = KL(N(mu, e^logvar) || N(mu_p, e^logvar_p)) summed over the row, or to N(0, I) when
// `mu_p` and `logvar_p` are both null (they are given together or not at all).
void gaussian_kl_fwd(int dtype, const void* mu, const void* logvar, const void* mu_p,
                     const void* logvar_p, void* kl, std::int64_t rows, std::int64_t dim,
                     cudaStream_t stream);

// Gradients of gaussian_kl_fwd for mu and logvar, and with a prior for mu_p and logvar_p (then
// `grad_mu_p` and `grad_logvar_p` are required). grad[r] is at grad + r * grad_stride.
void gaussian_kl_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* mu,
                     const void* logvar, const void* mu_p, const void* logvar_p, void* grad_mu,
                     void* grad_logvar, void* grad_mu_p, void* grad_logvar_p, std::int64_t rows,
                     std::int64_t dim, cudaStream_t stream);

// out[r] = -sum_d (log 2 pi + logvar + (x - mu)^2 e^-logvar) / 2, with mu = 0 where `mu` is null
// and logvar = 0 where `logvar` is null.
void gaussian_log_prob_fwd(int dtype, const void* x, const void* mu, const void* logvar, void* out,
                           std::int64_t rows, std::int64_t dim, cudaStream_t stream);

// Gradients of gaussian_log_prob_fwd: grad_x always, grad_mu when `mu` is given, grad_logvar when
// `logvar` is given (each output required exactly when its input is). grad[r] is at
// grad + r * grad_stride.
void gaussian_log_prob_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* x,
                           const void* mu, const void* logvar, void* grad_x, void* grad_mu,
                           void* grad_logvar, std::int64_t rows, std::int64_t dim,
                           cudaStream_t stream);

}  // namespace fastvae

// Host API of iwae.cu: launchers of the importance-weighted op kernels (IWAE log-weights, and the
// IWAE / MIWAE log-mean-exp bounds), forward and backward.
//
// Plain C++ (no CUDA syntax), so bindings.cpp can include it. Tensors are device pointers in the
// canonical layouts of fastvae/reference/iwae.py, contiguous and of the dtype with code `dtype`
// (dispatch.cuh: 0 float32, 1 float16, 2 bfloat16, 3 float64): K samples of a batch of B columns,
// latent size D; log_px_z and log_w (K, B), z (K, B, D), mu and logvar (B, D), MIWAE's log_w
// (K, M, B). The log-sum-exps are kept in the compute type, acc_t (float32; float64 for float64).
// Incoming gradients are read through the strides given (in elements; 0 where autograd expanded
// them). Launches are asynchronous on `stream`; nothing is launched for an empty output (the caller
// fills outputs that are sums over an empty dim). An unknown dtype code throws
// std::invalid_argument; a failed launch throws std::runtime_error naming the kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastvae {

// log_w[k, b] = log_px_z[k, b] + sum_d ((z - mu)^2 e^-logvar + logvar - z^2)[k, b, d] / 2:
// log p(x|z) + log N(z; 0, I) - log N(z; mu, e^logvar), the log 2 pi terms cancelled.
void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z, const void* mu,
                          const void* logvar, void* log_w, std::int64_t samples,
                          std::int64_t batch, std::int64_t dim, cudaStream_t stream);

// Gradients of iwae_log_weights_fwd: with s = (z - mu) e^-logvar and g = grad[k, b],
// grad_z = g (s - z), grad_mu = -sum_k g s, grad_logvar = sum_k g (1 - s (z - mu)) / 2.
// grad[k, b] is at grad + k * grad_stride_k + b * grad_stride_b.
void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                          std::int64_t grad_stride_b, const void* z, const void* mu,
                          const void* logvar, void* grad_z, void* grad_mu, void* grad_logvar,
                          std::int64_t samples, std::int64_t batch, std::int64_t dim,
                          cudaStream_t stream);

// lse[m, b] = log sum_k exp(log_w[k, m, b]) (acc_t) and bound[b] = mean_m lse[m, b] - log K
// (dtype), for log_w (K, M, B); IWAE is M = 1. A column of -inf log-weights has lse = -inf.
void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse, std::int64_t samples,
                    std::int64_t groups, std::int64_t batch, cudaStream_t stream);

// grad_log_w[k, m, b] = grad[b] / M * exp(log_w[k, m, b] - lse[m, b]), 0 where lse[m, b] is not
// finite: the normalised importance weights. grad[b] is at grad + b * grad_stride.
void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* log_w,
                    const void* lse, void* grad_log_w, std::int64_t samples, std::int64_t groups,
                    std::int64_t batch, cudaStream_t stream);

}  // namespace fastvae

// The bindings of the Gaussian and importance-weighted op families, written once for both builds of
// their kernels: `Launch` is a struct of static functions with the launchers' argument lists (csrc/
// gaussian.h, csrc/iwae.h, csrc/cpu/cpu.h) ending in the stream handle as an int, which the CUDA
// launchers enqueue on and the CPU ones ignore. def_gaussian_iwae<Launch>(m) defines the ten
// functions on `m` with one set of names, argument names, checks and docstrings, so
// fastvae/cuda/gaussian.py and iwae.py call either module the same way.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_common.h"

namespace fastvae::bindings {

template <class Launch>
struct OpBindings {
  static void reparameterize_fwd(int dtype, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                          std::uintptr_t eps_ptr, std::uintptr_t z_ptr, std::uintptr_t kl_ptr,
                          std::int64_t rows, std::int64_t dim, std::int64_t seed,
                          std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    require_non_negative(seed, "seed");
    Launch::reparameterize_fwd(dtype, input_ptr(mu_ptr, "mu_ptr"),
                                input_ptr(logvar_ptr, "logvar_ptr"), optional_input_ptr(eps_ptr),
                                output_ptr(z_ptr, "z_ptr"), optional_output_ptr(kl_ptr), rows, dim,
                                static_cast<std::uint64_t>(seed), stream);
  }

  static void reparameterize_bwd(int dtype, std::uintptr_t grad_z_ptr, std::int64_t grad_z_stride_row,
                          std::int64_t grad_z_stride_col, std::uintptr_t grad_kl_ptr,
                          std::int64_t grad_kl_stride, std::uintptr_t mu_ptr,
                          std::uintptr_t logvar_ptr, std::uintptr_t grad_mu_ptr,
                          std::uintptr_t grad_logvar_ptr, std::int64_t rows, std::int64_t dim,
                          std::int64_t seed, std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    require_non_negative(seed, "seed");
    if (grad_kl_ptr != 0) {
      require_non_null(mu_ptr, "mu_ptr (with grad_kl_ptr)");
      require_non_null(grad_mu_ptr, "grad_mu_ptr (with grad_kl_ptr)");
    }
    Launch::reparameterize_bwd(
        dtype, input_ptr(grad_z_ptr, "grad_z_ptr"), grad_z_stride_row, grad_z_stride_col,
        optional_input_ptr(grad_kl_ptr), grad_kl_stride, optional_input_ptr(mu_ptr),
        input_ptr(logvar_ptr, "logvar_ptr"), optional_output_ptr(grad_mu_ptr),
        output_ptr(grad_logvar_ptr, "grad_logvar_ptr"), rows, dim, static_cast<std::uint64_t>(seed),
        stream);
  }

  static void gaussian_kl_fwd(int dtype, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                       std::uintptr_t mu_p_ptr, std::uintptr_t logvar_p_ptr, std::uintptr_t kl_ptr,
                       std::int64_t rows, std::int64_t dim, std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    require_paired(mu_p_ptr, "mu_p_ptr", logvar_p_ptr, "logvar_p_ptr");
    Launch::gaussian_kl_fwd(dtype, input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
                             optional_input_ptr(mu_p_ptr), optional_input_ptr(logvar_p_ptr),
                             output_ptr(kl_ptr, "kl_ptr"), rows, dim, stream);
  }

  static void gaussian_kl_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
                       std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr, std::uintptr_t mu_p_ptr,
                       std::uintptr_t logvar_p_ptr, std::uintptr_t grad_mu_ptr,
                       std::uintptr_t grad_logvar_ptr, std::uintptr_t grad_mu_p_ptr,
                       std::uintptr_t grad_logvar_p_ptr, std::int64_t rows, std::int64_t dim,
                       std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    require_paired(mu_p_ptr, "mu_p_ptr", logvar_p_ptr, "logvar_p_ptr");
    require_paired(mu_p_ptr, "mu_p_ptr", grad_mu_p_ptr, "grad_mu_p_ptr");
    require_paired(mu_p_ptr, "mu_p_ptr", grad_logvar_p_ptr, "grad_logvar_p_ptr");
    Launch::gaussian_kl_bwd(dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride,
                             input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
                             optional_input_ptr(mu_p_ptr), optional_input_ptr(logvar_p_ptr),
                             output_ptr(grad_mu_ptr, "grad_mu_ptr"),
                             output_ptr(grad_logvar_ptr, "grad_logvar_ptr"),
                             optional_output_ptr(grad_mu_p_ptr),
                             optional_output_ptr(grad_logvar_p_ptr), rows, dim, stream);
  }

  static void gaussian_log_prob_fwd(int dtype, std::uintptr_t x_ptr, std::uintptr_t mu_ptr,
                             std::uintptr_t logvar_ptr, std::uintptr_t out_ptr, std::int64_t rows,
                             std::int64_t dim, std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    Launch::gaussian_log_prob_fwd(dtype, input_ptr(x_ptr, "x_ptr"), optional_input_ptr(mu_ptr),
                                   optional_input_ptr(logvar_ptr), output_ptr(out_ptr, "out_ptr"),
                                   rows, dim, stream);
  }

  static void gaussian_log_prob_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
                             std::uintptr_t x_ptr, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                             std::uintptr_t grad_x_ptr, std::uintptr_t grad_mu_ptr,
                             std::uintptr_t grad_logvar_ptr, std::int64_t rows, std::int64_t dim,
                             std::uintptr_t stream) {
    require_non_negative(rows, "rows");
    require_non_negative(dim, "dim");
    require_paired(mu_ptr, "mu_ptr", grad_mu_ptr, "grad_mu_ptr");
    require_paired(logvar_ptr, "logvar_ptr", grad_logvar_ptr, "grad_logvar_ptr");
    Launch::gaussian_log_prob_bwd(
        dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride, input_ptr(x_ptr, "x_ptr"),
        optional_input_ptr(mu_ptr), optional_input_ptr(logvar_ptr),
        output_ptr(grad_x_ptr, "grad_x_ptr"), optional_output_ptr(grad_mu_ptr),
        optional_output_ptr(grad_logvar_ptr), rows, dim, stream);
  }

  static void iwae_log_weights_fwd(int dtype, std::uintptr_t log_px_z_ptr, std::uintptr_t z_ptr,
                            std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                            std::uintptr_t log_w_ptr, std::int64_t samples, std::int64_t batch,
                            std::int64_t dim, std::uintptr_t stream) {
    require_non_negative(samples, "samples");
    require_non_negative(batch, "batch");
    require_non_negative(dim, "dim");
    Launch::iwae_log_weights_fwd(dtype, input_ptr(log_px_z_ptr, "log_px_z_ptr"),
                                  input_ptr(z_ptr, "z_ptr"), input_ptr(mu_ptr, "mu_ptr"),
                                  input_ptr(logvar_ptr, "logvar_ptr"),
                                  output_ptr(log_w_ptr, "log_w_ptr"), samples, batch, dim,
                                  stream);
  }

  static void iwae_log_weights_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride_k,
                            std::int64_t grad_stride_b, std::uintptr_t z_ptr, std::uintptr_t mu_ptr,
                            std::uintptr_t logvar_ptr, std::uintptr_t grad_z_ptr,
                            std::uintptr_t grad_mu_ptr, std::uintptr_t grad_logvar_ptr,
                            std::int64_t samples, std::int64_t batch, std::int64_t dim,
                            std::uintptr_t stream) {
    require_non_negative(samples, "samples");
    require_non_negative(batch, "batch");
    require_non_negative(dim, "dim");
    Launch::iwae_log_weights_bwd(
        dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride_k, grad_stride_b,
        input_ptr(z_ptr, "z_ptr"), input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
        output_ptr(grad_z_ptr, "grad_z_ptr"), output_ptr(grad_mu_ptr, "grad_mu_ptr"),
        output_ptr(grad_logvar_ptr, "grad_logvar_ptr"), samples, batch, dim, stream);
  }

  static void iwae_bound_fwd(int dtype, std::uintptr_t log_w_ptr, std::uintptr_t bound_ptr,
                      std::uintptr_t lse_ptr, std::int64_t samples, std::int64_t groups,
                      std::int64_t batch, std::uintptr_t stream) {
    require_non_negative(samples, "samples");
    require_non_negative(groups, "groups");
    require_non_negative(batch, "batch");
    Launch::iwae_bound_fwd(dtype, input_ptr(log_w_ptr, "log_w_ptr"),
                            output_ptr(bound_ptr, "bound_ptr"), output_ptr(lse_ptr, "lse_ptr"),
                            samples, groups, batch, stream);
  }

  static void iwae_bound_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
                      std::uintptr_t log_w_ptr, std::uintptr_t lse_ptr, std::uintptr_t grad_log_w_ptr,
                      std::int64_t samples, std::int64_t groups, std::int64_t batch,
                      std::uintptr_t stream) {
    require_non_negative(samples, "samples");
    require_non_negative(groups, "groups");
    require_non_negative(batch, "batch");
    Launch::iwae_bound_bwd(dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride,
                            input_ptr(log_w_ptr, "log_w_ptr"), input_ptr(lse_ptr, "lse_ptr"),
                            output_ptr(grad_log_w_ptr, "grad_log_w_ptr"), samples, groups, batch,
                            stream);
  }
};

template <class Launch>
void def_gaussian_iwae(py::module_& m) {
  m.def("reparameterize_fwd", &OpBindings<Launch>::reparameterize_fwd, py::arg("dtype"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("eps_ptr"), py::arg("z_ptr"), py::arg("kl_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("seed"), py::arg("stream"),
        "z = mu + exp(logvar / 2) * eps over contiguous (rows, dim) tensors of dtype code `dtype`, "
        "eps from the Philox stream of `seed` (0 <= seed < 2**63) when eps_ptr is 0; with kl_ptr "
        "non-zero also kl[r] = 0.5 * sum_d(mu^2 + e^logvar - 1 - logvar) (rows elements). "
        "Enqueued on CUDA stream `stream` (the cpu module runs it now and ignores `stream`). Raises ValueError for a null required pointer, negative "
        "sizes or seed, or an unknown dtype code, and RuntimeError if the launch fails.");
  m.def("reparameterize_bwd", &OpBindings<Launch>::reparameterize_bwd, py::arg("dtype"), py::arg("grad_z_ptr"),
        py::arg("grad_z_stride_row"), py::arg("grad_z_stride_col"), py::arg("grad_kl_ptr"),
        py::arg("grad_kl_stride"), py::arg("mu_ptr"), py::arg("logvar_ptr"),
        py::arg("grad_mu_ptr"), py::arg("grad_logvar_ptr"), py::arg("rows"), py::arg("dim"),
        py::arg("seed"), py::arg("stream"),
        "Gradients of reparameterize_fwd with stream noise regenerated from `seed`: "
        "grad_logvar = grad_z * exp(logvar / 2) * eps / 2; with grad_kl_ptr non-zero "
        "(reparameterize_kl; then mu_ptr and grad_mu_ptr are required) also "
        "grad_mu = grad_z + grad_kl * mu and grad_logvar += grad_kl * (e^logvar - 1) / 2. grad_z "
        "and grad_kl are read through their strides (elements; 0 for expanded gradients). Raises "
        "ValueError for bad arguments and RuntimeError if the launch fails.");
  m.def("gaussian_kl_fwd", &OpBindings<Launch>::gaussian_kl_fwd, py::arg("dtype"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("mu_p_ptr"), py::arg("logvar_p_ptr"), py::arg("kl_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("stream"),
        "Per-row KL(N(mu, e^logvar) || N(mu_p, e^logvar_p)) over contiguous (rows, dim) tensors, "
        "or to N(0, I) when mu_p_ptr and logvar_p_ptr are both 0 (they go together). Raises "
        "ValueError for bad arguments and RuntimeError if the launch fails.");
  m.def("gaussian_kl_bwd", &OpBindings<Launch>::gaussian_kl_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("mu_ptr"), py::arg("logvar_ptr"), py::arg("mu_p_ptr"),
        py::arg("logvar_p_ptr"), py::arg("grad_mu_ptr"), py::arg("grad_logvar_ptr"),
        py::arg("grad_mu_p_ptr"), py::arg("grad_logvar_p_ptr"), py::arg("rows"), py::arg("dim"),
        py::arg("stream"),
        "Gradients of gaussian_kl_fwd for mu and logvar, and with a prior (mu_p_ptr, "
        "logvar_p_ptr, grad_mu_p_ptr, grad_logvar_p_ptr all non-zero) for mu_p and logvar_p. "
        "grad[r] is read at row stride grad_stride. Raises ValueError for bad arguments and "
        "RuntimeError if the launch fails.");
  m.def("gaussian_log_prob_fwd", &OpBindings<Launch>::gaussian_log_prob_fwd, py::arg("dtype"), py::arg("x_ptr"),
        py::arg("mu_ptr"), py::arg("logvar_ptr"), py::arg("out_ptr"), py::arg("rows"),
        py::arg("dim"), py::arg("stream"),
        "Per-row log N(x; mu, e^logvar) summed over dim, with mu = 0 where mu_ptr is 0 and "
        "logvar = 0 where logvar_ptr is 0. Raises ValueError for bad arguments and RuntimeError "
        "if the launch fails.");
  m.def("gaussian_log_prob_bwd", &OpBindings<Launch>::gaussian_log_prob_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("x_ptr"), py::arg("mu_ptr"), py::arg("logvar_ptr"),
        py::arg("grad_x_ptr"), py::arg("grad_mu_ptr"), py::arg("grad_logvar_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("stream"),
        "Gradients of gaussian_log_prob_fwd: grad_x, and grad_mu / grad_logvar exactly when "
        "mu_ptr / logvar_ptr are given. grad[r] is read at row stride grad_stride. Raises "
        "ValueError for bad arguments and RuntimeError if the launch fails.");

  m.def("iwae_log_weights_fwd", &OpBindings<Launch>::iwae_log_weights_fwd, py::arg("dtype"),
        py::arg("log_px_z_ptr"), py::arg("z_ptr"), py::arg("mu_ptr"), py::arg("logvar_ptr"),
        py::arg("log_w_ptr"), py::arg("samples"), py::arg("batch"), py::arg("dim"),
        py::arg("stream"),
        "log_w (K, B) = log_px_z + log N(z; 0, I) - log N(z; mu, e^logvar) summed over D, for "
        "contiguous log_px_z (K, B), z (K, B, D), mu and logvar (B, D) of dtype code `dtype` "
        "(K = samples, B = batch, D = dim). Raises ValueError for a null pointer, negative sizes "
        "or an unknown dtype code, and RuntimeError if the launch fails.");
  m.def("iwae_log_weights_bwd", &OpBindings<Launch>::iwae_log_weights_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride_k"), py::arg("grad_stride_b"), py::arg("z_ptr"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("grad_z_ptr"), py::arg("grad_mu_ptr"),
        py::arg("grad_logvar_ptr"), py::arg("samples"), py::arg("batch"), py::arg("dim"),
        py::arg("stream"),
        "Gradients of iwae_log_weights_fwd for z (K, B, D), and mu and logvar (B, D; sums over the "
        "K samples). grad (K, B) is read through its strides (elements). Raises ValueError for bad "
        "arguments and RuntimeError if the launch fails.");
  m.def("iwae_bound_fwd", &OpBindings<Launch>::iwae_bound_fwd, py::arg("dtype"), py::arg("log_w_ptr"),
        py::arg("bound_ptr"), py::arg("lse_ptr"), py::arg("samples"), py::arg("groups"),
        py::arg("batch"), py::arg("stream"),
        "For contiguous log_w (K, M, B) (K = samples, M = groups; IWAE is M = 1): "
        "lse (M, B) = logsumexp over K, in float32 (float64 for float64), and bound (B,) = "
        "mean over M of lse - log K in log_w's dtype. Raises ValueError for bad arguments and "
        "RuntimeError if the launch fails.");
  m.def("iwae_bound_bwd", &OpBindings<Launch>::iwae_bound_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("log_w_ptr"), py::arg("lse_ptr"),
        py::arg("grad_log_w_ptr"), py::arg("samples"), py::arg("groups"), py::arg("batch"),
        py::arg("stream"),
        "Gradient of iwae_bound_fwd: grad_log_w (K, M, B) = grad[b] / M * exp(log_w - lse), zero "
        "where lse is not finite; grad (B,) is read at stride grad_stride. Raises ValueError for "
        "bad arguments and RuntimeError if the launch fails.");
}

}  // namespace fastvae::bindings

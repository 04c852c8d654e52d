// The CPU half of the pybind11 module fastvae._C: the kernels of csrc/cpu/ behind the same checked
// bindings as their CUDA counterparts (bindings_ops.h), so the host code in fastvae/cuda/ drives
// both. The trailing stream argument is accepted and ignored: these run on the calling thread, and
// large calls also on PyTorch's OpenMP threads (csrc/cpu/dtype.h, for_row_ranges).
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "bindings.h"
#include "bindings_ops.h"
#include "cpu/cpu.h"

namespace {

namespace cpu = fastvae::cpu;

struct CpuLaunch {
  static void reparameterize_fwd(int dtype, const void* mu, const void* logvar, const void* eps,
                                 void* z, void* kl, std::int64_t rows, std::int64_t dim,
                                 std::uint64_t seed, std::uintptr_t /*stream*/) {
    cpu::reparameterize_fwd(dtype, mu, logvar, eps, z, kl, rows, dim, seed);
  }
  static void reparameterize_bwd(int dtype, const void* grad_z, std::int64_t grad_z_stride_row,
                                 std::int64_t grad_z_stride_col, const void* grad_kl,
                                 std::int64_t grad_kl_stride, const void* mu, const void* logvar,
                                 void* grad_mu, void* grad_logvar, std::int64_t rows,
                                 std::int64_t dim, std::uint64_t seed, std::uintptr_t /*stream*/) {
    cpu::reparameterize_bwd(dtype, grad_z, grad_z_stride_row, grad_z_stride_col, grad_kl,
                            grad_kl_stride, mu, logvar, grad_mu, grad_logvar, rows, dim, seed);
  }
  static void gaussian_kl_fwd(int dtype, const void* mu, const void* logvar, const void* mu_p,
                              const void* logvar_p, void* kl, std::int64_t rows, std::int64_t dim,
                              std::uintptr_t /*stream*/) {
    cpu::gaussian_kl_fwd(dtype, mu, logvar, mu_p, logvar_p, kl, rows, dim);
  }
  static void gaussian_kl_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                              const void* mu, const void* logvar, const void* mu_p,
                              const void* logvar_p, void* grad_mu, void* grad_logvar,
                              void* grad_mu_p, void* grad_logvar_p, std::int64_t rows,
                              std::int64_t dim, std::uintptr_t /*stream*/) {
    cpu::gaussian_kl_bwd(dtype, grad, grad_stride, mu, logvar, mu_p, logvar_p, grad_mu,
                         grad_logvar, grad_mu_p, grad_logvar_p, rows, dim);
  }
  static void gaussian_log_prob_fwd(int dtype, const void* x, const void* mu, const void* logvar,
                                    void* out, std::int64_t rows, std::int64_t dim,
                                    std::uintptr_t /*stream*/) {
    cpu::gaussian_log_prob_fwd(dtype, x, mu, logvar, out, rows, dim);
  }
  static void gaussian_log_prob_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                                    const void* x, const void* mu, const void* logvar,
                                    void* grad_x, void* grad_mu, void* grad_logvar,
                                    std::int64_t rows, std::int64_t dim, std::uintptr_t /*stream*/) {
    cpu::gaussian_log_prob_bwd(dtype, grad, grad_stride, x, mu, logvar, grad_x, grad_mu,
                               grad_logvar, rows, dim);
  }
  static void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z,
                                   const void* mu, const void* logvar, void* log_w,
                                   std::int64_t samples, std::int64_t batch, std::int64_t dim,
                                   std::uintptr_t /*stream*/) {
    cpu::iwae_log_weights_fwd(dtype, log_px_z, z, mu, logvar, log_w, samples, batch, dim);
  }
  static void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                                   std::int64_t grad_stride_b, const void* z, const void* mu,
                                   const void* logvar, void* grad_z, void* grad_mu,
                                   void* grad_logvar, std::int64_t samples, std::int64_t batch,
                                   std::int64_t dim, std::uintptr_t /*stream*/) {
    cpu::iwae_log_weights_bwd(dtype, grad, grad_stride_k, grad_stride_b, z, mu, logvar, grad_z,
                              grad_mu, grad_logvar, samples, batch, dim);
  }
  static void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse,
                             std::int64_t samples, std::int64_t groups, std::int64_t batch,
                             std::uintptr_t /*stream*/) {
    cpu::iwae_bound_fwd(dtype, log_w, bound, lse, samples, groups, batch);
  }
  static void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                             const void* log_w, const void* lse, void* grad_log_w,
                             std::int64_t samples, std::int64_t groups, std::int64_t batch,
                             std::uintptr_t /*stream*/) {
    cpu::iwae_bound_bwd(dtype, grad, grad_stride, log_w, lse, grad_log_w, samples, groups, batch);
  }
};

void normal_stream(std::uintptr_t out_ptr, std::int64_t rows, std::int64_t dim, std::int64_t seed) {
  using namespace fastvae::bindings;
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  require_non_negative(seed, "seed");
  cpu::normal_stream(static_cast<float*>(output_ptr(out_ptr, "out_ptr")), rows, dim,
                     static_cast<std::uint64_t>(seed));
}

void vq_select(int dtype, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
               std::uintptr_t code_sq_ptr, std::uintptr_t scores_ptr, std::uintptr_t indices_ptr,
               std::uintptr_t distances_ptr, std::int64_t rows, std::int64_t codes,
               std::int64_t dim, double tau_scale) {
  using namespace fastvae::bindings;
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  if (codes < 1) throw pybind11::value_error("codes must be at least 1, got " + std::to_string(codes));
  if (!(tau_scale >= 0.0) || !std::isfinite(tau_scale)) {
    throw pybind11::value_error("tau_scale must be finite and non-negative, got " +
                                std::to_string(tau_scale));
  }
  cpu::vq_select(dtype, input_ptr(x_ptr, "x_ptr"), input_ptr(codebook_ptr, "codebook_ptr"),
                 input_ptr(code_sq_ptr, "code_sq_ptr"), input_ptr(scores_ptr, "scores_ptr"),
                 static_cast<std::int64_t*>(output_ptr(indices_ptr, "indices_ptr")),
                 output_ptr(distances_ptr, "distances_ptr"), rows, codes, dim, tau_scale);
}

}  // namespace

void fastvae::bindings::bind_cpu(pybind11::module_& m) {
  def_gaussian_iwae<CpuLaunch>(m);
  m.def("normal_stream", &normal_stream, pybind11::arg("out_ptr"), pybind11::arg("rows"),
        pybind11::arg("dim"), pybind11::arg("seed"),
        "Writes the first `dim` normals of rows 0 .. rows - 1 of the noise stream of `seed` "
        "(0 <= seed < 2**63), as contiguous float32, to out_ptr: "
        "fastvae.reference.philox.normal_stream, compiled. Raises ValueError for a null pointer or "
        "negative sizes or seed.");
  m.def("vq_select", &vq_select, pybind11::arg("dtype"), pybind11::arg("x_ptr"),
        pybind11::arg("codebook_ptr"), pybind11::arg("code_sq_ptr"), pybind11::arg("scores_ptr"),
        pybind11::arg("indices_ptr"), pybind11::arg("distances_ptr"), pybind11::arg("rows"),
        pybind11::arg("codes"), pybind11::arg("dim"), pybind11::arg("tau_scale"),
        "The exact selection step of the cpu backend's VQ search (csrc/cpu/cpu.h): from contiguous "
        "x (rows, dim), codebook (codes, dim), code_sq (codes,) and the BLAS scores (rows, codes), "
        "all float32 (dtype 0) or float64 (dtype 3), writes each row's nearest code (int64, lowest "
        "index on ties) and its squared distance. Raises ValueError for a null pointer, negative "
        "sizes, codes < 1 or a negative or non-finite tau_scale, and for another dtype.");
}

// The pybind11 module fastvae._C.
//
// Functions here are thin: they take raw device pointers, sizes and a CUDA stream handle as Python
// ints, check them (raising ValueError that names the argument), and call the launchers in the
// .cu files. Memory is allocated by the caller, through PyTorch; this module does not link
// libtorch. C++ exceptions become Python exceptions: std::runtime_error -> RuntimeError
// (failed CUDA calls and launches, see check.cuh), pybind11::value_error -> ValueError.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "device.h"
// --- op family headers (gaussian.h, iwae.h, vq.h) ---
#include "vq.h"
#include "gaussian.h"
#include "iwae.h"

namespace py = pybind11;

namespace {

void require_non_null(std::uintptr_t ptr, const char* name) {
  if (ptr == 0) {
    throw py::value_error(std::string(name) + " must be a non-null device pointer, got 0");
  }
}

void require_non_negative(std::int64_t value, const char* name) {
  if (value < 0) {
    throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(value));
  }
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

py::dict device_properties(int index) {
  require_non_negative(index, "index");
  const fastvae::DeviceProperties prop = fastvae::device_properties(index);
  py::dict out;
  out["name"] = prop.name;
  out["compute_capability"] = py::make_tuple(prop.major, prop.minor);
  out["multiprocessor_count"] = prop.multiprocessor_count;
  out["total_memory"] = prop.total_memory;
  out["l2_cache_size"] = prop.l2_cache_size;
  return out;
}

void axpy_f32(std::uintptr_t x_ptr, std::uintptr_t y_ptr, std::int64_t n, float alpha,
              std::uintptr_t stream) {
  require_non_null(x_ptr, "x_ptr");
  require_non_null(y_ptr, "y_ptr");
  require_non_negative(n, "n");
  fastvae::axpy_f32(reinterpret_cast<const float*>(x_ptr), reinterpret_cast<float*>(y_ptr), n,
                    alpha, as_stream(stream));
}

// --- gaussian bindings ---

// Pointer arguments of the op-family bindings: a required one must be non-null (ValueError naming
// it); an optional one is 0 for an absent tensor, which the launchers take as nullptr.
const void* input_ptr(std::uintptr_t ptr, const char* name) {
  require_non_null(ptr, name);
  return reinterpret_cast<const void*>(ptr);
}

void* output_ptr(std::uintptr_t ptr, const char* name) {
  require_non_null(ptr, name);
  return reinterpret_cast<void*>(ptr);
}

const void* optional_input_ptr(std::uintptr_t ptr) { return reinterpret_cast<const void*>(ptr); }

void* optional_output_ptr(std::uintptr_t ptr) { return reinterpret_cast<void*>(ptr); }

// Two optional pointers that must be given together (both non-null) or not at all (both 0).
void require_paired(std::uintptr_t a, const char* a_name, std::uintptr_t b, const char* b_name) {
  if ((a == 0) != (b == 0)) {
    throw py::value_error(std::string(a_name) + " and " + b_name +
                          " must both be non-null or both be 0, got " + std::to_string(a) +
                          " and " + std::to_string(b));
  }
}

void reparameterize_fwd(int dtype, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                        std::uintptr_t eps_ptr, std::uintptr_t z_ptr, std::uintptr_t kl_ptr,
                        std::int64_t rows, std::int64_t dim, std::int64_t seed,
                        std::uintptr_t stream) {
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  require_non_negative(seed, "seed");
  fastvae::reparameterize_fwd(dtype, input_ptr(mu_ptr, "mu_ptr"),
                              input_ptr(logvar_ptr, "logvar_ptr"), optional_input_ptr(eps_ptr),
                              output_ptr(z_ptr, "z_ptr"), optional_output_ptr(kl_ptr), rows, dim,
                              static_cast<std::uint64_t>(seed), as_stream(stream));
}

void reparameterize_bwd(int dtype, std::uintptr_t grad_z_ptr, std::int64_t grad_z_stride_row,
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
  fastvae::reparameterize_bwd(
      dtype, input_ptr(grad_z_ptr, "grad_z_ptr"), grad_z_stride_row, grad_z_stride_col,
      optional_input_ptr(grad_kl_ptr), grad_kl_stride, optional_input_ptr(mu_ptr),
      input_ptr(logvar_ptr, "logvar_ptr"), optional_output_ptr(grad_mu_ptr),
      output_ptr(grad_logvar_ptr, "grad_logvar_ptr"), rows, dim, static_cast<std::uint64_t>(seed),
      as_stream(stream));
}

void gaussian_kl_fwd(int dtype, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                     std::uintptr_t mu_p_ptr, std::uintptr_t logvar_p_ptr, std::uintptr_t kl_ptr,
                     std::int64_t rows, std::int64_t dim, std::uintptr_t stream) {
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  require_paired(mu_p_ptr, "mu_p_ptr", logvar_p_ptr, "logvar_p_ptr");
  fastvae::gaussian_kl_fwd(dtype, input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
                           optional_input_ptr(mu_p_ptr), optional_input_ptr(logvar_p_ptr),
                           output_ptr(kl_ptr, "kl_ptr"), rows, dim, as_stream(stream));
}

void gaussian_kl_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
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
  fastvae::gaussian_kl_bwd(dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride,
                           input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
                           optional_input_ptr(mu_p_ptr), optional_input_ptr(logvar_p_ptr),
                           output_ptr(grad_mu_ptr, "grad_mu_ptr"),
                           output_ptr(grad_logvar_ptr, "grad_logvar_ptr"),
                           optional_output_ptr(grad_mu_p_ptr),
                           optional_output_ptr(grad_logvar_p_ptr), rows, dim, as_stream(stream));
}

void gaussian_log_prob_fwd(int dtype, std::uintptr_t x_ptr, std::uintptr_t mu_ptr,
                           std::uintptr_t logvar_ptr, std::uintptr_t out_ptr, std::int64_t rows,
                           std::int64_t dim, std::uintptr_t stream) {
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  fastvae::gaussian_log_prob_fwd(dtype, input_ptr(x_ptr, "x_ptr"), optional_input_ptr(mu_ptr),
                                 optional_input_ptr(logvar_ptr), output_ptr(out_ptr, "out_ptr"),
                                 rows, dim, as_stream(stream));
}

void gaussian_log_prob_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
                           std::uintptr_t x_ptr, std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                           std::uintptr_t grad_x_ptr, std::uintptr_t grad_mu_ptr,
                           std::uintptr_t grad_logvar_ptr, std::int64_t rows, std::int64_t dim,
                           std::uintptr_t stream) {
  require_non_negative(rows, "rows");
  require_non_negative(dim, "dim");
  require_paired(mu_ptr, "mu_ptr", grad_mu_ptr, "grad_mu_ptr");
  require_paired(logvar_ptr, "logvar_ptr", grad_logvar_ptr, "grad_logvar_ptr");
  fastvae::gaussian_log_prob_bwd(
      dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride, input_ptr(x_ptr, "x_ptr"),
      optional_input_ptr(mu_ptr), optional_input_ptr(logvar_ptr),
      output_ptr(grad_x_ptr, "grad_x_ptr"), optional_output_ptr(grad_mu_ptr),
      optional_output_ptr(grad_logvar_ptr), rows, dim, as_stream(stream));
}

// --- iwae bindings ---

void iwae_log_weights_fwd(int dtype, std::uintptr_t log_px_z_ptr, std::uintptr_t z_ptr,
                          std::uintptr_t mu_ptr, std::uintptr_t logvar_ptr,
                          std::uintptr_t log_w_ptr, std::int64_t samples, std::int64_t batch,
                          std::int64_t dim, std::uintptr_t stream) {
  require_non_negative(samples, "samples");
  require_non_negative(batch, "batch");
  require_non_negative(dim, "dim");
  fastvae::iwae_log_weights_fwd(dtype, input_ptr(log_px_z_ptr, "log_px_z_ptr"),
                                input_ptr(z_ptr, "z_ptr"), input_ptr(mu_ptr, "mu_ptr"),
                                input_ptr(logvar_ptr, "logvar_ptr"),
                                output_ptr(log_w_ptr, "log_w_ptr"), samples, batch, dim,
                                as_stream(stream));
}

void iwae_log_weights_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride_k,
                          std::int64_t grad_stride_b, std::uintptr_t z_ptr, std::uintptr_t mu_ptr,
                          std::uintptr_t logvar_ptr, std::uintptr_t grad_z_ptr,
                          std::uintptr_t grad_mu_ptr, std::uintptr_t grad_logvar_ptr,
                          std::int64_t samples, std::int64_t batch, std::int64_t dim,
                          std::uintptr_t stream) {
  require_non_negative(samples, "samples");
  require_non_negative(batch, "batch");
  require_non_negative(dim, "dim");
  fastvae::iwae_log_weights_bwd(
      dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride_k, grad_stride_b,
      input_ptr(z_ptr, "z_ptr"), input_ptr(mu_ptr, "mu_ptr"), input_ptr(logvar_ptr, "logvar_ptr"),
      output_ptr(grad_z_ptr, "grad_z_ptr"), output_ptr(grad_mu_ptr, "grad_mu_ptr"),
      output_ptr(grad_logvar_ptr, "grad_logvar_ptr"), samples, batch, dim, as_stream(stream));
}

void iwae_bound_fwd(int dtype, std::uintptr_t log_w_ptr, std::uintptr_t bound_ptr,
                    std::uintptr_t lse_ptr, std::int64_t samples, std::int64_t groups,
                    std::int64_t batch, std::uintptr_t stream) {
  require_non_negative(samples, "samples");
  require_non_negative(groups, "groups");
  require_non_negative(batch, "batch");
  fastvae::iwae_bound_fwd(dtype, input_ptr(log_w_ptr, "log_w_ptr"),
                          output_ptr(bound_ptr, "bound_ptr"), output_ptr(lse_ptr, "lse_ptr"),
                          samples, groups, batch, as_stream(stream));
}

void iwae_bound_bwd(int dtype, std::uintptr_t grad_ptr, std::int64_t grad_stride,
                    std::uintptr_t log_w_ptr, std::uintptr_t lse_ptr, std::uintptr_t grad_log_w_ptr,
                    std::int64_t samples, std::int64_t groups, std::int64_t batch,
                    std::uintptr_t stream) {
  require_non_negative(samples, "samples");
  require_non_negative(groups, "groups");
  require_non_negative(batch, "batch");
  fastvae::iwae_bound_bwd(dtype, input_ptr(grad_ptr, "grad_ptr"), grad_stride,
                          input_ptr(log_w_ptr, "log_w_ptr"), input_ptr(lse_ptr, "lse_ptr"),
                          output_ptr(grad_log_w_ptr, "grad_log_w_ptr"), samples, groups, batch,
                          as_stream(stream));
}

// --- vq bindings ---

// The vector-quantisation launchers of vq.h, called by fastvae/cuda/vq.py. Pointers a launch reads
// or writes must be non-null; code indices are int32 inside the kernels, hence N, K < 2^31.
namespace vq_bindings {

constexpr std::int64_t kMaxInt32 = (std::int64_t{1} << 31) - 1;
constexpr std::int64_t kMaxGridY = 65535;

void require_in_range(std::int64_t value, std::int64_t low, std::int64_t high, const char* name) {
  if (value < low || value > high) {
    throw py::value_error(std::string(name) + " must be in [" + std::to_string(low) + ", " +
                          std::to_string(high) + "], got " + std::to_string(value));
  }
}

// `ptr` as a device pointer; it must be non-null when `used`.
template <typename P>
P* pointer(std::uintptr_t ptr, const char* name, bool used = true) {
  if (used) {
    require_non_null(ptr, name);
  }
  return reinterpret_cast<P*>(ptr);
}

// rows_per_block >= 1 and a grid of ceil(num_rows / rows_per_block) blocks within CUDA's limit.
void require_row_blocks(std::int64_t num_rows, std::int64_t rows_per_block) {
  require_in_range(rows_per_block, 1, kMaxInt32, "rows_per_block");
  if ((num_rows + rows_per_block - 1) / rows_per_block > kMaxInt32) {
    throw py::value_error("rows_per_block = " + std::to_string(rows_per_block) + " needs more than " +
                          "2^31 - 1 blocks for num_rows = " + std::to_string(num_rows));
  }
}

void vq_code_half_sq(int dtype, std::uintptr_t codebook_ptr, std::uintptr_t half_sq_ptr,
                     std::int64_t num_codes, std::int64_t padded_codes, std::int64_t dim,
                     std::uintptr_t stream) {
  require_in_range(num_codes, 1, kMaxInt32, "num_codes");
  require_in_range(padded_codes, num_codes, kMaxInt32 + 1024, "padded_codes");
  require_in_range(dim, 0, kMaxInt32, "dim");
  fastvae::vq_code_half_sq(dtype, pointer<const void>(codebook_ptr, "codebook_ptr", dim > 0),
                           pointer<void>(half_sq_ptr, "half_sq_ptr"), num_codes, padded_codes, dim,
                           as_stream(stream));
}

void vq_search(int dtype, bool tf32, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
               std::uintptr_t half_sq_ptr, std::uintptr_t part_score_ptr,
               std::uintptr_t part_index_ptr, std::int64_t num_rows, std::int64_t num_codes,
               std::int64_t dim, int block_n, int block_k, int d_tile, std::int64_t splits,
               std::int64_t tiles_per_split, std::uintptr_t stream) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(num_codes, 1, kMaxInt32, "num_codes");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_in_range(block_n, 1, 1024, "block_n");
  require_in_range(block_k, 1, 1024, "block_k");
  require_in_range(d_tile, 1, 1024, "d_tile");
  require_in_range(splits, 1, kMaxGridY, "splits");
  require_in_range(tiles_per_split, 1, kMaxInt32, "tiles_per_split");
  const std::int64_t split_codes = tiles_per_split * block_k;
  if ((splits - 1) * split_codes >= num_codes || splits * split_codes < num_codes) {
    throw py::value_error("splits = " + std::to_string(splits) + " of tiles_per_split = " +
                          std::to_string(tiles_per_split) + " tiles of block_k = " +
                          std::to_string(block_k) + " codes must cover num_codes = " +
                          std::to_string(num_codes) + " with no empty split");
  }
  const bool used = num_rows > 0;
  fastvae::vq_search(dtype, tf32, pointer<const void>(x_ptr, "x_ptr", used),
                     pointer<const void>(codebook_ptr, "codebook_ptr", used),
                     pointer<const void>(half_sq_ptr, "half_sq_ptr", used),
                     pointer<void>(part_score_ptr, "part_score_ptr", used),
                     pointer<std::int32_t>(part_index_ptr, "part_index_ptr", used), num_rows,
                     num_codes, dim, block_n, block_k, d_tile, splits, tiles_per_split,
                     as_stream(stream));
}

// Checks shared by the two epilogues.
void require_epilogue_sizes(std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                            std::int64_t rows_per_block) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_in_range(splits, 1, kMaxGridY, "splits");
  require_row_blocks(num_rows, rows_per_block);
}

void vq_nearest_epilogue(int dtype, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
                         std::uintptr_t part_score_ptr, std::uintptr_t part_index_ptr,
                         std::uintptr_t indices_ptr, std::uintptr_t distances_ptr,
                         std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                         std::int64_t rows_per_block, std::uintptr_t stream) {
  require_epilogue_sizes(num_rows, dim, splits, rows_per_block);
  const bool used = num_rows > 0;
  fastvae::vq_nearest_epilogue(
      dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
      pointer<const void>(codebook_ptr, "codebook_ptr", used && dim > 0),
      pointer<const void>(part_score_ptr, "part_score_ptr", used),
      pointer<const std::int32_t>(part_index_ptr, "part_index_ptr", used),
      pointer<std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(distances_ptr, "distances_ptr", used), num_rows, dim, splits, rows_per_block,
      as_stream(stream));
}

void vector_quantize_epilogue(int dtype, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
                              std::uintptr_t part_score_ptr, std::uintptr_t part_index_ptr,
                              std::uintptr_t indices_ptr, std::uintptr_t quantized_ptr,
                              std::uintptr_t block_sums_ptr, std::uintptr_t usage_ptr,
                              std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                              std::int64_t rows_per_block, std::uintptr_t stream) {
  require_epilogue_sizes(num_rows, dim, splits, rows_per_block);
  const bool used = num_rows > 0;
  fastvae::vector_quantize_epilogue(
      dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
      pointer<const void>(codebook_ptr, "codebook_ptr", used && dim > 0),
      pointer<const void>(part_score_ptr, "part_score_ptr", used),
      pointer<const std::int32_t>(part_index_ptr, "part_index_ptr", used),
      pointer<std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(quantized_ptr, "quantized_ptr", used && dim > 0),
      pointer<void>(block_sums_ptr, "block_sums_ptr", used),
      pointer<std::int32_t>(usage_ptr, "usage_ptr", used), num_rows, dim, splits, rows_per_block,
      as_stream(stream));
}

void vector_quantize_stats(int dtype, std::uintptr_t block_sums_ptr, std::uintptr_t usage_ptr,
                           std::uintptr_t commitment_ptr, std::uintptr_t codebook_loss_ptr,
                           std::uintptr_t perplexity_ptr, std::int64_t num_blocks,
                           std::int64_t num_codes, std::int64_t num_rows, std::uintptr_t stream) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(num_codes, 1, kMaxInt32, "num_codes");
  require_in_range(num_blocks, num_rows > 0 ? 1 : 0, num_rows, "num_blocks");
  const bool used = num_rows > 0;
  fastvae::vector_quantize_stats(dtype, pointer<const void>(block_sums_ptr, "block_sums_ptr", used),
                                 pointer<const std::int32_t>(usage_ptr, "usage_ptr", used),
                                 pointer<void>(commitment_ptr, "commitment_ptr", used),
                                 pointer<void>(codebook_loss_ptr, "codebook_loss_ptr", used),
                                 pointer<void>(perplexity_ptr, "perplexity_ptr", used), num_blocks,
                                 num_codes, num_rows, as_stream(stream));
}

void vector_quantize_bwd(int dtype, std::uintptr_t grad_quantized_ptr,
                         std::uintptr_t grad_commitment_ptr, std::uintptr_t grad_codebook_loss_ptr,
                         std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
                         std::uintptr_t indices_ptr, std::uintptr_t grad_x_ptr,
                         std::uintptr_t grad_codebook_ptr, std::int64_t num_rows, std::int64_t dim,
                         std::int64_t rows_per_block, std::uintptr_t stream) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_row_blocks(num_rows, rows_per_block);
  const bool used = num_rows > 0 && dim > 0;
  fastvae::vector_quantize_bwd(
      dtype, pointer<const void>(grad_quantized_ptr, "grad_quantized_ptr", used),
      pointer<const void>(grad_commitment_ptr, "grad_commitment_ptr", used),
      pointer<const void>(grad_codebook_loss_ptr, "grad_codebook_loss_ptr", used),
      pointer<const void>(x_ptr, "x_ptr", used), pointer<const void>(codebook_ptr, "codebook_ptr", used),
      pointer<const std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(grad_x_ptr, "grad_x_ptr", used),
      pointer<void>(grad_codebook_ptr, "grad_codebook_ptr", used), num_rows, dim, rows_per_block,
      as_stream(stream));
}

void vq_code_stats(int dtype, std::uintptr_t x_ptr, std::uintptr_t indices_ptr,
                   std::uintptr_t counts_ptr, std::uintptr_t sums_ptr, std::int64_t num_rows,
                   std::int64_t num_codes, std::int64_t dim, std::int64_t rows_per_block,
                   std::uintptr_t stream) {
  require_non_negative(num_rows, "num_rows");
  require_in_range(num_codes, 1, INT64_MAX, "num_codes");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_row_blocks(num_rows, rows_per_block);
  const bool used = num_rows > 0;
  fastvae::vq_code_stats(dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
                         pointer<const std::int64_t>(indices_ptr, "indices_ptr", used),
                         pointer<void>(counts_ptr, "counts_ptr", used),
                         pointer<void>(sums_ptr, "sums_ptr", used && dim > 0), num_rows, num_codes,
                         dim, rows_per_block, as_stream(stream));
}

}  // namespace vq_bindings

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "fastvae's CUDA kernels. Takes raw device pointers, sizes and CUDA stream handles (ints); "
      "use it through fastvae's ops, which allocate with PyTorch and choose the stream.";

  m.def("device_count", &fastvae::device_count,
        "Number of visible CUDA devices; 0 when the driver reports none. Raises RuntimeError "
        "when the CUDA driver cannot be used (e.g. none is installed).");
  m.def("device_properties", &device_properties, py::arg("index"),
        "Properties of CUDA device `index`: name (str), compute_capability ((major, minor)), "
        "multiprocessor_count (int), total_memory (bytes), l2_cache_size (bytes). Raises "
        "ValueError if index < 0 and RuntimeError if there is no such device.");
  m.def("cuda_runtime_version", &fastvae::cuda_runtime_version,
        "Version of the CUDA runtime linked (statically) into the extension, as "
        "1000 * major + 10 * minor (13000 for CUDA 13.0).");
  m.def("driver_version", &fastvae::driver_version,
        "Latest CUDA version the installed driver supports, as 1000 * major + 10 * minor; "
        "0 when no driver is installed.");
  m.def("axpy_f32", &axpy_f32, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("n"), py::arg("alpha"),
        py::arg("stream"),
        "y = alpha * x + y over n contiguous float32 elements, in place in y, enqueued on the CUDA "
        "stream with handle `stream` (0: the default stream) of the current device. x_ptr and "
        "y_ptr are device addresses (tensor.data_ptr()). Raises ValueError for a null pointer or "
        "n < 0 and RuntimeError if the launch fails.");

  // --- gaussian defs ---
  m.def("reparameterize_fwd", &reparameterize_fwd, py::arg("dtype"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("eps_ptr"), py::arg("z_ptr"), py::arg("kl_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("seed"), py::arg("stream"),
        "z = mu + exp(logvar / 2) * eps over contiguous (rows, dim) tensors of dtype code `dtype`, "
        "eps from the Philox stream of `seed` (0 <= seed < 2**63) when eps_ptr is 0; with kl_ptr "
        "non-zero also kl[r] = 0.5 * sum_d(mu^2 + e^logvar - 1 - logvar) (rows elements). "
        "Enqueued on CUDA stream `stream`. Raises ValueError for a null required pointer, negative "
        "sizes or seed, or an unknown dtype code, and RuntimeError if the launch fails.");
  m.def("reparameterize_bwd", &reparameterize_bwd, py::arg("dtype"), py::arg("grad_z_ptr"),
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
  m.def("gaussian_kl_fwd", &gaussian_kl_fwd, py::arg("dtype"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("mu_p_ptr"), py::arg("logvar_p_ptr"), py::arg("kl_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("stream"),
        "Per-row KL(N(mu, e^logvar) || N(mu_p, e^logvar_p)) over contiguous (rows, dim) tensors, "
        "or to N(0, I) when mu_p_ptr and logvar_p_ptr are both 0 (they go together). Raises "
        "ValueError for bad arguments and RuntimeError if the launch fails.");
  m.def("gaussian_kl_bwd", &gaussian_kl_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("mu_ptr"), py::arg("logvar_ptr"), py::arg("mu_p_ptr"),
        py::arg("logvar_p_ptr"), py::arg("grad_mu_ptr"), py::arg("grad_logvar_ptr"),
        py::arg("grad_mu_p_ptr"), py::arg("grad_logvar_p_ptr"), py::arg("rows"), py::arg("dim"),
        py::arg("stream"),
        "Gradients of gaussian_kl_fwd for mu and logvar, and with a prior (mu_p_ptr, "
        "logvar_p_ptr, grad_mu_p_ptr, grad_logvar_p_ptr all non-zero) for mu_p and logvar_p. "
        "grad[r] is read at row stride grad_stride. Raises ValueError for bad arguments and "
        "RuntimeError if the launch fails.");
  m.def("gaussian_log_prob_fwd", &gaussian_log_prob_fwd, py::arg("dtype"), py::arg("x_ptr"),
        py::arg("mu_ptr"), py::arg("logvar_ptr"), py::arg("out_ptr"), py::arg("rows"),
        py::arg("dim"), py::arg("stream"),
        "Per-row log N(x; mu, e^logvar) summed over dim, with mu = 0 where mu_ptr is 0 and "
        "logvar = 0 where logvar_ptr is 0. Raises ValueError for bad arguments and RuntimeError "
        "if the launch fails.");
  m.def("gaussian_log_prob_bwd", &gaussian_log_prob_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("x_ptr"), py::arg("mu_ptr"), py::arg("logvar_ptr"),
        py::arg("grad_x_ptr"), py::arg("grad_mu_ptr"), py::arg("grad_logvar_ptr"),
        py::arg("rows"), py::arg("dim"), py::arg("stream"),
        "Gradients of gaussian_log_prob_fwd: grad_x, and grad_mu / grad_logvar exactly when "
        "mu_ptr / logvar_ptr are given. grad[r] is read at row stride grad_stride. Raises "
        "ValueError for bad arguments and RuntimeError if the launch fails.");

  // --- iwae defs ---
  m.def("iwae_log_weights_fwd", &iwae_log_weights_fwd, py::arg("dtype"),
        py::arg("log_px_z_ptr"), py::arg("z_ptr"), py::arg("mu_ptr"), py::arg("logvar_ptr"),
        py::arg("log_w_ptr"), py::arg("samples"), py::arg("batch"), py::arg("dim"),
        py::arg("stream"),
        "log_w (K, B) = log_px_z + log N(z; 0, I) - log N(z; mu, e^logvar) summed over D, for "
        "contiguous log_px_z (K, B), z (K, B, D), mu and logvar (B, D) of dtype code `dtype` "
        "(K = samples, B = batch, D = dim). Raises ValueError for a null pointer, negative sizes "
        "or an unknown dtype code, and RuntimeError if the launch fails.");
  m.def("iwae_log_weights_bwd", &iwae_log_weights_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride_k"), py::arg("grad_stride_b"), py::arg("z_ptr"), py::arg("mu_ptr"),
        py::arg("logvar_ptr"), py::arg("grad_z_ptr"), py::arg("grad_mu_ptr"),
        py::arg("grad_logvar_ptr"), py::arg("samples"), py::arg("batch"), py::arg("dim"),
        py::arg("stream"),
        "Gradients of iwae_log_weights_fwd for z (K, B, D), and mu and logvar (B, D; sums over the "
        "K samples). grad (K, B) is read through its strides (elements). Raises ValueError for bad "
        "arguments and RuntimeError if the launch fails.");
  m.def("iwae_bound_fwd", &iwae_bound_fwd, py::arg("dtype"), py::arg("log_w_ptr"),
        py::arg("bound_ptr"), py::arg("lse_ptr"), py::arg("samples"), py::arg("groups"),
        py::arg("batch"), py::arg("stream"),
        "For contiguous log_w (K, M, B) (K = samples, M = groups; IWAE is M = 1): "
        "lse (M, B) = logsumexp over K, in float32 (float64 for float64), and bound (B,) = "
        "mean over M of lse - log K in log_w's dtype. Raises ValueError for bad arguments and "
        "RuntimeError if the launch fails.");
  m.def("iwae_bound_bwd", &iwae_bound_bwd, py::arg("dtype"), py::arg("grad_ptr"),
        py::arg("grad_stride"), py::arg("log_w_ptr"), py::arg("lse_ptr"),
        py::arg("grad_log_w_ptr"), py::arg("samples"), py::arg("groups"), py::arg("batch"),
        py::arg("stream"),
        "Gradient of iwae_bound_fwd: grad_log_w (K, M, B) = grad[b] / M * exp(log_w - lse), zero "
        "where lse is not finite; grad (B,) is read at stride grad_stride. Raises ValueError for "
        "bad arguments and RuntimeError if the launch fails.");

  // --- vq defs ---
  m.def("vq_code_half_sq", &vq_bindings::vq_code_half_sq, py::arg("dtype"),
        py::arg("codebook_ptr"), py::arg("half_sq_ptr"), py::arg("num_codes"),
        py::arg("padded_codes"), py::arg("dim"), py::arg("stream"),
        "half_sq[k] = |codebook[k]|^2 / 2 for the contiguous (num_codes, dim) codebook of dtype "
        "code `dtype`, in float32 (float64 for float64), and +inf for num_codes <= k < "
        "padded_codes. Raises ValueError for a null pointer or sizes out of range (num_codes in "
        "[1, 2^31), padded_codes >= num_codes).");
  m.def("vq_search", &vq_bindings::vq_search, py::arg("dtype"), py::arg("tf32"), py::arg("x_ptr"),
        py::arg("codebook_ptr"), py::arg("half_sq_ptr"), py::arg("part_score_ptr"),
        py::arg("part_index_ptr"), py::arg("num_rows"), py::arg("num_codes"), py::arg("dim"),
        py::arg("block_n"), py::arg("block_k"), py::arg("d_tile"), py::arg("splits"),
        py::arg("tiles_per_split"), py::arg("stream"),
        "Nearest-code search without the N x K matrix: for every row n of x (num_rows, dim) and "
        "split s (codes [s, s + 1) * tiles_per_split * block_k), the lowest score "
        "|e|^2 / 2 - x.e and its lowest index into part_score[s, n] (float32; float64 for "
        "float64) and part_index[s, n] (int32). half_sq comes from vq_code_half_sq padded to "
        "whole block_k tiles. Tiles (block_n, block_k, d_tile): on tensor cores for float16, "
        "bfloat16 and float32 with tf32, d_tile of 32, 64 or 128 bytes with (256, 64) when "
        "dim <= d_tile, else 128 bytes with (128, 128); (64, 64, 16) with exact products for "
        "float32 without tf32 and float64. Raises ValueError for bad sizes, splits that leave a split "
        "empty or miss codes, or an unsupported tile; RuntimeError if the launch fails.");
  m.def("vq_nearest_epilogue", &vq_bindings::vq_nearest_epilogue, py::arg("dtype"),
        py::arg("x_ptr"), py::arg("codebook_ptr"), py::arg("part_score_ptr"),
        py::arg("part_index_ptr"), py::arg("indices_ptr"), py::arg("distances_ptr"),
        py::arg("num_rows"), py::arg("dim"), py::arg("splits"), py::arg("rows_per_block"),
        py::arg("stream"),
        "Finishes vq_nearest after vq_search: the first minimum over the splits (lowest index) "
        "into int64 indices[n], and distances[n] = |x_n - e|^2 recomputed exactly in the "
        "accumulation dtype, stored in x's dtype. Raises ValueError for a null pointer or sizes "
        "out of range.");
  m.def("vector_quantize_epilogue", &vq_bindings::vector_quantize_epilogue, py::arg("dtype"),
        py::arg("x_ptr"), py::arg("codebook_ptr"), py::arg("part_score_ptr"),
        py::arg("part_index_ptr"), py::arg("indices_ptr"), py::arg("quantized_ptr"),
        py::arg("block_sums_ptr"), py::arg("usage_ptr"), py::arg("num_rows"), py::arg("dim"),
        py::arg("splits"), py::arg("rows_per_block"), py::arg("stream"),
        "Finishes vector_quantize's search: int64 indices[n], quantized[n] = codebook[indices[n]], "
        "block_sums[b] = sum of |x_n - e|^2 over the rows_per_block rows of block b, divided by dim "
        "(accumulation dtype), and usage[k] += 1 per row on code k (int32, zeroed by the caller). "
        "Raises ValueError for a null pointer or sizes out of range.");
  m.def("vector_quantize_stats", &vq_bindings::vector_quantize_stats, py::arg("dtype"),
        py::arg("block_sums_ptr"), py::arg("usage_ptr"), py::arg("commitment_ptr"),
        py::arg("codebook_loss_ptr"), py::arg("perplexity_ptr"), py::arg("num_blocks"),
        py::arg("num_codes"), py::arg("num_rows"), py::arg("stream"),
        "One block: commitment = codebook_loss = sum(block_sums) / num_rows (block sums are over D, so "
        "the losses are means over the N D elements) and perplexity = "
        "exp(-sum_k p_k log p_k) with p_k = usage[k] / num_rows, into 0-dim tensors of dtype "
        "code `dtype`. Raises ValueError for a null pointer or sizes out of range.");
  m.def("vector_quantize_bwd", &vq_bindings::vector_quantize_bwd, py::arg("dtype"),
        py::arg("grad_quantized_ptr"), py::arg("grad_commitment_ptr"),
        py::arg("grad_codebook_loss_ptr"), py::arg("x_ptr"), py::arg("codebook_ptr"),
        py::arg("indices_ptr"), py::arg("grad_x_ptr"), py::arg("grad_codebook_ptr"),
        py::arg("num_rows"), py::arg("dim"), py::arg("rows_per_block"), py::arg("stream"),
        "Gradients of vector_quantize: grad_x = grad_quantized + grad_commitment * 2 (x - e) / (N D) "
        "(contiguous, x's dtype) and grad_codebook[k] += -grad_codebook_loss * 2 (x_n - e_k) / (N D) "
        "over the rows on code k, by atomics into a zeroed buffer of the accumulation dtype. The "
        "two 0-dim upstream gradients are read on the device. Raises ValueError for a null "
        "pointer or sizes out of range.");
  m.def("vq_code_stats", &vq_bindings::vq_code_stats, py::arg("dtype"), py::arg("x_ptr"),
        py::arg("indices_ptr"), py::arg("counts_ptr"), py::arg("sums_ptr"), py::arg("num_rows"),
        py::arg("num_codes"), py::arg("dim"), py::arg("rows_per_block"), py::arg("stream"),
        "Per-code counts[k] += 1 and sums[k] += x_n for every row n with indices[n] = k (int64), "
        "by atomics into zeroed buffers of the accumulation dtype; rows with an index outside "
        "[0, num_codes) are skipped. Raises ValueError for a null pointer or sizes out of range.");
}

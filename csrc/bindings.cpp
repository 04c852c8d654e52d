// The CUDA part of the pybind11 module fastvae._C (module.cpp), compiled when the build has a CUDA
// toolkit.
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

#include "bindings.h"
#include "bindings_ops.h"
#include "device.h"
// --- op family headers (gaussian.h, iwae.h, vq.h) ---
#include "vq.h"
#include "gaussian.h"
#include "iwae.h"

namespace py = pybind11;

namespace {

using namespace fastvae::bindings;

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

// The CUDA launchers of gaussian.h and iwae.h with the stream as the int Python passes, for
// def_gaussian_iwae (bindings_ops.h).
struct CudaLaunch {
  static void reparameterize_fwd(int dtype, const void* mu, const void* logvar, const void* eps,
                                 void* z, void* kl, std::int64_t rows, std::int64_t dim,
                                 std::uint64_t seed, std::uintptr_t stream) {
    fastvae::reparameterize_fwd(dtype, mu, logvar, eps, z, kl, rows, dim, seed, as_stream(stream));
  }
  static void reparameterize_bwd(int dtype, const void* grad_z, std::int64_t grad_z_stride_row,
                                 std::int64_t grad_z_stride_col, const void* grad_kl,
                                 std::int64_t grad_kl_stride, const void* mu, const void* logvar,
                                 void* grad_mu, void* grad_logvar, std::int64_t rows,
                                 std::int64_t dim, std::uint64_t seed, std::uintptr_t stream) {
    fastvae::reparameterize_bwd(dtype, grad_z, grad_z_stride_row, grad_z_stride_col, grad_kl,
                                grad_kl_stride, mu, logvar, grad_mu, grad_logvar, rows, dim, seed,
                                as_stream(stream));
  }
  static void gaussian_kl_fwd(int dtype, const void* mu, const void* logvar, const void* mu_p,
                              const void* logvar_p, void* kl, std::int64_t rows, std::int64_t dim,
                              std::uintptr_t stream) {
    fastvae::gaussian_kl_fwd(dtype, mu, logvar, mu_p, logvar_p, kl, rows, dim, as_stream(stream));
  }
  static void gaussian_kl_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                              const void* mu, const void* logvar, const void* mu_p,
                              const void* logvar_p, void* grad_mu, void* grad_logvar,
                              void* grad_mu_p, void* grad_logvar_p, std::int64_t rows,
                              std::int64_t dim, std::uintptr_t stream) {
    fastvae::gaussian_kl_bwd(dtype, grad, grad_stride, mu, logvar, mu_p, logvar_p, grad_mu,
                             grad_logvar, grad_mu_p, grad_logvar_p, rows, dim, as_stream(stream));
  }
  static void gaussian_log_prob_fwd(int dtype, const void* x, const void* mu, const void* logvar,
                                    void* out, std::int64_t rows, std::int64_t dim,
                                    std::uintptr_t stream) {
    fastvae::gaussian_log_prob_fwd(dtype, x, mu, logvar, out, rows, dim, as_stream(stream));
  }
  static void gaussian_log_prob_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                                    const void* x, const void* mu, const void* logvar,
                                    void* grad_x, void* grad_mu, void* grad_logvar,
                                    std::int64_t rows, std::int64_t dim, std::uintptr_t stream) {
    fastvae::gaussian_log_prob_bwd(dtype, grad, grad_stride, x, mu, logvar, grad_x, grad_mu,
                                   grad_logvar, rows, dim, as_stream(stream));
  }
  static void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z,
                                   const void* mu, const void* logvar, void* log_w,
                                   std::int64_t samples, std::int64_t batch, std::int64_t dim,
                                   std::uintptr_t stream) {
    fastvae::iwae_log_weights_fwd(dtype, log_px_z, z, mu, logvar, log_w, samples, batch, dim,
                                  as_stream(stream));
  }
  static void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                                   std::int64_t grad_stride_b, const void* z, const void* mu,
                                   const void* logvar, void* grad_z, void* grad_mu,
                                   void* grad_logvar, std::int64_t samples, std::int64_t batch,
                                   std::int64_t dim, std::uintptr_t stream) {
    fastvae::iwae_log_weights_bwd(dtype, grad, grad_stride_k, grad_stride_b, z, mu, logvar,
                                  grad_z, grad_mu, grad_logvar, samples, batch, dim,
                                  as_stream(stream));
  }
  static void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse,
                             std::int64_t samples, std::int64_t groups, std::int64_t batch,
                             std::uintptr_t stream) {
    fastvae::iwae_bound_fwd(dtype, log_w, bound, lse, samples, groups, batch, as_stream(stream));
  }
  static void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride,
                             const void* log_w, const void* lse, void* grad_log_w,
                             std::int64_t samples, std::int64_t groups, std::int64_t batch,
                             std::uintptr_t stream) {
    fastvae::iwae_bound_bwd(dtype, grad, grad_stride, log_w, lse, grad_log_w, samples, groups,
                            batch, as_stream(stream));
  }
};

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

py::tuple vq_search_tile(int dtype, bool tf32, std::int64_t dim) {
  require_in_range(dim, 0, kMaxInt32, "dim");
  const fastvae::VqSearchTile tile = fastvae::vq_search_tile(dtype, tf32, dim);
  return py::make_tuple(tile.block_n, tile.block_k);
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
               std::int64_t dim, std::int64_t splits, std::int64_t tiles_per_split,
               std::uintptr_t stream) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(num_codes, 1, kMaxInt32, "num_codes");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_in_range(splits, 1, kMaxGridY, "splits");
  require_in_range(tiles_per_split, 1, kMaxInt32, "tiles_per_split");
  const std::int64_t block_k = fastvae::vq_search_tile(dtype, tf32, dim).block_k;
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
                     num_codes, dim, splits, tiles_per_split, as_stream(stream));
}

// Checks shared by the two epilogues.
void require_epilogue_sizes(std::int64_t num_rows, std::int64_t dim, std::int64_t splits) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(dim, 0, kMaxInt32, "dim");
  require_in_range(splits, 1, kMaxGridY, "splits");
}

void vq_nearest_epilogue(int dtype, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
                         std::uintptr_t part_score_ptr, std::uintptr_t part_index_ptr,
                         std::uintptr_t indices_ptr, std::uintptr_t distances_ptr,
                         std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                         std::uintptr_t stream) {
  require_epilogue_sizes(num_rows, dim, splits);
  const bool used = num_rows > 0;
  fastvae::vq_nearest_epilogue(
      dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
      pointer<const void>(codebook_ptr, "codebook_ptr", used && dim > 0),
      pointer<const void>(part_score_ptr, "part_score_ptr", used),
      pointer<const std::int32_t>(part_index_ptr, "part_index_ptr", used),
      pointer<std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(distances_ptr, "distances_ptr", used), num_rows, dim, splits,
      as_stream(stream));
}

void vector_quantize_epilogue(int dtype, std::uintptr_t x_ptr, std::uintptr_t codebook_ptr,
                              std::uintptr_t part_score_ptr, std::uintptr_t part_index_ptr,
                              std::uintptr_t indices_ptr, std::uintptr_t quantized_ptr,
                              std::uintptr_t block_sums_ptr, std::uintptr_t usage_ptr,
                              std::int64_t num_rows, std::int64_t dim, std::int64_t splits,
                              std::uintptr_t stream) {
  require_epilogue_sizes(num_rows, dim, splits);
  const bool used = num_rows > 0;
  fastvae::vector_quantize_epilogue(
      dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
      pointer<const void>(codebook_ptr, "codebook_ptr", used && dim > 0),
      pointer<const void>(part_score_ptr, "part_score_ptr", used),
      pointer<const std::int32_t>(part_index_ptr, "part_index_ptr", used),
      pointer<std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(quantized_ptr, "quantized_ptr", used && dim > 0),
      pointer<void>(block_sums_ptr, "block_sums_ptr", used),
      pointer<std::int32_t>(usage_ptr, "usage_ptr", used), num_rows, dim, splits,
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
                         std::uintptr_t stream) {
  require_in_range(num_rows, 0, kMaxInt32, "num_rows");
  require_in_range(dim, 0, kMaxInt32, "dim");
  const bool used = num_rows > 0 && dim > 0;
  fastvae::vector_quantize_bwd(
      dtype, pointer<const void>(grad_quantized_ptr, "grad_quantized_ptr", used),
      pointer<const void>(grad_commitment_ptr, "grad_commitment_ptr", used),
      pointer<const void>(grad_codebook_loss_ptr, "grad_codebook_loss_ptr", used),
      pointer<const void>(x_ptr, "x_ptr", used), pointer<const void>(codebook_ptr, "codebook_ptr", used),
      pointer<const std::int64_t>(indices_ptr, "indices_ptr", used),
      pointer<void>(grad_x_ptr, "grad_x_ptr", used),
      pointer<void>(grad_codebook_ptr, "grad_codebook_ptr", used), num_rows, dim,
      as_stream(stream));
}

void vq_code_stats(int dtype, std::uintptr_t x_ptr, std::uintptr_t indices_ptr,
                   std::uintptr_t counts_ptr, std::uintptr_t sums_ptr, std::int64_t num_rows,
                   std::int64_t num_codes, std::int64_t dim, std::uintptr_t stream) {
  // A grid of ceil(num_rows / kVqRowsPerBlock) blocks within CUDA's limit of 2^31 - 1.
  require_in_range(num_rows, 0, kMaxInt32 * fastvae::kVqRowsPerBlock, "num_rows");
  require_in_range(num_codes, 1, INT64_MAX, "num_codes");
  require_in_range(dim, 0, kMaxInt32, "dim");
  const bool used = num_rows > 0;
  fastvae::vq_code_stats(dtype, pointer<const void>(x_ptr, "x_ptr", used && dim > 0),
                         pointer<const std::int64_t>(indices_ptr, "indices_ptr", used),
                         pointer<void>(counts_ptr, "counts_ptr", used),
                         pointer<void>(sums_ptr, "sums_ptr", used && dim > 0), num_rows, num_codes,
                         dim, as_stream(stream));
}

}  // namespace vq_bindings

// The body of bind_cuda, here so that names resolve to the wrappers above rather than to the
// launchers of the same names in namespace fastvae.
void define_cuda(py::module_& m) {
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
  def_gaussian_iwae<CudaLaunch>(m);

  // --- vq defs ---
  m.attr("vq_rows_per_block") = fastvae::kVqRowsPerBlock;
  m.def("vq_search_tile", &vq_bindings::vq_search_tile, py::arg("dtype"), py::arg("tf32"),
        py::arg("dim"),
        "(block_n, block_k): the rows and codes per CTA tile vq_search runs for dtype code "
        "`dtype`, tf32 and dim, chosen by the heuristic next to the launch. Exact products "
        "(float32 without tf32, float64): (64, 64); tensor cores (float16, bfloat16, float32 with "
        "tf32): (256, 64) when a row fits a 128-byte staging chunk, else (128, 128). The caller "
        "pads half_sq to whole block_k tiles and splits the codebook from it. Raises ValueError "
        "for an unknown dtype code or dim out of range.");
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
        py::arg("splits"), py::arg("tiles_per_split"), py::arg("stream"),
        "Nearest-code search without the N x K matrix, on the tile of vq_search_tile: for every "
        "row n of x (num_rows, dim) and split s (codes [s, s + 1) * tiles_per_split * block_k), "
        "the lowest score |e|^2 / 2 - x.e and its lowest index into part_score[s, n] (float32; "
        "float64 for float64) and part_index[s, n] (int32). half_sq comes from vq_code_half_sq "
        "padded to whole block_k tiles. Raises ValueError for bad sizes or splits that leave a "
        "split empty or miss codes; RuntimeError if the launch fails.");
  m.def("vq_nearest_epilogue", &vq_bindings::vq_nearest_epilogue, py::arg("dtype"),
        py::arg("x_ptr"), py::arg("codebook_ptr"), py::arg("part_score_ptr"),
        py::arg("part_index_ptr"), py::arg("indices_ptr"), py::arg("distances_ptr"),
        py::arg("num_rows"), py::arg("dim"), py::arg("splits"), py::arg("stream"),
        "Finishes vq_nearest after vq_search: the first minimum over the splits (lowest index) "
        "into int64 indices[n], and distances[n] = |x_n - e|^2 recomputed exactly in the "
        "accumulation dtype, stored in x's dtype. Raises ValueError for a null pointer or sizes "
        "out of range.");
  m.def("vector_quantize_epilogue", &vq_bindings::vector_quantize_epilogue, py::arg("dtype"),
        py::arg("x_ptr"), py::arg("codebook_ptr"), py::arg("part_score_ptr"),
        py::arg("part_index_ptr"), py::arg("indices_ptr"), py::arg("quantized_ptr"),
        py::arg("block_sums_ptr"), py::arg("usage_ptr"), py::arg("num_rows"), py::arg("dim"),
        py::arg("splits"), py::arg("stream"),
        "Finishes vector_quantize's search: int64 indices[n], quantized[n] = codebook[indices[n]], "
        "block_sums[b] = sum of |x_n - e|^2 over the vq_rows_per_block rows of block b, divided by "
        "dim (accumulation dtype), and usage[k] += 1 per row on code k (int32, zeroed by the "
        "caller). Raises ValueError for a null pointer or sizes out of range.");
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
        py::arg("num_rows"), py::arg("dim"), py::arg("stream"),
        "Gradients of vector_quantize: grad_x = grad_quantized + grad_commitment * 2 (x - e) / (N D) "
        "(contiguous, x's dtype) and grad_codebook[k] += -grad_codebook_loss * 2 (x_n - e_k) / (N D) "
        "over the rows on code k, by atomics into a zeroed buffer of the accumulation dtype. The "
        "two 0-dim upstream gradients are read on the device. Raises ValueError for a null "
        "pointer or sizes out of range.");
  m.def("vq_code_stats", &vq_bindings::vq_code_stats, py::arg("dtype"), py::arg("x_ptr"),
        py::arg("indices_ptr"), py::arg("counts_ptr"), py::arg("sums_ptr"), py::arg("num_rows"),
        py::arg("num_codes"), py::arg("dim"), py::arg("stream"),
        "Per-code counts[k] += 1 and sums[k] += x_n for every row n with indices[n] = k (int64), "
        "by atomics into zeroed buffers of the accumulation dtype; rows with an index outside "
        "[0, num_codes) are skipped. Raises ValueError for a null pointer or sizes out of range.");
}

}  // namespace

void fastvae::bindings::bind_cuda(py::module_& m) { define_cuda(m); }

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
}

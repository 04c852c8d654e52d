// Host API of device.cu: device queries and the axpy_f32 plumbing kernel.
//
// Plain C++ (no CUDA syntax), so bindings.cpp can include it. Functions throw std::runtime_error
// (see check.cuh) when a CUDA call fails; arguments are validated by the callers in bindings.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastvae {

struct DeviceProperties {
  std::string name;
  int major;                    // compute capability major
  int minor;                    // compute capability minor
  int multiprocessor_count;
  std::size_t total_memory;     // bytes of global memory
  int l2_cache_size;            // bytes
};

// Number of visible CUDA devices; 0 when the driver reports no device.
int device_count();

// Properties of device `index` (0 <= index < device_count()).
DeviceProperties device_properties(int index);

// Version of the CUDA runtime linked into the extension, as 1000 * major + 10 * minor.
int cuda_runtime_version();

// Latest CUDA version the installed driver supports, as 1000 * major + 10 * minor;
// 0 when no driver is installed.
int driver_version();

// y[i] = alpha * x[i] + y[i] for 0 <= i < n (n >= 0), on `stream`, asynchronously.
void axpy_f32(const float* x, float* y, std::int64_t n, float alpha, cudaStream_t stream);

}  // namespace fastvae

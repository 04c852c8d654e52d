// Host API of device.cu: device queries and the runtime and driver versions.
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

}  // namespace fastvae

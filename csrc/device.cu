// Device plumbing: device queries and the runtime and driver versions.
#include "check.cuh"
#include "device.h"

namespace fastvae {

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice) {
    (void)cudaGetLastError();
    return 0;
  }
  check_cuda(status, "cudaGetDeviceCount(&count)");
  return count;
}

DeviceProperties device_properties(int index) {
  cudaDeviceProp prop{};
  FASTVAE_CHECK_CUDA(cudaGetDeviceProperties(&prop, index));
  return DeviceProperties{prop.name,
                          prop.major,
                          prop.minor,
                          prop.multiProcessorCount,
                          prop.totalGlobalMem,
                          prop.l2CacheSize};
}

int cuda_runtime_version() {
  int version = 0;
  FASTVAE_CHECK_CUDA(cudaRuntimeGetVersion(&version));
  return version;
}

int driver_version() {
  int version = 0;
  FASTVAE_CHECK_CUDA(cudaDriverGetVersion(&version));
  return version;
}

}  // namespace fastvae

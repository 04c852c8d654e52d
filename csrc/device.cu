// Device plumbing: queries, runtime/driver versions and axpy_f32, the smallest complete kernel
// (grid-stride loop, 64-bit indices, launch check) that exercises the whole build and call path.
#include "check.cuh"
#include "device.h"

#include <algorithm>

namespace fastvae {

namespace {

constexpr int kAxpyThreads = 256;
// Enough blocks to fill any current GPU many times over; the grid-stride loop covers the rest.
constexpr std::int64_t kAxpyMaxBlocks = 65536;

__global__ void axpy_f32_kernel(const float* x, float* y, std::int64_t n, float alpha) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    y[i] = alpha * x[i] + y[i];
  }
}

}  // namespace

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

void axpy_f32(const float* x, float* y, std::int64_t n, float alpha, cudaStream_t stream) {
  if (n == 0) {
    return;
  }
  const std::int64_t blocks = std::min((n + kAxpyThreads - 1) / kAxpyThreads, kAxpyMaxBlocks);
  axpy_f32_kernel<<<static_cast<unsigned int>(blocks), kAxpyThreads, 0, stream>>>(x, y, n, alpha);
  FASTVAE_CHECK_LAUNCH(axpy_f32_kernel);
}

}  // namespace fastvae

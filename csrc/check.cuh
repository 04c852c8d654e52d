// Error checks for CUDA runtime calls and kernel launches.
//
// Every runtime call goes through FASTVAE_CHECK_CUDA and every launch is followed by
// FASTVAE_CHECK_LAUNCH. A failure throws std::runtime_error, which pybind11 turns into a Python
// RuntimeError whose message names the call or the kernel and the CUDA error.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace fastvae {

// Throws std::runtime_error "<what> failed: <error name> (<error text>)" unless status is
// cudaSuccess. The runtime's last-error slot is cleared first, so a later launch check does not
// report this error again.
inline void check_cuda(cudaError_t status, const char* what) {
  if (status == cudaSuccess) {
    return;
  }
  (void)cudaGetLastError();
  throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                           cudaGetErrorString(status) + ")");
}

}  // namespace fastvae

// Checks the return code of a CUDA runtime call; the message quotes the call.
#define FASTVAE_CHECK_CUDA(call) ::fastvae::check_cuda((call), #call)

// Checks that the kernel launched just before succeeded; the message names the kernel. Errors the
// kernel raises while it runs are asynchronous and surface at the next synchronising call.
#define FASTVAE_CHECK_LAUNCH(kernel) ::fastvae::check_cuda(cudaGetLastError(), "launch of " #kernel)

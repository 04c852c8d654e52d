// The two halves of the pybind11 module fastvae._C, joined in module.cpp: the CPU kernels, always
// built, and the CUDA kernels, built when CMake has a CUDA toolkit (FASTVAE_WITH_CUDA).
#pragma once

#include <pybind11/pybind11.h>

namespace fastvae::bindings {

// Defines the CPU kernels of csrc/cpu/ on `m` (the submodule fastvae._C.cpu).
void bind_cpu(pybind11::module_& m);

// Defines the device queries and the CUDA kernels' launchers on `m` (fastvae._C itself).
void bind_cuda(pybind11::module_& m);

}  // namespace fastvae::bindings

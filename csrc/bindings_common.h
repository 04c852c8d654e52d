// Argument checks shared by the pybind11 bindings of fastvae._C (bindings.cpp for the CUDA kernels,
// bindings_cpu.cpp for the CPU ones): pointers and sizes arrive from Python as ints, and a bad one
// is a ValueError naming the argument before any kernel runs.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace fastvae::bindings {

namespace py = pybind11;

inline void require_non_null(std::uintptr_t ptr, const char* name) {
  if (ptr == 0) {
    throw py::value_error(std::string(name) + " must be a non-null pointer, got 0");
  }
}

inline void require_non_negative(std::int64_t value, const char* name) {
  if (value < 0) {
    throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(value));
  }
}

// Pointer arguments of the op-family bindings: a required one must be non-null (ValueError naming
// it); an optional one is 0 for an absent tensor, which the launchers take as nullptr.
inline const void* input_ptr(std::uintptr_t ptr, const char* name) {
  require_non_null(ptr, name);
  return reinterpret_cast<const void*>(ptr);
}

inline void* output_ptr(std::uintptr_t ptr, const char* name) {
  require_non_null(ptr, name);
  return reinterpret_cast<void*>(ptr);
}

inline const void* optional_input_ptr(std::uintptr_t ptr) { return reinterpret_cast<const void*>(ptr); }

inline void* optional_output_ptr(std::uintptr_t ptr) { return reinterpret_cast<void*>(ptr); }

// Two optional pointers that must be given together (both non-null) or not at all (both 0).
inline void require_paired(std::uintptr_t a, const char* a_name, std::uintptr_t b, const char* b_name) {
  if ((a == 0) != (b == 0)) {
    throw py::value_error(std::string(a_name) + " and " + b_name +
                          " must both be non-null or both be 0, got " + std::to_string(a) +
                          " and " + std::to_string(b));
  }
}

}  // namespace fastvae::bindings

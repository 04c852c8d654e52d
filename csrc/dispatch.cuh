// Dtype dispatch shared by every kernel family: one switch from the dtype code Python passes to a
// C++ type, so a kernel is written once as a template and instantiated per dtype.
//
// Python (fastvae/cuda/__init__.py, DTYPE_CODES) passes torch dtypes as these integer codes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

namespace fastvae {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// The type arithmetic runs in for storage type T: double for double, float for everything else.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

[[noreturn]] inline void bad_dtype(int code, const char* what) {
  throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(code) +
                              " (expected 0 float32, 1 float16, 2 bfloat16, 3 float64)");
}

}  // namespace fastvae

// FASTVAE_DISPATCH_FLOAT(code, scalar_t, "what", ...) runs the statements `...` with `scalar_t`
// bound to the storage type of dtype code `code`; an unknown code throws std::invalid_argument
// (a Python ValueError) naming `what`.
#define FASTVAE_DISPATCH_CASE(enum_value, type, scalar_t, ...) \
  case ::fastvae::DType::enum_value: {                         \
    using scalar_t = type;                                     \
    __VA_ARGS__;                                               \
    break;                                                     \
  }

#define FASTVAE_DISPATCH_FLOAT(code, scalar_t, what, ...)                             \
  switch (static_cast<::fastvae::DType>(code)) {                                      \
    FASTVAE_DISPATCH_CASE(kFloat32, float, scalar_t, __VA_ARGS__)                     \
    FASTVAE_DISPATCH_CASE(kFloat16, __half, scalar_t, __VA_ARGS__)                    \
    FASTVAE_DISPATCH_CASE(kBFloat16, __nv_bfloat16, scalar_t, __VA_ARGS__)            \
    FASTVAE_DISPATCH_CASE(kFloat64, double, scalar_t, __VA_ARGS__)                    \
    default:                                                                          \
      ::fastvae::bad_dtype(static_cast<int>(code), what);                             \
  }

// The pybind11 module fastvae._C: the CPU kernels in the submodule `cpu`, always; the CUDA kernels
// and device queries at the top level when the build had a CUDA toolkit. `has_cuda` says which
// (fastvae/_extension.py reads it).
#include <pybind11/pybind11.h>

#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "fastvae's compiled kernels. Takes raw pointers, sizes and (CUDA) stream handles as ints; "
      "use it through fastvae's ops, which allocate with PyTorch and choose the stream.";
  pybind11::module_ cpu = m.def_submodule(
      "cpu",
      "fastvae's CPU kernels for the Gaussian and importance-weighted ops (the functions of the "
      "CUDA module with the same arguments, on host pointers) and vq_select, the exact step of the "
      "cpu backend's VQ search; all run on the calling thread, large calls on PyTorch's OpenMP "
      "threads as well (torch.set_num_threads sets how many).");
  fastvae::bindings::bind_cpu(cpu);
#ifdef FASTVAE_WITH_CUDA
  fastvae::bindings::bind_cuda(m);
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}

// The pscfast operator library: every schema in one place. Kernels register per backend in
// csrc/ops/{cpu,cuda}/<op>_kernel.*; autograd and fake (meta) implementations register from Python
// (pscfast/ops/_registrations.py). Forward ops carry the public name, backward ops a leading underscore.
#include <Python.h>
#include <torch/library.h>

#include <string>

#ifndef PSCFAST_TORCH_VERSION
#define PSCFAST_TORCH_VERSION "unknown"
#endif

namespace pscfast {

// What this binary was built with, for `python -m pscfast.info` and the build tests.
std::string build_info() {
  std::string s = "torch=" PSCFAST_TORCH_VERSION;
#ifdef _OPENMP
  s += ";openmp=" + std::to_string(_OPENMP);
#else
  s += ";openmp=no";
#endif
#ifdef PSCFAST_WITH_CUDA
  s += ";cuda=yes;cuda_archs=" PSCFAST_CUDA_ARCHS;
#else
  s += ";cuda=no";
#endif
  return s;
}

TORCH_LIBRARY(pscfast, m) {
  m.def("_build_info() -> str", &build_info);

  // warp: sample x (N, C, H, W) at an absolute grid (N, h, w, 2) resized on the fly to out_size.
  m.def("warp(Tensor x, Tensor grid, SymInt[2] out_size, str mode, str padding_mode, bool align_corners) -> Tensor");
  m.def("_warp_backward_grid(Tensor grad_out, Tensor x, Tensor grid, str mode, str padding_mode, "
        "bool align_corners) -> Tensor");
  m.def("_warp_backward_x(Tensor grad_out, Tensor grid, SymInt[4] x_size, str mode, str padding_mode, "
        "bool align_corners) -> Tensor");
}

}  // namespace pscfast

// `import pscfast._C` loads this library (and with it the registrations above); it holds no Python API.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The pscfast operator library. Each op declares its schemas in csrc/ops/<op>.cpp (a TORCH_LIBRARY_FRAGMENT),
// its kernels per backend in csrc/ops/{cpu,cuda}/<op>_kernel.*, and its autograd and fake (meta)
// implementations in Python (pscfast/ops/<op>.py). Forward ops carry the public name, backward ops a leading
// underscore and ATen's layout: _<op>_backward(the gradients of the outputs, the forward's arguments in its
// order (less the sizes the gradients imply), the forward outputs it reuses, bool[K] output_mask), where
// output_mask has one entry per differentiable input and a gradient not asked for comes back undefined
// (csrc/ops/common/output_mask.h). Sizes are SymInt, so that torch.compile keeps dynamic shapes symbolic.
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

TORCH_LIBRARY(pscfast, m) { m.def("_build_info() -> str", &build_info); }

}  // namespace pscfast

// `import pscfast._C` loads this library (and with it the registrations above); it holds no Python API.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

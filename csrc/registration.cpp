// Schemas of every compiled op of cdism_fast. Kernels register per dispatch
// key next to their code (csrc/cpu for CPU, csrc/cuda for CUDA); the fake
// (meta) and autograd registrations live in Python, beside each op in
// cdism_fast/ops/, because they are shared by every backend.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing cdism_fast._C only has to load this library: the TORCH_LIBRARY
// blocks below run at load time. An empty module satisfies the import.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(cdism_fast, m) {
  // sum (mean=false) or mean of sqrt((x - y)^2 + eps^2), accumulated in fp32 (fp64 for double).
  m.def("charbonnier_loss(Tensor x, Tensor y, float eps, bool mean) -> Tensor");
  // Gradient with respect to x; the gradient with respect to y is its negation.
  m.def("charbonnier_loss_backward(Tensor grad, Tensor x, Tensor y, float eps, bool mean) -> Tensor");
}

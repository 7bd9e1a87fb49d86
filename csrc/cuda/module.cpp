// cdism_fast._C_cuda: the CUDA kernels of the ops whose schemas cdism_fast._C
// defines (csrc/registration.cpp). Importing the module only has to load this
// library: its TORCH_LIBRARY_IMPL(cdism_fast, CUDA, m) blocks run at load time.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

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
  // One OBProx-SG step in place over a whole parameter list (orthant=false: Prox-SG step).
  m.def("obproxsg_step_(Tensor(a!)[] params, Tensor[] grads, float lr, float lam, bool orthant, float eps) -> ()");
  // Swin/SwinIR window attention: (out, per-row logsumexp of the scores); shift_size > 0 masks
  // SwinIR's shifted-window regions of the height x width token grid.
  m.def("window_attention(Tensor q, Tensor k, Tensor v, Tensor bias_table, int window_size, int shift_size, "
        "int height, int width, float scale) -> (Tensor, Tensor)");
  // Gradients with respect to q, k, v and bias_table, recomputing the scores from the logsumexp.
  m.def("window_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor bias_table, "
        "Tensor logsumexp, int window_size, int shift_size, int height, int width, float scale) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Gaussian blur (highpass=false) or high-pass x - blur(x) (highpass=true) of an NCHW batch:
  // 5x5 binomial kernel / 256, reflect padding of 2; the backward applies the adjoint filter.
  m.def("gaussian_filter(Tensor x, bool highpass) -> Tensor");
  m.def("gaussian_filter_backward(Tensor grad, bool highpass) -> Tensor");
  // Laplacian-pyramid loss of x against y: (loss, d loss / d x when with_grad else an empty tensor),
  // accumulated in fp32 (fp64 for double); d loss / d y = -d loss / d x.
  m.def("laplacian_loss(Tensor x, Tensor y, int levels, bool mean, bool with_grad) -> (Tensor, Tensor)");
  // The paper's distillation loss: (loss, d loss / d student when with_grad else an empty tensor);
  // the student loss is L1, or Charbonnier of epsilon eps when charbonnier is true.
  m.def("distillation_loss(Tensor student, Tensor teacher, Tensor gt, float alpha, bool charbonnier, float eps, "
        "int levels, bool mean, bool with_grad) -> (Tensor, Tensor)");
}


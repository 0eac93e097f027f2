// Registration of this project's operators with PyTorch (torch.library), and nothing else.
// Autograd and the fake (meta) kernels are registered from Python in
// deformable_detr/layers/ms_deform_attn_op.py, next to the wrapper that checks inputs.
#include <Python.h>
#include <torch/library.h>

#include "ms_deform_attn/ms_deform_attn.h"

// An empty Python module, so that `import deformable_detr._C` loads this library and runs the
// registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(deformable_detr, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(deformable_detr, CPU, m) {
  m.impl("ms_deform_attn", &deformable_detr::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &deformable_detr::ms_deform_attn_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(deformable_detr, CUDA, m) {
  m.impl("ms_deform_attn", &deformable_detr::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &deformable_detr::ms_deform_attn_backward_cuda);
}
#endif

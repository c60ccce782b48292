// Every fused_linreg operator schema, in one place (their C++ signatures: ops.h). Kernels register
// per device in cpu/ and cuda/, autograd in autograd.cpp; fake kernels, vmap rules and error
// kernels from Python (fused_linreg/_ops.py).
#include <torch/library.h>
#include <torch/extension.h>

#include "bench/fma_peak.h"
#include "cpu/isa.h"

TORCH_LIBRARY(fused_linreg, m) {
  // y = input @ weight.T + bias over the last dim of input; relu(...) when relu is set, with no
  // bitmask to allocate (inference). Differentiable either way: with relu, a forward that records
  // a graph goes through linear_relu_forward, whose mask its backward keeps.
  m.def("linear_forward(Tensor input, Tensor weight, Tensor? bias, bool relu=False) -> Tensor");
  // y = relu(input @ weight.T + bias), and the bitmask of y > 0 (uint8 [*input.shape[:-1],
  // ceil(N / 32) * 4]) that the backward uses instead of y.
  m.def("linear_relu_forward(Tensor input, Tensor weight, Tensor? bias) -> (Tensor, Tensor)");
  // Gradients of either forward (relu_mask None for the plain linear): (grad_input, grad_weight,
  // grad_bias), each computed only when its output_mask entry is set, else None.
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? relu_mask, "
      "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)");
  // Optimizer in backward: the weight and bias gradients of either forward are computed and
  // immediately applied with torch.optim.SGD's update to weight and bias (in place), without
  // materialising the weight gradient. grad_input is not computed here: call linear_backward
  // for it first, while the weight still has its old value.
  m.def(
      "linear_backward_sgd_(Tensor grad_output, Tensor input, Tensor(a!) weight, "
      "Tensor? relu_mask, Tensor(b!)? bias, Tensor(c!)? weight_momentum_buffer, "
      "Tensor(d!)? bias_momentum_buffer, bool init_weight_momentum, bool init_bias_momentum, "
      "float lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, bool maximize) -> ()");
  // A whole MLP: Linear+ReLU for every layer but the last, a plain Linear last (weights[l] [n_l+1,
  // n_l], biases[l] [n_l+1] or None), computed per block of rows through every layer. With
  // save_for_backward, also each hidden layer's output ([rows, n_l+1], the next layer's input) and
  // its ReLU bitmask (uint8 [rows, ceil(n_l+1 / 32) * 4]), rows = prod(input.shape[:-1]); else
  // both lists are empty (inference: the hidden activations never leave the cache).
  m.def(
      "mlp_forward(Tensor input, Tensor[] weights, Tensor?[] biases, bool save_for_backward=False) "
      "-> (Tensor, Tensor[], Tensor[])");
  // Gradients of mlp_forward from what it saved: (grad_input or None, the weight gradients, the
  // bias gradients of the layers where has_bias is set), each group only when its output_mask
  // entry (input, weights, biases) is set, else None / empty.
  m.def(
      "mlp_backward(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] activations, "
      "Tensor[] masks, bool[] has_bias, bool[3] output_mask) -> (Tensor?, Tensor[], Tensor[])");
  // torch.optim.SGD's update over a list of parameters in one call. momentum_buffers is empty
  // when momentum == 0; init_momentum_buffers[i] marks a first step (buffer := gradient).
  // grad_scale / found_inf come from torch.amp.GradScaler: the gradients are divided by
  // grad_scale, and nothing changes when found_inf is non-zero.
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "bool[] init_momentum_buffers, float lr, float momentum, float dampening, "
      "float weight_decay, bool nesterov, bool maximize, Tensor? grad_scale=None, "
      "Tensor? found_inf=None) -> ()");
}

namespace fused_linreg {
// errors.cpp: the Python classes of the errors in errors.h.
void register_error_types(PyObject* wrong_type, PyObject* unsupported_dtype);
}  // namespace fused_linreg

namespace {

// For fused_linreg.build_info() and the tests that force an ISA path.
py::dict build_info() {
  py::dict info;
  info["torch_version"] = FUSED_LINREG_TORCH_VERSION;
#ifdef FUSED_LINREG_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = FUSED_LINREG_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
  py::list isas;
  int n = 0;
  const char* const* names = fused_linreg::cpu::supported_isas(&n);
  for (int i = 0; i < n; ++i) isas.append(names[i]);
  info["cpu_isas_supported"] = isas;
  info["cpu_isas_compiled"] = py::make_tuple("avx512", "avx2", "generic");
  info["cpu_isa_active"] = fused_linreg::cpu::active_kernels().name;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", &build_info);
  module.def(
      "_register_error_types",
      [](py::handle wrong_type, py::handle unsupported_dtype) {
        fused_linreg::register_error_types(wrong_type.ptr(), unsupported_dtype.ptr());
      },
      "The classes that wrong-dtype/layout errors and unsupported-dtype errors raise as.");
  module.def(
      "set_cpu_isa", [](const std::string& name) { fused_linreg::cpu::set_isa(name.c_str()); },
      "Use the named CPU kernels (avx512, avx2, generic) for later calls.");
  // For the benchmark (python -m fused_linreg.bench): the "% of peak" denominator.
  module.def("measure_fma_peak_gflops", &fused_linreg::bench::measure_fma_peak_gflops,
             "GFLOP/s of independent FMA chains on all torch threads: this CPU's peak.",
             py::arg("dtype") = "float32", py::arg("isa") = "", py::arg("seconds") = 0.25);
}

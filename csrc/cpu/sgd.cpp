// CPU implementation of the multi-tensor SGD step: one kernel call over every tensor of a
// parameter group of one dtype (float16 goes through float32 copies).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cpu/dtype.h"
#include "cpu/isa.h"
#include "ops.h"

namespace fused_linreg::cpu {
namespace {

// The kernels need contiguous memory: a non-contiguous (or float16) tensor is stepped through a
// contiguous working copy in the kernel dtype, written back afterwards.
at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType dtype) {
  // The common case costs no dispatcher call (this runs per parameter, every step).
  return t.scalar_type() == dtype && t.is_contiguous() ? t : t.to(dtype).contiguous();
}

struct Working {
  at::Tensor original, work;
  Working(const at::Tensor& t, at::ScalarType dtype) : original(t), work(contiguous_as(t, dtype)) {}
  void write_back() const {
    if (!work.is_same(original)) original.copy_(work);
  }
};

template <typename T>
void step(const std::vector<size_t>& indices, at::TensorList params, at::TensorList grads,
          at::TensorList buffers, const c10::List<bool>& init, const SgdOptions& options,
          double grad_scale) {
  const at::ScalarType dtype = scalar_type_of<T>();
  const bool momentum = options.momentum != 0;
  std::vector<Working> outs;
  std::vector<at::Tensor> grads_in;
  std::vector<SgdTensor<T>> tensors;
  outs.reserve(2 * indices.size());
  for (size_t i : indices) {
    outs.emplace_back(params[i], dtype);
    T* p = data_as<T>(outs.back().work);
    T* b = nullptr;
    if (momentum) {
      outs.emplace_back(buffers[i], dtype);
      b = data_as<T>(outs.back().work);
    }
    grads_in.push_back(contiguous_as(grads[i], dtype));
    tensors.push_back(SgdTensor<T>{p, data_as<T>(grads_in.back()), b, params[i].numel(),
                                   momentum && init.get(i)});
  }
  active_kernels().get<T>().sgd(tensors.data(), int64_t(tensors.size()), options, grad_scale);
  for (const Working& o : outs) o.write_back();
}

}  // namespace

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               const c10::List<bool>& init_momentum_buffers, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov, bool maximize,
               const OptionalTensor& grad_scale, const OptionalTensor& found_inf) {
  check_sgd_args(params, grads, momentum_buffers, init_momentum_buffers, momentum, grad_scale,
                 found_inf);
  if (found_inf.has_value() && found_inf->item<double>() != 0) return;
  const double scale = grad_scale.has_value() ? grad_scale->item<double>() : 1.0;
  const SgdOptions options{lr, momentum, dampening, weight_decay, nesterov, maximize};

  std::vector<size_t> f32, f64, bf16;
  for (size_t i = 0; i < params.size(); ++i) {
    switch (kernel_dtype(params[i].scalar_type())) {
      case at::kDouble: f64.push_back(i); break;
      case at::kBFloat16: bf16.push_back(i); break;
      default: f32.push_back(i); break;
    }
  }
  const auto& init = init_momentum_buffers;
  if (!f32.empty()) step<float>(f32, params, grads, momentum_buffers, init, options, scale);
  if (!f64.empty()) step<double>(f64, params, grads, momentum_buffers, init, options, scale);
  if (!bf16.empty()) step<BFloat16>(bf16, params, grads, momentum_buffers, init, options, scale);
}

}  // namespace fused_linreg::cpu

TORCH_LIBRARY_IMPL(fused_linreg, CPU, m) { m.impl("sgd_step_", &fused_linreg::cpu::sgd_step_); }

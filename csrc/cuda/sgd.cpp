// CUDA implementation of the multi-tensor SGD step (the op layer; the kernel is in
// sgd_kernel.cu): one launch over every tensor of the call, whatever their dtypes, reading
// GradScaler's grad_scale / found_inf on the device, so the step never waits for the GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <memory>
#include <utility>
#include <vector>

#include "cuda/sgd_kernel.h"
#include "ops.h"

namespace fused_linreg::cuda {
namespace {

SgdDtype sgd_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return SgdDtype::kFloat;
    case at::kDouble: return SgdDtype::kDouble;
    case at::kBFloat16: return SgdDtype::kBFloat16;
    case at::kHalf: return SgdDtype::kHalf;
    default: TORCH_CHECK_TYPE(false, "fused_linreg.sgd_step_: unsupported dtype ", t, " on CUDA");
  }
}

// The kernel walks param, grad and buffer in memory order, which is the same element order only
// when all three share one dense layout. A param without one is stepped through a contiguous
// working copy; a grad or buffer laid out unlike its param is copied into the param's layout.
// Copied params and buffers are written back after the kernel.
struct WorkingTensors {
  at::Tensor param, grad, buffer;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (original, working copy)

  WorkingTensors(const at::Tensor& p, const at::Tensor& g, const at::Tensor* b) {
    param = p.is_non_overlapping_and_dense() ? p : p.contiguous();
    if (!param.is_same(p)) write_back.emplace_back(p, param);
    grad = like_param(g);
    if (b != nullptr) {
      buffer = like_param(*b);
      if (!buffer.is_same(*b)) write_back.emplace_back(*b, buffer);
    }
  }

  at::Tensor like_param(const at::Tensor& t) const {
    if (t.strides() == param.strides()) return t;
    at::Tensor copy = at::empty_like(param);
    copy.copy_(t);
    return copy;
  }
};

// GradScaler keeps both as one-element float32 tensors; anything else is converted on the
// device (no sync).
at::Tensor as_float_scalar(const OptionalTensor& t) {
  return t.has_value() ? t->reshape({1}).to(at::kFloat).contiguous() : at::Tensor();
}

}  // namespace

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               const c10::List<bool>& init_momentum_buffers, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov, bool maximize,
               const OptionalTensor& grad_scale, const OptionalTensor& found_inf) {
  check_sgd_args(params, grads, momentum_buffers, init_momentum_buffers, momentum, grad_scale,
                 found_inf);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard device_guard(params[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor scale = as_float_scalar(grad_scale), inf = as_float_scalar(found_inf);
  const SgdOptions options{lr, momentum, dampening, weight_decay, nesterov, maximize};
  GradScaling scaling;
  scaling.grad_scale = scale.defined() ? scale.data_ptr<float>() : nullptr;
  scaling.found_inf = inf.defined() ? inf.data_ptr<float>() : nullptr;

  const bool has_momentum = momentum != 0;
  std::vector<WorkingTensors> working;
  working.reserve(params.size());
  auto batch = std::make_unique<SgdBatch>();  // ~24 KiB: not on the stack
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    if (batch->count == kSgdMaxTensors) {  // more tensors than one launch's parameters hold
      launch_sgd(*batch, options, scaling, stream);
      *batch = SgdBatch();
    }
    const WorkingTensors& w = working.emplace_back(
        params[i], grads[i], has_momentum ? &momentum_buffers[i] : nullptr);
    SgdTensor& t = batch->tensors[batch->count++];
    t.param = w.param.data_ptr();
    t.grad = w.grad.data_ptr();
    t.momentum_buffer = has_momentum ? w.buffer.data_ptr() : nullptr;
    t.numel = w.param.numel();
    t.first_chunk = batch->chunks;
    t.dtype = sgd_dtype(w.param.scalar_type());
    t.init_momentum_buffer = has_momentum && init_momentum_buffers.get(i);
    batch->chunks += (t.numel + kSgdChunk - 1) / kSgdChunk;
  }
  launch_sgd(*batch, options, scaling, stream);
  for (const WorkingTensors& w : working)
    for (const auto& [original, copy] : w.write_back) original.copy_(copy);
}

}  // namespace fused_linreg::cuda

TORCH_LIBRARY_IMPL(fused_linreg, CUDA, m) { m.impl("sgd_step_", &fused_linreg::cuda::sgd_step_); }

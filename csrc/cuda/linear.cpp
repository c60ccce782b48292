// CUDA implementations of the linear / linear+ReLU operators: each is one or two calls of the
// GEMM core (gemm.h) with the right operand strides and hooks, mirroring cpu/linear.cpp. No
// device code here, so the host compiler builds it once rather than nvcc once per arch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <type_traits>
#include <vector>

#include "cuda/gemm.h"
#include "ops.h"

namespace fused_linreg::cuda {
namespace {

template <typename T> T* data_as(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// Calls f(T{}) with the device storage type of `dtype`.
template <typename F> void dispatch_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(__nv_bfloat16{});
    case at::kHalf: return f(__half{});
    default: TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", dtype, " on CUDA");
  }
}

// float32 runs on TF32 tensor cores exactly when PyTorch's own matmuls would
// (torch.backends.cuda.matmul.allow_tf32 or .fp32_precision, torch.set_float32_matmul_precision),
// else exact FFMA. The per-backend precision is what torch's cuBLAS calls read since it exists
// (2.10 at the latest); allowTF32CuBLAS(), the older API, throws there when the legacy and the new
// setting disagree, as they do after only `fp32_precision = "tf32"`.
bool tf32_allowed() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

// Runs the GEMM on the current stream of the current device (set by the caller's guard). The
// split-K workspace comes from PyTorch's caching allocator and is released when this returns:
// stream order keeps it alive for the kernels.
template <typename T> void run_gemm(const GemmArgs<T>& g, const at::TensorOptions& options) {
  at::Tensor workspace;
  GemmContext context;
  context.stream = at::cuda::getCurrentCUDAStream();
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();  // cached, no sync
  context.sm_count = device->multiProcessorCount;
  context.max_shared_memory = device->sharedMemPerBlockOptin;
  context.allocate_workspace = [&](size_t bytes) {
    workspace = at::empty({int64_t(bytes)}, options.dtype(at::kByte));
    return workspace.data_ptr();
  };
  if constexpr (std::is_same_v<T, double>) {
    gemm<T, MathMode::kSimt>(g, context);
  } else if constexpr (std::is_same_v<T, float>) {
    if (tf32_allowed())
      gemm<T, MathMode::kTensorCore>(g, context);
    else
      gemm<T, MathMode::kSimt>(g, context);
  } else {
    gemm<T, MathMode::kTensorCore>(g, context);
  }
}

// The GEMM stages each operand along a unit-stride dimension, so transposed views are read in
// place; any other 2-D layout (e.g. an expanded grad_output [M, N] with strides (0, 0)) is copied
// once. A size-1 dimension has a unit stride once normalized, whatever PyTorch gave it.
at::Tensor with_unit_stride(const at::Tensor& t) {
  const at::Tensor n = with_size_one_strides_normalized(t);
  return n.stride(0) == 1 || n.stride(1) == 1 ? n : n.contiguous();
}

// The ReLU mask as rows of 32-bit words, as the kernels read it: contiguous and 4-byte aligned
// (a mask from linear_relu_forward already is; anything else is copied).
at::Tensor mask_words(const at::Tensor& relu_mask) {
  at::Tensor mask = as_rows(relu_mask).contiguous();
  if (reinterpret_cast<uintptr_t>(mask.data_ptr()) % 4 != 0) mask = mask.clone();
  return mask;
}

// y = input @ W.T + b over the last dim of input, or its ReLU; with the ReLU, its bitmask into
// *mask when mask is given.
at::Tensor forward(const char* op, const at::Tensor& input, const at::Tensor& weight,
                   const OptionalTensor& bias, bool relu, at::Tensor* mask) {
  check_linear_args(op, input, weight, bias);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor x = with_unit_stride(as_rows(input));
  const at::Tensor w = with_unit_stride(weight);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t M = x.size(0), N = w.size(0);
  at::Tensor out = at::empty({M, N}, input.options());
  if (mask) *mask = at::empty({M, relu_mask_row_bytes(N)}, input.options().dtype(at::kByte));
  dispatch_dtype(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    GemmArgs<T> g;
    g.M = M;
    g.N = N;
    g.K = x.size(1);
    g.a = data_as<const T>(x);
    g.a_rs = x.stride(0);
    g.a_cs = x.stride(1);
    g.b = data_as<const T>(w);  // B(k, n) = W[n, k]
    g.b_rs = w.stride(1);
    g.b_cs = w.stride(0);
    g.c = data_as<T>(out);
    g.ldc = N;
    g.bias = b.defined() ? data_as<const T>(b) : nullptr;
    g.relu = relu;
    if (mask) {
      g.c_mask = data_as<uint32_t>(*mask);
      g.c_mask_row_words = mask->size(1) / 4;
    }
    run_gemm(g, input.options());
  });
  if (mask) *mask = mask->view(rows_shape(input, mask->size(1)));
  return out.view(rows_shape(input, N));
}

// grad_weight [N, K] = G'^T @ x, G' = mask(grad_output); the bias gradient (row sums of G'^T)
// is reduced while the tiles of G' are staged. The caller sets the output (c / a_row_sums / sgd).
template <typename T>
GemmArgs<T> grad_weight_gemm(const at::Tensor& go, const at::Tensor& x, const at::Tensor& mask,
                             int64_t N) {
  GemmArgs<T> g;
  g.M = N;
  g.N = x.size(1);
  g.K = x.size(0);
  g.a = data_as<const T>(go);  // A(n, m) = G'[m, n]
  g.a_rs = go.stride(1);
  g.a_cs = go.stride(0);
  if (mask.defined()) {
    g.a_mask = data_as<const uint32_t>(mask);
    g.a_mask_row_words = mask.size(1) / 4;
    g.a_mask_transposed = true;
  }
  g.b = data_as<const T>(x);  // B(m, k) = x[m, k]
  g.b_rs = x.stride(0);
  g.b_cs = x.stride(1);
  g.ldc = x.size(1);
  return g;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_relu_forward(const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       const OptionalTensor& bias) {
  at::Tensor mask;
  at::Tensor y = forward("fused_linreg.linear_relu_forward", input, weight, bias, true, &mask);
  return {y, mask};
}

at::Tensor linear_forward(const at::Tensor& input, const at::Tensor& weight,
                          const OptionalTensor& bias, bool relu) {
  return forward("fused_linreg.linear_forward", input, weight, bias, relu, nullptr);
}

LinearGrads linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& weight, const OptionalTensor& relu_mask,
                            std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight, relu_mask);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor go = with_unit_stride(as_rows(grad_output));
  const at::Tensor x = with_unit_stride(as_rows(input));
  const at::Tensor w = with_unit_stride(weight);
  const at::Tensor mask = relu_mask.has_value() ? mask_words(*relu_mask) : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  OptionalTensor grad_input, grad_weight, grad_bias;

  dispatch_dtype(input.scalar_type(), "fused_linreg.linear_backward", [&](auto tag) {
    using T = decltype(tag);
    if (output_mask[0]) {  // grad_input [M, K] = G' @ W, G' = mask(grad_output)
      at::Tensor gi = at::empty({M, K}, input.options());
      GemmArgs<T> g;
      g.M = M;
      g.N = K;
      g.K = N;
      g.a = data_as<const T>(go);
      g.a_rs = go.stride(0);
      g.a_cs = go.stride(1);
      if (mask.defined()) {
        g.a_mask = data_as<const uint32_t>(mask);
        g.a_mask_row_words = mask.size(1) / 4;
      }
      g.b = data_as<const T>(w);
      g.b_rs = w.stride(0);
      g.b_cs = w.stride(1);
      g.c = data_as<T>(gi);
      g.ldc = K;
      run_gemm(g, input.options());
      grad_input = gi.view(input.sizes());
    }

    // grad_weight [N, K] and grad_bias [N] from one GEMM; no output (N = 0) when only the bias
    // gradient is wanted.
    if (output_mask[1] || output_mask[2]) {
      at::Tensor gw = output_mask[1] ? at::empty({N, K}, input.options()) : at::Tensor();
      at::Tensor gb = output_mask[2] ? at::empty({N}, input.options()) : at::Tensor();
      GemmArgs<T> g = grad_weight_gemm<T>(go, x, mask, N);
      if (!output_mask[1]) g.N = 0;
      g.a_row_sums = output_mask[2] ? data_as<T>(gb) : nullptr;
      g.c = output_mask[1] ? data_as<T>(gw) : nullptr;
      run_gemm(g, input.options());
      if (output_mask[1]) grad_weight = gw;
      if (output_mask[2]) grad_bias = gb;
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

void linear_backward_sgd_(const at::Tensor& grad_output, const at::Tensor& input,
                          const at::Tensor& weight, const OptionalTensor& relu_mask,
                          const OptionalTensor& bias, const OptionalTensor& weight_momentum_buffer,
                          const OptionalTensor& bias_momentum_buffer, bool init_weight_momentum,
                          bool init_bias_momentum, double lr, double momentum, double dampening,
                          double weight_decay, bool nesterov, bool maximize) {
  check_linear_backward_sgd_args(grad_output, input, weight, relu_mask, bias,
                                 weight_momentum_buffer, bias_momentum_buffer, momentum);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor go = with_unit_stride(as_rows(grad_output));
  const at::Tensor x = with_unit_stride(as_rows(input));
  const at::Tensor mask = relu_mask.has_value() ? mask_words(*relu_mask) : at::Tensor();
  const int64_t N = weight.size(0);
  at::Tensor bias_grad;

  dispatch_dtype(input.scalar_type(), "fused_linreg.linear_backward_sgd_", [&](auto tag) {
    using T = decltype(tag);
    // The weight gradient never exists as a tensor: the epilogue updates the weight with it.
    GemmArgs<T> g = grad_weight_gemm<T>(go, x, mask, N);
    if (bias.has_value()) {
      bias_grad = at::empty({N}, input.options());
      g.a_row_sums = data_as<T>(bias_grad);
    }
    g.sgd.param = data_as<T>(weight);
    g.sgd.momentum_buffer = momentum != 0 ? data_as<T>(*weight_momentum_buffer) : nullptr;
    g.sgd.init_momentum_buffer = init_weight_momentum;
    g.sgd.lr = lr;
    g.sgd.momentum = momentum;
    g.sgd.dampening = dampening;
    g.sgd.weight_decay = weight_decay;
    g.sgd.nesterov = nesterov;
    g.sgd.maximize = maximize;
    run_gemm(g, input.options());
  });

  if (bias.has_value()) {  // the bias gradient is a vector: one multi-tensor SGD step of it
    std::vector<at::Tensor> buffers;
    if (momentum != 0) buffers.push_back(*bias_momentum_buffer);
    sgd_step_({*bias}, {bias_grad}, buffers, c10::List<bool>({init_bias_momentum}), lr, momentum,
              dampening, weight_decay, nesterov, maximize, std::nullopt, std::nullopt);
  }
}

}  // namespace fused_linreg::cuda

TORCH_LIBRARY_IMPL(fused_linreg, CUDA, m) {
  m.impl("linear_backward_sgd_", &fused_linreg::cuda::linear_backward_sgd_);
  m.impl("linear_forward", &fused_linreg::cuda::linear_forward);
  m.impl("linear_relu_forward", &fused_linreg::cuda::linear_relu_forward);
  m.impl("linear_backward", &fused_linreg::cuda::linear_backward);
}

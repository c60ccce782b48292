// The four linear operators (schemas in fused_linreg.cpp), written once over a device backend:
// argument checks, operand preparation, the GEMM arguments of the forward, grad_input,
// grad_weight / grad_bias and the in-backward SGD update, and the bias step. cpu/linear.cpp and
// cuda/linear.cpp define a Backend and register LinearOps<Backend> for their device
// (register_linear_ops):
//
//   struct Backend {
//     static constexpr const char* kDevice;   // for messages
//     using BFloat16 = ...; using Half = ...;  // the kernels' storage types (Half = void: float16
//                                              // runs through float32 and is rounded afterwards)
//     struct DeviceGuard { explicit DeviceGuard(const at::Device&); };
//     static at::Tensor operand(const at::Tensor& t);  // a 2-D operand as the kernels read it
//     template <typename T> static void gemm(const GemmArgs<T>&, const char* op,
//                                            const at::Tensor& input, const at::Tensor& weight);
//     static constexpr SgdStepOp* sgd_step_;   // the device's multi-tensor SGD step
//   };
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "errors.h"
#include "gemm_args.h"
#include "ops.h"

namespace fused_linreg {
namespace linear_ops {

// Calls f(T{}) with the backend's storage type for `dtype`.
template <class Backend, typename F> void dispatch_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(typename Backend::BFloat16{});
    case at::kHalf:
      if constexpr (!std::is_void_v<typename Backend::Half>) return f(typename Backend::Half{});
      [[fallthrough]];
    default:
      FUSED_LINREG_CHECK_DTYPE_SUPPORTED(false, op, ": unsupported dtype ", dtype, " on ",
                                         Backend::kDevice);
  }
}

// The dtype of a row-sum (bias gradient) buffer for storage type T.
template <typename T> at::ScalarType accumulator_dtype() {
  return std::is_same_v<acc_t<T>, double> ? at::kDouble : at::kFloat;
}

// A ReLU mask as the kernels read it (gemm_args.h's BitMask): contiguous rows of bytes, whose
// pitch is the row length (the CPU reads a row's bytes up to its end at once; bytes past it may
// not exist), starting 4-byte aligned (the CUDA kernels read 32-bit words). A mask from
// linear_relu_forward already is; anything else is copied.
inline at::Tensor mask_rows(const at::Tensor& relu_mask) {
  at::Tensor rows = as_rows(relu_mask).contiguous();
  if (reinterpret_cast<uintptr_t>(rows.data_ptr()) % 4 != 0) rows = rows.clone();
  return rows;
}

inline BitMask bitmask_of(const at::Tensor& mask) {
  return mask.defined() ? BitMask{data_as<uint8_t>(mask), mask.size(1)} : BitMask{};
}

// The bitmask of an output computed elsewhere (float16 rounds after the float32 kernel): the bits
// where the gradient passes, !(y <= 0), packed eight to a byte.
inline at::Tensor mask_of_output(const at::Tensor& y, int64_t row_bytes) {
  const at::Tensor rows = as_rows(y);
  at::Tensor passes = at::zeros({rows.size(0), row_bytes * 8}, y.options().dtype(at::kByte));
  passes.narrow(1, 0, rows.size(1)).copy_(rows.le(0).logical_not());
  const at::Tensor weights = at::pow(2, at::arange(8, y.options().dtype(at::kInt))).to(at::kByte);
  at::Tensor mask = passes.view({rows.size(0), row_bytes, 8}).mul(weights).sum(-1, false, at::kByte);
  return mask.view(rows_shape(y, row_bytes));
}

inline OptionalTensor to_dtype(const OptionalTensor& t, at::ScalarType dtype) {
  return t.has_value() ? OptionalTensor(t->to(dtype)) : std::nullopt;
}

// The GEMM arguments of C [M, N] = op(A) @ op(B), op(X) being X or, when transposed, X^T: strides
// do the transposing. The caller sets the output, the hooks and the epilogue.
template <typename T>
GemmArgs<T> product(const at::Tensor& a, bool a_transposed, const at::Tensor& b, bool b_transposed) {
  GemmArgs<T> g;
  g.M = a.size(a_transposed ? 1 : 0);
  g.K = a.size(a_transposed ? 0 : 1);
  g.N = b.size(b_transposed ? 0 : 1);
  g.a = data_as<const T>(a);
  g.a_rs = a.stride(a_transposed ? 1 : 0);
  g.a_cs = a.stride(a_transposed ? 0 : 1);
  g.b = data_as<const T>(b);
  g.b_rs = b.stride(b_transposed ? 1 : 0);
  g.b_cs = b.stride(b_transposed ? 0 : 1);
  g.ldc = g.N;
  return g;
}

// grad_weight [N, K] = G'^T @ x, G' = mask(grad_output) (the mask read transposed); the bias
// gradient, the row sums of G'^T, is reduced while G' is packed or staged.
template <typename T>
GemmArgs<T> grad_weight_gemm(const at::Tensor& go, const at::Tensor& x, const BitMask& mask) {
  GemmArgs<T> g = product<T>(go, true, x, false);
  g.a_mask = mask;
  g.a_mask_transposed = true;
  return g;
}

}  // namespace linear_ops

template <class Backend> struct LinearOps {
  static constexpr bool kHalfAsFloat = std::is_void_v<typename Backend::Half>;

  static std::tuple<at::Tensor, at::Tensor> linear_relu_forward(const at::Tensor& input,
                                                                const at::Tensor& weight,
                                                                const OptionalTensor& bias) {
    at::Tensor mask;
    at::Tensor y = forward("fused_linreg.linear_relu_forward", input, weight, bias, true, &mask);
    return {y, mask};
  }

  static at::Tensor linear_forward(const at::Tensor& input, const at::Tensor& weight,
                                   const OptionalTensor& bias, bool relu) {
    return forward("fused_linreg.linear_forward", input, weight, bias, relu, nullptr);
  }

  static LinearGrads linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, const OptionalTensor& relu_mask,
                                     std::array<bool, 3> output_mask) {
    using namespace linear_ops;
    constexpr const char* op = "fused_linreg.linear_backward";
    check_linear_backward_args(grad_output, input, weight, relu_mask);
    if (kHalfAsFloat && input.scalar_type() == at::kHalf) {
      auto [gi, gw, gb] = linear_backward(grad_output.to(at::kFloat), input.to(at::kFloat),
                                          weight.to(at::kFloat), relu_mask, output_mask);
      return {to_dtype(gi, at::kHalf), to_dtype(gw, at::kHalf), to_dtype(gb, at::kHalf)};
    }
    const typename Backend::DeviceGuard guard(input.device());
    const at::Tensor go = Backend::operand(as_rows(grad_output));
    const at::Tensor x = Backend::operand(as_rows(input));
    const at::Tensor w = Backend::operand(weight);
    const at::Tensor mask = relu_mask.has_value() ? mask_rows(*relu_mask) : at::Tensor();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    OptionalTensor grad_input, grad_weight, grad_bias;

    dispatch_dtype<Backend>(input.scalar_type(), op, [&](auto tag) {
      using T = decltype(tag);
      if (output_mask[0]) {
        at::Tensor gi = at::empty({M, K}, input.options());
        GemmArgs<T> g = product<T>(go, false, w, false);  // grad_input [M, K] = G' @ W
        g.a_mask = bitmask_of(mask);
        g.c = data_as<T>(gi);
        Backend::gemm(g, op, input, weight);
        grad_input = gi.view(input.sizes());
      }
      // grad_weight [N, K] and grad_bias [N] from one GEMM; no output (N = 0) when only the bias
      // gradient is wanted.
      if (output_mask[1] || output_mask[2]) {
        at::Tensor gw = output_mask[1] ? at::empty({N, K}, input.options()) : at::Tensor();
        at::Tensor sums;
        GemmArgs<T> g = grad_weight_gemm<T>(go, x, bitmask_of(mask));
        if (output_mask[1]) {
          g.c = data_as<T>(gw);
          grad_weight = gw;
        } else {
          g.N = 0;
        }
        if (output_mask[2]) {
          sums = at::empty({N}, input.options().dtype(accumulator_dtype<T>()));
          g.a_row_sums = data_as<acc_t<T>>(sums);
        }
        Backend::gemm(g, op, input, weight);
        if (output_mask[2]) grad_bias = sums.to(input.scalar_type());
      }
    });
    return {grad_input, grad_weight, grad_bias};
  }

  static void linear_backward_sgd_(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, const OptionalTensor& relu_mask,
                                   const OptionalTensor& bias,
                                   const OptionalTensor& weight_momentum_buffer,
                                   const OptionalTensor& bias_momentum_buffer,
                                   bool init_weight_momentum, bool init_bias_momentum, double lr,
                                   double momentum, double dampening, double weight_decay,
                                   bool nesterov, bool maximize) {
    using namespace linear_ops;
    constexpr const char* op = "fused_linreg.linear_backward_sgd_";
    check_linear_backward_sgd_args(grad_output, input, weight, relu_mask, bias,
                                   weight_momentum_buffer, bias_momentum_buffer, momentum);
    FUSED_LINREG_CHECK_DTYPE_SUPPORTED(!kHalfAsFloat || input.scalar_type() != at::kHalf, op,
                                       ": float16 is not supported on ", Backend::kDevice);
    const typename Backend::DeviceGuard guard(input.device());
    const at::Tensor go = Backend::operand(as_rows(grad_output));
    const at::Tensor x = Backend::operand(as_rows(input));
    const at::Tensor mask = relu_mask.has_value() ? mask_rows(*relu_mask) : at::Tensor();
    const int64_t N = weight.size(0);
    at::Tensor bias_grad_sums;

    dispatch_dtype<Backend>(input.scalar_type(), op, [&](auto tag) {
      using T = decltype(tag);
      // The weight gradient never exists as a tensor: each finished tile of it updates the weight.
      GemmArgs<T> g = grad_weight_gemm<T>(go, x, bitmask_of(mask));
      if (bias.has_value()) {
        bias_grad_sums = at::empty({N}, input.options().dtype(accumulator_dtype<T>()));
        g.a_row_sums = data_as<acc_t<T>>(bias_grad_sums);
      }
      g.sgd.param = data_as<T>(weight);
      g.sgd.momentum_buffer = momentum != 0 ? data_as<T>(*weight_momentum_buffer) : nullptr;
      g.sgd.init_momentum_buffer = init_weight_momentum;
      g.sgd.options = SgdOptions{lr, momentum, dampening, weight_decay, nesterov, maximize};
      Backend::gemm(g, op, input, weight);
    });

    if (bias.has_value()) {
      // The bias gradient is a vector: rounded to the bias dtype, then one multi-tensor SGD step.
      std::vector<at::Tensor> buffers;
      if (momentum != 0) buffers.push_back(*bias_momentum_buffer);
      Backend::sgd_step_({*bias}, {bias_grad_sums.to(bias->scalar_type())}, buffers,
                         c10::List<bool>({init_bias_momentum}), lr, momentum, dampening,
                         weight_decay, nesterov, maximize, std::nullopt, std::nullopt);
    }
  }

 private:
  // y = input @ W.T + b over the last dim of input, or its ReLU; with the ReLU, its bitmask into
  // *mask when mask is given.
  static at::Tensor forward(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const OptionalTensor& bias, bool relu, at::Tensor* mask) {
    using namespace linear_ops;
    check_linear_args(op, input, weight, bias);
    if (kHalfAsFloat && input.scalar_type() == at::kHalf) {
      const at::Tensor y = forward(op, input.to(at::kFloat), weight.to(at::kFloat),
                                   to_dtype(bias, at::kFloat), relu, nullptr)
                               .to(at::kHalf);
      if (mask) *mask = mask_of_output(y, relu_mask_row_bytes(weight.size(0)));
      return y;
    }
    const typename Backend::DeviceGuard guard(input.device());
    const at::Tensor x = Backend::operand(as_rows(input));
    const at::Tensor w = Backend::operand(weight);
    const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    const int64_t M = x.size(0), N = w.size(0);
    at::Tensor out = at::empty({M, N}, input.options());
    if (mask) *mask = at::empty({M, relu_mask_row_bytes(N)}, input.options().dtype(at::kByte));
    dispatch_dtype<Backend>(x.scalar_type(), op, [&](auto tag) {
      using T = decltype(tag);
      GemmArgs<T> g = product<T>(x, false, w, true);
      g.c = data_as<T>(out);
      g.bias = b.defined() ? data_as<const T>(b) : nullptr;
      g.relu = relu;
      if (mask) g.c_mask = bitmask_of(*mask);
      Backend::gemm(g, op, input, weight);
    });
    if (mask) *mask = mask->view(rows_shape(input, mask->size(1)));
    return out.view(rows_shape(input, N));
  }
};

// The device's kernels of the four linear operators, from TORCH_LIBRARY_IMPL(fused_linreg, DEVICE, m).
template <class Backend> void register_linear_ops(torch::Library& m) {
  using Ops = LinearOps<Backend>;
  m.impl("linear_backward_sgd_", &Ops::linear_backward_sgd_);
  m.impl("linear_forward", &Ops::linear_forward);
  m.impl("linear_relu_forward", &Ops::linear_relu_forward);
  m.impl("linear_backward", &Ops::linear_backward);
}

}  // namespace fused_linreg

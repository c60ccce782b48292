// CPU implementations of the linear / linear+ReLU operators: each is one or two calls of the GEMM
// core with the right operand strides and hooks. No copies: strided views are packed as they are.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/dtype.h"
#include "cpu/isa.h"
#include "ops.h"

namespace fused_linreg::cpu {
namespace {

// Runs the GEMM; an allocation failure of its packing buffers becomes an error naming the shapes.
template <typename T>
void run_gemm(const GemmArgs<T>& g, const char* op, const at::Tensor& input, const at::Tensor& weight) {
  try {
    active_kernels().get<T>().gemm(g);
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, op, ": out of memory for the packed operands of input ", input.sizes(),
                " and weight ", weight.sizes());
  }
}

// A ReLU mask as contiguous rows of bytes: the kernels read a row's bytes up to its end at once,
// so the row pitch must be the row length (bytes past a row's end may not exist).
at::Tensor mask_rows(const at::Tensor& relu_mask) {
  at::Tensor rows = as_rows(relu_mask);
  return rows.is_contiguous() ? rows : rows.contiguous();
}

BitMask bitmask(const at::Tensor& mask, int64_t row_bytes) {
  return BitMask{mask.data_ptr<uint8_t>(), row_bytes};
}

// y = x @ W.T + b, or its ReLU, written into `out` [M, N]; with the ReLU, its mask into `mask`
// when given.
void forward_into(const at::Tensor& x, const at::Tensor& weight, const OptionalTensor& bias,
                  bool relu, const at::Tensor& out, const at::Tensor* mask) {
  dispatch_dtype(x.scalar_type(), "fused_linreg.linear_forward", [&](auto tag) {
    using T = decltype(tag);
    GemmArgs<T> g;
    g.M = x.size(0);
    g.N = weight.size(0);
    g.K = x.size(1);
    g.a = data_as<const T>(x);
    g.a_rs = x.stride(0);
    g.a_cs = x.stride(1);
    g.b = data_as<const T>(weight);  // B(k, n) = W[n, k]
    g.b_rs = weight.stride(1);
    g.b_cs = weight.stride(0);
    g.c = data_as<T>(out);
    g.ldc = g.N;
    g.bias = bias.has_value() ? data_as<const T>(*bias) : nullptr;
    g.relu = relu;
    if (mask) g.c_mask = bitmask(*mask, relu_mask_row_bytes(g.N));
    run_gemm(g, "fused_linreg.linear_forward", x, weight);
  });
}

// grad_weight [N, K] = G'^T @ x, G' = mask(grad_output); the bias gradient (row sums of G'^T) is
// reduced while G' is packed. The caller sets the output (c / a_row_sums / sgd).
template <typename T>
GemmArgs<T> grad_weight_gemm(const at::Tensor& go, const at::Tensor& x, const BitMask& bits,
                             int64_t N) {
  GemmArgs<T> g;
  g.M = N;
  g.N = x.size(1);
  g.K = x.size(0);
  g.a = data_as<const T>(go);  // A(n, m) = G'[m, n]
  g.a_rs = go.stride(1);
  g.a_cs = go.stride(0);
  g.a_mask = bits;
  g.a_mask_transposed = true;
  g.b = data_as<const T>(x);  // B(m, k) = x[m, k]
  g.b_rs = x.stride(0);
  g.b_cs = x.stride(1);
  g.ldc = x.size(1);
  return g;
}

// The bitmask of an output computed elsewhere (float16 rounds after the float32 kernel): the bits
// where the gradient passes, !(y <= 0), packed eight to a byte.
at::Tensor mask_of_output(const at::Tensor& y, int64_t row_bytes) {
  const at::Tensor rows = as_rows(y);
  at::Tensor passes = at::zeros({rows.size(0), row_bytes * 8}, y.options().dtype(at::kByte));
  passes.narrow(1, 0, rows.size(1)).copy_(rows.le(0).logical_not());
  const at::Tensor weights = at::pow(2, at::arange(8, y.options().dtype(at::kInt))).to(at::kByte);
  at::Tensor mask = passes.view({rows.size(0), row_bytes, 8}).mul(weights).sum(-1, false, at::kByte);
  return mask.view(rows_shape(y, row_bytes));
}

// float16 runs through the float32 kernels: convert in, compute, convert out.
bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf; }
OptionalTensor to_float(const OptionalTensor& t) {
  return t.has_value() ? OptionalTensor(t->to(at::kFloat)) : std::nullopt;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_relu_forward(const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       const OptionalTensor& bias) {
  check_linear_args("fused_linreg.linear_relu_forward", input, weight, bias);
  if (is_half(input)) {
    auto [y, mask] = linear_relu_forward(input.to(at::kFloat), weight.to(at::kFloat), to_float(bias));
    const at::Tensor y_half = y.to(at::kHalf);
    return {y_half, mask_of_output(y_half, mask.size(-1))};
  }
  const at::Tensor x = as_rows(input);
  const int64_t n = weight.size(0);
  at::Tensor out = at::empty({x.size(0), n}, input.options());
  at::Tensor mask = at::empty({x.size(0), relu_mask_row_bytes(n)}, input.options().dtype(at::kByte));
  const OptionalTensor b = bias.has_value() ? OptionalTensor(bias->contiguous()) : std::nullopt;
  forward_into(x, weight, b, true, out, &mask);
  return {out.view(rows_shape(input, n)), mask.view(rows_shape(input, mask.size(1)))};
}

at::Tensor linear_forward(const at::Tensor& input, const at::Tensor& weight,
                          const OptionalTensor& bias, bool relu) {
  check_linear_args("fused_linreg.linear_forward", input, weight, bias);
  if (is_half(input))
    return linear_forward(input.to(at::kFloat), weight.to(at::kFloat), to_float(bias), relu)
        .to(at::kHalf);
  const at::Tensor x = as_rows(input);
  const int64_t n = weight.size(0);
  at::Tensor out = at::empty({x.size(0), n}, input.options());
  const OptionalTensor b = bias.has_value() ? OptionalTensor(bias->contiguous()) : std::nullopt;
  forward_into(x, weight, b, relu, out, nullptr);
  return out.view(rows_shape(input, n));
}

LinearGrads linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& weight, const OptionalTensor& relu_mask,
                            std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight, relu_mask);
  if (is_half(input)) {
    auto [gi, gw, gb] = linear_backward(grad_output.to(at::kFloat), input.to(at::kFloat),
                                        weight.to(at::kFloat), relu_mask, output_mask);
    auto half = [](const OptionalTensor& t) {
      return t.has_value() ? OptionalTensor(t->to(at::kHalf)) : std::nullopt;
    };
    return {half(gi), half(gw), half(gb)};
  }
  const at::Tensor go = as_rows(grad_output);
  const at::Tensor x = as_rows(input);
  const at::Tensor mask = relu_mask.has_value() ? mask_rows(*relu_mask) : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  OptionalTensor grad_input, grad_weight, grad_bias;

  dispatch_dtype(input.scalar_type(), "fused_linreg.linear_backward", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const BitMask bits = mask.defined() ? bitmask(mask, mask.size(1)) : BitMask{};

    if (output_mask[0]) {  // grad_input [M, K] = G' @ W, G' = mask(grad_output)
      at::Tensor gi = at::empty({M, K}, input.options());
      GemmArgs<T> g;
      g.M = M;
      g.N = K;
      g.K = N;
      g.a = data_as<const T>(go);
      g.a_rs = go.stride(0);
      g.a_cs = go.stride(1);
      g.a_mask = bits;
      g.b = data_as<const T>(weight);
      g.b_rs = weight.stride(0);
      g.b_cs = weight.stride(1);
      g.c = data_as<T>(gi);
      g.ldc = K;
      run_gemm(g, "fused_linreg.linear_backward", x, weight);
      grad_input = gi.view(input.sizes());
    }

    // grad_weight [N, K] = G'^T @ x; grad_bias [N] = row sums of G'^T, reduced while G' is
    // packed for that GEMM (with an empty output when only the bias gradient is wanted).
    if (output_mask[1] || output_mask[2]) {
      at::Tensor gw = output_mask[1] ? at::empty({N, K}, input.options()) : at::Tensor();
      at::Tensor bias_acc;
      if (output_mask[2]) bias_acc = at::empty({N}, input.options().dtype(scalar_type_of<A>()));
      GemmArgs<T> g = grad_weight_gemm<T>(go, x, bits, N);
      if (!output_mask[1]) g.N = 0;
      g.a_row_sums = output_mask[2] ? data_as<A>(bias_acc) : nullptr;
      g.c = output_mask[1] ? data_as<T>(gw) : nullptr;
      run_gemm(g, "fused_linreg.linear_backward", x, weight);
      if (output_mask[1]) grad_weight = gw;
      if (output_mask[2]) grad_bias = bias_acc.to(input.scalar_type());
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

void linear_backward_sgd_(const at::Tensor& grad_output, const at::Tensor& input,
                          const at::Tensor& weight, const OptionalTensor& relu_mask,
                          const OptionalTensor& bias, const OptionalTensor& weight_momentum_buffer,
                          const OptionalTensor& bias_momentum_buffer, bool init_weight_momentum,
                          bool init_bias_momentum,
                          double lr, double momentum, double dampening, double weight_decay,
                          bool nesterov, bool maximize) {
  check_linear_backward_sgd_args(grad_output, input, weight, relu_mask, bias,
                                 weight_momentum_buffer, bias_momentum_buffer, momentum);
  FUSED_LINREG_CHECK_DTYPE_SUPPORTED(!is_half(input),
                                     "fused_linreg.linear_backward_sgd_: float16 is not supported on CPU");
  const at::Tensor go = as_rows(grad_output);
  const at::Tensor x = as_rows(input);
  const at::Tensor mask = relu_mask.has_value() ? mask_rows(*relu_mask) : at::Tensor();
  const int64_t N = weight.size(0);
  const SgdOptions options{lr, momentum, dampening, weight_decay, nesterov, maximize};

  dispatch_dtype(input.scalar_type(), "fused_linreg.linear_backward_sgd_", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    // The weight gradient never exists as a tensor: each finished tile of it updates the weight.
    GemmArgs<T> g = grad_weight_gemm<T>(go, x, mask.defined() ? bitmask(mask, mask.size(1)) : BitMask{}, N);
    at::Tensor bias_grad_acc;
    if (bias.has_value()) {
      bias_grad_acc = at::empty({N}, input.options().dtype(scalar_type_of<A>()));
      g.a_row_sums = data_as<A>(bias_grad_acc);
    }
    g.sgd.param = data_as<T>(weight);
    g.sgd.momentum_buffer = momentum != 0 ? data_as<T>(*weight_momentum_buffer) : nullptr;
    g.sgd.init_momentum_buffer = init_weight_momentum;
    g.sgd.options = options;
    run_gemm(g, "fused_linreg.linear_backward_sgd_", x, weight);
    if (bias.has_value()) {
      // The bias gradient is a vector: rounded to the bias dtype, then one SGD step.
      const at::Tensor bias_grad = bias_grad_acc.to(bias->scalar_type());
      const SgdTensor<T> t{data_as<T>(*bias), data_as<const T>(bias_grad),
                           momentum != 0 ? data_as<T>(*bias_momentum_buffer) : nullptr, N,
                           momentum != 0 && init_bias_momentum};
      active_kernels().get<T>().sgd(&t, 1, options, 1.0);
    }
  });
}

}  // namespace fused_linreg::cpu

TORCH_LIBRARY_IMPL(fused_linreg, CPU, m) {
  m.impl("linear_backward_sgd_", &fused_linreg::cpu::linear_backward_sgd_);
  m.impl("linear_forward", &fused_linreg::cpu::linear_forward);
  m.impl("linear_relu_forward", &fused_linreg::cpu::linear_relu_forward);
  m.impl("linear_backward", &fused_linreg::cpu::linear_backward);
}

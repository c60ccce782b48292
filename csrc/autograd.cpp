// Autograd for the two forward operators, in C++: a training step pays no Python per layer.
// The backward of either is the linear_backward operator over what the forward saved: input,
// weight and (for linear+ReLU) the bitmask, never the output.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace fused_linreg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature> c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor linear_forward_below_autograd(const at::Tensor& input, const at::Tensor& weight,
                                         const OptionalTensor& bias, bool relu) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptionalTensor&, bool)>(
          "fused_linreg::linear_forward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, weight, bias, relu);
}

std::tuple<at::Tensor, at::Tensor> linear_relu_forward_below_autograd(const at::Tensor& input,
                                                                      const at::Tensor& weight,
                                                                      const OptionalTensor& bias) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const OptionalTensor&)>("fused_linreg::linear_relu_forward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, weight, bias);
}

void save_for_backward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                       const OptionalTensor& bias, const at::Tensor& relu_mask) {
  ctx->save_for_backward({input, weight, relu_mask});
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
}

// Gradients for (input, weight, bias), only those that are needed.
variable_list linear_backward(AutogradContext* ctx, const at::Tensor& grad_output) {
  static const auto op = find_op<LinearGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const OptionalTensor&, std::array<bool, 3>)>(
      "fused_linreg::linear_backward");
  const variable_list saved = ctx->get_saved_variables();
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  const std::array<bool, 3> output_mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                        has_bias && ctx->needs_input_grad(2)};
  // An undefined grad_output (no gradient reached the output) is zero: so are the gradients.
  if (!grad_output.defined() || (!output_mask[0] && !output_mask[1] && !output_mask[2]))
    return {at::Tensor(), at::Tensor(), at::Tensor()};
  const OptionalTensor relu_mask = saved[2].defined() ? OptionalTensor(saved[2]) : std::nullopt;
  auto [grad_input, grad_weight, grad_bias] =
      op.call(grad_output, saved[0], saved[1], relu_mask, output_mask);
  auto value = [](const OptionalTensor& t) { return t.has_value() ? *t : at::Tensor(); };
  return {value(grad_input), value(grad_weight), value(grad_bias)};
}

struct LinearFunction : torch::autograd::Function<LinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const OptionalTensor& bias) {
    save_for_backward(ctx, input, weight, bias, at::Tensor());
    return linear_forward_below_autograd(input, weight, bias, /*relu=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return linear_backward(ctx, grads[0]);
  }
};

struct LinearReLUFunction : torch::autograd::Function<LinearReLUFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const OptionalTensor& bias) {
    auto [output, relu_mask] = linear_relu_forward_below_autograd(input, weight, bias);
    ctx->mark_non_differentiable({relu_mask});
    // The mask gets no gradient: without this the engine would allocate and zero one for it.
    ctx->set_materialize_grads(false);
    save_for_backward(ctx, input, weight, bias, relu_mask);
    return {output, relu_mask};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return linear_backward(ctx, grads[0]);
  }
};

// The backward operator is not differentiable. Under create_graph=True its results get a node
// that raises when a second derivative reaches it, instead of coming back silently unused.
struct LinearBackwardFunction : torch::autograd::Function<LinearBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight,
                               const OptionalTensor& relu_mask, std::array<bool, 3> output_mask) {
    static const auto op = find_op<LinearGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const OptionalTensor&, std::array<bool, 3>)>(
        "fused_linreg::linear_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_input, grad_weight, grad_bias] = op.call(grad_output, input, weight, relu_mask, output_mask);
    // Only the computed gradients are outputs (a node cannot have undefined outputs).
    variable_list computed;
    for (const OptionalTensor& t : {grad_input, grad_weight, grad_bias})
      if (t.has_value()) computed.push_back(*t);
    return computed;
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "fused_linreg: the fused linear layers are not twice differentiable (a second "
                "derivative through their backward is not supported)");
  }
};

LinearGrads linear_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, const OptionalTensor& relu_mask,
                                     std::array<bool, 3> output_mask) {
  const variable_list computed =
      LinearBackwardFunction::apply(grad_output, input, weight, relu_mask, output_mask);
  std::array<OptionalTensor, 3> grads;
  size_t next = 0;
  for (size_t i = 0; i < 3; ++i)
    if (output_mask[i]) grads[i] = computed.at(next++);
  return {grads[0], grads[1], grads[2]};
}

// Inference and frozen layers skip the autograd Function (its node and saved-tensor set-up are a
// large part of a small layer's cost). Forward-mode AD and functorch transforms do not: the
// Function refuses them with an error, where skipping it would drop their tangents silently.
bool needs_autograd_function(const at::Tensor& input, const at::Tensor& weight,
                             const OptionalTensor& bias) {
  // Any functorch transform in progress keeps its back-mode key in the thread's included set.
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerBackMode))
    return true;
  const auto involved = [](const at::Tensor& t) {
    return (at::GradMode::is_enabled() && t.requires_grad()) || t._fw_grad(/*level=*/0).defined();
  };
  return involved(input) || involved(weight) || (bias.has_value() && involved(*bias));
}

at::Tensor linear_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const OptionalTensor& bias, bool relu) {
  if (!needs_autograd_function(input, weight, bias))
    return linear_forward_below_autograd(input, weight, bias, relu);
  // The backward of a ReLU needs its bitmask: the linear+ReLU operator makes and keeps it.
  if (relu) return LinearReLUFunction::apply(input, weight, bias)[0];
  return LinearFunction::apply(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> linear_relu_forward_autograd(const at::Tensor& input,
                                                                const at::Tensor& weight,
                                                                const OptionalTensor& bias) {
  if (!needs_autograd_function(input, weight, bias))
    return linear_relu_forward_below_autograd(input, weight, bias);
  auto outputs = LinearReLUFunction::apply(input, weight, bias);
  return std::make_tuple(outputs[0], outputs[1]);
}

}  // namespace
}  // namespace fused_linreg

TORCH_LIBRARY_IMPL(fused_linreg, Autograd, m) {
  m.impl("linear_backward", &fused_linreg::linear_backward_autograd);
  m.impl("linear_forward", &fused_linreg::linear_forward_autograd);
  m.impl("linear_relu_forward", &fused_linreg::linear_relu_forward_autograd);
}

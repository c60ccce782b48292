// Autograd for the fused_linreg operators, in C++: a training step pays no Python per layer.
//
// The nodes are plain autograd Nodes, as PyTorch's own operators have, not torch::autograd::
// Function (which functorch refuses): torch.func.grad / jacrev / vjp / jvp / jacfwd then work
// through the dispatcher's functorch layers as they do for any aten operator. Every derivative is
// computed by the fused_linreg operators called through the dispatcher, so under create_graph (or
// a functorch transform) it records its own nodes and is differentiable in turn.
//
// With y = m * (x W^T + b) (m the ReLU bitmask, all ones for the plain linear; constant almost
// everywhere, so it has no derivative) and g = dL/dy, gm = m * g:
//   backward (linear_backward):      gx = gm W,   gW = gm^T x,   gb = sum over rows of gm
//   its backward, given ggx, ggW, ggb:
//     d/dg = m * (ggx W^T + x ggW^T + ggb),   d/dx = gm ggW,   d/dW = gm^T ggx
//   tangents (forward mode):         ty = m * (tx W^T + x tW^T + tb); linear_backward's is the
//                                    same pair of products with g, x, W each replaced by theirs.
// The backward saves input, weight and (for linear+ReLU) the bitmask, never the output.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "ops.h"

namespace fused_linreg {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

template <typename Signature> c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

const c10::TypedOperatorHandle<LinearForwardOp>& forward_op() {
  static const auto op = find_op<LinearForwardOp>("fused_linreg::linear_forward");
  return op;
}
const c10::TypedOperatorHandle<LinearReluForwardOp>& relu_forward_op() {
  static const auto op = find_op<LinearReluForwardOp>("fused_linreg::linear_relu_forward");
  return op;
}
const c10::TypedOperatorHandle<LinearBackwardOp>& backward_op() {
  static const auto op = find_op<LinearBackwardOp>("fused_linreg::linear_backward");
  return op;
}

const c10::TypedOperatorHandle<MlpForwardOp>& mlp_forward_op() {
  static const auto op = find_op<MlpForwardOp>("fused_linreg::mlp_forward");
  return op;
}
const c10::TypedOperatorHandle<MlpBackwardOp>& mlp_backward_op() {
  static const auto op = find_op<MlpBackwardOp>("fused_linreg::mlp_backward");
  return op;
}

at::Tensor value(const OptionalTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptionalTensor optional(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// a + b, an undefined tensor being zero.
at::Tensor add_defined(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// ---- the derivatives, all made of the operators themselves (with their autograd) ----------------

// x W^T + b, the derivative of the linear in the direction (dx, dW, db) at (x, W); each direction
// may be undefined (zero). `shape` is the output's, for a bias-only direction.
at::Tensor linear_derivative(const at::Tensor& x, const at::Tensor& w, const at::Tensor& dx,
                             const at::Tensor& dw, const at::Tensor& db, at::IntArrayRef shape) {
  at::Tensor out;
  OptionalTensor bias = optional(db);
  if (dx.defined()) {
    out = forward_op().call(dx, w, bias, false);
    bias.reset();
  }
  if (dw.defined()) {
    out = add_defined(out, forward_op().call(x, dw, bias, false));
    bias.reset();
  }
  return bias.has_value() ? bias->expand(shape) : out;
}

// z where the ReLU bitmask is set, 0 elsewhere (z itself for the plain linear).
at::Tensor apply_relu_mask(const at::Tensor& z, const OptionalTensor& mask) {
  if (!mask.has_value() || !z.defined()) return z;
  // Bit j of a mask row is bit j % 8 of its byte j / 8.
  const at::Tensor shifts = at::arange(8, mask->options());
  const at::Tensor bits = mask->unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).flatten(-2);
  return z.masked_fill(bits.narrow(-1, 0, z.size(-1)).logical_not(), 0);
}

// (gm dW, gm^T dx), each only when wanted and its direction is defined (else undefined): one
// linear_backward call with the directions in place of weight and input (an argument whose
// product is not wanted only gives its shape).
std::pair<at::Tensor, at::Tensor> masked_products(const at::Tensor& go, const at::Tensor& x,
                                                  const at::Tensor& w, const OptionalTensor& mask,
                                                  const at::Tensor& dx, const at::Tensor& dw,
                                                  bool want_go_dw, bool want_go_dx) {
  want_go_dw = want_go_dw && dw.defined();
  want_go_dx = want_go_dx && dx.defined();
  if (!want_go_dw && !want_go_dx) return {};
  auto [go_dw, go_dx, unused] = backward_op().call(go, dx.defined() ? dx : x, dw.defined() ? dw : w,
                                                   mask, {want_go_dw, want_go_dx, false});
  return {value(go_dw), value(go_dx)};
}

// ---- forward mode -----------------------------------------------------------------------------

bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool has_tangent(const OptionalTensor& t) { return t.has_value() && has_tangent(*t); }
at::Tensor tangent(const at::Tensor& t) { return has_tangent(t) ? t._fw_grad(0) : at::Tensor(); }
at::Tensor tangent(const OptionalTensor& t) { return t.has_value() ? tangent(*t) : at::Tensor(); }
// The value without its tangent, so that computing a tangent records no tangent of its own.
at::Tensor primal(const at::Tensor& t) { return has_tangent(t) ? t._fw_primal(0) : t; }

void set_tangent(const at::Tensor& output, const at::Tensor& t) {
  if (t.defined()) output._set_fw_grad(t, /*level=*/0, /*is_inplace_op=*/false);
}

// The output's tangent; with relu, `output` is the ReLU's (the mask is where it is positive).
at::Tensor linear_tangent(const at::Tensor& x, const at::Tensor& w, const OptionalTensor& b,
                          const at::Tensor& output, bool relu) {
  const at::Tensor t = linear_derivative(primal(x), primal(w), tangent(x), tangent(w), tangent(b),
                                         output.sizes());
  return relu ? at::threshold_backward(t, output, 0) : t;
}

// ---- nodes ----------------------------------------------------------------------------------

// The backward of linear_forward / linear_relu_forward: gradients for (input, weight, bias).
struct FusedLinearBackward : torch::autograd::Node {
  using Node::Node;
  SavedVariable input_, weight_, relu_mask_;
  bool relu_ = false;

  std::string name() const override {
    return relu_ ? "FusedLinearReLUBackward0" : "FusedLinearBackward0";
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    relu_mask_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    // Only what this backward pass asks for: torch.autograd.grad(y, x) computes no weight gradient.
    const std::array<bool, 3> needed{task_should_compute_output(0), task_should_compute_output(1),
                                     task_should_compute_output(2)};
    // An undefined grad_output (no gradient reached the output) is zero: so are the gradients.
    if (!grads[0].defined() || !(needed[0] || needed[1] || needed[2])) return variable_list(3);
    auto [gx, gw, gb] = backward_op().call(grads[0], input_.unpack(), weight_.unpack(),
                                           optional(relu_mask_.unpack()), needed);
    return {value(gx), value(gw), value(gb)};
  }
};

// The backward of linear_backward: gradients for (grad_output, input, weight), given those of
// (grad_input, grad_weight, grad_bias).
struct FusedLinearBackwardBackward : torch::autograd::Node {
  using Node::Node;
  SavedVariable grad_output_, input_, weight_, relu_mask_;

  std::string name() const override { return "FusedLinearBackwardBackward0"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    grad_output_.reset_data();
    input_.reset_data();
    weight_.reset_data();
    relu_mask_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor &ggx = grads[0], &ggw = grads[1], &ggb = grads[2];
    // gm: grad_output already masked.
    const at::Tensor gm = grad_output_.unpack(), x = input_.unpack(), w = weight_.unpack();
    const OptionalTensor mask = optional(relu_mask_.unpack());
    variable_list out(3);
    if (task_should_compute_output(0))
      out[0] = apply_relu_mask(linear_derivative(x, w, ggx, ggw, ggb, gm.sizes()), mask);
    std::tie(out[1], out[2]) = masked_products(gm, x, w, std::nullopt, ggx, ggw,
                                               task_should_compute_output(1),
                                               task_should_compute_output(2));
    return out;
  }
};

// ---- the autograd kernels ---------------------------------------------------------------------

c10::intrusive_ptr<FusedLinearBackward> make_linear_node(const at::Tensor& input,
                                                         const at::Tensor& weight,
                                                         const OptionalTensor& bias) {
  auto node = c10::make_intrusive<FusedLinearBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  node->input_ = SavedVariable(input, /*is_output=*/false);
  node->weight_ = SavedVariable(weight, /*is_output=*/false);
  return node;
}

// Either forward operator: (output, mask), the mask made only for linear_relu_forward (with_mask)
// or for a ReLU whose backward will need it.
std::tuple<at::Tensor, at::Tensor> forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                                    const OptionalTensor& bias, bool relu,
                                                    bool with_mask) {
  const bool grad = torch::autograd::compute_requires_grad(input, weight, bias);
  const bool tangents = has_tangent(input) || has_tangent(weight) || has_tangent(bias);
  const bool make_mask = with_mask || (relu && grad);
  const auto below_autograd = [&]() -> std::tuple<at::Tensor, at::Tensor> {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (make_mask) return relu_forward_op().call(input, weight, bias);
    return {forward_op().call(input, weight, bias, relu), at::Tensor()};
  };
  // Inference and frozen layers make no node (its set-up is a large part of a small layer's cost).
  if (!grad && !tangents) return below_autograd();
  const auto node = grad ? make_linear_node(input, weight, bias) : nullptr;
  auto [output, relu_mask] = below_autograd();
  if (node) {
    node->relu_ = relu;
    // The mask gets no history (it is not differentiable), so the engine never makes or
    // zero-fills a gradient for it.
    node->relu_mask_ = SavedVariable(relu_mask, /*is_output=*/false);
    torch::autograd::set_history(output, node);
  }
  if (tangents) set_tangent(output, linear_tangent(input, weight, bias, output, relu));
  return std::make_tuple(output, relu_mask);
}

at::Tensor linear_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const OptionalTensor& bias, bool relu) {
  return std::get<0>(forward_autograd(input, weight, bias, relu, /*with_mask=*/false));
}

std::tuple<at::Tensor, at::Tensor> linear_relu_forward_autograd(const at::Tensor& input,
                                                                const at::Tensor& weight,
                                                                const OptionalTensor& bias) {
  return forward_autograd(input, weight, bias, /*relu=*/true, /*with_mask=*/true);
}

LinearGrads linear_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, const OptionalTensor& relu_mask,
                                     std::array<bool, 3> output_mask) {
  // grad_input depends on grad_output and weight, grad_weight on grad_output and input. With a
  // ReLU every gradient also depends on input and weight through the mask: a zero derivative, but
  // recorded, as PyTorch's threshold_backward does, so that differentiating again is not an error.
  using torch::autograd::compute_requires_grad;
  const bool grad = compute_requires_grad(grad_output) ||
                    (output_mask[0] && compute_requires_grad(weight)) ||
                    (output_mask[1] && compute_requires_grad(input)) ||
                    (relu_mask.has_value() && compute_requires_grad(input, weight));
  const bool tangents = has_tangent(grad_output) || has_tangent(input) || has_tangent(weight);
  c10::intrusive_ptr<FusedLinearBackwardBackward> node;
  if (grad) {
    node = c10::make_intrusive<FusedLinearBackwardBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad_output, input, weight));
    // The masked gradient, as PyTorch's ReLU backward saves it, not grad_output: grad_output may
    // then change in place. Computed with autograd, so that it keeps its history to grad_output.
    node->grad_output_ = SavedVariable(apply_relu_mask(grad_output, relu_mask), /*is_output=*/false);
    node->input_ = SavedVariable(input, /*is_output=*/false);
    node->weight_ = SavedVariable(weight, /*is_output=*/false);
    node->relu_mask_ = SavedVariable(relu_mask, /*is_output=*/false);
  }
  LinearGrads grads = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return backward_op().call(grad_output, input, weight, relu_mask, output_mask);
  }();
  auto& [gx, gw, gb] = grads;
  if (node) {
    for (const OptionalTensor* g : {&gx, &gw, &gb}) {
      if (g->has_value())
        torch::autograd::set_history(**g, node);
      else
        node->add_input_metadata(torch::autograd::Node::undefined_input());
    }
  }
  if (tangents) {
    const at::Tensor go = primal(grad_output), x = primal(input), w = primal(weight);
    const at::Tensor tgo = tangent(grad_output);
    std::array<at::Tensor, 3> t;
    if (tgo.defined()) {
      auto [a, b, c] = backward_op().call(tgo, x, w, relu_mask, output_mask);
      t = {value(a), value(b), value(c)};
    }
    auto [go_tw, go_tx] = masked_products(go, x, w, relu_mask, tangent(input), tangent(weight),
                                          output_mask[0], output_mask[1]);
    t[0] = add_defined(t[0], go_tw);
    t[1] = add_defined(t[1], go_tx);
    for (size_t i = 0; i < 3; ++i) {
      const OptionalTensor& g = i == 0 ? gx : i == 1 ? gw : gb;
      if (g.has_value()) set_tangent(*g, t[i]);
    }
  }
  return grads;
}

// ---- the whole MLP ----------------------------------------------------------------------------
//
// mlp_forward is differentiable once, in reverse mode: its backward is one mlp_backward call over
// the activations and masks it saved. Differentiating that again, and forward mode, are refused
// with an error naming the per-layer modules, which support both.

// input, then the weights, then one entry per layer's bias (undefined where it has none): the
// order of FusedMLPBackward's outputs.
std::vector<at::Tensor> mlp_differentiable(const at::Tensor& input, at::TensorList weights,
                                           const OptionalTensorList& biases) {
  std::vector<at::Tensor> all{input};
  all.insert(all.end(), weights.begin(), weights.end());
  for (size_t l = 0; l < biases.size(); ++l) all.push_back(value(biases.get(l)));
  return all;
}

struct FusedMLPBackward : torch::autograd::Node {
  using Node::Node;
  SavedVariable input_;
  std::vector<SavedVariable> weights_, activations_, masks_;
  c10::List<bool> has_bias_;

  std::string name() const override { return "FusedMLPBackward0"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    for (auto* saved : {&weights_, &activations_, &masks_})
      for (SavedVariable& v : *saved) v.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t L = weights_.size();
    variable_list out(1 + 2 * L);
    bool want_w = false, want_b = false;
    for (size_t l = 0; l < L; ++l) {
      want_w = want_w || task_should_compute_output(1 + l);
      want_b = want_b || (has_bias_[l] && task_should_compute_output(1 + L + l));
    }
    const std::array<bool, 3> needed{task_should_compute_output(0), want_w, want_b};
    if (!grads[0].defined() || !(needed[0] || needed[1] || needed[2])) return out;
    auto unpack = [](std::vector<SavedVariable>& saved) {
      std::vector<at::Tensor> v;
      for (SavedVariable& s : saved) v.push_back(s.unpack());
      return v;
    };
    auto [gx, gw, gb] = mlp_backward_op().call(grads[0], input_.unpack(), unpack(weights_),
                                               unpack(activations_), unpack(masks_), has_bias_,
                                               needed);
    out[0] = value(gx);
    for (size_t l = 0, i = 0; l < L; ++l) {
      if (want_w) out[1 + l] = gw[l];
      if (want_b && has_bias_[l]) out[1 + L + l] = gb[i++];
    }
    return out;
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_forward_autograd(
    const at::Tensor& input, at::TensorList weights, const OptionalTensorList& biases,
    bool save_for_backward) {
  const std::vector<at::Tensor> all = mlp_differentiable(input, weights, biases);
  for (const at::Tensor& t : all)
    TORCH_CHECK(!has_tangent(t), "fused_linreg.mlp_forward: forward-mode AD (jvp, jacfwd, "
                "dual tensors) is not supported through the fused MLP; use the per-layer "
                "FusedLinearReLU / FusedLinear modules, which support it");
  const bool grad = torch::autograd::compute_requires_grad(at::ArrayRef<at::Tensor>(all));
  auto [output, acts, masks] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return mlp_forward_op().call(input, weights, biases, save_for_backward || grad);
  }();
  if (grad) {
    auto node = c10::make_intrusive<FusedMLPBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(at::ArrayRef<at::Tensor>(all)));
    node->input_ = SavedVariable(input, /*is_output=*/false);
    for (const at::Tensor& w : weights) node->weights_.emplace_back(w, /*is_output=*/false);
    for (const at::Tensor& a : acts) node->activations_.emplace_back(a, /*is_output=*/false);
    for (const at::Tensor& m : masks) node->masks_.emplace_back(m, /*is_output=*/false);
    for (size_t l = 0; l < biases.size(); ++l) node->has_bias_.push_back(biases.get(l).has_value());
    torch::autograd::set_history(output, node);
    if (!save_for_backward) {
      acts.clear();
      masks.clear();
    }
  }
  return std::make_tuple(output, acts, masks);
}

MlpGrads mlp_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                               at::TensorList weights, at::TensorList activations,
                               at::TensorList masks, const c10::List<bool>& has_bias,
                               std::array<bool, 3> output_mask) {
  std::vector<at::Tensor> all{grad_output, input};
  all.insert(all.end(), weights.begin(), weights.end());
  const bool grad = torch::autograd::compute_requires_grad(at::ArrayRef<at::Tensor>(all));
  MlpGrads grads = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return mlp_backward_op().call(grad_output, input, weights, activations, masks, has_bias,
                                  output_mask);
  }();
  if (grad) {
    // The gradients get a node that refuses to be differentiated (create_graph=True records it;
    // only differentiating through it is an error, as for PyTorch's own once-differentiable ops).
    auto node = c10::make_intrusive<torch::autograd::Error>(
        "fused_linreg.mlp_backward: the fused MLP is differentiable once; for double backward "
        "(create_graph=True, gradgradcheck, Hessians) use the per-layer FusedLinearReLU / "
        "FusedLinear modules (fuse(model) without mlp=True)",
        torch::autograd::collect_next_edges(at::ArrayRef<at::Tensor>(all)));
    auto& [gx, gw, gb] = grads;
    if (gx.has_value())
      torch::autograd::set_history(*gx, node);
    else
      node->add_input_metadata(torch::autograd::Node::undefined_input());
    for (at::Tensor& g : gw) torch::autograd::set_history(g, node);
    for (at::Tensor& g : gb) torch::autograd::set_history(g, node);
  }
  return grads;
}

}  // namespace
}  // namespace fused_linreg

TORCH_LIBRARY_IMPL(fused_linreg, Autograd, m) {
  m.impl("linear_backward", &fused_linreg::linear_backward_autograd);
  m.impl("linear_forward", &fused_linreg::linear_forward_autograd);
  m.impl("linear_relu_forward", &fused_linreg::linear_relu_forward_autograd);
  m.impl("mlp_forward", &fused_linreg::mlp_forward_autograd);
  m.impl("mlp_backward", &fused_linreg::mlp_backward_autograd);
}

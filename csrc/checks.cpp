// Argument checks shared by the CPU and CUDA implementations: every message names the argument
// and the shapes, dtypes or devices involved.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <array>
#include <ostream>
#include <vector>

#include "errors.h"
#include "ops.h"

namespace fused_linreg {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// An argument's name, e.g. "grads" or "grads[3]", formatted only into an error message: the
// checks run on every call, so building strings up front would cost more than checking.
struct ArgName {
  const char* base;
  int64_t index = -1;
  ArgName(const char* name) : base(name) {}  // NOLINT: implicit, names are mostly literals
  ArgName(const char* name, size_t i) : base(name), index(int64_t(i)) {}
};
std::ostream& operator<<(std::ostream& out, const ArgName& name) {
  out << name.base;
  if (name.index >= 0) out << "[" << name.index << "]";
  return out;
}

void check_floating(const char* op, const ArgName& name, const at::Tensor& t) {
  FUSED_LINREG_CHECK_DTYPE_SUPPORTED(is_supported_dtype(t.scalar_type()), op, ": ", name,
                                     " must be float32, float64, bfloat16 or float16, got ",
                                     t.scalar_type());
  FUSED_LINREG_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", name,
                          " must be a dense tensor, got layout ", t.layout());
}

void check_same(const char* op, const ArgName& name, const at::Tensor& t, const at::Tensor& ref,
                const ArgName& ref_name) {
  FUSED_LINREG_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " and ",
                          ref_name, " to have the same dtype, got ", t.scalar_type(), " and ",
                          ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " and ", ref_name,
              " on the same device, got ", t.device(), " and ", ref.device());
}

// Tensors that an op updates in place must not share memory with each other, nor with the tensors
// it reads (the update may run in parallel, or while those are still being read). A read tensor
// may be exactly a written one of the same `group` (a gradient that is its own parameter: read
// and written element by element, allowed as in torch.optim.SGD).
struct Operand {
  const at::Tensor* tensor;
  ArgName name;
  bool written;
  int64_t group = -1;
};

void check_written_memory(const char* op, const std::vector<Operand>& operands, const char* rule) {
  struct Extent {
    const c10::StorageImpl* storage;
    uintptr_t begin, end;  // bytes
    const Operand* operand;
  };
  std::vector<Extent> extents;
  for (const Operand& o : operands) {
    const at::Tensor& t = *o.tensor;
    if (!t.defined() || t.numel() == 0 || !t.has_storage()) continue;
    if (o.written)
      TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", o.name,
                  " has elements that share memory (e.g. an expanded tensor), so it cannot be "
                  "updated in place");
    uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr()), span = 1;
    for (int64_t d = 0; d < t.dim(); ++d) span += uintptr_t(t.size(d) - 1) * uintptr_t(t.stride(d));
    extents.push_back({t.storage().unsafeGetStorageImpl(), begin, begin + span * t.element_size(), &o});
  }
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return a.storage != b.storage ? a.storage < b.storage : a.begin < b.begin;
  });
  for (size_t i = 0; i < extents.size(); ++i) {
    for (size_t j = i + 1; j < extents.size(); ++j) {
      const Extent &a = extents[i], &b = extents[j];
      if (b.storage != a.storage || b.begin >= a.end) break;
      if (!a.operand->written && !b.operand->written) continue;  // both only read
      const at::Tensor &ta = *a.operand->tensor, &tb = *b.operand->tensor;
      const at::MemOverlapStatus status = at::get_overlap_status(ta, tb);
      if (status == at::MemOverlapStatus::No) continue;
      // Strided views whose ranges interleave may well be disjoint (columns of one matrix):
      // only the same first element is certainly shared.
      if (status == at::MemOverlapStatus::TooHard && a.begin != b.begin) continue;
      const bool same_group = a.operand->group >= 0 && a.operand->group == b.operand->group &&
                              a.operand->written != b.operand->written;
      if (same_group && a.begin == b.begin && ta.sizes() == tb.sizes() && ta.strides() == tb.strides())
        continue;
      TORCH_CHECK(false, op, ": ", a.operand->name, " and ", b.operand->name, " share memory; ", rule);
    }
  }
}

void check_sgd_aliasing(const char* op, at::TensorList params, at::TensorList grads,
                        at::TensorList buffers) {
  std::vector<Operand> operands;
  operands.reserve(params.size() + grads.size() + buffers.size());
  for (size_t i = 0; i < params.size(); ++i)
    operands.push_back({&params[i], ArgName("params", i), true, int64_t(i)});
  for (size_t i = 0; i < buffers.size(); ++i)
    operands.push_back({&buffers[i], ArgName("momentum_buffers", i), true});
  for (size_t i = 0; i < grads.size(); ++i)
    operands.push_back({&grads[i], ArgName("grads", i), false, int64_t(i)});
  check_written_memory(op, operands,
                       "the parameters and momentum buffers of one step must not overlap each "
                       "other or other gradients");
}

}  // namespace

void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const OptionalTensor& bias) {
  check_floating(op, "input", input);
  check_floating(op, "weight", weight);
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
              weight.sizes());
  TORCH_CHECK(input.size(-1) == weight.size(1), op, ": input's last dimension (shape ",
              input.sizes(), ") must equal weight's in_features (shape ", weight.sizes(),
              "): ", input.size(-1), " != ", weight.size(1));
  check_same(op, "input", input, weight, "weight");
  // The output [*input.shape[:-1], out_features] must be addressable with 64-bit element and
  // byte counts: inputs with huge logical sizes (expanded, meta) can ask for more.
  int64_t rows = 1, bytes = 0;
  bool overflow = false;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) overflow |= c10::mul_overflows(rows, input.size(d), &rows);
  overflow = overflow || c10::mul_overflows(rows, weight.size(0), &bytes) ||
             c10::mul_overflows(bytes, int64_t(input.element_size()), &bytes);
  TORCH_CHECK(!overflow, op, ": the output for input of shape ", input.sizes(),
              " and weight of shape ", weight.sizes(), " would have more than 2^63 bytes");
  if (bias.has_value()) {
    check_floating(op, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must have shape [out_features] = [", weight.size(0), "], got ",
                bias->sizes());
    check_same(op, "bias", *bias, weight, "weight");
  }
}

void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, const OptionalTensor& relu_mask) {
  const char* op = "fused_linreg.linear_backward";
  check_linear_args(op, input, weight, std::nullopt);
  check_floating(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, input, "input");
  auto expected = rows_shape(input, weight.size(0));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, ": grad_output must have shape ",
              at::IntArrayRef(expected), " (input ", input.sizes(), ", weight ", weight.sizes(),
              "), got ", grad_output.sizes());
  if (relu_mask.has_value()) {
    auto mask_shape = rows_shape(input, relu_mask_row_bytes(weight.size(0)));
    FUSED_LINREG_CHECK_TYPE(relu_mask->scalar_type() == at::kByte, op,
                            ": relu_mask must be uint8, got ", relu_mask->scalar_type());
    TORCH_CHECK(relu_mask->sizes() == at::IntArrayRef(mask_shape), op,
                ": relu_mask must have shape ", at::IntArrayRef(mask_shape), ", got ",
                relu_mask->sizes());
    TORCH_CHECK(relu_mask->device() == input.device(), op,
                ": relu_mask must be on the input's device ", input.device(), ", got ",
                relu_mask->device());
  }
}

void check_linear_backward_sgd_args(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& weight, const OptionalTensor& relu_mask,
                                    const OptionalTensor& bias,
                                    const OptionalTensor& weight_momentum_buffer,
                                    const OptionalTensor& bias_momentum_buffer, double momentum) {
  const char* op = "fused_linreg.linear_backward_sgd_";
  check_linear_backward_args(grad_output, input, weight, relu_mask);
  check_linear_args(op, input, weight, bias);
  auto check_param = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous to be updated in the backward");
  };
  auto check_buffer = [&](const OptionalTensor& buf, const at::Tensor& param, const char* name) {
    TORCH_CHECK(buf.has_value(), op, ": momentum=", momentum, " needs ", name);
    TORCH_CHECK(buf->sizes() == param.sizes(), op, ": ", name, " has shape ", buf->sizes(),
                " but its parameter has shape ", param.sizes());
    check_same(op, name, *buf, param, "its parameter");
    TORCH_CHECK(buf->is_contiguous(), op, ": ", name, " must be contiguous");
  };
  check_param(weight, "weight");
  if (bias.has_value()) check_param(*bias, "bias");
  if (momentum != 0) {
    check_buffer(weight_momentum_buffer, weight, "weight_momentum_buffer");
    if (bias.has_value()) check_buffer(bias_momentum_buffer, *bias, "bias_momentum_buffer");
  }
  std::vector<Operand> operands{{&weight, "weight", true}, {&input, "input", false},
                                {&grad_output, "grad_output", false}};
  if (bias.has_value()) operands.push_back({&*bias, "bias", true});
  if (momentum != 0) {
    operands.push_back({&*weight_momentum_buffer, "weight_momentum_buffer", true});
    if (bias.has_value()) operands.push_back({&*bias_momentum_buffer, "bias_momentum_buffer", true});
  }
  check_written_memory(op, operands,
                       "the weight, bias and momentum buffers are updated in place during the "
                       "backward and must not overlap each other, the input or grad_output");
}

void check_sgd_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    const c10::List<bool>& init_momentum_buffers, double momentum,
                    const OptionalTensor& grad_scale, const OptionalTensor& found_inf) {
  const char* op = "fused_linreg.sgd_step_";
  TORCH_CHECK(grads.size() == params.size(), op, ": got ", params.size(), " params but ",
              grads.size(), " grads");
  if (momentum != 0) {
    TORCH_CHECK(momentum_buffers.size() == params.size(), op, ": momentum=", momentum,
                " needs one momentum buffer per param: got ", params.size(), " params and ",
                momentum_buffers.size(), " momentum_buffers");
    TORCH_CHECK(init_momentum_buffers.size() == params.size(), op, ": got ", params.size(),
                " params but ", init_momentum_buffers.size(), " init_momentum_buffers flags");
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const ArgName pi("params", i), gi("grads", i);
    FUSED_LINREG_CHECK_TYPE(g.layout() == at::kStrided, op, ": ", gi,
                            " is sparse; FusedSGD does not support sparse gradients");
    check_floating(op, pi, p);
    check_floating(op, gi, g);
    TORCH_CHECK(p.sizes() == g.sizes(), op, ": ", pi, " has shape ", p.sizes(), " but ", gi,
                " has shape ", g.sizes());
    check_same(op, pi, p, g, gi);
    TORCH_CHECK(p.device() == params[0].device(), op, ": all params must be on one device, got ",
                params[0].device(), " and ", p.device(), " (", pi, ")");
    if (momentum != 0) {
      const at::Tensor& b = momentum_buffers[i];
      const ArgName bi("momentum_buffers", i);
      check_floating(op, bi, b);
      TORCH_CHECK(b.sizes() == p.sizes(), op, ": ", bi, " has shape ", b.sizes(), " but ", pi,
                  " has shape ", p.sizes());
      check_same(op, bi, b, p, pi);
    }
  }
  check_sgd_aliasing(op, params, grads, momentum != 0 ? momentum_buffers : at::TensorList());
  for (const OptionalTensor& t : {grad_scale, found_inf}) {
    if (!t.has_value() || params.empty()) continue;
    TORCH_CHECK(t->numel() == 1, op, ": grad_scale and found_inf must have one element, got shape ",
                t->sizes());
    TORCH_CHECK(t->device() == params[0].device(), op,
                ": grad_scale and found_inf must be on the params' device ", params[0].device(),
                ", got ", t->device());
  }
}

void check_mlp_args(const char* op, const at::Tensor& input, at::TensorList weights,
                    const OptionalTensorList& biases) {
  TORCH_CHECK(!weights.empty(), op, ": needs at least one layer, got no weights");
  TORCH_CHECK(biases.size() == weights.size(), op, ": needs one bias entry (a tensor or None) per "
              "layer: got ", weights.size(), " weights and ", biases.size(), " biases");
  check_linear_args(op, input, weights[0], biases.get(0));
  for (size_t l = 1; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const ArgName wl("weights", l);
    check_floating(op, wl, w);
    TORCH_CHECK(w.dim() == 2, op, ": ", wl, " must be 2-D [out_features, in_features], got shape ",
                w.sizes());
    TORCH_CHECK(w.size(1) == weights[l - 1].size(0), op, ": ", wl, " (shape ", w.sizes(),
                ") must take the ", weights[l - 1].size(0), " outputs of weights[", l - 1,
                "] (shape ", weights[l - 1].sizes(), ")");
    check_same(op, wl, w, weights[0], "weights[0]");
    const OptionalTensor b = biases.get(l);
    if (b.has_value()) {
      const ArgName bl("biases", l);
      check_floating(op, bl, *b);
      TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), op, ": ", bl,
                  " must have shape [out_features] = [", w.size(0), "], got ", b->sizes());
      check_same(op, bl, *b, w, wl);
    }
  }
}

void check_mlp_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             at::TensorList weights, at::TensorList activations,
                             at::TensorList masks, const c10::List<bool>& has_bias) {
  const char* op = "fused_linreg.mlp_backward";
  check_mlp_args(op, input, weights, OptionalTensorList(std::vector<OptionalTensor>(weights.size())));
  const size_t hidden = weights.size() - 1;
  TORCH_CHECK(has_bias.size() == weights.size(), op, ": needs one has_bias flag per layer: got ",
              weights.size(), " weights and ", has_bias.size(), " flags");
  TORCH_CHECK(activations.size() == hidden && masks.size() == hidden, op, ": needs one saved "
              "activation and mask per hidden layer (", hidden, "), got ", activations.size(),
              " and ", masks.size(), "; call mlp_forward with save_for_backward=True");
  check_floating(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, input, "input");
  const auto expected = rows_shape(input, weights.back().size(0));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, ": grad_output must have shape ",
              at::IntArrayRef(expected), ", got ", grad_output.sizes());
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) rows *= input.size(d);
  for (size_t l = 0; l < hidden; ++l) {
    const int64_t n = weights[l].size(0);
    const std::array<int64_t, 2> act_shape{rows, n}, mask_shape{rows, relu_mask_row_bytes(n)};
    const ArgName al("activations", l), ml("masks", l);
    check_same(op, al, activations[l], input, "input");
    TORCH_CHECK(activations[l].sizes() == at::IntArrayRef(act_shape) && activations[l].is_contiguous(),
                op, ": ", al, " must be contiguous of shape ", at::IntArrayRef(act_shape), ", got ",
                activations[l].sizes());
    FUSED_LINREG_CHECK_TYPE(masks[l].scalar_type() == at::kByte, op, ": ", ml,
                            " must be uint8, got ", masks[l].scalar_type());
    TORCH_CHECK(masks[l].sizes() == at::IntArrayRef(mask_shape) && masks[l].is_contiguous(), op,
                ": ", ml, " must be contiguous of shape ", at::IntArrayRef(mask_shape), ", got ",
                masks[l].sizes());
    TORCH_CHECK(masks[l].device() == input.device(), op, ": ", ml, " must be on the input's device ",
                input.device(), ", got ", masks[l].device());
  }
}

at::Tensor as_rows(const at::Tensor& input) {
  if (input.dim() == 2) return with_size_one_strides_normalized(input);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) rows *= input.size(d);
  return with_size_one_strides_normalized(input.reshape({rows, input.size(-1)}));
}

at::Tensor with_size_one_strides_normalized(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.dim() == 2, "expected a 2-D tensor, got shape ", t.sizes());
  std::array<int64_t, 2> strides{t.stride(0), t.stride(1)};
  for (int d = 0; d < 2; ++d) {
    const int other = 1 - d;
    if (t.size(d) > 1) continue;
    strides[d] = strides[other] == 1 && t.size(other) > 1 ? t.size(other) : 1;
  }
  if (strides[0] == t.stride(0) && strides[1] == t.stride(1)) return t;
  return t.as_strided(t.sizes(), strides);
}

std::vector<int64_t> rows_shape(const at::Tensor& input, int64_t last) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 1);
  shape.push_back(last);
  return shape;
}

}  // namespace fused_linreg

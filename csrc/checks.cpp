// Argument checks shared by the CPU and CUDA implementations: every message names the argument
// and the shapes, dtypes or devices involved.
#include <ATen/ATen.h>

#include <unordered_set>

#include "ops.h"

namespace fused_linreg {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, " must be a dense tensor, got layout ",
              t.layout());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " and ",
                   ref_name, " to have the same dtype, got ", t.scalar_type(), " and ",
                   ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " and ", ref_name,
              " on the same device, got ", t.device(), " and ", ref.device());
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
    TORCH_CHECK(relu_mask->scalar_type() == at::kByte, op, ": relu_mask must be uint8, got ",
                relu_mask->scalar_type());
    TORCH_CHECK(relu_mask->sizes() == at::IntArrayRef(mask_shape), op,
                ": relu_mask must have shape ", at::IntArrayRef(mask_shape), ", got ",
                relu_mask->sizes());
    TORCH_CHECK(relu_mask->device() == input.device(), op,
                ": relu_mask must be on the input's device ", input.device(), ", got ",
                relu_mask->device());
  }
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
  std::unordered_set<const void*> written;
  auto check_unaliased = [&](const at::Tensor& t, const char* what, size_t i) {
    if (t.numel() == 0) return;
    TORCH_CHECK(written.insert(t.data_ptr()).second, op, ": ", what, "[", i,
                "] shares memory with another parameter or momentum buffer of this step");
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.layout() == at::kStrided, op, ": grads[", i,
                "] is sparse; FusedSGD does not support sparse gradients");
    check_floating(op, "params[i]", p);
    check_floating(op, "grads[i]", g);
    TORCH_CHECK(p.sizes() == g.sizes(), op, ": params[", i, "] has shape ", p.sizes(),
                " but grads[", i, "] has shape ", g.sizes());
    check_same(op, "params[i]", p, g, "grads[i]");
    TORCH_CHECK(p.device() == params[0].device(), op, ": all params must be on one device, got ",
                params[0].device(), " and ", p.device(), " (params[", i, "])");
    check_unaliased(p, "params", i);
    if (momentum != 0) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.sizes() == p.sizes(), op, ": momentum_buffers[", i, "] has shape ", b.sizes(),
                  " but params[", i, "] has shape ", p.sizes());
      check_same(op, "momentum_buffers[i]", b, p, "params[i]");
      check_unaliased(b, "momentum_buffers", i);
    }
  }
  for (const OptionalTensor& t : {grad_scale, found_inf}) {
    if (!t.has_value() || params.empty()) continue;
    TORCH_CHECK(t->numel() == 1, op, ": grad_scale and found_inf must have one element, got shape ",
                t->sizes());
    TORCH_CHECK(t->device() == params[0].device(), op,
                ": grad_scale and found_inf must be on the params' device ", params[0].device(),
                ", got ", t->device());
  }
}

at::Tensor as_rows(const at::Tensor& input) {
  if (input.dim() == 2) return input;
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) rows *= input.size(d);
  return input.reshape({rows, input.size(-1)});
}

std::vector<int64_t> rows_shape(const at::Tensor& input, int64_t last) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 1);
  shape.push_back(last);
  return shape;
}

}  // namespace fused_linreg

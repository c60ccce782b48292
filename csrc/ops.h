// The C++ signatures of the fused_linreg operators (schemas in fused_linreg.cpp), implemented per
// device in cpu/ and cuda/, plus the argument checks both devices share.
#pragma once
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace fused_linreg {

using OptionalTensor = std::optional<at::Tensor>;
using LinearGrads = std::tuple<OptionalTensor, OptionalTensor, OptionalTensor>;

// Checks input [..., K], weight [N, K], bias [N], dtypes and devices; names the offending
// argument. `op` prefixes the message.
void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const OptionalTensor& bias);
void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, const OptionalTensor& relu_mask);
// Checks the in-backward SGD update: the linear backward's arguments, plus contiguous parameters
// and momentum buffers of matching shape, dtype and device.
void check_linear_backward_sgd_args(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& weight, const OptionalTensor& relu_mask,
                                    const OptionalTensor& bias,
                                    const OptionalTensor& weight_momentum_buffer,
                                    const OptionalTensor& bias_momentum_buffer, double momentum);
// Checks list lengths, shapes, dtypes, devices, aliasing and sparsity of a multi-tensor SGD step.
void check_sgd_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    const c10::List<bool>& init_momentum_buffers, double momentum,
                    const OptionalTensor& grad_scale, const OptionalTensor& found_inf);

using OptionalTensorList = c10::List<std::optional<at::Tensor>>;
// Checks an MLP's input [..., n_0], weights[l] [n_l+1, n_l] chained layer to layer, biases (one
// entry per layer, each None or [n_l+1]), dtypes and devices; names the offending layer.
void check_mlp_args(const char* op, const at::Tensor& input, at::TensorList weights,
                    const OptionalTensorList& biases);
// Checks mlp_backward's arguments against the weights: grad_output, the saved activations and
// masks (one per hidden layer, [rows, width]), has_bias (one per layer).
void check_mlp_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             at::TensorList weights, at::TensorList activations,
                             at::TensorList masks, const c10::List<bool>& has_bias);

// The input viewed as 2-D rows [M, K]: a view whenever the leading dims allow one, with the
// strides of its size-1 dimensions normalized (with_size_one_strides_normalized).
at::Tensor as_rows(const at::Tensor& input);
// A 2-D tensor, as a view whose dimensions of size 0 or 1 have the stride a GEMM expects. PyTorch
// gives them any stride (and calls a tensor of sizes 1 contiguous whatever its strides: the
// gradient of a sum is a [1, 1] of strides (0, 0), a slice of a stepped view may have (12, 2)),
// but kernels choose their layout from the strides. Such a dimension's stride becomes the other
// dimension's size when the other has unit stride (a contiguous row or column), else 1 (it is then
// the unit-stride dimension). A tensor without such a dimension is returned as it is.
at::Tensor with_size_one_strides_normalized(const at::Tensor& t);
// Shape of the output rows: input.shape[:-1] + [last].
std::vector<int64_t> rows_shape(const at::Tensor& input, int64_t last);
// The tensor's data as the kernels' storage type T.
template <typename T> T* data_as(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
// Bytes per row of a ReLU bitmask over `n` outputs (padded to 32-bit words).
inline int64_t relu_mask_row_bytes(int64_t n) { return (n + 31) / 32 * 4; }

// Each operator's C++ signature, declared once: the device kernels below are declared with these
// types, and autograd.cpp looks the operators up in the dispatcher with them.
using LinearForwardOp = at::Tensor(const at::Tensor& input, const at::Tensor& weight,
                                   const OptionalTensor& bias, bool relu);
using LinearReluForwardOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& input,
                                                               const at::Tensor& weight,
                                                               const OptionalTensor& bias);
using LinearBackwardOp = LinearGrads(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, const OptionalTensor& relu_mask,
                                     std::array<bool, 3> output_mask);
using SgdStepOp = void(at::TensorList params, at::TensorList grads,
                       at::TensorList momentum_buffers, const c10::List<bool>& init_momentum_buffers,
                       double lr, double momentum, double dampening, double weight_decay,
                       bool nesterov, bool maximize, const OptionalTensor& grad_scale,
                       const OptionalTensor& found_inf);
using LinearBackwardSgdOp = void(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, const OptionalTensor& relu_mask,
                                 const OptionalTensor& bias,
                                 const OptionalTensor& weight_momentum_buffer,
                                 const OptionalTensor& bias_momentum_buffer,
                                 bool init_weight_momentum, bool init_bias_momentum, double lr,
                                 double momentum, double dampening, double weight_decay,
                                 bool nesterov, bool maximize);
using MlpForwardOp = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
    const at::Tensor& input, at::TensorList weights, const OptionalTensorList& biases,
    bool save_for_backward);
using MlpGrads = std::tuple<OptionalTensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;
using MlpBackwardOp = MlpGrads(const at::Tensor& grad_output, const at::Tensor& input,
                               at::TensorList weights, at::TensorList activations,
                               at::TensorList masks, const c10::List<bool>& has_bias,
                               std::array<bool, 3> output_mask);

// The multi-tensor SGD step on CPU tensors (cpu/sgd.cpp) and on CUDA tensors (cuda/sgd.cpp; CUDA
// builds only), and the whole-MLP operators (cpu/mlp.cpp; CPU only). The linear operators are
// written once, over either device: linear_ops.h.
namespace cpu {
SgdStepOp sgd_step_;
MlpForwardOp mlp_forward;
MlpBackwardOp mlp_backward;
}  // namespace cpu
namespace cuda {
SgdStepOp sgd_step_;
}  // namespace cuda

}  // namespace fused_linreg

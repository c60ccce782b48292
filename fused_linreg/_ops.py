"""The fused_linreg operators: loading the compiled kernels, and the Python-side registrations
(fake kernels for torch.compile, vmap rules, error kernels). Their schemas, device kernels and
autograd are registered in C++ (csrc/fused_linreg.cpp, csrc/cpu/, csrc/cuda/, csrc/autograd.cpp).
Everything else in the package goes through here."""
import math
from typing import Optional, Sequence

import torch

from fused_linreg import _checks
from fused_linreg._build_check import cuda_missing_message, load_extension

_C = load_extension()
_C._register_error_types(_checks.TensorTypeError, _checks.UnsupportedDtypeError)
ops = torch.ops.fused_linreg

# The operator names (schemas in csrc/fused_linreg.cpp): the forwards, the linear ops (forwards and
# backward), the whole-MLP ops (CPU kernels only) and every op; the registrations below and in
# _autocast.py iterate over these.
FORWARD_OPS = ("linear_forward", "linear_relu_forward")
LINEAR_OPS = FORWARD_OPS + ("linear_backward",)
MLP_OPS = ("mlp_forward", "mlp_backward")
ALL_OPS = LINEAR_OPS + ("linear_backward_sgd_", "sgd_step_") + MLP_OPS


def relu_mask_row_bytes(out_features: int) -> int:
    """Bytes per row of the ReLU bitmask: one bit per output, rows padded to 32-bit words."""
    return (out_features + 31) // 32 * 4


# ---- fake kernels: shapes and dtypes, for torch.compile and meta tensors. They check their -----
# ---- arguments as the real kernels do (fused_linreg/_checks.py) -------------------------------


@torch.library.register_fake("fused_linreg::linear_forward")
def _linear_forward_fake(input, weight, bias, relu=False):
    _checks.linear_args("fused_linreg.linear_forward", input, weight, bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("fused_linreg::linear_relu_forward")
def _linear_relu_forward_fake(input, weight, bias):
    _checks.linear_args("fused_linreg.linear_relu_forward", input, weight, bias)
    out = input.new_empty((*input.shape[:-1], weight.shape[0]))
    mask = input.new_empty((*input.shape[:-1], relu_mask_row_bytes(weight.shape[0])), dtype=torch.uint8)
    return out, mask


@torch.library.register_fake("fused_linreg::linear_backward")
def _linear_backward_fake(grad_output, input, weight, relu_mask, output_mask):
    _checks.linear_backward_args(grad_output, input, weight, relu_mask)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None,
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None,
        weight.new_empty((weight.shape[0],)) if output_mask[2] else None,
    )


@torch.library.register_fake("fused_linreg::linear_backward_sgd_")
def _linear_backward_sgd_fake(grad_output, input, weight, relu_mask, bias, weight_momentum_buffer,
                              bias_momentum_buffer, init_weight_momentum, init_bias_momentum, lr,
                              momentum, dampening, weight_decay, nesterov, maximize):
    _checks.linear_backward_sgd_args(grad_output, input, weight, relu_mask, bias,
                                     weight_momentum_buffer, bias_momentum_buffer, momentum)
    return None


@torch.library.register_fake("fused_linreg::sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, init_momentum_buffers, lr, momentum,
                   dampening, weight_decay, nesterov, maximize, grad_scale=None, found_inf=None):
    _checks.sgd_args(params, grads, momentum_buffers, init_momentum_buffers, momentum, grad_scale,
                     found_inf)
    return None


@torch.library.register_fake("fused_linreg::mlp_forward")
def _mlp_forward_fake(input, weights, biases, save_for_backward=False):
    op = "fused_linreg.mlp_forward"
    _checks.mlp_args(op, input, weights, biases)
    _checks.mlp_kernel_dtype(op, input)
    out = input.new_empty((*input.shape[:-1], weights[-1].shape[0]))
    if not save_for_backward:
        return out, [], []
    rows = math.prod(input.shape[:-1])
    acts = [input.new_empty((rows, w.shape[0])) for w in weights[:-1]]
    masks = [input.new_empty((rows, relu_mask_row_bytes(w.shape[0])), dtype=torch.uint8)
             for w in weights[:-1]]
    return out, acts, masks


@torch.library.register_fake("fused_linreg::mlp_backward")
def _mlp_backward_fake(grad_output, input, weights, activations, masks, has_bias, output_mask):
    _checks.mlp_backward_args(grad_output, input, weights, activations, masks, has_bias)
    _checks.mlp_kernel_dtype("fused_linreg.mlp_backward", input)
    grad_input = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None
    grad_weights = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights] if output_mask[1] else []
    grad_biases = [w.new_empty((w.shape[0],)) for w, b in zip(weights, has_bias) if b] if output_mask[2] else []
    return grad_input, grad_weights, grad_biases


# Autograd (every derivative, of any order, reverse and forward mode) is registered in C++
# (csrc/autograd.cpp), so that a training step pays no Python per layer.


# ---- vmap rules: torch.vmap, and the transforms built on it (jacrev, jacfwd, hessian, per-sample --
# ---- gradients). PyTorch's generic fallback cannot batch linear_backward (optional outputs) ------


def _batch_first(t, dim, batch_size):
    """``t`` with the vmapped dimension first; an unbatched tensor expanded to it (no copy)."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(batch_size, *t.shape)


def _meta_sample(a, dim):
    """One sample of ``a`` (vmapped at ``dim``), as a meta tensor: its shape and dtype only."""
    if not isinstance(a, torch.Tensor):
        return a
    shape = list(a.shape)
    if dim is not None:
        del shape[dim]
    return torch.empty(shape, dtype=a.dtype, device="meta")


def _per_sample(op, info, in_dims, args):
    """The op once per vmapped sample, results stacked (each output batched at dim 0)."""
    def sample(i):
        return [a.select(d, i) if isinstance(a, torch.Tensor) and d is not None else a
                for a, d in zip(args, in_dims)]
    if info.batch_size == 0:
        # No sample to run: one sample's shapes come from the fake kernel, on meta tensors.
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        outs = [op(*(_meta_sample(a, d) for a, d in zip(args, in_dims)))]
        def stack(samples):
            return torch.empty((0, *samples[0].shape), dtype=samples[0].dtype, device=device)
    else:
        outs = [op(*sample(i)) for i in range(info.batch_size)]
        stack = torch.stack
    if isinstance(outs[0], torch.Tensor):
        return stack(outs), 0
    stacked = tuple(None if o[0] is None else stack(o) for o in zip(*outs))
    return stacked, tuple(None if o is None else 0 for o in stacked)


@torch.library.register_vmap("fused_linreg::linear_forward")
def _linear_forward_vmap(info, in_dims, input, weight, bias, relu=False):
    x_dim, w_dim, b_dim = in_dims[:3]
    if w_dim is None and b_dim is None:  # the vmapped samples are more rows: one call
        return ops.linear_forward(_batch_first(input, x_dim, info.batch_size), weight, bias, relu), 0
    return _per_sample(ops.linear_forward, info, in_dims, (input, weight, bias, relu))


@torch.library.register_vmap("fused_linreg::linear_relu_forward")
def _linear_relu_forward_vmap(info, in_dims, input, weight, bias):
    x_dim, w_dim, b_dim = in_dims
    if w_dim is None and b_dim is None:
        return ops.linear_relu_forward(_batch_first(input, x_dim, info.batch_size), weight, bias), (0, 0)
    return _per_sample(ops.linear_relu_forward, info, in_dims, (input, weight, bias))


@torch.library.register_vmap("fused_linreg::linear_backward")
def _linear_backward_vmap(info, in_dims, grad_output, input, weight, relu_mask, output_mask):
    go_dim, x_dim, w_dim, mask_dim = in_dims[:4]
    # grad_input alone is row by row: the vmapped samples are more rows. The weight and bias
    # gradients sum over rows, so they take one call per sample.
    if w_dim is None and not output_mask[1] and not output_mask[2]:
        n = info.batch_size
        gi, _, _ = ops.linear_backward(_batch_first(grad_output, go_dim, n), _batch_first(input, x_dim, n),
                                       weight, _batch_first(relu_mask, mask_dim, n), output_mask)
        return (gi, None, None), (None if gi is None else 0, None, None)
    return _per_sample(ops.linear_backward, info, in_dims,
                       (grad_output, input, weight, relu_mask, output_mask))


# ---- legacy vmap (torch.autograd.grad(is_grads_batched=True) and what uses it): its fallback -----
# ---- cannot batch operators with optional outputs, and its batched tensors cannot be unwrapped --
# ---- from Python: a clear error naming the supported alternative, instead of "We could not ------
# ---- generate a fallback" -------------------------------------------------------------------------

_legacy_vmap_lib = torch.library.Library("fused_linreg", "IMPL")


def _no_legacy_vmap(name):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"fused_linreg.{name} cannot be batched by PyTorch's legacy vmap, which "
            "torch.autograd.grad(is_grads_batched=True), torch.autograd.functional.jacobian / "
            "hessian(vectorize=True) and gradcheck(check_batched_grad=True) use. Use torch.func "
            "(vmap, jacrev, jacfwd, hessian), which supports fused_linreg, or vectorize=False / "
            "check_batched_grad=False")
    return refuse


for _name in LINEAR_OPS + MLP_OPS:
    _legacy_vmap_lib.impl(_name, _no_legacy_vmap(_name), "Batched")


# ---- a clear error instead of a dispatcher message when CUDA kernels were not built -----------

if not _C.build_info()["cuda"]:
    _cpu_only_lib = torch.library.Library("fused_linreg", "IMPL")

    def _no_cuda_kernels(*args, **kwargs):
        device = next(
            (t.device for a in args for t in (a if isinstance(a, (list, tuple)) else [a])
             if isinstance(t, torch.Tensor) and t.device.type == "cuda"),
            "cuda",
        )
        raise RuntimeError(cuda_missing_message(device))

    for _name in ALL_OPS:
        _cpu_only_lib.impl(_name, _no_cuda_kernels, "CUDA")
else:
    # The whole-MLP ops have CPU kernels only: on CUDA, FusedMLP runs the per-layer CUDA kernels.
    _mlp_cuda_lib = torch.library.Library("fused_linreg", "IMPL")

    def _no_mlp_cuda_kernel(name):
        def refuse(*args, **kwargs):
            raise NotImplementedError(
                f"fused_linreg.{name} has no CUDA kernel: on CUDA, fused_linreg.FusedMLP runs the "
                "per-layer CUDA kernels (linear_relu_forward, linear_forward)")
        return refuse

    for _name in MLP_OPS:
        _mlp_cuda_lib.impl(_name, _no_mlp_cuda_kernel(_name), "CUDA")


# ---- a clear error naming the argument for sparse tensors (instead of a dispatcher message) -----

_dense_only_lib = torch.library.Library("fused_linreg", "IMPL")
for _name in ALL_OPS:
    for _key in ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA"):
        _dense_only_lib.impl(_name, _checks.not_dense(_name), _key)


def sgd_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    init_momentum_buffers: Sequence[bool],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> None:
    ops.sgd_step_(list(params), list(grads), list(momentum_buffers), list(init_momentum_buffers),
                  float(lr), float(momentum), float(dampening), float(weight_decay), bool(nesterov),
                  bool(maximize), grad_scale, found_inf)

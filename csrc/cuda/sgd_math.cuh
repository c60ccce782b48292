// One element of torch.optim.SGD's update on the GPU, shared by the multi-tensor SGD kernel and
// the GEMM epilogue that applies SGD inside the backward: the device twin of
// cpu/kernel_sgd_update.h, in the same operation order (maximize, weight decay, momentum,
// nesterov), so that CPU and CUDA agree to rounding.
#pragma once

namespace fused_linreg::cuda {

// torch.optim.SGD's hyperparameters in the arithmetic type A; built once per thread.
template <typename A> struct SgdCoefficients {
  A lr, momentum, dampening_complement, weight_decay;
  bool nesterov, maximize;

  __device__ SgdCoefficients(double lr_, double momentum_, double dampening, double weight_decay_,
                             bool nesterov_, bool maximize_)
      : lr(A(lr_)), momentum(A(momentum_)), dampening_complement(A(1 - dampening)),
        weight_decay(A(weight_decay_)), nesterov(nesterov_), maximize(maximize_) {}
};

// Returns the new parameter. When has_buf (momentum != 0), updates buf; init_buf marks the
// first step, where torch.optim.SGD sets the buffer to the (decayed) gradient.
template <typename A>
__device__ __forceinline__ A sgd_update(A p, A g, A& buf, bool has_buf, bool init_buf,
                                        const SgdCoefficients<A>& c) {
  if (c.maximize) g = -g;
  if (c.weight_decay != A(0)) g = fma(c.weight_decay, p, g);
  if (has_buf) {
    buf = init_buf ? g : fma(c.dampening_complement, g, buf * c.momentum);
    g = c.nesterov ? fma(c.momentum, buf, g) : buf;
  }
  return fma(-c.lr, g, p);
}

}  // namespace fused_linreg::cuda

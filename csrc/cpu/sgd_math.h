// One element of torch.optim.SGD's update, shared by the SGD kernel and the GEMM epilogue that
// applies SGD inside the backward. The operation order follows torch.optim.SGD's for-loop
// implementation (maximize, then weight decay, then momentum, then nesterov) so the two agree
// to rounding.
#pragma once
#include <cmath>

namespace fused_linreg::cpu {

struct SgdOptions {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
};

// Returns the new parameter; updates *buf when momentum != 0. `init_buf` is the first step,
// where torch.optim.SGD sets the buffer to a copy of the (decayed) gradient.
template <typename A>
inline A sgd_update(A p, A g, A* buf, bool init_buf, A lr, A momentum, A dampening_complement,
                    A weight_decay, bool nesterov, bool maximize) {
  if (maximize) g = -g;
  if (weight_decay != A(0)) g = std::fma(weight_decay, p, g);
  if (momentum != A(0)) {
    A b = init_buf ? g : std::fma(dampening_complement, g, *buf * momentum);
    *buf = b;
    g = nesterov ? std::fma(momentum, b, g) : b;
  }
  return std::fma(-lr, g, p);
}

}  // namespace fused_linreg::cpu

// torch.optim.SGD's options, as the SGD kernel and the in-backward SGD epilogue receive them
// (the update itself is in kernel_sgd_update.h, compiled per ISA).
#pragma once

namespace fused_linreg::cpu {

struct SgdOptions {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
};

}  // namespace fused_linreg::cpu

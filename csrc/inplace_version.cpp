// Version counters for the ops that write their arguments in place (linear_backward_sgd_,
// sgd_step_). Autograd compares a saved tensor's version when it is unpacked: bumping it here is
// what makes "a parameter was updated between a forward and its backward" (a step inside the
// graph, a weight tied to an op that saves it) the error it is with torch.optim.SGD, instead of a
// backward that silently reads the new values. ADInplaceOrView is where PyTorch's own in-place ops
// do it; for the operators of a TORCH_LIBRARY it is a fallthrough unless a kernel is registered.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <vector>

namespace fused_linreg {
namespace {

void bump_version(const c10::IValue& value) {
  if (value.isTensor()) {
    torch::autograd::impl::bump_version(value.toTensor());
  } else if (value.isTensorList()) {
    for (const at::Tensor& t : value.toTensorList().vec()) torch::autograd::impl::bump_version(t);
  }
}

// Runs the op below ADInplaceOrView, then bumps every argument its schema marks as written.
// After, not before: a call that fails its checks has changed nothing, its versions included.
void run_and_bump_written(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                          torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  std::vector<c10::IValue> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const auto* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite() && !(*stack)[first + i].isNone())
      written.push_back((*stack)[first + i]);
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const auto& value : written) bump_version(value);
}

}  // namespace
}  // namespace fused_linreg

TORCH_LIBRARY_IMPL(fused_linreg, ADInplaceOrView, m) {
  for (const char* name : {"linear_backward_sgd_", "sgd_step_"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&fused_linreg::run_and_bump_written>());
}

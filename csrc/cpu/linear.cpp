// The linear operators on CPU tensors: linear_ops.h over the CPU GEMM core. Strided views are
// packed as they are, so no operand is copied first.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <new>

#include "cpu/isa.h"
#include "linear_ops.h"

namespace fused_linreg::cpu {
namespace {

struct CpuBackend {
  static constexpr const char* kDevice = "CPU";
  using BFloat16 = cpu::BFloat16;
  using Half = void;  // float16 runs through the float32 kernels

  struct DeviceGuard {
    explicit DeviceGuard(const at::Device&) {}
  };

  static at::Tensor operand(const at::Tensor& t) { return t; }

  // An allocation failure of the packing buffers becomes an error naming the shapes.
  template <typename T>
  static void gemm(const GemmArgs<T>& g, const char* op, const at::Tensor& input,
                   const at::Tensor& weight) {
    try {
      active_kernels().get<T>().gemm(g);
    } catch (const std::bad_alloc&) {
      TORCH_CHECK(false, op, ": out of memory for the packed operands of input ", input.sizes(),
                  " and weight ", weight.sizes());
    }
  }

  static constexpr auto sgd_step_ = &cpu::sgd_step_;
};

}  // namespace
}  // namespace fused_linreg::cpu

TORCH_LIBRARY_IMPL(fused_linreg, CPU, m) {
  fused_linreg::register_linear_ops<fused_linreg::cpu::CpuBackend>(m);
}

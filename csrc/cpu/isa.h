// The per-ISA kernel tables and run-time selection among them.
#pragma once
#include <cstdint>

#include "cpu/storage.h"
#include "gemm_args.h"

namespace fused_linreg::cpu {

// One tensor of a multi-tensor SGD step; all three are contiguous with `numel` elements.
template <typename T> struct SgdTensor {
  T* param;
  const T* grad;
  T* momentum_buffer;  // nullptr when momentum == 0
  int64_t numel;
  bool init_momentum_buffer;
};

template <typename T> struct TypedKernels {
  void (*gemm)(const GemmArgs<T>& args);
  // grad_scale: the gradients are divided by it first (torch.amp.GradScaler); 1 when unscaled.
  void (*sgd)(const SgdTensor<T>* tensors, int64_t count, const SgdOptions& options,
              double grad_scale);
};

struct IsaKernels {
  const char* name;
  TypedKernels<float> f32;
  TypedKernels<double> f64;
  TypedKernels<BFloat16> bf16;

  template <typename T> const TypedKernels<T>& get() const;
};
template <> inline const TypedKernels<float>& IsaKernels::get<float>() const { return f32; }
template <> inline const TypedKernels<double>& IsaKernels::get<double>() const { return f64; }
template <> inline const TypedKernels<BFloat16>& IsaKernels::get<BFloat16>() const { return bf16; }

// Defined by the per-ISA translation units.
namespace avx512 { const IsaKernels& kernels(); }
namespace avx2 { const IsaKernels& kernels(); }
namespace generic { const IsaKernels& kernels(); }

// The kernels in use: the best this CPU supports, unless overridden by set_isa or the
// FUSED_LINREG_CPU_ISA environment variable (both take "avx512", "avx2" or "generic").
const IsaKernels& active_kernels();
// Throws std::invalid_argument for a name that is unknown or unsupported by this CPU.
void set_isa(const char* name);
// Whether this CPU can run the named ISA path ("avx512", "avx2", "generic"; false for any other
// name): the one feature test, also used by the FMA-peak benchmark (csrc/bench/fma_peak.cpp).
bool isa_supported(const char* name);
// Names of the ISA paths this CPU can run, best first.
const char* const* supported_isas(int* count);

int num_threads();

// Runs fn(ctx, begin, end) over [0, n) on the ATen thread pool. The per-ISA code threads through
// this plain function pointer so that it never instantiates ATen templates under its ISA flags.
using ParallelBody = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for(int64_t n, ParallelBody fn, void* ctx);

}  // namespace fused_linreg::cpu

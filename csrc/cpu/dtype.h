// Mapping between ATen dtypes and the CPU kernels' storage types.
#pragma once
#include <ATen/ATen.h>

#include "cpu/gemm_args.h"
#include "errors.h"

namespace fused_linreg::cpu {

template <typename T> constexpr at::ScalarType scalar_type_of();
template <> constexpr at::ScalarType scalar_type_of<float>() { return at::kFloat; }
template <> constexpr at::ScalarType scalar_type_of<double>() { return at::kDouble; }
template <> constexpr at::ScalarType scalar_type_of<BFloat16>() { return at::kBFloat16; }

// The dtype the kernels compute a tensor of dtype `t` in: float16 runs through float32.
inline at::ScalarType kernel_dtype(at::ScalarType t) { return t == at::kHalf ? at::kFloat : t; }

// Calls f(T{}) with the kernel storage type for `dtype` (after kernel_dtype).
template <typename F> void dispatch_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(BFloat16{});
    default: FUSED_LINREG_CHECK_DTYPE_SUPPORTED(false, op, ": unsupported dtype ", dtype, " on CPU");
  }
}

template <typename T> T* data_as(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

}  // namespace fused_linreg::cpu

// Mapping between ATen dtypes and the CPU kernels' storage types.
#pragma once
#include <ATen/ATen.h>

#include "cpu/storage.h"

namespace fused_linreg::cpu {

template <typename T> constexpr at::ScalarType scalar_type_of();
template <> constexpr at::ScalarType scalar_type_of<float>() { return at::kFloat; }
template <> constexpr at::ScalarType scalar_type_of<double>() { return at::kDouble; }
template <> constexpr at::ScalarType scalar_type_of<BFloat16>() { return at::kBFloat16; }

// The dtype the kernels compute a tensor of dtype `t` in: float16 runs through float32.
inline at::ScalarType kernel_dtype(at::ScalarType t) { return t == at::kHalf ? at::kFloat : t; }

}  // namespace fused_linreg::cpu

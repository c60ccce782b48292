// The CPU kernels' storage types beyond float and double, and what they are computed in.
#pragma once
#include <cstdint>

#include "gemm_args.h"

namespace fused_linreg {
namespace cpu {

// bfloat16 storage; arithmetic happens in float after packing.
struct BFloat16 {
  uint16_t bits;
};

}  // namespace cpu

template <> struct AccumulatorType<cpu::BFloat16> { using type = float; };

}  // namespace fused_linreg

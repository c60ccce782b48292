// The CUDA kernels' 16-bit storage types are computed in float, like PyTorch's opmath. Host code
// (the op layer) and device code both need this: GemmArgs<T>::a_row_sums has the accumulator type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm_args.h"

namespace fused_linreg {

template <> struct AccumulatorType<__nv_bfloat16> { using type = float; };
template <> struct AccumulatorType<__half> { using type = float; };

}  // namespace fused_linreg

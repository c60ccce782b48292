// The kernels' element types: storage type T, the type arithmetic happens in (acc_t<T>), and the
// conversions between them. bfloat16 and half are computed in float, like PyTorch's opmath.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/storage.h"

namespace fused_linreg::cuda {

__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

// Round to nearest even, as PyTorch converts; NaN stays NaN.
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

}  // namespace fused_linreg::cuda

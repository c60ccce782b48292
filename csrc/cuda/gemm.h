// The CUDA GEMM core's entry point: how and where one GEMM (gemm_args.h) runs on the GPU. Shared
// by the op layer (linear.cpp) and the kernels (gemm.cuh). The kernel stages each tile along
// whichever dimension has unit stride: one of each operand's two strides must be 1 (the op layer
// copies anything else once).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>

#include "cuda/storage.h"
#include "gemm_args.h"

namespace fused_linreg::cuda {

// How the multiply-adds run: tensor cores (mma.sync through WMMA, fp32 accumulate; TF32 inputs
// for float) or plain FMA on the CUDA cores (exact float32, float64).
enum class MathMode { kTensorCore, kSimt };

// Where a GEMM runs, filled in by the op layer, which owns everything torch: the kernels' files
// include no ATen headers (they would triple nvcc's compile time).
struct GemmContext {
  cudaStream_t stream = nullptr;
  int sm_count = 1;  // decides the split of K, so a given GPU always sums in the same order
  size_t max_shared_memory = 0;  // per block, with opt-in (sharedMemPerBlockOptin)
  // Device memory for split-K partial sums, usable on `stream` until gemm() returns.
  std::function<void*(size_t bytes)> allocate_workspace;
};

// Enqueues the GEMM on context.stream; never synchronizes the host. Instantiated for
// (bfloat16 | half | float, kTensorCore) and (float | double, kSimt), one file each.
template <typename T, MathMode kMode>
void gemm(const GemmArgs<T>& args, const GemmContext& context);

}  // namespace fused_linreg::cuda

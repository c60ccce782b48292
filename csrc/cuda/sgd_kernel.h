// The multi-tensor SGD kernel's interface, as plain data: filled by the op layer (sgd.cpp),
// consumed by the kernel (sgd_kernel.cu), which thereby needs no ATen headers.
//
// One launch steps up to kSgdMaxTensors tensors of any dtypes and sizes. Their pointers travel
// in the kernel's parameters (~24 KiB: kernel parameters may take 32 KiB since CUDA 12.1 on
// Volta and later), so a launch needs no host buffer, no copy and no synchronization, and a CUDA
// graph captures it as it is. Each tensor is cut into chunks of kSgdChunk elements, one block
// per chunk.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "gemm_args.h"

namespace fused_linreg::cuda {

constexpr int kSgdMaxTensors = 512;
constexpr int64_t kSgdChunk = 65536;  // elements per block

enum class SgdDtype : uint8_t { kFloat, kDouble, kBFloat16, kHalf };

// One tensor of the step, flattened: its param, grad and momentum buffer share one dense layout
// (the op layer makes sure), so element i of each is the same entry of the parameter.
struct SgdTensor {
  void* param;
  const void* grad;
  void* momentum_buffer;  // null when momentum == 0
  int64_t numel;          // > 0
  int64_t first_chunk;    // index of the tensor's first chunk (block) in the launch
  SgdDtype dtype;
  bool init_momentum_buffer;  // first step: buffer = grad
};

struct SgdBatch {
  SgdTensor tensors[kSgdMaxTensors];
  int count = 0;
  int64_t chunks = 0;  // total over the tensors
};

// GradScaler's tensors, read on the device.
struct GradScaling {
  const float* grad_scale = nullptr;  // null: gradients are not scaled
  const float* found_inf = nullptr;   // null, or non-zero: the step changes nothing
};

// Enqueues one step over the batch's tensors on `stream` (nothing when the batch is empty).
void launch_sgd(const SgdBatch& batch, const SgdOptions& options, const GradScaling& scaling,
                cudaStream_t stream);

}  // namespace fused_linreg::cuda

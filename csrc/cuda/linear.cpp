// The linear operators on CUDA tensors: linear_ops.h over the CUDA GEMM core (gemm.h). No device
// code here, so the host compiler builds it once rather than nvcc once per arch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <type_traits>

#include "cuda/gemm.h"
#include "linear_ops.h"

namespace fused_linreg::cuda {
namespace {

// float32 runs on TF32 tensor cores exactly when PyTorch's own matmuls would
// (torch.backends.cuda.matmul.allow_tf32 or .fp32_precision, torch.set_float32_matmul_precision),
// else exact FFMA. The per-backend precision is what torch's cuBLAS calls read since it exists
// (2.10 at the latest); allowTF32CuBLAS(), the older API, throws there when the legacy and the new
// setting disagree, as they do after only `fp32_precision = "tf32"`.
bool tf32_allowed() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

// Runs the GEMM on the current stream of the current device (set by the caller's guard). The
// split-K workspace comes from PyTorch's caching allocator and is released when this returns:
// stream order keeps it alive for the kernels.
template <typename T> void run_gemm(const GemmArgs<T>& g, const at::TensorOptions& options) {
  at::Tensor workspace;
  GemmContext context;
  context.stream = at::cuda::getCurrentCUDAStream();
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();  // cached, no sync
  context.sm_count = device->multiProcessorCount;
  context.max_shared_memory = device->sharedMemPerBlockOptin;
  context.allocate_workspace = [&](size_t bytes) {
    workspace = at::empty({int64_t(bytes)}, options.dtype(at::kByte));
    return workspace.data_ptr();
  };
  if constexpr (std::is_same_v<T, double>) {
    gemm<T, MathMode::kSimt>(g, context);
  } else if constexpr (std::is_same_v<T, float>) {
    if (tf32_allowed())
      gemm<T, MathMode::kTensorCore>(g, context);
    else
      gemm<T, MathMode::kSimt>(g, context);
  } else {
    gemm<T, MathMode::kTensorCore>(g, context);
  }
}

// The GEMM stages each operand along a unit-stride dimension, so transposed views are read in
// place; any other 2-D layout (e.g. an expanded grad_output [M, N] with strides (0, 0)) is copied
// once. A size-1 dimension has a unit stride once normalized, whatever PyTorch gave it.
at::Tensor with_unit_stride(const at::Tensor& t) {
  const at::Tensor n = with_size_one_strides_normalized(t);
  return n.stride(0) == 1 || n.stride(1) == 1 ? n : n.contiguous();
}

struct CudaBackend {
  static constexpr const char* kDevice = "CUDA";
  using BFloat16 = __nv_bfloat16;
  using Half = __half;
  using DeviceGuard = c10::cuda::CUDAGuard;

  static at::Tensor operand(const at::Tensor& t) { return with_unit_stride(t); }

  template <typename T>
  static void gemm(const GemmArgs<T>& g, const char*, const at::Tensor& input, const at::Tensor&) {
    run_gemm(g, input.options());
  }

  static constexpr auto sgd_step_ = &cuda::sgd_step_;
};

}  // namespace
}  // namespace fused_linreg::cuda

TORCH_LIBRARY_IMPL(fused_linreg, CUDA, m) {
  fused_linreg::register_linear_ops<fused_linreg::cuda::CudaBackend>(m);
}

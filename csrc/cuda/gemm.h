// What one GEMM call on the GPU computes, as plain data: the CUDA counterpart of
// cpu/gemm_args.h, shared by the op layer (linear.cpp) and the kernels (gemm.cuh).
//
//   acc(m, n) = sum_k A'(m, k) * B(k, n)     A' = A with the optional ReLU-mask prologue applied
//   then the epilogue turns acc into the output: bias, ReLU, bitmask, cast, store.
//
// Operands are addressed through element strides, so transposed views cost nothing: the kernel
// stages each tile along whichever dimension has unit stride. One of each operand's two strides
// must be 1 (the op layer copies anything else once).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>

namespace fused_linreg::cuda {

// The SGD update applied in place of storing the result (optimizer in backward): the finished
// output is the gradient of `param` (same layout as the output), updated with torch.optim.SGD's
// rule and its momentum buffer.
template <typename T> struct SgdEpilogue {
  T* param = nullptr;
  T* momentum_buffer = nullptr;       // null when momentum == 0
  bool init_momentum_buffer = false;  // first step: buffer = grad
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
};

template <typename T> struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* a = nullptr;
  int64_t a_rs = 0, a_cs = 0;  // A(m, k) = a[m * a_rs + k * a_cs]
  const T* b = nullptr;
  int64_t b_rs = 0, b_cs = 0;  // B(k, n) = b[k * b_rs + n * b_cs]

  // Prologue on each staged tile of A: A(m, k) counts only where the mask bit is set, at (m, k),
  // or at (k, m) when a_mask_transposed. Bit (i, j) is bit j % 32 of word
  // a_mask[i * a_mask_row_words + j / 32] (the byte layout of the forward's mask, read as
  // little-endian 32-bit words). a_row_sums[m] (when set) receives sum_k A'(m, k): the bias
  // gradient, reduced in a fixed order so that every run gives the same bits.
  const uint32_t* a_mask = nullptr;
  int64_t a_mask_row_words = 0;
  bool a_mask_transposed = false;
  T* a_row_sums = nullptr;

  // Epilogue: out(m, n) = act(acc(m, n) + bias[n]) into c[m * ldc + n] (c may be null when only
  // a_row_sums is wanted, with N == 0), and the ReLU bitmask into c_mask when set: bit (m, n)
  // where the ReLU passes the gradient, !(out <= 0), as torch's threshold_backward decides.
  T* c = nullptr;
  int64_t ldc = 0;
  const T* bias = nullptr;
  bool relu = false;
  uint32_t* c_mask = nullptr;
  int64_t c_mask_row_words = 0;
  // When sgd.param is set, the epilogue updates the parameter instead of writing c.
  SgdEpilogue<T> sgd;
};

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

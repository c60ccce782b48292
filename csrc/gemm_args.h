// What one GEMM call computes, as plain data: filled once by the op layer (linear_ops.h) and read
// by both devices' kernels (cpu/kernel_*.h, cuda/gemm_*.cuh). No torch, CUDA or ISA headers here:
// the per-ISA translation units and nvcc include it.
//
//   acc(m, n) = sum_k A'(m, k) * B(k, n)     A' = A with the optional ReLU-mask prologue applied
//   then the epilogue turns each finished tile of acc into the output: bias, ReLU, bitmask, store
//   (or the SGD update of a parameter, when the output is its gradient).
//
// Operands are addressed through element strides, so transposed and non-contiguous views cost
// nothing extra. The CPU packs any strides; the CUDA kernels stage along a unit-stride dimension,
// so there the op layer makes one of each operand's strides 1 first.
#pragma once
#include <cstdint>

namespace fused_linreg {

// The type a storage type is computed in: itself, except for the 16-bit floats, which each
// backend maps to float (cpu/storage.h, cuda/storage.h), like PyTorch's opmath.
template <typename T> struct AccumulatorType { using type = T; };
template <typename T> using acc_t = typename AccumulatorType<T>::type;

// A ReLU bitmask as the forward writes it: bit (i, j) is bit j % 8 of byte
// bits[i * row_bytes + j / 8], set where the ReLU passes the gradient, !(out <= 0), as torch's
// threshold_backward decides. Rows are padded to whole 32-bit words, and the mask's start is
// 4-byte aligned, so the CUDA kernels read it as little-endian 32-bit words.
struct BitMask {
  uint8_t* bits = nullptr;
  int64_t row_bytes = 0;
};

// torch.optim.SGD's options.
struct SgdOptions {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
};

// The SGD update applied in place of storing the result (optimizer in backward): the finished
// tile is the gradient of `param`, which is updated with `momentum_buffer`.
template <typename T> struct SgdEpilogue {
  T* param = nullptr;                 // same layout as the output: param[m * ldc + n]
  T* momentum_buffer = nullptr;       // nullptr when momentum == 0
  bool init_momentum_buffer = false;  // first step: buffer = grad
  SgdOptions options;
};

template <typename T> struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* a = nullptr;
  int64_t a_rs = 0, a_cs = 0;  // A(m, k) = a[m * a_rs + k * a_cs]
  const T* b = nullptr;
  int64_t b_rs = 0, b_cs = 0;  // B(k, n) = b[k * b_rs + n * b_cs]

  // Prologue while A is packed (CPU) or staged (CUDA): A(m, k) counts only where the mask bit is
  // set, at (m, k), or at (k, m) when a_mask_transposed. a_row_sums[m] (when set) receives
  // sum_k A'(m, k), in the accumulator type: the bias gradient falls out of that pass for free.
  BitMask a_mask;
  bool a_mask_transposed = false;
  acc_t<T>* a_row_sums = nullptr;

  // Epilogue on each finished tile: out(m, n) = act(acc(m, n) + bias[n]) into c[m * ldc + n]
  // (c may be null when only a_row_sums is wanted, with N == 0), with the ReLU bitmask of the
  // output written to c_mask when relu is set and c_mask.bits is.
  T* c = nullptr;
  int64_t ldc = 0;
  const T* bias = nullptr;
  bool relu = false;
  BitMask c_mask;
  // Set by the CPU GEMM driver alone: whole micro-tiles of c are written with streaming stores.
  bool stream_c = false;
  // When sgd.param is set, the epilogue updates the parameter instead of writing c.
  SgdEpilogue<T> sgd;
};

}  // namespace fused_linreg

// What one GEMM call computes, as plain data shared by the ISA-independent op code and the
// per-ISA kernels. No torch and no ISA flags here: the per-ISA translation units include this.
//
//   acc(m, n) = sum_k A'(m, k) * B(k, n)     A' = A with the optional ReLU-mask prologue applied
//   then the epilogue turns each finished tile of acc into the output.
//
// Operands are addressed through element strides, so transposed and non-contiguous views cost
// nothing extra: packing reads them once either way.
#pragma once
#include <cstdint>

#include "cpu/sgd_options.h"

namespace fused_linreg::cpu {

// bfloat16 storage; arithmetic happens in float after packing.
struct BFloat16 {
  uint16_t bits;
};

template <typename T> struct AccumulatorType { using type = T; };
template <> struct AccumulatorType<BFloat16> { using type = float; };
template <typename T> using acc_t = typename AccumulatorType<T>::type;

// A ReLU bitmask as written by the forward: bit (i, j) is bit j % 8 of byte
// bits[i * row_bytes + j / 8]; rows are padded to whole 32-bit words.
struct BitMask {
  uint8_t* bits = nullptr;
  int64_t row_bytes = 0;
};

// The SGD update applied in place of storing the result (optimizer in backward): the
// finished tile is the gradient of `param`, which is updated with `momentum_buffer`.
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

  // Prologue while packing A: A(m, k) counts only where the mask bit is set, at (m, k), or
  // at (k, m) when a_mask_transposed. a_row_sums[m] (when set) receives sum_k A'(m, k):
  // the bias gradient falls out of the packing pass for free.
  BitMask a_mask;
  bool a_mask_transposed = false;
  acc_t<T>* a_row_sums = nullptr;

  // Epilogue on each finished tile: out(m, n) = act(acc(m, n) + bias[n]) into c[m * ldc + n],
  // with the ReLU bitmask of the output written to c_mask when relu is set.
  T* c = nullptr;
  int64_t ldc = 0;
  const T* bias = nullptr;
  bool relu = false;
  BitMask c_mask;
  // Set by the GEMM driver alone: whole micro-tiles of c are written with streaming stores.
  bool stream_c = false;
  // When sgd.param is set, the epilogue updates the parameter instead of writing c.
  SgdEpilogue<T> sgd;
};

// Runs fn(ctx, begin, end) over [0, n) on the ATen thread pool. The per-ISA code threads through
// this plain function pointer so that it never instantiates ATen templates under its ISA flags.
using ParallelBody = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for(int64_t n, ParallelBody fn, void* ctx);

}  // namespace fused_linreg::cpu

// Part of the CUDA GEMM core (see gemm.cuh): the prologue on a staged tile of A, ReLU mask and
// bias-gradient row sums.
#pragma once
#include <cstdint>

#include "cuda/gemm.h"
#include "cuda/gemm_staging.cuh"
#include "cuda/numeric.cuh"

namespace fused_linreg::cuda {

// Applies the ReLU mask in place to the staged tile of A at (m0, k0). One 32-bit mask word
// covers 32 consecutive k of a row of A (or, transposed, 32 consecutive m of a column); each
// thread takes a run of kRun bits of one word, kRun being the tile's elements per thread, so all
// threads share the work. A select, not a multiply: a NaN or inf gradient where the ReLU was off
// becomes 0. Where the word runs along the tile's contiguous dimension (grad_input's K-major A
// with the forward's mask, grad_weight's M-major A with its transpose: the usual layouts), the
// run is contiguous in shared memory and masked as 16-byte vectors; otherwise element by
// element. Runs starting outside M or K are skipped (their elements are zeros already, and
// their word may lie past the end of the mask).
template <class Tile, int kBlockM, int kBlockK, int kThreads, typename T>
__device__ __forceinline__ void apply_relu_mask(T* tile, const GemmArgs<T>& g, int64_t m0,
                                                int64_t k0) {
  constexpr int kRun = kBlockM * kBlockK / kThreads, kRunsPerWord = 32 / kRun;
  static_assert(kBlockM % 32 == 0 && kBlockK % 32 == 0, "mask words must not straddle tiles");
  static_assert(32 % kRun == 0 && kRun * sizeof(T) % 16 == 0, "runs must be whole vectors");
  const int w = threadIdx.x / kRunsPerWord, bit0 = threadIdx.x % kRunsPerWord * kRun;
  const bool along_k = !g.a_mask_transposed;  // bit (m, k), else bit (k, m)
  int m, k;
  int64_t mask_row, mask_word;
  if (along_k) {
    m = w / (kBlockK / 32);
    k = w % (kBlockK / 32) * 32;
    mask_row = m0 + m;
    mask_word = (k0 + k) / 32;
    k += bit0;
  } else {
    k = w / (kBlockM / 32);
    m = w % (kBlockM / 32) * 32;
    mask_row = k0 + k;
    mask_word = (m0 + m) / 32;
    m += bit0;
  }
  if (m0 + m >= g.M || k0 + k >= g.K) return;
  const uint32_t* const words = reinterpret_cast<const uint32_t*>(g.a_mask.bits);
  const uint32_t bits = words[mask_row * (g.a_mask.row_bytes / 4) + mask_word] >> bit0;
  T* const run = tile + Tile::offset(m, k);
  if (along_k == (Tile::kLayout == Layout::kKMajor)) {
#pragma unroll
    for (int v = 0; v < kRun * int(sizeof(T)) / 16; ++v) {
      uint4 x = reinterpret_cast<const uint4*>(run)[v];
      uint32_t* words = reinterpret_cast<uint32_t*>(&x);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int e = (v * 16 + q * 4) / int(sizeof(T));  // the word's (first) element
        if constexpr (sizeof(T) == 2)
          words[q] &= (bits >> e & 1u ? 0x0000FFFFu : 0u) | (bits >> (e + 1) & 1u ? 0xFFFF0000u : 0u);
        else
          words[q] &= bits >> e & 1u ? 0xFFFFFFFFu : 0u;
      }
      reinterpret_cast<uint4*>(run)[v] = x;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kRun; ++j)
      if (!((bits >> j) & 1u)) run[along_k ? Tile::offset(0, j) : Tile::offset(j, 0)] = T{};
  }
}

// A part of a row of A' summed over the K tiles of a block, in a fixed order: every thread
// takes part t / kBlockM (kBlockK / kParts consecutive k) of row t % kBlockM of each staged
// tile, so all threads share the work and the serial loads per thread are divided by kParts;
// the parts are added in order when the block is done (parts_total). Compensated (Kahan): a
// plain running sum over millions of rows stops growing (float32 at 2^24 times the terms'
// size), where PyTorch's reductions do not. An infinite sum drops the compensation, which would
// turn it NaN.
template <typename Acc, int kBlockM, int kThreads> struct RowSum {
  static constexpr int kParts = kThreads / kBlockM;
  static_assert(kThreads % kBlockM == 0, "every row needs the same number of parts");
  Acc sum = 0, compensation = 0;

  template <class Tile, int kBlockK, typename T>
  __device__ __forceinline__ void add_tile(const T* tile) {
    constexpr int kLength = kBlockK / kParts;
    static_assert(kBlockK % kParts == 0, "every part of a row needs the same length");
    const int m = threadIdx.x % kBlockM, k0 = threadIdx.x / kBlockM * kLength;
    Acc tile_sum = 0;
#pragma unroll 8
    for (int k = k0; k < k0 + kLength; ++k) tile_sum += to_acc(tile[Tile::offset(m, k)]);
    const Acc y = tile_sum - compensation;
    const Acc t = sum + y;
    compensation = isfinite(t) ? (t - sum) - y : Acc(0);
    sum = t;
  }

  // The sum of row threadIdx.x (< kBlockM): every thread stores its part into `parts`
  // (kThreads elements of shared memory), then the first kBlockM add them. All threads call it.
  __device__ __forceinline__ Acc parts_total(Acc* parts) const {
    parts[threadIdx.x] = sum;
    __syncthreads();
    Acc total = 0;
    if (threadIdx.x < kBlockM)
#pragma unroll
      for (int p = 0; p < kParts; ++p) total += parts[p * kBlockM + threadIdx.x];
    return total;
  }
};

}  // namespace fused_linreg::cuda

// Part of the CUDA GEMM core (see gemm.cuh): the kernels. The GEMM kernel (pipeline, prologue,
// math, epilogue of one output tile) and the split-K kernel that sums the slices' partials.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cuda/cp_async.cuh"
#include "cuda/gemm.h"
#include "cuda/gemm_config.cuh"
#include "cuda/gemm_epilogue.cuh"
#include "cuda/gemm_prologue.cuh"
#include "cuda/gemm_staging.cuh"
#include "cuda/numeric.cuh"

namespace fused_linreg::cuda {

template <class Cfg, Layout kA, Layout kB>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocksPerSM)
    gemm_kernel(const GemmArgs<typename Cfg::Element> g, const GemmPlan<typename Cfg::Acc> plan) {
  using T = typename Cfg::Element;
  using Acc = typename Cfg::Acc;
  using Smem = GemmSharedMemory<Cfg, kA, kB>;
  using TileA = typename Smem::TileA;
  using TileB = typename Smem::TileB;
  constexpr int kStages = Cfg::kStages, kBlockK = Cfg::kBlockK;
  static_assert(kStages >= 2, "the pipeline needs a stage to load while another is used");

  extern __shared__ __align__(128) unsigned char shared[];
  T* const stages = reinterpret_cast<T*>(shared);

  const TileIndex tile = tile_index(blockIdx.x, plan.tiles_m, plan.tiles_n);
  const int64_t m0 = tile.m * Cfg::kBlockM, n0 = tile.n * Cfg::kBlockN;
  const int64_t kt_begin = int64_t(blockIdx.y) * plan.k_tiles_per_split;
  const int64_t kt_end = std::min(kt_begin + plan.k_tiles_per_split, plan.k_tiles);
  // The bias gradient is summed once per row of A: by the blocks of the first tile column.
  const bool sums_rows = g.a_row_sums != nullptr && tile.n == 0;
  const bool has_output = g.N > 0;  // N == 0: only the row sums are wanted

  auto stage_k_tile = [&](int stage, int64_t kt) {
    T* a_tile = stages + stage * Smem::kStageElements;
    const int64_t k0 = kt * kBlockK;
    stage_tile<TileA, Cfg::kThreads>(a_tile, a_source<kA>(g, m0, k0, plan.a_copy_bytes));
    if (has_output)
      stage_tile<TileB, Cfg::kThreads>(a_tile + TileA::kElements,
                                       b_source<kB>(g, n0, k0, plan.b_copy_bytes));
  };

  typename Cfg::template Math<kA, kB> math;
  RowSum<Acc, Cfg::kBlockM, Cfg::kThreads> row_sum;

  // Pipeline: k-tile i is staged in buffer i % kStages, kStages - 1 tiles ahead of its use.
  // Every iteration commits one (possibly empty) group, so "all but the newest kStages - 2
  // groups have landed" means exactly "k-tile i has landed".
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (kt_begin + s < kt_end) stage_k_tile(s, kt_begin + s);
    cp_async_commit();
  }
  for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
    const int64_t i = kt - kt_begin;
    cp_async_wait<kStages - 2>();
    // k-tile i is visible to all threads, and all are done with the buffer refilled next.
    __syncthreads();
    if (kt + kStages - 1 < kt_end) stage_k_tile(int((i + kStages - 1) % kStages), kt + kStages - 1);
    cp_async_commit();

    T* a_tile = stages + (i % kStages) * Smem::kStageElements;
    if (g.a_mask.bits != nullptr) {
      apply_relu_mask<TileA, Cfg::kBlockM, kBlockK, Cfg::kThreads>(a_tile, g, m0, kt * kBlockK);
      __syncthreads();
    }
    if (sums_rows) row_sum.template add_tile<TileA, kBlockK>(a_tile);
    if (has_output) math.multiply(a_tile, a_tile + TileA::kElements);
  }
  cp_async_wait<0>();
  __syncthreads();  // all reads of the stage buffers are done: reuse them for the output tile

  Acc* const c_tile = reinterpret_cast<Acc*>(shared);
  math.store(c_tile, Smem::kOutputPitch);
  if (sums_rows) {  // uniform across the block
    const Acc sum = row_sum.parts_total(reinterpret_cast<Acc*>(shared + Smem::kRowSumPartsOffset));
    const int64_t m = m0 + threadIdx.x;
    if (threadIdx.x < Cfg::kBlockM && m < g.M) {
      if (plan.splits > 1)
        plan.row_sum_partials[blockIdx.y * g.M + m] = sum;
      else
        g.a_row_sums[m] = sum;
    }
  }
  if (!has_output) return;
  __syncthreads();
  write_tile<Cfg>(g, plan, c_tile, Smem::kOutputPitch, m0, n0);
}

// Split-K: sums the slices' partials in slice order and applies the epilogue; one warp per 32
// columns of a row, then one thread per row of the bias-gradient sums. Grid-stride loops.
template <typename T, typename Acc>
__global__ void sum_split_partials_kernel(const GemmArgs<T> g, const GemmPlan<Acc> plan) {
  const int lane = threadIdx.x % 32;
  const int64_t thread = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  const int64_t segments_per_row = (g.N + 31) / 32;
  const int64_t segments = g.M * segments_per_row;
  for (int64_t s = thread / 32; s < segments; s += threads / 32) {  // uniform across the warp
    const int64_t m = s / segments_per_row, n0 = s % segments_per_row * 32, n = n0 + lane;
    Acc v = 0;
    if (n < g.N)
      for (int split = 0; split < plan.splits; ++split) v += plan.partials[(split * g.M + m) * g.N + n];
    store_output_segment(g, m, n0, v, lane);
  }
  if (plan.row_sum_partials == nullptr) return;
  for (int64_t m = thread; m < g.M; m += threads) {
    Acc sum = 0;
    for (int split = 0; split < plan.splits; ++split) sum += plan.row_sum_partials[split * g.M + m];
    g.a_row_sums[m] = sum;
  }
}

}  // namespace fused_linreg::cuda

// Part of the CUDA GEMM core (see gemm.cuh): what a launch is made of. At compile time, the tile
// sizes per dtype and math mode and the shared-memory layout they give; at run time, the launch
// plan (filled by gemm() in gemm_launch.cuh) and the order in which blocks take the tiles.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/gemm.h"
#include "cuda/gemm_math.cuh"
#include "cuda/gemm_staging.cuh"

namespace fused_linreg::cuda {

// Configurations: tile sizes per dtype and math mode

template <typename T, MathMode kMode> struct GemmConfig;

// 128 x 128 tiles, 8 warps of 64 x 32. 16-bit tiles are small enough for a 4-deep pipeline and
// two blocks per SM; fp32 (TF32) tiles are twice the bytes, so 3 stages.
template <typename T> struct GemmConfig<T, MathMode::kTensorCore> {
  using Element = T;
  using Acc = float;
  static constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 32;
  static constexpr int kWarpsM = 2, kWarpsN = 4, kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kStages = sizeof(T) == 2 ? 4 : 3;
  static constexpr int kMinBlocksPerSM = sizeof(T) == 2 ? 2 : 1;  // 80 KiB each: two fit
  template <Layout kA, Layout kB>
  using Math = std::conditional_t<std::is_same_v<T, float>, Tf32Math<GemmConfig, kA, kB>,
                                  WmmaMath<GemmConfig, kA, kB>>;
};

// 256 threads with 8 x 8 (float) or 4 x 4 (double) outputs each.
template <typename T> struct GemmConfig<T, MathMode::kSimt> {
  using Element = T;
  using Acc = T;
  static constexpr int kBlockM = sizeof(T) == 8 ? 64 : 128, kBlockN = kBlockM, kBlockK = 32;
  static constexpr int kThreads = 256, kStages = 3, kMinBlocksPerSM = 1;
  template <Layout kA, Layout kB> using Math = SimtMath<GemmConfig, kA, kB>;
};

template <class Cfg, Layout kA, Layout kB> struct GemmSharedMemory {
  using T = typename Cfg::Element;
  using Acc = typename Cfg::Acc;
  using TileA = OperandTile<T, kA, Cfg::kBlockM, Cfg::kBlockK>;
  using TileB = OperandTile<T, kB, Cfg::kBlockN, Cfg::kBlockK>;
  static constexpr int kStageElements = TileA::kElements + TileB::kElements;
  // The accumulator tile for the epilogue, then the parts of the row sums, reuse the pipeline's
  // buffers.
  static constexpr int kOutputPitch = Cfg::kBlockN + 16 / int(sizeof(Acc));
  static constexpr int kRowSumPartsOffset = Cfg::kBlockM * kOutputPitch * int(sizeof(Acc));
  static constexpr int kBytes = std::max<int>(Cfg::kStages * kStageElements * int(sizeof(T)),
                                              kRowSumPartsOffset + Cfg::kThreads * int(sizeof(Acc)));
};

// Launch plan and tile order

template <typename Acc> struct GemmPlan {
  int64_t tiles_m = 0, tiles_n = 0;
  int64_t k_tiles = 0, k_tiles_per_split = 0;
  int splits = 1;
  int a_copy_bytes = 0, b_copy_bytes = 0;  // see copy_bytes() in gemm_launch.cuh
  Acc* partials = nullptr;          // split-K: [splits][M][N]
  Acc* row_sum_partials = nullptr;  // split-K with row sums: [splits][M]
};

// Tile `t` of a grid grouped by 8 tile rows: consecutive blocks walk down a column of 8 tiles
// before moving right, so the B tiles they share are still in L2.
struct TileIndex {
  int64_t m, n;
};
__device__ __forceinline__ TileIndex tile_index(int64_t t, int64_t tiles_m, int64_t tiles_n) {
  constexpr int64_t kGroupRows = 8;
  const int64_t per_group = kGroupRows * tiles_n;
  const int64_t first_m = t / per_group * kGroupRows;
  const int64_t rows = std::min(tiles_m - first_m, kGroupRows);
  const int64_t in_group = t % per_group;
  return {first_m + in_group % rows, in_group / rows};
}

}  // namespace fused_linreg::cuda

// Part of the CUDA GEMM core (see gemm.cuh): operand tiles in shared memory, their layout and
// the cp.async copies that stage them. The pipeline that cycles the stages is in gemm_kernel.cuh.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cuda/cp_async.cuh"
#include "cuda/gemm.h"

namespace fused_linreg::cuda {

// Which dimension of an operand has unit stride: K (A row-major and B column-major, as x and W
// are in the forward) or M / N (the transposed views the backward reads).
enum class Layout { kKMajor, kMNMajor };

// A kMN x kK tile of an operand (A: m x k, B: n x k), stored as it lies in global memory: one
// smem row per step of the strided dimension, each a run of elements that are contiguous in
// global memory, padded so that consecutive rows start in different banks: by 16 bytes (the 8
// rows of an ldmatrix then cover all 32 banks), by 32 for float M/N-major tiles, whose TF32
// fragments are read element by element from 4 consecutive rows (8 words of each: 32 banks).
template <typename T, Layout kTileLayout, int kMN, int kK> struct OperandTile {
  static constexpr Layout kLayout = kTileLayout;
  static constexpr int kRows = kLayout == Layout::kKMajor ? kMN : kK;
  static constexpr int kCols = kLayout == Layout::kKMajor ? kK : kMN;
  static constexpr int kPadBytes = sizeof(T) == 4 && kLayout == Layout::kMNMajor ? 32 : 16;
  static constexpr int kPitch = kCols + kPadBytes / int(sizeof(T));
  static constexpr int kElements = kRows * kPitch;
  // WMMA fragments need 32-byte aligned addresses: keep every tile in the stage buffer aligned.
  static_assert(kElements * sizeof(T) % 128 == 0, "tiles must keep 128-byte alignment");

  __device__ static int offset(int mn, int k) {
    return kLayout == Layout::kKMajor ? mn * kPitch + k : k * kPitch + mn;
  }
};

// Where a tile comes from: tile element (r, c) is src[(row0 + r) * ld + col0 + c], present when
// row0 + r < rows and col0 + c < cols; absent elements are staged as zeros.
template <typename T> struct TileSource {
  const T* src;
  int64_t ld;
  int64_t row0, rows;
  int64_t col0, cols;
  int copy_bytes;  // the widest copy every row's alignment allows (copy_bytes(), gemm_launch.cuh)
};

// Issues the cp.async copies of one tile, kBytes each: runs of kBytes / sizeof(T) elements of a
// row, zero-filled past its end.
template <class Tile, int kThreads, int kBytes, typename T>
__device__ __forceinline__ void stage_tile_copies(T* dst, const TileSource<T>& s) {
  constexpr int kVec = kBytes / int(sizeof(T));
  constexpr int kChunksPerRow = Tile::kCols / kVec;
  constexpr int kChunks = Tile::kRows * kChunksPerRow;
  static_assert(kVec >= 1 && Tile::kCols % kVec == 0 && kChunks % kThreads == 0,
                "tiles must be whole copies, the same number for every thread");
  // Unrolled by 4 at most: narrow copies are up to 16 per thread, whose addresses would
  // otherwise all be live at once.
#pragma unroll 4
  for (int j = 0; j < kChunks / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * kVec;
    const int64_t row = s.row0 + r, col = s.col0 + c;
    const int64_t in_row = std::min<int64_t>(std::max<int64_t>(s.cols - col, 0), kVec);
    const int64_t valid = row < s.rows ? in_row : 0;
    const T* src = valid > 0 ? s.src + row * s.ld + col : s.src;
    cp_async<kBytes>(dst + r * Tile::kPitch + c, src, int(valid * int64_t(sizeof(T))));
  }
}

// Issues the copies of one tile into shared memory: asynchronous, except for 16-bit rows that are
// only 2-byte aligned (odd K, a slice one element in), copied through registers because cp.async
// has no 2-byte form. The caller commits and waits.
template <class Tile, int kThreads, typename T>
__device__ __forceinline__ void stage_tile(T* dst, const TileSource<T>& s) {
  if (s.copy_bytes == 16) {
    stage_tile_copies<Tile, kThreads, 16>(dst, s);
  } else if (sizeof(T) == 8 || s.copy_bytes == 8) {
    stage_tile_copies<Tile, kThreads, 8>(dst, s);
  } else if constexpr (sizeof(T) == 4) {
    stage_tile_copies<Tile, kThreads, 4>(dst, s);
  } else if constexpr (sizeof(T) == 2) {
    if (s.copy_bytes == 4) {
      stage_tile_copies<Tile, kThreads, 4>(dst, s);
    } else {
      constexpr int kCount = Tile::kRows * Tile::kCols;
      for (int i = threadIdx.x; i < kCount; i += kThreads) {
        const int r = i / Tile::kCols, c = i % Tile::kCols;
        const int64_t row = s.row0 + r, col = s.col0 + c;
        const bool valid = row < s.rows && col < s.cols;
        const T* src = valid ? s.src + row * s.ld + col : s.src;
        *reinterpret_cast<uint16_t*>(dst + r * Tile::kPitch + c) =
            valid ? *reinterpret_cast<const uint16_t*>(src) : 0;
      }
    }
  }
}

// The tile of A at (m0, k0) and of B at (n0, k0), in the tile's own row/column terms.
template <Layout kLayout, typename T>
__device__ __forceinline__ TileSource<T> a_source(const GemmArgs<T>& g, int64_t m0, int64_t k0,
                                                  int copy_bytes) {
  if constexpr (kLayout == Layout::kKMajor) return {g.a, g.a_rs, m0, g.M, k0, g.K, copy_bytes};
  else return {g.a, g.a_cs, k0, g.K, m0, g.M, copy_bytes};
}
template <Layout kLayout, typename T>
__device__ __forceinline__ TileSource<T> b_source(const GemmArgs<T>& g, int64_t n0, int64_t k0,
                                                  int copy_bytes) {
  if constexpr (kLayout == Layout::kKMajor) return {g.b, g.b_cs, n0, g.N, k0, g.K, copy_bytes};
  else return {g.b, g.b_rs, k0, g.K, n0, g.N, copy_bytes};
}

}  // namespace fused_linreg::cuda

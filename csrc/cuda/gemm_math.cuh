// Part of the CUDA GEMM core (see gemm.cuh): the math. Multiplies one staged pair of tiles into
// per-thread accumulators, then stores them as a row-major tile in shared memory for the
// epilogue. The three variants (WMMA, TF32 mma.sync, SIMT FMA) share that interface.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda/cp_async.cuh"
#include "cuda/gemm_staging.cuh"
#include "cuda/numeric.cuh"
#include "cuda/tensor_core.cuh"

namespace fused_linreg::cuda {

// A tile element (mn, k) lies at mn * pitch + k (K-major) or k * pitch + mn: for A (m x k) that
// is row- / column-major, for B (k x n) column- / row-major.
template <Layout kLayout>
using WmmaLayoutA =
    std::conditional_t<kLayout == Layout::kKMajor, wmma::row_major, wmma::col_major>;
template <Layout kLayout>
using WmmaLayoutB =
    std::conditional_t<kLayout == Layout::kKMajor, wmma::col_major, wmma::row_major>;

// Tensor cores on 16-bit types: each warp owns a (kBlockM / kWarpsM) x (kBlockN / kWarpsN) part
// of the tile as 16 x 16 x 16 WMMA fragments, accumulating in fp32.
template <class Cfg, Layout kA, Layout kB> struct WmmaMath {
  using T = typename Cfg::Element;
  using TileA = OperandTile<T, kA, Cfg::kBlockM, Cfg::kBlockK>;
  using TileB = OperandTile<T, kB, Cfg::kBlockN, Cfg::kBlockK>;
  static constexpr int kWarpM = Cfg::kBlockM / Cfg::kWarpsM, kWarpN = Cfg::kBlockN / Cfg::kWarpsN;
  static constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 16;
  static_assert(sizeof(T) == 2 && kWarpM % 16 == 0 && kWarpN % 16 == 0 && Cfg::kBlockK % 16 == 0);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragsM][kFragsN];
  int warp_m0, warp_n0;

  __device__ WmmaMath() {
    const int warp = threadIdx.x / 32;
    warp_m0 = warp / Cfg::kWarpsN * kWarpM;
    warp_n0 = warp % Cfg::kWarpsN * kWarpN;
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ void multiply(const T* a_tile, const T* b_tile) {
    const uint32_t a_base = shared_address(a_tile), b_base = shared_address(b_tile);
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, WmmaLayoutA<kA>> a[kFragsM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, WmmaLayoutB<kB>> b[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
        load_shared(a[i], a_base + TileA::offset(warp_m0 + 16 * i, kk) * sizeof(T), TileA::kPitch);
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
        load_shared(b[j], b_base + TileB::offset(warp_n0 + 16 * j, kk) * sizeof(T), TileB::kPitch);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(float* c_tile, int pitch) const {
    const uint32_t base = shared_address(c_tile);
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
        store_shared(base + ((warp_m0 + 16 * i) * pitch + warp_n0 + 16 * j) * sizeof(float),
                     acc[i][j], pitch);
  }
};

// Tensor cores on float: TF32 mma.sync m16n8k8 (fragment layouts in tensor_core.cuh), each warp
// owning a (kBlockM / kWarpsM) x (kBlockN / kWarpsN) part of the tile as 16 x 8 fragments. A
// K-major operand is loaded with ldmatrix (a 16 x 8 A fragment, or two 8 x 8 B fragments, per
// instruction); an M/N-major one element by element (conflict-free with that tile's pitch).
template <class Cfg, Layout kA, Layout kB> struct Tf32Math {
  using TileA = OperandTile<float, kA, Cfg::kBlockM, Cfg::kBlockK>;
  using TileB = OperandTile<float, kB, Cfg::kBlockN, Cfg::kBlockK>;
  static constexpr int kWarpM = Cfg::kBlockM / Cfg::kWarpsM, kWarpN = Cfg::kBlockN / Cfg::kWarpsN;
  static constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0 && Cfg::kBlockK % 8 == 0);

  float acc[kFragsM][kFragsN][4];
  int warp_m0, warp_n0, lane;

  __device__ Tf32Math() {
    const int warp = threadIdx.x / 32;
    lane = threadIdx.x % 32;
    warp_m0 = warp / Cfg::kWarpsN * kWarpM;
    warp_n0 = warp % Cfg::kWarpsN * kWarpN;
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  }

  // The A fragment of rows m0..m0 + 15, k kk..kk + 7.
  __device__ void load_a(uint32_t (&a)[4], uint32_t base, int m0, int kk) const {
    if constexpr (kA == Layout::kKMajor) {  // matrices: rows +0 / +8, k +0 / +4
      const int q = lane / 8;
      ldmatrix_x4(a, base + TileA::offset(m0 + lane % 8 + 8 * (q % 2), kk + 4 * (q / 2)) * 4);
    } else {
      const int g = lane / 4, t = lane % 4;
#pragma unroll
      for (int r = 0; r < 4; ++r)
        a[r] = load_shared_u32(base + TileA::offset(m0 + g + 8 * (r % 2), kk + t + 4 * (r / 2)) * 4);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = round_to_tf32(a[r]);
  }

  // The B fragments of columns n0..n0 + 7 and n0 + 8..n0 + 15, k kk..kk + 7.
  __device__ void load_b_pair(uint32_t (&b0)[2], uint32_t (&b1)[2], uint32_t base, int n0,
                              int kk) const {
    uint32_t r[4];
    if constexpr (kB == Layout::kKMajor) {  // matrices: columns +0 / +8, k +0 / +4
      const int q = lane / 8;
      ldmatrix_x4(r, base + TileB::offset(n0 + lane % 8 + 8 * (q / 2), kk + 4 * (q % 2)) * 4);
    } else {
      const int g = lane / 4, t = lane % 4;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        r[i] = load_shared_u32(base + TileB::offset(n0 + g + 8 * (i / 2), kk + t + 4 * (i % 2)) * 4);
    }
    b0[0] = round_to_tf32(r[0]);
    b0[1] = round_to_tf32(r[1]);
    b1[0] = round_to_tf32(r[2]);
    b1[1] = round_to_tf32(r[3]);
  }

  __device__ void multiply(const float* a_tile, const float* b_tile) {
    const uint32_t a_base = shared_address(a_tile), b_base = shared_address(b_tile);
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockK; kk += 8) {
      uint32_t a[kFragsM][4], b[kFragsN][2];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) load_a(a[i], a_base, warp_m0 + 16 * i, kk);
#pragma unroll
      for (int j = 0; j < kFragsN; j += 2) load_b_pair(b[j], b[j + 1], b_base, warp_n0 + 8 * j, kk);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) mma_tf32_m16n8k8(acc[i][j], a[i], b[j]);
    }
  }

  __device__ void store(float* c_tile, int pitch) const {
    const uint32_t base = shared_address(c_tile);
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = warp_m0 + 16 * i + g + 8 * h, col = warp_n0 + 8 * j + 2 * t;
          store_shared_f32x2(base + (row * pitch + col) * 4, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
        }
  }
};

// CUDA cores, exact: 16 x 16 threads, thread (tm, tn) owning rows tm + 16 i and columns
// tn + 16 j of the tile. Interleaving (rather than contiguous blocks per thread) makes the
// threads of a warp read neighbouring rows and columns: few bank conflicts, many broadcasts.
template <class Cfg, Layout kA, Layout kB> struct SimtMath {
  using T = typename Cfg::Element;
  using Acc = acc_t<T>;
  using TileA = OperandTile<T, kA, Cfg::kBlockM, Cfg::kBlockK>;
  using TileB = OperandTile<T, kB, Cfg::kBlockN, Cfg::kBlockK>;
  static constexpr int kSide = 16;
  static_assert(Cfg::kThreads == kSide * kSide);
  static constexpr int kRows = Cfg::kBlockM / kSide, kCols = Cfg::kBlockN / kSide;

  Acc acc[kRows][kCols];
  int tm, tn;

  __device__ SimtMath() : tm(threadIdx.x / kSide), tn(threadIdx.x % kSide) {
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[i][j] = Acc(0);
  }

  __device__ void multiply(const T* a_tile, const T* b_tile) {
#pragma unroll 4
    for (int k = 0; k < Cfg::kBlockK; ++k) {
      Acc a[kRows], b[kCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i) a[i] = to_acc(a_tile[TileA::offset(tm + kSide * i, k)]);
#pragma unroll
      for (int j = 0; j < kCols; ++j) b[j] = to_acc(b_tile[TileB::offset(tn + kSide * j, k)]);
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(Acc* c_tile, int pitch) const {
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kCols; ++j) c_tile[(tm + kSide * i) * pitch + tn + kSide * j] = acc[i][j];
  }
};

}  // namespace fused_linreg::cuda

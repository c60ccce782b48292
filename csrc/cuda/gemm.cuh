// The GEMM core of the CUDA kernels (gemm.h says what it computes), written once and explicitly
// instantiated per dtype and math mode in gemm_<dtype>_<mode>.cu, so that nvcc compiles the
// variants in parallel.
//
// Structure. A 1-D grid of kBlockM x kBlockN output tiles (grouped along M so that neighbouring
// blocks share operand tiles in L2), times a split of K when there are too few tiles to fill the
// GPU. Each block streams kBlockK-deep tiles of A and B through a kStages-deep cp.async pipeline
// in shared memory. When a tile of A has landed, the prologue applies the ReLU mask to it in
// place and adds its rows into the bias-gradient sums; then the math (tensor-core WMMA or SIMT
// FMA) multiplies the staged pair. When K is done, the accumulators go through shared memory so
// that the epilogue walks whole rows: one warp per 32 columns of a row, coalesced stores, and
// one __ballot_sync per 32 outputs gives a word of the ReLU bitmask. Split-K blocks instead
// write fp32 (fp64) partials, which a second kernel sums in slice order (fixed, so the result
// is the same bits every run) before the same epilogue.
//
// Tails: every global access is bounds-checked against M, N and K; what lies outside a tile's
// range is staged as zeros, so the math never needs to know about tails.
#pragma once
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/cp_async.cuh"
#include "cuda/gemm.h"
#include "cuda/numeric.cuh"
#include "cuda/sgd_math.cuh"
#include "cuda/tensor_core.cuh"

namespace fused_linreg::cuda {

// ---------------------------------------------------------------------------------------------
// Operand tiles in shared memory

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
  int copy_bytes;  // the widest copy every row's alignment allows (copy_bytes() on the host)
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

// ---------------------------------------------------------------------------------------------
// Prologue on a staged tile of A: ReLU mask and bias-gradient row sums

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
  const uint32_t bits = g.a_mask[mask_row * g.a_mask_row_words + mask_word] >> bit0;
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

// ---------------------------------------------------------------------------------------------
// Math: multiplies one staged pair of tiles into per-thread accumulators, then stores them as a
// row-major tile in shared memory for the epilogue. Both variants share that interface.

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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// Launch plan, tile order, epilogue

template <typename Acc> struct GemmPlan {
  int64_t tiles_m = 0, tiles_n = 0;
  int64_t k_tiles = 0, k_tiles_per_split = 0;
  int splits = 1;
  int a_copy_bytes = 0, b_copy_bytes = 0;  // see copy_bytes()
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

// Optimizer in backward: v is the gradient of s.param[i]; one torch.optim.SGD step.
template <typename T>
__device__ __forceinline__ void sgd_epilogue(const SgdEpilogue<T>& s, int64_t i, acc_t<T> v) {
  using Acc = acc_t<T>;
  const SgdCoefficients<Acc> coefficients(s.lr, s.momentum, s.dampening, s.weight_decay,
                                          s.nesterov, s.maximize);
  const bool has_buf = s.momentum_buffer != nullptr;
  Acc buf = has_buf ? to_acc(s.momentum_buffer[i]) : Acc(0);
  // The gradient is rounded to the parameter's dtype first, as autograd would store it.
  const Acc grad = to_acc(from_acc<T>(v));
  s.param[i] = from_acc<T>(
      sgd_update(to_acc(s.param[i]), grad, buf, has_buf, s.init_momentum_buffer, coefficients));
  if (has_buf) s.momentum_buffer[i] = from_acc<T>(buf);
}

// The epilogue for outputs (m, n0 + lane) of one warp, n0 a multiple of 32 below N: bias, ReLU
// (torch.relu's: NaN and -0.0 stay), cast, store, and the bitmask word of those 32 outputs; or
// the SGD update. A bit is set where the ReLU passes the gradient as PyTorch's backward decides
// from the stored output (threshold_backward: out <= 0 ? 0 : grad), i.e. positive or NaN. All 32
// lanes must call it.
template <typename T>
__device__ __forceinline__ void store_output_segment(const GemmArgs<T>& g, int64_t m, int64_t n0,
                                                     acc_t<T> v, int lane) {
  using Acc = acc_t<T>;
  const int64_t n = n0 + lane;
  const bool inside = n < g.N;
  if (g.sgd.param != nullptr) {
    if (inside) sgd_epilogue(g.sgd, m * g.ldc + n, v);
    return;
  }
  if (g.bias != nullptr && inside) v += to_acc(g.bias[n]);
  if (g.relu) v = v < Acc(0) ? Acc(0) : v;
  const T out = from_acc<T>(v);
  if (inside) g.c[m * g.ldc + n] = out;
  if (g.c_mask != nullptr) {
    const uint32_t word = __ballot_sync(0xffffffffu, inside && !(to_acc(out) <= Acc(0)));
    if (lane == 0) g.c_mask[m * g.c_mask_row_words + n0 / 32] = word;
  }
}

// Writes the finished accumulator tile (row-major in shared memory) at (m0, n0): through the
// epilogue, or as this split's partial sums.
template <class Cfg, typename T, typename Acc>
__device__ __forceinline__ void write_tile(const GemmArgs<T>& g, const GemmPlan<Acc>& plan,
                                           const Acc* c_tile, int pitch, int64_t m0, int64_t n0) {
  constexpr int kWarps = Cfg::kThreads / 32, kSegments = Cfg::kBlockN / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int s = warp; s < Cfg::kBlockM * kSegments; s += kWarps) {
    const int r = s / kSegments, c = s % kSegments * 32;
    const int64_t m = m0 + r, n = n0 + c;
    if (m >= g.M || n >= g.N) continue;  // uniform across the warp
    const Acc v = c_tile[r * pitch + c + lane];
    if (plan.splits > 1) {
      if (n + lane < g.N) plan.partials[(blockIdx.y * g.M + m) * g.N + n + lane] = v;
    } else {
      store_output_segment(g, m, n, v, lane);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels

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
    if (g.a_mask != nullptr) {
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
        g.a_row_sums[m] = from_acc<T>(sum);
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
    g.a_row_sums[m] = from_acc<T>(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The widest cp.async copy (16, 8 or 4 bytes) that every row of an operand allows, `rows` rows of
// `ld` elements pitch from p: the first element and the pitch must be multiples of it (a single
// row has no pitch). 2 for 16-bit rows that are only 2-byte aligned.
template <typename T> int copy_bytes(const T* p, int64_t ld, int64_t rows) {
  const uint64_t offsets =
      reinterpret_cast<uintptr_t>(p) | (rows > 1 ? uint64_t(ld) * sizeof(T) : 0);
  for (int bytes : {16, 8, 4})
    if (offsets % bytes == 0) return bytes;
  return 2;
}

template <class Cfg, Layout kA, Layout kB>
void launch_gemm_kernel(const GemmArgs<typename Cfg::Element>& g, GemmPlan<typename Cfg::Acc> plan,
                        const GemmContext& context) {
  using Smem = GemmSharedMemory<Cfg, kA, kB>;
  TORCH_CHECK(size_t(Smem::kBytes) <= context.max_shared_memory,
              "fused_linreg: the CUDA GEMM for ", sizeof(typename Cfg::Element) * 8,
              "-bit elements needs ", Smem::kBytes,
              " bytes of shared memory per block, this GPU offers ", context.max_shared_memory,
              " (the kernels are tuned for sm_80 and sm_90: A100, H100)");
  plan.a_copy_bytes = kA == Layout::kKMajor ? copy_bytes(g.a, g.a_rs, g.M) : copy_bytes(g.a, g.a_cs, g.K);
  plan.b_copy_bytes = kB == Layout::kKMajor ? copy_bytes(g.b, g.b_cs, g.N) : copy_bytes(g.b, g.b_rs, g.K);
  auto* kernel = &gemm_kernel<Cfg, kA, kB>;
  // Above 48 KiB, dynamic shared memory must be opted into (per kernel; cheap, no sync).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Smem::kBytes));
  const dim3 grid(unsigned(plan.tiles_m * plan.tiles_n), unsigned(plan.splits));
  kernel<<<grid, Cfg::kThreads, Smem::kBytes, context.stream>>>(g, plan);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, MathMode kMode> void gemm(const GemmArgs<T>& g, const GemmContext& context) {
  using Cfg = GemmConfig<T, kMode>;
  using Acc = typename Cfg::Acc;
  if (g.M == 0 || (g.N == 0 && g.a_row_sums == nullptr)) return;
  TORCH_INTERNAL_ASSERT(g.a_cs == 1 || g.a_rs == 1, "A needs a unit stride");
  TORCH_INTERNAL_ASSERT(g.N == 0 || g.b_rs == 1 || g.b_cs == 1, "B needs a unit stride");

  GemmPlan<Acc> plan;
  plan.tiles_m = ceil_div(g.M, Cfg::kBlockM);
  plan.tiles_n = std::max<int64_t>(ceil_div(g.N, Cfg::kBlockN), 1);
  const int64_t tiles = plan.tiles_m * plan.tiles_n;
  TORCH_CHECK(tiles <= INT_MAX, "fused_linreg: a ", g.M, " x ", g.N,
              " GEMM output has more tiles than one CUDA grid can hold");
  plan.k_tiles = ceil_div(g.K, Cfg::kBlockK);

  // Split K when the tiles alone leave SMs idle and K is deep enough to share. The split is a
  // function of the shape and the SM count only, so a given GPU always sums in the same order.
  constexpr int64_t kMinKTilesPerSplit = 4;
  const int64_t sm_count = context.sm_count;
  int64_t splits = 1;
  if (tiles < sm_count && plan.k_tiles >= 2 * kMinKTilesPerSplit)
    splits = std::min(ceil_div(sm_count, tiles), plan.k_tiles / kMinKTilesPerSplit);
  plan.k_tiles_per_split = std::max<int64_t>(ceil_div(plan.k_tiles, splits), 1);
  plan.splits = int(std::max<int64_t>(ceil_div(plan.k_tiles, plan.k_tiles_per_split), 1));

  if (plan.splits > 1) {
    const int64_t outputs = g.M * g.N, rows = g.a_row_sums != nullptr ? g.M : 0;
    plan.partials = static_cast<Acc*>(
        context.allocate_workspace(size_t(plan.splits) * size_t(outputs + rows) * sizeof(Acc)));
    if (rows > 0) plan.row_sum_partials = plan.partials + plan.splits * outputs;
  }

  const bool a_k_major = g.a_cs == 1;
  const bool b_k_major = g.b_rs == 1;
  if (a_k_major && b_k_major)
    launch_gemm_kernel<Cfg, Layout::kKMajor, Layout::kKMajor>(g, plan, context);
  else if (a_k_major)
    launch_gemm_kernel<Cfg, Layout::kKMajor, Layout::kMNMajor>(g, plan, context);
  else if (b_k_major)
    launch_gemm_kernel<Cfg, Layout::kMNMajor, Layout::kKMajor>(g, plan, context);
  else
    launch_gemm_kernel<Cfg, Layout::kMNMajor, Layout::kMNMajor>(g, plan, context);

  if (plan.splits > 1) {
    constexpr int kThreads = 256;
    const int64_t work = std::max(g.M * ceil_div(g.N, 32) * 32, g.M);
    const int64_t blocks = std::min<int64_t>(ceil_div(work, kThreads), sm_count * 16);
    sum_split_partials_kernel<T, Acc><<<unsigned(blocks), kThreads, 0, context.stream>>>(g, plan);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace fused_linreg::cuda

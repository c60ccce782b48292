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

// The parts, in dependency order; each includes what it uses, so this order is for the reader.
// clang-format off
#include "cuda/gemm_staging.cuh"   // operand tiles in shared memory, cp.async staging
#include "cuda/gemm_prologue.cuh"  // on a staged tile of A: ReLU mask, bias-gradient row sums
#include "cuda/gemm_math.cuh"      // WMMA, TF32 mma.sync and SIMT math on a staged pair of tiles
#include "cuda/gemm_config.cuh"    // tile sizes per dtype and mode, shared memory, launch plan
#include "cuda/gemm_epilogue.cuh"  // bias, ReLU, bitmask, SGD update; split-K partials
#include "cuda/gemm_kernel.cuh"    // the GEMM kernel and the split-K sum kernel
#include "cuda/gemm_launch.cuh"    // host side: gemm(), the plan and the launch
// clang-format on

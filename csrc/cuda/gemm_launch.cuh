// Part of the CUDA GEMM core (see gemm.cuh): the host side. gemm() plans the launch (tiles, split
// of K, workspace), picks the kernel of the operands' layouts and launches it.
#pragma once
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/gemm.h"
#include "cuda/gemm_config.cuh"
#include "cuda/gemm_kernel.cuh"
#include "cuda/gemm_staging.cuh"

namespace fused_linreg::cuda {

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
  // The row sums are stored as Acc into acc_t<T>*: a translation unit that missed
  // cuda/storage.h's specializations would disagree with the op layer about their type.
  static_assert(std::is_same_v<Acc, acc_t<T>>, "a_row_sums must have the accumulator type");
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

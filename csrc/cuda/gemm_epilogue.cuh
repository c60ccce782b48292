// Part of the CUDA GEMM core (see gemm.cuh): the epilogue. Bias, ReLU, cast, store and the ReLU
// bitmask, or the in-backward SGD update; or, for split-K, the partial sums.
#pragma once
#include <cstdint>

#include "cuda/gemm.h"
#include "cuda/gemm_config.cuh"
#include "cuda/numeric.cuh"
#include "cuda/sgd_math.cuh"

namespace fused_linreg::cuda {

// Optimizer in backward: v is the gradient of s.param[i]; one torch.optim.SGD step.
template <typename T>
__device__ __forceinline__ void sgd_epilogue(const SgdEpilogue<T>& s, int64_t i, acc_t<T> v) {
  using Acc = acc_t<T>;
  const SgdOptions& o = s.options;
  const SgdCoefficients<Acc> coefficients(o.lr, o.momentum, o.dampening, o.weight_decay,
                                          o.nesterov, o.maximize);
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
  if (g.c_mask.bits != nullptr) {
    const uint32_t word = __ballot_sync(0xffffffffu, inside && !(to_acc(out) <= Acc(0)));
    uint32_t* const words = reinterpret_cast<uint32_t*>(g.c_mask.bits);  // 4-byte aligned rows
    if (lane == 0) words[m * (g.c_mask.row_bytes / 4) + n0 / 32] = word;
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

}  // namespace fused_linreg::cuda

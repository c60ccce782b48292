// cp.async (sm_80+): global -> shared copies that bypass registers and complete asynchronously,
// so the next tiles of a GEMM load while the current one is multiplied. Groups of copies are
// committed and waited for in order.
#pragma once
#include <cstdint>

namespace fused_linreg::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies src_bytes (0 to kBytes) bytes from global `src` to shared `dst` and zero-fills the rest
// of the kBytes: a partial or empty source is how tile tails become zeros. Both addresses must be
// kBytes-aligned; nothing is read when src_bytes == 0. 16-byte copies bypass L1 (.cg), which
// only that size may.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(dst)),
                 "l"(src), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending committed groups are still in flight.
template <int kPending> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace fused_linreg::cuda

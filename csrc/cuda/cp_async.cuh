// cp.async (sm_80+): global -> shared copies that bypass registers and complete asynchronously,
// so the next tiles of a GEMM load while the current one is multiplied. Groups of copies are
// committed and waited for in order.
#pragma once
#include <cstdint>

namespace fused_linreg::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies src_bytes (0 to 16) bytes from global `src` to shared `dst` and zero-fills the rest of
// the 16 bytes: a partial or empty source is how tile tails become zeros. Both addresses must be
// 16-byte aligned; nothing is read when src_bytes == 0.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}

// One 4- or 8-byte element, zero-filled when !valid: for operands whose rows are not 16-byte
// aligned.
template <int kBytes>
__device__ __forceinline__ void cp_async_element(void* dst, const void* src, bool valid) {
  static_assert(kBytes == 4 || kBytes == 8, "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(dst)),
               "l"(src), "n"(kBytes), "r"(valid ? kBytes : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending committed groups are still in flight.
template <int kPending> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace fused_linreg::cuda

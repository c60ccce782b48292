// PTX wrappers for the tensor-core math, all on explicit shared-memory addresses (from
// __cvta_generic_to_shared: shared_address in cp_async.cuh).
//
// 16-bit types use WMMA, but not wmma::load_matrix_sync / store_matrix_sync: those take generic
// pointers and leave it to NVVM to find that they point to shared memory, which it does for the
// f16 intrinsics (ptxas then loads with LDSM) but not for the bf16 ones, which become generic
// LD.E: slower loads that also occupy the global-memory path the cp.async pipeline uses. The
// overloads here name the .shared state space in the PTX themselves; the fragments stay
// wmma::fragment, so wmma::mma_sync and the fragment layouts are WMMA's.
//
// TF32 uses mma.sync m16n8k8 directly, whose fragment layouts PTX documents: ldmatrix can then
// load K-major tiles (a TF32 element is two b16 halves of an ldmatrix row) and the accumulators
// are stored with plain shared stores.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstring>

namespace fused_linreg::cuda {

namespace wmma = nvcuda::wmma;

// ---- WMMA on 16-bit types ----------------------------------------------------------------------

// The inline PTX of a fragment load with 4 or 8 32-bit registers, into uint32_t r[], from the
// shared address `address` with a stride of `ldm` elements. "memory": it must not move across
// the barriers and cp.async waits that make the tile visible.
#define FUSED_LINREG_WMMA_LOAD_4(instruction)                                            \
  asm volatile(instruction " {%0, %1, %2, %3}, [%4], %5;\n"                              \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                          \
               : "r"(address), "r"(ldm)                                                  \
               : "memory")
#define FUSED_LINREG_WMMA_LOAD_8(instruction)                                            \
  asm volatile(instruction " {%0, %1, %2, %3, %4, %5, %6, %7}, [%8], %9;\n"              \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]), "=r"(r[4]), "=r"(r[5]), \
                 "=r"(r[6]), "=r"(r[7])                                                  \
               : "r"(address), "r"(ldm)                                                  \
               : "memory")

// load_shared(fragment, address, ldm) for one fragment type: the PTX wmma.load of that type
// (the instruction wmma::load_matrix_sync emits, plus .shared).
#define FUSED_LINREG_WMMA_LOAD_SHARED(USE, T, LAYOUT, REGISTERS, instruction)                \
  __device__ __forceinline__ void load_shared(                                               \
      wmma::fragment<wmma::USE, 16, 16, 16, T, wmma::LAYOUT>& f, uint32_t address,          \
      unsigned ldm) {                                                                        \
    uint32_t r[REGISTERS];                                                                   \
    FUSED_LINREG_WMMA_LOAD_##REGISTERS(instruction);                                         \
    static_assert(sizeof(r) == sizeof(f.x), "a fragment is " #REGISTERS " registers");       \
    memcpy(&f.x, r, sizeof(r));                                                              \
  }
// Both layouts of operand `ab` (a or b) of element type T (PTX type ptx_type).
#define FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS(USE, ab, T, ptx_type, REGISTERS)               \
  FUSED_LINREG_WMMA_LOAD_SHARED(USE, T, row_major, REGISTERS,                                \
                                "wmma.load." ab ".sync.aligned.row.m16n16k16.shared." ptx_type) \
  FUSED_LINREG_WMMA_LOAD_SHARED(USE, T, col_major, REGISTERS,                                \
                                "wmma.load." ab ".sync.aligned.col.m16n16k16.shared." ptx_type)

FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS(matrix_a, "a", __nv_bfloat16, "bf16", 4)
FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS(matrix_b, "b", __nv_bfloat16, "bf16", 4)
FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS(matrix_a, "a", __half, "f16", 8)
FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS(matrix_b, "b", __half, "f16", 8)

#undef FUSED_LINREG_WMMA_LOAD_SHARED_LAYOUTS
#undef FUSED_LINREG_WMMA_LOAD_SHARED
#undef FUSED_LINREG_WMMA_LOAD_8
#undef FUSED_LINREG_WMMA_LOAD_4

// Stores an fp32 accumulator fragment row-major at the shared address `address`, rows `ldm`
// elements apart.
__device__ __forceinline__ void store_shared(
    uint32_t address, const wmma::fragment<wmma::accumulator, 16, 16, 16, float>& f,
    unsigned ldm) {
  asm volatile(
      "wmma.store.d.sync.aligned.row.m16n16k16.shared.f32 [%0], {%1, %2, %3, %4, %5, %6, %7, "
      "%8}, %9;\n" ::"r"(address),
      "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]), "f"(f.x[5]), "f"(f.x[6]),
      "f"(f.x[7]), "r"(ldm)
      : "memory");
}

// ---- mma.sync m16n8k8 on TF32 ------------------------------------------------------------------

// Four 8 x 8 matrices of 16-bit elements (8 rows of 16 bytes each; lanes 8q..8q+7 give the row
// addresses of matrix q): lane l receives row l / 4, bytes 4 (l % 4) to 4 (l % 4) + 3 of each,
// in r[q]. For 32-bit elements that is element (l / 4, l % 4) of an 8 x 4 matrix.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ uint32_t load_shared_u32(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(address) : "memory");
  return v;
}

__device__ __forceinline__ void store_shared_f32x2(uint32_t address, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(address), "f"(x), "f"(y) : "memory");
}

// float bits rounded to TF32, to nearest (ties away), as cuBLAS rounds; the tensor cores would
// otherwise drop the low mantissa bits.
__device__ __forceinline__ uint32_t round_to_tf32(uint32_t bits) {
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(out) : "f"(__uint_as_float(bits)));
  return out;
}

// d += a b for a 16 x 8 (k) A fragment and an 8 (k) x 8 B fragment of TF32. With g = lane / 4
// and t = lane % 4: a = A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4); b = B(t, g),
// B(t + 4, g); d = D(g, 2t), D(g, 2t + 1), D(g + 8, 2t), D(g + 8, 2t + 1).
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace fused_linreg::cuda

// The CPU kernels, written once and compiled once per ISA.
//
// Each csrc/cpu/kernels_<isa>.cpp includes cpu/kernels_prelude.h, then sets
// `#pragma GCC target(...)` and defines FUSED_LINREG_ISA (the namespace), FUSED_LINREG_VECTOR_BYTES
// and FUSED_LINREG_MR_F32 / _F64 (microkernel rows), then includes this file. Everything below is therefore
// compiled for that ISA and lives in its own namespace, so no symbol compiled with AVX-512 can
// be picked by the linker for code that runs on a CPU without it. The prelude is compiled before
// the pragma, for the baseline ISA.
//
// GEMM structure (BLIS): B is packed once per column block into NR-wide micro-panels shared by all
// threads; each task packs an MC x KC block of A into MR-tall micro-panels (a K-contiguous A as
// rows: a copy, no transpose; or read in place when narrow outputs would not repay the copy) and
// runs the MR x NR register-blocked microkernel over them (each A micro-panel in L1 against the
// task's B micro-panels streaming from L2), accumulating partial sums in a task-local scratch
// tile. When the last K block of a micro-tile is done, the epilogue turns it into the output
// while it is still in L1: that is where bias, ReLU, the bitmask and the in-backward SGD update
// happen. Products the tiles would mostly pad take paths of their own (kernel_gemm.h's gemm()
// picks): tiny ones a direct loop, outputs of a few columns dot products or rows in the vector
// lanes (kernel_narrow.h), outputs of a few rows the microkernel with fewer rows (kernel_short.h).

#ifndef FUSED_LINREG_ISA
#error "include kernels_impl.h from a per-ISA translation unit"
#endif

namespace fused_linreg::cpu::FUSED_LINREG_ISA {

// The parts, in dependency order; each is a fragment of this namespace, not a standalone header.
// clang-format off
#include "cpu/kernel_vector.h"
#include "cpu/kernel_sgd_update.h"
#include "cpu/kernel_blocking.h"
#include "cpu/kernel_pack.h"
#include "cpu/kernel_epilogue.h"
#include "cpu/kernel_microkernel.h"
#include "cpu/kernel_narrow.h"
#include "cpu/kernel_short.h"
#include "cpu/kernel_gemm.h"
#include "cpu/kernel_sgd.h"
// clang-format on

const IsaKernels& kernels() {
  static const IsaKernels table{
      FUSED_LINREG_ISA_NAME,
      {&gemm<float>, &sgd<float>},
      {&gemm<double>, &sgd<double>},
      {&gemm<BFloat16>, &sgd<BFloat16>},
  };
  return table;
}

}  // namespace fused_linreg::cpu::FUSED_LINREG_ISA

// CPU kernels for AVX-512 (F, DQ, BW, VL): 32 vector registers, so a 12 x 2-vector
// microkernel (24 accumulators).
#include "cpu/kernels_prelude.h"
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi2")
#define FUSED_LINREG_ISA avx512
#define FUSED_LINREG_ISA_AVX512
#define FUSED_LINREG_ISA_NAME "avx512"
#define FUSED_LINREG_VECTOR_REGISTERS 32
#define FUSED_LINREG_VECTOR_BYTES 64
#define FUSED_LINREG_MR_F32 12
#define FUSED_LINREG_MR_F64 12
#include "cpu/kernels_impl.h"

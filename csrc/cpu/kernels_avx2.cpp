// CPU kernels for AVX2 + FMA: 16 vector registers, so a 6 x 2-vector microkernel
// (12 accumulators).
#include "cpu/kernels_prelude.h"
#pragma GCC target("avx2,fma,bmi2")
#define FUSED_LINREG_ISA avx2
#define FUSED_LINREG_ISA_AVX2
#define FUSED_LINREG_ISA_NAME "avx2"
#define FUSED_LINREG_VECTOR_REGISTERS 16
#define FUSED_LINREG_VECTOR_BYTES 32
#define FUSED_LINREG_MR_F32 6
#define FUSED_LINREG_MR_F64 6
#include "cpu/kernels_impl.h"

// Portable CPU kernels: the baseline ISA (SSE2 on x86-64), for any CPU without AVX2.
// float64 micro-tiles are 8 columns wide (4 vectors), so they keep fewer rows.
#include "cpu/kernels_prelude.h"
#define FUSED_LINREG_ISA generic
#define FUSED_LINREG_ISA_NAME "generic"
#define FUSED_LINREG_VECTOR_REGISTERS 16
#define FUSED_LINREG_VECTOR_BYTES 16
#define FUSED_LINREG_MR_F32 6
#define FUSED_LINREG_MR_F64 2
#include "cpu/kernels_impl.h"

// Explicit instantiation of the GEMM core (gemm.cuh) for __nv_bfloat16 on tensor cores: one
// variant per file, so that nvcc compiles them in parallel.
#include "cuda/gemm.cuh"

namespace fused_linreg::cuda {
template void gemm<__nv_bfloat16, MathMode::kTensorCore>(const GemmArgs<__nv_bfloat16>&,
                                                         const GemmContext&);
}  // namespace fused_linreg::cuda

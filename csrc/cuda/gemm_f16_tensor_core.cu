// Explicit instantiation of the GEMM core (gemm.cuh) for __half on tensor cores: one
// variant per file, so that nvcc compiles them in parallel.
#include "cuda/gemm.cuh"

namespace fused_linreg::cuda {
template void gemm<__half, MathMode::kTensorCore>(const GemmArgs<__half>&, const GemmContext&);
}  // namespace fused_linreg::cuda

// Explicit instantiation of the GEMM core (gemm.cuh) for double on CUDA cores: one
// variant per file, so that nvcc compiles them in parallel.
#include "cuda/gemm.cuh"

namespace fused_linreg::cuda {
template void gemm<double, MathMode::kSimt>(const GemmArgs<double>&, const GemmContext&);
}  // namespace fused_linreg::cuda

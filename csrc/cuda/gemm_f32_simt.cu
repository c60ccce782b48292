// Explicit instantiation of the GEMM core (gemm.cuh) for float on CUDA cores: one
// variant per file, so that nvcc compiles them in parallel.
#include "cuda/gemm.cuh"

namespace fused_linreg::cuda {
template void gemm<float, MathMode::kSimt>(const GemmArgs<float>&, const GemmContext&);
}  // namespace fused_linreg::cuda

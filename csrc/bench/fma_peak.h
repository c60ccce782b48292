// This CPU's peak floating-point FMA throughput, measured (for the benchmark's "% of peak").
#pragma once
#include <string>

namespace fused_linreg::bench {

// GFLOP/s of independent FMA chains in registers on all of ATen's threads (at most one per
// usable CPU), each thread's best rate in its own CPU time over repeated runs of about
// `seconds` in all, summed. dtype: "float32" or "float64". isa:
// "avx512", "avx2", "generic" (SSE2 multiply + add, counted as 2 flops) or "" for the best this
// CPU supports. Throws std::invalid_argument for an unknown or unsupported name.
double measure_fma_peak_gflops(const std::string& dtype, const std::string& isa, double seconds);

}  // namespace fused_linreg::bench

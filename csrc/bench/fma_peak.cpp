// Peak FMA throughput: each thread runs kChains independent dependency chains acc = acc * m + c
// in vector registers, enough of them to cover the FMA latency times the FMA ports of current
// cores (4 cycles x 2 ports = 8 in flight), so the loop is bound by FMA issue alone, never by
// latency or memory. The ISA is chosen at run time; each per-ISA entry point is compiled for its
// ISA with a target attribute and `flatten`, which inlines the shared chain loop and the ISA's
// intrinsics into it (the loop compiles to kChains back-to-back vfmadd on registers). The chains
// run on as many threads as ATen uses (at::get_num_threads()), at most one per usable CPU.
#include "bench/fma_peak.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu/isa.h"

// The shared loop is also instantiated on its own for the baseline ISA (never called): GCC warns
// that wide vectors change the ABI there.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fused_linreg::bench {
namespace {

// The chain loop, generic over an ISA's vector type V of T and its operations (`Ops`).
template <class Ops> double fma_chains(int64_t iters) {
  using V = typename Ops::V;
  using T = typename Ops::T;
  V acc[Ops::kChains];
  for (int j = 0; j < Ops::kChains; ++j) acc[j] = Ops::set1(1.0 + j);
  // Converges to c / (1 - m) = 1: no overflow, no denormals, whatever the iteration count.
  const V m = Ops::set1(0.9990234375), c = Ops::set1(0.0009765625);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < Ops::kChains; ++j) acc[j] = Ops::fma(acc[j], m, c);
  double sum = 0;
  for (const V& a : acc) {
    T lanes[sizeof(V) / sizeof(T)];
    std::memcpy(lanes, &a, sizeof a);
    for (T x : lanes) sum += x;
  }
  return sum;
}

// Flops of one iteration: kChains FMAs of a whole vector, 2 flops per lane.
template <class Ops> constexpr int64_t flops_per_iter() {
  return int64_t{Ops::kChains} * 2 * (sizeof(typename Ops::V) / sizeof(typename Ops::T));
}

#define FL_AVX512 __attribute__((target("avx512f,fma")))
#define FL_AVX2 __attribute__((target("avx2,fma")))

// AVX-512: 16 of the 32 zmm registers hold chains.
struct Avx512F32 {
  using V = __m512;
  using T = float;
  static constexpr int kChains = 16;
  FL_AVX512 static V set1(double x) { return _mm512_set1_ps(static_cast<float>(x)); }
  FL_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
struct Avx512F64 {
  using V = __m512d;
  using T = double;
  static constexpr int kChains = 16;
  FL_AVX512 static V set1(double x) { return _mm512_set1_pd(x); }
  FL_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};
// AVX2: 12 of the 16 ymm registers hold chains (two more hold m and c).
struct Avx2F32 {
  using V = __m256;
  using T = float;
  static constexpr int kChains = 12;
  FL_AVX2 static V set1(double x) { return _mm256_set1_ps(static_cast<float>(x)); }
  FL_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
struct Avx2F64 {
  using V = __m256d;
  using T = double;
  static constexpr int kChains = 12;
  FL_AVX2 static V set1(double x) { return _mm256_set1_pd(x); }
  FL_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};
// Baseline x86-64 (SSE2) has no FMA: a multiply and an add, which count as the same 2 flops.
struct GenericF32 {
  using V = __m128;
  using T = float;
  static constexpr int kChains = 12;
  static V set1(double x) { return _mm_set1_ps(static_cast<float>(x)); }
  static V fma(V a, V b, V c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
};
struct GenericF64 {
  using V = __m128d;
  using T = double;
  static constexpr int kChains = 12;
  static V set1(double x) { return _mm_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm_add_pd(_mm_mul_pd(a, b), c); }
};

FL_AVX512 __attribute__((flatten)) double chains_avx512_f32(int64_t n) { return fma_chains<Avx512F32>(n); }
FL_AVX512 __attribute__((flatten)) double chains_avx512_f64(int64_t n) { return fma_chains<Avx512F64>(n); }
FL_AVX2 __attribute__((flatten)) double chains_avx2_f32(int64_t n) { return fma_chains<Avx2F32>(n); }
FL_AVX2 __attribute__((flatten)) double chains_avx2_f64(int64_t n) { return fma_chains<Avx2F64>(n); }
__attribute__((flatten)) double chains_generic_f32(int64_t n) { return fma_chains<GenericF32>(n); }
__attribute__((flatten)) double chains_generic_f64(int64_t n) { return fma_chains<GenericF64>(n); }

struct PeakKernel {
  const char* isa;
  const char* dtype;
  double (*run)(int64_t iters);
  int64_t flops_per_iter;
};

// Best first, as the ISA search below expects.
const PeakKernel kKernels[] = {
    {"avx512", "float32", &chains_avx512_f32, flops_per_iter<Avx512F32>()},
    {"avx512", "float64", &chains_avx512_f64, flops_per_iter<Avx512F64>()},
    {"avx2", "float32", &chains_avx2_f32, flops_per_iter<Avx2F32>()},
    {"avx2", "float64", &chains_avx2_f64, flops_per_iter<Avx2F64>()},
    {"generic", "float32", &chains_generic_f32, flops_per_iter<GenericF32>()},
    {"generic", "float64", &chains_generic_f64, flops_per_iter<GenericF64>()},
};

const PeakKernel& choose(const std::string& dtype, const std::string& isa) {
  if (dtype != "float32" && dtype != "float64")
    throw std::invalid_argument("measure_fma_peak_gflops: dtype must be 'float32' or 'float64', got '" +
                                dtype + "'");
  for (const PeakKernel& k : kKernels) {
    if (dtype != k.dtype || !(isa.empty() || isa == k.isa)) continue;
    if (cpu::isa_supported(k.isa)) return k;
    if (!isa.empty()) break;
  }
  throw std::invalid_argument("measure_fma_peak_gflops: ISA '" + isa +
                              "' is unknown or not supported by this CPU (avx512, avx2, generic)");
}

// Runs body(t) for t in [0, threads), each on its own thread.
template <class F> void on_all_threads(int threads, const F& body) {
#ifdef INTRA_OP_PARALLEL
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) body(t);
  });
#else
  // ATen's parallel_for is an inline OpenMP loop: in a translation unit built without -fopenmp
  // (against a torch built with OpenMP) it runs serially, and the "peak" would be one core's.
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back([&body, t] { body(t); });
  body(0);
  for (std::thread& thread : pool) thread.join();
#endif
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The CPUs this process may run on.
int usable_cpus() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Every thread runs `iters` iterations once, all at the same time. Returns the wall seconds
// and writes each thread's own CPU seconds into cpu_seconds.
double run_all_threads(const PeakKernel& k, int64_t iters, std::vector<double>& cpu_seconds) {
  const int threads = static_cast<int>(cpu_seconds.size());
  std::vector<double> sink(threads);
  const auto start = std::chrono::steady_clock::now();
  on_all_threads(threads, [&](int64_t t) {
    const double cpu_start = thread_cpu_seconds();
    sink[t] = k.run(iters);
    cpu_seconds[t] = thread_cpu_seconds() - cpu_start;
  });
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  // The results feed a check, so no chain can be optimized away.
  for (double s : sink)
    if (!std::isfinite(s)) throw std::runtime_error("measure_fma_peak_gflops: chains diverged");
  return elapsed.count();
}

}  // namespace

// Each thread's rate is taken in its own CPU time, so time lost to other processes on a shared
// machine does not lower the peak; the threads run at once, so cores that share execution units
// (SMT siblings) slow each other as in real work. Never more threads than usable CPUs: threads
// time-sharing a core would each count the core's full rate.
double measure_fma_peak_gflops(const std::string& dtype, const std::string& isa, double seconds) {
  const PeakKernel& k = choose(dtype, isa);
  if (!(seconds > 0)) throw std::invalid_argument("measure_fma_peak_gflops: seconds must be > 0");
  const int threads = std::max(1, std::min(at::get_num_threads(), usable_cpus()));
  std::vector<double> cpu(threads), best_cpu(threads, HUGE_VAL);
  // Grow the run until every thread computes for an eighth of the budget (in CPU time: waiting
  // to be scheduled does not count, so runs never stay so short that the start-up of wide
  // vector units weighs), then keep each thread's best of the runs that fit in the rest (>= 3).
  int64_t iters = 1024;
  run_all_threads(k, iters, cpu);
  while (*std::min_element(cpu.begin(), cpu.end()) < seconds / 8 && iters < (int64_t{1} << 40)) {
    iters *= 2;
    run_all_threads(k, iters, cpu);
  }
  double spent = 0;
  for (int run = 0; run < 3 || spent < seconds; ++run) {
    spent += run_all_threads(k, iters, cpu);
    for (int t = 0; t < threads; ++t) best_cpu[t] = std::min(best_cpu[t], cpu[t]);
  }
  const double flops_per_thread = static_cast<double>(k.flops_per_iter) * static_cast<double>(iters);
  double gflops = 0;
  for (double c : best_cpu) gflops += flops_per_thread / std::max(c, 1e-9) / 1e9;
  return gflops;
}

}  // namespace fused_linreg::bench

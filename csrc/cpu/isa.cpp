// Run-time choice of the CPU kernels, and the thread pool they run on.
#include "cpu/isa.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace fused_linreg::cpu {
namespace {

struct Isa {
  const char* name;
  const IsaKernels& (*kernels)();
  bool (*supported)();
};

const Isa kIsas[] = {
    {"avx512", &avx512::kernels,
     [] {
       return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
              __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
     }},
    {"avx2", &avx2::kernels,
     [] {
       return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("bmi2");
     }},
    {"generic", &generic::kernels, [] { return true; }},
};

const Isa* find_supported(const char* name) {
  for (const Isa& isa : kIsas)
    if (std::strcmp(isa.name, name) == 0) return isa.supported() ? &isa : nullptr;
  return nullptr;
}

const IsaKernels* choose_default() {
  __builtin_cpu_init();
  if (const char* forced = std::getenv("FUSED_LINREG_CPU_ISA"); forced && *forced) {
    if (const Isa* isa = find_supported(forced)) return &isa->kernels();
    throw std::invalid_argument(std::string("FUSED_LINREG_CPU_ISA=") + forced +
                                " is not an ISA path this CPU supports (avx512, avx2, generic)");
  }
  for (const Isa& isa : kIsas)
    if (isa.supported()) return &isa.kernels();
  return &generic::kernels();
}

std::atomic<const IsaKernels*> active{nullptr};

}  // namespace

bool isa_supported(const char* name) {
  __builtin_cpu_init();
  return find_supported(name) != nullptr;
}

const IsaKernels& active_kernels() {
  const IsaKernels* k = active.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = choose_default();
    active.store(k, std::memory_order_release);
  }
  return *k;
}

void set_isa(const char* name) {
  __builtin_cpu_init();
  const Isa* isa = find_supported(name);
  if (isa == nullptr)
    throw std::invalid_argument(std::string("CPU ISA path '") + name +
                                "' is unknown or not supported by this CPU");
  active.store(&isa->kernels(), std::memory_order_release);
}

const char* const* supported_isas(int* count) {
  static const char* names[3];
  static const int n = [] {
    __builtin_cpu_init();
    int c = 0;
    for (const Isa& isa : kIsas)
      if (isa.supported()) names[c++] = isa.name;
    return c;
  }();
  *count = n;
  return names;
}

void parallel_for(int64_t n, ParallelBody fn, void* ctx) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

int num_threads() { return at::get_num_threads(); }

}  // namespace fused_linreg::cpu

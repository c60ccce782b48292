// Headers for the per-ISA kernel translation units, included before their `#pragma GCC target`
// so that everything declared here is compiled for the baseline ISA (see kernels_impl.h).
#pragma once
#include <immintrin.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sys/mman.h>
#include <type_traits>

#include "cpu/isa.h"
#include "gemm_args.h"

// The CPU kernels, written once and compiled once per ISA.
//
// Each csrc/cpu/kernels_<isa>.cpp includes cpu/kernels_prelude.h, then sets
// `#pragma GCC target(...)` and defines FUSED_LINREG_ISA (the namespace), FUSED_LINREG_VECTOR_BYTES
// and FUSED_LINREG_MR (microkernel rows), then includes this file. Everything below is therefore
// compiled for that ISA and lives in its own namespace, so no symbol compiled with AVX-512 can
// be picked by the linker for code that runs on a CPU without it. The prelude is compiled before
// the pragma, for the baseline ISA.
//
// GEMM structure (BLIS): B is packed once per column block into NR-wide micro-panels shared by all
// threads; each task packs an MC x KC block of A into MR-tall micro-panels and runs the MR x NR
// register-blocked microkernel over them, accumulating into a task-local scratch tile. When the
// last K block of a micro-tile is done, the epilogue turns it into the output while it is still
// in L1: that is where bias, ReLU, the bitmask and the in-backward SGD update happen.

#ifndef FUSED_LINREG_ISA
#error "include kernels_impl.h from a per-ISA translation unit"
#endif

namespace fused_linreg::cpu::FUSED_LINREG_ISA {

// ---------------------------------------------------------------------------------------------
// Scalars and vectors

inline float to_acc(BFloat16 v) {
  uint32_t bits = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

template <typename T> inline T from_acc(acc_t<T> v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
// Round to nearest even, as PyTorch converts float to bfloat16; NaN stays a quiet NaN.
template <> inline BFloat16 from_acc<BFloat16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((bits >> 16) | 0x40)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return BFloat16{uint16_t(bits >> 16)};
}

template <typename A> struct Vec {
  static constexpr int width = FUSED_LINREG_VECTOR_BYTES / sizeof(A);
  typedef A type __attribute__((vector_size(FUSED_LINREG_VECTOR_BYTES), aligned(sizeof(A))));
};

// Bit j of the result is set when v[j] > 0, for j < n (n <= 64).
template <typename A> inline uint64_t positive_bits(const A* v, int n) {
#if defined(FUSED_LINREG_ISA_AVX512)
  uint64_t bits = 0;
  int j = 0;
  if constexpr (sizeof(A) == 4) {
    for (; j + 16 <= n; j += 16)
      bits |= uint64_t(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + j), _mm512_setzero_ps(), _CMP_GT_OQ))
              << j;
  } else {
    for (; j + 8 <= n; j += 8)
      bits |= uint64_t(_mm512_cmp_pd_mask(_mm512_loadu_pd(v + j), _mm512_setzero_pd(), _CMP_GT_OQ))
              << j;
  }
#elif defined(FUSED_LINREG_ISA_AVX2)
  uint64_t bits = 0;
  int j = 0;
  if constexpr (sizeof(A) == 4) {
    for (; j + 8 <= n; j += 8)
      bits |= uint64_t(unsigned(_mm256_movemask_ps(
                  _mm256_cmp_ps(_mm256_loadu_ps(v + j), _mm256_setzero_ps(), _CMP_GT_OQ))))
              << j;
  } else {
    for (; j + 4 <= n; j += 4)
      bits |= uint64_t(unsigned(_mm256_movemask_pd(
                  _mm256_cmp_pd(_mm256_loadu_pd(v + j), _mm256_setzero_pd(), _CMP_GT_OQ))))
              << j;
  }
#else
  uint64_t bits = 0;
  int j = 0;
#endif
  for (; j < n; ++j) bits |= uint64_t(v[j] > A(0)) << j;
  return bits;
}

// ---------------------------------------------------------------------------------------------
// Blocking

template <typename A> struct Tile {
  static constexpr int W = Vec<A>::width;
  // At least 8 columns, so that every micro-tile owns whole bytes of the ReLU bitmask.
  static constexpr int NV = W >= 4 ? 2 : 8 / W;
  static constexpr int NR = NV * W;
  static constexpr int MR = sizeof(A) == 4 ? FUSED_LINREG_MR_F32 : FUSED_LINREG_MR_F64;
  static constexpr int64_t KC = 256;
  // An MC x KC block of packed A stays in L2 while the micro-panels of B stream through L1.
  static constexpr int64_t MC_MAX = (256 * 1024 / (KC * int64_t(sizeof(A)))) / MR * MR;
  // Packed B for one column block: K x NC elements, sized to stay in the last-level cache.
  static constexpr int64_t B_BUDGET = 8 * 1024 * 1024 / int64_t(sizeof(A));
  // Widest column range of one task, so the task's scratch tile stays in L2.
  static constexpr int64_t TASK_COLS = 1024;
  static_assert(NR % 8 == 0 && 32 % NR == 0, "micro-tiles must own whole bitmask bytes");
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Buffers reused across calls by the thread that owns them, so the per-call path allocates
// nothing once warm.
template <typename A> struct ThreadBuffer {
  A* data = nullptr;
  int64_t capacity = 0;
  ~ThreadBuffer() { std::free(data); }
  A* get(int64_t n) {
    if (n > capacity) {
      std::free(data);
      capacity = round_up(max64(n, 1024), 16);
      data = static_cast<A*>(std::aligned_alloc(64, capacity * sizeof(A)));
      if (data == nullptr) throw std::bad_alloc();
    }
    return data;
  }
};
template <typename A, int Slot> A* thread_buffer(int64_t n) {
  static thread_local ThreadBuffer<A> buffer;
  return buffer.get(n);
}

// ---------------------------------------------------------------------------------------------
// Packing

inline bool mask_bit(const BitMask& mask, int64_t row, int64_t col) {
  return (mask.bits[row * mask.row_bytes + (col >> 3)] >> (col & 7)) & 1;
}

// Packs A(i0 : i0+mb, k0 : k0+kb), with the mask prologue, into MR-row micro-panels:
// dst[(i / MR) * MR * kb + k * MR + i % MR]; rows past mb are zero. When row_sums is set, adds
// each row's sum over this K block to row_sums[i].
template <typename T>
void pack_a(const GemmArgs<T>& g, int64_t i0, int64_t mb, int64_t k0, int64_t kb, acc_t<T>* dst,
            acc_t<T>* row_sums) {
  using A = acc_t<T>;
  constexpr int MR = Tile<A>::MR;
  const bool masked = g.a_mask.bits != nullptr;
  for (int64_t ip = 0; ip < mb; ip += MR) {
    A* panel = dst + ip * kb;
    const int64_t rows = min64(MR, mb - ip);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = i0 + ip + r;
      const T* src = g.a + m * g.a_rs + k0 * g.a_cs;
      A sum = 0;
      if (!masked) {
        for (int64_t k = 0; k < kb; ++k) {
          A v = to_acc(src[k * g.a_cs]);
          panel[k * MR + r] = v;
          sum += v;
        }
      } else {
        for (int64_t k = 0; k < kb; ++k) {
          const bool keep = g.a_mask_transposed ? mask_bit(g.a_mask, k0 + k, m)
                                                : mask_bit(g.a_mask, m, k0 + k);
          // A select, not a multiply: a NaN or inf gradient where the ReLU was off gives 0.
          A v = keep ? to_acc(src[k * g.a_cs]) : A(0);
          panel[k * MR + r] = v;
          sum += v;
        }
      }
      if (row_sums) row_sums[ip + r] += sum;
    }
    for (int64_t r = rows; r < MR; ++r)
      for (int64_t k = 0; k < kb; ++k) panel[k * MR + r] = 0;
  }
}

// Packs B(k0 : k0+kb, j0 : j0+nb) into NR-column micro-panels: dst[(j / NR) * NR * kb + k * NR +
// j % NR]; columns past nb are zero.
template <typename T>
void pack_b_panel(const GemmArgs<T>& g, int64_t k0, int64_t kb, int64_t j0, int64_t nb,
                  acc_t<T>* dst) {
  using A = acc_t<T>;
  constexpr int NR = Tile<A>::NR;
  const T* src = g.b + k0 * g.b_rs + j0 * g.b_cs;
  if (g.b_cs == 1 && nb == NR) {
    for (int64_t k = 0; k < kb; ++k)
      for (int j = 0; j < NR; ++j) dst[k * NR + j] = to_acc(src[k * g.b_rs + j]);
    return;
  }
  for (int64_t j = 0; j < nb; ++j) {
    const T* col = src + j * g.b_cs;
    for (int64_t k = 0; k < kb; ++k) dst[k * NR + j] = to_acc(col[k * g.b_rs]);
  }
  for (int64_t j = nb; j < NR; ++j)
    for (int64_t k = 0; k < kb; ++k) dst[k * NR + j] = 0;
}

// ---------------------------------------------------------------------------------------------
// Microkernel: c[0:MR, 0:NR] (+)= sum_k a[k, 0:MR]^T b[k, 0:NR], all in registers.

template <typename A>
inline void microkernel(int64_t kc, const A* __restrict a, const A* __restrict b, A* __restrict c,
                        int64_t ldc, bool accumulate) {
  using V = typename Vec<A>::type;
  constexpr int MR = Tile<A>::MR, NV = Tile<A>::NV, W = Tile<A>::W, NR = Tile<A>::NR;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + k * NR + v * W, sizeof(V));
    for (int i = 0; i < MR; ++i) {
      const A ai = a[k * MR + i];
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      A* dst = c + i * ldc + v * W;
      if (accumulate) {
        V old;
        std::memcpy(&old, dst, sizeof(V));
        acc[i][v] += old;
      }
      std::memcpy(dst, &acc[i][v], sizeof(V));
    }
}

// ---------------------------------------------------------------------------------------------
// Epilogue: one finished micro-tile of acc (rows m0.., columns n0.., mr x nr valid) to its output.

template <typename T>
void epilogue(const GemmArgs<T>& g, const acc_t<T>* acc, int64_t ld, int64_t m0, int64_t n0,
              int64_t mr, int64_t nr) {
  using A = acc_t<T>;
  constexpr int NR = Tile<A>::NR;
  if (g.sgd.param != nullptr) {
    const SgdEpilogue<T>& s = g.sgd;
    const A lr = A(s.lr), momentum = A(s.momentum), damp = A(1 - s.dampening),
            wd = A(s.weight_decay);
    for (int64_t i = 0; i < mr; ++i) {
      T* p = s.param + (m0 + i) * g.ldc + n0;
      T* buf = s.momentum_buffer ? s.momentum_buffer + (m0 + i) * g.ldc + n0 : nullptr;
      const A* row = acc + i * ld;
      for (int64_t j = 0; j < nr; ++j) {
        A b = buf ? to_acc(buf[j]) : A(0);
        // The gradient is rounded to the parameter's dtype first, as autograd would store it.
        const A grad = to_acc(from_acc<T>(row[j]));
        A np = sgd_update<A>(to_acc(p[j]), grad, &b,
                             s.init_momentum_buffer, lr, momentum, damp, wd, s.nesterov,
                             s.maximize);
        p[j] = from_acc<T>(np);
        if (buf) buf[j] = from_acc<T>(b);
      }
    }
    return;
  }
  alignas(64) A vals[NR];
  for (int64_t i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    const A* row = acc + i * ld;
    T* out = g.c + m * g.ldc + n0;
    for (int64_t j = 0; j < nr; ++j) {
      A v = row[j];
      if (g.bias) v += to_acc(g.bias[n0 + j]);
      // torch.relu keeps NaN and -0.0: only values below zero become zero.
      if (g.relu) v = v < A(0) ? A(0) : v;
      const T stored = from_acc<T>(v);
      out[j] = stored;
      vals[j] = to_acc(stored);
    }
    if (g.relu && g.c_mask.bits) {
      // The mask is taken from the stored output (as PyTorch's backward sees it) and written
      // in whole bytes; the tile that ends a row also clears the row's padding bytes.
      const uint64_t bits = positive_bits(vals, int(nr));
      uint8_t* dst = g.c_mask.bits + m * g.c_mask.row_bytes + n0 / 8;
      for (int byte = 0; byte < NR / 8; ++byte) dst[byte] = uint8_t(bits >> (8 * byte));
      if (n0 + NR >= g.N) {
        const int64_t used = n0 / 8 + NR / 8;
        for (int64_t byte = used; byte < g.c_mask.row_bytes; ++byte)
          g.c_mask.bits[m * g.c_mask.row_bytes + byte] = 0;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The GEMM driver

template <typename T> struct GemmPlan {
  using A = acc_t<T>;
  const GemmArgs<T>* g;
  int64_t slices, slice_k;  // split of K into independent slices (fixed by shape, not threads)
  int64_t j0, ncols, npanels;  // the current column block
  int64_t mc, m_blocks;        // row blocks
  int64_t chunk_panels, chunks;  // column chunks of one task
  A* packed_b;  // [slice][K block][panel][kb][NR]
  A* slice_out;  // split-K partial results: [slice][M][round_up(ncols, NR)], else nullptr
  A* row_sum_partials;  // [slice][M] when g->a_row_sums, else nullptr

  int64_t slice_begin(int64_t s) const { return min64(s * slice_k, g->K); }
  int64_t slice_end(int64_t s) const { return min64((s + 1) * slice_k, g->K); }
  // Offset of K block k0 of slice s in packed_b.
  int64_t packed_b_offset(int64_t s, int64_t k0) const {
    return (s * slice_k + (k0 - slice_begin(s))) * npanels * Tile<A>::NR;
  }
};

template <typename T> void pack_b_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  constexpr int NR = Tile<A>::NR;
  constexpr int64_t KC = Tile<A>::KC;
  const GemmPlan<T>& p = *static_cast<const GemmPlan<T>*>(ctx);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t s = t / p.npanels, jp = t % p.npanels;
    const int64_t j = jp * NR, nb = min64(NR, p.ncols - j);
    for (int64_t k0 = p.slice_begin(s); k0 < p.slice_end(s); k0 += KC) {
      const int64_t kb = min64(KC, p.slice_end(s) - k0);
      pack_b_panel(*p.g, k0, kb, p.j0 + j, nb, p.packed_b + p.packed_b_offset(s, k0) + jp * kb * NR);
    }
  }
}

template <typename T> void compute_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  constexpr int MR = Tile<A>::MR, NR = Tile<A>::NR;
  constexpr int64_t KC = Tile<A>::KC;
  const GemmPlan<T>& p = *static_cast<const GemmPlan<T>*>(ctx);
  const GemmArgs<T>& g = *p.g;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t s = t / (p.m_blocks * p.chunks);
    const int64_t ib = (t / p.chunks) % p.m_blocks, cb = t % p.chunks;
    const int64_t i0 = ib * p.mc, mb = min64(p.mc, g.M - i0);
    if (mb <= 0) continue;
    const int64_t jp0 = cb * p.chunk_panels, jp1 = min64(jp0 + p.chunk_panels, p.npanels);
    if (jp0 >= jp1) continue;
    const int64_t mb_pad = round_up(mb, MR);

    // Split-K slices accumulate into their partial result; otherwise into a local scratch tile
    // that the epilogue consumes.
    A* out;
    int64_t ld;
    if (p.slice_out) {
      ld = p.npanels * NR;
      out = p.slice_out + (s * round_up(g.M, MR) + i0) * ld + jp0 * NR;
    } else {
      ld = (jp1 - jp0) * NR;
      out = thread_buffer<A, 0>(mb_pad * ld);
    }
    A* packed_a = thread_buffer<A, 1>(mb_pad * KC);
    // The bias gradient is summed by one task per row block, on the first column block only.
    A* row_sums =
        (p.row_sum_partials && cb == 0 && p.j0 == 0) ? p.row_sum_partials + s * g.M + i0 : nullptr;

    const int64_t kbeg = p.slice_begin(s), kend = p.slice_end(s);
    int64_t k0 = kbeg;
    do {  // at least once, so that K == 0 still yields zeros
      const int64_t kb = min64(KC, kend - k0);
      const bool first = k0 == kbeg, last = k0 + kb >= kend;
      pack_a(g, i0, mb, k0, kb, packed_a, row_sums);
      const A* b_block = p.packed_b + p.packed_b_offset(s, k0);
      for (int64_t jp = jp0; jp < jp1; ++jp) {
        const A* b_panel = b_block + jp * kb * NR;
        for (int64_t ip = 0; ip < mb; ip += MR) {
          A* tile = out + ip * ld + (jp - jp0) * NR;
          microkernel<A>(kb, packed_a + ip * kb, b_panel, tile, ld, !first);
          if (last && !p.slice_out)
            epilogue(g, tile, ld, i0 + ip, p.j0 + jp * NR, min64(MR, mb - ip),
                     min64(NR, p.ncols - jp * NR));
        }
      }
      k0 += kb;
    } while (k0 < kend);
  }
}

// Sums the split-K partials in slice order (deterministic) and applies the epilogue.
template <typename T> void reduce_slices_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  constexpr int MR = Tile<A>::MR, NR = Tile<A>::NR;
  const GemmPlan<T>& p = *static_cast<const GemmPlan<T>*>(ctx);
  const GemmArgs<T>& g = *p.g;
  const int64_t ld = p.npanels * NR, slice_stride = round_up(g.M, MR) * ld;
  const int64_t row_tiles = ceil_div(g.M, MR);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t it = t % row_tiles, jp = t / row_tiles;
    A* tile = p.slice_out + it * MR * ld + jp * NR;
    for (int64_t s = 1; s < p.slices; ++s)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) tile[i * ld + j] += tile[s * slice_stride + i * ld + j];
    epilogue(g, tile, ld, it * MR, p.j0 + jp * NR, min64(MR, g.M - it * MR),
             min64(NR, p.ncols - jp * NR));
  }
}

inline void run_parallel(int64_t tasks, bool threaded, ParallelBody body, void* ctx) {
  if (threaded && tasks > 1)
    parallel_for(tasks, body, ctx);
  else
    body(ctx, 0, tasks);
}

template <typename T> void gemm(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  using TileA = Tile<A>;
  constexpr int MR = TileA::MR, NR = TileA::NR;
  constexpr int64_t KC = TileA::KC;
  if (g.M == 0) return;
  if (g.N == 0) {
    // No output, but the row sums (a bias gradient) may still be wanted.
    if (g.a_row_sums) {
      for (int64_t m = 0; m < g.M; ++m) g.a_row_sums[m] = 0;
      A* panel = thread_buffer<A, 1>(round_up(g.M, MR) * KC);
      for (int64_t k0 = 0; k0 < g.K; k0 += KC)
        pack_a(g, 0, g.M, k0, min64(KC, g.K - k0), panel, g.a_row_sums);
    }
    return;
  }

  GemmPlan<T> p;
  p.g = &g;
  const int threads = num_threads();
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  const bool threaded = threads > 1 && flops >= 2e6;

  // Split K when the output has too few micro-tiles to share among threads. Decided by shape
  // alone, so that the result is bitwise the same for any thread count.
  const int64_t tiles = ceil_div(g.M, MR) * ceil_div(g.N, NR);
  p.slices = 1;
  if (tiles < 32 && g.K >= 8 * KC) p.slices = min64(16, g.K / (4 * KC));
  p.slice_k = g.K == 0 ? 0 : round_up(ceil_div(g.K, p.slices), KC);
  p.slices = g.K == 0 ? 1 : ceil_div(g.K, p.slice_k);

  const int64_t nc_max = max64(NR, (TileA::B_BUDGET / max64(g.K, 1)) / NR * NR);
  const int64_t nc = min64(round_up(g.N, NR), nc_max);
  A* packed_b = thread_buffer<A, 2>(p.slices * p.slice_k * nc);

  A* slice_out = nullptr;
  if (p.slices > 1)
    slice_out = thread_buffer<A, 3>(p.slices * round_up(g.M, MR) * nc);
  A* row_sum_partials = nullptr;
  if (g.a_row_sums) {
    row_sum_partials = thread_buffer<A, 4>(p.slices * g.M);
    for (int64_t i = 0; i < p.slices * g.M; ++i) row_sum_partials[i] = 0;
  }

  for (int64_t j0 = 0; j0 < g.N; j0 += nc) {
    p.j0 = j0;
    p.ncols = min64(nc, g.N - j0);
    p.npanels = ceil_div(p.ncols, NR);
    p.packed_b = packed_b;
    p.slice_out = slice_out;
    p.row_sum_partials = row_sum_partials;

    // Row blocks and column chunks: enough tasks for every thread, in a multiple of the thread
    // count when that is cheap, each task's A block within MC_MAX rows.
    int64_t m_blocks = ceil_div(g.M, TileA::MC_MAX);
    int64_t chunks = ceil_div(p.npanels * NR, TileA::TASK_COLS);
    if (threaded) {
      const int64_t max_m_blocks = ceil_div(g.M, MR);
      if (m_blocks >= threads) m_blocks = min64(round_up(m_blocks, threads), max_m_blocks);
      while (p.slices * m_blocks * chunks < threads && chunks < p.npanels) ++chunks;
      while (p.slices * m_blocks * chunks < threads && m_blocks < max_m_blocks) ++m_blocks;
    }
    p.mc = round_up(ceil_div(g.M, m_blocks), MR);
    p.m_blocks = ceil_div(g.M, p.mc);
    p.chunk_panels = ceil_div(p.npanels, chunks);
    p.chunks = ceil_div(p.npanels, p.chunk_panels);

    run_parallel(p.slices * p.npanels, threaded, &pack_b_task<T>, &p);
    run_parallel(p.slices * p.m_blocks * p.chunks, threaded, &compute_task<T>, &p);
    if (p.slices > 1)
      run_parallel(ceil_div(g.M, MR) * p.npanels, threaded, &reduce_slices_task<T>, &p);
  }

  if (g.a_row_sums) {
    for (int64_t m = 0; m < g.M; ++m) {
      A sum = row_sum_partials[m];
      for (int64_t s = 1; s < p.slices; ++s) sum += row_sum_partials[s * g.M + m];
      g.a_row_sums[m] = sum;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor SGD

template <typename T> struct SgdPlan {
  const SgdTensor<T>* tensors;
  int64_t count;
  const SgdOptions* options;
  double grad_scale;
  const int64_t* chunk_tensor;  // tensor index of each chunk
  const int64_t* chunk_begin;   // first element of each chunk
};

constexpr int64_t kSgdChunk = 1 << 15;

template <typename T> void sgd_chunks(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const SgdPlan<T>& p = *static_cast<const SgdPlan<T>*>(ctx);
  const SgdOptions& o = *p.options;
  const A lr = A(o.lr), momentum = A(o.momentum), damp = A(1 - o.dampening),
          wd = A(o.weight_decay);
  const bool scaled = p.grad_scale != 1.0;
  const A scale = A(p.grad_scale);
  for (int64_t c = begin; c < end; ++c) {
    const SgdTensor<T>& t = p.tensors[p.chunk_tensor[c]];
    const int64_t e0 = p.chunk_begin[c], e1 = min64(e0 + kSgdChunk, t.numel);
    T* param = t.param;
    const T* grad = t.grad;
    T* buf = t.momentum_buffer;
    if (buf == nullptr) {
      for (int64_t e = e0; e < e1; ++e) {
        A g = to_acc(grad[e]);
        if (scaled) g = g / scale;
        param[e] = from_acc<T>(
            sgd_update<A>(to_acc(param[e]), g, nullptr, false, lr, A(0), damp, wd, false, o.maximize));
      }
    } else {
      for (int64_t e = e0; e < e1; ++e) {
        A g = to_acc(grad[e]);
        if (scaled) g = g / scale;
        A b = to_acc(buf[e]);
        param[e] = from_acc<T>(sgd_update<A>(to_acc(param[e]), g, &b, t.init_momentum_buffer, lr,
                                             momentum, damp, wd, o.nesterov, o.maximize));
        buf[e] = from_acc<T>(b);
      }
    }
  }
}

template <typename T>
void sgd(const SgdTensor<T>* tensors, int64_t count, const SgdOptions& options, double grad_scale) {
  int64_t chunks = 0;
  for (int64_t i = 0; i < count; ++i) chunks += ceil_div(tensors[i].numel, kSgdChunk);
  if (chunks == 0) return;
  int64_t* chunk_tensor = thread_buffer<int64_t, 5>(2 * chunks);
  int64_t* chunk_begin = chunk_tensor + chunks;
  int64_t c = 0, total = 0;
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t e = 0; e < tensors[i].numel; e += kSgdChunk, ++c) {
      chunk_tensor[c] = i;
      chunk_begin[c] = e;
    }
    total += tensors[i].numel;
  }
  SgdPlan<T> plan{tensors, count, &options, grad_scale, chunk_tensor, chunk_begin};
  run_parallel(chunks, total >= (1 << 16), &sgd_chunks<T>, &plan);
}

// ---------------------------------------------------------------------------------------------

const IsaKernels& kernels() {
  static const IsaKernels table{
      FUSED_LINREG_ISA_NAME,
      {&gemm<float>, &sgd<float>},
      {&gemm<double>, &sgd<double>},
      {&gemm<BFloat16>, &sgd<BFloat16>},
  };
  return table;
}

}  // namespace fused_linreg::cpu::FUSED_LINREG_ISA

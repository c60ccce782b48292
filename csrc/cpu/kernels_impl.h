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
// register-blocked microkernel over them (each A micro-panel in L1 against the task's B micro-
// panels streaming from L2), accumulating partial sums in a task-local scratch tile. When the
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

// Bit l of the result is set where the ReLU passes the gradient: !(v[l] <= 0), i.e. positive or
// NaN outputs, as torch's threshold_backward(grad, output, 0) decides.
template <typename A> inline uint32_t gradient_lanes(typename Vec<A>::type v) {
#if defined(FUSED_LINREG_ISA_AVX512)
  if constexpr (sizeof(A) == 4)
    return _mm512_cmp_ps_mask(__m512(v), _mm512_setzero_ps(), _CMP_NLE_UQ);
  else
    return _mm512_cmp_pd_mask(__m512d(v), _mm512_setzero_pd(), _CMP_NLE_UQ);
#elif defined(FUSED_LINREG_ISA_AVX2)
  if constexpr (sizeof(A) == 4)
    return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(__m256(v), _mm256_setzero_ps(), _CMP_NLE_UQ)));
  else
    return unsigned(_mm256_movemask_pd(_mm256_cmp_pd(__m256d(v), _mm256_setzero_pd(), _CMP_NLE_UQ)));
#else
  uint32_t bits = 0;
  for (int l = 0; l < Vec<A>::width; ++l) bits |= uint32_t(!(v[l] <= A(0))) << l;
  return bits;
#endif
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
  // An MC x KC block of packed A stays in L2; one micro-panel of it at a time sits in L1.
  static constexpr int64_t MC_MAX = (256 * 1024 / (KC * int64_t(sizeof(A)))) / MR * MR;
  // Packed B for one column block: K x NC elements, sized to stay in the last-level cache.
  static constexpr int64_t B_BUDGET = 16 * 1024 * 1024 / int64_t(sizeof(A));
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
      const int64_t want = round_up(max64(n, 1024), 16);
      // Large packed operands are walked in big strides: huge pages spare the TLB.
      const int64_t huge = 2 << 20;
      const bool use_huge = int64_t(want * sizeof(A)) >= 2 * huge;
      const int64_t align = use_huge ? huge : 64;
      const int64_t bytes = round_up(int64_t(want * sizeof(A)), align);
      A* fresh = static_cast<A*>(std::aligned_alloc(align, bytes));
      if (fresh == nullptr) throw std::bad_alloc();  // the old buffer stays valid
      if (use_huge) madvise(fresh, bytes, MADV_HUGEPAGE);
      std::free(data);
      data = fresh;
      capacity = want;
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
//
// Both operands are packed into panels of P lanes (MR rows of A, or NR columns of B) by kb steps of
// K, lane-fastest: dst[k * P + lane]. A panel's source is addressed as src[lane * ls + k * ks].
// Two layouts are fast: lanes contiguous (ls == 1: a strided copy) and K contiguous (ks == 1:
// W x W blocks transposed in registers). The ReLU-mask prologue and the lane sums (the bias
// gradient) ride along.

inline bool mask_bit(const BitMask& mask, int64_t row, int64_t col) {
  return (mask.bits[row * mask.row_bytes + (col >> 3)] >> (col & 7)) & 1;
}

// The mask bits of `n` (<= 64) consecutive positions starting at bit b0 of a row.
inline uint64_t load_bits(const uint8_t* row, int64_t b0, int n) {
  uint64_t bits = 0;
  const int64_t first = b0 >> 3, last = (b0 + n - 1) >> 3;
  for (int64_t byte = first; byte <= last; ++byte) bits |= uint64_t(row[byte]) << (8 * (byte - first));
  return (bits >> (b0 & 7)) & (n == 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1);
}

template <typename A> struct VecOps {
  using V = typename Vec<A>::type;
  using I = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(FUSED_LINREG_VECTOR_BYTES)));
  static constexpr int W = Vec<A>::width;

  // Loads n (<= W) elements, converting to A; the rest are zero.
  template <typename T> static V load(const T* p, int n) {
    if constexpr (std::is_same_v<T, A>) {
      if (n == W) {
        V v;
        std::memcpy(&v, p, sizeof(V));
        return v;
      }
#if defined(FUSED_LINREG_ISA_AVX512)
      // Masked loads: micro-panels of 12 lanes are common and must not fall to scalar code.
      if constexpr (sizeof(A) == 4)
        return V(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p));
      else
        return V(_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p));
#elif defined(FUSED_LINREG_ISA_AVX2)
      IV lane;
      for (int l = 0; l < W; ++l) lane[l] = l;
      const IV active = lane < I(n);
      if constexpr (sizeof(A) == 4)
        return V(_mm256_maskload_ps(p, __m256i(active)));
      else
        return V(_mm256_maskload_pd(p, __m256i(active)));
#endif
    }
    V v = V{};
    for (int l = 0; l < n; ++l) v[l] = to_acc(p[l]);
    return v;
  }
  // Stores lanes 0 .. n of v.
  static void store(A* p, V v, int n) {
#if defined(FUSED_LINREG_ISA_AVX512)
    if constexpr (sizeof(A) == 4)
      _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), __m512(v));
    else
      _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), __m512d(v));
#else
    std::memcpy(p, &v, n * sizeof(A));
#endif
  }
  template <typename T> static V load_strided(const T* p, int64_t stride, int n) {
    V v = V{};
    for (int l = 0; l < n; ++l) v[l] = to_acc(p[l * stride]);
    return v;
  }
  // Keeps lane l where bit l is set, else 0 — a select, so NaN or inf gradients where the ReLU
  // was off become 0 as in PyTorch.
  static V select(V v, uint64_t bits) {
    IV lane_bit;
    for (int l = 0; l < W; ++l) lane_bit[l] = I(1) << l;
    const IV keep = (IV{} + I(bits)) & lane_bit;
    return keep != 0 ? v : V{};
  }
  // In-register transpose of W vectors: v[i][e] becomes v[e][i]. Stage D swaps the off-diagonal
  // D x D blocks of every 2D x 2D block; everything is unrolled so the shuffles use constant
  // index vectors.
  template <int D = 1> static void transpose(V* v) {
    static constexpr std::array<I, W> lo = stage_indices<D, false>(), hi = stage_indices<D, true>();
    IV vlo, vhi;
    std::memcpy(&vlo, lo.data(), sizeof(IV));
    std::memcpy(&vhi, hi.data(), sizeof(IV));
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      if (i & D) continue;
      const V a = v[i], b = v[i + D];
      v[i] = __builtin_shuffle(a, b, vlo);
      v[i + D] = __builtin_shuffle(a, b, vhi);
    }
    if constexpr (2 * D < W) transpose<2 * D>(v);
  }
  template <int D, bool High> static constexpr std::array<I, W> stage_indices() {
    std::array<I, W> idx{};
    for (int e = 0; e < W; ++e)
      idx[e] = High ? ((e & D) ? W + e : e + D) : ((e & D) ? W + e - D : e);
    return idx;
  }
};

// Where the mask bit of (lane, k) lives: row-major masks put k along the row (A = grad_output,
// lanes are rows), transposed masks put the lanes along the row (A = grad_output^T).
struct PanelMask {
  BitMask mask;
  bool lanes_along_row = false;  // bit (lane, k) at mask row k, column lane
  int64_t lane0 = 0, k0 = 0;     // position of the panel's first lane and step in the mask

  bool bit(int64_t lane, int64_t k) const {
    return lanes_along_row ? mask_bit(mask, k0 + k, lane0 + lane) : mask_bit(mask, lane0 + lane, k0 + k);
  }
  // Bits of lane `lane` at steps k .. k+n.
  uint64_t lane_bits(int64_t lane, int64_t k, int n) const {
    if (!lanes_along_row) return load_bits(mask.bits + (lane0 + lane) * mask.row_bytes, k0 + k, n);
    uint64_t b = 0;
    for (int i = 0; i < n; ++i) b |= uint64_t(bit(lane, k + i)) << i;
    return b;
  }
  // Bits of lanes lane .. lane+n at step k.
  uint64_t step_bits(int64_t lane, int64_t k, int n) const {
    if (lanes_along_row) return load_bits(mask.bits + (k0 + k) * mask.row_bytes, lane0 + lane, n);
    uint64_t b = 0;
    for (int i = 0; i < n; ++i) b |= uint64_t(bit(lane + i, k)) << i;
    return b;
  }
};

// Packs `lanes` lanes by kb steps into panels of P lanes (panel p at dst + p * P * kb; lanes past
// `lanes` are zero). pm (when set) describes the mask bit of (lane, k) with pm->lane0 = lane 0.
// lane_sums[l] (when set) += the sum of lane l over these steps.
template <int P, typename T>
void pack_panels(const T* src, int64_t ls, int64_t ks, int64_t lanes, int64_t kb, acc_t<T>* dst,
                 const PanelMask* pm, acc_t<T>* lane_sums) {
  using A = acc_t<T>;
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  constexpr int W = Ops::W;
  const int64_t panels = ceil_div(lanes, P);
  // Steps [0, k_transposed) go through W x W register transposes (K contiguous); the rest lane
  // by lane, one step at a time across all panels, so that every source row is read
  // contiguously once (a panel at a time would walk rows a power of two apart).
  const int64_t k_transposed = (ks == 1 && ls != 1) ? kb / W * W : 0;
  for (int64_t p = 0; p < panels && k_transposed > 0; ++p) {
    for (int g0 = 0; g0 < P; g0 += W) {
      const int64_t lane = p * P + g0;
      const int width = P - g0 < W ? P - g0 : W;                // lanes this group stores
      const int n = int(min64(width, max64(0, lanes - lane)));  // of which valid
      A* gdst = dst + p * P * kb + g0;
      V sums = V{};
      for (int64_t k = 0; k < k_transposed; k += W) {
        V block[W];
        for (int l = 0; l < W; ++l) {
          if (l < n && k + 4 * W < kb) __builtin_prefetch(src + (lane + l) * ls + k + 4 * W);
          block[l] = l < n ? Ops::load(src + (lane + l) * ls + k, W) : V{};
          if (pm && l < n) block[l] = Ops::select(block[l], pm->lane_bits(lane + l, k, W));
        }
        Ops::transpose(block);
        for (int kk = 0; kk < W; ++kk) {
          std::memcpy(gdst + (k + kk) * P, &block[kk], width * sizeof(A));
          sums += block[kk];
        }
      }
      if (lane_sums)
        for (int l = 0; l < n; ++l) lane_sums[lane + l] += sums[l];
    }
  }
  for (int64_t k = k_transposed; k < kb; ++k) {
    for (int64_t p = 0; p < panels; ++p) {
      for (int g0 = 0; g0 < P; g0 += W) {
        const int64_t lane = p * P + g0;
        const int width = P - g0 < W ? P - g0 : W;
        const int n = int(min64(width, max64(0, lanes - lane)));
        const T* s = src + lane * ls + k * ks;
        // Rows a page or more apart defeat the hardware prefetcher: ask for the row 8 steps on.
        if (ls == 1 && k + 8 < kb) __builtin_prefetch(s + 8 * ks);
        V v = ls == 1 ? Ops::load(s, n) : Ops::load_strided(s, ls, n);
        if (pm && n > 0) v = Ops::select(v, pm->step_bits(lane, k, n));
        std::memcpy(dst + p * P * kb + k * P + g0, &v, width * sizeof(A));
        if (lane_sums) Ops::store(lane_sums + lane, Ops::load(lane_sums + lane, n) + v, n);
      }
    }
  }
}

// Packs A(i0 : i0+mb, k0 : k0+kb), with the mask prologue, into MR-row micro-panels:
// dst[(i / MR) * MR * kb + k * MR + i % MR]. row_sums[i] (when set) += sum over this K block.
template <typename T>
void pack_a(const GemmArgs<T>& g, int64_t i0, int64_t mb, int64_t k0, int64_t kb, acc_t<T>* dst,
            acc_t<T>* row_sums) {
  using A = acc_t<T>;
  const PanelMask pm{g.a_mask, g.a_mask_transposed, i0, k0};
  // Sums of this block first, then added: a running sum over millions of rows would stall
  // (float32 stops growing at 2^24), a sum per block of KC rows does not.
  A* block_sums = row_sums ? thread_buffer<A, 6>(mb) : nullptr;
  for (int64_t i = 0; block_sums && i < mb; ++i) block_sums[i] = 0;
  pack_panels<Tile<A>::MR>(g.a + i0 * g.a_rs + k0 * g.a_cs, g.a_rs, g.a_cs, mb, kb, dst,
                           g.a_mask.bits ? &pm : nullptr, block_sums);
  for (int64_t i = 0; block_sums && i < mb; ++i) row_sums[i] += block_sums[i];
}

// Packs B(k0 : k0+kb, j0 : j0+nb) into NR-column micro-panels: dst[(j / NR) * NR * kb + k * NR +
// j % NR].
template <typename T>
void pack_b(const GemmArgs<T>& g, int64_t k0, int64_t kb, int64_t j0, int64_t nb, acc_t<T>* dst) {
  pack_panels<Tile<acc_t<T>>::NR>(g.b + k0 * g.b_rs + j0 * g.b_cs, g.b_cs, g.b_rs, nb, kb, dst,
                                  nullptr, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Epilogue: a finished row segment of acc (NR lanes, nr valid) becomes output row m, columns n0..

// The finished gradient row is the gradient of the parameter row: apply torch.optim.SGD's update.
template <typename T>
void sgd_row(const GemmArgs<T>& g, const acc_t<T>* grad_row, int64_t m, int64_t n0, int64_t nr) {
  using A = acc_t<T>;
  const SgdEpilogue<T>& s = g.sgd;
  const A lr = A(s.lr), momentum = A(s.momentum), damp = A(1 - s.dampening), wd = A(s.weight_decay);
  T* p = s.param + m * g.ldc + n0;
  T* buf = s.momentum_buffer ? s.momentum_buffer + m * g.ldc + n0 : nullptr;
  for (int64_t j = 0; j < nr; ++j) {
    A b = buf ? to_acc(buf[j]) : A(0);
    // The gradient is rounded to the parameter's dtype first, as autograd would store it.
    const A grad = to_acc(from_acc<T>(grad_row[j]));
    p[j] = from_acc<T>(sgd_update<A>(to_acc(p[j]), grad, &b, s.init_momentum_buffer, lr, momentum,
                                     damp, wd, s.nesterov, s.maximize));
    if (buf) buf[j] = from_acc<T>(b);
  }
}

// out = act(acc + bias) with the ReLU bitmask; or the in-backward SGD update of the parameter.
template <typename T>
inline void finish_row(const GemmArgs<T>& g, typename Vec<acc_t<T>>::type* row, int64_t m,
                       int64_t n0, int64_t nr) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  constexpr int NV = Tile<A>::NV, W = Tile<A>::W, NR = Tile<A>::NR;
  if (g.sgd.param != nullptr) {
    sgd_row(g, reinterpret_cast<const A*>(row), m, n0, nr);
    return;
  }
  uint64_t bits = 0;
  T* out = g.c + m * g.ldc + n0;
  if constexpr (std::is_same_v<T, A>) {
    // Vectors, with masked loads and stores for the lanes past a narrow output's last column.
    for (int v = 0; v < NV; ++v) {
      const int lanes = int(min64(W, max64(0, nr - v * W)));
      if (lanes == 0) break;
      if (g.bias) row[v] += VecOps<A>::load(g.bias + n0 + v * W, lanes);
      // torch.relu keeps NaN and -0.0: only values below zero become zero.
      if (g.relu) row[v] = row[v] < A(0) ? V{} : row[v];
      if (lanes == W)
        std::memcpy(out + v * W, &row[v], sizeof(V));
      else
        VecOps<A>::store(out + v * W, row[v], lanes);
      if (g.relu) bits |= uint64_t(gradient_lanes<A>(row[v]) & ((uint64_t(1) << lanes) - 1)) << (v * W);
    }
  } else {
    A* vals = reinterpret_cast<A*>(row);
    for (int64_t j = 0; j < nr; ++j) {
      A v = vals[j];
      if (g.bias) v += to_acc(g.bias[n0 + j]);
      if (g.relu) v = v < A(0) ? A(0) : v;
      out[j] = from_acc<T>(v);
      // The mask is taken from the stored output, as PyTorch's backward sees it.
      bits |= uint64_t(!(to_acc(out[j]) <= A(0))) << j;
    }
  }
  if (g.relu && g.c_mask.bits) {
    // Whole bytes: micro-tiles never share one. The tile that ends a row clears its padding.
    uint8_t* mask_row = g.c_mask.bits + m * g.c_mask.row_bytes;
    for (int byte = 0; byte < NR / 8; ++byte) mask_row[n0 / 8 + byte] = uint8_t(bits >> (8 * byte));
    if (n0 + NR >= g.N)
      for (int64_t byte = n0 / 8 + NR / 8; byte < g.c_mask.row_bytes; ++byte) mask_row[byte] = 0;
  }
}

// A finished micro-tile held in memory (split-K partial sums): rows m0.., columns n0...
template <typename T>
void epilogue(const GemmArgs<T>& g, const acc_t<T>* acc, int64_t ld, int64_t m0, int64_t n0,
              int64_t mr, int64_t nr) {
  using V = typename Vec<acc_t<T>>::type;
  constexpr int NV = Tile<acc_t<T>>::NV;
  for (int64_t i = 0; i < mr; ++i) {
    V row[NV];
    std::memcpy(row, acc + i * ld, sizeof(row));
    finish_row(g, row, m0 + i, n0, nr);
  }
}

// ---------------------------------------------------------------------------------------------
// Microkernel: acc[0:MR, 0:NR] = sum_k a[k, 0:MR]^T b[k, 0:NR] in registers, plus the partial sums
// in c when `accumulate`. Then either stored back to c, or (when `out` is set: the last K block)
// finished straight from registers into rows m0 .. m0+mr of the output.

template <typename T>
inline void microkernel(int64_t kc, const acc_t<T>* __restrict a, const acc_t<T>* __restrict b,
                        acc_t<T>* __restrict c, int64_t ldc, bool accumulate,
                        const GemmArgs<T>* out, int64_t m0, int64_t n0, int64_t mr, int64_t nr) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  constexpr int MR = Tile<A>::MR, NV = Tile<A>::NV, W = Tile<A>::W, NR = Tile<A>::NR;
  // -0.0, not +0.0, is the identity of IEEE addition: a sum of -0.0 terms (or none, plus a -0.0
  // bias) stays -0.0 as in F.linear.
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = -V{};
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + k * NR + v * W, sizeof(V));
    for (int i = 0; i < MR; ++i) {
      const A ai = a[k * MR + i];
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  if (accumulate)
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) {
        V old;
        std::memcpy(&old, c + i * ldc + v * W, sizeof(V));
        acc[i][v] += old;
      }
  if (out) {
    for (int i = 0; i < MR; ++i)
      if (i < mr) finish_row(*out, acc[i], m0 + i, n0, nr);
    return;
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) std::memcpy(c + i * ldc + v * W, &acc[i][v], sizeof(V));
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
  // With a single row block each B panel has one consumer: its task packs it right before use,
  // into L2, instead of a shared pass that writes and rereads the whole packed operand.
  bool pack_b_in_task;
  A* slice_out;  // split-K partial results: [slice][M][round_up(ncols, NR)], else nullptr
  A* row_sum_partials;  // [slice][M] when g->a_row_sums, else nullptr

  int64_t slice_begin(int64_t s) const { return min64(s * slice_k, g->K); }
  int64_t slice_end(int64_t s) const { return min64((s + 1) * slice_k, g->K); }
  // Offset of K block k0 of slice s in packed_b.
  int64_t packed_b_offset(int64_t s, int64_t k0) const {
    return (s * slice_k + (k0 - slice_begin(s))) * npanels * Tile<A>::NR;
  }
};

// Packing B is split into tasks of (slice, K block, group of panels).
constexpr int64_t kPanelsPerPackTask = 8;

template <typename T> int64_t pack_b_tasks(const GemmPlan<T>& p) {
  const int64_t k_blocks = max64(1, ceil_div(p.slice_k, Tile<acc_t<T>>::KC));
  return p.slices * k_blocks * ceil_div(p.npanels, kPanelsPerPackTask);
}

template <typename T> void pack_b_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  constexpr int NR = Tile<A>::NR;
  constexpr int64_t KC = Tile<A>::KC;
  const GemmPlan<T>& p = *static_cast<const GemmPlan<T>*>(ctx);
  const int64_t groups = ceil_div(p.npanels, kPanelsPerPackTask);
  const int64_t k_blocks = max64(1, ceil_div(p.slice_k, KC));
  for (int64_t t = begin; t < end; ++t) {
    const int64_t s = t / (k_blocks * groups), kbi = (t / groups) % k_blocks, grp = t % groups;
    const int64_t k0 = p.slice_begin(s) + kbi * KC;
    if (k0 >= p.slice_end(s) && kbi > 0) continue;
    const int64_t kb = min64(KC, p.slice_end(s) - k0);
    const int64_t j = grp * kPanelsPerPackTask * NR;
    pack_b(*p.g, k0, kb, p.j0 + j, min64(kPanelsPerPackTask * NR, p.ncols - j),
           p.packed_b + p.packed_b_offset(s, k0) + j * kb);
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
      // Padded by a cache line so that rows a power of two apart do not alias in L1.
      ld = (jp1 - jp0) * NR + 64 / int(sizeof(A));
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
      const A* b_block;  // the B micro-panels jp0 .. jp1 of this K block, NR * kb apart
      if (p.pack_b_in_task) {
        A* own = thread_buffer<A, 7>((jp1 - jp0) * NR * KC);
        pack_b(g, k0, kb, p.j0 + jp0 * NR, min64((jp1 - jp0) * NR, p.ncols - jp0 * NR), own);
        b_block = own;
      } else {
        b_block = p.packed_b + p.packed_b_offset(s, k0) + jp0 * kb * NR;
      }
      // The A micro-panel stays in L1 while the chunk's B micro-panels stream from L2.
      for (int64_t ip = 0; ip < mb; ip += MR) {
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          A* tile = out + ip * ld + (jp - jp0) * NR;
          microkernel<T>(kb, packed_a + ip * kb, b_block + (jp - jp0) * kb * NR, tile, ld, !first,
                         last && !p.slice_out ? &g : nullptr, i0 + ip, p.j0 + jp * NR,
                         min64(MR, mb - ip), min64(NR, p.ncols - jp * NR));
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

    p.pack_b_in_task = p.m_blocks == 1;
    if (!p.pack_b_in_task) run_parallel(pack_b_tasks(p), threaded, &pack_b_task<T>, &p);
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

// Part of the per-ISA CPU kernels (see kernels_impl.h):
// GEMMs with a narrow output (a few columns).
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Narrow outputs
//
// The micro-tile is NR columns wide, so an output of one column (a regression head, the seed's
// 1 x 1 model) would spend 31 of every 32 multiply-adds on padding. Two layouts of the work fit
// narrow outputs instead:
// - dot products (up to kDotMaxCols columns; A read along K in place, or gathered at a short
//   stride: the forward's input, grad_input's masked grad_output, the grad_output^T of a layer
//   with few outputs): each output is a W-lane dot product along K (K blocks of KC added in
//   order), its lanes then summed in a fixed tree;
// - rows in the lanes (up to kMaxCols columns, any layout): P rows of A are packed as P-lane panels
//   (with the mask prologue and the row sums, as for the tiled path) and each step k broadcasts
//   B(k, 0 .. N) against them. Each output is then its K products summed in order from -0.0, K
//   blocks of KC added in order: it rounds exactly as the microkernel and the direct loop do.
// Whether a product is summed as dot products depends on N, K and the layouts, never on M, so a
// row's result does not depend on the batch it comes in.

template <typename A> struct NarrowTile {
  static constexpr int W = Vec<A>::width;
  // Accumulators in registers: half the register file (32 vector registers with AVX-512, else 16).
  static constexpr int kAccumulators = FUSED_LINREG_VECTOR_BYTES == 64 ? 16 : 8;
  // Widest output taken here: one vector (the transpose back to rows), half a micro-tile (wider
  // outputs waste less in the tiled path than this path's broadcasts cost).
  static constexpr int kMaxCols = min64(W, min64(Tile<A>::NR / 2, kAccumulators));
  // Row vectors per panel for NB columns: enough independent sums to hide the FMA latency.
  static constexpr int row_vectors(int nb) { return int(max64(1, min64(4, kAccumulators / nb))); }
  // Dot products: each reads A once per column, so only for the narrowest outputs; from K = 2 on
  // (one step is a copy, cheaper as rows in lanes).
  // (Both at most W: the columns, and the rows summed at once, fill one register transpose.)
  static constexpr int kDotMaxCols = int(min64(4, W));
  static constexpr int64_t kDotMinK = 2;
  static constexpr int kDotRows = W;  // rows summed at once (independent chains): one transpose
  // A read along K with a stride up to this (gathered: the weight gradient of a layer with a few
  // outputs reads grad_output^T, K = the batch, with the stride of its out_features).
  static constexpr int64_t kDotMaxStride = 16;
};

// B(k, 0 .. N) for every k, zero-padded to NB columns: dst[k * NB + n].
template <int NB, typename T> void pack_narrow_b(const GemmArgs<T>& g, acc_t<T>* dst) {
  for (int64_t k = 0; k < g.K; ++k)
    for (int n = 0; n < NB; ++n)
      dst[k * NB + n] = n < g.N ? to_acc(g.b[k * g.b_rs + n * g.b_cs]) : acc_t<T>(0);
}

// finish_row's epilogue for `rows` (<= W) output rows from m0 on, held as columns: cols[n] is
// column n (< N <= W) of those rows; cols[N .. W) are scratch (any values). Bias, ReLU and bitmask
// are computed a column at a time for all the rows at once; the rows are written out after a
// register transpose in place (one column: as is).
template <typename A>
void finish_columns(const GemmArgs<A>& g, typename Vec<A>::type* cols, int64_t m0, int rows) {
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  using IV = typename Ops::IV;
  using I = typename Ops::I;
  IV words = IV{};  // each row's mask bits
  for (int n = 0; n < g.N; ++n) {
    if (g.bias) cols[n] += g.bias[n];
    // torch.relu keeps NaN and -0.0: only values below zero become zero.
    if (g.relu) cols[n] = cols[n] < A(0) ? V{} : cols[n];
    // The gradient passes where !(out <= 0): positive or NaN outputs.
    words |= ~(cols[n] <= A(0)) & (I(1) << n);
  }
  if (g.N == 1 && g.ldc == 1) {
    Ops::store(g.c + m0, cols[0], rows);
  } else {
    Ops::transpose(cols);
    for (int l = 0; l < rows; ++l) Ops::store(g.c + (m0 + l) * g.ldc, cols[l], int(g.N));
  }
  if (g.relu && g.c_mask.bits) {
    // N <= W <= 16 bits: the first 32-bit word of each mask row, the rest of the row zero.
    if constexpr (sizeof(I) == sizeof(uint32_t)) {
      if (g.c_mask.row_bytes == sizeof(uint32_t)) {  // rows of one word: all of them at once
        std::memcpy(g.c_mask.bits + m0 * sizeof(uint32_t), &words, rows * sizeof(uint32_t));
        return;
      }
    }
    for (int l = 0; l < rows; ++l) {
      uint8_t* mask_row = g.c_mask.bits + (m0 + l) * g.c_mask.row_bytes;
      const uint32_t word = uint32_t(words[l]);
      std::memcpy(mask_row, &word, sizeof(word));
      if (g.c_mask.row_bytes > int64_t(sizeof(word)))
        std::memset(mask_row + sizeof(word), 0, g.c_mask.row_bytes - sizeof(word));
    }
  }
}

// The epilogue of `rows` (<= W) output rows from m0 on held as columns (cols[n], n < N <= W; the
// rest scratch): finish_columns where it applies, else back to rows for the epilogue every path
// shares (which reads only the first N lanes of each row).
template <typename T>
void finish_column_block(const GemmArgs<T>& g, typename Vec<acc_t<T>>::type* cols, int64_t m0,
                         int rows) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  if constexpr (std::is_same_v<T, A>) {
    if (g.sgd.param == nullptr) {
      finish_columns(g, cols, m0, rows);
      return;
    }
  }
  VecOps<A>::transpose(cols);
  for (int l = 0; l < rows; ++l) {
    V row[Tile<A>::NV] = {cols[l]};  // finish_row reads only the first vector: N <= W
    finish_row(g, row, m0 + l, 0, g.N);
  }
}

template <typename T, int NB> struct NarrowPlan {
  const GemmArgs<T>* g;
  const acc_t<T>* packed_b;  // pack_narrow_b
};

template <typename T, int NB> void narrow_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  constexpr int W = Vec<A>::width;
  constexpr int RV = NarrowTile<A>::row_vectors(NB), P = RV * W;
  constexpr int64_t KC = Tile<A>::KC;
  const NarrowPlan<T, NB>& plan = *static_cast<const NarrowPlan<T, NB>*>(ctx);
  const GemmArgs<T>& g = *plan.g;
  A* panel = thread_buffer<A, kPackedASlot>(P * KC);
  V partial[NB][RV];  // the sums of the K blocks before the current one
  // Finished columns. The transposes back to rows carry columns past N into lanes that are never
  // stored, so only the first NB are rewritten for each row group.
  V cols[W] = {};
  for (int64_t p = begin; p < end; ++p) {  // panels of P rows
    const int64_t i0 = p * P, mb = min64(P, g.M - i0);
    // Whole panels of an A whose rows are adjacent (a column of inputs, a transposed input) are
    // already in lanes: read in place, unless the prologue has work to do.
    bool in_place = false;
    if constexpr (std::is_same_v<T, A>)
      in_place = g.a_rs == 1 && mb == P && !g.a_mask.bits && !g.a_row_sums;
    V acc[NB][RV];
    int64_t k0 = 0;
    do {  // at least once, so that K == 0 still yields zeros
      const int64_t kb = min64(KC, g.K - k0);
      const A* lanes = panel;  // lanes of step k at lanes[k * step]
      int64_t step = P;
      if constexpr (std::is_same_v<T, A>) {
        if (in_place) {
          lanes = g.a + i0 + k0 * g.a_cs;
          step = g.a_cs;
        }
      }
      if (!in_place) pack_a<P>(g, i0, mb, k0, kb, panel, g.a_row_sums ? g.a_row_sums + i0 : nullptr);
      for (int n = 0; n < NB; ++n)
        for (int r = 0; r < RV; ++r) acc[n][r] = -V{};
      const A* b = plan.packed_b + k0 * NB;
      for (int64_t k = 0; k < kb; ++k) {
        V a[RV];
        std::memcpy(a, lanes + k * step, sizeof(a));
        for (int n = 0; n < NB; ++n) {
          const A bn = b[k * NB + n];
          for (int r = 0; r < RV; ++r) acc[n][r] += a[r] * bn;  // contracted as in the microkernel
        }
      }
      if (k0 > 0)
        for (int n = 0; n < NB; ++n)
          for (int r = 0; r < RV; ++r) acc[n][r] += partial[n][r];
      std::memcpy(partial, acc, sizeof(acc));
      k0 += kb;
    } while (k0 < g.K);

    for (int r = 0; r < RV && r * W < mb; ++r) {
      for (int n = 0; n < NB; ++n) cols[n] = acc[n][r];
      finish_column_block(g, cols, i0 + r * W, int(min64(W, mb - r * W)));
    }
  }
}

template <typename T, int NB> void gemm_rows_in_lanes(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  constexpr int P = NarrowTile<A>::row_vectors(NB) * Vec<A>::width;
  A* packed_b = thread_buffer<A, kPackedBSlot>(max64(g.K, 1) * NB);
  pack_narrow_b<NB>(g, packed_b);
  NarrowPlan<T, NB> plan{&g, packed_b};
  if (g.a_row_sums)
    for (int64_t m = 0; m < g.M; ++m) g.a_row_sums[m] = 0;
  run_units(ceil_div(g.M, P), 2.0 * double(g.M) * double(NB) * double(g.K), &narrow_task<T, NB>, &plan);
}

// Dot products: B(0 .. K, n) as K-contiguous rows, padded to whole vectors with -0.0 (a padding
// product is then (+0) * (-0) = -0: adding it changes no sum, -0.0 included).
template <typename A> struct DotPlan {
  const GemmArgs<A>* g;
  const A* b_rows;  // b_rows[n * k_padded + k]
  int64_t k_padded;
};

// Rows m0 .. m0+R of column n: the lanes of acc[i] sum to dot(A'(m0 + i, :), B(:, n)), and
// (when row_sums is set) the lanes of row_sums[i] to the sum of A'(m0 + i, :).
template <int R, bool Masked, bool Contiguous, typename A>
__attribute__((always_inline)) inline void dot_rows(const DotPlan<A>& p, int64_t m0, int n,
                                                    typename Vec<A>::type* __restrict acc,
                                                    typename Vec<A>::type* __restrict row_sums) {
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  constexpr int W = Ops::W;
  const GemmArgs<A>& g = *p.g;
  const PanelMask pm{g.a_mask, g.a_mask_transposed, m0, 0};
  const int64_t K = g.K, lda = g.a_rs, step = Contiguous ? 1 : g.a_cs, k_whole = K / W * W;
  const A* __restrict a = g.a + m0 * lda;
  const A* __restrict b = p.b_rows + n * p.k_padded;
  // Lane sums per K block of KC, the blocks added in order: a running sum over a whole batch
  // (K is the batch in a weight gradient) would lose precision as it grows.
  constexpr int64_t KC = Tile<A>::KC;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    V sum[R], total[R];
    for (int i = 0; i < R; ++i) sum[i] = -V{}, total[i] = V{};
    for (int64_t k = k0; k < min64(k0 + KC, K); k += W) {
      const int lanes = k < k_whole ? W : int(K - k);
      const V bv = load_vector(b + k);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        // +0 past K: times -0 adds nothing
        V av = Contiguous ? Ops::load(a + i * lda + k, lanes)
                          : Ops::load_strided(a + i * lda + k * step, step, lanes);
        if constexpr (Masked) av = Ops::select(av, pm.lane_bits(i, k, lanes));
        sum[i] += av * bv;
        if (row_sums) total[i] += av;
      }
    }
    for (int i = 0; i < R; ++i) acc[i] = k0 == 0 ? sum[i] : acc[i] + sum[i];
    if (row_sums)
      for (int i = 0; i < R; ++i) row_sums[i] = k0 == 0 ? total[i] : row_sums[i] + total[i];
  }
}

// dot_rows over `rows` (<= W) rows from m0: acc[i] (and row_sums[i]) for row m0 + i.
template <bool Masked, bool Contiguous, typename A>
inline void dot_group(const DotPlan<A>& p, int64_t m0, int rows, int n, typename Vec<A>::type* acc,
                      typename Vec<A>::type* row_sums) {
  constexpr int R = NarrowTile<A>::kDotRows;
  int i = 0;
  for (; i + R <= rows; i += R)
    dot_rows<R, Masked, Contiguous>(p, m0 + i, n, acc + i, row_sums ? row_sums + i : nullptr);
  for (; i < rows; ++i)
    dot_rows<1, Masked, Contiguous>(p, m0 + i, n, acc + i, row_sums ? row_sums + i : nullptr);
}

template <typename A> void dot_task(void* ctx, int64_t begin, int64_t end) {
  using V = typename Vec<A>::type;
  constexpr int W = Vec<A>::width;
  const DotPlan<A>& p = *static_cast<const DotPlan<A>*>(ctx);
  const GemmArgs<A>& g = *p.g;
  V cols[W] = {};  // finished columns (only the first N rewritten per group, as in narrow_task)
  for (int64_t grp = begin; grp < end; ++grp) {  // groups of W rows
    const int64_t m0 = grp * W;
    const int rows = int(min64(W, g.M - m0));
    // Rows past M stay -0.0 (their sums are never stored). Row sums ride along column 0.
    V acc[W], sums[W];
    for (int i = rows; i < W; ++i) acc[i] = -V{}, sums[i] = V{};
    for (int n = 0; n < g.N; ++n) {
      V* rs = g.a_row_sums && n == 0 ? sums : nullptr;
      if (g.a_mask.bits)
        g.a_cs == 1 ? dot_group<true, true>(p, m0, rows, n, acc, rs) : dot_group<true, false>(p, m0, rows, n, acc, rs);
      else
        g.a_cs == 1 ? dot_group<false, true>(p, m0, rows, n, acc, rs) : dot_group<false, false>(p, m0, rows, n, acc, rs);
      cols[n] = VecOps<A>::sum_lanes(acc);
    }
    if (g.a_row_sums) {
      const V totals = VecOps<A>::sum_lanes(sums);
      for (int i = 0; i < rows; ++i) g.a_row_sums[m0 + i] = totals[i];
    }
    finish_column_block(g, cols, m0, rows);
  }
}

template <typename A> void gemm_dot(const GemmArgs<A>& g) {
  constexpr int W = Vec<A>::width;
  DotPlan<A> p{&g, nullptr, round_up(g.K, W)};
  A* b_rows = thread_buffer<A, kPackedBSlot>(g.N * p.k_padded);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < p.k_padded; ++k)
      b_rows[n * p.k_padded + k] = k < g.K ? g.b[k * g.b_rs + n * g.b_cs] : -A(0);
  p.b_rows = b_rows;
  run_units(ceil_div(g.M, W), kStreamingFlopCost * 2.0 * double(g.M) * double(g.N) * double(g.K),
            &dot_task<A>, &p);
}

// Takes the GEMM as dot products when that layout fits (returns false otherwise).
template <typename T> bool gemm_narrow_dot(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    if (g.N <= NarrowTile<A>::kDotMaxCols && g.K >= NarrowTile<A>::kDotMinK &&
        g.a_cs <= NarrowTile<A>::kDotMaxStride) {
      gemm_dot(g);
      return true;
    }
  }
  return false;
}

// Takes the GEMM with rows in the lanes when the output is narrow enough (returns false otherwise).
template <typename T> bool gemm_narrow_rows(const GemmArgs<T>& g) {
  constexpr int kMax = NarrowTile<acc_t<T>>::kMaxCols;
  if (g.N > kMax) return false;
  if (g.N <= 1) gemm_rows_in_lanes<T, 1>(g);
  else if (g.N <= 2) gemm_rows_in_lanes<T, 2>(g);
  else if (g.N <= 4 || kMax < 8) gemm_rows_in_lanes<T, int(min64(4, kMax))>(g);
  else if (g.N <= 8 || kMax < 16) gemm_rows_in_lanes<T, int(min64(8, kMax))>(g);
  else gemm_rows_in_lanes<T, int(min64(16, kMax))>(g);
  return true;
}

// Part of the per-ISA CPU kernels (see kernels_impl.h):
// GEMMs with a short output (fewer rows than a micro-tile).
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Short outputs
//
// An output of a few rows (one sample through a layer, the weight gradient of a layer with few
// outputs over a whole batch) would spend most of the MR-row microkernel's multiply-adds on
// padding rows, and the tiled path would pack and store all of B for them. Here A' (its few rows,
// with the mask prologue and the row sums) is packed once, and the microkernel runs with only
// the rows there are, over B read in place (when its rows are contiguous) or packed one
// micro-panel at a time. Same products, summed in the same order: it rounds as the tiled path does.

// Row counts with a microkernel of their own; outputs of more rows take the tiled path.
constexpr int kShortRows[] = {1, 2, 4, 8};
// Packed A' over all of K stays in L2; longer products take the tiled path (and split K).
constexpr int64_t kShortMaxK = 16384;

template <typename T> struct ShortPlan {
  const GemmArgs<T>* g;
  // A' packed per K block of kb steps at packed_a + k0 * MR: as one MR-lane panel,
  // [k * MR + i], or (a_rows, for a K-contiguous A: a copy, no transpose) as rows, [i * kb + k].
  const acc_t<T>* packed_a;
  bool a_rows;
};

// B the transpose of a K-contiguous operand (the forward's W^T, W's rows its columns) would be
// packed by register transposes, stored and read back. With few rows to serve, the transposes
// feed the multiply-adds directly instead, a W x W block of W's rows at a time: for as many rows
// as leave the block and its transpose's temporaries their registers.
template <typename A>
constexpr int kTransposedBMaxRows = FUSED_LINREG_VECTOR_REGISTERS - Vec<A>::width - 4;

// The microkernel's sums for one panel of columns n0 .. n0+nr over a transposed B, in the same
// order (K blocks of KC from -0.0, each step a multiply-add, the blocks added in order).
template <typename T, int Rows>
void short_transposed_panel(const ShortPlan<T>& p, int64_t n0, int64_t nr) {
  using A = T;
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  constexpr int MR = Tile<A>::MR, NV = Tile<A>::NV, W = Tile<A>::W;
  constexpr int64_t KC = Tile<A>::KC;
  const GemmArgs<T>& g = *p.g;
  alignas(64) A partial[Rows * Tile<A>::NR];  // the sums of the K blocks so far
  int64_t k0 = 0;
  do {  // at least once, so that K == 0 still yields zeros
    const int64_t kb = min64(KC, g.K - k0);
    const A* a = p.packed_a + k0 * MR;  // A'(i, k) at a[i * a_is + k * a_ks]
    const int64_t a_is = p.a_rows ? kb : 1, a_ks = p.a_rows ? 1 : MR;
    V sums[Rows][NV];
    // A group's W rows at a time, over the whole K block: with all NV groups side by side (more
    // independent chains, twice the blocks live) a batch of one ran slower on Zen 4 (68 against
    // 57 us for 1x1024x1024).
    for (int v = 0; v < NV; ++v) {
      const int lanes = int(min64(W, max64(0, nr - v * W)));
      V s[Rows];  // in registers: sums[i][v] at a run-time v would live in memory
      for (int i = 0; i < Rows; ++i) s[i] = -V{};
      for (int64_t k = 0; k < kb && lanes > 0; k += W) {
        const int steps = int(min64(W, kb - k));
        const A* rows = g.b + (n0 + v * W) * g.b_cs + k0 + k;
        V block[W];
        if (lanes == W && steps == W) {
          for (int l = 0; l < W; ++l) block[l] = load_vector(rows + l * g.b_cs);
        } else {
          for (int l = 0; l < W; ++l) block[l] = l < lanes ? Ops::load(rows + l * g.b_cs, steps) : V{};
        }
        Ops::transpose(block);
        for (int kk = 0; kk < steps; ++kk)
          for (int i = 0; i < Rows; ++i) s[i] += a[i * a_is + (k + kk) * a_ks] * block[kk];
      }
      for (int i = 0; i < Rows; ++i) sums[i][v] = s[i];
    }
    for (int i = 0; i < Rows && k0 > 0; ++i)
      for (int v = 0; v < NV; ++v) sums[i][v] += load_vector(partial + i * Tile<A>::NR + v * W);
    k0 += kb;
    if (k0 >= g.K) {
      for (int i = 0; i < Rows && i < g.M; ++i) finish_row(g, sums[i], i, n0, nr);
      return;
    }
    for (int i = 0; i < Rows; ++i)
      for (int v = 0; v < NV; ++v) store_vector(partial + i * Tile<A>::NR + v * W, sums[i][v]);
  } while (true);
}

template <typename T, int Rows> void short_task(void* ctx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  constexpr int MR = Tile<A>::MR, NR = Tile<A>::NR;
  constexpr int64_t KC = Tile<A>::KC;
  const ShortPlan<T>& p = *static_cast<const ShortPlan<T>*>(ctx);
  const GemmArgs<T>& g = *p.g;
  alignas(64) A partial[Rows * NR];  // the sums of the K blocks so far
  for (int64_t jp = begin; jp < end; ++jp) {  // panels of NR columns
    const int64_t n0 = jp * NR, nr = min64(NR, g.N - n0);
    const A* b = nullptr;  // NR columns of B, row k at b[k * ldb]
    int64_t ldb = NR;
    if constexpr (std::is_same_v<T, A>) {
      if (g.b_cs == 1 && nr == NR) {  // whole rows of B, read in place
        b = g.b + n0;
        ldb = g.b_rs;
      }
    }
    if constexpr (std::is_same_v<T, A> && Rows <= kTransposedBMaxRows<A>) {
      if (b == nullptr && g.b_rs == 1) {
        short_transposed_panel<T, Rows>(p, n0, nr);
        continue;
      }
    }
    if (b == nullptr) {
      A* own = thread_buffer<A, kTaskPackedBSlot>(max64(g.K, 1) * NR);
      pack_b(g, 0, g.K, n0, nr, own);
      b = own;
    }
    int64_t k0 = 0;
    do {  // at least once, so that K == 0 still yields zeros
      const int64_t kb = min64(KC, g.K - k0);
      const bool last = k0 + kb >= g.K;
      const A* a = p.packed_a + k0 * MR;
      const GemmArgs<T>* out = last ? &g : nullptr;
      if (p.a_rows)
        microkernel<T, false, Rows>(kb, a, kb, b + k0 * ldb, ldb, partial, NR, k0 > 0, out, 0, n0, g.M, nr);
      else
        microkernel<T, true, Rows>(kb, a, 0, b + k0 * ldb, ldb, partial, NR, k0 > 0, out, 0, n0, g.M, nr);
      k0 += kb;
    } while (k0 < g.K);
  }
}

template <typename T, int Rows>
void gemm_short_rows(const GemmArgs<T>& g, const acc_t<T>* packed_a, bool a_rows) {
  ShortPlan<T> plan{&g, packed_a, a_rows};
  run_units(ceil_div(g.N, Tile<acc_t<T>>::NR),
            kStreamingFlopCost * 2.0 * double(Rows) * double(g.N) * double(g.K),
            &short_task<T, Rows>, &plan);
}

// Takes the GEMM when the output is short enough (returns false otherwise).
template <typename T> bool gemm_short(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  constexpr int MR = Tile<A>::MR;
  int rows = 0;
  for (int r : kShortRows)
    if (r < MR && g.M <= r && rows == 0) rows = r;
  if (rows == 0 || g.K > kShortMaxK) return false;
  // The row sums of the whole of A' come out of packing it, K block by K block as in the tiled path.
  A* packed_a = thread_buffer<A, kPackedASlot>(max64(g.K, 1) * MR);
  const bool a_rows = pack_a_blocks(g, packed_a, MR, rows);  // the microkernels read `rows` rows
  if (rows == 1)
    gemm_short_rows<T, 1>(g, packed_a, a_rows);
  else if (rows == 2)
    gemm_short_rows<T, 2>(g, packed_a, a_rows);
  else if (rows == 4)
    gemm_short_rows<T, 4>(g, packed_a, a_rows);
  else if constexpr (MR > 8)
    gemm_short_rows<T, 8>(g, packed_a, a_rows);
  return true;
}

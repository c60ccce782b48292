// Part of the per-ISA CPU kernels (see kernels_impl.h):
// packing of both GEMM operands, with the ReLU-mask prologue.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

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

// The mask bits of `n` (<= 57) consecutive positions starting at bit b0 of a row of row_bytes.
inline uint64_t load_bits(const uint8_t* row, int64_t row_bytes, int64_t b0, int n) {
  const int64_t first = b0 >> 3;
  uint64_t bits = 0;
  if (first + 8 <= row_bytes) {  // one load when the row has the bytes (little-endian)
    std::memcpy(&bits, row + first, sizeof(bits));
  } else {
    const int64_t last = (b0 + n - 1) >> 3;
    for (int64_t byte = first; byte <= last; ++byte) bits |= uint64_t(row[byte]) << (8 * (byte - first));
  }
  return (bits >> (b0 & 7)) & ((uint64_t(1) << n) - 1);
}

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
    if (!lanes_along_row)
      return load_bits(mask.bits + (lane0 + lane) * mask.row_bytes, mask.row_bytes, k0 + k, n);
    uint64_t b = 0;
    for (int i = 0; i < n; ++i) b |= uint64_t(bit(lane, k + i)) << i;
    return b;
  }
  // Bits of lanes lane .. lane+n at step k.
  uint64_t step_bits(int64_t lane, int64_t k, int n) const {
    if (lanes_along_row)
      return load_bits(mask.bits + (k0 + k) * mask.row_bytes, mask.row_bytes, lane0 + lane, n);
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
        bool loaded = false;
        if constexpr (std::is_same_v<T, A>) {
          if (n == W) {  // a whole group: unrolled, so that the block stays in registers
            for (int l = 0; l < W; ++l) block[l] = load_vector(src + (lane + l) * ls + k);
            loaded = true;
          }
        }
        for (int l = 0; l < W && !loaded; ++l)
          block[l] = l < n ? Ops::load(src + (lane + l) * ls + k, W) : V{};
        for (int l = 0; l < n && k + 4 * W < kb; ++l)
          __builtin_prefetch(src + (lane + l) * ls + k + 4 * W);
        for (int l = 0; pm && l < n; ++l)
          block[l] = Ops::select(block[l], pm->lane_bits(lane + l, k, W));
        Ops::transpose(block);
        for (int kk = 0; kk < W; ++kk) {
          // A fixed-size copy for whole groups: a run-time length compiles to a string copy.
          if (width == W)
            store_vector(gdst + (k + kk) * P, block[kk]);
          else
            Ops::store(gdst + (k + kk) * P, block[kk], width);
        }
        if (lane_sums)  // a chain of W dependent adds: only when the sums are wanted
          for (int kk = 0; kk < W; ++kk) sums += block[kk];
      }
      if (lane_sums)
        for (int l = 0; l < n; ++l) lane_sums[lane + l] += sums[l];
    }
  }
  // Lane sums of these steps accumulate in whole vectors, one per group of W lanes: a masked
  // store followed by a masked load of the same address is not forwarded, and stalls.
  constexpr int kGroups = (P + W - 1) / W;
  V* sums = nullptr;
  if (lane_sums && k_transposed < kb)
    sums = reinterpret_cast<V*>(thread_buffer<A, kLaneSumsSlot>(panels * kGroups * W));
  for (int64_t i = 0; sums && i < panels * kGroups; ++i) sums[i] = V{};
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
        Ops::store(dst + p * P * kb + k * P + g0, v, width);
        if (sums) sums[p * kGroups + g0 / W] += v;
      }
    }
  }
  for (int64_t p = 0; sums && p < panels; ++p)
    for (int g0 = 0; g0 < P; g0 += W) {
      const int64_t lane = p * P + g0;
      const int n = int(min64(P - g0 < W ? P - g0 : W, max64(0, lanes - lane)));
      for (int l = 0; l < n; ++l) lane_sums[lane + l] += sums[p * kGroups + g0 / W][l];
    }
}

// Packs A(i0 : i0+mb, k0 : k0+kb), with the mask prologue, into P-row panels (P = MR: micro-panels):
// dst[(i / P) * P * kb + k * P + i % P]. row_sums[i] (when set) += sum over this K block.
template <int P, typename T>
void pack_a(const GemmArgs<T>& g, int64_t i0, int64_t mb, int64_t k0, int64_t kb, acc_t<T>* dst,
            acc_t<T>* row_sums) {
  using A = acc_t<T>;
  const PanelMask pm{g.a_mask, g.a_mask_transposed, i0, k0};
  // Sums of this block first, then added: a running sum over millions of rows would stall
  // (float32 stops growing at 2^24), a sum per block of KC rows does not.
  A* block_sums = row_sums ? thread_buffer<A, kBlockRowSumsSlot>(mb) : nullptr;
  for (int64_t i = 0; block_sums && i < mb; ++i) block_sums[i] = 0;
  pack_panels<P>(g.a + i0 * g.a_rs + k0 * g.a_cs, g.a_rs, g.a_cs, mb, kb, dst,
                           g.a_mask.bits ? &pm : nullptr, block_sums);
  for (int64_t i = 0; block_sums && i < mb; ++i) row_sums[i] += block_sums[i];
}

// Packs rows i0 .. i0+mb of a K-contiguous A, steps k0 .. k0+kb, with the mask prologue, as rows:
// dst[i * kb + k], zero rows up to a multiple of pad_rows (the rows the microkernel will read: a
// whole micro-panel, or a short output's few). The microkernel reads them as it reads an operand in
// place (lda = kb); unlike MR-lane panels this needs no transpose, only a (masked) copy.
// row_sums[i] (when set) += sum over this K block.
template <typename T>
void pack_a_rows(const GemmArgs<T>& g, int64_t i0, int64_t mb, int64_t k0, int64_t kb,
                 acc_t<T>* dst, acc_t<T>* row_sums, int64_t pad_rows = Tile<acc_t<T>>::MR) {
  using A = acc_t<T>;
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  constexpr int W = Ops::W;
  const PanelMask pm{g.a_mask, g.a_mask_transposed, i0, k0};
  for (int64_t i = 0; i < mb; ++i) {
    const T* src = g.a + (i0 + i) * g.a_rs + k0;
    A* row = dst + i * kb;
    V sum = V{};
    for (int64_t k = 0; k < kb; k += W) {
      const int n = int(min64(W, kb - k));
      V v = Ops::load(src + k, n);
      if (g.a_mask.bits) v = Ops::select(v, pm.lane_bits(i, k, n));
      Ops::store(row + k, v, n);
      sum += v;
    }
    if (row_sums) {
      A total = 0;
      for (int l = 0; l < W; ++l) total += sum[l];
      row_sums[i] += total;
    }
  }
  std::memset(dst + mb * kb, 0, (round_up(mb, pad_rows) - mb) * kb * sizeof(A));
}

// Packs all of A' (rows 0 .. M) K block by K block, block k0 at dst + k0 * block_stride (0: each
// block over the last), with the row sums over all of K when wanted. K-contiguous rows are copied
// as rows, [i * kb + k] (no transpose; zero rows up to a multiple of pad_rows); otherwise MR-lane
// panels, [k * MR + i]. Returns whether as rows.
template <typename T>
bool pack_a_blocks(const GemmArgs<T>& g, acc_t<T>* dst, int64_t block_stride,
                   int64_t pad_rows = Tile<acc_t<T>>::MR) {
  constexpr int64_t KC = Tile<acc_t<T>>::KC;
  const bool as_rows = g.a_cs == 1;
  if (g.a_row_sums)
    for (int64_t m = 0; m < g.M; ++m) g.a_row_sums[m] = 0;
  for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
    const int64_t kb = min64(KC, g.K - k0);
    if (as_rows)
      pack_a_rows(g, 0, g.M, k0, kb, dst + k0 * block_stride, g.a_row_sums, pad_rows);
    else
      pack_a<Tile<acc_t<T>>::MR>(g, 0, g.M, k0, kb, dst + k0 * block_stride, g.a_row_sums);
  }
  return as_rows;
}

// Packs B(k0 : k0+kb, j0 : j0+nb) into NR-column micro-panels: dst[(j / NR) * NR * kb + k * NR +
// j % NR].
template <typename T>
void pack_b(const GemmArgs<T>& g, int64_t k0, int64_t kb, int64_t j0, int64_t nb, acc_t<T>* dst) {
  pack_panels<Tile<acc_t<T>>::NR>(g.b + k0 * g.b_rs + j0 * g.b_cs, g.b_cs, g.b_rs, nb, kb, dst,
                                  nullptr, nullptr);
}

// Part of the per-ISA CPU kernels (see kernels_impl.h):
// the GEMM driver: blocking, threading, split-K.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// The GEMM driver

template <typename T> struct GemmPlan {
  using A = acc_t<T>;
  const GemmArgs<T>* g;
  int64_t slices, slice_k;  // split of K into independent slices (fixed by shape, not threads)
  int64_t j0, ncols, npanels;  // the current column block
  // Row blocks: m_blocks runs of the ceil(M / MR) micro-panels, their lengths differing by at most
  // one micro-panel, so that threads given equal numbers of tasks get equal work.
  int64_t m_blocks;
  int64_t chunk_panels, chunks;  // column chunks of one task
  A* packed_b;  // [slice][K block][panel][kb][NR]
  // With a single row block each B panel has one consumer: its task packs it right before use,
  // into L2, instead of a shared pass that writes and rereads the whole packed operand.
  bool pack_b_in_task;
  // A is K-contiguous: its micro-panels are rows (read in place, or packed as rows), not MR-lane
  // panels. Rows are read in place when direct_a (see kDirectAMaxCols).
  bool a_rows, direct_a;
  A* slice_out;  // split-K partial results: [slice][M][round_up(ncols, NR)], else nullptr
  A* row_sum_partials;  // [slice][M] when g->a_row_sums, else nullptr

  int64_t row_block_begin(int64_t ib) const {
    const int64_t panels = ceil_div(g->M, Tile<A>::MR);
    return min64(ib * panels / m_blocks * Tile<A>::MR, g->M);
  }
  int64_t slice_begin(int64_t s) const { return min64(s * slice_k, g->K); }
  int64_t slice_end(int64_t s) const { return min64((s + 1) * slice_k, g->K); }
  // Offset of K block k0 of slice s in packed_b.
  int64_t packed_b_offset(int64_t s, int64_t k0) const {
    return (s * slice_k + (k0 - slice_begin(s))) * npanels * Tile<A>::NR;
  }
};

// A read in place: for up to this many columns (8 micro-panels of float32) packing A costs about
// as much as the products it serves. Rows a multiple of kL1AliasBytes apart would fall into the
// same few L1 sets, so such operands are packed anyway.
constexpr int64_t kDirectAMaxCols = 256;
constexpr int64_t kL1AliasBytes = 2048;

// Packing B is split into tasks of (slice, K block, group of panels).
constexpr int64_t kPanelsPerPackTask = 2;

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
    const int64_t i0 = p.row_block_begin(ib), mb = p.row_block_begin(ib + 1) - i0;  // mb >= 1
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
      out = thread_buffer<A, kTileOutSlot>(mb_pad * ld);
    }
    A* packed_a = thread_buffer<A, kPackedASlot>(mb_pad * KC);
    // The bias gradient is summed by one task per row block, on the first column block only.
    A* row_sums =
        (p.row_sum_partials && cb == 0 && p.j0 == 0) ? p.row_sum_partials + s * g.M + i0 : nullptr;

    const int64_t kbeg = p.slice_begin(s), kend = p.slice_end(s);
    int64_t k0 = kbeg;
    do {  // at least once, so that K == 0 still yields zeros
      const int64_t kb = min64(KC, kend - k0);
      const bool first = k0 == kbeg, last = k0 + kb >= kend;
      // A in rows: whole micro-panels read in place (direct_a), the rest packed as rows (a partial
      // last panel among them, so that no row past M is read). Otherwise A in MR-lane panels.
      const int64_t in_place_rows = p.direct_a ? mb / MR * MR : 0;
      if (!p.a_rows)
        pack_a<MR>(g, i0, mb, k0, kb, packed_a, row_sums);
      else if (in_place_rows < mb)
        pack_a_rows(g, i0 + in_place_rows, mb - in_place_rows, k0, kb, packed_a,
                    row_sums ? row_sums + in_place_rows : nullptr);
      const A* b_block;  // the B micro-panels jp0 .. jp1 of this K block, NR * kb apart
      if (p.pack_b_in_task) {
        A* own = thread_buffer<A, kTaskPackedBSlot>((jp1 - jp0) * NR * KC);
        pack_b(g, k0, kb, p.j0 + jp0 * NR, min64((jp1 - jp0) * NR, p.ncols - jp0 * NR), own);
        b_block = own;
      } else {
        b_block = p.packed_b + p.packed_b_offset(s, k0) + jp0 * kb * NR;
      }
      // The A micro-panel stays in L1 while the chunk's B micro-panels stream from L2.
      for (int64_t ip = 0; ip < mb; ip += MR) {
        // A read in place comes from memory, not from a packing pass that just touched it: fetch
        // the next micro-panel's rows while this one computes.
        if (ip + 2 * MR <= in_place_rows)
          for (int i = 0; i < MR; ++i)
            for (int64_t k = 0; k < kb; k += 64 / int64_t(sizeof(A)))
              __builtin_prefetch(g.a + (i0 + ip + MR + i) * g.a_rs + k0 + k);
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          A* tile = out + ip * ld + (jp - jp0) * NR;
          const A* b_panel = b_block + (jp - jp0) * kb * NR;
          const GemmArgs<T>* finish = last && !p.slice_out ? &g : nullptr;
          const int64_t m0 = i0 + ip, n0 = p.j0 + jp * NR;
          const int64_t mr = min64(MR, mb - ip), nr = min64(NR, p.ncols - jp * NR);
          if (!p.a_rows) {
            microkernel_rows<T, true>(kb, packed_a + ip * kb, 0, b_panel, NR, tile, ld, !first,
                                      finish, m0, n0, mr, nr);
            continue;
          }
          const A* a_rows = packed_a + (ip - in_place_rows) * kb;
          int64_t lda = kb;
          if constexpr (std::is_same_v<T, A>) {
            if (ip < in_place_rows) {
              a_rows = g.a + m0 * g.a_rs + k0;
              lda = g.a_rs;
            }
          }
          microkernel_rows<T, false>(kb, a_rows, lda, b_panel, NR, tile, ld, !first, finish, m0, n0,
                                     mr, nr);
        }
      }
      k0 += kb;
    } while (k0 < kend);
  }
  if (g.stream_c) _mm_sfence();  // the streamed tiles, visible to the thread that reads them
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
    const int64_t mr = min64(MR, g.M - it * MR);  // the rows past M were never computed
    for (int64_t s = 1; s < p.slices; ++s)
      for (int i = 0; i < mr; ++i)
        for (int j = 0; j < NR; ++j) tile[i * ld + j] += tile[s * slice_stride + i * ld + j];
    epilogue(g, tile, ld, it * MR, p.j0 + jp * NR, mr, min64(NR, p.ncols - jp * NR));
  }
}

// Problems of a few thousand multiply-adds within one K block, or of a handful of outputs (the
// 1 x 1 weight gradient of the seed's model is one dot product over the whole batch): the tiled
// path's fixed costs (packing, accumulator set-up, the padded epilogue) would outweigh the
// arithmetic. Each output row segment is summed in plain loops, with the mask prologue and the row
// sums, and goes through the scalar form of the epilogue. The sums round exactly as the
// microkernel's (K blocks of KC summed in order from -0.0, fused multiply-adds where the ISA has
// them, the blocks added in order), so a row's result does not depend on the path.
constexpr int64_t kDirectMaxMacs = 2048;
constexpr int64_t kDirectMaxOutputs = 4;

template <typename T> void gemm_direct(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  constexpr int NR = Tile<A>::NR;
  constexpr int64_t KC = Tile<A>::KC;
  const PanelMask pm{g.a_mask, g.a_mask_transposed, 0, 0};
  for (int64_t m = 0; m < g.M; ++m) {
    A row_sum = 0;
    for (int64_t n0 = 0; n0 < g.N; n0 += NR) {
      const int64_t nr = min64(NR, g.N - n0);
      A sums[NR];
      int64_t k0 = 0;
      do {  // at least once, so that K == 0 still yields zeros
        const int64_t kb = min64(KC, g.K - k0);
        A block[NR];
        for (int64_t j = 0; j < nr; ++j) block[j] = -A(0);  // the identity of IEEE addition
        A block_sum = 0;
        for (int64_t k = k0; k < k0 + kb; ++k) {
          A a = to_acc(g.a[m * g.a_rs + k * g.a_cs]);
          if (g.a_mask.bits && !pm.bit(m, k)) a = A(0);
          block_sum += a;
          for (int64_t j = 0; j < nr; ++j) {
            const A b = to_acc(g.b[k * g.b_rs + (n0 + j) * g.b_cs]);
#if defined(FUSED_LINREG_ISA_AVX512) || defined(FUSED_LINREG_ISA_AVX2)
            block[j] = std::fma(a, b, block[j]);  // the microkernel's contracted multiply-add
#else
            block[j] += a * b;  // no FMA instructions in the baseline ISA: the microkernel rounds twice
#endif
          }
        }
        for (int64_t j = 0; j < nr; ++j) sums[j] = k0 == 0 ? block[j] : sums[j] + block[j];
        if (n0 == 0) row_sum += block_sum;
        k0 += kb;
      } while (k0 < g.K);
      finish_row_scalar(g, sums, m, n0, nr);
    }
    if (g.a_row_sums) g.a_row_sums[m] = row_sum;
  }
}

// Half the last-level cache of the CPUs we measure on (32 MiB L3).
constexpr double kStreamOutputMinBytes = 16.0 * 1024 * 1024;

template <typename T> void gemm(const GemmArgs<T>& g) {
  using A = acc_t<T>;
  using TileA = Tile<A>;
  constexpr int MR = TileA::MR, NR = TileA::NR;
  constexpr int64_t KC = TileA::KC;
  if (g.M == 0) return;
  if (g.N == 0) {
    // No output, but the row sums (a bias gradient) may still be wanted.
    if (g.a_row_sums) {
      pack_a_blocks(g, thread_buffer<A, kPackedASlot>(round_up(g.M, MR) * KC), 0);  // for the sums only
    }
    return;
  }

  // Paths for outputs of few columns, tiny products, outputs of few rows, then the tiled path.
  // Only the dot products round differently, and they are chosen by N, K and layout alone (see
  // kernel_narrow.h), so a row's result never depends on the batch size.
  if (gemm_narrow_dot(g)) return;
  if ((g.K <= KC && g.M * g.N <= kDirectMaxMacs && g.M * g.N * g.K <= kDirectMaxMacs) ||
      g.M * g.N <= kDirectMaxOutputs) {
    gemm_direct(g);
    return;
  }
  if (gemm_short(g) || gemm_narrow_rows(g)) return;

  // Outputs this large are not read back from cache: their whole micro-tiles bypass it, so that
  // each line is written without being read in first (twice the memory traffic of the output
  // otherwise). Only where every row starts on a cache line, so that streamed tiles fill whole
  // lines.
  GemmArgs<T> tiled = g;
  tiled.stream_c = std::is_same_v<T, A> && g.sgd.param == nullptr && g.c != nullptr &&
                   double(g.M) * double(g.ldc) * sizeof(T) >= kStreamOutputMinBytes &&
                   reinterpret_cast<uintptr_t>(g.c) % 64 == 0 && (g.ldc * int64_t(sizeof(T))) % 64 == 0;
  GemmPlan<T> p;
  p.g = &tiled;
  const int threads = num_threads();
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  const bool threaded = threads > 1 && flops >= kThreadedMinFlops;

  // Split K when the output has too few micro-tiles to share among threads. Decided by shape
  // alone, so that the result is bitwise the same for any thread count.
  const int64_t tiles = ceil_div(g.M, MR) * ceil_div(g.N, NR);
  p.slices = 1;
  if (tiles < 32 && g.K >= 8 * KC) p.slices = min64(16, g.K / (4 * KC));
  p.slice_k = g.K == 0 ? 0 : round_up(ceil_div(g.K, p.slices), KC);
  p.slices = g.K == 0 ? 1 : ceil_div(g.K, p.slice_k);

  const int64_t nc_max = max64(NR, (TileA::B_BUDGET / max64(g.K, 1)) / NR * NR);
  const int64_t nc = min64(round_up(g.N, NR), nc_max);

  A* slice_out = nullptr;
  if (p.slices > 1)
    slice_out = thread_buffer<A, kSliceOutSlot>(p.slices * round_up(g.M, MR) * nc);
  A* row_sum_partials = nullptr;
  if (g.a_row_sums) {
    row_sum_partials = thread_buffer<A, kRowSumPartialsSlot>(p.slices * g.M);
    for (int64_t i = 0; i < p.slices * g.M; ++i) row_sum_partials[i] = 0;
  }

  p.a_rows = g.a_cs == 1 && g.a_rs != 1;
  p.direct_a = p.a_rows && std::is_same_v<T, A> && !g.a_mask.bits && !g.a_row_sums &&
               nc <= kDirectAMaxCols && (g.a_rs * int64_t(sizeof(A))) % kL1AliasBytes != 0;
  for (int64_t j0 = 0; j0 < g.N; j0 += nc) {
    p.j0 = j0;
    p.ncols = min64(nc, g.N - j0);
    p.npanels = ceil_div(p.ncols, NR);
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
    p.m_blocks = min64(m_blocks, ceil_div(g.M, MR));
    p.chunk_panels = ceil_div(p.npanels, chunks);
    p.chunks = ceil_div(p.npanels, p.chunk_panels);

    // The shared packed B holds all of K for the column block: only allocated when shared
    // (a single row block packs in its tasks, which also keeps a huge K within memory).
    p.pack_b_in_task = p.m_blocks == 1;
    p.packed_b = p.pack_b_in_task ? nullptr : thread_buffer<A, kPackedBSlot>(p.slices * p.slice_k * nc);
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

// Part of the per-ISA CPU kernels (see kernels_impl.h): the register-blocked microkernel.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Microkernel: acc[0:MR, 0:NR] = sum_k A(0:MR, k)^T b[k * ldb + 0:NR] in registers, plus the
// partial sums in c when `accumulate`. Then either stored back to c, or (when `out` is set: the last
// K block) finished straight from registers into rows m0 .. m0+mr of the output.
// A(i, k) is an MR-lane micro-panel, a[k * MR + i], when PackedA; otherwise MR rows,
// a[i * lda + k] (of the operand in place, or packed as rows; all MR must be readable).
// B is a packed micro-panel (ldb = NR) or rows of the operand in place. Rows < MR computes only
// the first Rows rows (outputs of fewer rows than a micro-tile).

template <typename T, bool PackedA, int Rows = Tile<acc_t<T>>::MR>
inline void microkernel(int64_t kc, const acc_t<T>* __restrict a, int64_t lda,
                        const acc_t<T>* __restrict b, int64_t ldb,
                        acc_t<T>* __restrict c, int64_t ldc, bool accumulate,
                        const GemmArgs<T>* out, int64_t m0, int64_t n0, int64_t mr, int64_t nr) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  constexpr int MR = Rows, NV = Tile<A>::NV, W = Tile<A>::W, NR = Tile<A>::NR;
  constexpr int PANEL = Tile<A>::MR;  // lanes of a packed A micro-panel
  // -0.0, not +0.0, is the identity of IEEE addition: a sum of -0.0 terms (or none, plus a -0.0
  // bias) stays -0.0 as in F.linear.
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = -V{};
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_vector(b + k * ldb + v * W);
    for (int i = 0; i < MR; ++i) {
      const A ai = PackedA ? a[k * PANEL + i] : a[i * lda + k];
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  if (accumulate)
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] += load_vector(c + i * ldc + v * W);
  if (out) {
    if constexpr (std::is_same_v<T, A> && MR == PANEL) {
      if (mr == MR && nr == NR && out->sgd.param == nullptr) {
        if (out->relu)
          finish_tile<true>(*out, acc, m0, n0);
        else
          finish_tile<false>(*out, acc, m0, n0);
        return;
      }
    }
    for (int i = 0; i < MR; ++i)
      if (i < mr) finish_row(*out, acc[i], m0 + i, n0, nr);
    return;
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) store_vector(c + i * ldc + v * W, acc[i][v]);
}

// The microkernel over a micro-panel of mr <= MR rows: the last one of a row block takes the
// fewest rows among 1, 2, 4, 8 that hold it, not MR (the same sums, without multiply-adds for the
// padding rows, which it neither reads nor writes).
template <typename T, bool PackedA, int Rows = 1>
inline void microkernel_rows(int64_t kc, const acc_t<T>* __restrict a, int64_t lda,
                             const acc_t<T>* __restrict b, int64_t ldb, acc_t<T>* __restrict c,
                             int64_t ldc, bool accumulate, const GemmArgs<T>* out, int64_t m0,
                             int64_t n0, int64_t mr, int64_t nr) {
  if constexpr (Rows < Tile<acc_t<T>>::MR) {
    if (mr <= Rows)
      return microkernel<T, PackedA, Rows>(kc, a, lda, b, ldb, c, ldc, accumulate, out, m0, n0, mr, nr);
    return microkernel_rows<T, PackedA, 2 * Rows>(kc, a, lda, b, ldb, c, ldc, accumulate, out, m0,
                                                  n0, mr, nr);
  } else {
    microkernel<T, PackedA>(kc, a, lda, b, ldb, c, ldc, accumulate, out, m0, n0, mr, nr);
  }
}

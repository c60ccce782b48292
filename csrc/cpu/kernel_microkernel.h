// Part of the per-ISA CPU kernels (see kernels_impl.h): the register-blocked microkernel.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

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

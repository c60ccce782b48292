// Part of the per-ISA CPU kernels (see kernels_impl.h):
// the epilogue: bias, ReLU and bitmask, or the in-backward SGD update.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Epilogue: a finished row segment of acc (NR lanes, nr valid) becomes output row m, columns n0..

// The finished gradient row is the gradient of the parameter row: apply torch.optim.SGD's update.
template <typename T>
void sgd_row(const GemmArgs<T>& g, const acc_t<T>* grad_row, int64_t m, int64_t n0, int64_t nr) {
  using A = acc_t<T>;
  const SgdEpilogue<T>& s = g.sgd;
  T* p = s.param + m * g.ldc + n0;
  T* buf = s.momentum_buffer ? s.momentum_buffer + m * g.ldc + n0 : nullptr;
  const SgdCoefficients<A> c = sgd_coefficients<A, A>(s.options, buf != nullptr, Splat<A>{});
  for (int64_t j = 0; j < nr; ++j) {
    const A b = buf ? to_acc(buf[j]) : A(0);
    // The gradient is rounded to the parameter's dtype first, as autograd would store it.
    const A grad = to_acc(from_acc<T>(grad_row[j]));
    const auto next = sgd_update(to_acc(p[j]), grad, b, s.init_momentum_buffer, c, FusedMultiplyAdd{});
    p[j] = from_acc<T>(next.param);
    if (buf) buf[j] = from_acc<T>(next.momentum_buffer);
  }
}

// Writes the ReLU bitmask bits of row m, columns n0 .. n0+NR. Whole bytes: micro-tiles never
// share one. The tile that ends a row clears its padding.
template <typename T> inline void store_mask_bits(const GemmArgs<T>& g, uint64_t bits, int64_t m, int64_t n0) {
  constexpr int NR = Tile<acc_t<T>>::NR;
  uint8_t* mask_row = g.c_mask.bits + m * g.c_mask.row_bytes;
  for (int byte = 0; byte < NR / 8; ++byte) mask_row[n0 / 8 + byte] = uint8_t(bits >> (8 * byte));
  if (n0 + NR >= g.N)
    for (int64_t byte = n0 / 8 + NR / 8; byte < g.c_mask.row_bytes; ++byte) mask_row[byte] = 0;
}

// out = act(vals + bias) with the ReLU bitmask, or the in-backward SGD update of the parameter,
// element by element: for bfloat16 outputs, and for rows summed as scalars (reading them back as
// vectors would stall on store forwarding).
template <typename T>
void finish_row_scalar(const GemmArgs<T>& g, const acc_t<T>* vals, int64_t m, int64_t n0, int64_t nr) {
  using A = acc_t<T>;
  if (g.sgd.param != nullptr) {
    sgd_row(g, vals, m, n0, nr);
    return;
  }
  uint64_t bits = 0;
  T* out = g.c + m * g.ldc + n0;
  for (int64_t j = 0; j < nr; ++j) {
    A v = vals[j];
    if (g.bias) v += to_acc(g.bias[n0 + j]);
    if (g.relu) v = v < A(0) ? A(0) : v;
    out[j] = from_acc<T>(v);
    // The mask is taken from the stored output, as PyTorch's backward sees it.
    bits |= uint64_t(!(to_acc(out[j]) <= A(0))) << j;
  }
  if (g.relu && g.c_mask.bits) store_mask_bits(g, bits, m, n0);
}

// finish_row_scalar for a row segment of acc held in vectors (NR lanes, nr valid).
template <typename T>
inline void finish_row(const GemmArgs<T>& g, typename Vec<acc_t<T>>::type* row, int64_t m,
                       int64_t n0, int64_t nr) {
  using A = acc_t<T>;
  using V = typename Vec<A>::type;
  constexpr int NV = Tile<A>::NV, W = Tile<A>::W;
  if constexpr (!std::is_same_v<T, A>) {
    finish_row_scalar(g, reinterpret_cast<const A*>(row), m, n0, nr);
  } else {
    if (g.sgd.param != nullptr) {
      sgd_row(g, reinterpret_cast<const A*>(row), m, n0, nr);
      return;
    }
    // Vectors, with masked loads and stores for the lanes past a narrow output's last column.
    uint64_t bits = 0;
    T* out = g.c + m * g.ldc + n0;
    for (int v = 0; v < NV; ++v) {
      const int lanes = int(min64(W, max64(0, nr - v * W)));
      if (lanes == 0) break;
      if (g.bias) row[v] += VecOps<A>::load(g.bias + n0 + v * W, lanes);
      // torch.relu keeps NaN and -0.0: only values below zero become zero.
      if (g.relu) row[v] = row[v] < A(0) ? V{} : row[v];
      if (lanes == W)
        store_vector(out + v * W, row[v]);
      else
        VecOps<A>::store(out + v * W, row[v], lanes);
      if (g.relu) bits |= uint64_t(gradient_lanes<A>(row[v]) & ((uint64_t(1) << lanes) - 1)) << (v * W);
    }
    if (g.relu && g.c_mask.bits) store_mask_bits(g, bits, m, n0);
  }
}

// finish_row's common case, a whole micro-tile of a float or double output straight from the
// accumulators: the bias is loaded once and the per-row work has no branches.
template <bool Relu, typename A>
inline void finish_tile(const GemmArgs<A>& g, const typename Vec<A>::type (*acc)[Tile<A>::NV],
                        int64_t m0, int64_t n0) {
  using V = typename Vec<A>::type;
  constexpr int MR = Tile<A>::MR, NV = Tile<A>::NV, W = Tile<A>::W;
  V bias[NV];
  for (int v = 0; v < NV; ++v) bias[v] = g.bias ? VecOps<A>::load(g.bias + n0 + v * W, W) : -V{};
  A* out = g.c + m0 * g.ldc + n0;
  const bool mask = Relu && g.c_mask.bits;
  for (int i = 0; i < MR; ++i) {
    uint64_t bits = 0;
    for (int v = 0; v < NV; ++v) {
      V r = acc[i][v] + bias[v];  // + -0.0 without a bias: exact
      if constexpr (Relu) {
        r = r < A(0) ? V{} : r;
        bits |= uint64_t(gradient_lanes<A>(r)) << (v * W);
      }
      if (g.stream_c)
        stream_vector(out + i * g.ldc + v * W, r);
      else
        store_vector(out + i * g.ldc + v * W, r);
    }
    if (mask) store_mask_bits(g, bits, m0 + i, n0);
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
    for (int v = 0; v < NV; ++v) row[v] = load_vector(acc + i * ld + v * Tile<acc_t<T>>::W);
    finish_row(g, row, m0 + i, n0, nr);
  }
}

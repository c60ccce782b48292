// Part of the per-ISA CPU kernels (see kernels_impl.h): one element of torch.optim.SGD's update,
// shared by the SGD kernel and the GEMM epilogue that applies SGD inside the backward, for
// scalars and for vectors of W elements. The operation order follows torch.optim.SGD's for-loop
// implementation (maximize, then weight decay, then momentum, then nesterov) so the two agree to
// rounding.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// The options as values of the element type V: the accumulator type, or a vector of it with
// every lane the same (the kernels update W elements at a time with the same arithmetic).
template <typename V> struct SgdCoefficients {
  V neg_lr, momentum, dampening_complement, weight_decay;
  bool decay, use_momentum, nesterov, maximize;
};

// `splat(x)` turns a scalar of the accumulator type into V exactly. Momentum is used where the
// parameter has a momentum buffer (there is none when momentum == 0).
template <typename V, typename A, typename Splat>
SgdCoefficients<V> sgd_coefficients(const SgdOptions& o, bool has_momentum_buffer, Splat splat) {
  return {splat(A(-o.lr)), splat(A(o.momentum)), splat(A(1 - o.dampening)),
          splat(A(o.weight_decay)), o.weight_decay != 0, has_momentum_buffer, o.nesterov,
          o.maximize};
}

template <typename V> struct SgdResult {
  V param, momentum_buffer;
};

// The new parameter and momentum buffer (buf is unused, and returned as is, without momentum).
// `init_buf` is the first step, where torch.optim.SGD sets the buffer to a copy of the (decayed)
// gradient. fma(a, b, c) is a * b + c rounded once, for V. Everything passes by value: as a
// template argument the vector type loses its reduced-alignment attribute, so a pointer to the
// caller's variable would claim an alignment it does not have.
template <typename V, typename Fma>
inline SgdResult<V> sgd_update(V p, V g, V buf, bool init_buf, const SgdCoefficients<V>& c,
                               Fma fma) {
  if (c.maximize) g = -g;
  if (c.decay) g = fma(c.weight_decay, p, g);
  if (c.use_momentum) {
    buf = init_buf ? g : fma(c.dampening_complement, g, buf * c.momentum);
    g = c.nesterov ? fma(c.momentum, buf, g) : buf;
  }
  return {fma(c.neg_lr, g, p), buf};
}

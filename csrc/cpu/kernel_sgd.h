// Part of the per-ISA CPU kernels (see kernels_impl.h): the multi-tensor SGD step.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

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

// SgdCoefficients<V> and Splat<V> take the vector type as a template argument, which drops its
// reduced-alignment attribute (needed only for loads through V*): harmless for values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"

// Elements [e0, e1) of one tensor. Whole vectors of W elements and the scalar tail go through
// the same sgd_update arithmetic, so every element is updated alike.
template <typename T>
void sgd_range(const SgdTensor<T>& t, int64_t e0, int64_t e1, const SgdOptions& o, double grad_scale) {
  using A = acc_t<T>;
  using Ops = VecOps<A>;
  using V = typename Ops::V;
  constexpr int W = Ops::W;
  const bool scaled = grad_scale != 1.0;
  const bool momentum = t.momentum_buffer != nullptr;
  const auto scalar = sgd_coefficients<A, A>(o, momentum, Splat<A>{});
  int64_t e = e0;
  if constexpr (std::is_same_v<T, A>) {
    const auto vector = sgd_coefficients<V, A>(o, momentum, Splat<V>{});
    const V scale = Splat<V>{}(A(grad_scale));
    for (; e + W <= e1; e += W) {
      V g = Ops::load(t.grad + e, W), b = V{};
      if (scaled) g = g / scale;
      if (momentum) b = Ops::load(t.momentum_buffer + e, W);
      const auto next = sgd_update(Ops::load(t.param + e, W), g, b, t.init_momentum_buffer, vector,
                                   FusedMultiplyAdd{});
      Ops::store(t.param + e, next.param, W);
      if (momentum) Ops::store(t.momentum_buffer + e, next.momentum_buffer, W);
    }
  }
  for (; e < e1; ++e) {
    A g = to_acc(t.grad[e]);
    if (scaled) g = g / A(grad_scale);
    const A b = momentum ? to_acc(t.momentum_buffer[e]) : A(0);
    const auto next =
        sgd_update(to_acc(t.param[e]), g, b, t.init_momentum_buffer, scalar, FusedMultiplyAdd{});
    t.param[e] = from_acc<T>(next.param);
    if (momentum) t.momentum_buffer[e] = from_acc<T>(next.momentum_buffer);
  }
}

#pragma GCC diagnostic pop

template <typename T> void sgd_chunks(void* ctx, int64_t begin, int64_t end) {
  const SgdPlan<T>& p = *static_cast<const SgdPlan<T>*>(ctx);
  for (int64_t c = begin; c < end; ++c) {
    const SgdTensor<T>& t = p.tensors[p.chunk_tensor[c]];
    const int64_t e0 = p.chunk_begin[c];
    sgd_range(t, e0, min64(e0 + kSgdChunk, t.numel), *p.options, p.grad_scale);
  }
}

template <typename T>
void sgd(const SgdTensor<T>* tensors, int64_t count, const SgdOptions& options, double grad_scale) {
  int64_t chunks = 0;
  for (int64_t i = 0; i < count; ++i) chunks += ceil_div(tensors[i].numel, kSgdChunk);
  if (chunks == 0) return;
  int64_t* chunk_tensor = thread_buffer<int64_t, kSgdChunksSlot>(2 * chunks);
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

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

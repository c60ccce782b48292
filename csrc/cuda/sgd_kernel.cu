// The multi-tensor SGD kernel (sgd_kernel.h): one block per chunk of one tensor; the update
// runs in float for 16-bit params (float64 for float64), like torch.optim.SGD(fused=True).
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>

#include "cuda/numeric.cuh"
#include "cuda/sgd_math.cuh"
#include "cuda/sgd_kernel.h"

namespace fused_linreg::cuda {
namespace {

constexpr int kThreads = 512;

static_assert(sizeof(SgdBatch) + sizeof(SgdOptions) + sizeof(GradScaling) <= 32764,
              "kernel parameters are limited to 32764 bytes");

// 16 bytes of one tensor, for vectorized loads and stores.
template <typename T> struct alignas(16) Pack {
  static constexpr int kSize = 16 / int(sizeof(T));
  T v[kSize];
};

template <typename T>
__device__ void step_chunk(const SgdTensor& t, int64_t begin, int64_t end, const SgdOptions& o,
                           const float* grad_scale) {
  using A = acc_t<T>;
  using P = Pack<T>;
  T* const param = static_cast<T*>(t.param);
  const T* const grad = static_cast<const T*>(t.grad);
  T* const buf = static_cast<T*>(t.momentum_buffer);
  const bool has_buf = buf != nullptr;
  const SgdCoefficients<A> coefficients(o.lr, o.momentum, o.dampening, o.weight_decay,
                                        o.nesterov, o.maximize);
  const bool scaled = grad_scale != nullptr;
  const A scale = scaled ? A(*grad_scale) : A(1);

  auto update = [&](T& p, T g, T& b) {
    A gv = to_acc(g);
    if (scaled) gv = gv / scale;
    A bv = has_buf ? to_acc(b) : A(0);
    p = from_acc<T>(sgd_update(to_acc(p), gv, bv, has_buf, t.init_momentum_buffer, coefficients));
    if (has_buf) b = from_acc<T>(bv);
  };
  auto update_element = [&](int64_t i) {
    T b = has_buf ? buf[i] : T{};
    update(param[i], grad[i], b);
    if (has_buf) buf[i] = b;
  };

  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  if (aligned(param) && aligned(grad) && (!has_buf || aligned(buf))) {
    // Chunks start at multiples of kSgdChunk, so every whole pack below is 16-byte aligned.
    for (int64_t e = begin + int64_t(threadIdx.x) * P::kSize; e < end; e += kThreads * P::kSize) {
      if (e + P::kSize > end) {
        for (int64_t i = e; i < end; ++i) update_element(i);
        continue;
      }
      P p = *reinterpret_cast<const P*>(param + e);
      const P g = *reinterpret_cast<const P*>(grad + e);
      P b{};
      if (has_buf) b = *reinterpret_cast<const P*>(buf + e);
#pragma unroll
      for (int i = 0; i < P::kSize; ++i) update(p.v[i], g.v[i], b.v[i]);
      *reinterpret_cast<P*>(param + e) = p;
      if (has_buf) *reinterpret_cast<P*>(buf + e) = b;
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) update_element(i);
  }
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(const __grid_constant__ SgdBatch batch, const SgdOptions options,
               const GradScaling scaling) {
  if (scaling.found_inf != nullptr && *scaling.found_inf != 0.0f) return;
  // The tensor owning this block's chunk: the last one whose first chunk is not after it.
  const int64_t chunk = blockIdx.x;
  int lo = 0, hi = batch.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (batch.tensors[mid].first_chunk <= chunk)
      lo = mid;
    else
      hi = mid - 1;
  }
  const SgdTensor& t = batch.tensors[lo];
  const int64_t begin = (chunk - t.first_chunk) * kSgdChunk;
  const int64_t end = std::min(begin + kSgdChunk, t.numel);
  const float* const grad_scale = scaling.grad_scale;
  switch (t.dtype) {  // uniform across the block
    case SgdDtype::kFloat: return step_chunk<float>(t, begin, end, options, grad_scale);
    case SgdDtype::kDouble: return step_chunk<double>(t, begin, end, options, grad_scale);
    case SgdDtype::kBFloat16: return step_chunk<__nv_bfloat16>(t, begin, end, options, grad_scale);
    case SgdDtype::kHalf: return step_chunk<__half>(t, begin, end, options, grad_scale);
  }
}

}  // namespace

void launch_sgd(const SgdBatch& batch, const SgdOptions& options, const GradScaling& scaling,
                cudaStream_t stream) {
  if (batch.count == 0) return;
  TORCH_CHECK(batch.chunks <= INT_MAX, "fused_linreg.sgd_step_: ", batch.chunks,
              " chunks of ", kSgdChunk, " elements do not fit in one CUDA grid");
  sgd_kernel<<<unsigned(batch.chunks), kThreads, 0, stream>>>(batch, options, scaling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fused_linreg::cuda

// CPU implementation of the whole-MLP operators: the rows are cut into blocks, and each block goes
// through every layer (forward) or back through every layer (backward) before the next block, so
// that its activations and gradients are produced and consumed while they are still in L1/L2. Each
// layer of a block is one call of the GEMM core with the same hooks the per-layer ops use (bias,
// ReLU and bitmask epilogue; mask prologue and row sums for the bias gradient).
//
// Threads take fixed, contiguous runs of blocks (task t of T: blocks [t * B / T, (t + 1) * B / T)).
// The GEMM calls inside a task run on that task's thread: ATen runs a parallel region nested in
// another inline. Weight and bias gradients are summed per task in block order and the tasks'
// sums are then added in task order, so the result depends on the thread count only through
// rounding and is bitwise reproducible for a given one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "errors.h"
#include "ops.h"

namespace fused_linreg::cpu {
namespace {

// One block's widest activations: with the backward's two gradient buffers and the layer's input
// rows, within a Zen 4 / Skylake-SP L2 (1-2 MiB) for widths up to 128 in float32.
constexpr int64_t kBlockBytes = 192 * 1024;
// But never fewer rows than this: every block's weight gradient is a GEMM over its rows whose
// [out, in] result is then added to the task's sum, a pass that few rows do not repay (measured
// on Zen 4 at width 256: 96-row blocks were slower than the per-layer ops, 384-row ones faster).
constexpr int64_t kMinBlockRows = 384;
// Block rows are whole micro-panels of every ISA's microkernel (MR 12, 8, 6 or 4).
constexpr int64_t kRowMultiple = 24;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Blocks {
  int64_t rows, count, tasks, widest;
  int64_t begin(int64_t b) const { return b * rows; }
  int64_t first_of_task(int64_t t) const { return t * count / tasks; }
};

// Below this many multiply-adds (forward, all layers) the MLP runs on the calling thread: waking
// the pool would cost more than the second thread saves (the GEMM core's kThreadedMinFlops / 2).
constexpr double kThreadedMinMacs = 1e6;

// Blocks of about kBlockBytes of the widest layer, as many for every thread: the block count is
// rounded up to a multiple of the thread count and the rows shared out evenly (3 blocks on 2
// threads made one thread do twice the other's work).
Blocks plan_blocks(int64_t M, at::TensorList weights, int64_t element_size) {
  double macs = 0;
  int64_t widest = weights[0].size(1);
  for (const at::Tensor& w : weights) {
    macs += double(M) * double(w.size(0)) * double(w.size(1));
    widest = std::max(widest, w.size(0));
  }
  widest = std::max<int64_t>(widest, 1);
  const int threads = macs < kThreadedMinMacs ? 1 : std::max(1, num_threads());
  int64_t rows = std::max(kMinBlockRows, kBlockBytes / (widest * element_size) / kRowMultiple * kRowMultiple);
  const int64_t even = std::max<int64_t>(1, ceil_div(ceil_div(M, rows), threads)) * threads;
  rows = std::max<int64_t>(8, ceil_div(ceil_div(M, even), 8) * 8);
  const int64_t count = ceil_div(M, rows);
  return {rows, count, std::min<int64_t>(threads, count), widest};
}

template <typename T> struct Layer {
  const T* w;
  int64_t w_rs, w_cs;
  const T* bias;
  int64_t in, out;
  int64_t mask_bytes;  // per row of the output's mask; hidden layers only
};

template <typename T>
std::vector<Layer<T>> layers_of(at::TensorList weights, const std::vector<bool>& has_bias,
                                const std::vector<at::Tensor>& biases) {
  std::vector<Layer<T>> layers;
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const bool hidden = l + 1 < weights.size();
    layers.push_back({data_as<const T>(w), w.stride(0), w.stride(1),
                      has_bias[l] ? data_as<const T>(biases[l]) : nullptr, w.size(1), w.size(0),
                      hidden ? relu_mask_row_bytes(w.size(0)) : 0});
  }
  return layers;
}


// Runs body(t) for every task on the thread pool.
template <typename F> void run_tasks(int64_t tasks, const F& body) {
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) body(t);
  });
}

template <typename T>
void run_gemm(const GemmArgs<T>& g, const char* op, const at::Tensor& input) {
  try {
    active_kernels().get<T>().gemm(g);
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, op, ": out of memory for the packed operands of a row block of input ",
                input.sizes());
  }
}

// A row-major operand: element (r, c) at p[r * rs + c * cs].
template <typename T> struct Rows {
  const T* p;
  int64_t rs, cs;
};

// For each mask byte, its 8 bits as all-ones / all-zeros lanes of T's width: the mask is applied
// 8 elements at a time with a bitwise AND, which the compiler vectorizes (a per-bit select loop
// took a quarter of the backward).
template <typename U> const std::array<std::array<U, 8>, 256>& byte_lanes() {
  static const auto table = [] {
    std::array<std::array<U, 8>, 256> t{};
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) t[b][j] = (b >> j) & 1 ? ~U(0) : U(0);
    return t;
  }();
  return table;
}

// g[r, c] = 0 where bit (r, c) of the ReLU bitmask is clear (the layout of BitMask in gemm_args.h).
template <typename T>
void apply_relu_mask(T* g, int64_t rows, int64_t cols, const uint8_t* bits, int64_t row_bytes) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const auto& lanes = byte_lanes<U>();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* m = bits + r * row_bytes;
    T* row = g + r * cols;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      U v[8];
      std::memcpy(v, row + c, sizeof(v));
      const std::array<U, 8>& keep = lanes[m[c >> 3]];
      for (int j = 0; j < 8; ++j) v[j] &= keep[j];
      std::memcpy(row + c, v, sizeof(v));
    }
    for (; c < cols; ++c) row[c] = (m[c >> 3] >> (c & 7)) & 1 ? row[c] : T(0);
  }
}

// The GEMM acc[M, N] = A[M, K] @ B[K, N] over row-major operands; the caller sets hooks and output.
template <typename T> GemmArgs<T> product(int64_t M, int64_t N, int64_t K, Rows<T> a, Rows<T> b) {
  GemmArgs<T> g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.a = a.p;
  g.a_rs = a.rs;
  g.a_cs = a.cs;
  g.b = b.p;
  g.b_rs = b.rs;
  g.b_cs = b.cs;
  return g;
}

// The per-task gradient sums are kept in the input's dtype, which bfloat16 would round at every
// block: FusedMLP runs other dtypes layer by layer.
void check_float_double(const char* op, const at::Tensor& input) {
  FUSED_LINREG_CHECK_DTYPE_SUPPORTED(
      input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
      ": the CPU kernel supports float32 and float64, got ", input.scalar_type(),
      " (FusedMLP runs other dtypes layer by layer)");
}

// Calls f(T{}) for input that passed check_float_double.
template <typename F> void dispatch_float_double(const at::Tensor& input, F&& f) {
  if (input.scalar_type() == at::kFloat) return f(float{});
  return f(double{});
}

std::vector<at::Tensor> contiguous_biases(const OptionalTensorList& biases, std::vector<bool>* has) {
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < biases.size(); ++l) {
    const OptionalTensor b = biases.get(l);
    has->push_back(b.has_value());
    out.push_back(b.has_value() ? b->contiguous() : at::Tensor());
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_forward(
    const at::Tensor& input, at::TensorList weights, const OptionalTensorList& biases,
    bool save_for_backward) {
  const char* op = "fused_linreg.mlp_forward";
  check_mlp_args(op, input, weights, biases);
  check_float_double(op, input);
  const at::Tensor x = as_rows(input);
  const int64_t M = x.size(0), L = int64_t(weights.size());
  std::vector<bool> has_bias;
  const std::vector<at::Tensor> bias = contiguous_biases(biases, &has_bias);
  at::Tensor out = at::empty({M, weights.back().size(0)}, input.options());
  std::vector<at::Tensor> acts, masks;
  if (save_for_backward) {
    for (int64_t l = 0; l + 1 < L; ++l) {
      const int64_t n = weights[l].size(0);
      acts.push_back(at::empty({M, n}, input.options()));
      masks.push_back(at::empty({M, relu_mask_row_bytes(n)}, input.options().dtype(at::kByte)));
    }
  }
  const Blocks blocks = plan_blocks(M, weights, input.element_size());

  dispatch_float_double(input, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<Layer<T>> layers = layers_of<T>(weights, has_bias, bias);
    // Inference keeps the hidden activations of a block in two buffers per task, never in memory.
    const int64_t block_elems = blocks.rows * blocks.widest;
    at::Tensor scratch;
    if (!save_for_backward && L > 1) scratch = at::empty({blocks.tasks * 2 * block_elems}, input.options());
    run_tasks(blocks.tasks, [&](int64_t t) {
      for (int64_t b = blocks.first_of_task(t); b < blocks.first_of_task(t + 1); ++b) {
        const int64_t r0 = blocks.begin(b), mb = std::min(blocks.rows, M - r0);
        Rows<T> a{data_as<const T>(x) + r0 * x.stride(0), x.stride(0), x.stride(1)};
        for (int64_t l = 0; l < L; ++l) {
          const Layer<T>& layer = layers[l];
          const bool last = l + 1 == L;
          // B(k, n) = W[n, k]
          GemmArgs<T> g = product(mb, layer.out, layer.in, a, Rows<T>{layer.w, layer.w_cs, layer.w_rs});
          g.ldc = layer.out;
          g.bias = layer.bias;
          g.relu = !last;
          if (last)
            g.c = data_as<T>(out) + r0 * layer.out;
          else if (save_for_backward) {
            g.c = data_as<T>(acts[l]) + r0 * layer.out;
            g.c_mask = BitMask{masks[l].data_ptr<uint8_t>() + r0 * layer.mask_bytes, layer.mask_bytes};
          } else {
            g.c = data_as<T>(scratch) + (2 * t + l % 2) * block_elems;
          }
          run_gemm(g, op, input);
          a = Rows<T>{g.c, layer.out, 1};
        }
      }
    });
  });
  return {out.view(rows_shape(input, weights.back().size(0))), acts, masks};
}

MlpGrads mlp_backward(const at::Tensor& grad_output, const at::Tensor& input,
                      at::TensorList weights, at::TensorList activations, at::TensorList masks,
                      const c10::List<bool>& has_bias_list, std::array<bool, 3> output_mask) {
  const char* op = "fused_linreg.mlp_backward";
  check_mlp_backward_args(grad_output, input, weights, activations, masks, has_bias_list);
  check_float_double(op, input);
  const at::Tensor x = as_rows(input);
  const at::Tensor go = as_rows(grad_output);
  const int64_t M = x.size(0), L = int64_t(weights.size());
  std::vector<bool> has_bias(has_bias_list.begin(), has_bias_list.end());
  const bool want_x = output_mask[0], want_w = output_mask[1], want_b = output_mask[2];

  // The parameter gradients of task 0 are summed straight into the results; the other tasks'
  // into `sums`, added to the results in task order at the end.
  OptionalTensor grad_input;
  std::vector<at::Tensor> grad_w, grad_b;
  std::vector<int64_t> w_offset, b_offset;
  int64_t w_total = 0, b_total = 0, widest_w = 0, widest_b = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t n = weights[l].size(0), k = weights[l].size(1);
    w_offset.push_back(w_total);
    b_offset.push_back(b_total);
    if (want_w) {
      grad_w.push_back(at::empty({n, k}, input.options()));
      w_total += n * k;
      widest_w = std::max(widest_w, n * k);
    }
    if (want_b && has_bias[l]) {
      grad_b.push_back(at::empty({n}, input.options()));
      b_total += n;
    }
    widest_b = std::max(widest_b, n);
  }
  std::vector<at::Tensor*> grad_b_of(L, nullptr);
  for (int64_t l = 0, i = 0; l < L; ++l)
    if (want_b && has_bias[l]) grad_b_of[l] = &grad_b[i++];
  if (want_x) grad_input = at::empty({M, x.size(1)}, input.options());
  if (M == 0) {
    for (at::Tensor& g : grad_w) g.zero_();
    for (at::Tensor& g : grad_b) g.zero_();
    if (grad_input.has_value()) grad_input = grad_input->view(input.sizes());
    return {grad_input, grad_w, grad_b};
  }

  const Blocks blocks = plan_blocks(M, weights, input.element_size());
  const bool want_params = want_w || want_b;

  dispatch_float_double(input, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<Layer<T>> layers = layers_of<T>(weights, std::vector<bool>(L, false), {});
    // Per task: two gradient buffers for the block (ping-pong between layers), one block's
    // weight gradient and one block's bias gradient of a layer.
    const int64_t grad_elems = blocks.rows * blocks.widest;
    const int64_t per_task = 2 * grad_elems + (want_w ? widest_w : 0) + widest_b;
    const at::Tensor scratch = at::empty({blocks.tasks * per_task}, input.options());
    const at::Tensor sums = at::empty({(blocks.tasks - 1) * (w_total + b_total)}, input.options());

    run_tasks(blocks.tasks, [&](int64_t t) {
      T* own = data_as<T>(scratch) + t * per_task;
      T* grads[2] = {own, own + grad_elems};
      T* block_w = own + 2 * grad_elems;
      T* block_b = block_w + (want_w ? widest_w : 0);
      T* task_sums = t > 0 ? data_as<T>(sums) + (t - 1) * (w_total + b_total) : nullptr;
      const int64_t first = blocks.first_of_task(t);
      for (int64_t b = first; b < blocks.first_of_task(t + 1); ++b) {
        const int64_t r0 = blocks.begin(b), mb = std::min(blocks.rows, M - r0);
        Rows<T> g_rows{data_as<const T>(go) + r0 * go.stride(0), go.stride(0), go.stride(1)};
        T* g_own = nullptr;  // g_rows once it is a task buffer (below the last layer)
        for (int64_t l = L - 1; l >= 0; --l) {
          const Layer<T>& layer = layers[l];
          const Rows<T> in = l == 0 ? Rows<T>{data_as<const T>(x) + r0 * x.stride(0), x.stride(0), x.stride(1)}
                                    : Rows<T>{data_as<const T>(activations[l - 1]) + r0 * layer.in, layer.in, 1};
          // The ReLU derivative of this layer's output, applied once to the block's gradient in its
          // task buffer, so that neither GEMM needs the mask prologue: packing G'^T through a
          // transposed mask was the backward's largest cost (perf, 65536x64x4).
          if (l + 1 < L)
            apply_relu_mask(g_own, mb, layer.out,
                            masks[l].data_ptr<uint8_t>() + r0 * layer.mask_bytes, layer.mask_bytes);
          const bool bias_grad = grad_b_of[l] != nullptr;
          if (want_w || bias_grad) {
            // grad_W [out, in] += G'^T @ in over the block's rows; the row sums of G'^T are the
            // bias gradient. The task's first block writes its sums in place of adding them.
            T* w_sum = !want_w ? nullptr : t == 0 ? data_as<T>(grad_w[l]) : task_sums + w_offset[l];
            T* b_sum = !bias_grad ? nullptr
                       : t == 0   ? data_as<T>(*grad_b_of[l])
                                  : task_sums + w_total + b_offset[l];
            const bool add = b > first;
            // A(n, m) = G'[m, n]
            GemmArgs<T> g = product(layer.out, want_w ? layer.in : 0, mb,
                                    Rows<T>{g_rows.p, g_rows.cs, g_rows.rs}, in);
            g.ldc = layer.in;
            g.c = add ? block_w : w_sum;
            g.a_row_sums = bias_grad ? (add ? block_b : b_sum) : nullptr;
            run_gemm(g, op, input);
            if (add) {
              if (w_sum)
                for (int64_t i = 0; i < layer.out * layer.in; ++i) w_sum[i] += block_w[i];
              if (b_sum)
                for (int64_t i = 0; i < layer.out; ++i) b_sum[i] += block_b[i];
            }
          }
          if (l == 0 && !want_x) break;
          // G for the layer below [mb, in] = G' @ W.
          GemmArgs<T> g = product(mb, layer.in, layer.out, g_rows, Rows<T>{layer.w, layer.w_rs, layer.w_cs});
          g.ldc = layer.in;
          g_own = l == 0 ? data_as<T>(*grad_input) + r0 * layer.in : grads[l % 2];
          g.c = g_own;
          run_gemm(g, op, input);
          g_rows = Rows<T>{g_own, layer.in, 1};
        }
      }
    });
    if (!want_params) return;
    for (int64_t t = 1; t < blocks.tasks; ++t) {
      const T* task_sums = data_as<const T>(sums) + (t - 1) * (w_total + b_total);
      for (int64_t l = 0; l < L; ++l) {
        if (want_w) {
          T* w = data_as<T>(grad_w[l]);
          const T* s = task_sums + w_offset[l];
          for (int64_t i = 0; i < grad_w[l].numel(); ++i) w[i] += s[i];
        }
        if (grad_b_of[l]) {
          T* bsum = data_as<T>(*grad_b_of[l]);
          const T* s = task_sums + w_total + b_offset[l];
          for (int64_t i = 0; i < grad_b_of[l]->numel(); ++i) bsum[i] += s[i];
        }
      }
    }
  });
  if (grad_input.has_value()) grad_input = grad_input->view(input.sizes());
  return {grad_input, grad_w, grad_b};
}

}  // namespace fused_linreg::cpu

TORCH_LIBRARY_IMPL(fused_linreg, CPU, m) {
  m.impl("mlp_forward", &fused_linreg::cpu::mlp_forward);
  m.impl("mlp_backward", &fused_linreg::cpu::mlp_backward);
}

// Part of the per-ISA CPU kernels (see kernels_impl.h):
// tile sizes, blocking and per-thread buffers.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Blocking

template <typename A> struct Tile {
  static constexpr int W = Vec<A>::width;
  // At least 8 columns, so that every micro-tile owns whole bytes of the ReLU bitmask.
  static constexpr int NV = W >= 4 ? 2 : 8 / W;
  static constexpr int NR = NV * W;
  static constexpr int MR = sizeof(A) == 4 ? FUSED_LINREG_MR_F32 : FUSED_LINREG_MR_F64;
  static constexpr int64_t KC = 256;
  // An MC x KC block of packed A stays in L2; one micro-panel of it at a time sits in L1.
  static constexpr int64_t MC_MAX = (256 * 1024 / (KC * int64_t(sizeof(A)))) / MR * MR;
  // Packed B for one column block: K x NC elements, sized to stay in the last-level cache.
  static constexpr int64_t B_BUDGET = 16 * 1024 * 1024 / int64_t(sizeof(A));
  // Widest column range of one task, so the task's scratch tile stays in L2.
  static constexpr int64_t TASK_COLS = 1024;
  static_assert(NR % 8 == 0 && 32 % NR == 0, "micro-tiles must own whole bitmask bytes");
};

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Buffers reused across calls by the thread that owns them, so the per-call path allocates
// nothing once warm.
template <typename A> struct ThreadBuffer {
  A* data = nullptr;
  int64_t capacity = 0;
  ~ThreadBuffer() { std::free(data); }
  A* get(int64_t n) {
    if (n > capacity) {
      const int64_t want = round_up(max64(n, 1024), 16);
      // Large packed operands are walked in big strides: huge pages spare the TLB.
      const int64_t huge = 2 << 20;
      const bool use_huge = int64_t(want * sizeof(A)) >= 2 * huge;
      const int64_t align = use_huge ? huge : 64;
      const int64_t bytes = round_up(int64_t(want * sizeof(A)), align);
      A* fresh = static_cast<A*>(std::aligned_alloc(align, bytes));
      if (fresh == nullptr) throw std::bad_alloc();  // the old buffer stays valid
      if (use_huge) madvise(fresh, bytes, MADV_HUGEPAGE);
      std::free(data);
      data = fresh;
      capacity = want;
    }
    return data;
  }
};
// The per-thread buffers, one per (element type, slot): buffers live at the same time on one
// thread need different slots.
enum BufferSlot : int {
  kTileOutSlot = 0,         // a task's local output tile
  kPackedASlot = 1,         // packed A panels
  kPackedBSlot = 2,         // B packed once for all tasks of a call
  kSliceOutSlot = 3,        // split-K slices' partial outputs
  kRowSumPartialsSlot = 4,  // split-K slices' partial row sums
  kLaneSumsSlot = 5,        // pack_panels' vector lane sums
  kBlockRowSumsSlot = 6,    // pack_a's row sums of one block
  kTaskPackedBSlot = 7,     // B packed by one task for itself
  kSgdChunksSlot = 8,       // the SGD kernel's chunk table (int64_t)
};
template <typename A, int Slot> A* thread_buffer(int64_t n) {
  static thread_local ThreadBuffer<A> buffer;
  return buffer.get(n);
}

inline void run_parallel(int64_t tasks, bool threaded, ParallelBody body, void* ctx) {
  if (threaded && tasks > 1)
    parallel_for(tasks, body, ctx);
  else
    body(ctx, 0, tasks);
}

// Products of fewer flops run on the calling thread: waking the pool would cost more.
constexpr double kThreadedMinFlops = 2e6;
// The paths that stream an operand from memory with few multiply-adds per element (dot products,
// outputs of a few rows) run several times slower per flop than the microkernel: their flops
// count this much more towards kThreadedMinFlops.
constexpr double kStreamingFlopCost = 6;

// Runs body(ctx, u0, u1) over `units` independent units of work (row panels, column panels), in
// a few tasks per thread when the product (`flops`) is worth threading.
struct UnitTasks {
  ParallelBody body;
  void* ctx;
  int64_t units, per_task;
};
inline void run_unit_tasks(void* tasks, int64_t begin, int64_t end) {
  const UnitTasks& t = *static_cast<const UnitTasks*>(tasks);
  t.body(t.ctx, begin * t.per_task, min64(end * t.per_task, t.units));
}
inline void run_units(int64_t units, double flops, ParallelBody body, void* ctx) {
  const int threads = num_threads();
  const bool threaded = threads > 1 && flops >= kThreadedMinFlops;
  UnitTasks t{body, ctx, units, threaded ? max64(1, units / (4 * threads)) : max64(1, units)};
  run_parallel(ceil_div(units, t.per_task), threaded, &run_unit_tasks, &t);
}

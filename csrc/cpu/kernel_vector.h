// Part of the per-ISA CPU kernels (see kernels_impl.h): scalar conversions and vector helpers.
// Included by kernels_impl.h inside the ISA's namespace, after the parts before it.

// Scalars and vectors

inline float to_acc(BFloat16 v) {
  uint32_t bits = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

template <typename T> inline T from_acc(acc_t<T> v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
// Round to nearest even, as PyTorch converts float to bfloat16; NaN stays a quiet NaN.
template <> inline BFloat16 from_acc<BFloat16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((bits >> 16) | 0x40)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return BFloat16{uint16_t(bits >> 16)};
}

template <typename A> struct Vec {
  static constexpr int width = FUSED_LINREG_VECTOR_BYTES / sizeof(A);
  typedef A type __attribute__((vector_size(FUSED_LINREG_VECTOR_BYTES), aligned(sizeof(A))));
  typedef A unaligned __attribute__((vector_size(FUSED_LINREG_VECTOR_BYTES), aligned(sizeof(A)), may_alias));
};

// Whole-vector loads and stores at any element-aligned address. Not std::memcpy: GCC expands a
// fixed-size memcpy with the translation unit's baseline move width, not the ISA of the
// `#pragma GCC target` region, so under AVX2 a 32-byte copy became two 16-byte moves through the
// stack and a 32-byte reload (a store-forwarding stall on every B row of the microkernel: 13
// GFLOP/s on a Zen 3 core that does 60 in MKL).
template <typename A> inline typename Vec<A>::type load_vector(const A* p) {
  return *reinterpret_cast<const typename Vec<A>::unaligned*>(p);
}
template <typename A> inline void store_vector(A* p, typename Vec<A>::type v) {
  *reinterpret_cast<typename Vec<A>::unaligned*>(p) = v;
}
// A store that bypasses the caches (p aligned to the vector): for outputs too large to stay
// cached until they are read, it spares reading each line in before it is overwritten. Ordered
// by _mm_sfence() before other threads may read the data.
template <typename A> inline void stream_vector(A* p, typename Vec<A>::type v) {
  static_assert(sizeof(A) == 4 || sizeof(A) == 8);
#if defined(FUSED_LINREG_ISA_AVX512)
  if constexpr (sizeof(A) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), __m512(v));
  else _mm512_stream_pd(reinterpret_cast<double*>(p), __m512d(v));
#elif defined(FUSED_LINREG_ISA_AVX2)
  if constexpr (sizeof(A) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), __m256(v));
  else _mm256_stream_pd(reinterpret_cast<double*>(p), __m256d(v));
#else
  if constexpr (sizeof(A) == 4) _mm_stream_ps(reinterpret_cast<float*>(p), __m128(v));
  else _mm_stream_pd(reinterpret_cast<double*>(p), __m128d(v));
#endif
}

// Bit l of the result is set where the ReLU passes the gradient: !(v[l] <= 0), i.e. positive or
// NaN outputs, as torch's threshold_backward(grad, output, 0) decides.
template <typename A> inline uint32_t gradient_lanes(typename Vec<A>::type v) {
#if defined(FUSED_LINREG_ISA_AVX512)
  if constexpr (sizeof(A) == 4)
    return _mm512_cmp_ps_mask(__m512(v), _mm512_setzero_ps(), _CMP_NLE_UQ);
  else
    return _mm512_cmp_pd_mask(__m512d(v), _mm512_setzero_pd(), _CMP_NLE_UQ);
#elif defined(FUSED_LINREG_ISA_AVX2)
  if constexpr (sizeof(A) == 4)
    return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(__m256(v), _mm256_setzero_ps(), _CMP_NLE_UQ)));
  else
    return unsigned(_mm256_movemask_pd(_mm256_cmp_pd(__m256d(v), _mm256_setzero_pd(), _CMP_NLE_UQ)));
#else
  uint32_t bits = 0;
  for (int l = 0; l < Vec<A>::width; ++l) bits |= uint32_t(!(v[l] <= A(0))) << l;
  return bits;
#endif
}

// A scalar as a V (a scalar type, or a vector with every lane equal): x - 0 is exact for every x,
// -0 and NaN included.
template <typename V> struct Splat {
  template <typename A> V operator()(A x) const { return x - V{}; }
};

// a * b + c rounded once, for scalars and for vectors (the SGD update's arithmetic).
struct FusedMultiplyAdd {
  template <typename A, std::enable_if_t<std::is_floating_point_v<A>, int> = 0>
  A operator()(A a, A b, A c) const {
    return std::fma(a, b, c);
  }
  template <typename V, std::enable_if_t<!std::is_floating_point_v<V>, int> = 0>
  V operator()(V a, V b, V c) const {
#if defined(FUSED_LINREG_ISA_AVX512) || defined(FUSED_LINREG_ISA_AVX2)
    constexpr bool f32 = sizeof(a[0]) == 4;
#endif
#if defined(FUSED_LINREG_ISA_AVX512)
    if constexpr (f32) return V(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
    else return V(_mm512_fmadd_pd(__m512d(a), __m512d(b), __m512d(c)));
#elif defined(FUSED_LINREG_ISA_AVX2)
    if constexpr (f32) return V(_mm256_fmadd_ps(__m256(a), __m256(b), __m256(c)));
    else return V(_mm256_fmadd_pd(__m256d(a), __m256d(b), __m256d(c)));
#else
    for (int l = 0; l < int(sizeof(V) / sizeof(a[0])); ++l) a[l] = std::fma(a[l], b[l], c[l]);
    return a;
#endif
  }
};

#if defined(FUSED_LINREG_ISA_AVX512)
// 16 x 16 floats: in-lane unpacks, then 128-bit block shuffles; cheaper than the generic stages'
// two-source permutes on every step. The zero-masking forms with every lane kept compile to the
// plain instructions; the plain intrinsics' undefined pass-through makes GCC 12 warn once per use.
inline void transpose_16x16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(0xffff, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(0xffff, r[i], r[i + 1]);
  }
  // t[4q + 0/1] = unpacklo/hi of rows 4q, 4q+1; t[4q + 2/3] of rows 4q+2, 4q+3.
  for (int q = 0; q < 16; q += 4)
    for (int h = 0; h < 2; ++h) {
      const __m512d lo = _mm512_castps_pd(t[q + h]), hi = _mm512_castps_pd(t[q + 2 + h]);
      r[q + 2 * h] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xff, lo, hi));
      r[q + 2 * h + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xff, lo, hi));
    }
  // r[4q + c] (c < 4): in each 128-bit block b, rows 4q .. 4q+3 of column 4b + c.
  for (int c = 0; c < 4; ++c) {
    // Blocks 0 and 2 (0x88), or 1 and 3 (0xdd), of rows 0-3 then of rows 4-7 (8-11, 12-15).
    t[c] = _mm512_maskz_shuffle_f32x4(0xffff, r[c], r[4 + c], 0x88);
    t[4 + c] = _mm512_maskz_shuffle_f32x4(0xffff, r[c], r[4 + c], 0xdd);
    t[8 + c] = _mm512_maskz_shuffle_f32x4(0xffff, r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_maskz_shuffle_f32x4(0xffff, r[8 + c], r[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {  // columns c, 8 + c, 4 + c, 12 + c
    r[c] = _mm512_maskz_shuffle_f32x4(0xffff, t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_maskz_shuffle_f32x4(0xffff, t[c], t[8 + c], 0xdd);
    r[4 + c] = _mm512_maskz_shuffle_f32x4(0xffff, t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_maskz_shuffle_f32x4(0xffff, t[4 + c], t[12 + c], 0xdd);
  }
}
#endif
#if defined(FUSED_LINREG_ISA_AVX2)
// 8 x 8 floats: the same in-lane unpacks, then 128-bit half swaps.
inline void transpose_8x8(__m256* r) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int q = 0; q < 8; q += 4)
    for (int h = 0; h < 2; ++h) {
      const __m256d lo = _mm256_castps_pd(t[q + h]), hi = _mm256_castps_pd(t[q + 2 + h]);
      r[q + 2 * h] = _mm256_castpd_ps(_mm256_unpacklo_pd(lo, hi));
      r[q + 2 * h + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(lo, hi));
    }
  // r[4q + c]: in each 128-bit half b, rows 4q .. 4q+3 of column 4b + c.
  for (int c = 0; c < 4; ++c) {
    const __m256 lo = r[c], hi = r[4 + c];
    r[c] = _mm256_permute2f128_ps(lo, hi, 0x20);
    r[4 + c] = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
}
#endif

template <typename A> struct VecOps {
  using V = typename Vec<A>::type;
  using I = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(FUSED_LINREG_VECTOR_BYTES)));
  static constexpr int W = Vec<A>::width;

  // Loads n (<= W) elements, converting to A; the rest are zero.
  template <typename T> static V load(const T* p, int n) {
    if constexpr (std::is_same_v<T, A>) {
      if (n == W) return load_vector(p);
#if defined(FUSED_LINREG_ISA_AVX512)
      // Masked loads: micro-panels of 12 lanes are common and must not fall to scalar code.
      if constexpr (sizeof(A) == 4)
        return V(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p));
      else
        return V(_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p));
#elif defined(FUSED_LINREG_ISA_AVX2)
      IV lane;
      for (int l = 0; l < W; ++l) lane[l] = l;
      const IV active = lane < I(n);
      if constexpr (sizeof(A) == 4)
        return V(_mm256_maskload_ps(p, __m256i(active)));
      else
        return V(_mm256_maskload_pd(p, __m256i(active)));
#endif
    }
    V v = V{};
    for (int l = 0; l < n; ++l) v[l] = to_acc(p[l]);
    return v;
  }
  // Stores lanes 0 .. n of v.
  static void store(A* p, V v, int n) {
    // A whole vector with a plain store: AVX2's masked store is microcoded on AMD before Zen 4
    // (a packing loop of masked stores ran at a fifth of its speed on Zen 3).
    if (n == W) return store_vector(p, v);
#if defined(FUSED_LINREG_ISA_AVX512)
    if constexpr (sizeof(A) == 4)
      _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), __m512(v));
    else
      _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), __m512d(v));
#elif defined(FUSED_LINREG_ISA_AVX2)
    IV lane;
    for (int l = 0; l < W; ++l) lane[l] = l;
    const IV active = lane < I(n);
    if constexpr (sizeof(A) == 4)
      _mm256_maskstore_ps(p, __m256i(active), __m256(v));
    else
      _mm256_maskstore_pd(p, __m256i(active), __m256d(v));
#else
    std::memcpy(p, &v, n * sizeof(A));
#endif
  }
  // Loads p[l * stride] for lanes l < n (the rest zero): a hardware gather where there is one.
  template <typename T> static V load_strided(const T* p, int64_t stride, int n) {
#if defined(FUSED_LINREG_ISA_AVX512) || defined(FUSED_LINREG_ISA_AVX2)
    if constexpr (std::is_same_v<T, A>) {
      if (stride <= INT32_MAX / W) {
        IV offset;  // in elements; lanes past n are not read
        for (int l = 0; l < W; ++l) offset[l] = I(l) * I(stride);
#if defined(FUSED_LINREG_ISA_AVX512)
        if constexpr (sizeof(A) == 4)
          return V(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16((1u << n) - 1),
                                            __m512i(offset), p, 4));
        else
          return V(_mm512_mask_i64gather_pd(_mm512_setzero_pd(), __mmask8((1u << n) - 1),
                                            __m512i(offset), p, 8));
#else
        IV lane;
        for (int l = 0; l < W; ++l) lane[l] = l;
        const IV active = lane < I(n);
        if constexpr (sizeof(A) == 4)
          return V(_mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, __m256i(offset), __m256(active), 4));
        else
          return V(_mm256_mask_i64gather_pd(_mm256_setzero_pd(), p, __m256i(offset), __m256d(active), 8));
#endif
      }
    }
#endif
    V v = V{};
    for (int l = 0; l < n; ++l) v[l] = to_acc(p[l * stride]);
    return v;
  }
  // Keeps lane l where bit l is set, else 0 — a select, so NaN or inf gradients where the ReLU
  // was off become 0 as in PyTorch.
  static V select(V v, uint64_t bits) {
    IV lane_bit;
    for (int l = 0; l < W; ++l) lane_bit[l] = I(1) << l;
    const IV keep = (IV{} + I(bits)) & lane_bit;
    return keep != 0 ? v : V{};
  }
  // Lane r of the result is the sum of the lanes of v[r] (r < W), in the same tree for every r:
  // lane l + W/2 added to lane l, then l + W/4, ... Each stage halves the lanes per row and packs
  // two vectors' rows into one (v[j] and v[j + D]), which leaves the rows in order at the end.
  template <int D = W / 2> static V sum_lanes(V* v) {
    static constexpr std::array<I, W> lo = halving_indices<D, false>(), hi = halving_indices<D, true>();
    IV vlo, vhi;
    std::memcpy(&vlo, lo.data(), sizeof(IV));
    std::memcpy(&vhi, hi.data(), sizeof(IV));
    // 2D vectors of W / 2D rows each in, D vectors out.
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j)
      v[j] = __builtin_shuffle(v[j], v[j + D], vlo) + __builtin_shuffle(v[j], v[j + D], vhi);
    if constexpr (D > 1) return sum_lanes<D / 2>(v);
    else return v[0];
  }
  // Stage D: a row's 2D lanes (segment q of a, or of b) become D lanes: lane e of the result takes
  // lane `within` of the segment's low half (or high half: + D), from a then from b.
  template <int D, bool High> static constexpr std::array<I, W> halving_indices() {
    std::array<I, W> idx{};
    for (int e = 0; e < W; ++e) {
      const int q = e / (2 * D), within = e % (2 * D);
      const int from_b = within >= D ? 1 : 0;
      idx[e] = I(from_b * W + q * 2 * D + (within - from_b * D) + (High ? D : 0));
    }
    return idx;
  }
  // In-register transpose of W vectors: v[i][e] becomes v[e][i].
  static void transpose(V* v) {
#if defined(FUSED_LINREG_ISA_AVX512) || defined(FUSED_LINREG_ISA_AVX2)
    if constexpr (sizeof(A) == 4) {
#if defined(FUSED_LINREG_ISA_AVX512)
      using R = __m512;
#else
      using R = __m256;
#endif
      R r[W];
      for (int i = 0; i < W; ++i) r[i] = R(v[i]);
#if defined(FUSED_LINREG_ISA_AVX512)
      transpose_16x16(r);
#else
      transpose_8x8(r);
#endif
      for (int i = 0; i < W; ++i) v[i] = V(r[i]);
      return;
    }
#endif
    transpose_stages(v);
  }
  // The generic form: stage D swaps the off-diagonal D x D blocks of every 2D x 2D block;
  // everything is unrolled so the shuffles use constant index vectors.
  template <int D = 1> static void transpose_stages(V* v) {
    static constexpr std::array<I, W> lo = stage_indices<D, false>(), hi = stage_indices<D, true>();
    IV vlo, vhi;
    std::memcpy(&vlo, lo.data(), sizeof(IV));
    std::memcpy(&vhi, hi.data(), sizeof(IV));
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      if (i & D) continue;
      const V a = v[i], b = v[i + D];
      v[i] = __builtin_shuffle(a, b, vlo);
      v[i + D] = __builtin_shuffle(a, b, vhi);
    }
    if constexpr (2 * D < W) transpose_stages<2 * D>(v);
  }
  template <int D, bool High> static constexpr std::array<I, W> stage_indices() {
    std::array<I, W> idx{};
    for (int e = 0; e < W; ++e)
      idx[e] = High ? ((e & D) ? W + e : e + D) : ((e & D) ? W + e - D : e);
    return idx;
  }
};

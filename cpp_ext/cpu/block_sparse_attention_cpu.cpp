// Sculpt4D block-sparse attention forward, CPU (plain C++ + OpenMP, C ABI).
//
// Algorithm (per work item = one batch-head x one query block, split into chunks of up to 64
// query rows; OpenMP dynamic schedule since rows have different numbers of key blocks):
//   * Q rows packed TRANSPOSED into QT[D][qp] (qp = rows rounded up to the vector width) and
//     pre-multiplied by scale*log2(e), so scores come out in log2 units and exp() is exp2().
//   * For each key block in CSR order (fp32 K/V are read in place; bf16 K/V are widened once
//     per visit into a float scratch):
//       ST[k][q] = sum_d K[k][d] * QT[d][q]     register-blocked: MR keys x NV vectors of
//                                                queries, K broadcast, Q^T streamed
//       column max over k (vectorised over q), online-softmax update m, l (per query lane),
//       P = exp2(ST - m)                         polynomial exp2 (no libm per element),
//                                                row sums l accumulated lane-wise
//       OT[d][q] = alpha[q]*OT[d][q] + sum_k V[k][d] * P[k][q]
//                                                register-blocked: MR dims x NV vectors of
//                                                queries, V broadcast, P streamed
//     The transposed ("queries along the vector lanes") formulation keeps every softmax
//     statistic lane-wise: no horizontal reductions and no K/V transposes.
//   * out[q][d] = OT[d][q] / l[q];  lse[q] = ln(2) * m[q] + ln(l[q]).
//
// ISA: AVX-512F intrinsics when compiled with -mavx512f (e.g. -march=native on Zen 4 /
// Skylake-X and later); otherwise a portable path written with GCC/Clang vector extensions
// (AVX2/FMA, SSE2 or NEON depending on the target flags).
#include "s4d/block_sparse_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define S4D_ISA_AVX512 1
#endif

namespace {

// ------------------------------------------------------------------------------------------
// errors
// ------------------------------------------------------------------------------------------
thread_local char g_last_error[1024] = "";

int set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, ap);
  va_end(ap);
  return code;
}

// ------------------------------------------------------------------------------------------
// vector layer
// ------------------------------------------------------------------------------------------
// exp2 on [-0.5, 0.5]: Taylor coefficients ln(2)^k / k!; degree 6 has a relative error below
// 2e-7 (a few float ulps), degree 7 below 1e-8.
#ifndef S4D_EXP_DEGREE
#define S4D_EXP_DEGREE 6
#endif
constexpr float kE0 = 1.0f;
constexpr float kE1 = 0.6931471805599453f;
constexpr float kE2 = 0.2402265069591007f;
constexpr float kE3 = 0.05550410866482158f;
constexpr float kE4 = 0.009618129107628477f;
constexpr float kE5 = 0.0013333558146428443f;
constexpr float kE6 = 0.00015403530393381606f;
constexpr float kE7 = 1.5252733804059838e-05f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

#if defined(S4D_ISA_AVX512)
constexpr const char* kIsaName = "avx512";
constexpr int VL = 16;
using vf = __m512;
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
// 2^t for finite t <= ~127 (t far below -126 underflows to 0 through scalef).
static inline vf vexp2(vf t) {
  const vf n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = _mm512_sub_ps(t, n);
  vf p = _mm512_set1_ps(kE6);
#if S4D_EXP_DEGREE >= 7
  p = _mm512_set1_ps(kE7);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE6));
#endif
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE0));
  return _mm512_scalef_ps(p, n);
}
// Same, also for t = -inf (-> 0).
static inline vf vexp2_safe(vf t) { return vexp2(_mm512_max_ps(t, _mm512_set1_ps(-160.0f))); }
// 32 vector registers: 6 keys (or head dims) x 4 vectors of 16 queries = 24 accumulators;
// ~100-105 GFLOP/s per Zen 4 core, ~93% of its FMA peak.
#ifndef S4D_QK_MR
#define S4D_QK_MR 6
#endif
#ifndef S4D_QK_NV
#define S4D_QK_NV 4
#endif
#ifndef S4D_PV_MR
#define S4D_PV_MR 6
#endif
#ifndef S4D_PV_NV
#define S4D_PV_NV 4
#endif

#else  // portable path: GCC/Clang vector extensions
#if defined(__AVX__)
constexpr const char* kIsaName = "avx2";
constexpr int VL = 8;
#else
constexpr const char* kIsaName = "generic";
constexpr int VL = 4;
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
static inline vf vzero() { return vf{} ; }
static inline vf vset1(float x) { return vf{} + x; }
static inline vf vload(const float* p) {
  vf r;
  __builtin_memcpy(&r, p, sizeof(r));
  return r;
}
static inline void vstore(float* p, vf x) { __builtin_memcpy(p, &x, sizeof(x)); }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vf vmin(vf a, vf b) { return a < b ? a : b; }
static inline vf vexp2(vf t) {
  t = vmax(t, vset1(-126.0f));
  t = vmin(t, vset1(127.0f));
  const vf magic = vset1(12582912.0f);  // 1.5 * 2^23: round to nearest integer
  const vf n = (t + magic) - magic;
  const vf f = t - n;
  vf p = vset1(kE6);
#if S4D_EXP_DEGREE >= 7
  p = vset1(kE7);
  p = p * f + kE6;
#endif
  p = p * f + kE5;
  p = p * f + kE4;
  p = p * f + kE3;
  p = p * f + kE2;
  p = p * f + kE1;
  p = p * f + kE0;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf s;
  __builtin_memcpy(&s, &e, sizeof(s));
  return p * s;
}
static inline vf vexp2_safe(vf t) { return vexp2(t); }
// 16 vector registers: 3 x 4 (AVX2, ~70 GFLOP/s/core on Zen 4) / 4 x 2 (SSE2) accumulators
#ifndef S4D_QK_MR
#define S4D_QK_MR (VL == 8 ? 3 : 4)
#endif
#ifndef S4D_QK_NV
#define S4D_QK_NV (VL == 8 ? 4 : 2)
#endif
#ifndef S4D_PV_MR
#define S4D_PV_MR (VL == 8 ? 3 : 4)
#endif
#ifndef S4D_PV_NV
#define S4D_PV_NV (VL == 8 ? 4 : 2)
#endif
#endif

// Query rows per work item (0 = the whole block) and keys per online-softmax step (0 = the
// whole key block). Tunables; measured on Zen 4 (2 cores): all within ~3%, 64 query rows keep
// the per-thread scratch small for large head dims / blocks.
#ifndef S4D_QCHUNK
#define S4D_QCHUNK 64
#endif
#ifndef S4D_KCHUNK
#define S4D_KCHUNK 0
#endif

// ------------------------------------------------------------------------------------------
// register-blocked micro-kernels
// ------------------------------------------------------------------------------------------
//   C[i][j*VL + l] (+)= sum_kk A(i, kk) * B[kk*ldb + j*VL + l],  i < MR, j < NV
// kQK: A(i, kk) = A[i*lda + kk] (K rows), C zero-initialised, aux[] <- column max of C.
// kPV: A(i, kk) = A[kk*lda + i] (V rows, i = head dim), C initialised to C * aux (alpha).
enum { kQK = 0, kPV = 1 };

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int, float*, int64_t,
                        float*);

template <int MODE, int MR, int NV>
void tile(const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb,
          int K, float* __restrict C, int64_t ldc, float* __restrict aux) {
  vf acc[MR][NV];
  if (MODE == kQK) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = vzero();
  } else {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      const vf al = vload(aux + j * VL);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][j] = vmul(vload(C + i * ldc + j * VL), al);
    }
  }
  for (int kk = 0; kk < K; ++kk) {
    vf b[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b[j] = vload(B + kk * ldb + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf a = vset1(MODE == kQK ? A[i * lda + kk] : A[kk * lda + i]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(a, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) vstore(C + i * ldc + j * VL, acc[i][j]);
  if (MODE == kQK) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      vf mx = vload(aux + j * VL);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) mx = vmax(mx, acc[i][j]);
      vstore(aux + j * VL, mx);
    }
  }
}

template <int MODE, int NV, int... I>
constexpr std::array<TileFn, sizeof...(I)> make_row(std::integer_sequence<int, I...>) {
  return {{&tile<MODE, I + 1, NV>...}};
}
template <int MODE, int MAXMR, int... J>
constexpr std::array<std::array<TileFn, MAXMR>, sizeof...(J)> make_table(
    std::integer_sequence<int, J...>) {
  return {{make_row<MODE, J + 1>(std::make_integer_sequence<int, MAXMR>{})...}};
}
// kQkTable[nv - 1][mr - 1]
constexpr auto kQkTable = make_table<kQK, S4D_QK_MR>(std::make_integer_sequence<int, S4D_QK_NV>{});
constexpr auto kPvTable = make_table<kPV, S4D_PV_MR>(std::make_integer_sequence<int, S4D_PV_NV>{});

// ------------------------------------------------------------------------------------------
// dtype helpers
// ------------------------------------------------------------------------------------------
static inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
template <typename T>
static inline float to_f32(T x);
template <>
inline float to_f32<float>(float x) { return x; }
template <>
inline float to_f32<uint16_t>(uint16_t x) { return bf16_to_f32(x); }
template <typename T>
static inline T from_f32(float x);
template <>
inline float from_f32<float>(float x) { return x; }
template <>
inline uint16_t from_f32<uint16_t>(float x) { return f32_to_bf16(x); }

// ------------------------------------------------------------------------------------------
// driver
// ------------------------------------------------------------------------------------------
struct Problem {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t bh, n, d, bs, nb;
  const int32_t* off;
  const int32_t* idx;
  float qscale;  // scale * log2(e)
  int64_t qch;   // query rows per work item
  int64_t kch;   // keys per softmax step
  int64_t qp;    // qch rounded up to VL
};

struct Scratch {
  float* base = nullptr;
  float *qt = nullptr, *st = nullptr, *ot = nullptr, *m = nullptr, *l = nullptr;
  float *bmax = nullptr, *alpha = nullptr, *kf = nullptr, *vf_ = nullptr;
  bool init(const Problem& p, bool need_kv) {
    const int64_t qp = p.qp;
    auto up = [](int64_t x) { return (x + 15) & ~int64_t(15); };  // 64-byte multiples
    const int64_t sizes[] = {up(p.d * qp), up(p.kch * qp), up(p.d * qp), up(qp), up(qp),
                             up(qp),       up(qp),         need_kv ? up(p.bs * p.d) : 0,
                             need_kv ? up(p.bs * p.d) : 0};
    int64_t total = 0;
    for (int64_t s : sizes) total += s;
    base = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(total) * 4));
    if (!base) return false;
    float* ptrs[9];
    float* cur = base;
    for (int i = 0; i < 9; ++i) {
      ptrs[i] = cur;
      cur += sizes[i];
    }
    qt = ptrs[0], st = ptrs[1], ot = ptrs[2], m = ptrs[3], l = ptrs[4], bmax = ptrs[5];
    alpha = ptrs[6], kf = ptrs[7], vf_ = ptrs[8];
    return true;
  }
  ~Scratch() { std::free(base); }
};

template <typename T>
void run_item(const Problem& p, int64_t bh, int64_t r, int64_t qc, Scratch& s) {
  const int64_t D = p.d, bs = p.bs, qp = p.qp, nvq = qp / VL;
  const int64_t q0 = r * bs + qc * p.qch;
  const int64_t nq = std::min<int64_t>(p.qch, bs - qc * p.qch);
  const T* qb = static_cast<const T*>(p.q) + (bh * p.n + q0) * D;

  // QT[d][t] = q[t][d] * scale * log2(e), padded lanes zero
  for (int64_t t = 0; t < nq; ++t) {
    const T* row = qb + t * D;
    for (int64_t d = 0; d < D; ++d) s.qt[d * qp + t] = to_f32<T>(row[d]) * p.qscale;
  }
  if (nq < qp)
    for (int64_t d = 0; d < D; ++d)
      std::memset(s.qt + d * qp + nq, 0, static_cast<size_t>(qp - nq) * 4);
  for (int64_t t = 0; t < qp; ++t) {
    s.m[t] = -INFINITY;
    s.l[t] = 0.0f;
  }
  std::memset(s.ot, 0, static_cast<size_t>(D * qp) * 4);

  const int32_t e0 = p.off[r], e1 = p.off[r + 1];
  for (int32_t e = e0; e < e1; ++e) {
    const int64_t c = p.idx[e];
    const float* kb;
    const float* vb;
    if (sizeof(T) == 4) {
      kb = reinterpret_cast<const float*>(p.k) + (bh * p.n + c * bs) * D;
      vb = reinterpret_cast<const float*>(p.v) + (bh * p.n + c * bs) * D;
    } else {
      const T* ks = static_cast<const T*>(p.k) + (bh * p.n + c * bs) * D;
      const T* vs = static_cast<const T*>(p.v) + (bh * p.n + c * bs) * D;
      for (int64_t i = 0; i < bs * D; ++i) s.kf[i] = to_f32<T>(ks[i]);
      for (int64_t i = 0; i < bs * D; ++i) s.vf_[i] = to_f32<T>(vs[i]);
      kb = s.kf;
      vb = s.vf_;
    }
    for (int64_t k0 = 0; k0 < bs; k0 += p.kch) {
      const int nk = static_cast<int>(std::min<int64_t>(p.kch, bs - k0));
      // scores (log2 units) and their column max
      for (int64_t j = 0; j < nvq; ++j) vstore(s.bmax + j * VL, vset1(-INFINITY));
      for (int64_t j0 = 0; j0 < nvq; j0 += S4D_QK_NV) {
        const int nv = static_cast<int>(std::min<int64_t>(S4D_QK_NV, nvq - j0));
        for (int i0 = 0; i0 < nk; i0 += S4D_QK_MR) {
          const int mr = std::min(S4D_QK_MR, nk - i0);
          kQkTable[nv - 1][mr - 1](kb + (k0 + i0) * D, D, s.qt + j0 * VL, qp, static_cast<int>(D),
                                   s.st + i0 * qp + j0 * VL, qp, s.bmax + j0 * VL);
        }
      }
      // online softmax: P = exp2(S - m_new), alpha = exp2(m_old - m_new)
      for (int64_t j = 0; j < nvq; ++j) {
        const vf mo = vload(s.m + j * VL);
        const vf mn = vmax(mo, vload(s.bmax + j * VL));
        const vf al = vexp2_safe(vsub(mo, mn));  // m_old may be -inf
        vstore(s.alpha + j * VL, al);
        vstore(s.m + j * VL, mn);
        vf sum0 = vzero(), sum1 = vzero();
        float* col = s.st + j * VL;
        int kk = 0;
        for (; kk + 1 < nk; kk += 2) {
          const vf p0 = vexp2(vsub(vload(col + kk * qp), mn));
          const vf p1 = vexp2(vsub(vload(col + (kk + 1) * qp), mn));
          vstore(col + kk * qp, p0);
          vstore(col + (kk + 1) * qp, p1);
          sum0 = vadd(sum0, p0);
          sum1 = vadd(sum1, p1);
        }
        if (kk < nk) {
          const vf p0 = vexp2(vsub(vload(col + kk * qp), mn));
          vstore(col + kk * qp, p0);
          sum0 = vadd(sum0, p0);
        }
        vstore(s.l + j * VL, vfma(vload(s.l + j * VL), al, vadd(sum0, sum1)));
      }
      // OT = alpha * OT + V^T P
      for (int64_t j0 = 0; j0 < nvq; j0 += S4D_PV_NV) {
        const int nv = static_cast<int>(std::min<int64_t>(S4D_PV_NV, nvq - j0));
        for (int64_t d0 = 0; d0 < D; d0 += S4D_PV_MR) {
          const int mr = static_cast<int>(std::min<int64_t>(S4D_PV_MR, D - d0));
          kPvTable[nv - 1][mr - 1](vb + k0 * D + d0, D, s.st + j0 * VL, qp, nk,
                                   s.ot + d0 * qp + j0 * VL, qp, s.alpha + j0 * VL);
        }
      }
    }
  }

  // out = OT^T / l ; lse = ln2 * m + ln(l)
  T* ob = static_cast<T*>(p.out) + (bh * p.n + q0) * D;
  for (int64_t t = 0; t < nq; ++t) {
    const float lt = s.l[t];
    const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
    T* row = ob + t * D;
    for (int64_t d = 0; d < D; ++d) row[d] = from_f32<T>(s.ot[d * qp + t] * inv);
    if (p.lse) p.lse[bh * p.n + q0 + t] = lt > 0.0f ? kLn2 * s.m[t] + std::log(lt) : -INFINITY;
  }
}

template <typename T>
int run_all(const Problem& p, int num_threads) {
  const int64_t nqc = (p.bs + p.qch - 1) / p.qch;
  const int64_t items = p.bh * p.nb * nqc;
  int alloc_failed = 0;
#ifdef _OPENMP
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
#endif
  {
    Scratch s;
    const bool ok = s.init(p, sizeof(T) != 4);
    if (!ok) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
      alloc_failed = 1;
    }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t it = 0; it < items; ++it) {
      if (!ok) continue;
      const int64_t qc = it % nqc;
      const int64_t r = (it / nqc) % p.nb;
      const int64_t bh = it / (nqc * p.nb);
      run_item<T>(p, bh, r, qc, s);
    }
  }
  (void)num_threads;
  if (alloc_failed) return set_error(S4D_BSA_ERR_ALLOC, "s4d_bsa_forward_cpu: scratch allocation failed");
  return S4D_BSA_OK;
}

}  // namespace

extern "C" {

const char* s4d_bsa_last_error(void) { return g_last_error; }

int s4d_bsa_abi_version(void) { return S4D_BSA_ABI_VERSION; }

const char* s4d_bsa_cpu_isa(void) { return kIsaName; }

int s4d_bsa_cpu_has_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

int s4d_bsa_forward_cpu(const void* q, const void* k, const void* v, void* out, float* lse,
                        int64_t batch_heads, int64_t seq_len, int64_t head_dim,
                        int64_t block_size, const int32_t* kv_offsets,
                        const int32_t* kv_indices, int64_t num_query_blocks, float scale,
                        int dtype, int num_threads) {
  g_last_error[0] = '\0';
  const char* fn = "s4d_bsa_forward_cpu";
  if (!q) return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: q is NULL", fn);
  if (!k) return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: k is NULL", fn);
  if (!v) return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: v is NULL", fn);
  if (!out) return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: out is NULL", fn);
  if (!kv_offsets) return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: kv_offsets is NULL", fn);
  if (dtype != S4D_BSA_DTYPE_F32 && dtype != S4D_BSA_DTYPE_BF16)
    return set_error(S4D_BSA_ERR_DTYPE, "%s: unsupported dtype code %d (expected 0 = float32 or 1 = bfloat16)", fn, dtype);
  if (batch_heads < 0)
    return set_error(S4D_BSA_ERR_SHAPE, "%s: batch_heads must be >= 0, got %lld", fn, (long long)batch_heads);
  if (head_dim < 8 || head_dim > S4D_BSA_MAX_HEAD_DIM || head_dim % 8 != 0)
    return set_error(S4D_BSA_ERR_HEAD_DIM, "%s: unsupported head_dim %lld (expected a multiple of 8 in [8, %d])", fn, (long long)head_dim, S4D_BSA_MAX_HEAD_DIM);
  if (block_size < 8 || block_size > S4D_BSA_MAX_BLOCK_SIZE || block_size % 8 != 0)
    return set_error(S4D_BSA_ERR_BLOCK_SIZE, "%s: unsupported block_size %lld (expected a multiple of 8 in [8, %d])", fn, (long long)block_size, S4D_BSA_MAX_BLOCK_SIZE);
  if (num_query_blocks < 1)
    return set_error(S4D_BSA_ERR_SHAPE, "%s: num_query_blocks must be >= 1, got %lld", fn, (long long)num_query_blocks);
  if (num_query_blocks > INT32_MAX / 2 || seq_len != block_size * num_query_blocks)
    return set_error(S4D_BSA_ERR_SHAPE, "%s: seq_len (%lld) must equal block_size (%lld) * num_query_blocks (%lld) = %lld", fn, (long long)seq_len, (long long)block_size, (long long)num_query_blocks, (long long)(block_size * num_query_blocks));
  if (!std::isfinite(scale))
    return set_error(S4D_BSA_ERR_SCALE, "%s: scale must be finite, got %g", fn, (double)scale);
  const int64_t nb = num_query_blocks;
  if (kv_offsets[0] != 0)
    return set_error(S4D_BSA_ERR_CSR, "%s: kv_offsets[0] must be 0, got %d", fn, kv_offsets[0]);
  for (int64_t r = 0; r < nb; ++r) {
    const int64_t len = static_cast<int64_t>(kv_offsets[r + 1]) - kv_offsets[r];
    if (len < 0)
      return set_error(S4D_BSA_ERR_CSR, "%s: kv_offsets must be non-decreasing, but kv_offsets[%lld] = %d > kv_offsets[%lld] = %d", fn, (long long)r, kv_offsets[r], (long long)(r + 1), kv_offsets[r + 1]);
    if (len > nb)
      return set_error(S4D_BSA_ERR_CSR, "%s: query block %lld lists %lld key blocks but there are only %lld (kv_offsets out of range)", fn, (long long)r, (long long)len, (long long)nb);
  }
  const int64_t nnz = kv_offsets[nb];
  if (nnz > 0 && !kv_indices)
    return set_error(S4D_BSA_ERR_NULL_POINTER, "%s: kv_indices is NULL but kv_offsets[%lld] = %lld", fn, (long long)nb, (long long)nnz);
  {
    std::vector<int64_t> seen(static_cast<size_t>(nb), -1);
    for (int64_t r = 0; r < nb; ++r) {
      for (int32_t e = kv_offsets[r]; e < kv_offsets[r + 1]; ++e) {
        const int32_t c = kv_indices[e];
        if (c < 0 || c >= nb)
          return set_error(S4D_BSA_ERR_CSR, "%s: kv_indices[%d] = %d (query block %lld) is out of range [0, %lld)", fn, e, c, (long long)r, (long long)nb);
        if (seen[c] == r)
          return set_error(S4D_BSA_ERR_CSR, "%s: query block %lld lists key block %d more than once", fn, (long long)r, c);
        seen[c] = r;
      }
    }
  }
  if (batch_heads == 0) return S4D_BSA_OK;

  Problem p;
  p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
  p.bh = batch_heads, p.n = seq_len, p.d = head_dim, p.bs = block_size, p.nb = nb;
  p.off = kv_offsets, p.idx = kv_indices;
  p.qscale = scale * kLog2e;
  p.qch = (S4D_QCHUNK > 0 && S4D_QCHUNK < block_size) ? S4D_QCHUNK : block_size;
  p.kch = (S4D_KCHUNK > 0 && S4D_KCHUNK < block_size) ? S4D_KCHUNK : block_size;
  p.qp = (p.qch + VL - 1) / VL * VL;
  if (dtype == S4D_BSA_DTYPE_F32) return run_all<float>(p, num_threads);
  return run_all<uint16_t>(p, num_threads);
}

}  // extern "C"

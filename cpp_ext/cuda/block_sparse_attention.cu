// Sculpt4D block-sparse attention forward, CUDA (plain CUDA C++, C ABI in
// s4d/block_sparse_attention_cuda.h; no PyTorch / TensorRT headers).
//
// FlashAttention-2 style, one CTA per (batch_head, query block):
//   * BM = block_size query rows per CTA (16, 32, 64 or 128); each warp owns MT x 16 of them
//     (MT = 1 or 2, see dispatch() for the per-architecture choice). With MT = 1 a warp keeps its Q
//     fragments (16 x D) in registers for the whole CTA; with MT = 2 it re-reads them from
//     shared memory per tile and every K/V fragment feeds 32 rows.
//   * Key/value tiles of BN = 16, 32 or 64 rows (at most block_size) stream through shared memory with cp.async (sm_80+),
//     double-buffered: while tile j is computed, tile j+1 is in flight. The tile sequence is
//     the CSR key-block list of the query block (block_size / BN tiles per key block), so
//     blocks that are not listed are never read.
//   * S = Q K^T and O += P V on tensor cores: mma.sync.m16n8k16 (fp16 or bf16 in, fp32
//     accumulate), operands fetched with ldmatrix (V with .trans). The S accumulators are
//     re-packed in registers as the A operand of P V (FA2's register reuse).
//   * Online softmax in fp32 and log2 units: scores are scaled by scale*log2(e), p = 2^(s - m),
//     running max m and row sum l per row; O is rescaled by 2^(m_old - m_new) per tile.
//   * Shared memory rows (D halves = D/8 16-byte chunks, D = 16, 32, 64 or 128) are XOR-swizzled
//     (swz below), so cp.async stores and ldmatrix loads are bank-conflict free without padding.
//   * Epilogue: O / l is staged through the warp's own (no longer needed) Q rows in shared
//     memory and written with coalesced 16-byte stores; lse = ln2 * (m + log2 l).
// The tensor-core path needs sm_80+; sm_90 runs it too (no Hopper-only instructions are used).
// tests/test_cuda_attention_model.py holds a NumPy model of this file's index arithmetic (fragment
// layouts, swizzle, tile schedule); keep the two in step.
#include <cuda_runtime.h>

#include <stdint.h>

#include "bsa_internal.h"
#include "s4d/block_sparse_attention_cuda.h"

namespace {

struct F16Tag {};
struct BF16Tag {};

struct Params {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  uint16_t* out;
  float* lse;
  const int32_t* offsets;
  const int32_t* indices;
  int64_t seq_len;
  int nnz;
  int num_blocks;  // query blocks == key blocks
  float scale_log2;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define S4D_BSA_DEVICE_OK 1
#endif

#ifdef S4D_BSA_DEVICE_OK

// ---- PTX wrappers --------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename Tag>
struct Mma;

template <>
struct Mma<F16Tag> {
  // lo -> bits [0, 16), hi -> bits [16, 32)
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Mma<BF16Tag> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Element offset of 16-byte chunk `ch` of row `row` in a swizzled [rows][D] tile. The 32 banks
// are 8 chunk slots; one ldmatrix 8x8 matrix reads one chunk of 8 consecutive rows, which must
// land in 8 different slots. A row holds C = D/8 chunks, so 8/C rows share a 128-byte line when
// C < 8: XOR the chunk with (row / rows-per-line) masked to the chunks a row has. For C >= 8
// this is the usual chunk ^ (row & 7).
template <int D>
__device__ __forceinline__ int swz(int row, int ch) {
  constexpr int C = D / 8;
  constexpr int kRowsPerLine = C >= 8 ? 1 : 8 / C;
  constexpr int kMask = (C >= 8 ? 8 : C) - 1;
  return row * D + ((ch ^ ((row / kRowsPerLine) & kMask)) << 3);
}

// Asynchronously copies `ROWS` contiguous rows of D halves from global to a swizzled tile.
template <int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile(uint16_t* s, const uint16_t* g, int tid) {
  constexpr int C = D / 8;
  static_assert((ROWS * C) % NT == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < ROWS * C / NT; ++it) {
    const int i = it * NT + tid;
    const int row = i / C, ch = i % C;
    cp_async16(s + swz<D>(row, ch), g + row * D + ch * 8);
  }
}

__device__ __forceinline__ int clamp_block(int c, int nb) { return c < 0 ? 0 : (c >= nb ? nb - 1 : c); }

#endif  // S4D_BSA_DEVICE_OK

// One CTA = one (batch_head, query block) of BS rows. Template parameters:
//   MT  16-row m-tiles per warp (BS / (16 * MT) warps). MT = 1 keeps the warp's Q fragments in
//       registers for the whole CTA; MT = 2 re-reads them from shared memory every tile but
//       uses each K / V fragment for 32 rows, halving the shared-memory traffic per MMA.
//   BN  keys per K/V tile (16, 32 or 64, at most BS; BS / BN tiles per key block).
#ifdef S4D_BSA_DEVICE_OK
template <typename Tag, int D, int BS, int MT, int BN>
__device__ __forceinline__ void bsa_fwd_body(const Params& p) {
  constexpr int BM = BS;                 // query rows per CTA
  constexpr int WARPS = BM / (16 * MT);  // each warp owns MT * 16 consecutive rows
  constexpr int NT = WARPS * 32;
  constexpr int TPB = BS / BN;           // K/V tiles per key block
  constexpr int C = D / 8;               // 16-byte chunks per row
  constexpr int KC = D / 16;             // k16 steps of Q K^T
  constexpr int NS = BN / 8;             // n8 tiles of S
  constexpr int ND = D / 8;              // n8 tiles of O
  constexpr bool kQInRegs = MT == 1;
  // With Q fragments in registers the k loop must unroll fully (qf is indexed by kc); with Q
  // re-read from shared memory a rolled loop keeps only one step's fragments live.
  constexpr int kKUnroll = kQInRegs && KC >= 2 ? KC / 2 : 1;
  static_assert((KC == 1 || KC % 2 == 0) && ND % 2 == 0, "D must be 16 or a multiple of 32");
  static_assert(BN % 16 == 0 && BS % BN == 0 && BM % (16 * MT) == 0, "bad tile configuration");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sK = sQ + BM * D;      // 2 stages of [BN][D]
  uint16_t* sV = sK + 2 * BN * D;  // 2 stages of [BN][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int nb = p.num_blocks;
  const int qblock = static_cast<int>(blockIdx.x % static_cast<unsigned>(nb));
  const int64_t bh = static_cast<int64_t>(blockIdx.x / static_cast<unsigned>(nb));

  int e0 = __ldg(p.offsets + qblock);
  int e1 = __ldg(p.offsets + qblock + 1);
  e0 = e0 < 0 ? 0 : (e0 > p.nnz ? p.nnz : e0);
  e1 = e1 < e0 ? e0 : (e1 > p.nnz ? p.nnz : e1);
  const int ntiles = (e1 - e0) * TPB;

  // Per-head base pointers once; offsets inside a head fit in 32 bits (seq_len * D < 2^31 is
  // checked on the host), which keeps address arithmetic cheap in registers.
  const int64_t head_off = bh * p.seq_len * D;
  const uint16_t* __restrict__ kh = p.k + head_off;
  const uint16_t* __restrict__ vh = p.v + head_off;
  const int q_off = qblock * BS * D;  // this CTA's first query row inside the head
  uint16_t* out = p.out + head_off + q_off;
  const int64_t lse_row0 = bh * p.seq_len + static_cast<int64_t>(qblock) * BS;

  if (ntiles == 0) {  // no key block: zero output, lse = -inf
    for (int i = tid; i < BM * C; i += NT) reinterpret_cast<uint4*>(out)[i] = make_uint4(0u, 0u, 0u, 0u);
    if (p.lse != nullptr)
      for (int i = tid; i < BM; i += NT) p.lse[lse_row0 + i] = -__int_as_float(0x7f800000);
    return;
  }

  // Element offset (inside the head) of K/V tile j, whose key block is c.
  auto kv_off = [&](int j, int c) -> int { return (c * BS + (j % TPB) * BN) * D; };
  auto block_of = [&](int j) -> int { return clamp_block(__ldg(p.indices + e0 + j / TPB), nb); };

  // Prologue: Q and the first K/V tile in one group.
  {
    load_tile<D, BM, NT>(sQ, p.q + head_off + q_off, tid);
    const int off = kv_off(0, block_of(0));
    load_tile<D, BN, NT>(sK, kh + off, tid);
    load_tile<D, BN, NT>(sV, vh + off, tid);
    cp_async_commit();
  }
  int next_block = ntiles > 1 ? block_of(1) : 0;  // key block of tile j+1

  // Rows owned by this warp: m-tile mt covers CTA rows (warp * MT + mt) * 16 .. +15; this thread
  // holds rows g and g+8 of each m-tile (g = lane / 4).
  const int q_ld_row = (lane & 7) + ((lane >> 3) & 1) * 8;  // ldmatrix row of an A operand
  const float kNegInf = -__int_as_float(0x7f800000);
  float m[MT][2], l[MT][2];  // running max (log2 units) and this thread's partial row sums
  float o[MT][ND][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m[mt][0] = m[mt][1] = kNegInf;
    l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
    for (int n = 0; n < ND; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
  }
  uint32_t qf[kQInRegs ? KC : 1][4];  // MT == 1: the warp's Q fragments for the whole CTA

  for (int j = 0; j < ntiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // tile j visible to all warps; every warp is done with tile j-1
    if (j + 1 < ntiles) {
      const int stage = (j + 1) & 1;
      const int off = kv_off(j + 1, next_block);
      load_tile<D, BN, NT>(sK + stage * BN * D, kh + off, tid);
      load_tile<D, BN, NT>(sV + stage * BN * D, vh + off, tid);
      cp_async_commit();
      if (j + 2 < ntiles) next_block = block_of(j + 2);  // consumed next iteration
    }
    if constexpr (kQInRegs) {
      if (j == 0) {
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) ldsm_x4(qf[kc], sQ + swz<D>(warp * 16 + q_ld_row, 2 * kc + (lane >> 4)));
      }
    }
    const uint16_t* tK = sK + (j & 1) * BN * D;
    const uint16_t* tV = sV + (j & 1) * BN * D;

    // ---- S = Q K^T (MT*16 x BN per warp) ----
    float s[MT][NS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NS; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
    if constexpr (KC == 1) {
      // D = 16: one k-step; each 8-key B fragment is two 8x8 matrices (ldmatrix .x2)
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) qa[mt][r] = qf[0][r];
        } else {
          ldsm_x4(qa[mt], sQ + swz<D>((warp * MT + mt) * 16 + q_ld_row, lane >> 4));
        }
      }
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        uint32_t b[2];
        ldsm_x2(b, tK + swz<D>(n * 8 + (lane & 7), (lane >> 3) & 1));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) Mma<Tag>::mma(s[mt][n], qa[mt], b[0], b[1]);
      }
    } else {
#pragma unroll kKUnroll
      for (int kc = 0; kc < KC; kc += 2) {
        // A fragments of k-steps kc and kc+1 (16 x 16 each: rows 0-7 / 8-15 x cols 0-7 / 8-15)
        uint32_t qa[MT][2][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (kQInRegs) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              qa[mt][0][r] = qf[kc][r];
              qa[mt][1][r] = qf[kc + 1][r];
            }
          } else {
            const int row = (warp * MT + mt) * 16 + q_ld_row;
            ldsm_x4(qa[mt][0], sQ + swz<D>(row, 2 * kc + (lane >> 4)));
            ldsm_x4(qa[mt][1], sQ + swz<D>(row, 2 * kc + 2 + (lane >> 4)));
          }
        }
#pragma unroll
        for (int n = 0; n < NS; ++n) {
          // keys n*8 .. n*8+7, dims 16*kc .. 16*kc+31: B fragments of k-steps kc and kc+1
          uint32_t b[4];
          ldsm_x4(b, tK + swz<D>(n * 8 + (lane & 7), 2 * kc + (lane >> 3)));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            Mma<Tag>::mma(s[mt][n], qa[mt][0], b[0], b[1]);
            Mma<Tag>::mma(s[mt][n], qa[mt][1], b[2], b[3]);
          }
        }
      }
    }

    // ---- online softmax (log2 units) ----
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        s[mt][n][0] *= p.scale_log2;
        s[mt][n][1] *= p.scale_log2;
        s[mt][n][2] *= p.scale_log2;
        s[mt][n][3] *= p.scale_log2;
        mx0 = fmaxf(mx0, fmaxf(s[mt][n][0], s[mt][n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[mt][n][2], s[mt][n][3]));
      }
      // a row's BN scores are spread over the 4 threads of a quad
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float new0 = fmaxf(m[mt][0], mx0), new1 = fmaxf(m[mt][1], mx1);
      const float ref0 = new0 == kNegInf ? 0.0f : new0;  // avoid (-inf) - (-inf)
      const float ref1 = new1 == kNegInf ? 0.0f : new1;
      const float alpha0 = ex2(m[mt][0] - ref0), alpha1 = ex2(m[mt][1] - ref1);
      m[mt][0] = new0;
      m[mt][1] = new1;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        s[mt][n][0] = ex2(s[mt][n][0] - ref0);
        s[mt][n][1] = ex2(s[mt][n][1] - ref0);
        s[mt][n][2] = ex2(s[mt][n][2] - ref1);
        s[mt][n][3] = ex2(s[mt][n][3] - ref1);
        sum0 += s[mt][n][0] + s[mt][n][1];
        sum1 += s[mt][n][2] + s[mt][n][3];
      }
      l[mt][0] = l[mt][0] * alpha0 + sum0;
      l[mt][1] = l[mt][1] * alpha1 + sum1;
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        o[mt][n][0] *= alpha0;
        o[mt][n][1] *= alpha0;
        o[mt][n][2] *= alpha1;
        o[mt][n][3] *= alpha1;
      }
    }

    // ---- O += P V: P's accumulators re-packed as A fragments (k-step = 16 keys) ----
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = Mma<Tag>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = Mma<Tag>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = Mma<Tag>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = Mma<Tag>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
      const int vrow = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int dd = 0; dd < ND / 2; ++dd) {
        // keys 16*kk .. +15, dims 16*dd .. +15 (transposed): B fragments of n-tiles 2dd, 2dd+1
        uint32_t b[4];
        ldsm_x4_trans(b, tV + swz<D>(vrow, 2 * dd + (lane >> 4)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<Tag>::mma(o[mt][2 * dd], a[mt], b[0], b[1]);
          Mma<Tag>::mma(o[mt][2 * dd + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // ---- epilogue: stage O / l through this warp's own Q rows (only this warp reads them) ----
  const int g = lane >> 2, tig = lane & 3;
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float l0 = l[mt][0], l1 = l[mt][1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const int r0 = (warp * MT + mt) * 16 + g, r1 = r0 + 8;  // CTA rows of this thread
#pragma unroll
    for (int n = 0; n < ND; ++n) {
      *reinterpret_cast<uint32_t*>(sQ + swz<D>(r0, n) + 2 * tig) =
          Mma<Tag>::pack(o[mt][n][0] * inv0, o[mt][n][1] * inv0);
      *reinterpret_cast<uint32_t*>(sQ + swz<D>(r1, n) + 2 * tig) =
          Mma<Tag>::pack(o[mt][n][2] * inv1, o[mt][n][3] * inv1);
    }
    if (p.lse != nullptr && tig == 0) {
      const float kLn2 = 0.69314718055994531f;
      p.lse[lse_row0 + r0] = (m[mt][0] + lg2(l0)) * kLn2;
      p.lse[lse_row0 + r1] = (m[mt][1] + lg2(l1)) * kLn2;
    }
  }
  __syncwarp();
#pragma unroll
  for (int it = 0; it < MT * 16 * C / 32; ++it) {
    const int i = it * 32 + lane;
    const int row = warp * MT * 16 + i / C, ch = i % C;
    *reinterpret_cast<uint4*>(out + row * D + ch * 8) =
        *reinterpret_cast<const uint4*>(sQ + swz<D>(row, ch));
  }
}

// Device code of a variant is generated only for the architectures the host dispatch uses it
// on (the D = 128, 32-rows-per-warp variant: sm_80 only - it would spill elsewhere).
template <int D, int MT>
__device__ constexpr bool variant_enabled() {
#if __CUDA_ARCH__ == 800
  return true;
#else
  return !(D == 128 && MT == 2);
#endif
}
#endif  // S4D_BSA_DEVICE_OK

template <typename Tag, int D, int BS, int MT, int BN>
__global__ void __launch_bounds__(BS * 2 / MT, 1) bsa_fwd_kernel(const Params p) {
#ifdef S4D_BSA_DEVICE_OK
  if constexpr (variant_enabled<D, MT>())
    bsa_fwd_body<Tag, D, BS, MT, BN>(p);
  else
    __trap();  // never launched on this architecture (see dispatch)
#else
  (void)p;
#endif
}

constexpr int smem_bytes(int D, int BS, int BN) { return (BS * D + 4 * BN * D) * 2; }

template <typename Tag, int D, int BS, int MT, int BN>
cudaError_t launch(const Params& p, int64_t batch_heads, cudaStream_t stream) {
  auto kernel = bsa_fwd_kernel<Tag, D, BS, MT, BN>;
  constexpr int smem = smem_bytes(D, BS, BN);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const unsigned grid = static_cast<unsigned>(batch_heads * p.num_blocks);
  kernel<<<grid, BS * 2 / MT, smem, stream>>>(p);
  return cudaGetLastError();
}

// Tile configuration per (head dim, block size, architecture); registers as reported by ptxas
// (nvcc 13.0; none of these spill - the compile test enforces it):
//   block size 16 / 32:      1 / 2 warps x 16 rows, key tiles of one whole block (16 / 32 keys);
//                            the small models' shapes (tiny: D 16 block 16, demo: D 32 block 32);
//                            sm_90 block 16 / 32: D=16: 56 / 72 regs, D=32: 82 / 100, D=64: 126 /
//                            146, D=128: 202 / 230. D = 16 has one k-step (ldmatrix .x2 for K).
//   block size 64:           4 warps x 16 rows, 64-key tiles (D=64: ~175 regs, D=128: ~245).
//   block size 128, D <= 64: 4 warps x 32 rows, 64-key tiles (D=64: 48 KB smem, ~230 regs).
//   block size 128, D = 128: sm_80: 4 warps x 32 rows, 32-key tiles (64 KB smem, ~252 regs, two
//                            CTAs per SM; each K/V fragment feeds 32 rows, as FlashAttention-2
//                            does on A100);
//                            sm_86 / sm_89 / sm_90: 8 warps x 16 rows, 64-key tiles (96 KB smem,
//                            ~225 regs). The 32-row variant spills on sm_90 with nvcc 13.
// Every (head dim, block size) that s4d_bsa_cuda_size_supported accepts has a line here; the
// tests parse these launch<> lines and check both that and the NumPy model of each.
template <typename Tag>
cudaError_t dispatch(const Params& p, int64_t batch_heads, int64_t head_dim, int64_t block_size, int cc,
                     cudaStream_t stream) {
  const int64_t bh = batch_heads;
  switch (head_dim * 1000 + block_size) {
    case 16016: return launch<Tag, 16, 16, 1, 16>(p, bh, stream);
    case 16032: return launch<Tag, 16, 32, 1, 32>(p, bh, stream);
    case 16064: return launch<Tag, 16, 64, 1, 64>(p, bh, stream);
    case 16128: return launch<Tag, 16, 128, 2, 64>(p, bh, stream);
    case 32016: return launch<Tag, 32, 16, 1, 16>(p, bh, stream);
    case 32032: return launch<Tag, 32, 32, 1, 32>(p, bh, stream);
    case 32064: return launch<Tag, 32, 64, 1, 64>(p, bh, stream);
    case 32128: return launch<Tag, 32, 128, 2, 64>(p, bh, stream);
    case 64016: return launch<Tag, 64, 16, 1, 16>(p, bh, stream);
    case 64032: return launch<Tag, 64, 32, 1, 32>(p, bh, stream);
    case 64064: return launch<Tag, 64, 64, 1, 64>(p, bh, stream);
    case 64128: return launch<Tag, 64, 128, 2, 64>(p, bh, stream);
    case 128016: return launch<Tag, 128, 16, 1, 16>(p, bh, stream);
    case 128032: return launch<Tag, 128, 32, 1, 32>(p, bh, stream);
    case 128064: return launch<Tag, 128, 64, 1, 64>(p, bh, stream);
    case 128128:
      if (cc == 80) return launch<Tag, 128, 128, 2, 32>(p, bh, stream);
      return launch<Tag, 128, 128, 1, 64>(p, bh, stream);
    default: return cudaErrorInvalidValue;  // unreachable: s4d_bsa_check_args_cuda ran first
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

extern "C" int s4d_bsa_forward_cuda(const void* q, const void* k, const void* v, void* out, float* lse,
                                    int64_t batch_heads, int64_t seq_len, int64_t head_dim, int64_t block_size,
                                    const int32_t* kv_offsets, const int32_t* kv_indices, int64_t nnz,
                                    int64_t num_query_blocks, float scale, int dtype, void* stream) {
  const char* fn = "s4d_bsa_forward_cuda";
  int rc = s4d_bsa_check_args_cuda(batch_heads, seq_len, head_dim, block_size, num_query_blocks, scale, dtype,
                                   nullptr, nullptr, nnz);
  if (rc != S4D_BSA_OK) return rc;
  if (!q) return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: q is NULL", fn);
  if (!k) return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: k is NULL", fn);
  if (!v) return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: v is NULL", fn);
  if (!out) return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: out is NULL", fn);
  if (!kv_offsets) return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: kv_offsets is NULL", fn);
  if (nnz > 0 && !kv_indices)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: kv_indices is NULL but nnz = %lld", fn,
                                  static_cast<long long>(nnz));
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out))
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_ALIGNMENT, "%s: q, k, v and out must be 16-byte aligned", fn);
  if (batch_heads == 0) return S4D_BSA_OK;

  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_DEVICE, "%s: querying the CUDA device failed: %s", fn,
                                  cudaGetErrorString(err));
  }
  if (major < 8)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_DEVICE,
                                  "%s: needs a GPU of compute capability >= 8.0 (device %d is %d.x)", fn, device, major);

  Params p;
  p.q = static_cast<const uint16_t*>(q);
  p.k = static_cast<const uint16_t*>(k);
  p.v = static_cast<const uint16_t*>(v);
  p.out = static_cast<uint16_t*>(out);
  p.lse = lse;
  p.offsets = kv_offsets;
  p.indices = kv_indices;
  p.seq_len = seq_len;
  p.nnz = static_cast<int>(nnz);
  p.num_blocks = static_cast<int>(num_query_blocks);
  p.scale_log2 = scale * 1.4426950408889634f;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int cc = major * 10 + minor;
  err = dtype == S4D_BSA_DTYPE_F16 ? dispatch<F16Tag>(p, batch_heads, head_dim, block_size, cc, s)
                                   : dispatch<BF16Tag>(p, batch_heads, head_dim, block_size, cc, s);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_DEVICE, "%s: kernel launch failed: %s", fn, cudaGetErrorString(err));
  }
  return S4D_BSA_OK;
}

// Sculpt4D GPU marching cubes (plain CUDA C++, C ABI in s4d/marching_cubes_cuda.h).
//
// Pipeline of one extraction (all on the caller's stream):
//   dense : DeviceSelect::If over cell ids 0..R^3-1 with "cell has a sign change" -> surface cells
//           in ascending id order (stable selection: deterministic).
//   sparse: map the given ids to themselves, or to a sentinel when out of range / no crossing;
//           radix sort; unique; drop the trailing sentinel -> surface cells, ascending.
//   cell_info: per surface cell its case, triangle count and emitted-edge count (dense: the
//           crossed edges the cell OWNS - every grid edge has exactly one owner cell; sparse:
//           all its crossed edges); exclusive scans give face and edge offsets.
//   emit_edges: edge ids (3 * linear(point) + axis), radix-sorted (+ unique when sparse): the
//           vertex list is ordered by edge id, one vertex per crossed edge.
//   outside value: only when some crossed edge touches a non-finite sample (flag set by
//           emit_edges), a reduction finds min(finite samples) -> float32(min(level-1, min)).
//   write: one thread per vertex interpolates along its edge and maps it to world coordinates
//           (mc_common.h::edge_vertex, float64, no FMA: == sdk.generation.mcubes.grid_to_world); one thread
//           per cell writes its triangles at its face offset, finding each edge's vertex by
//           binary search in the sorted edge list.
// Nothing depends on scheduling, so the output is deterministic and equals the host reference
// (marching_cubes_host.cpp) bit for bit.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <new>

#include <stdint.h>

#include "s4d/marching_cubes_cuda.h"

#define S4D_MC_TABLE_STORAGE static __device__ const
#include "mc_common.h"
#include "mc_internal.h"

namespace {

using s4d_mc::Cell;

constexpr int kThreads = 256;
constexpr unsigned kNoFiniteKey = 0xffffffffu;

struct Aux {
  unsigned min_key;     // ordered-int key of the smallest finite sample (kNoFiniteKey: none)
  int needs_outside;    // some crossed edge touches a non-finite sample
  float outside;        // interpolation value of non-finite samples
  int pad;
  int64_t last_cell;  // sparse: the last element after unique (may be the sentinel)
};

__device__ __forceinline__ unsigned float_key(float v) {
  const unsigned b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 0x7fffffffLL) blocks = 0x7fffffffLL;
  return static_cast<unsigned>(blocks);
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
struct IsSurfaceCell {
  const float* field;
  int64_t R;
  double level;
  __host__ __device__ __forceinline__ bool operator()(uint64_t id) const {
    return s4d_mc::case_has_surface(s4d_mc::cell_case(field, R, s4d_mc::cell_from_id(id, R), level));
  }
};

struct SurfaceFlag {
  IsSurfaceCell pred;
  __host__ __device__ __forceinline__ int operator()(uint64_t id) const { return pred(id) ? 1 : 0; }
};

template <typename Index>
__global__ void sparse_prepare_kernel(const Index* __restrict__ ids, int64_t n,
                                      const float* __restrict__ field, int64_t R, double level,
                                      uint64_t sentinel, uint64_t* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int64_t raw = static_cast<int64_t>(ids[t]);
  const uint64_t ncells = static_cast<uint64_t>(R) * static_cast<uint64_t>(R) *
                                    static_cast<uint64_t>(R);
  uint64_t key = sentinel;
  if (raw >= 0 && static_cast<uint64_t>(raw) < ncells) {
    const uint64_t id = static_cast<uint64_t>(raw);
    if (s4d_mc::case_has_surface(s4d_mc::cell_case(field, R, s4d_mc::cell_from_id(id, R), level))) key = id;
  }
  out[t] = key;
}

__global__ void store_last_kernel(const uint64_t* __restrict__ cells, const int* __restrict__ count,
                                  Aux* __restrict__ aux) {
  const int n = *count;
  aux->last_cell = n > 0 ? static_cast<int64_t>(cells[n - 1]) : -1;
}

__global__ void cell_info_kernel(const uint64_t* __restrict__ cells, int64_t M,
                                 const float* __restrict__ field, int64_t R, double level, int sparse,
                                 unsigned char* __restrict__ cases, int64_t* __restrict__ tri_cnt,
                                 int64_t* __restrict__ edge_cnt) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m > M) return;
  if (m == M) {  // the extra element that turns the exclusive scan's last entry into the total
    tri_cnt[M] = 0;
    edge_cnt[M] = 0;
    return;
  }
  const Cell c = s4d_mc::cell_from_id(cells[m], R);
  const unsigned cs = s4d_mc::cell_case(field, R, c, level);
  unsigned mask = s4d_mc_edge_mask[cs];
  if (!sparse) mask &= s4d_mc::owned_edge_mask(c, R);
  cases[m] = static_cast<unsigned char>(cs);
  tri_cnt[m] = s4d_mc_tri_count[cs];
  edge_cnt[m] = s4d_mc::popcount12(mask);
}

__global__ void emit_edges_kernel(const uint64_t* __restrict__ cells,
                                  const unsigned char* __restrict__ cases,
                                  const int64_t* __restrict__ edge_off, int64_t M, int64_t R, int sparse,
                                  const float* __restrict__ field, uint64_t* __restrict__ edges,
                                  Aux* __restrict__ aux) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const Cell c = s4d_mc::cell_from_id(cells[m], R);
  const unsigned cs = cases[m];
  unsigned mask = s4d_mc_edge_mask[cs];
  if (!sparse) mask &= s4d_mc::owned_edge_mask(c, R);
  int64_t pos = edge_off[m];
  const int64_t n1 = R + 1;
  bool touches_nonfinite = false;
  for (int e = 0; e < 12; ++e) {
    if (!(mask & (1u << e))) continue;
    const uint64_t ge = s4d_mc::global_edge_id(c, e, R);
    edges[pos++] = ge;
    const int axis = s4d_mc::edge_axis(e);
    const int64_t p = static_cast<int64_t>(ge / 3u);
    const int64_t stride = axis == 0 ? n1 * n1 : (axis == 1 ? n1 : 1);
    touches_nonfinite |= !s4d_mc::is_finite(field[p]) || !s4d_mc::is_finite(field[p + stride]);
  }
  if (touches_nonfinite) atomicOr(&aux->needs_outside, 1);
}

__global__ void min_finite_kernel(const float* __restrict__ field, int64_t n, Aux* __restrict__ aux) {
  if (aux->needs_outside == 0) return;  // no crossed edge touches a non-finite sample
  unsigned best = kNoFiniteKey;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < n; s += stride) {
    const float v = field[s];
    if (s4d_mc::is_finite(v)) best = min(best, float_key(v));
  }
  for (int o = 16; o > 0; o >>= 1) best = min(best, __shfl_xor_sync(0xffffffffu, best, o));
  if ((threadIdx.x & 31) == 0 && best != kNoFiniteKey) atomicMin(&aux->min_key, best);
}

__global__ void outside_value_kernel(double level, Aux* __restrict__ aux) {
  double outside = level - 1.0;
  if (aux->min_key != kNoFiniteKey) {
    const double mn = static_cast<double>(key_float(aux->min_key));
    if (mn < outside) outside = mn;
  }
  aux->outside = static_cast<float>(outside);
}

__global__ void vertex_kernel(const uint64_t* __restrict__ edges, int64_t V,
                              const float* __restrict__ field, int64_t R, double level,
                              const Aux* __restrict__ aux, double box_min, double box_size,
                              double* __restrict__ vertices) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= V) return;
  double p[3];
  s4d_mc::edge_vertex(field, R, edges[v], level, aux->outside, box_min, box_size, p);
  vertices[3 * v + 0] = p[0];
  vertices[3 * v + 1] = p[1];
  vertices[3 * v + 2] = p[2];
}

__global__ void face_kernel(const uint64_t* __restrict__ cells, const unsigned char* __restrict__ cases,
                            const int64_t* __restrict__ tri_off, int64_t M, int64_t R,
                            const uint64_t* __restrict__ edges, int64_t V,
                            int64_t* __restrict__ faces) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const Cell c = s4d_mc::cell_from_id(cells[m], R);
  const unsigned cs = cases[m];
  const int n = 3 * static_cast<int>(s4d_mc_tri_count[cs]);
  int64_t* out = faces + 3 * tri_off[m];
  for (int t = 0; t < n; ++t) {
    const uint64_t ge = s4d_mc::global_edge_id(c, s4d_mc_tri_table[cs][t], R);
    const int64_t pos = s4d_mc::lower_bound_u64(edges, V, ge);
    out[t] = (pos < V && edges[pos] == ge) ? pos : -1;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// context
// ---------------------------------------------------------------------------------------------
struct s4d_mc_cuda_context {
  struct Buf {
    void* ptr = nullptr;
    size_t cap = 0;
  };
  enum { kCells, kCellsTmp, kCases, kTriCnt, kTriOff, kEdgeCnt, kEdgeOff, kEdgesRaw, kEdges, kTemp, kAux, kCount, kNumBufs };
  Buf bufs[kNumBufs];
  cudaStream_t stream = nullptr;  // the stream the buffers were last used on
  int pools = -1;                 // stream-ordered allocator supported (-1: not asked yet)
  bool ready = false;
  const float* field = nullptr;
  int64_t R = 0;
  double level = 0.0, box_min = 0.0, box_size = 0.0;
  int64_t M = 0, V = 0, F = 0;
};

namespace {

int cuda_fail(cudaError_t err, const char* what) {
  (void)cudaGetLastError();  // reset the (non-sticky) error state for later calls
  return s4d_mc_set_error(err == cudaErrorMemoryAllocation ? S4D_MC_ERR_ALLOC : S4D_MC_ERR_DEVICE,
                          "marching cubes (CUDA): %s failed: %s", what, cudaGetErrorString(err));
}

#define S4D_MC_CUDA(call, what)                  \
  do {                                           \
    cudaError_t err_ = (call);                   \
    if (err_ != cudaSuccess) return cuda_fail(err_, what); \
  } while (0)

int release(s4d_mc_cuda_context* ctx, s4d_mc_cuda_context::Buf& b) {
  if (!b.ptr) return S4D_MC_OK;
  cudaError_t err;
  if (ctx->pools == 1) {
    err = cudaFreeAsync(b.ptr, ctx->stream);
  } else {
    err = cudaStreamSynchronize(ctx->stream);
    if (err == cudaSuccess) err = cudaFree(b.ptr);
  }
  b.ptr = nullptr;
  b.cap = 0;
  if (err != cudaSuccess) return cuda_fail(err, "freeing a temporary buffer");
  return S4D_MC_OK;
}

int ensure(s4d_mc_cuda_context* ctx, int which, size_t bytes) {
  s4d_mc_cuda_context::Buf& b = ctx->bufs[which];
  if (bytes == 0) bytes = 16;
  if (b.cap >= bytes) return S4D_MC_OK;
  int rc = release(ctx, b);
  if (rc != S4D_MC_OK) return rc;
  bytes = (bytes + 255) & ~static_cast<size_t>(255);
  cudaError_t err = ctx->pools == 1 ? cudaMallocAsync(&b.ptr, bytes, ctx->stream) : cudaMalloc(&b.ptr, bytes);
  if (err != cudaSuccess) {
    b.ptr = nullptr;
    return cuda_fail(err, "allocating a temporary buffer");
  }
  b.cap = bytes;
  return S4D_MC_OK;
}

template <typename T>
T* buf(s4d_mc_cuda_context* ctx, int which) {
  return static_cast<T*>(ctx->bufs[which].ptr);
}

// Switches the context to `stream` (buffers stay valid: later work on the new stream is ordered
// after the synchronisation every extraction ends with).
int bind_stream(s4d_mc_cuda_context* ctx, cudaStream_t stream) {
  if (ctx->pools < 0) {
    int device = 0, pools = 0;
    S4D_MC_CUDA(cudaGetDevice(&device), "cudaGetDevice");
    S4D_MC_CUDA(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
                "cudaDeviceGetAttribute(MemoryPoolsSupported)");
    ctx->pools = pools ? 1 : 0;
  }
  if (ctx->stream != stream) {
    bool has_buffers = false;
    for (const auto& b : ctx->bufs) has_buffers = has_buffers || b.ptr != nullptr;
    // Order the old stream's pending work (and frees) before anything on the new one.
    if (has_buffers) S4D_MC_CUDA(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
    ctx->stream = stream;
  }
  return S4D_MC_OK;
}

int copy_to_host(s4d_mc_cuda_context* ctx, void* dst, const void* src, size_t bytes) {
  S4D_MC_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream), "cudaMemcpyAsync");
  return S4D_MC_OK;
}

int sync(s4d_mc_cuda_context* ctx) {
  S4D_MC_CUDA(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
  return S4D_MC_OK;
}

#define S4D_MC_TRY(expr)              \
  do {                                \
    int rc_ = (expr);                 \
    if (rc_ != S4D_MC_OK) return rc_; \
  } while (0)

// Radix-sorts n keys of `bits` bits from buffer `in` into buffer `out`.
int sort_keys(s4d_mc_cuda_context* ctx, int in, int out, int64_t n, int bits) {
  size_t bytes = 0;
  const uint64_t* src = buf<uint64_t>(ctx, in);
  uint64_t* dst = buf<uint64_t>(ctx, out);
  S4D_MC_CUDA(cub::DeviceRadixSort::SortKeys(nullptr, bytes, src, dst, static_cast<int>(n), 0, bits, ctx->stream),
              "cub::DeviceRadixSort::SortKeys (size query)");
  S4D_MC_TRY(ensure(ctx, s4d_mc_cuda_context::kTemp, bytes));
  S4D_MC_CUDA(cub::DeviceRadixSort::SortKeys(buf<void>(ctx, s4d_mc_cuda_context::kTemp), bytes, src, dst,
                                             static_cast<int>(n), 0, bits, ctx->stream),
              "cub::DeviceRadixSort::SortKeys");
  return S4D_MC_OK;
}

// Unique of n sorted keys from buffer `in` into buffer `out`; count into the kCount buffer.
int unique_keys(s4d_mc_cuda_context* ctx, int in, int out, int64_t n) {
  size_t bytes = 0;
  const uint64_t* src = buf<uint64_t>(ctx, in);
  uint64_t* dst = buf<uint64_t>(ctx, out);
  int* count = buf<int>(ctx, s4d_mc_cuda_context::kCount);
  S4D_MC_CUDA(cub::DeviceSelect::Unique(nullptr, bytes, src, dst, count, static_cast<int>(n), ctx->stream),
              "cub::DeviceSelect::Unique (size query)");
  S4D_MC_TRY(ensure(ctx, s4d_mc_cuda_context::kTemp, bytes));
  S4D_MC_CUDA(cub::DeviceSelect::Unique(buf<void>(ctx, s4d_mc_cuda_context::kTemp), bytes, src, dst, count,
                                        static_cast<int>(n), ctx->stream),
              "cub::DeviceSelect::Unique");
  return S4D_MC_OK;
}

int exclusive_sum(s4d_mc_cuda_context* ctx, int in, int out, int64_t n) {
  size_t bytes = 0;
  const int64_t* src = buf<int64_t>(ctx, in);
  int64_t* dst = buf<int64_t>(ctx, out);
  S4D_MC_CUDA(cub::DeviceScan::ExclusiveSum(nullptr, bytes, src, dst, static_cast<int>(n), ctx->stream),
              "cub::DeviceScan::ExclusiveSum (size query)");
  S4D_MC_TRY(ensure(ctx, s4d_mc_cuda_context::kTemp, bytes));
  S4D_MC_CUDA(cub::DeviceScan::ExclusiveSum(buf<void>(ctx, s4d_mc_cuda_context::kTemp), bytes, src, dst,
                                            static_cast<int>(n), ctx->stream),
              "cub::DeviceScan::ExclusiveSum");
  return S4D_MC_OK;
}

// Everything after the surface-cell list (buffer kCells, M entries, ascending) is known.
int finish_extract(s4d_mc_cuda_context* ctx, bool sparse, int64_t* num_vertices, int64_t* num_faces) {
  typedef s4d_mc_cuda_context C;
  const int64_t M = ctx->M;
  const int64_t R = ctx->R;
  ctx->V = ctx->F = 0;
  if (M > 0) {
    S4D_MC_TRY(ensure(ctx, C::kCases, static_cast<size_t>(M)));
    S4D_MC_TRY(ensure(ctx, C::kTriCnt, sizeof(int64_t) * static_cast<size_t>(M + 1)));
    S4D_MC_TRY(ensure(ctx, C::kTriOff, sizeof(int64_t) * static_cast<size_t>(M + 1)));
    S4D_MC_TRY(ensure(ctx, C::kEdgeCnt, sizeof(int64_t) * static_cast<size_t>(M + 1)));
    S4D_MC_TRY(ensure(ctx, C::kEdgeOff, sizeof(int64_t) * static_cast<size_t>(M + 1)));
    cell_info_kernel<<<grid_for(M + 1, kThreads), kThreads, 0, ctx->stream>>>(
        buf<uint64_t>(ctx, C::kCells), M, ctx->field, R, ctx->level, sparse ? 1 : 0,
        buf<unsigned char>(ctx, C::kCases), buf<int64_t>(ctx, C::kTriCnt), buf<int64_t>(ctx, C::kEdgeCnt));
    S4D_MC_CUDA(cudaGetLastError(), "cell_info_kernel launch");
    S4D_MC_TRY(exclusive_sum(ctx, C::kTriCnt, C::kTriOff, M + 1));
    S4D_MC_TRY(exclusive_sum(ctx, C::kEdgeCnt, C::kEdgeOff, M + 1));
    int64_t totals[2] = {0, 0};
    S4D_MC_TRY(copy_to_host(ctx, &totals[0], buf<int64_t>(ctx, C::kTriOff) + M, sizeof(int64_t)));
    S4D_MC_TRY(copy_to_host(ctx, &totals[1], buf<int64_t>(ctx, C::kEdgeOff) + M, sizeof(int64_t)));
    S4D_MC_TRY(sync(ctx));
    ctx->F = totals[0];
    const int64_t raw_edges = totals[1];
    if (raw_edges > 0x7fffffffLL)
      return s4d_mc_set_error(S4D_MC_ERR_SHAPE, "marching cubes: too many crossed edges (%lld)",
                              static_cast<long long>(raw_edges));

    S4D_MC_TRY(ensure(ctx, C::kEdgesRaw, sizeof(uint64_t) * static_cast<size_t>(raw_edges)));
    S4D_MC_TRY(ensure(ctx, C::kEdges, sizeof(uint64_t) * static_cast<size_t>(raw_edges)));
    emit_edges_kernel<<<grid_for(M, kThreads), kThreads, 0, ctx->stream>>>(
        buf<uint64_t>(ctx, C::kCells), buf<unsigned char>(ctx, C::kCases), buf<int64_t>(ctx, C::kEdgeOff),
        M, R, sparse ? 1 : 0, ctx->field, buf<uint64_t>(ctx, C::kEdgesRaw), buf<Aux>(ctx, C::kAux));
    S4D_MC_CUDA(cudaGetLastError(), "emit_edges_kernel launch");
    const uint64_t n1 = static_cast<uint64_t>(R + 1);
    const int edge_bits = s4d_mc::bits_for(3u * n1 * n1 * n1);
    if (!sparse) {
      // Owned edges are distinct already: sorting gives the vertex order.
      S4D_MC_TRY(sort_keys(ctx, C::kEdgesRaw, C::kEdges, raw_edges, edge_bits));
      ctx->V = raw_edges;
    } else {
      // Neighbouring listed cells emit a shared edge once each: sort, then unique.
      S4D_MC_TRY(sort_keys(ctx, C::kEdgesRaw, C::kEdges, raw_edges, edge_bits));
      S4D_MC_TRY(unique_keys(ctx, C::kEdges, C::kEdgesRaw, raw_edges));
      int unique_count = 0;
      S4D_MC_TRY(copy_to_host(ctx, &unique_count, buf<int>(ctx, C::kCount), sizeof(int)));
      S4D_MC_TRY(sync(ctx));
      ctx->V = unique_count;
      // the unique keys live in kEdgesRaw now: swap so kEdges always holds the vertex list
      C::Buf tmp = ctx->bufs[C::kEdges];
      ctx->bufs[C::kEdges] = ctx->bufs[C::kEdgesRaw];
      ctx->bufs[C::kEdgesRaw] = tmp;
    }
    // Interpolation value of non-finite samples (kernels exit at once if none is touched).
    const int64_t num_samples = static_cast<int64_t>(n1 * n1 * n1);
    unsigned reduce_blocks = grid_for(num_samples, kThreads * 8);
    if (reduce_blocks > 4096u) reduce_blocks = 4096u;
    min_finite_kernel<<<reduce_blocks, kThreads, 0, ctx->stream>>>(ctx->field, num_samples, buf<Aux>(ctx, C::kAux));
    S4D_MC_CUDA(cudaGetLastError(), "min_finite_kernel launch");
    outside_value_kernel<<<1, 1, 0, ctx->stream>>>(ctx->level, buf<Aux>(ctx, C::kAux));
    S4D_MC_CUDA(cudaGetLastError(), "outside_value_kernel launch");
  }
  ctx->ready = true;
  *num_vertices = ctx->V;
  *num_faces = ctx->F;
  return S4D_MC_OK;
}

int begin_extract(s4d_mc_cuda_context* ctx, const float* field, int64_t R, double level, double box_min,
                  double box_max, void* stream, int64_t* num_vertices, int64_t* num_faces) {
  if (!ctx) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "marching cubes: context is NULL");
  if (!field) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "marching cubes: field is NULL");
  if (!num_vertices || !num_faces)
    return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "marching cubes: num_vertices / num_faces is NULL");
  ctx->ready = false;
  S4D_MC_TRY(bind_stream(ctx, static_cast<cudaStream_t>(stream)));
  ctx->field = field;
  ctx->R = R;
  ctx->level = level;
  ctx->box_min = box_min;
  ctx->box_size = box_max - box_min;
  ctx->M = ctx->V = ctx->F = 0;
  typedef s4d_mc_cuda_context C;
  S4D_MC_TRY(ensure(ctx, C::kAux, sizeof(Aux)));
  S4D_MC_TRY(ensure(ctx, C::kCount, sizeof(int)));
  Aux init;
  init.min_key = kNoFiniteKey;
  init.needs_outside = 0;
  init.outside = 0.0f;
  init.pad = 0;
  init.last_cell = -1;
  // cudaMemcpyAsync from pageable host memory is staged before the call returns: `init` may go.
  S4D_MC_CUDA(cudaMemcpyAsync(buf<Aux>(ctx, C::kAux), &init, sizeof(Aux), cudaMemcpyHostToDevice, ctx->stream),
              "cudaMemcpyAsync(aux)");
  return S4D_MC_OK;
}

}  // namespace

extern "C" {

int s4d_mc_cuda_create(s4d_mc_cuda_context** ctx) {
  s4d_mc_clear_error();
  if (!ctx) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_cuda_create: ctx is NULL");
  *ctx = new (std::nothrow) s4d_mc_cuda_context();
  if (!*ctx) return s4d_mc_set_error(S4D_MC_ERR_ALLOC, "s4d_mc_cuda_create: out of host memory");
  return S4D_MC_OK;
}

int s4d_mc_cuda_destroy(s4d_mc_cuda_context* ctx) {
  if (!ctx) return S4D_MC_OK;
  int rc = S4D_MC_OK;
  for (auto& b : ctx->bufs) {
    const int r = release(ctx, b);
    if (rc == S4D_MC_OK) rc = r;
  }
  delete ctx;
  return rc;
}

int s4d_mc_cuda_extract_dense(s4d_mc_cuda_context* ctx, const float* field, int64_t resolution, double level,
                              double box_min, double box_max, void* stream, int64_t* num_vertices,
                              int64_t* num_faces) {
  s4d_mc_clear_error();
  S4D_MC_TRY(s4d_mc_check_args(resolution, level, box_min, box_max, -1, S4D_MC_INDEX_INT64));
  S4D_MC_TRY(begin_extract(ctx, field, resolution, level, box_min, box_max, stream, num_vertices, num_faces));
  typedef s4d_mc_cuda_context C;
  const int64_t R = resolution;
  const int num_cells = static_cast<int>(R * R * R);  // R <= 1024: at most 2^30
  IsSurfaceCell pred{field, R, level};
  thrust::counting_iterator<uint64_t> ids(0u);

  // Pass 1: count the surface cells (so the list is allocated O(surface), not O(R^3)).
  thrust::transform_iterator<SurfaceFlag, thrust::counting_iterator<uint64_t>, int> flags(
      ids, SurfaceFlag{pred});
  size_t bytes = 0;
  int* count = buf<int>(ctx, C::kCount);
  S4D_MC_CUDA(cub::DeviceReduce::Sum(nullptr, bytes, flags, count, num_cells, ctx->stream),
              "cub::DeviceReduce::Sum (size query)");
  S4D_MC_TRY(ensure(ctx, C::kTemp, bytes));
  S4D_MC_CUDA(cub::DeviceReduce::Sum(buf<void>(ctx, C::kTemp), bytes, flags, count, num_cells, ctx->stream),
              "cub::DeviceReduce::Sum");
  int M = 0;
  S4D_MC_TRY(copy_to_host(ctx, &M, count, sizeof(int)));
  S4D_MC_TRY(sync(ctx));
  ctx->M = M;

  // Pass 2: stable selection -> surface cells in ascending id order.
  if (M > 0) {
    S4D_MC_TRY(ensure(ctx, C::kCells, sizeof(uint64_t) * static_cast<size_t>(M)));
    bytes = 0;
    S4D_MC_CUDA(cub::DeviceSelect::If(nullptr, bytes, ids, buf<uint64_t>(ctx, C::kCells), count, num_cells,
                                      pred, ctx->stream),
                "cub::DeviceSelect::If (size query)");
    S4D_MC_TRY(ensure(ctx, C::kTemp, bytes));
    S4D_MC_CUDA(cub::DeviceSelect::If(buf<void>(ctx, C::kTemp), bytes, ids, buf<uint64_t>(ctx, C::kCells),
                                      count, num_cells, pred, ctx->stream),
                "cub::DeviceSelect::If");
  }
  return finish_extract(ctx, false, num_vertices, num_faces);
}

int s4d_mc_cuda_extract_sparse(s4d_mc_cuda_context* ctx, const float* field, int64_t resolution, double level,
                               double box_min, double box_max, const void* cell_ids, int64_t num_cells,
                               int index_dtype, void* stream, int64_t* num_vertices, int64_t* num_faces) {
  s4d_mc_clear_error();
  S4D_MC_TRY(s4d_mc_check_args(resolution, level, box_min, box_max, num_cells < 0 ? 0 : num_cells, index_dtype));
  if (num_cells < 0)
    return s4d_mc_set_error(S4D_MC_ERR_ARG, "marching cubes: num_cells must be >= 0, got %lld",
                            static_cast<long long>(num_cells));
  if (num_cells > 0 && !cell_ids)
    return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "marching cubes: cell_ids is NULL but num_cells = %lld",
                            static_cast<long long>(num_cells));
  S4D_MC_TRY(begin_extract(ctx, field, resolution, level, box_min, box_max, stream, num_vertices, num_faces));
  typedef s4d_mc_cuda_context C;
  const int64_t R = resolution;
  const int64_t n = num_cells;
  if (n > 0) {
    const uint64_t ncells = static_cast<uint64_t>(R) * static_cast<uint64_t>(R) * static_cast<uint64_t>(R);
    const int bits = s4d_mc::bits_for(ncells);
    const uint64_t sentinel = (1ull << bits) - 1ull;  // >= R^3 > every valid id
    S4D_MC_TRY(ensure(ctx, C::kCellsTmp, sizeof(uint64_t) * static_cast<size_t>(n)));
    S4D_MC_TRY(ensure(ctx, C::kCells, sizeof(uint64_t) * static_cast<size_t>(n)));
    if (index_dtype == S4D_MC_INDEX_INT32)
      sparse_prepare_kernel<int32_t><<<grid_for(n, kThreads), kThreads, 0, ctx->stream>>>(
          static_cast<const int32_t*>(cell_ids), n, field, R, level, sentinel,
          buf<uint64_t>(ctx, C::kCellsTmp));
    else
      sparse_prepare_kernel<int64_t><<<grid_for(n, kThreads), kThreads, 0, ctx->stream>>>(
          static_cast<const int64_t*>(cell_ids), n, field, R, level, sentinel,
          buf<uint64_t>(ctx, C::kCellsTmp));
    S4D_MC_CUDA(cudaGetLastError(), "sparse_prepare_kernel launch");
    S4D_MC_TRY(sort_keys(ctx, C::kCellsTmp, C::kCells, n, bits));
    S4D_MC_TRY(unique_keys(ctx, C::kCells, C::kCellsTmp, n));
    store_last_kernel<<<1, 1, 0, ctx->stream>>>(buf<uint64_t>(ctx, C::kCellsTmp), buf<int>(ctx, C::kCount),
                                                buf<Aux>(ctx, C::kAux));
    S4D_MC_CUDA(cudaGetLastError(), "store_last_kernel launch");
    int unique_count = 0;
    int64_t last = -1;
    S4D_MC_TRY(copy_to_host(ctx, &unique_count, buf<int>(ctx, C::kCount), sizeof(int)));
    S4D_MC_TRY(copy_to_host(ctx, &last, &buf<Aux>(ctx, C::kAux)->last_cell, sizeof(int64_t)));
    S4D_MC_TRY(sync(ctx));
    ctx->M = unique_count - (last == static_cast<int64_t>(sentinel) ? 1 : 0);
    // the unique list lives in kCellsTmp: swap so kCells holds the surface cells
    C::Buf tmp = ctx->bufs[C::kCells];
    ctx->bufs[C::kCells] = ctx->bufs[C::kCellsTmp];
    ctx->bufs[C::kCellsTmp] = tmp;
  }
  return finish_extract(ctx, true, num_vertices, num_faces);
}

int s4d_mc_cuda_write(s4d_mc_cuda_context* ctx, double* vertices, int64_t* faces, void* stream) {
  s4d_mc_clear_error();
  if (!ctx) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_cuda_write: context is NULL");
  if (!ctx->ready)
    return s4d_mc_set_error(S4D_MC_ERR_STATE, "s4d_mc_cuda_write: no successful extraction to write");
  if (ctx->V > 0 && !vertices)
    return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_cuda_write: vertices is NULL");
  if (ctx->F > 0 && !faces) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_cuda_write: faces is NULL");
  S4D_MC_TRY(bind_stream(ctx, static_cast<cudaStream_t>(stream)));
  typedef s4d_mc_cuda_context C;
  if (ctx->V > 0) {
    vertex_kernel<<<grid_for(ctx->V, kThreads), kThreads, 0, ctx->stream>>>(
        buf<uint64_t>(ctx, C::kEdges), ctx->V, ctx->field, ctx->R, ctx->level, buf<Aux>(ctx, C::kAux),
        ctx->box_min, ctx->box_size, vertices);
    S4D_MC_CUDA(cudaGetLastError(), "vertex_kernel launch");
  }
  if (ctx->F > 0) {
    face_kernel<<<grid_for(ctx->M, kThreads), kThreads, 0, ctx->stream>>>(
        buf<uint64_t>(ctx, C::kCells), buf<unsigned char>(ctx, C::kCases), buf<int64_t>(ctx, C::kTriOff),
        ctx->M, ctx->R, buf<uint64_t>(ctx, C::kEdges), ctx->V, reinterpret_cast<int64_t*>(faces));
    S4D_MC_CUDA(cudaGetLastError(), "face_kernel launch");
  }
  return S4D_MC_OK;
}

}  // extern "C"

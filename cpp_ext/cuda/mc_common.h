// Marching-cubes per-cell / per-edge logic shared by the CUDA kernels (marching_cubes.cu) and
// the host reference implementation (marching_cubes_host.cpp), so both compute bit-identical
// cases, edge ids, vertex positions and faces. Internal header: not part of the C ABI.
//
// Grid conventions (sdk.generation.mcubes): field[i][j][k], i = x, j = y, k = z, (R+1)^3 float32 samples,
// x-major: sample (i, j, k) at linear index (i*(R+1) + j)*(R+1) + k. Cell (i, j, k) (each index
// in [0, R)) has linear id (i*R + j)*R + k. Grid edge (p, axis) - the edge from point p to
// p + e_axis - has id  3 * linear(p) + axis.
//
// Before including, define S4D_MC_TABLE_STORAGE (see mc_tables.h).
#ifndef S4D_MC_COMMON_H_
#define S4D_MC_COMMON_H_

#include <stdint.h>
#include <string.h>

#include "mc_tables.h"

#if defined(__CUDACC__)
#define S4D_MC_HD __host__ __device__ __forceinline__
#else
#define S4D_MC_HD inline
#endif

namespace s4d_mc {

// ---- samples -------------------------------------------------------------------------------

S4D_MC_HD bool is_finite(float v) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  memcpy(&u, &v, sizeof(u));
#endif
  return (u & 0x7f800000u) != 0x7f800000u;
}

// Inside = finite and strictly above the level (the CPU path: `volume > level` after replacing
// non-finite samples by a value below the level). The comparison is done in double.
S4D_MC_HD bool is_inside(float v, double level) { return is_finite(v) && static_cast<double>(v) > level; }

// The value used for interpolation: non-finite samples become `outside` (see s4d_mc docs).
S4D_MC_HD double interp_value(float v, float outside) {
  return static_cast<double>(is_finite(v) ? v : outside);
}

// ---- cube geometry -------------------------------------------------------------------------

S4D_MC_HD int corner_dx(int c) { return static_cast<int>((S4D_MC_CORNER_DX >> c) & 1u); }
S4D_MC_HD int corner_dy(int c) { return static_cast<int>((S4D_MC_CORNER_DY >> c) & 1u); }
S4D_MC_HD int corner_dz(int c) { return static_cast<int>((S4D_MC_CORNER_DZ >> c) & 1u); }

// Edge e of a cell: offset of its lower corner and its axis.
S4D_MC_HD unsigned edge_code(int e) {
  return static_cast<unsigned>((S4D_MC_EDGE_CODES >> (5 * e)) & 31u);
}
S4D_MC_HD int edge_dx(int e) { return static_cast<int>(edge_code(e) & 1u); }
S4D_MC_HD int edge_dy(int e) { return static_cast<int>((edge_code(e) >> 1) & 1u); }
S4D_MC_HD int edge_dz(int e) { return static_cast<int>((edge_code(e) >> 2) & 1u); }
S4D_MC_HD int edge_axis(int e) { return static_cast<int>(edge_code(e) >> 3); }

struct Cell {
  int64_t i, j, k;
};

S4D_MC_HD Cell cell_from_id(uint64_t id, int64_t R) {
  Cell c;
  const uint64_t r = static_cast<uint64_t>(R);
  c.k = static_cast<int64_t>(id % r);
  c.j = static_cast<int64_t>((id / r) % r);
  c.i = static_cast<int64_t>(id / (r * r));
  return c;
}

S4D_MC_HD int64_t point_linear(int64_t i, int64_t j, int64_t k, int64_t R) {
  return (i * (R + 1) + j) * (R + 1) + k;
}

// Case index of a cell: bit c set when corner c is inside.
S4D_MC_HD unsigned cell_case(const float* field, int64_t R, Cell c, double level) {
  const int64_t n1 = R + 1;
  const int64_t base = point_linear(c.i, c.j, c.k, R);
  unsigned cs = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int q = 0; q < 8; ++q) {
    const int64_t off = (corner_dx(q) * n1 + corner_dy(q)) * n1 + corner_dz(q);
    if (is_inside(field[base + off], level)) cs |= 1u << q;
  }
  return cs;
}

S4D_MC_HD bool case_has_surface(unsigned cs) { return cs != 0u && cs != 255u; }

// Global id of local edge e of cell c.
S4D_MC_HD uint64_t global_edge_id(Cell c, int e, int64_t R) {
  const int64_t p = point_linear(c.i + edge_dx(e), c.j + edge_dy(e), c.k + edge_dz(e), R);
  return static_cast<uint64_t>(p) * 3u + static_cast<uint64_t>(edge_axis(e));
}

// Edges a cell OWNS in a dense extraction: grid edge (p, a) belongs to the cell whose lower
// corner is p with its non-axis coordinates clamped to R-1. Every grid edge has exactly one
// owner, and that owner contains it - so a crossed edge's owner is itself a surface cell.
S4D_MC_HD unsigned owned_edge_mask(Cell c, int64_t R) {
  const bool top_i = c.i == R - 1, top_j = c.j == R - 1, top_k = c.k == R - 1;
  unsigned mask = 0;
  for (int e = 0; e < 12; ++e) {
    const int a = edge_axis(e);
    const bool ok = (a == 0 || edge_dx(e) == 0 || top_i) && (a == 1 || edge_dy(e) == 0 || top_j) &&
                    (a == 2 || edge_dz(e) == 0 || top_k);
    if (ok) mask |= 1u << e;
  }
  return mask;
}

S4D_MC_HD int popcount12(unsigned m) {
#if defined(__CUDA_ARCH__)
  return __popc(m);
#else
  return __builtin_popcount(m);
#endif
}

// ---- vertex placement ----------------------------------------------------------------------

// Exactly-rounded a*b and a+b (no FMA contraction on either side), so that
// world = index / R * size + min is evaluated in float64 in exactly sdk.generation.mcubes.grid_to_world's
// order and rounding.
S4D_MC_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  volatile double r = a * b;
  return r;
#endif
}
S4D_MC_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  volatile double r = a + b;
  return r;
#endif
}
S4D_MC_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  volatile double r = a / b;
  return r;
#endif
}

S4D_MC_HD double grid_to_world(double index, int64_t R, double box_min, double box_size) {
  return add_rn(mul_rn(div_rn(index, static_cast<double>(R)), box_size), box_min);
}

// World position of the vertex on grid edge `edge_id` (which must be crossed):
// fractional grid index p + t * e_axis with t = (level - v0) / (v1 - v0) in double.
S4D_MC_HD void edge_vertex(const float* field, int64_t R, uint64_t edge_id, double level,
                           float outside, double box_min, double box_size, double out[3]) {
  const int axis = static_cast<int>(edge_id % 3u);
  const int64_t p = static_cast<int64_t>(edge_id / 3u);
  const int64_t n1 = R + 1;
  int64_t idx[3];
  idx[2] = p % n1;
  idx[1] = (p / n1) % n1;
  idx[0] = p / (n1 * n1);
  const int64_t stride = axis == 0 ? n1 * n1 : (axis == 1 ? n1 : 1);
  const double v0 = interp_value(field[p], outside);
  const double v1 = interp_value(field[p + stride], outside);
  const double t = div_rn(level - v0, v1 - v0);
  for (int d = 0; d < 3; ++d) {
    double index = static_cast<double>(idx[d]);
    if (d == axis) index = add_rn(index, t);
    out[d] = grid_to_world(index, R, box_min, box_size);
  }
}

// First position in sorted keys[0, n) holding `key` (n if absent).
S4D_MC_HD int64_t lower_bound_u64(const uint64_t* keys, int64_t n, uint64_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + ((hi - lo) >> 1);
    if (keys[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Number of bits needed to represent values in [0, n].
S4D_MC_HD int bits_for(uint64_t n) {
  int b = 1;
  while (b < 64 && (n >> b) != 0u) ++b;
  return b;
}

}  // namespace s4d_mc

#endif  // S4D_MC_COMMON_H_

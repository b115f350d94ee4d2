// Host side of the GPU marching cubes: argument validation, the error channel, and a serial
// host reference of the SAME algorithm (same tables, same vertex/face order, same arithmetic via
// mc_common.h). Plain C++17: builds without CUDA, so CI tests it without a GPU.
//
// Build note: compile with -ffp-contract=off is not required (mc_common.h forces the rounding
// of the world mapping through volatile temporaries on the host).
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "s4d/marching_cubes_cuda.h"

#define S4D_MC_TABLE_STORAGE static const
#include "mc_common.h"
#include "mc_internal.h"

namespace {
thread_local char g_mc_error[1024] = "";
}  // namespace

int s4d_mc_set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_mc_error, sizeof(g_mc_error), fmt, ap);
  va_end(ap);
  return code;
}

void s4d_mc_clear_error() { g_mc_error[0] = '\0'; }

float s4d_mc_outside_value(double level, bool any_finite, float min_finite) {
  double outside = level - 1.0;
  if (any_finite && static_cast<double>(min_finite) < outside) outside = static_cast<double>(min_finite);
  return static_cast<float>(outside);
}

extern "C" {

const char* s4d_mc_last_error(void) { return g_mc_error; }

int s4d_mc_abi_version(void) { return S4D_MC_ABI_VERSION; }

int s4d_mc_check_args(int64_t resolution, double level, double box_min, double box_max,
                      int64_t num_cells, int index_dtype) {
  s4d_mc_clear_error();
  if (resolution < 1 || resolution > S4D_MC_MAX_RESOLUTION)
    return s4d_mc_set_error(S4D_MC_ERR_SHAPE,
                            "marching cubes: resolution R must be in [1, %d] (field [R+1]^3), got %lld",
                            S4D_MC_MAX_RESOLUTION, static_cast<long long>(resolution));
  if (!std::isfinite(level))
    return s4d_mc_set_error(S4D_MC_ERR_ARG, "marching cubes: level must be finite, got %g", level);
  if (!std::isfinite(box_min) || !std::isfinite(box_max) || !(box_min < box_max))
    return s4d_mc_set_error(S4D_MC_ERR_ARG,
                            "marching cubes: the world box needs finite box_min < box_max, got min=%g max=%g",
                            box_min, box_max);
  if (num_cells >= 0) {
    if (index_dtype != S4D_MC_INDEX_INT32 && index_dtype != S4D_MC_INDEX_INT64)
      return s4d_mc_set_error(S4D_MC_ERR_INDEX_DTYPE,
                              "marching cubes: unsupported cell-id dtype code %d (expected %d = int32 or %d = int64)",
                              index_dtype, S4D_MC_INDEX_INT32, S4D_MC_INDEX_INT64);
    if (num_cells > INT32_MAX)
      return s4d_mc_set_error(S4D_MC_ERR_ARG, "marching cubes: at most %d active cells, got %lld",
                              INT32_MAX, static_cast<long long>(num_cells));
  }
  return S4D_MC_OK;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// host reference
// ---------------------------------------------------------------------------------------------
struct s4d_mc_host_result {
  std::vector<double> vertices;  // [V*3]
  std::vector<int64_t> faces;    // [F*3]
};

extern "C" {

int s4d_mc_extract_host(const float* field, int64_t resolution, double level, double box_min,
                        double box_max, const void* cell_ids, int64_t num_cells, int index_dtype,
                        s4d_mc_host_result** result, int64_t* num_vertices, int64_t* num_faces) {
  using namespace s4d_mc;
  const bool sparse = num_cells >= 0;
  int rc = s4d_mc_check_args(resolution, level, box_min, box_max, num_cells, index_dtype);
  if (rc != S4D_MC_OK) return rc;
  if (!field) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_extract_host: field is NULL");
  if (!result || !num_vertices || !num_faces)
    return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_extract_host: an output pointer is NULL");
  if (sparse && num_cells > 0 && !cell_ids)
    return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_extract_host: cell_ids is NULL");
  *result = nullptr;
  const int64_t R = resolution;
  const int64_t n1 = R + 1;
  const int64_t num_samples = n1 * n1 * n1;
  const uint64_t num_cell_ids = static_cast<uint64_t>(R) * static_cast<uint64_t>(R) * static_cast<uint64_t>(R);

  // The outside value for non-finite samples (only used in interpolation).
  bool any_finite = false;
  float min_finite = 0.0f;
  for (int64_t s = 0; s < num_samples; ++s) {
    const float v = field[s];
    if (is_finite(v) && (!any_finite || v < min_finite)) {
      min_finite = v;
      any_finite = true;
    }
  }
  const float outside = s4d_mc_outside_value(level, any_finite, min_finite);

  try {
    // 1. surface cells, ascending by id
    std::vector<uint64_t> cells;
    if (!sparse) {
      for (uint64_t id = 0; id < num_cell_ids; ++id)
        if (case_has_surface(cell_case(field, R, cell_from_id(id, R), level))) cells.push_back(id);
    } else {
      for (int64_t n = 0; n < num_cells; ++n) {
        const int64_t raw = index_dtype == S4D_MC_INDEX_INT32 ? static_cast<const int32_t*>(cell_ids)[n]
                                                              : static_cast<const int64_t*>(cell_ids)[n];
        if (raw < 0 || static_cast<uint64_t>(raw) >= num_cell_ids) continue;
        const uint64_t id = static_cast<uint64_t>(raw);
        if (case_has_surface(cell_case(field, R, cell_from_id(id, R), level))) cells.push_back(id);
      }
      std::sort(cells.begin(), cells.end());
      cells.erase(std::unique(cells.begin(), cells.end()), cells.end());
    }

    // 2. crossed edges (dense: each from its owner cell; sparse: all, then sort + unique)
    std::vector<uint64_t> edges;
    for (uint64_t id : cells) {
      const Cell c = cell_from_id(id, R);
      const unsigned cs = cell_case(field, R, c, level);
      unsigned mask = s4d_mc_edge_mask[cs];
      if (!sparse) mask &= owned_edge_mask(c, R);
      for (int e = 0; e < 12; ++e)
        if (mask & (1u << e)) edges.push_back(global_edge_id(c, e, R));
    }
    std::sort(edges.begin(), edges.end());
    edges.erase(std::unique(edges.begin(), edges.end()), edges.end());

    auto* res = new s4d_mc_host_result();
    const int64_t V = static_cast<int64_t>(edges.size());
    res->vertices.resize(static_cast<size_t>(V) * 3);
    const double box_size = box_max - box_min;
    for (int64_t v = 0; v < V; ++v)
      edge_vertex(field, R, edges[static_cast<size_t>(v)], level, outside, box_min, box_size,
                  &res->vertices[static_cast<size_t>(v) * 3]);

    // 3. faces by cell, then table order
    for (uint64_t id : cells) {
      const Cell c = cell_from_id(id, R);
      const unsigned cs = cell_case(field, R, c, level);
      const int nt = s4d_mc_tri_count[cs];
      for (int t = 0; t < 3 * nt; ++t) {
        const uint64_t ge = global_edge_id(c, s4d_mc_tri_table[cs][t], R);
        const int64_t pos = lower_bound_u64(edges.data(), V, ge);
        res->faces.push_back(pos < V && edges[static_cast<size_t>(pos)] == ge ? pos : -1);
      }
    }
    *num_vertices = V;
    *num_faces = static_cast<int64_t>(res->faces.size() / 3);
    *result = res;
  } catch (const std::bad_alloc&) {
    return s4d_mc_set_error(S4D_MC_ERR_ALLOC, "s4d_mc_extract_host: out of memory");
  }
  return S4D_MC_OK;
}

int s4d_mc_host_copy(const s4d_mc_host_result* result, double* vertices, int64_t* faces) {
  if (!result) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_host_copy: result is NULL");
  if (!result->vertices.empty()) {
    if (!vertices) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_host_copy: vertices is NULL");
    std::copy(result->vertices.begin(), result->vertices.end(), vertices);
  }
  if (!result->faces.empty()) {
    if (!faces) return s4d_mc_set_error(S4D_MC_ERR_NULL_POINTER, "s4d_mc_host_copy: faces is NULL");
    std::copy(result->faces.begin(), result->faces.end(), faces);
  }
  return S4D_MC_OK;
}

void s4d_mc_host_free(s4d_mc_host_result* result) { delete result; }

}  // extern "C"

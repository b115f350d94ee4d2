/*
 * Sculpt4D GPU marching cubes: C ABI (no PyTorch / TensorRT types).
 *
 * Input field: float32, device memory, contiguous [R+1, R+1, R+1] in x, y, z order
 * (field[i][j][k] at linear index (i*(R+1) + j)*(R+1) + k), positive INSIDE; the surface is the
 * `level` set. A sample is inside when it is finite and > level (compared in double); NaN and
 * +-inf samples are OUTSIDE. For interpolation a non-finite sample takes the value
 * float32(min(level - 1, smallest finite sample)) - exactly what sdk.generation.mcubes' CPU path feeds
 * scikit-image - so vertices never become non-finite.
 *
 * Output (written by s4d_mc_cuda_write into caller-allocated device buffers):
 *   vertices  float64 [V, 3] world coordinates. The vertex on grid edge (p, axis) sits at the
 *             fractional grid index p + t*e_axis, t = (level - f(p)) / (f(p+e_axis) - f(p))
 *             (double), mapped with  world = index / R * (box_max - box_min) + box_min
 *             evaluated in float64 in exactly that order without FMA contraction: bit-identical
 *             to sdk.generation.mcubes.grid_to_world.
 *   faces     int64 [F, 3] vertex indices; counter-clockwise seen from outside, i.e. the
 *             right-hand-rule normal points from inside (field > level) to outside.
 *
 * Topology and order (deterministic, independent of scheduling):
 *   - each crossed grid edge carries exactly ONE vertex shared by all cells around it;
 *   - vertices are ordered by grid edge id = 3 * linear(p) + axis (ascending);
 *   - faces are ordered by cell id = (i*R + j)*R + k, then by the triangle-table order;
 *   - tables: cpp_ext/cuda/mc_tables.h, derived by cpp_ext/cuda/gen_mc_tables.py (ambiguous
 *     faces: inside corners are never joined across a face; crack-free and watertight).
 *
 * Two extractions:
 *   dense   every cell of the R^3 grid;
 *   sparse  only the listed cells (int32 or int64 linear cell ids, any order; ids outside
 *           [0, R^3), duplicates and cells without a crossing are ignored). Vertices are the
 *           crossed edges of the listed surface cells. When the list contains every surface
 *           cell (as hierarchical decoding's active cells do) the result equals the dense one.
 *
 * Usage: create a context, extract (this synchronises `stream` once or twice to learn the
 * output sizes), allocate vertices/faces of the returned sizes, write (asynchronous on
 * `stream`), destroy. Temporaries are stream-ordered allocations (cudaMallocAsync) released by
 * s4d_mc_cuda_destroy / the next extract. A context is used by one thread at a time.
 * Limits: 1 <= R <= 1024. Needs a CUDA device (any architecture the library was built for).
 *
 * Every function returns S4D_MC_OK (0) or an S4D_MC_ERR_* code; s4d_mc_last_error() gives the
 * message (per calling thread).
 */
#ifndef S4D_MARCHING_CUBES_CUDA_H_
#define S4D_MARCHING_CUBES_CUDA_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define S4D_MC_ABI_VERSION 1
#define S4D_MC_MAX_RESOLUTION 1024

#define S4D_MC_OK 0
#define S4D_MC_ERR_NULL_POINTER 1 /* a required pointer is NULL */
#define S4D_MC_ERR_SHAPE 2        /* resolution out of range */
#define S4D_MC_ERR_ARG 3          /* non-finite level, bad box, negative cell count */
#define S4D_MC_ERR_INDEX_DTYPE 4  /* cell-id dtype code unsupported */
#define S4D_MC_ERR_STATE 5        /* write() without a successful extract() */
#define S4D_MC_ERR_ALLOC 8        /* device allocation failed */
#define S4D_MC_ERR_DEVICE 9       /* CUDA failure */

/* cell-id dtype codes for the sparse extraction */
#define S4D_MC_INDEX_INT32 0
#define S4D_MC_INDEX_INT64 1

typedef struct s4d_mc_cuda_context s4d_mc_cuda_context;

/* Host-only argument validation (no CUDA call). num_cells < 0 skips the sparse checks. */
int s4d_mc_check_args(int64_t resolution, double level, double box_min, double box_max,
                      int64_t num_cells, int index_dtype);

int s4d_mc_cuda_create(s4d_mc_cuda_context** ctx);
/* Frees the context's temporaries (stream-ordered on the last stream used) and the context. */
int s4d_mc_cuda_destroy(s4d_mc_cuda_context* ctx);

int s4d_mc_cuda_extract_dense(s4d_mc_cuda_context* ctx, const float* field /* device */,
                              int64_t resolution, double level, double box_min, double box_max,
                              void* stream /* cudaStream_t */, int64_t* num_vertices,
                              int64_t* num_faces);

int s4d_mc_cuda_extract_sparse(s4d_mc_cuda_context* ctx, const float* field /* device */,
                               int64_t resolution, double level, double box_min, double box_max,
                               const void* cell_ids /* device, nullable if num_cells == 0 */,
                               int64_t num_cells, int index_dtype, void* stream,
                               int64_t* num_vertices, int64_t* num_faces);

/* Writes the last extraction's mesh: vertices float64 [V,3], faces int64 [F,3] (device;
 * either may be NULL when its count is 0). Asynchronous on `stream`. */
int s4d_mc_cuda_write(s4d_mc_cuda_context* ctx, double* vertices, int64_t* faces, void* stream);

const char* s4d_mc_last_error(void);
int s4d_mc_abi_version(void);

/* ---- host reference (same algorithm, tables and order; for tests and CPU fallbacks) ------ */
typedef struct s4d_mc_host_result s4d_mc_host_result;

/* num_cells < 0: dense; else sparse over cell_ids (host int32/int64). On success *result owns
 * the mesh (free it with s4d_mc_host_free). */
int s4d_mc_extract_host(const float* field, int64_t resolution, double level, double box_min,
                        double box_max, const void* cell_ids, int64_t num_cells, int index_dtype,
                        s4d_mc_host_result** result, int64_t* num_vertices, int64_t* num_faces);
int s4d_mc_host_copy(const s4d_mc_host_result* result, double* vertices, int64_t* faces);
void s4d_mc_host_free(s4d_mc_host_result* result);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* S4D_MARCHING_CUBES_CUDA_H_ */

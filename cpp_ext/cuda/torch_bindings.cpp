// PyTorch custom ops over the CUDA kernels' C ABI (the only file here that includes torch
// headers). Loaded by sdk/kernels/cuda.py (torch.utils.cpp_extension.load, is_python_module=False):
//
//   torch.ops.s4d_cuda.block_sparse_attention_fwd(q, k, v, kv_offsets, kv_indices, block_size,
//                                                 scale, return_lse=False, check_csr=True)
//       -> (out, lse)      lse is float32 [B, H, N], or an empty tensor when return_lse is False
//   torch.ops.s4d_cuda.marching_cubes(field, level, box_min, box_max) -> (vertices, faces)
//   torch.ops.s4d_cuda.marching_cubes_sparse(field, cells, level, box_min, box_max)
//       -> (vertices, faces)  float64 [V, 3] world coordinates, int64 [F, 3]; on field's device
//
// Every kernel runs on the current CUDA stream of the input's device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "s4d/block_sparse_attention_cuda.h"
#include "s4d/marching_cubes_cuda.h"

namespace {

constexpr const char* kAttn = "s4d_cuda.block_sparse_attention_fwd";

at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if ((reinterpret_cast<std::uintptr_t>(c.data_ptr()) & 15u) != 0) c = c.clone();  // cp.async needs 16 B
  return c;
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must have dtype torch.int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
}

struct AttnShape {
  int64_t B, H, N, D, nb;
};

AttnShape check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& kv_offsets, const at::Tensor& kv_indices, int64_t block_size) {
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, kAttn,
              ": q must be float16 or bfloat16 (float32 is CPU-only), got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kAttn,
              ": q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.dim() == 4, kAttn, ": q must be 4-D [B, H, N, D], got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), kAttn,
              ": q, k and v must have the same shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(s4d_bsa_cuda_size_supported(block_size), kAttn, ": block_size must be one of " S4D_BSA_CUDA_SIZES_TEXT ", got ",
              block_size);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  TORCH_CHECK(s4d_bsa_cuda_size_supported(D), kAttn, ": head dim D must be one of " S4D_BSA_CUDA_SIZES_TEXT ", got ", D);
  TORCH_CHECK(N > 0 && N % block_size == 0, kAttn, ": sequence length N (", N,
              ") must be a positive multiple of block_size (", block_size, ")");
  check_index_tensor(kAttn, "kv_offsets", kv_offsets);
  check_index_tensor(kAttn, "kv_indices", kv_indices);
  const int64_t nb = N / block_size;
  TORCH_CHECK(kv_offsets.numel() == nb + 1, kAttn, ": kv_offsets must have N / block_size + 1 = ", nb + 1,
              " entries, got ", kv_offsets.numel());
  return {B, H, N, D, nb};
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& kv_offsets,
                                                              const at::Tensor& kv_indices, int64_t block_size,
                                                              double scale, bool return_lse, bool check_csr) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), kAttn, ": q, k and v must be CUDA tensors");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), kAttn,
              ": q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ", v.device());
  const AttnShape s = check_attention_args(q, k, v, kv_offsets, kv_indices, block_size);
  TORCH_CHECK(!kv_offsets.is_cuda() || kv_offsets.device() == q.device(), kAttn,
              ": kv_offsets must be on the CPU or on q's device");
  TORCH_CHECK(!kv_indices.is_cuda() || kv_indices.device() == q.device(), kAttn,
              ": kv_indices must be on the CPU or on q's device");
  const int dtype = q.scalar_type() == at::kHalf ? S4D_BSA_DTYPE_F16 : S4D_BSA_DTYPE_BF16;
  const int64_t nnz = kv_indices.numel();
  const float fscale = static_cast<float>(scale);
  c10::cuda::CUDAGuard guard(q.device());

  if (check_csr) {  // validate the lists' contents on the host (a device->host copy if on the GPU)
    const at::Tensor off_h = kv_offsets.to(at::kCPU).contiguous();
    const at::Tensor idx_h = kv_indices.to(at::kCPU).contiguous();
    const int rc = s4d_bsa_check_args_cuda(s.B * s.H, s.N, s.D, block_size, s.nb, fscale, dtype,
                                           off_h.data_ptr<int32_t>(), nnz > 0 ? idx_h.data_ptr<int32_t>() : nullptr,
                                           nnz);
    TORCH_CHECK(rc == S4D_BSA_OK, kAttn, ": ", s4d_bsa_cuda_last_error());
  }
  const at::Tensor off_d = kv_offsets.to(q.device()).contiguous();
  const at::Tensor idx_d = nnz > 0 ? kv_indices.to(q.device()).contiguous() : kv_indices;
  const at::Tensor qc = aligned_contiguous(q), kc = aligned_contiguous(k), vc = aligned_contiguous(v);
  at::Tensor out = at::empty_like(qc, at::MemoryFormat::Contiguous);
  at::Tensor lse = return_lse ? at::empty({s.B, s.H, s.N}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  const int rc = s4d_bsa_forward_cuda(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                                      return_lse ? lse.data_ptr<float>() : nullptr, s.B * s.H, s.N, s.D, block_size,
                                      off_d.data_ptr<int32_t>(), nnz > 0 ? idx_d.data_ptr<int32_t>() : nullptr, nnz,
                                      s.nb, fscale, dtype, stream);
  TORCH_CHECK(rc == S4D_BSA_OK, kAttn, ": ", s4d_bsa_cuda_last_error());
  return {out, lse};
}

// Shapes only (torch.compile / FakeTensor tracing).
std::tuple<at::Tensor, at::Tensor> block_sparse_attention_fwd_meta(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, const at::Tensor& kv_offsets,
                                                                   const at::Tensor& kv_indices, int64_t block_size,
                                                                   double /*scale*/, bool return_lse,
                                                                   bool /*check_csr*/) {
  const AttnShape s = check_attention_args(q, k, v, kv_offsets, kv_indices, block_size);
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = return_lse ? at::empty({s.B, s.H, s.N}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  return {out, lse};
}

// ---- marching cubes -------------------------------------------------------------------------

struct McContext {
  s4d_mc_cuda_context* ctx = nullptr;
  McContext() {
    const int rc = s4d_mc_cuda_create(&ctx);
    TORCH_CHECK(rc == S4D_MC_OK, "s4d_cuda.marching_cubes: ", s4d_mc_last_error());
  }
  ~McContext() { s4d_mc_cuda_destroy(ctx); }  // stream-ordered frees, after the kernels queued
  McContext(const McContext&) = delete;
  McContext& operator=(const McContext&) = delete;
};

at::Tensor check_field(const char* op, const at::Tensor& field) {
  TORCH_CHECK(field.is_cuda(), op, ": field must be a CUDA tensor");
  TORCH_CHECK(field.is_floating_point(), op, ": field must be floating point, got ", field.scalar_type());
  TORCH_CHECK(field.dim() == 3 && field.size(0) == field.size(1) && field.size(0) == field.size(2) &&
                  field.size(0) >= 2,
              op, ": field must be [R+1, R+1, R+1] with R >= 1, got shape ", field.sizes());
  TORCH_CHECK(field.size(0) - 1 <= S4D_MC_MAX_RESOLUTION, op, ": resolution R = ", field.size(0) - 1,
              " exceeds the maximum ", S4D_MC_MAX_RESOLUTION);
  return field.to(at::kFloat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> write_mesh(const char* op, McContext& mc, const at::Tensor& f, int64_t V, int64_t F,
                                              cudaStream_t stream) {
  at::Tensor verts = at::empty({V, 3}, f.options().dtype(at::kDouble));
  at::Tensor faces = at::empty({F, 3}, f.options().dtype(at::kLong));
  const int rc = s4d_mc_cuda_write(mc.ctx, V > 0 ? verts.data_ptr<double>() : nullptr,
                                   F > 0 ? faces.data_ptr<int64_t>() : nullptr, stream);
  TORCH_CHECK(rc == S4D_MC_OK, op, ": ", s4d_mc_last_error());
  return {verts, faces};
}

std::tuple<at::Tensor, at::Tensor> marching_cubes(const at::Tensor& field, double level, double box_min,
                                                  double box_max) {
  const char* op = "s4d_cuda.marching_cubes";
  c10::cuda::CUDAGuard guard(field.device());
  const at::Tensor f = check_field(op, field);
  const int64_t R = f.size(0) - 1;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(f.device().index()).stream();
  McContext mc;
  int64_t V = 0, F = 0;
  const int rc = s4d_mc_cuda_extract_dense(mc.ctx, f.data_ptr<float>(), R, level, box_min, box_max, stream, &V, &F);
  TORCH_CHECK(rc == S4D_MC_OK, op, ": ", s4d_mc_last_error());
  return write_mesh(op, mc, f, V, F, stream);
}

std::tuple<at::Tensor, at::Tensor> marching_cubes_sparse(const at::Tensor& field, const at::Tensor& cells,
                                                         double level, double box_min, double box_max) {
  const char* op = "s4d_cuda.marching_cubes_sparse";
  c10::cuda::CUDAGuard guard(field.device());
  const at::Tensor f = check_field(op, field);
  TORCH_CHECK(cells.scalar_type() == at::kInt || cells.scalar_type() == at::kLong, op,
              ": cells must be int32 or int64 linear cell ids, got ", cells.scalar_type());
  TORCH_CHECK(!cells.is_cuda() || cells.device() == f.device(), op, ": cells must be on the CPU or on field's device");
  const at::Tensor c = cells.reshape({-1}).to(f.device()).contiguous();
  const int64_t R = f.size(0) - 1;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(f.device().index()).stream();
  McContext mc;
  int64_t V = 0, F = 0;
  const int rc = s4d_mc_cuda_extract_sparse(mc.ctx, f.data_ptr<float>(), R, level, box_min, box_max,
                                            c.numel() > 0 ? c.data_ptr() : nullptr, c.numel(),
                                            c.scalar_type() == at::kInt ? S4D_MC_INDEX_INT32 : S4D_MC_INDEX_INT64,
                                            stream, &V, &F);
  TORCH_CHECK(rc == S4D_MC_OK, op, ": ", s4d_mc_last_error());
  return write_mesh(op, mc, f, V, F, stream);
}

}  // namespace

TORCH_LIBRARY(s4d_cuda, m) {
  m.def(
      "block_sparse_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor kv_offsets, Tensor kv_indices, "
      "int block_size, float scale, bool return_lse=False, bool check_csr=True) -> (Tensor, Tensor)");
  m.def("marching_cubes(Tensor field, float level, float box_min, float box_max) -> (Tensor, Tensor)");
  m.def(
      "marching_cubes_sparse(Tensor field, Tensor cells, float level, float box_min, float box_max) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(s4d_cuda, CUDA, m) {
  m.impl("block_sparse_attention_fwd", &block_sparse_attention_fwd);
  m.impl("marching_cubes", &marching_cubes);
  m.impl("marching_cubes_sparse", &marching_cubes_sparse);
}

TORCH_LIBRARY_IMPL(s4d_cuda, Meta, m) { m.impl("block_sparse_attention_fwd", &block_sparse_attention_fwd_meta); }

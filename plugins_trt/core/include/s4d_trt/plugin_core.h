// Sculpt4D BlockSparseAttention TensorRT plugin: the TensorRT-independent core.
//
// Everything the plugin decides that does not need TensorRT or CUDA lives here, so it is
// compiled and tested on machines without either (tests/test_plugin_core.py, via the C ABI in
// plugin_core_c.h):
//   * the node attributes (field table, parsing from a generic field list, validation),
//   * the block-sparse CSR lists, mirroring sdk.sparse.pattern.SparsePattern.kv_block_lists,
//   * the serialised plugin state (versioned, checksummed byte blob),
//   * the device layout of the CSR lists (bytes the plugin allocates),
//   * the I/O shape and dtype rules.
//
// No TensorRT or CUDA header is included; dtype codes are the kernel's S4D_BSA_DTYPE_* numbers
// (s4d/block_sparse_attention_cuda.h is a plain C header).
#ifndef S4D_TRT_PLUGIN_CORE_H_
#define S4D_TRT_PLUGIN_CORE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace s4d {
namespace trt_plugin {

// Identity: must equal sdk.sparse.attention.ONNX_OP / PLUGIN_VERSION / ONNX_DOMAIN.
inline constexpr char kPluginName[] = "BlockSparseAttention";
inline constexpr char kPluginVersion[] = "1";
inline constexpr char kPluginNamespace[] = "s4d";

// Extra serialised field (opaque bytes): the versioned state blob, see serialize().
inline constexpr char kStateFieldName[] = "s4d_state";

inline constexpr int32_t kMaxScheduleLength = 64;
inline constexpr uint32_t kSerialFormatVersion = 1;
// Alignment of each array in the device CSR buffer.
inline constexpr size_t kDeviceAlignment = 256;

// Field value kinds (the plugin maps nvinfer1::PluginFieldType onto these).
enum class FieldKind : int32_t {
  kInt32 = 0,
  kInt64 = 1,
  kFloat32 = 2,
  kFloat64 = 3,
  kChar = 4,   // a string, `length` bytes, trailing NULs ignored
  kBytes = 5,  // opaque bytes (TensorRT's PluginFieldType::kUNKNOWN)
  kOther = 6,  // anything else: always rejected
};

// The phase a plugin is created in (mirrors nvinfer1::TensorRTPhase).
enum class Phase : int32_t { kBuild = 0, kRuntime = 1 };

// One attribute the creator advertises (getFieldNames) - exactly the ONNX node attributes of
// sdk.sparse.attention.onnx_node_attributes, in that order.
struct FieldSpec {
  const char* name;
  FieldKind kind;
  bool is_list;   // INTS attribute (schedule)
  bool required;  // plugin_version / plugin_namespace are optional (checked when given)
};
const std::vector<FieldSpec>& field_specs();

// A field as handed over by the caller (TensorRT's PluginField, translated).
struct RawField {
  const char* name;
  FieldKind kind;
  const void* data;
  int32_t length;  // number of elements (bytes for kChar / kBytes)
};

struct Attributes {
  int32_t num_frames = 0;
  int32_t tokens_per_frame = 0;
  int32_t block_size = 0;
  std::vector<int32_t> schedule;
  int32_t anchor = 1;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  float scale = 0.0f;

  // Derived sizes (meaningful once validate() succeeded).
  int64_t blocks_per_frame() const;  // tokens_per_frame / block_size
  int64_t num_query_blocks() const;  // num_frames * blocks_per_frame
  int64_t seq_len() const;           // num_frames * tokens_per_frame

  // Field-by-field equality (scale compared bit for bit).
  bool operator==(const Attributes& other) const;
  bool operator!=(const Attributes& other) const { return !(*this == other); }
};

// Human-readable one-liner, e.g. for log messages.
std::string describe(const Attributes& attrs);

// CSR lists: key blocks of query block r are indices[offsets[r] .. offsets[r+1]), ascending.
struct Csr {
  std::vector<int32_t> offsets;
  std::vector<int32_t> indices;
  int64_t rows() const { return offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1; }
  int64_t nnz() const { return static_cast<int64_t>(indices.size()); }
};

// Where the CSR lists sit in one device buffer: offsets at byte 0, indices at indices_offset;
// both kDeviceAlignment-aligned. total_bytes is what the plugin allocates.
struct CsrDeviceLayout {
  size_t offsets_bytes = 0;
  size_t indices_offset = 0;
  size_t indices_bytes = 0;
  size_t total_bytes = 0;
};

// ---- every function below returns true on success; on failure it returns false and, when
// ---- `error` is not null, stores a message naming the offending field / value.

// Value checks: num_frames >= 1; block_size and head_dim supported by the CUDA kernel (16, 32, 64, 128);
// tokens_per_frame a positive multiple of block_size; 1..kMaxScheduleLength strides, each >= 1;
// anchor 0 or 1; num_heads >= 1; scale finite; sizes within the kernel's int32 limits.
bool validate(const Attributes& attrs, std::string* error);

// Reads the attributes from a field list. Unknown names, duplicates, wrong kinds or lengths and
// missing required fields are errors. A kStateFieldName field (kBytes) is deserialised; named
// fields given next to it must agree with it. In Phase::kRuntime the state blob alone suffices
// (it is what getFieldsToSerialize writes, next to the named fields). Ends with validate();
// `value_error` (nullable) tells a failed value check (true) from a field-level problem (false).
bool parse_fields(const RawField* fields, int32_t count, Phase phase, Attributes* out, std::string* error,
                  bool* value_error = nullptr);

// The block-sparse pattern rule, identical to SparsePattern.kv_block_lists():
// query block (i, u) keeps key block (j, v) iff (anchor && j == 0) || (u % s == v % s),
// s = schedule[min(|i - j|, len - 1)]; block (frame f, spatial block b) has index f * G + b.
bool build_csr(int64_t num_frames, int64_t blocks_per_frame, const std::vector<int32_t>& schedule, bool anchor,
               Csr* out, std::string* error);
bool build_csr(const Attributes& attrs, Csr* out, std::string* error);

// 64-bit FNV-1a over the little-endian bytes of offsets then indices.
uint64_t csr_fingerprint(const Csr& csr);

// Versioned state blob (all integers little-endian):
//   0  char[4] magic "S4DA"
//   4  u32 format version (kSerialFormatVersion)
//   8  u32 total blob size in bytes
//   12 i32 num_frames, tokens_per_frame, block_size, anchor, num_heads, head_dim
//   36 u32 scale (IEEE-754 binary32 bits)
//   40 u32 schedule length L, then i32 schedule[L]
//   .. u32 num_query_blocks, u32 nnz, u64 csr_fingerprint   (the CSR the engine was built with)
//   .. u64 FNV-1a checksum of all preceding bytes
// deserialize() rejects a wrong magic / version / size / checksum, invalid attributes, and a
// CSR that no longer matches the recorded fingerprint (mask-rule drift between the library
// that built an engine and the one running it).
bool serialize(const Attributes& attrs, std::vector<uint8_t>* out, std::string* error);
bool deserialize(const void* data, size_t size, Attributes* out, std::string* error);

CsrDeviceLayout csr_device_layout(int64_t rows, int64_t nnz);
bool csr_device_layout(const Attributes& attrs, CsrDeviceLayout* out, std::string* error);

// I/O shapes: exactly 3 inputs q, k, v, each [B, H, N, D] with H == num_heads,
// N == num_frames * tokens_per_frame, D == head_dim, B >= 0, and k, v equal to q. With
// allow_wildcards a dimension of -1 (unknown at build time) is accepted. Also enforces the
// kernel's launch-grid limit B*H*num_query_blocks*(block_size/64) <= INT32_MAX when B is known.
bool check_shapes(const Attributes& attrs, int32_t nb_inputs, const int64_t* const* dims, const int32_t* nb_dims,
                  bool allow_wildcards, std::string* error);

// dtype codes are S4D_BSA_DTYPE_* of s4d/block_sparse_attention_cuda.h: fp16 (2) and bf16 (1)
// are supported; fp32 (0) is not (the CUDA kernel is fp16/bf16 only).
bool check_dtype(int32_t dtype, std::string* error);

}  // namespace trt_plugin
}  // namespace s4d

#endif  // S4D_TRT_PLUGIN_CORE_H_

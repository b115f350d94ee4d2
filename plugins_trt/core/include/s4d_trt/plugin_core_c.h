/*
 * C ABI over the TensorRT-independent plugin core (s4d_trt/plugin_core.h), for tests and tools
 * (tests/test_plugin_core.py loads it with ctypes). Built as libs4d_plugin_core_c.so.
 *
 * Conventions: functions return S4D_PLUGIN_OK (0) or a nonzero S4D_PLUGIN_ERR_* code; `err`
 * (nullable) receives a NUL-terminated message of at most err_cap bytes on failure and "" on
 * success. dtype codes are the kernel's S4D_BSA_DTYPE_* (0 = fp32, 1 = bf16, 2 = fp16); field
 * kinds are S4D_PLUGIN_FIELD_*.
 */
#ifndef S4D_TRT_PLUGIN_CORE_C_H_
#define S4D_TRT_PLUGIN_CORE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define S4D_PLUGIN_CORE_API __declspec(dllexport)
#else
#define S4D_PLUGIN_CORE_API __attribute__((visibility("default")))
#endif

#define S4D_PLUGIN_CORE_ABI_VERSION 1
#define S4D_PLUGIN_MAX_SCHEDULE 64

#define S4D_PLUGIN_OK 0
#define S4D_PLUGIN_ERR_INVALID 1  /* attribute values invalid */
#define S4D_PLUGIN_ERR_FIELD 2    /* unknown / missing / duplicate / mistyped field */
#define S4D_PLUGIN_ERR_SERIAL 3   /* serialised state rejected */
#define S4D_PLUGIN_ERR_SHAPE 4    /* input shapes rejected */
#define S4D_PLUGIN_ERR_DTYPE 5    /* dtype rejected */
#define S4D_PLUGIN_ERR_BUFFER 6   /* caller's buffer too small (required size reported) */
#define S4D_PLUGIN_ERR_NULL 7     /* a required pointer is NULL */

/* field kinds (= s4d::trt_plugin::FieldKind) */
#define S4D_PLUGIN_FIELD_INT32 0
#define S4D_PLUGIN_FIELD_INT64 1
#define S4D_PLUGIN_FIELD_FLOAT32 2
#define S4D_PLUGIN_FIELD_FLOAT64 3
#define S4D_PLUGIN_FIELD_CHAR 4
#define S4D_PLUGIN_FIELD_BYTES 5

typedef struct s4d_plugin_attrs {
  int32_t num_frames;
  int32_t tokens_per_frame;
  int32_t block_size;
  int32_t anchor;
  int32_t num_heads;
  int32_t head_dim;
  float scale;
  int32_t schedule_len;
  int32_t schedule[S4D_PLUGIN_MAX_SCHEDULE];
} s4d_plugin_attrs;

S4D_PLUGIN_CORE_API int s4d_plugin_core_abi_version(void);
S4D_PLUGIN_CORE_API int s4d_plugin_core_serial_format_version(void);
/* "BlockSparseAttention", "1", "s4d" and the state field name "s4d_state". */
S4D_PLUGIN_CORE_API const char* s4d_plugin_core_plugin_name(void);
S4D_PLUGIN_CORE_API const char* s4d_plugin_core_plugin_version(void);
S4D_PLUGIN_CORE_API const char* s4d_plugin_core_plugin_namespace(void);
S4D_PLUGIN_CORE_API const char* s4d_plugin_core_state_field_name(void);

/* The creator's field table (getFieldNames): name, kind, is-list, required. NULL / -1 when out of range. */
S4D_PLUGIN_CORE_API int s4d_plugin_core_field_count(void);
S4D_PLUGIN_CORE_API const char* s4d_plugin_core_field_name(int index);
S4D_PLUGIN_CORE_API int s4d_plugin_core_field_kind(int index);
S4D_PLUGIN_CORE_API int s4d_plugin_core_field_is_list(int index);
S4D_PLUGIN_CORE_API int s4d_plugin_core_field_required(int index);

/* Parse a field list (what createPlugin receives); phase 0 = build, 1 = runtime. */
S4D_PLUGIN_CORE_API int s4d_plugin_core_parse_fields(int32_t count, const char* const* names, const int32_t* kinds,
                                                     const void* const* data, const int32_t* lengths, int32_t phase,
                                                     s4d_plugin_attrs* out, char* err, size_t err_cap);

S4D_PLUGIN_CORE_API int s4d_plugin_core_validate(const s4d_plugin_attrs* attrs, char* err, size_t err_cap);

/* Number of query blocks (rows) and key-block entries (nnz) of the CSR lists. */
S4D_PLUGIN_CORE_API int s4d_plugin_core_csr_size(const s4d_plugin_attrs* attrs, int64_t* rows, int64_t* nnz,
                                                 char* err, size_t err_cap);
/* Fill offsets [rows + 1] and indices [nnz]; S4D_PLUGIN_ERR_BUFFER when a capacity is short. */
S4D_PLUGIN_CORE_API int s4d_plugin_core_build_csr(const s4d_plugin_attrs* attrs, int32_t* offsets,
                                                  int64_t offsets_cap, int32_t* indices, int64_t indices_cap,
                                                  char* err, size_t err_cap);

/* Serialise into buf (capacity cap); *size receives the blob size (also when buf is NULL or
 * too small, which returns S4D_PLUGIN_ERR_BUFFER - except buf == NULL, which is a size query). */
S4D_PLUGIN_CORE_API int s4d_plugin_core_serialize(const s4d_plugin_attrs* attrs, uint8_t* buf, size_t cap,
                                                  size_t* size, char* err, size_t err_cap);
S4D_PLUGIN_CORE_API int s4d_plugin_core_deserialize(const uint8_t* buf, size_t size, s4d_plugin_attrs* out,
                                                    char* err, size_t err_cap);
/* serialise -> deserialise -> compare; OK when the attributes come back identical. */
S4D_PLUGIN_CORE_API int s4d_plugin_core_roundtrip(const s4d_plugin_attrs* attrs, char* err, size_t err_cap);

/* Bytes of the device CSR buffer (-1 on error) and its layout. */
S4D_PLUGIN_CORE_API int64_t s4d_plugin_core_workspace_size(const s4d_plugin_attrs* attrs, char* err, size_t err_cap);
S4D_PLUGIN_CORE_API int s4d_plugin_core_csr_device_layout(const s4d_plugin_attrs* attrs, int64_t* offsets_bytes,
                                                          int64_t* indices_offset, int64_t* indices_bytes,
                                                          int64_t* total_bytes, char* err, size_t err_cap);

/* Shape rule check over nb_inputs inputs, dims[i] pointing at nb_dims[i] values (-1 = unknown,
 * accepted only with allow_wildcards != 0). */
S4D_PLUGIN_CORE_API int s4d_plugin_core_check_shapes(const s4d_plugin_attrs* attrs, int32_t nb_inputs,
                                                     const int64_t* const* dims, const int32_t* nb_dims,
                                                     int32_t allow_wildcards, char* err, size_t err_cap);
S4D_PLUGIN_CORE_API int s4d_plugin_core_check_dtype(int32_t dtype, char* err, size_t err_cap);

/* One-line description of the attributes (written to buf, truncated to cap). */
S4D_PLUGIN_CORE_API int s4d_plugin_core_describe(const s4d_plugin_attrs* attrs, char* buf, size_t cap);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* S4D_TRT_PLUGIN_CORE_C_H_ */

// C ABI over the plugin core (see s4d_trt/plugin_core_c.h).
#include "s4d_trt/plugin_core_c.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "s4d_trt/plugin_core.h"

namespace core = s4d::trt_plugin;

namespace {

void write_message(char* buf, size_t cap, const std::string& text) {
  if (buf == nullptr || cap == 0) return;
  const size_t n = std::min(cap - 1, text.size());
  std::memcpy(buf, text.data(), n);
  buf[n] = '\0';
}

int report(char* err, size_t cap, int code, const std::string& message) {
  write_message(err, cap, message);
  return code;
}

int ok(char* err, size_t cap) { return report(err, cap, S4D_PLUGIN_OK, ""); }

bool to_core(const s4d_plugin_attrs* in, core::Attributes* out, std::string* error) {
  if (in->schedule_len < 0 || in->schedule_len > S4D_PLUGIN_MAX_SCHEDULE) {
    *error = "schedule has " + std::to_string(in->schedule_len) + " strides; at most " +
             std::to_string(S4D_PLUGIN_MAX_SCHEDULE) + " are supported";
    return false;
  }
  out->num_frames = in->num_frames;
  out->tokens_per_frame = in->tokens_per_frame;
  out->block_size = in->block_size;
  out->anchor = in->anchor;
  out->num_heads = in->num_heads;
  out->head_dim = in->head_dim;
  out->scale = in->scale;
  out->schedule.assign(in->schedule, in->schedule + in->schedule_len);
  return true;
}

void from_core(const core::Attributes& in, s4d_plugin_attrs* out) {
  std::memset(out, 0, sizeof(*out));
  out->num_frames = in.num_frames;
  out->tokens_per_frame = in.tokens_per_frame;
  out->block_size = in.block_size;
  out->anchor = in.anchor;
  out->num_heads = in.num_heads;
  out->head_dim = in.head_dim;
  out->scale = in.scale;
  out->schedule_len = static_cast<int32_t>(in.schedule.size());
  std::copy(in.schedule.begin(), in.schedule.end(), out->schedule);
}

// Validated core attributes from the C struct, or an error code.
int load(const s4d_plugin_attrs* attrs, core::Attributes* out, char* err, size_t cap) {
  if (attrs == nullptr) return report(err, cap, S4D_PLUGIN_ERR_NULL, "attrs is NULL");
  std::string e;
  if (!to_core(attrs, out, &e) || !core::validate(*out, &e)) return report(err, cap, S4D_PLUGIN_ERR_INVALID, e);
  return S4D_PLUGIN_OK;
}

// The CSR key-block lists of validated attributes, or an error code.
int load_csr(const s4d_plugin_attrs* attrs, core::Csr* csr, char* err, size_t cap) {
  core::Attributes a;
  int rc = load(attrs, &a, err, cap);
  if (rc != S4D_PLUGIN_OK) return rc;
  std::string e;
  if (!core::build_csr(a, csr, &e)) return report(err, cap, S4D_PLUGIN_ERR_INVALID, e);
  return S4D_PLUGIN_OK;
}

const core::FieldSpec* spec_at(int index) {
  const auto& specs = core::field_specs();
  if (index < 0 || static_cast<size_t>(index) >= specs.size()) return nullptr;
  return &specs[static_cast<size_t>(index)];
}

template <typename F>
int guarded(char* err, size_t cap, F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return report(err, cap, S4D_PLUGIN_ERR_INVALID, std::string("internal error: ") + e.what());
  } catch (...) {
    return report(err, cap, S4D_PLUGIN_ERR_INVALID, "internal error");
  }
}

}  // namespace

extern "C" {

int s4d_plugin_core_abi_version(void) { return S4D_PLUGIN_CORE_ABI_VERSION; }
int s4d_plugin_core_serial_format_version(void) { return static_cast<int>(core::kSerialFormatVersion); }
const char* s4d_plugin_core_plugin_name(void) { return core::kPluginName; }
const char* s4d_plugin_core_plugin_version(void) { return core::kPluginVersion; }
const char* s4d_plugin_core_plugin_namespace(void) { return core::kPluginNamespace; }
const char* s4d_plugin_core_state_field_name(void) { return core::kStateFieldName; }

int s4d_plugin_core_field_count(void) { return static_cast<int>(core::field_specs().size()); }
const char* s4d_plugin_core_field_name(int index) {
  const core::FieldSpec* s = spec_at(index);
  return s ? s->name : nullptr;
}
int s4d_plugin_core_field_kind(int index) {
  const core::FieldSpec* s = spec_at(index);
  return s ? static_cast<int>(s->kind) : -1;
}
int s4d_plugin_core_field_is_list(int index) {
  const core::FieldSpec* s = spec_at(index);
  return s ? static_cast<int>(s->is_list) : -1;
}
int s4d_plugin_core_field_required(int index) {
  const core::FieldSpec* s = spec_at(index);
  return s ? static_cast<int>(s->required) : -1;
}

int s4d_plugin_core_parse_fields(int32_t count, const char* const* names, const int32_t* kinds,
                                 const void* const* data, const int32_t* lengths, int32_t phase,
                                 s4d_plugin_attrs* out, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    if (out == nullptr) return report(err, err_cap, S4D_PLUGIN_ERR_NULL, "out is NULL");
    if (count > 0 && (names == nullptr || kinds == nullptr || data == nullptr || lengths == nullptr))
      return report(err, err_cap, S4D_PLUGIN_ERR_NULL, "field arrays are NULL");
    std::vector<core::RawField> fields;
    for (int32_t i = 0; i < count; ++i) {
      const int32_t k = kinds[i];
      const core::FieldKind kind = (k >= 0 && k <= static_cast<int32_t>(core::FieldKind::kBytes))
                                       ? static_cast<core::FieldKind>(k)
                                       : core::FieldKind::kOther;
      fields.push_back(core::RawField{names[i], kind, data[i], lengths[i]});
    }
    core::Attributes attrs;
    std::string e;
    bool value_error = false;
    if (!core::parse_fields(fields.data(), count, phase == 1 ? core::Phase::kRuntime : core::Phase::kBuild, &attrs,
                            &e, &value_error))
      return report(err, err_cap, value_error ? S4D_PLUGIN_ERR_INVALID : S4D_PLUGIN_ERR_FIELD, e);
    from_core(attrs, out);
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_validate(const s4d_plugin_attrs* attrs, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Attributes a;
    const int rc = load(attrs, &a, err, err_cap);
    return rc != S4D_PLUGIN_OK ? rc : ok(err, err_cap);
  });
}

int s4d_plugin_core_csr_size(const s4d_plugin_attrs* attrs, int64_t* rows, int64_t* nnz, char* err,
                             size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Csr csr;
    int rc = load_csr(attrs, &csr, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    if (rows) *rows = csr.rows();
    if (nnz) *nnz = csr.nnz();
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_build_csr(const s4d_plugin_attrs* attrs, int32_t* offsets, int64_t offsets_cap,
                              int32_t* indices, int64_t indices_cap, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Csr csr;
    int rc = load_csr(attrs, &csr, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    if (offsets == nullptr || (csr.nnz() > 0 && indices == nullptr))
      return report(err, err_cap, S4D_PLUGIN_ERR_NULL, "offsets / indices buffer is NULL");
    if (offsets_cap < csr.rows() + 1 || indices_cap < csr.nnz())
      return report(err, err_cap, S4D_PLUGIN_ERR_BUFFER,
                    "buffers too small: need " + std::to_string(csr.rows() + 1) + " offsets and " +
                        std::to_string(csr.nnz()) + " indices");
    std::copy(csr.offsets.begin(), csr.offsets.end(), offsets);
    std::copy(csr.indices.begin(), csr.indices.end(), indices);
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_serialize(const s4d_plugin_attrs* attrs, uint8_t* buf, size_t cap, size_t* size, char* err,
                              size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Attributes a;
    int rc = load(attrs, &a, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    std::vector<uint8_t> blob;
    std::string e;
    if (!core::serialize(a, &blob, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_INVALID, e);
    if (size) *size = blob.size();
    if (buf == nullptr) return ok(err, err_cap);
    if (cap < blob.size())
      return report(err, err_cap, S4D_PLUGIN_ERR_BUFFER,
                    "buffer too small: need " + std::to_string(blob.size()) + " bytes");
    std::memcpy(buf, blob.data(), blob.size());
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_deserialize(const uint8_t* buf, size_t size, s4d_plugin_attrs* out, char* err,
                                size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    if (out == nullptr) return report(err, err_cap, S4D_PLUGIN_ERR_NULL, "out is NULL");
    core::Attributes a;
    std::string e;
    if (!core::deserialize(buf, size, &a, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_SERIAL, e);
    from_core(a, out);
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_roundtrip(const s4d_plugin_attrs* attrs, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Attributes a;
    int rc = load(attrs, &a, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    std::vector<uint8_t> blob;
    std::string e;
    if (!core::serialize(a, &blob, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_INVALID, e);
    core::Attributes back;
    if (!core::deserialize(blob.data(), blob.size(), &back, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_SERIAL, e);
    if (back != a)
      return report(err, err_cap, S4D_PLUGIN_ERR_SERIAL,
                    "round trip changed the attributes: " + core::describe(a) + " -> " + core::describe(back));
    return ok(err, err_cap);
  });
}

int64_t s4d_plugin_core_workspace_size(const s4d_plugin_attrs* attrs, char* err, size_t err_cap) {
  int64_t total = -1;
  const int rc = s4d_plugin_core_csr_device_layout(attrs, nullptr, nullptr, nullptr, &total, err, err_cap);
  return rc == S4D_PLUGIN_OK ? total : -1;
}

int s4d_plugin_core_csr_device_layout(const s4d_plugin_attrs* attrs, int64_t* offsets_bytes, int64_t* indices_offset,
                                      int64_t* indices_bytes, int64_t* total_bytes, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Attributes a;
    int rc = load(attrs, &a, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    core::CsrDeviceLayout layout;
    std::string e;
    if (!core::csr_device_layout(a, &layout, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_INVALID, e);
    if (offsets_bytes) *offsets_bytes = static_cast<int64_t>(layout.offsets_bytes);
    if (indices_offset) *indices_offset = static_cast<int64_t>(layout.indices_offset);
    if (indices_bytes) *indices_bytes = static_cast<int64_t>(layout.indices_bytes);
    if (total_bytes) *total_bytes = static_cast<int64_t>(layout.total_bytes);
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_check_shapes(const s4d_plugin_attrs* attrs, int32_t nb_inputs, const int64_t* const* dims,
                                 const int32_t* nb_dims, int32_t allow_wildcards, char* err, size_t err_cap) {
  return guarded(err, err_cap, [&]() {
    core::Attributes a;
    int rc = load(attrs, &a, err, err_cap);
    if (rc != S4D_PLUGIN_OK) return rc;
    std::string e;
    if (!core::check_shapes(a, nb_inputs, dims, nb_dims, allow_wildcards != 0, &e))
      return report(err, err_cap, S4D_PLUGIN_ERR_SHAPE, e);
    return ok(err, err_cap);
  });
}

int s4d_plugin_core_check_dtype(int32_t dtype, char* err, size_t err_cap) {
  std::string e;
  if (!core::check_dtype(dtype, &e)) return report(err, err_cap, S4D_PLUGIN_ERR_DTYPE, e);
  return ok(err, err_cap);
}

int s4d_plugin_core_describe(const s4d_plugin_attrs* attrs, char* buf, size_t cap) {
  return guarded(nullptr, 0, [&]() {
    if (attrs == nullptr) return static_cast<int>(S4D_PLUGIN_ERR_NULL);
    core::Attributes a;
    std::string e;
    if (!to_core(attrs, &a, &e)) {
      write_message(buf, cap, e);
      return static_cast<int>(S4D_PLUGIN_ERR_INVALID);
    }
    write_message(buf, cap, core::describe(a));
    return static_cast<int>(S4D_PLUGIN_OK);
  });
}

}  // extern "C"

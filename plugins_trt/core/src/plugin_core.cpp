// Sculpt4D BlockSparseAttention TensorRT plugin core (no TensorRT, no CUDA): see plugin_core.h.
#include "s4d_trt/plugin_core.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>

#include "s4d/block_sparse_attention_cuda.h"

namespace s4d {
namespace trt_plugin {
namespace {

constexpr char kMagic[4] = {'S', '4', 'D', 'A'};
constexpr size_t kHeaderBytes = 12;                 // magic, version, total size
constexpr size_t kFixedBytes = kHeaderBytes + 24 + 4 + 4;  // + six i32, scale, schedule length
constexpr size_t kTrailerBytes = 4 + 4 + 8 + 8;     // rows, nnz, fingerprint, checksum
// Largest query-block count whose dense pattern (rows^2 entries) still fits int32 CSR offsets.
constexpr int64_t kMaxQueryBlocks = 46340;

bool fail(std::string* error, const std::string& message) {
  if (error) *error = message;
  return false;
}

std::string join_schedule(const std::vector<int32_t>& schedule) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < schedule.size(); ++i) s << (i ? ", " : "") << schedule[i];
  s << ']';
  return s.str();
}

const char* kind_name(FieldKind kind) {
  switch (kind) {
    case FieldKind::kInt32: return "int32 (kINT32)";
    case FieldKind::kInt64: return "int64 (kINT64)";
    case FieldKind::kFloat32: return "float32 (kFLOAT32)";
    case FieldKind::kFloat64: return "float64 (kFLOAT64)";
    case FieldKind::kChar: return "string (kCHAR)";
    case FieldKind::kBytes: return "opaque bytes (kUNKNOWN)";
    default: return "an unsupported type";
  }
}

std::string accepted_names() {
  std::string names;
  for (const FieldSpec& spec : field_specs()) names += (names.empty() ? "" : ", ") + std::string(spec.name);
  return names + ", " + kStateFieldName;
}

std::string float_text(float value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(value));
  return buf;
}

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// ---- field readers -----------------------------------------------------------------------

bool check_present(const RawField& f, std::string* error) {
  if (f.length < 0) return fail(error, "field '" + std::string(f.name) + "' has a negative length");
  if (f.length > 0 && f.data == nullptr)
    return fail(error, "field '" + std::string(f.name) + "' has no data (null pointer)");
  return true;
}

bool read_ints(const RawField& f, std::vector<int64_t>* values, std::string* error) {
  if (f.kind != FieldKind::kInt32 && f.kind != FieldKind::kInt64)
    return fail(error, "field '" + std::string(f.name) + "' must be an integer (kINT32), got " + kind_name(f.kind));
  if (!check_present(f, error)) return false;
  values->clear();
  for (int32_t i = 0; i < f.length; ++i) {
    int64_t v;
    if (f.kind == FieldKind::kInt32) {
      int32_t x;
      std::memcpy(&x, static_cast<const char*>(f.data) + 4 * static_cast<size_t>(i), 4);
      v = x;
    } else {
      std::memcpy(&v, static_cast<const char*>(f.data) + 8 * static_cast<size_t>(i), 8);
    }
    values->push_back(v);
  }
  return true;
}

bool read_int_scalar(const RawField& f, int32_t* value, std::string* error) {
  std::vector<int64_t> values;
  if (!read_ints(f, &values, error)) return false;
  if (values.size() != 1)
    return fail(error, "field '" + std::string(f.name) + "' must hold exactly 1 value, got " +
                           std::to_string(values.size()));
  if (values[0] < std::numeric_limits<int32_t>::min() || values[0] > std::numeric_limits<int32_t>::max())
    return fail(error, "field '" + std::string(f.name) + "' = " + std::to_string(values[0]) +
                           " is out of the int32 range");
  *value = static_cast<int32_t>(values[0]);
  return true;
}

bool read_schedule(const RawField& f, std::vector<int32_t>* schedule, std::string* error) {
  std::vector<int64_t> values;
  if (!read_ints(f, &values, error)) return false;
  schedule->clear();
  for (int64_t v : values) {
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      return fail(error, "field 'schedule' entry " + std::to_string(v) + " is out of the int32 range");
    schedule->push_back(static_cast<int32_t>(v));
  }
  return true;
}

bool read_float_scalar(const RawField& f, float* value, std::string* error) {
  if (f.kind != FieldKind::kFloat32 && f.kind != FieldKind::kFloat64)
    return fail(error, "field '" + std::string(f.name) + "' must be a float (kFLOAT32), got " + kind_name(f.kind));
  if (!check_present(f, error)) return false;
  if (f.length != 1)
    return fail(error, "field '" + std::string(f.name) + "' must hold exactly 1 value, got " +
                           std::to_string(f.length));
  if (f.kind == FieldKind::kFloat32) {
    std::memcpy(value, f.data, 4);
  } else {
    double d;
    std::memcpy(&d, f.data, 8);
    *value = static_cast<float>(d);
  }
  return true;
}

bool read_string(const RawField& f, std::string* value, std::string* error) {
  if (f.kind != FieldKind::kChar)
    return fail(error, "field '" + std::string(f.name) + "' must be a string (kCHAR), got " + kind_name(f.kind));
  if (!check_present(f, error)) return false;
  value->assign(static_cast<const char*>(f.data), static_cast<size_t>(f.length));
  while (!value->empty() && value->back() == '\0') value->pop_back();
  return true;
}

// ---- little-endian byte buffer -------------------------------------------------------------

void put_u32(std::vector<uint8_t>* b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_i32(std::vector<uint8_t>* b, int32_t v) { put_u32(b, static_cast<uint32_t>(v)); }
void put_u64(std::vector<uint8_t>* b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
int32_t get_i32(const uint8_t* p) { return static_cast<int32_t>(get_u32(p)); }
uint64_t get_u64(const uint8_t* p) {
  return static_cast<uint64_t>(get_u32(p)) | (static_cast<uint64_t>(get_u32(p + 4)) << 32);
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t fnv1a(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

uint64_t fnv1a_i32(uint64_t h, const std::vector<int32_t>& values) {
  for (int32_t v : values) {
    const uint32_t u = static_cast<uint32_t>(v);
    const uint8_t bytes[4] = {static_cast<uint8_t>(u), static_cast<uint8_t>(u >> 8), static_cast<uint8_t>(u >> 16),
                              static_cast<uint8_t>(u >> 24)};
    h = fnv1a(h, bytes, 4);
  }
  return h;
}

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Names of the fields whose values differ between a and b.
std::string differing_fields(const Attributes& a, const Attributes& b) {
  std::string names;
  auto add = [&names](const char* n) { names += (names.empty() ? "" : ", ") + std::string(n); };
  if (a.num_frames != b.num_frames) add("num_frames");
  if (a.tokens_per_frame != b.tokens_per_frame) add("tokens_per_frame");
  if (a.block_size != b.block_size) add("block_size");
  if (a.schedule != b.schedule) add("schedule");
  if (a.anchor != b.anchor) add("anchor");
  if (a.num_heads != b.num_heads) add("num_heads");
  if (a.head_dim != b.head_dim) add("head_dim");
  if (float_bits(a.scale) != float_bits(b.scale)) add("scale");
  return names;
}

// The kernel's compiled sizes have one home, the CUDA kernel's C header.
bool kernel_size_supported(int32_t value) { return s4d_bsa_cuda_size_supported(value) != 0; }

}  // namespace

// ---- attributes ------------------------------------------------------------------------------

const std::vector<FieldSpec>& field_specs() {
  static const std::vector<FieldSpec> specs = {
      {"num_frames", FieldKind::kInt32, false, true},
      {"tokens_per_frame", FieldKind::kInt32, false, true},
      {"block_size", FieldKind::kInt32, false, true},
      {"schedule", FieldKind::kInt32, true, true},
      {"anchor", FieldKind::kInt32, false, true},
      {"num_heads", FieldKind::kInt32, false, true},
      {"head_dim", FieldKind::kInt32, false, true},
      {"scale", FieldKind::kFloat32, false, true},
      {"plugin_version", FieldKind::kChar, false, false},
      {"plugin_namespace", FieldKind::kChar, false, false},
  };
  return specs;
}

int64_t Attributes::blocks_per_frame() const { return block_size > 0 ? tokens_per_frame / block_size : 0; }
int64_t Attributes::num_query_blocks() const { return static_cast<int64_t>(num_frames) * blocks_per_frame(); }
int64_t Attributes::seq_len() const { return static_cast<int64_t>(num_frames) * tokens_per_frame; }

bool Attributes::operator==(const Attributes& o) const { return differing_fields(*this, o).empty(); }

std::string describe(const Attributes& a) {
  std::ostringstream s;
  s << kPluginNamespace << "::" << kPluginName << "(num_frames=" << a.num_frames
    << ", tokens_per_frame=" << a.tokens_per_frame << ", block_size=" << a.block_size
    << ", schedule=" << join_schedule(a.schedule) << ", anchor=" << a.anchor << ", num_heads=" << a.num_heads
    << ", head_dim=" << a.head_dim << ", scale=" << float_text(a.scale) << ")";
  return s.str();
}

bool validate(const Attributes& a, std::string* error) {
  if (a.num_frames < 1) return fail(error, "num_frames must be >= 1, got " + std::to_string(a.num_frames));
  if (!kernel_size_supported(a.block_size))
    return fail(error, "block_size " + std::to_string(a.block_size) +
                           " is not supported by the CUDA kernel (supported: " S4D_BSA_CUDA_SIZES_TEXT ")");
  if (a.tokens_per_frame < 1 || a.tokens_per_frame % a.block_size != 0)
    return fail(error, "tokens_per_frame (" + std::to_string(a.tokens_per_frame) +
                           ") must be a positive multiple of block_size (" + std::to_string(a.block_size) + ")");
  if (a.schedule.empty()) return fail(error, "schedule must contain at least one stride");
  if (a.schedule.size() > static_cast<size_t>(kMaxScheduleLength))
    return fail(error, "schedule has " + std::to_string(a.schedule.size()) + " strides; at most " +
                           std::to_string(kMaxScheduleLength) + " are supported");
  for (size_t i = 0; i < a.schedule.size(); ++i)
    if (a.schedule[i] <= 0)
      return fail(error, "schedule strides must be positive integers, got " + join_schedule(a.schedule) +
                             " (entry " + std::to_string(i) + " is " + std::to_string(a.schedule[i]) + ")");
  if (a.anchor != 0 && a.anchor != 1) return fail(error, "anchor must be 0 or 1, got " + std::to_string(a.anchor));
  if (a.num_heads < 1) return fail(error, "num_heads must be >= 1, got " + std::to_string(a.num_heads));
  if (!kernel_size_supported(a.head_dim))
    return fail(error, "head_dim " + std::to_string(a.head_dim) +
                           " is not supported by the CUDA kernel (supported: " S4D_BSA_CUDA_SIZES_TEXT ")");
  if (!std::isfinite(a.scale)) return fail(error, "scale must be finite, got " + float_text(a.scale));
  if (a.seq_len() > std::numeric_limits<int32_t>::max())
    return fail(error, "num_frames (" + std::to_string(a.num_frames) + ") x tokens_per_frame (" +
                           std::to_string(a.tokens_per_frame) + ") = " + std::to_string(a.seq_len()) +
                           " tokens exceeds the int32 range");
  if (a.num_query_blocks() > kMaxQueryBlocks)
    return fail(error, "the pattern has " + std::to_string(a.num_query_blocks()) + " query blocks; at most " +
                           std::to_string(kMaxQueryBlocks) + " are supported (int32 CSR offsets)");
  return true;
}

bool parse_fields(const RawField* fields, int32_t count, Phase phase, Attributes* out, std::string* error,
                  bool* value_error) {
  if (value_error) *value_error = false;
  if (out == nullptr) return fail(error, "no output attributes given");
  if (count < 0 || (count > 0 && fields == nullptr)) return fail(error, "the field collection is null");
  const std::vector<FieldSpec>& specs = field_specs();
  std::vector<bool> seen(specs.size(), false);
  Attributes named;
  bool have_state = false;
  Attributes state;

  for (int32_t i = 0; i < count; ++i) {
    const RawField& f = fields[i];
    if (f.name == nullptr) return fail(error, "field #" + std::to_string(i) + " has no name");
    const std::string name = f.name;
    if (name == kStateFieldName) {
      if (have_state) return fail(error, "duplicate field '" + name + "'");
      if (f.kind != FieldKind::kBytes)
        return fail(error, "field '" + name + "' must be opaque bytes (kUNKNOWN), got " + kind_name(f.kind));
      if (!check_present(f, error)) return false;
      std::string e;
      if (!deserialize(f.data, static_cast<size_t>(f.length), &state, &e))
        return fail(error, "field '" + name + "': " + e);
      have_state = true;
      continue;
    }
    size_t k = 0;
    while (k < specs.size() && name != specs[k].name) ++k;
    if (k == specs.size())
      return fail(error, "unknown field '" + name + "' (" + kPluginName + " accepts: " + accepted_names() + ")");
    if (seen[k]) return fail(error, "duplicate field '" + name + "'");
    seen[k] = true;

    bool ok = true;
    if (name == "num_frames") ok = read_int_scalar(f, &named.num_frames, error);
    else if (name == "tokens_per_frame") ok = read_int_scalar(f, &named.tokens_per_frame, error);
    else if (name == "block_size") ok = read_int_scalar(f, &named.block_size, error);
    else if (name == "schedule") ok = read_schedule(f, &named.schedule, error);
    else if (name == "anchor") ok = read_int_scalar(f, &named.anchor, error);
    else if (name == "num_heads") ok = read_int_scalar(f, &named.num_heads, error);
    else if (name == "head_dim") ok = read_int_scalar(f, &named.head_dim, error);
    else if (name == "scale") ok = read_float_scalar(f, &named.scale, error);
    else {
      std::string text;
      ok = read_string(f, &text, error);
      const char* expected = name == "plugin_version" ? kPluginVersion : kPluginNamespace;
      if (ok && text != expected)
        return fail(error, "field '" + name + "' is \"" + text + "\" but this plugin is " + kPluginNamespace +
                               "::" + kPluginName + " version " + kPluginVersion + " (expected \"" + expected + "\")");
    }
    if (!ok) return false;
  }

  std::string missing;
  for (size_t k = 0; k < specs.size(); ++k)
    if (specs[k].required && !seen[k]) missing += (missing.empty() ? "" : ", ") + std::string(specs[k].name);

  Attributes result;
  if (have_state) {
    // Named fields next to the state blob must agree with it.
    Attributes merged = state;
    for (size_t k = 0; k < specs.size(); ++k) {
      if (!seen[k] || !specs[k].required) continue;
      const std::string n = specs[k].name;
      if (n == "num_frames") merged.num_frames = named.num_frames;
      else if (n == "tokens_per_frame") merged.tokens_per_frame = named.tokens_per_frame;
      else if (n == "block_size") merged.block_size = named.block_size;
      else if (n == "schedule") merged.schedule = named.schedule;
      else if (n == "anchor") merged.anchor = named.anchor;
      else if (n == "num_heads") merged.num_heads = named.num_heads;
      else if (n == "head_dim") merged.head_dim = named.head_dim;
      else if (n == "scale") merged.scale = named.scale;
    }
    const std::string diff = differing_fields(merged, state);
    if (!diff.empty())
      return fail(error, "field(s) " + diff + " disagree with the serialised state '" + kStateFieldName + "' (" +
                             describe(state) + ")");
    result = state;
  } else {
    if (!missing.empty())
      return fail(error, "missing required field(s): " + missing +
                             (phase == Phase::kRuntime ? std::string(" (and no '") + kStateFieldName + "' field)"
                                                       : std::string()));
    result = named;
  }
  std::string e;
  if (!validate(result, &e)) {
    if (value_error) *value_error = true;
    return fail(error, e);
  }
  *out = result;
  return true;
}

// ---- CSR ---------------------------------------------------------------------------------------

bool build_csr(int64_t num_frames, int64_t blocks_per_frame, const std::vector<int32_t>& schedule, bool anchor,
               Csr* out, std::string* error) {
  if (out == nullptr) return fail(error, "no output CSR given");
  if (num_frames < 1) return fail(error, "num_frames must be >= 1, got " + std::to_string(num_frames));
  if (blocks_per_frame < 1)
    return fail(error, "blocks_per_frame must be >= 1, got " + std::to_string(blocks_per_frame));
  if (schedule.empty()) return fail(error, "schedule must contain at least one stride");
  for (int32_t s : schedule)
    if (s <= 0) return fail(error, "schedule strides must be positive integers, got " + join_schedule(schedule));
  if (num_frames > kMaxQueryBlocks || blocks_per_frame > kMaxQueryBlocks ||
      num_frames * blocks_per_frame > kMaxQueryBlocks)
    return fail(error, "the pattern has too many query blocks (at most " + std::to_string(kMaxQueryBlocks) + ")");

  const int64_t T = num_frames, G = blocks_per_frame, R = T * G;
  const int64_t last = static_cast<int64_t>(schedule.size()) - 1;
  Csr csr;
  csr.offsets.assign(static_cast<size_t>(R + 1), 0);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t u = 0; u < G; ++u) {
      for (int64_t j = 0; j < T; ++j) {  // key frames ascending, spatial blocks ascending: sorted rows
        const int64_t base = j * G;
        if (anchor && j == 0) {
          for (int64_t v = 0; v < G; ++v) csr.indices.push_back(static_cast<int32_t>(base + v));
        } else {
          const int64_t distance = i > j ? i - j : j - i;
          const int64_t s = schedule[static_cast<size_t>(distance < last ? distance : last)];
          for (int64_t v = u % s; v < G; v += s) csr.indices.push_back(static_cast<int32_t>(base + v));
        }
      }
      csr.offsets[static_cast<size_t>(i * G + u + 1)] = static_cast<int32_t>(csr.indices.size());
    }
  }
  *out = std::move(csr);
  return true;
}

bool build_csr(const Attributes& a, Csr* out, std::string* error) {
  std::string e;
  if (!validate(a, &e)) return fail(error, e);
  return build_csr(a.num_frames, a.blocks_per_frame(), a.schedule, a.anchor != 0, out, error);
}

uint64_t csr_fingerprint(const Csr& csr) { return fnv1a_i32(fnv1a_i32(kFnvBasis, csr.offsets), csr.indices); }

// ---- serialisation -----------------------------------------------------------------------------

bool serialize(const Attributes& a, std::vector<uint8_t>* out, std::string* error) {
  if (out == nullptr) return fail(error, "no output buffer given");
  Csr csr;
  if (!build_csr(a, &csr, error)) return false;
  std::vector<uint8_t> b;
  b.insert(b.end(), kMagic, kMagic + 4);
  put_u32(&b, kSerialFormatVersion);
  put_u32(&b, 0);  // total size, patched below
  put_i32(&b, a.num_frames);
  put_i32(&b, a.tokens_per_frame);
  put_i32(&b, a.block_size);
  put_i32(&b, a.anchor);
  put_i32(&b, a.num_heads);
  put_i32(&b, a.head_dim);
  put_u32(&b, float_bits(a.scale));
  put_u32(&b, static_cast<uint32_t>(a.schedule.size()));
  for (int32_t s : a.schedule) put_i32(&b, s);
  put_u32(&b, static_cast<uint32_t>(csr.rows()));
  put_u32(&b, static_cast<uint32_t>(csr.nnz()));
  put_u64(&b, csr_fingerprint(csr));
  const uint32_t total = static_cast<uint32_t>(b.size() + 8);
  for (int i = 0; i < 4; ++i) b[8 + i] = static_cast<uint8_t>(total >> (8 * i));
  put_u64(&b, fnv1a(kFnvBasis, b.data(), b.size()));
  *out = std::move(b);
  return true;
}

bool deserialize(const void* data, size_t size, Attributes* out, std::string* error) {
  if (out == nullptr) return fail(error, "no output attributes given");
  if (data == nullptr && size > 0) return fail(error, "serialised state is a null pointer");
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const std::string where = "serialised " + std::string(kPluginName) + " state";
  if (size < kHeaderBytes)
    return fail(error, where + " is truncated: " + std::to_string(size) + " bytes, the header alone is " +
                           std::to_string(kHeaderBytes));
  if (std::memcmp(p, kMagic, 4) != 0) return fail(error, where + " has a bad magic tag (expected \"S4DA\")");
  const uint32_t version = get_u32(p + 4);
  if (version != kSerialFormatVersion)
    return fail(error, where + " has format version " + std::to_string(version) + "; this plugin reads version " +
                           std::to_string(kSerialFormatVersion) + " (rebuild the engine with this plugin library)");
  const uint32_t total = get_u32(p + 8);
  if (size < total)
    return fail(error, where + " is truncated: " + std::to_string(size) + " of " + std::to_string(total) + " bytes");
  if (size > total)
    return fail(error, where + " has " + std::to_string(size) + " bytes but its header says " +
                           std::to_string(total));
  if (size < kFixedBytes + kTrailerBytes)
    return fail(error, where + " is truncated: " + std::to_string(size) + " bytes, at least " +
                           std::to_string(kFixedBytes + kTrailerBytes) + " expected");
  const uint64_t stored_sum = get_u64(p + size - 8);
  if (fnv1a(kFnvBasis, p, size - 8) != stored_sum)
    return fail(error, where + " fails its checksum (the engine file is corrupt)");

  Attributes a;
  a.num_frames = get_i32(p + 12);
  a.tokens_per_frame = get_i32(p + 16);
  a.block_size = get_i32(p + 20);
  a.anchor = get_i32(p + 24);
  a.num_heads = get_i32(p + 28);
  a.head_dim = get_i32(p + 32);
  a.scale = bits_float(get_u32(p + 36));
  const uint32_t length = get_u32(p + 40);
  if (length > static_cast<uint32_t>(kMaxScheduleLength) ||
      kFixedBytes + 4 * static_cast<size_t>(length) + kTrailerBytes != size)
    return fail(error, where + " has an inconsistent schedule length (" + std::to_string(length) + ")");
  for (uint32_t i = 0; i < length; ++i) a.schedule.push_back(get_i32(p + kFixedBytes + 4 * i));
  const uint8_t* tail = p + kFixedBytes + 4 * static_cast<size_t>(length);
  const uint32_t rows = get_u32(tail), nnz = get_u32(tail + 4);
  const uint64_t fingerprint = get_u64(tail + 8);

  std::string e;
  if (!validate(a, &e)) return fail(error, where + " holds invalid attributes: " + e);
  Csr csr;
  if (!build_csr(a, &csr, &e)) return fail(error, where + ": " + e);
  if (static_cast<uint64_t>(csr.rows()) != rows || static_cast<uint64_t>(csr.nnz()) != nnz ||
      csr_fingerprint(csr) != fingerprint)
    return fail(error, where + ": the block-sparse lists rebuilt by this library (" + std::to_string(csr.rows()) +
                           " rows, " + std::to_string(csr.nnz()) + " entries) differ from those the engine was built "
                           "with (" + std::to_string(rows) + " rows, " + std::to_string(nnz) +
                           " entries): the mask rule changed between plugin versions; rebuild the engine");
  *out = std::move(a);
  return true;
}

// ---- device layout -----------------------------------------------------------------------------

CsrDeviceLayout csr_device_layout(int64_t rows, int64_t nnz) {
  CsrDeviceLayout layout;
  layout.offsets_bytes = static_cast<size_t>(rows + 1) * sizeof(int32_t);
  layout.indices_offset = align_up(layout.offsets_bytes, kDeviceAlignment);
  layout.indices_bytes = static_cast<size_t>(nnz) * sizeof(int32_t);
  layout.total_bytes = align_up(layout.indices_offset + layout.indices_bytes, kDeviceAlignment);
  return layout;
}

bool csr_device_layout(const Attributes& a, CsrDeviceLayout* out, std::string* error) {
  if (out == nullptr) return fail(error, "no output layout given");
  Csr csr;
  if (!build_csr(a, &csr, error)) return false;
  *out = csr_device_layout(csr.rows(), csr.nnz());
  return true;
}

// ---- shapes and dtypes -------------------------------------------------------------------------

bool check_shapes(const Attributes& a, int32_t nb_inputs, const int64_t* const* dims, const int32_t* nb_dims,
                  bool allow_wildcards, std::string* error) {
  static const char* const kInputs[3] = {"q", "k", "v"};
  static const char* const kAxes[4] = {"B", "H", "N", "D"};
  std::string e;
  if (!validate(a, &e)) return fail(error, e);
  if (nb_inputs != 3)
    return fail(error, std::string(kPluginName) + " takes 3 inputs (q, k, v), got " + std::to_string(nb_inputs));
  if (dims == nullptr || nb_dims == nullptr) return fail(error, "no input shapes given");
  const int64_t expected[4] = {-1, a.num_heads, a.seq_len(), a.head_dim};
  for (int32_t t = 0; t < 3; ++t) {
    const std::string input = "input " + std::to_string(t) + " (" + kInputs[t] + ")";
    if (nb_dims[t] != 4)
      return fail(error, input + " must be 4-D [B, H, N, D], got " + std::to_string(nb_dims[t]) + " dimensions");
    if (dims[t] == nullptr) return fail(error, input + " has no dimensions");
    for (int32_t d = 0; d < 4; ++d) {
      const int64_t value = dims[t][d];
      const std::string axis = input + " dimension " + std::to_string(d) + " (" + kAxes[d] + ")";
      if (value == -1 && allow_wildcards) continue;
      if (value < 0) return fail(error, axis + " must be known and >= 0, got " + std::to_string(value));
      if (d == 0) continue;
      if (value != expected[d]) {
        std::string why = d == 1 ? "num_heads = " + std::to_string(a.num_heads)
                         : d == 2 ? "num_frames (" + std::to_string(a.num_frames) + ") x tokens_per_frame (" +
                                        std::to_string(a.tokens_per_frame) + ") = " + std::to_string(a.seq_len())
                                  : "head_dim = " + std::to_string(a.head_dim);
        return fail(error, axis + " is " + std::to_string(value) + " but the plugin expects " + why);
      }
    }
    if (t > 0) {
      for (int32_t d = 0; d < 4; ++d) {
        const int64_t x = dims[0][d], y = dims[t][d];
        if (x >= 0 && y >= 0 && x != y)
          return fail(error, input + " dimension " + std::to_string(d) + " (" + kAxes[d] + ") is " +
                                 std::to_string(y) + " but q has " + std::to_string(x) +
                                 " (q, k and v must have the same shape)");
      }
    }
  }
  const int64_t batch = dims[0][0];
  if (batch > 0) {
    // the kernel launches one CTA per (batch, head, query block)
    const int64_t blocks = a.num_query_blocks();
    if (batch > std::numeric_limits<int32_t>::max() / (static_cast<int64_t>(a.num_heads) * blocks))
      return fail(error, "B (" + std::to_string(batch) + ") x H (" + std::to_string(a.num_heads) + ") x " +
                             std::to_string(blocks) + " query blocks exceeds the CUDA kernel's launch-grid limit");
  }
  return true;
}

bool check_dtype(int32_t dtype, std::string* error) {
  if (dtype == S4D_BSA_DTYPE_F16 || dtype == S4D_BSA_DTYPE_BF16) return true;
  if (dtype == S4D_BSA_DTYPE_F32)
    return fail(error, "float32 inputs are not supported: the CUDA kernel takes float16 or bfloat16 "
                       "(export the ONNX graph with --dtype fp16)");
  return fail(error, "unsupported dtype code " + std::to_string(dtype) + " (expected " +
                         std::to_string(S4D_BSA_DTYPE_F16) + " = float16 or " + std::to_string(S4D_BSA_DTYPE_BF16) +
                         " = bfloat16)");
}

}  // namespace trt_plugin
}  // namespace s4d

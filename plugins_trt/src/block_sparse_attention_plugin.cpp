// Sculpt4D BlockSparseAttention TensorRT plugin (IPluginV3), see block_sparse_attention_plugin.h.
//
// CSR upload strategy: the lists are immutable per plugin (they depend only on the attributes),
// so each plugin object owns ONE device buffer (offsets, then indices at a 256-byte aligned
// offset; size from core::csr_device_layout) that is filled once and reused by every enqueue:
//   * onShapeChange() uploads it (synchronous cudaMemcpy) when a CUDA device is present - this
//     runs before the first enqueue of an execution context, outside the timed/captured path;
//   * enqueue() uploads it lazily (cudaMemcpyAsync on the enqueue stream) only if that did not
//     happen, e.g. a TensorRT-RTX CPU-only ahead-of-time build never had a device to upload to.
// attachToContext() clones, so every execution context has its own buffer; the destructor
// frees it. getWorkspaceSize() is therefore 0 and enqueue copies nothing per call.
#include "block_sparse_attention_plugin.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "s4d/block_sparse_attention_cuda.h"

namespace s4d {
namespace trt_plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::ILogger;
using nvinfer1::PluginFieldType;

// ---- logging through TensorRT's logger (setLoggerFinder) -------------------------------------

class LoggerFinderHolder {
 public:
  void set(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(mMutex);
    if (mFinder == nullptr && finder != nullptr) mFinder = finder;
  }
  ILogger* logger() {
    std::lock_guard<std::mutex> lock(mMutex);
    return mFinder != nullptr ? mFinder->findLogger() : nullptr;
  }

 private:
  std::mutex mMutex;
  nvinfer1::ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder& loggerHolder() {
  static LoggerFinderHolder holder;
  return holder;
}

void logMessage(ILogger::Severity severity, const std::string& message) noexcept {
  try {
    const std::string text = std::string("[") + kPluginNamespace + "::" + kPluginName + "] " + message;
    ILogger* logger = loggerHolder().logger();
    if (logger != nullptr) {
      logger->log(severity, text.c_str());
    } else if (severity == ILogger::Severity::kINTERNAL_ERROR || severity == ILogger::Severity::kERROR ||
               severity == ILogger::Severity::kWARNING) {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
  } catch (...) {
  }
}

void logError(const std::string& message) noexcept { logMessage(ILogger::Severity::kERROR, message); }

// ---- type mapping --------------------------------------------------------------------------------

// TensorRT data type -> the kernel's dtype code (S4D_BSA_DTYPE_*), -1 if it has none.
int32_t kernelDtype(DataType type) {
  switch (type) {
    case DataType::kHALF: return S4D_BSA_DTYPE_F16;
    case DataType::kBF16: return S4D_BSA_DTYPE_BF16;
    case DataType::kFLOAT: return S4D_BSA_DTYPE_F32;
    default: return -1;
  }
}

bool isSupportedType(DataType type) { return check_dtype(kernelDtype(type), nullptr); }

// TensorRT PluginField type -> core field kind. The ONNX parser hands INT / INTS attributes
// over as kINT32, FLOAT as kFLOAT32 and STRING as kCHAR; kUNKNOWN carries the state blob.
FieldKind fieldKind(PluginFieldType type) {
  switch (type) {
    case PluginFieldType::kINT32: return FieldKind::kInt32;
    case PluginFieldType::kFLOAT32: return FieldKind::kFloat32;
    case PluginFieldType::kFLOAT64: return FieldKind::kFloat64;
    case PluginFieldType::kCHAR: return FieldKind::kChar;
    case PluginFieldType::kUNKNOWN: return FieldKind::kBytes;
    default: return FieldKind::kOther;
  }
}

PluginFieldType pluginFieldType(FieldKind kind) {
  switch (kind) {
    case FieldKind::kInt32: return PluginFieldType::kINT32;
    case FieldKind::kFloat32: return PluginFieldType::kFLOAT32;
    case FieldKind::kFloat64: return PluginFieldType::kFLOAT64;
    case FieldKind::kChar: return PluginFieldType::kCHAR;
    default: return PluginFieldType::kUNKNOWN;
  }
}

bool cudaDevicePresent() noexcept {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

}  // namespace

// ================================================================================================
// BlockSparseAttentionPlugin
// ================================================================================================

BlockSparseAttentionPlugin::BlockSparseAttentionPlugin(std::string layer_name, Attributes attrs,
                                                       std::shared_ptr<const Csr> csr)
    : mLayerName(std::move(layer_name)), mAttrs(std::move(attrs)), mCsr(std::move(csr)) {
  std::string error;
  if (!validate(mAttrs, &error)) throw std::runtime_error(error);
  if (!mCsr) {
    auto built = std::make_shared<Csr>();
    if (!build_csr(mAttrs, built.get(), &error)) throw std::runtime_error(error);
    // What an engine bakes in must also pass the kernel's own host-side CSR validation.
    const int rc = s4d_bsa_check_args_cuda(mAttrs.num_heads, mAttrs.seq_len(), mAttrs.head_dim, mAttrs.block_size,
                                           built->rows(), mAttrs.scale, S4D_BSA_DTYPE_F16, built->offsets.data(),
                                           built->indices.data(), built->nnz());
    if (rc != S4D_BSA_OK)
      throw std::runtime_error(std::string("the CUDA kernel rejects the CSR lists: ") + s4d_bsa_cuda_last_error());
    mCsr = std::move(built);
  }
  mLayout = csr_device_layout(mCsr->rows(), mCsr->nnz());
  if (!serialize(mAttrs, &mStateBlob, &error)) throw std::runtime_error(error);
  initFieldsToSerialize();
}

BlockSparseAttentionPlugin::~BlockSparseAttentionPlugin() { releaseDeviceCsr(); }

void BlockSparseAttentionPlugin::releaseDeviceCsr() noexcept {
  if (mDeviceCsr != nullptr) {
    // May fail harmlessly at process teardown (context already destroyed).
    (void)cudaFree(mDeviceCsr);
    (void)cudaGetLastError();
    mDeviceCsr = nullptr;
    mDeviceOrdinal = -1;
  }
}

void BlockSparseAttentionPlugin::initFieldsToSerialize() {
  // Same names and types as the ONNX node attributes (so kRUNTIME creation goes through the
  // same parser), plus the versioned, checksummed state blob that parse_fields() verifies.
  mSerialFields.clear();
  mSerialFields.emplace_back("num_frames", &mAttrs.num_frames, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("tokens_per_frame", &mAttrs.tokens_per_frame, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("block_size", &mAttrs.block_size, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("schedule", mAttrs.schedule.data(), PluginFieldType::kINT32,
                             static_cast<int32_t>(mAttrs.schedule.size()));
  mSerialFields.emplace_back("anchor", &mAttrs.anchor, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("num_heads", &mAttrs.num_heads, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("head_dim", &mAttrs.head_dim, PluginFieldType::kINT32, 1);
  mSerialFields.emplace_back("scale", &mAttrs.scale, PluginFieldType::kFLOAT32, 1);
  mSerialFields.emplace_back(kStateFieldName, mStateBlob.data(), PluginFieldType::kUNKNOWN,
                             static_cast<int32_t>(mStateBlob.size()));
  mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
  mSerialCollection.fields = mSerialFields.data();
}

bool BlockSparseAttentionPlugin::checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, bool allowWildcards,
                                             char const* where) const {
  if (dims == nullptr || nbInputs != 3) {
    logError(std::string(where) + ": expected 3 inputs (q, k, v), got " + std::to_string(nbInputs));
    return false;
  }
  int64_t values[3][4] = {};
  const int64_t* pointers[3];
  int32_t nbDims[3];
  for (int32_t t = 0; t < 3; ++t) {
    nbDims[t] = dims[t].nbDims;
    for (int32_t d = 0; d < 4 && d < dims[t].nbDims; ++d) values[t][d] = static_cast<int64_t>(dims[t].d[d]);
    pointers[t] = values[t];
  }
  std::string error;
  if (!check_shapes(mAttrs, 3, pointers, nbDims, allowWildcards, &error)) {
    logError(std::string(where) + " (layer '" + mLayerName + "'): " + error);
    return false;
  }
  return true;
}

int32_t BlockSparseAttentionPlugin::ensureDeviceCsr(cudaStream_t stream) noexcept {
  int device = -1;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    logError(std::string("cudaGetDevice failed: ") + cudaGetErrorString(err));
    return -1;
  }
  if (mDeviceCsr != nullptr) {
    if (device == mDeviceOrdinal) return 0;
    logError("layer '" + mLayerName + "' runs on CUDA device " + std::to_string(device) +
             " but its CSR lists were uploaded to device " + std::to_string(mDeviceOrdinal));
    return -1;
  }
  void* buffer = nullptr;
  err = cudaMalloc(&buffer, mLayout.total_bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    logError("cudaMalloc of " + std::to_string(mLayout.total_bytes) + " bytes for the CSR lists failed: " +
             cudaGetErrorString(err));
    return -1;
  }
  char* base = static_cast<char*>(buffer);
  const Csr& csr = *mCsr;
  if (stream != nullptr) {
    err = cudaMemcpyAsync(base, csr.offsets.data(), mLayout.offsets_bytes, cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess && mLayout.indices_bytes > 0)
      err = cudaMemcpyAsync(base + mLayout.indices_offset, csr.indices.data(), mLayout.indices_bytes,
                            cudaMemcpyHostToDevice, stream);
  } else {
    err = cudaMemcpy(base, csr.offsets.data(), mLayout.offsets_bytes, cudaMemcpyHostToDevice);
    if (err == cudaSuccess && mLayout.indices_bytes > 0)
      err = cudaMemcpy(base + mLayout.indices_offset, csr.indices.data(), mLayout.indices_bytes,
                       cudaMemcpyHostToDevice);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    (void)cudaFree(buffer);
    logError(std::string("uploading the CSR lists failed: ") + cudaGetErrorString(err));
    return -1;
  }
  mDeviceCsr = buffer;
  mDeviceOrdinal = device;
  return 0;
}

// ---- IPluginV3 ----------------------------------------------------------------------------------

nvinfer1::IPluginCapability* BlockSparseAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* BlockSparseAttentionPlugin::clone() noexcept {
  try {
    // Fresh object: same attributes and (shared, immutable) host CSR; no device buffer.
    return new BlockSparseAttentionPlugin(mLayerName, mAttrs, mCsr);
  } catch (const std::exception& e) {
    logError(std::string("clone failed: ") + e.what());
  } catch (...) {
    logError("clone failed");
  }
  return nullptr;
}

// ---- IPluginV3OneCore ------------------------------------------------------------------------

char const* BlockSparseAttentionPlugin::getPluginName() const noexcept { return kPluginName; }
char const* BlockSparseAttentionPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BlockSparseAttentionPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

// ---- IPluginV3OneBuild ------------------------------------------------------------------------

int32_t BlockSparseAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                                    nvinfer1::DynamicPluginTensorDesc const* out,
                                                    int32_t nbOutputs) noexcept {
  try {
    if (in == nullptr || out == nullptr || nbInputs != 3 || nbOutputs != 1) {
      logError("configurePlugin: expected 3 inputs and 1 output, got " + std::to_string(nbInputs) + " and " +
               std::to_string(nbOutputs));
      return -1;
    }
    const nvinfer1::Dims declared[3] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims};
    const nvinfer1::Dims largest[3] = {in[0].max, in[1].max, in[2].max};
    if (!checkShapes(declared, 3, true, "configurePlugin") || !checkShapes(largest, 3, false, "configurePlugin (max)"))
      return -1;
    const DataType type = in[0].desc.type;
    std::string error;
    if (!check_dtype(kernelDtype(type), &error)) {
      logError("configurePlugin: " + error);
      return -1;
    }
    if (in[1].desc.type != type || in[2].desc.type != type || out[0].desc.type != type) {
      logError("configurePlugin: q, k, v and the output must share one dtype");
      return -1;
    }
    return 0;
  } catch (...) {
    logError("configurePlugin failed");
    return -1;
  }
}

int32_t BlockSparseAttentionPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                                       nvinfer1::DataType const* inputTypes,
                                                       int32_t nbInputs) const noexcept {
  if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != 3) {
    logError("getOutputDataTypes: expected 3 inputs and 1 output");
    return -1;
  }
  std::string error;
  if (!check_dtype(kernelDtype(inputTypes[0]), &error)) {
    logError("layer '" + mLayerName + "': " + error);
    return -1;
  }
  if (inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0]) {
    logError("layer '" + mLayerName + "': q, k and v must share one dtype");
    return -1;
  }
  outputTypes[0] = inputTypes[0];
  return 0;
}

int32_t BlockSparseAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                                    nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                                                    nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                                    nvinfer1::IExprBuilder& exprBuilder) noexcept {
  (void)shapeInputs;
  (void)nbShapeInputs;
  (void)exprBuilder;
  if (inputs == nullptr || outputs == nullptr || nbInputs != 3 || nbOutputs != 1) {
    logError("getOutputShapes: expected 3 inputs and 1 output");
    return -1;
  }
  // Dimensions that are build-time constants are checked now (B is usually dynamic).
  nvinfer1::Dims known[3];
  for (int32_t t = 0; t < 3; ++t) {
    known[t].nbDims = inputs[t].nbDims;
    for (int32_t d = 0; d < inputs[t].nbDims && d < nvinfer1::Dims::MAX_DIMS; ++d) {
      nvinfer1::IDimensionExpr const* e = inputs[t].d[d];
      known[t].d[d] = (e != nullptr && e->isConstant()) ? e->getConstantValue() : -1;
    }
  }
  if (!checkShapes(known, 3, true, "getOutputShapes")) return -1;
  // out has q's shape: reuse q's dimension expressions.
  outputs[0].nbDims = inputs[0].nbDims;
  for (int32_t d = 0; d < inputs[0].nbDims; ++d) outputs[0].d[d] = inputs[0].d[d];
  return 0;
}

bool BlockSparseAttentionPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                           int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (inOut == nullptr || nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const nvinfer1::PluginTensorDesc& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return isSupportedType(desc.type);  // fp16 or bf16
  return desc.type == inOut[0].desc.type;          // k, v, out follow q
}

int32_t BlockSparseAttentionPlugin::getNbOutputs() const noexcept { return 1; }

size_t BlockSparseAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                                    nvinfer1::DynamicPluginTensorDesc const* outputs,
                                                    int32_t nbOutputs) const noexcept {
  (void)inputs;
  (void)nbInputs;
  (void)outputs;
  (void)nbOutputs;
  return 0;  // the CSR lists live in the plugin's own device buffer (see the file comment)
}

// ---- IPluginV3OneRuntime ------------------------------------------------------------------------

int32_t BlockSparseAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                                  nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    if (in == nullptr || out == nullptr || nbInputs != 3 || nbOutputs != 1) {
      logError("onShapeChange: expected 3 inputs and 1 output");
      return -1;
    }
    const nvinfer1::Dims dims[3] = {in[0].dims, in[1].dims, in[2].dims};
    if (!checkShapes(dims, 3, false, "onShapeChange")) return -1;
    if (mDeviceCsr == nullptr && cudaDevicePresent()) return ensureDeviceCsr(nullptr);
    return 0;
  } catch (...) {
    logError("onShapeChange failed");
    return -1;
  }
}

int32_t BlockSparseAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                            nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                                            void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  (void)workspace;
  try {
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) {
      logError("enqueue: null tensor descriptors or pointers");
      return -1;
    }
    const nvinfer1::Dims& dims = inputDesc[0].dims;
    if (dims.nbDims != 4 || dims.d[1] != mAttrs.num_heads || dims.d[2] != mAttrs.seq_len() ||
        dims.d[3] != mAttrs.head_dim) {
      const nvinfer1::Dims all[3] = {inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims};
      checkShapes(all, 3, false, "enqueue");
      return -1;
    }
    const int32_t dtype = kernelDtype(inputDesc[0].type);
    std::string error;
    if (!check_dtype(dtype, &error)) {
      logError("enqueue: " + error);
      return -1;
    }
    if (ensureDeviceCsr(stream) != 0) return -1;
    const char* base = static_cast<const char*>(mDeviceCsr);
    const int32_t* offsets = reinterpret_cast<const int32_t*>(base);
    const int32_t* indices =
        mCsr->nnz() > 0 ? reinterpret_cast<const int32_t*>(base + mLayout.indices_offset) : nullptr;
    const int rc = s4d_bsa_forward_cuda(inputs[0], inputs[1], inputs[2], outputs[0], /*lse=*/nullptr,
                                        static_cast<int64_t>(dims.d[0]) * dims.d[1], dims.d[2], dims.d[3],
                                        mAttrs.block_size, offsets, indices, mCsr->nnz(), mCsr->rows(), mAttrs.scale,
                                        dtype, static_cast<void*>(stream));
    if (rc != S4D_BSA_OK) {
      logError("layer '" + mLayerName + "': s4d_bsa_forward_cuda failed (code " + std::to_string(rc) +
               "): " + s4d_bsa_cuda_last_error());
      return rc;
    }
    return 0;
  } catch (...) {
    logError("enqueue failed");
    return -1;
  }
}

nvinfer1::IPluginV3* BlockSparseAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  (void)context;
  return clone();  // per-context object: its own device CSR buffer
}

nvinfer1::PluginFieldCollection const* BlockSparseAttentionPlugin::getFieldsToSerialize() noexcept {
  return &mSerialCollection;
}

// ================================================================================================
// BlockSparseAttentionPluginCreator
// ================================================================================================

BlockSparseAttentionPluginCreator::BlockSparseAttentionPluginCreator() {
  // Exactly the ONNX node attributes (sdk.sparse.attention.onnx_node_attributes): the ONNX
  // parser only passes attributes listed here.
  for (const FieldSpec& spec : field_specs()) {
    const int32_t length = (spec.is_list || spec.kind == FieldKind::kChar) ? 0 : 1;
    mFields.emplace_back(spec.name, nullptr, pluginFieldType(spec.kind), length);
  }
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
}

char const* BlockSparseAttentionPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* BlockSparseAttentionPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BlockSparseAttentionPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }

nvinfer1::PluginFieldCollection const* BlockSparseAttentionPluginCreator::getFieldNames() noexcept {
  return &mCollection;
}

nvinfer1::IPluginV3* BlockSparseAttentionPluginCreator::createPlugin(char const* name,
                                                                      nvinfer1::PluginFieldCollection const* fc,
                                                                      nvinfer1::TensorRTPhase phase) noexcept {
  const std::string layer = name != nullptr ? name : "";
  try {
    if (fc == nullptr || fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr)) {
      logError("createPlugin('" + layer + "'): no field collection");
      return nullptr;
    }
    std::vector<RawField> fields;
    fields.reserve(static_cast<size_t>(fc->nbFields));
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      const nvinfer1::PluginField& f = fc->fields[i];
      fields.push_back(RawField{f.name, fieldKind(f.type), f.data, f.length});
    }
    // kRUNTIME: fc is what getFieldsToSerialize() returned when the engine was built.
    const Phase corePhase = phase == nvinfer1::TensorRTPhase::kRUNTIME ? Phase::kRuntime : Phase::kBuild;
    Attributes attrs;
    std::string error;
    if (!parse_fields(fields.data(), static_cast<int32_t>(fields.size()), corePhase, &attrs, &error)) {
      logError("createPlugin('" + layer + "'): " + error);
      return nullptr;
    }
    return new BlockSparseAttentionPlugin(layer, std::move(attrs));
  } catch (const std::exception& e) {
    logError("createPlugin('" + layer + "'): " + e.what());
  } catch (...) {
    logError("createPlugin('" + layer + "') failed");
  }
  return nullptr;
}

}  // namespace trt_plugin
}  // namespace s4d

// ================================================================================================
// Library entry points for IPluginRegistry::loadLibrary / trtexec --dynamicPlugins
// ================================================================================================

extern "C" S4D_TRT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  s4d::trt_plugin::loggerHolder().set(finder);
}

extern "C" S4D_TRT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static s4d::trt_plugin::BlockSparseAttentionPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

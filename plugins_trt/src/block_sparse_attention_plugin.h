// Sculpt4D block-sparse temporal attention as a TensorRT IPluginV3 plugin ("s4d::BlockSparseAttention",
// version "1"), the engine-side twin of the ONNX node written by export/onnx.py.
//
//   inputs  q, k, v  [B, H, N, D], fp16 or bf16, linear, one dtype; N = num_frames * tokens_per_frame
//   output  out      [B, H, N, D], same dtype
//
// Attributes, validation, the CSR lists, serialisation and the shape rules come from the
// TensorRT-independent core (plugins_trt/core); the math is the CUDA kernel of cpp_ext
// (s4d_bsa_forward_cuda). See plugins_trt/README.md for the design notes.
#ifndef S4D_TRT_BLOCK_SPARSE_ATTENTION_PLUGIN_H_
#define S4D_TRT_BLOCK_SPARSE_ATTENTION_PLUGIN_H_

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compat.h"
#include "s4d_trt/plugin_core.h"

namespace s4d {
namespace trt_plugin {

class BlockSparseAttentionPlugin final : public nvinfer1::IPluginV3,
                                         public nvinfer1::IPluginV3OneCore,
                                         public nvinfer1::IPluginV3OneBuild,
                                         public nvinfer1::IPluginV3OneRuntime {
 public:
  // `attrs` must pass validate(); throws std::runtime_error otherwise. `csr` may be shared
  // between clones (it is immutable); null builds it.
  BlockSparseAttentionPlugin(std::string layer_name, Attributes attrs, std::shared_ptr<const Csr> csr = nullptr);
  ~BlockSparseAttentionPlugin() override;

  BlockSparseAttentionPlugin(const BlockSparseAttentionPlugin&) = delete;
  BlockSparseAttentionPlugin& operator=(const BlockSparseAttentionPlugin&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  // getValidTactics / getNbTactics: TensorRT's defaults (one default tactic).

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  const Attributes& attributes() const { return mAttrs; }

 private:
  // Uploads the CSR lists into mDeviceCsr once (per plugin object = per execution context).
  // With a stream the copy is cudaMemcpyAsync on it, otherwise a synchronous cudaMemcpy.
  // Returns 0 or -1 (logged).
  int32_t ensureDeviceCsr(cudaStream_t stream) noexcept;
  void releaseDeviceCsr() noexcept;
  void initFieldsToSerialize();
  bool checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, bool allowWildcards, char const* where) const;

  std::string mLayerName;
  Attributes mAttrs;
  std::shared_ptr<const Csr> mCsr;  // host copy, immutable, shared by clones
  CsrDeviceLayout mLayout;

  // Device copy of the CSR lists (owned; cudaFree in the destructor).
  void* mDeviceCsr{nullptr};
  int mDeviceOrdinal{-1};

  // getFieldsToSerialize storage: the named attributes + the versioned state blob.
  std::vector<uint8_t> mStateBlob;
  std::vector<nvinfer1::PluginField> mSerialFields;
  nvinfer1::PluginFieldCollection mSerialCollection{};
};

class BlockSparseAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  BlockSparseAttentionPluginCreator();
  ~BlockSparseAttentionPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

}  // namespace trt_plugin
}  // namespace s4d

#endif  // S4D_TRT_BLOCK_SPARSE_ATTENTION_PLUGIN_H_

// TensorRT / TensorRT-RTX compatibility shim for the Sculpt4D plugin.
//
// Both flavours ship the same IPluginV3 interfaces (nvinfer1::IPluginV3, IPluginV3OneCore /
// OneBuild / OneRuntime, IPluginCreatorV3One) in NvInferRuntime.h, but their version macros
// differ:
//   * TensorRT >= 10.14 defines TRT_MAJOR_ENTERPRISE and NV_TENSORRT_MAJOR (= 10, 11, ...);
//     older TensorRT 10.x defines NV_TENSORRT_MAJOR directly. IPluginV3 exists since 10.0.
//   * TensorRT-RTX defines TRT_MAJOR_RTX / TRT_MINOR_RTX (and NV_TENSORRT_MAJOR = 1), so a
//     plain `NV_TENSORRT_MAJOR >= 10` test would wrongly reject it.
// The CMake build also passes S4D_TRT_RTX=1 when it found TensorRT-RTX, for RTX headers that
// might lack TRT_MAJOR_RTX.
#ifndef S4D_TRT_COMPAT_H_
#define S4D_TRT_COMPAT_H_

#include <NvInferVersion.h>

#if defined(TRT_MAJOR_RTX) || (defined(S4D_TRT_RTX) && S4D_TRT_RTX)
#define S4D_TRT_IS_RTX 1
#else
#define S4D_TRT_IS_RTX 0
#endif

#if !S4D_TRT_IS_RTX
#if !defined(NV_TENSORRT_MAJOR)
#error "NvInferVersion.h does not define NV_TENSORRT_MAJOR: not a TensorRT include directory?"
#elif NV_TENSORRT_MAJOR < 10
#error "The Sculpt4D BlockSparseAttention plugin implements IPluginV3: it needs TensorRT >= 10.0 or TensorRT-RTX"
#endif
#endif

#if S4D_TRT_IS_RTX
#define S4D_TRT_FLAVOUR "TensorRT-RTX"
#else
#define S4D_TRT_FLAVOUR "TensorRT"
#endif

// Symbols TensorRT looks up with dlsym (getCreators, setLoggerFinder). The library is built
// with hidden visibility; TensorRT's own TENSORRTAPI is empty outside TensorRT's build.
#if defined(_WIN32)
#define S4D_TRT_PLUGIN_EXPORT __declspec(dllexport)
#else
#define S4D_TRT_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

#endif  // S4D_TRT_COMPAT_H_

// Helpers the static and the dynamic pool plugins share (defined in pool_plugins.cpp).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace reroute
{
namespace plugin
{

//! Logs through TensorRT's logger (set by setLoggerFinder), else to stderr.
void logError(std::string const& message) noexcept;
//! Bytes per element of the types the gather / scatter plugins move; 0 for unsupported types.
int64_t elementSize(nvinfer1::DataType type) noexcept;
bool isLinear(nvinfer1::PluginTensorDesc const& desc) noexcept;
//! True when both extents are known (build time may report -1) and differ.
bool knownMismatch(int64_t a, int64_t b) noexcept;
//! A float attribute (kFLOAT32, kFLOAT64, or an integer type).
bool readFloat(nvinfer1::PluginField const& field, float& value) noexcept;
//! Reports a CUDA launcher's result (0, or -1 with the error logged under the op's name).
int32_t cudaStatus(cudaError_t err, char const* op) noexcept;

} // namespace plugin
} // namespace reroute

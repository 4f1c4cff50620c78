// TensorRT 10 IPluginV3 plugins for the dynamic-N_v token-pool ops (Qwen2.5-VL's graphs).
//
// Same kernels and semantics as the static plugins (pool_plugins.h), but k and the candidate count P
// are not attributes: each artifact serves every image size up to its capacity, so they are computed
// in the graph from N_v and the stage's keep ratio. The plugin form (engines/plugin_graph.py) feeds
// each size as an *extent*, an int32 tensor of shape [size] whose values are never read:
//   PoolSelectDynamic(q_last, keys, visual_start, k_extent [k], p_extent [P]) -> selected [B, k]  attr scale
//   PoolGatherDynamic(x, selected, visual_start, p_extent [P]) -> compact [B, n - P + k, C]
//   PoolScatterDynamic(x, compact, selected, visual_start, p_extent [P]) -> out [B, n, C]
// Output shapes are then expressions of input dimensions (IExprBuilder) and enqueue reads k and P off
// the tensor descriptors: no device-to-host copy, no data-dependent shape. TensorRT bounds both by the
// optimization profile (N_v <= the manifest's max_visual_tokens); P is checked against kMaxCandidates.
#pragma once

#include "pool_plugins.h"

namespace reroute
{
namespace plugin
{

constexpr char const* kPoolSelectDynamicName = "PoolSelectDynamic";
constexpr char const* kPoolGatherDynamicName = "PoolGatherDynamic";
constexpr char const* kPoolScatterDynamicName = "PoolScatterDynamic";

class PoolSelectDynamicPlugin final : public PoolPluginBase
{
public:
    static constexpr char const* kName = kPoolSelectDynamicName;
    static constexpr bool kUsesScale = true;
    using PoolPluginBase::PoolPluginBase;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

protected:
    int32_t expectedInputs() const noexcept override;
    int32_t inputRank(int32_t index) const noexcept override;
    void appendFields(std::vector<nvinfer1::PluginField>& fields) const override;
    bool checkDims(nvinfer1::Dims const* inputs) const noexcept override;
};

class PoolGatherDynamicPlugin final : public PoolPluginBase
{
public:
    static constexpr char const* kName = kPoolGatherDynamicName;
    static constexpr bool kUsesScale = false;
    using PoolPluginBase::PoolPluginBase;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

protected:
    int32_t expectedInputs() const noexcept override;
    int32_t inputRank(int32_t index) const noexcept override;
    void appendFields(std::vector<nvinfer1::PluginField>& fields) const override;
    bool checkDims(nvinfer1::Dims const* inputs) const noexcept override;
};

class PoolScatterDynamicPlugin final : public PoolPluginBase
{
public:
    static constexpr char const* kName = kPoolScatterDynamicName;
    static constexpr bool kUsesScale = false;
    using PoolPluginBase::PoolPluginBase;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

protected:
    int32_t expectedInputs() const noexcept override;
    int32_t inputRank(int32_t index) const noexcept override;
    void appendFields(std::vector<nvinfer1::PluginField>& fields) const override;
    bool checkDims(nvinfer1::Dims const* inputs) const noexcept override;
};

//! Creators of the dynamic plugins: PoolSelectDynamic takes the float attribute `scale`, the others none.
class PoolDynamicCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

protected:
    explicit PoolDynamicCreatorBase(bool usesScale);
    virtual nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const = 0;

private:
    bool mUsesScale;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

//! The creator of one dynamic plugin class (its kName, and whether it takes `scale`).
template <typename Plugin>
class PoolDynamicCreator final : public PoolDynamicCreatorBase
{
public:
    PoolDynamicCreator()
        : PoolDynamicCreatorBase(Plugin::kUsesScale)
    {
    }

    char const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }

protected:
    nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const override
    {
        return new Plugin(attrs);
    }
};

using PoolSelectDynamicCreator = PoolDynamicCreator<PoolSelectDynamicPlugin>;
using PoolGatherDynamicCreator = PoolDynamicCreator<PoolGatherDynamicPlugin>;
using PoolScatterDynamicCreator = PoolDynamicCreator<PoolScatterDynamicPlugin>;

} // namespace plugin
} // namespace reroute

// TensorRT 10 IPluginV3 plugins for the reroute token-pool ops.
//
// Three plugins, namespace "reroute", version "1", named like the ONNX ops they replace:
//   PoolSelect(q_last, keys, visual_start) -> selected          attrs k, num_candidates, scale
//   PoolGather(x, selected, visual_start) -> compact            attr  num_candidates
//   PoolScatter(x, compact, selected, visual_start) -> out      attr  num_candidates
// The contracts are in docs/PLUGINS.md; the CUDA work is in pool_kernels.cu.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <vector>

namespace reroute
{
namespace plugin
{

constexpr char const* kPluginNamespace = "reroute";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPoolSelectName = "PoolSelect";
constexpr char const* kPoolGatherName = "PoolGather";
constexpr char const* kPoolScatterName = "PoolScatter";

//! Node attributes; each op reads the ones it declares in its creator's field names.
struct PoolAttrs
{
    int32_t k{0};
    int32_t numCandidates{0};
    float scale{1.F};
};

//! What the three plugins share: the IPluginV3 plumbing, attribute (de)serialisation and the
//! single-output / linear-format conventions. Subclasses supply shapes, types and enqueue.
class PoolPluginBase : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PoolPluginBase(PoolAttrs const& attrs);
    PoolPluginBase(PoolPluginBase const& other);
    PoolPluginBase& operator=(PoolPluginBase const&) = delete;
    ~PoolPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    //! Number of inputs the op takes.
    virtual int32_t expectedInputs() const noexcept = 0;
    //! Expected rank of each input (index < expectedInputs()).
    virtual int32_t inputRank(int32_t index) const noexcept = 0;
    //! Appends the attributes this op serialises (pointing into mAttrs).
    virtual void appendFields(std::vector<nvinfer1::PluginField>& fields) const = 0;
    //! Op-specific checks on known (non -1) dimensions; returns false with the reason logged.
    virtual bool checkDims(nvinfer1::Dims const* inputs) const noexcept = 0;

    bool checkIo(nvinfer1::Dims const* inputs, int32_t nbIn, int32_t nbOut) const noexcept;

    PoolAttrs mAttrs;

private:
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class PoolSelectPlugin final : public PoolPluginBase
{
public:
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

class PoolGatherPlugin final : public PoolPluginBase
{
public:
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

class PoolScatterPlugin final : public PoolPluginBase
{
public:
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

//! Creator shared code: field-name list, attribute parsing, validation.
class PoolCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

protected:
    //! `usesSelectAttrs`: whether the op takes k and scale (PoolSelect) or only num_candidates.
    explicit PoolCreatorBase(bool usesSelectAttrs);
    //! Builds the plugin from parsed, validated attributes.
    virtual nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const = 0;

private:
    bool parse(nvinfer1::PluginFieldCollection const* fc, PoolAttrs& attrs) const noexcept;
    bool validate(PoolAttrs const& attrs) const noexcept;

    bool mUsesSelectAttrs;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

class PoolSelectCreator final : public PoolCreatorBase
{
public:
    PoolSelectCreator();
    char const* getPluginName() const noexcept override;

protected:
    nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const override;
};

class PoolGatherCreator final : public PoolCreatorBase
{
public:
    PoolGatherCreator();
    char const* getPluginName() const noexcept override;

protected:
    nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const override;
};

class PoolScatterCreator final : public PoolCreatorBase
{
public:
    PoolScatterCreator();
    char const* getPluginName() const noexcept override;

protected:
    nvinfer1::IPluginV3* make(PoolAttrs const& attrs) const override;
};

} // namespace plugin
} // namespace reroute

#if defined(_WIN32)
#define REROUTE_PLUGIN_EXPORT __declspec(dllexport)
#else
#define REROUTE_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

//! Plugin-library entry points TensorRT looks up in IPluginRegistry::loadLibrary
//! (trtexec --dynamicPlugins, engines with serialised plugin libraries).
extern "C" REROUTE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" REROUTE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

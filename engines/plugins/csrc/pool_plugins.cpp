// TensorRT 10 IPluginV3 plugins for the reroute token-pool ops: shapes, types, formats,
// (de)serialisation and registration. The CUDA work is in pool_kernels.cu.
#include "pool_plugins.h"

#include "pool_kernels.h"
#include "pool_plugin_util.h"
#include "pool_plugins_dynamic.h"

#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

// 1: register the creators with TensorRT's global registry when the library is loaded (dlopen,
// LD_PRELOAD, ctypes). 0: only export getCreators for IPluginRegistry::loadLibrary, which
// refuses a library whose creators are already registered. CMake builds one library of each.
#ifndef REROUTE_STATIC_REGISTRATION
#define REROUTE_STATIC_REGISTRATION 1
#endif

using namespace nvinfer1;

namespace reroute
{
namespace plugin
{
namespace
{

constexpr int32_t kMaxInputs = 5; // PoolScatterDynamic takes five
using InputDims = std::array<Dims, kMaxInputs>;

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const line = "[reroute plugins] " + message;
        ILoggerFinder* finder = gLoggerFinder.load();
        ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, line.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", line.c_str());
        }
    }
    catch (...)
    {
    }
}

} // namespace

// Shared with pool_plugins_dynamic.cpp (declared in pool_plugin_util.h).

void logError(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
}

//! Bytes per element of the types PoolGather / PoolScatter move; 0 for unsupported types.
int64_t elementSize(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT:
    case DataType::kINT32: return 4;
    case DataType::kHALF:
    case DataType::kBF16: return 2;
    case DataType::kINT64: return 8;
    default: return 0;
    }
}

bool isLinear(PluginTensorDesc const& desc) noexcept
{
    return desc.format == TensorFormat::kLINEAR;
}

//! True when both extents are known (build time may report -1) and differ.
bool knownMismatch(int64_t a, int64_t b) noexcept
{
    return a >= 0 && b >= 0 && a != b;
}

bool readInt(PluginField const& field, int64_t& value) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(field.data); return true;
    case PluginFieldType::kINT16:
    {
        int16_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return true;
    }
    case PluginFieldType::kINT32:
    {
        int32_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return true;
    }
    case PluginFieldType::kINT64: std::memcpy(&value, field.data, sizeof(value)); return true;
    default: return false;
    }
}

bool readFloat(PluginField const& field, float& value) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    if (field.type == PluginFieldType::kFLOAT32)
    {
        std::memcpy(&value, field.data, sizeof(value));
        return true;
    }
    if (field.type == PluginFieldType::kFLOAT64)
    {
        double v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = static_cast<float>(v);
        return true;
    }
    int64_t asInt{};
    if (readInt(field, asInt)) // an integral scale written as an int attribute
    {
        value = static_cast<float>(asInt);
        return true;
    }
    return false;
}

//! Reports a CUDA launcher's result; invalid-value errors name the offending op.
int32_t cudaStatus(cudaError_t err, char const* op) noexcept
{
    if (err == cudaSuccess)
    {
        return 0;
    }
    logError(std::string(op) + " enqueue failed: " + cudaGetErrorString(err));
    return -1;
}

namespace
{

template <typename Desc>
InputDims collectDims(Desc const* in, int32_t nbInputs, Dims const& (*dimsOf)(Desc const&)) noexcept
{
    InputDims dims{};
    for (int32_t i = 0; i < nbInputs && i < kMaxInputs; ++i)
    {
        dims[i] = dimsOf(in[i]);
    }
    return dims;
}

Dims const& dynamicDims(DynamicPluginTensorDesc const& d)
{
    return d.desc.dims;
}

Dims const& runtimeDims(PluginTensorDesc const& d)
{
    return d.dims;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// PoolPluginBase
// ---------------------------------------------------------------------------------------------

PoolPluginBase::PoolPluginBase(PoolAttrs const& attrs)
    : mAttrs(attrs)
{
}

PoolPluginBase::PoolPluginBase(PoolPluginBase const& other)
    : IPluginV3()
    , IPluginV3OneCore()
    , IPluginV3OneBuild()
    , IPluginV3OneRuntime()
    , mAttrs(other.mAttrs)
{
    // mSerialFields point into the owner's mAttrs, so a copy rebuilds its own on demand.
}

IPluginCapability* PoolPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* PoolPluginBase::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* PoolPluginBase::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t PoolPluginBase::getNbOutputs() const noexcept
{
    return 1;
}

bool PoolPluginBase::checkIo(Dims const* inputs, int32_t nbIn, int32_t nbOut) const noexcept
{
    if (nbIn != expectedInputs() || nbOut != 1)
    {
        logError(std::string(getPluginName()) + ": expected " + std::to_string(expectedInputs())
            + " inputs and 1 output, got " + std::to_string(nbIn) + " and " + std::to_string(nbOut));
        return false;
    }
    for (int32_t i = 0; i < nbIn; ++i)
    {
        if (inputs[i].nbDims != inputRank(i))
        {
            logError(std::string(getPluginName()) + ": input " + std::to_string(i) + " must have rank "
                + std::to_string(inputRank(i)) + ", got " + std::to_string(inputs[i].nbDims));
            return false;
        }
    }
    return checkDims(inputs);
}

int32_t PoolPluginBase::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbIn, DynamicPluginTensorDesc const* /*out*/, int32_t nbOut) noexcept
{
    InputDims const dims = collectDims(in, nbIn, &dynamicDims);
    return checkIo(dims.data(), nbIn, nbOut) ? 0 : -1;
}

int32_t PoolPluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbIn, PluginTensorDesc const* /*out*/, int32_t nbOut) noexcept
{
    InputDims const dims = collectDims(in, nbIn, &runtimeDims);
    return checkIo(dims.data(), nbIn, nbOut) ? 0 : -1;
}

IPluginV3* PoolPluginBase::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // stateless apart from the attributes: no per-context resources
}

PluginFieldCollection const* PoolPluginBase::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields.clear();
        appendFields(mSerialFields);
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getFieldsToSerialize: ") + e.what());
        return nullptr;
    }
}

// ---------------------------------------------------------------------------------------------
// PoolSelect(q_last [B,H,hd], keys [B,KVH,n,hd], visual_start [B] or [1], pad_lengths [B])
//     -> selected [B,k] int64
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolSelectPlugin::clone() noexcept
{
    try
    {
        return new PoolSelectPlugin(*this);
    }
    catch (...)
    {
        return nullptr;
    }
}

char const* PoolSelectPlugin::getPluginName() const noexcept
{
    return kPoolSelectName;
}

int32_t PoolSelectPlugin::expectedInputs() const noexcept
{
    return 4;
}

int32_t PoolSelectPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 4, 1, 1};
    return kRanks[index];
}

void PoolSelectPlugin::appendFields(std::vector<PluginField>& fields) const
{
    fields.emplace_back("k", &mAttrs.k, PluginFieldType::kINT32, 1);
    fields.emplace_back("num_candidates", &mAttrs.numCandidates, PluginFieldType::kINT32, 1);
    fields.emplace_back("scale", &mAttrs.scale, PluginFieldType::kFLOAT32, 1);
}

bool PoolSelectPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& q = inputs[0];
    Dims const& keys = inputs[1];
    bool ok = !knownMismatch(q.d[0], keys.d[0]) && !knownMismatch(q.d[2], keys.d[3]);
    ok = ok && !(q.d[1] > 0 && keys.d[1] > 0 && q.d[1] % keys.d[1] != 0);
    ok = ok && !(keys.d[2] >= 0 && keys.d[2] < mAttrs.numCandidates);
    if (!ok)
    {
        logError("PoolSelect: need q_last [B,H,hd] and keys [B,KVH,n,hd] with H % KVH == 0 and n >= num_candidates ("
            + std::to_string(mAttrs.numCandidates) + ")");
    }
    return ok;
}

int32_t PoolSelectPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 4)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT64;
    return 0;
}

int32_t PoolSelectPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || inputs[0].nbDims != 3)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = exprBuilder.constant(mAttrs.k);
    return 0;
}

bool PoolSelectPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF; // q_last
    case 1: return desc.type == inOut[0].desc.type;                              // keys
    case 2:                                                                       // visual_start
    case 3:                                                                       // pad_lengths
    case 4: return desc.type == DataType::kINT64;                                 // selected
    default: return false;
    }
}

size_t PoolSelectPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    int64_t const batch = inputs[0].max.d[0];
    int64_t const heads = inputs[0].max.d[1];
    if (batch <= 0 || heads <= 0)
    {
        return 0;
    }
    return poolSelectWorkspaceBytes(batch, heads, mAttrs.numCandidates);
}

int32_t PoolSelectPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& q = inputDesc[0].dims;
    Dims const& keys = inputDesc[1].dims;
    SelectParams params{};
    params.batch = static_cast<int32_t>(q.d[0]);
    params.heads = static_cast<int32_t>(q.d[1]);
    params.headDim = static_cast<int32_t>(q.d[2]);
    params.kvHeads = static_cast<int32_t>(keys.d[1]);
    params.seqLen = static_cast<int32_t>(keys.d[2]);
    params.numCandidates = mAttrs.numCandidates;
    params.k = mAttrs.k;
    params.scale = mAttrs.scale;
    // one start for the batch ([1]) or one per sample ([B], a left-padded batch; pad_lengths is then [B] too)
    params.startStride = inputDesc[2].dims.d[0] == 1 ? 0 : 1;
    FloatKind const kind = inputDesc[0].type == DataType::kHALF ? FloatKind::kFloat16 : FloatKind::kFloat32;
    int64_t const* padLengths = inputDesc[3].dims.d[0] == inputDesc[2].dims.d[0]
        ? static_cast<int64_t const*>(inputs[3])
        : nullptr; // a [1] start with [B] padding cannot be: treat as unpadded rather than misread
    cudaError_t const err = launchPoolSelect(kind, inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        padLengths, static_cast<int64_t*>(outputs[0]), workspace, params, stream);
    return cudaStatus(err, kPoolSelectName);
}

// ---------------------------------------------------------------------------------------------
// PoolGather(x [B,n,C], selected [B,k], visual_start [B] or [1]) -> compact [B, n-P+k, C]
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolGatherPlugin::clone() noexcept
{
    try
    {
        return new PoolGatherPlugin(*this);
    }
    catch (...)
    {
        return nullptr;
    }
}

char const* PoolGatherPlugin::getPluginName() const noexcept
{
    return kPoolGatherName;
}

int32_t PoolGatherPlugin::expectedInputs() const noexcept
{
    return 3;
}

int32_t PoolGatherPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 2, 1};
    return kRanks[index];
}

void PoolGatherPlugin::appendFields(std::vector<PluginField>& fields) const
{
    fields.emplace_back("num_candidates", &mAttrs.numCandidates, PluginFieldType::kINT32, 1);
}

bool PoolGatherPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& x = inputs[0];
    Dims const& selected = inputs[1];
    bool const ok = !knownMismatch(x.d[0], selected.d[0]) && !(x.d[1] >= 0 && x.d[1] < mAttrs.numCandidates)
        && !(selected.d[1] > mAttrs.numCandidates);
    if (!ok)
    {
        logError("PoolGather: need x [B,n,C] and selected [B,k] with k <= num_candidates <= n (num_candidates = "
            + std::to_string(mAttrs.numCandidates) + ")");
    }
    return ok;
}

int32_t PoolGatherPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 3)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PoolGatherPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2)
    {
        return -1;
    }
    DimsExprs const& x = inputs[0];
    IDimensionExpr const* text = exprBuilder.operation(
        DimensionOperation::kSUB, *x.d[1], *exprBuilder.constant(mAttrs.numCandidates)); // n - P
    outputs[0].nbDims = 3;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = exprBuilder.operation(DimensionOperation::kSUM, *text, *inputs[1].d[1]); // + k
    outputs[0].d[2] = x.d[2];
    return 0;
}

bool PoolGatherPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case 0: return elementSize(desc.type) > 0;          // x
    case 1:                                             // selected
    case 2: return desc.type == DataType::kINT64;       // visual_start
    case 3: return desc.type == inOut[0].desc.type;     // compact
    default: return false;
    }
}

int32_t PoolGatherPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& x = inputDesc[0].dims;
    // visual_start: [1] (one start for the batch) or [B] (per sample)
    PoolShape const shape{x.d[0], x.d[1], x.d[2] * elementSize(inputDesc[0].type), mAttrs.numCandidates,
        inputDesc[1].dims.d[1], inputDesc[2].dims.d[0] == 1 ? 0 : 1};
    cudaError_t const err = launchPoolGather(inputs[0], static_cast<int64_t const*>(inputs[1]),
        static_cast<int64_t const*>(inputs[2]), outputs[0], shape, stream);
    return cudaStatus(err, kPoolGatherName);
}

// ---------------------------------------------------------------------------------------------
// PoolScatter(x [B,n,C], compact [B,n-P+k,C], selected [B,k], visual_start [B] or [1]) -> out [B,n,C]
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolScatterPlugin::clone() noexcept
{
    try
    {
        return new PoolScatterPlugin(*this);
    }
    catch (...)
    {
        return nullptr;
    }
}

char const* PoolScatterPlugin::getPluginName() const noexcept
{
    return kPoolScatterName;
}

int32_t PoolScatterPlugin::expectedInputs() const noexcept
{
    return 4;
}

int32_t PoolScatterPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 3, 2, 1};
    return kRanks[index];
}

void PoolScatterPlugin::appendFields(std::vector<PluginField>& fields) const
{
    fields.emplace_back("num_candidates", &mAttrs.numCandidates, PluginFieldType::kINT32, 1);
}

bool PoolScatterPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& x = inputs[0];
    Dims const& compact = inputs[1];
    Dims const& selected = inputs[2];
    int64_t const P = mAttrs.numCandidates;
    bool ok = !knownMismatch(x.d[0], compact.d[0]) && !knownMismatch(x.d[0], selected.d[0])
        && !knownMismatch(x.d[2], compact.d[2]) && !(x.d[1] >= 0 && x.d[1] < P) && !(selected.d[1] > P);
    if (ok && x.d[1] >= 0 && selected.d[1] >= 0)
    {
        ok = !knownMismatch(compact.d[1], x.d[1] - P + selected.d[1]);
    }
    if (!ok)
    {
        logError("PoolScatter: need x [B,n,C], compact [B,n-P+k,C], selected [B,k] with k <= P <= n (P = "
            + std::to_string(P) + ")");
    }
    return ok;
}

int32_t PoolScatterPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 4)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PoolScatterPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || inputs[0].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool PoolScatterPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case 0: return elementSize(desc.type) > 0;          // x
    case 1: return desc.type == inOut[0].desc.type;     // compact
    case 2:                                             // selected
    case 3: return desc.type == DataType::kINT64;       // visual_start
    case 4: return desc.type == inOut[0].desc.type;     // out
    default: return false;
    }
}

int32_t PoolScatterPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& x = inputDesc[0].dims;
    // visual_start: [1] (one start for the batch) or [B] (per sample)
    PoolShape const shape{x.d[0], x.d[1], x.d[2] * elementSize(inputDesc[0].type), mAttrs.numCandidates,
        inputDesc[2].dims.d[1], inputDesc[3].dims.d[0] == 1 ? 0 : 1};
    cudaError_t const err = launchPoolScatter(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        static_cast<int64_t const*>(inputs[3]), outputs[0], shape, stream);
    return cudaStatus(err, kPoolScatterName);
}

// ---------------------------------------------------------------------------------------------
// Creators
// ---------------------------------------------------------------------------------------------

PoolCreatorBase::PoolCreatorBase(bool usesSelectAttrs)
    : mUsesSelectAttrs(usesSelectAttrs)
{
    // The ONNX parser reads these names off the node's attributes (ints arrive as kINT32).
    if (usesSelectAttrs)
    {
        mFields.emplace_back("k", nullptr, PluginFieldType::kINT32, 1);
    }
    mFields.emplace_back("num_candidates", nullptr, PluginFieldType::kINT32, 1);
    if (usesSelectAttrs)
    {
        mFields.emplace_back("scale", nullptr, PluginFieldType::kFLOAT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

PluginFieldCollection const* PoolCreatorBase::getFieldNames() noexcept
{
    return &mCollection;
}

char const* PoolCreatorBase::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* PoolCreatorBase::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

bool PoolCreatorBase::parse(PluginFieldCollection const* fc, PoolAttrs& attrs) const noexcept
{
    bool haveK = !mUsesSelectAttrs;
    bool haveP = false;
    bool haveScale = !mUsesSelectAttrs;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            continue;
        }
        int64_t value{};
        if (std::strcmp(field.name, "num_candidates") == 0 && readInt(field, value))
        {
            attrs.numCandidates = static_cast<int32_t>(value);
            haveP = value == attrs.numCandidates; // reject values that do not fit int32
        }
        else if (mUsesSelectAttrs && std::strcmp(field.name, "k") == 0 && readInt(field, value))
        {
            attrs.k = static_cast<int32_t>(value);
            haveK = value == attrs.k;
        }
        else if (mUsesSelectAttrs && std::strcmp(field.name, "scale") == 0)
        {
            haveScale = readFloat(field, attrs.scale);
        }
        // Anything else (e.g. plugin_version / plugin_namespace copied from the node) is ignored.
    }
    if (!(haveK && haveP && haveScale))
    {
        logError(std::string(getPluginName()) + ": missing or malformed attribute (needs "
            + (mUsesSelectAttrs ? "int k, int num_candidates, float scale" : "int num_candidates") + ")");
        return false;
    }
    return true;
}

bool PoolCreatorBase::validate(PoolAttrs const& attrs) const noexcept
{
    bool ok = attrs.numCandidates >= 1;
    if (mUsesSelectAttrs)
    {
        // The top-k sorts the whole span in shared memory, hence the cap on P.
        ok = ok && attrs.numCandidates <= kMaxCandidates && attrs.k >= 1 && attrs.k <= attrs.numCandidates
            && std::isfinite(attrs.scale);
    }
    if (!ok)
    {
        logError(std::string(getPluginName()) + ": invalid attributes k=" + std::to_string(attrs.k)
            + " num_candidates=" + std::to_string(attrs.numCandidates) + " scale=" + std::to_string(attrs.scale)
            + " (need 1 <= k <= num_candidates <= " + std::to_string(kMaxCandidates) + ")");
    }
    return ok;
}

IPluginV3* PoolCreatorBase::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    // Build and runtime phases take the same fields: getFieldsToSerialize writes exactly these.
    try
    {
        PoolAttrs attrs;
        if (!parse(fc, attrs) || !validate(attrs))
        {
            return nullptr;
        }
        return make(attrs);
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": createPlugin failed: " + e.what());
        return nullptr;
    }
}

PoolSelectCreator::PoolSelectCreator()
    : PoolCreatorBase(true)
{
}

char const* PoolSelectCreator::getPluginName() const noexcept
{
    return kPoolSelectName;
}

IPluginV3* PoolSelectCreator::make(PoolAttrs const& attrs) const
{
    return new PoolSelectPlugin(attrs);
}

PoolGatherCreator::PoolGatherCreator()
    : PoolCreatorBase(false)
{
}

char const* PoolGatherCreator::getPluginName() const noexcept
{
    return kPoolGatherName;
}

IPluginV3* PoolGatherCreator::make(PoolAttrs const& attrs) const
{
    return new PoolGatherPlugin(attrs);
}

PoolScatterCreator::PoolScatterCreator()
    : PoolCreatorBase(false)
{
}

char const* PoolScatterCreator::getPluginName() const noexcept
{
    return kPoolScatterName;
}

IPluginV3* PoolScatterCreator::make(PoolAttrs const& attrs) const
{
    return new PoolScatterPlugin(attrs);
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

namespace
{

IPluginCreatorInterface* const* creatorList(int32_t& count) noexcept
{
    static PoolSelectCreator selectCreator;
    static PoolGatherCreator gatherCreator;
    static PoolScatterCreator scatterCreator;
    static PoolSelectDynamicCreator selectDynamicCreator;
    static PoolGatherDynamicCreator gatherDynamicCreator;
    static PoolScatterDynamicCreator scatterDynamicCreator;
    static IPluginCreatorInterface* const creators[] = {&selectCreator, &gatherCreator, &scatterCreator,
        &selectDynamicCreator, &gatherDynamicCreator, &scatterDynamicCreator};
    count = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

#if REROUTE_STATIC_REGISTRATION
//! Registers every creator under the "reroute" namespace when the library is loaded.
//! (Same effect as REGISTER_TENSORRT_PLUGIN, which would register under the empty namespace.)
struct StaticRegistration
{
    StaticRegistration()
    {
        int32_t count = 0;
        IPluginCreatorInterface* const* creators = creatorList(count);
        IPluginRegistry* registry = getPluginRegistry();
        for (int32_t i = 0; registry != nullptr && i < count; ++i)
        {
            registry->registerCreator(*creators[i], kPluginNamespace);
        }
    }
};

StaticRegistration const gStaticRegistration{};
#endif

} // namespace

} // namespace plugin
} // namespace reroute

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    reroute::plugin::gLoggerFinder.store(finder);
}

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return reroute::plugin::creatorList(nbCreators);
}

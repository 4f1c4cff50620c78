// The dynamic-N_v token-pool plugins (see pool_plugins_dynamic.h): k and P arrive as extents, the
// CUDA work is pool_kernels.cu's launchers, shared with the static plugins.
#include "pool_plugins_dynamic.h"

#include "pool_kernels.h"
#include "pool_plugin_util.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <string>

using namespace nvinfer1;

namespace reroute
{
namespace plugin
{
namespace
{

//! True when a known extent length exceeds what the select kernels accept.
bool overCandidateLimit(int64_t p) noexcept
{
    return p > kMaxCandidates;
}

template <typename Plugin>
IPluginV3* cloneOf(Plugin const& plugin) noexcept
{
    try
    {
        return new Plugin(plugin);
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------
// PoolSelectDynamic(q_last [B,H,hd], keys [B,KVH,n,hd], visual_start [1], k_extent [k], p_extent [P])
//   -> selected [B,k] int64
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolSelectDynamicPlugin::clone() noexcept
{
    return cloneOf(*this);
}

char const* PoolSelectDynamicPlugin::getPluginName() const noexcept
{
    return kPoolSelectDynamicName;
}

int32_t PoolSelectDynamicPlugin::expectedInputs() const noexcept
{
    return 5;
}

int32_t PoolSelectDynamicPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 4, 1, 1, 1};
    return kRanks[index];
}

void PoolSelectDynamicPlugin::appendFields(std::vector<PluginField>& fields) const
{
    fields.emplace_back("scale", &mAttrs.scale, PluginFieldType::kFLOAT32, 1);
}

bool PoolSelectDynamicPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& q = inputs[0];
    Dims const& keys = inputs[1];
    int64_t const k = inputs[3].d[0];
    int64_t const p = inputs[4].d[0];
    bool ok = !knownMismatch(q.d[0], keys.d[0]) && !knownMismatch(q.d[2], keys.d[3]);
    ok = ok && !(q.d[1] > 0 && keys.d[1] > 0 && q.d[1] % keys.d[1] != 0);
    ok = ok && !(k == 0 || (k > 0 && p >= 0 && k > p)) && !(p >= 0 && keys.d[2] >= 0 && keys.d[2] < p);
    ok = ok && !overCandidateLimit(p);
    if (!ok)
    {
        logError("PoolSelectDynamic: need q_last [B,H,hd], keys [B,KVH,n,hd] with H % KVH == 0 and extents "
                 "[k], [P] with 1 <= k <= P <= min(n, "
            + std::to_string(kMaxCandidates) + "); got k=" + std::to_string(k) + " P=" + std::to_string(p));
    }
    return ok;
}

int32_t PoolSelectDynamicPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbIn, DynamicPluginTensorDesc const* out, int32_t nbOut) noexcept
{
    if (PoolPluginBase::configurePlugin(in, nbIn, out, nbOut) != 0)
    {
        return -1;
    }
    // The profile's largest candidate span must fit the shared-memory top-k (the manifest's capacity).
    if (overCandidateLimit(in[4].max.d[0]))
    {
        logError("PoolSelectDynamic: the optimization profile allows " + std::to_string(in[4].max.d[0])
            + " candidates, over the kernel limit of " + std::to_string(kMaxCandidates));
        return -1;
    }
    return 0;
}

int32_t PoolSelectDynamicPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 5)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT64;
    return 0;
}

int32_t PoolSelectDynamicPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 5 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[3].nbDims != 1)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[0].d[0]; // B
    outputs[0].d[1] = inputs[3].d[0]; // k: the length of k_extent
    return 0;
}

bool PoolSelectDynamicPlugin::supportsFormatCombination(
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
    case 2: return desc.type == DataType::kINT64;                                 // visual_start
    case 3:                                                                       // k_extent
    case 4: return desc.type == DataType::kINT32;                                 // p_extent
    case 5: return desc.type == DataType::kINT64;                                 // selected
    default: return false;
    }
}

size_t PoolSelectDynamicPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    int64_t const batch = inputs[0].max.d[0];
    int64_t const heads = inputs[0].max.d[1];
    int64_t const candidates = inputs[4].max.d[0]; // the profile's largest P
    if (batch <= 0 || heads <= 0 || candidates <= 0)
    {
        return 0;
    }
    return poolSelectWorkspaceBytes(batch, heads, candidates);
}

int32_t PoolSelectDynamicPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
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
    params.k = static_cast<int32_t>(inputDesc[3].dims.d[0]);
    params.numCandidates = static_cast<int32_t>(inputDesc[4].dims.d[0]);
    params.scale = mAttrs.scale;
    FloatKind const kind = inputDesc[0].type == DataType::kHALF ? FloatKind::kFloat16 : FloatKind::kFloat32;
    cudaError_t const err = launchPoolSelect(kind, inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        static_cast<int64_t*>(outputs[0]), workspace, params, stream);
    return cudaStatus(err, kPoolSelectDynamicName);
}

// ---------------------------------------------------------------------------------------------
// PoolGatherDynamic(x [B,n,C], selected [B,k], visual_start [1], p_extent [P]) -> compact [B, n-P+k, C]
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolGatherDynamicPlugin::clone() noexcept
{
    return cloneOf(*this);
}

char const* PoolGatherDynamicPlugin::getPluginName() const noexcept
{
    return kPoolGatherDynamicName;
}

int32_t PoolGatherDynamicPlugin::expectedInputs() const noexcept
{
    return 4;
}

int32_t PoolGatherDynamicPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 2, 1, 1};
    return kRanks[index];
}

void PoolGatherDynamicPlugin::appendFields(std::vector<PluginField>& /*fields*/) const
{
}

bool PoolGatherDynamicPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& x = inputs[0];
    Dims const& selected = inputs[1];
    int64_t const p = inputs[3].d[0];
    bool const ok = !knownMismatch(x.d[0], selected.d[0]) && p != 0 && !(p > 0 && x.d[1] >= 0 && x.d[1] < p)
        && !(p > 0 && selected.d[1] > p);
    if (!ok)
    {
        logError("PoolGatherDynamic: need x [B,n,C], selected [B,k] and p_extent [P] with k <= P <= n; got P="
            + std::to_string(p));
    }
    return ok;
}

int32_t PoolGatherDynamicPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 4)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PoolGatherDynamicPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[3].nbDims != 1)
    {
        return -1;
    }
    DimsExprs const& x = inputs[0];
    IDimensionExpr const* text = exprBuilder.operation(DimensionOperation::kSUB, *x.d[1], *inputs[3].d[0]); // n - P
    outputs[0].nbDims = 3;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = exprBuilder.operation(DimensionOperation::kSUM, *text, *inputs[1].d[1]); // + k
    outputs[0].d[2] = x.d[2];
    return 0;
}

bool PoolGatherDynamicPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case 0: return elementSize(desc.type) > 0;      // x
    case 1:                                         // selected
    case 2: return desc.type == DataType::kINT64;   // visual_start
    case 3: return desc.type == DataType::kINT32;   // p_extent
    case 4: return desc.type == inOut[0].desc.type; // compact
    default: return false;
    }
}

int32_t PoolGatherDynamicPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& x = inputDesc[0].dims;
    PoolShape const shape{x.d[0], x.d[1], x.d[2] * elementSize(inputDesc[0].type), inputDesc[3].dims.d[0],
        inputDesc[1].dims.d[1]};
    cudaError_t const err = launchPoolGather(inputs[0], static_cast<int64_t const*>(inputs[1]),
        static_cast<int64_t const*>(inputs[2]), outputs[0], shape, stream);
    return cudaStatus(err, kPoolGatherDynamicName);
}

// ---------------------------------------------------------------------------------------------
// PoolScatterDynamic(x [B,n,C], compact [B,n-P+k,C], selected [B,k], visual_start [1], p_extent [P])
//   -> out [B,n,C]
// ---------------------------------------------------------------------------------------------

IPluginV3* PoolScatterDynamicPlugin::clone() noexcept
{
    return cloneOf(*this);
}

char const* PoolScatterDynamicPlugin::getPluginName() const noexcept
{
    return kPoolScatterDynamicName;
}

int32_t PoolScatterDynamicPlugin::expectedInputs() const noexcept
{
    return 5;
}

int32_t PoolScatterDynamicPlugin::inputRank(int32_t index) const noexcept
{
    constexpr int32_t kRanks[] = {3, 3, 2, 1, 1};
    return kRanks[index];
}

void PoolScatterDynamicPlugin::appendFields(std::vector<PluginField>& /*fields*/) const
{
}

bool PoolScatterDynamicPlugin::checkDims(Dims const* inputs) const noexcept
{
    Dims const& x = inputs[0];
    Dims const& compact = inputs[1];
    Dims const& selected = inputs[2];
    int64_t const p = inputs[4].d[0];
    bool ok = !knownMismatch(x.d[0], compact.d[0]) && !knownMismatch(x.d[0], selected.d[0])
        && !knownMismatch(x.d[2], compact.d[2]) && p != 0;
    if (ok && p > 0)
    {
        ok = !(x.d[1] >= 0 && x.d[1] < p) && !(selected.d[1] > p);
        if (ok && x.d[1] >= 0 && selected.d[1] >= 0)
        {
            ok = !knownMismatch(compact.d[1], x.d[1] - p + selected.d[1]);
        }
    }
    if (!ok)
    {
        logError("PoolScatterDynamic: need x [B,n,C], compact [B,n-P+k,C], selected [B,k], p_extent [P] with "
                 "k <= P <= n; got P="
            + std::to_string(p));
    }
    return ok;
}

int32_t PoolScatterDynamicPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 5)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PoolScatterDynamicPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 5 || nbOutputs != 1 || inputs[0].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool PoolScatterDynamicPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case 0: return elementSize(desc.type) > 0;      // x
    case 1: return desc.type == inOut[0].desc.type; // compact
    case 2:                                         // selected
    case 3: return desc.type == DataType::kINT64;   // visual_start
    case 4: return desc.type == DataType::kINT32;   // p_extent
    case 5: return desc.type == inOut[0].desc.type; // out
    default: return false;
    }
}

int32_t PoolScatterDynamicPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& x = inputDesc[0].dims;
    PoolShape const shape{x.d[0], x.d[1], x.d[2] * elementSize(inputDesc[0].type), inputDesc[4].dims.d[0],
        inputDesc[2].dims.d[1]};
    cudaError_t const err = launchPoolScatter(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        static_cast<int64_t const*>(inputs[3]), outputs[0], shape, stream);
    return cudaStatus(err, kPoolScatterDynamicName);
}

// ---------------------------------------------------------------------------------------------
// Creators
// ---------------------------------------------------------------------------------------------

PoolDynamicCreatorBase::PoolDynamicCreatorBase(bool usesScale)
    : mUsesScale(usesScale)
{
    if (usesScale)
    {
        mFields.emplace_back("scale", nullptr, PluginFieldType::kFLOAT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.empty() ? nullptr : mFields.data();
}

PluginFieldCollection const* PoolDynamicCreatorBase::getFieldNames() noexcept
{
    return &mCollection;
}

char const* PoolDynamicCreatorBase::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* PoolDynamicCreatorBase::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

IPluginV3* PoolDynamicCreatorBase::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        PoolAttrs attrs; // k and num_candidates stay 0: the extents carry them
        bool haveScale = !mUsesScale;
        for (int32_t i = 0; mUsesScale && fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name != nullptr && std::strcmp(field.name, "scale") == 0)
            {
                haveScale = readFloat(field, attrs.scale) && std::isfinite(attrs.scale);
            }
        }
        if (!haveScale)
        {
            logError(std::string(getPluginName()) + ": missing or malformed attribute (needs a finite float scale)");
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

} // namespace plugin
} // namespace reroute

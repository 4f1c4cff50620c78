// Host-side launchers for the reroute token-pool CUDA kernels.
//
// This header depends only on the CUDA runtime API (no TensorRT), so the kernels can be
// compiled, tested and reused outside the plugin library. Shapes follow the op contracts in
// docs/PLUGINS.md; every tensor is dense, row-major ("linear") and lives on the device.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace reroute
{

//! Largest candidate span PoolSelect accepts (its top-k sorts the span in shared memory).
constexpr int32_t kMaxCandidates = 4096;

//! Element type of PoolSelect's q_last / keys.
enum class FloatKind : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! PoolSelect sizes: q_last [batch, heads, headDim], keys [batch, kvHeads, seqLen, headDim].
struct SelectParams
{
    int32_t batch;
    int32_t heads;
    int32_t kvHeads;
    int32_t seqLen;        //!< n
    int32_t headDim;       //!< hd
    int32_t numCandidates; //!< P
    int32_t k;
    float scale;
    int32_t startStride = 0; //!< visualStart / padLengths entries per sample: 0 (one for the batch) or 1 ([B])
};

//! PoolGather / PoolScatter sizes: x [batch, seqLen, C]; a row is C elements of rowBytes bytes.
struct PoolShape
{
    int64_t batch;
    int64_t seqLen;        //!< n
    int64_t rowBytes;      //!< C * element size
    int64_t numCandidates; //!< P
    int64_t k;             //!< selected.shape[1]; the compact length is n - P + k
    int64_t startStride = 0; //!< visualStart entries per sample: 0 (one for the batch) or 1 ([B])
};

//! Device scratch PoolSelect needs: the per-head candidate probabilities, fp32 [batch, heads, P].
size_t poolSelectWorkspaceBytes(int64_t batch, int64_t heads, int64_t numCandidates);

//! selected [batch, k] int64 <- ascending indices c in [0, P) of the k largest head-averaged
//! softmax probabilities in the span [v0, v0 + P), ties going to the lower index.
//! `workspace` must hold poolSelectWorkspaceBytes(batch, heads, P) bytes (256-byte aligned).
cudaError_t launchPoolSelect(FloatKind kind, void const* qLast, void const* keys, int64_t const* visualStart,
    int64_t* selected, void* workspace, SelectParams const& params, cudaStream_t stream);

//! Mixed (left-padded) batches: as above, with visualStart[b * startStride] the span start of sample b and
//! the first padLengths[b * startStride] keys of sample b (its left padding) left out of the softmax.
//! padLengths may be null (no padding).
cudaError_t launchPoolSelect(FloatKind kind, void const* qLast, void const* keys, int64_t const* visualStart,
    int64_t const* padLengths, int64_t* selected, void* workspace, SelectParams const& params, cudaStream_t stream);

//! out [batch, n - P + k, C] <- rows of x: the text before the span, the selected candidates,
//! then the text after the span (sample b's span starts at visualStart[b * shape.startStride]).
cudaError_t launchPoolGather(void const* x, int64_t const* selected, int64_t const* visualStart, void* out,
    PoolShape const& shape, cudaStream_t stream);

//! out [batch, n, C] <- x with every compact row written back to the position it was gathered from.
//! `out` may alias `x` (the copy is then skipped); it must not overlap `compact`.
cudaError_t launchPoolScatter(void const* x, void const* compact, int64_t const* selected,
    int64_t const* visualStart, void* out, PoolShape const& shape, cudaStream_t stream);

} // namespace reroute

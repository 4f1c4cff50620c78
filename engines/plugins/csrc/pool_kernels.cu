// CUDA kernels for the reroute token-pool ops (PoolSelect, PoolGather, PoolScatter).
//
// PoolSelect runs in two deterministic kernels (no atomics, fixed summation order):
//   1. headProbs, one block per (head, batch): the softmax of the last query row against all n
//      keys, in fp32, written out for the P candidates only -> workspace [B, H, P].
//   2. topK, one block per batch row: mean over heads, then an exact top-k in shared memory
//      (bitonic sort on (score desc, index asc), the ONNX TopK tie rule), then the k winners
//      sorted ascending.
// PoolGather / PoolScatter are row copies; the element type only sets the row width in bytes,
// so one template on the copy word (16, 8, 4, 2 or 1 bytes) serves fp32, fp16, bf16 and int64.
#include "pool_kernels.h"

#include <cuda_fp16.h>

#include <cmath>

namespace reroute
{
namespace
{

constexpr int32_t kWarpSize = 32;
constexpr int32_t kHeadThreads = 256;     // threads per headProbs block (8 warps)
constexpr int32_t kHeadMinBlocksPerSm = 4; // lets ptxas use up to 64 registers (no spills)
constexpr int32_t kMaxTopKThreads = 1024; // threads per topK block, at most
constexpr int32_t kCopyThreads = 256;     // threads per gather/scatter block
constexpr int32_t kMaxGridY = 65535;
constexpr int32_t kMaxHeadDim = 8192; // q row staged in shared memory
constexpr uint16_t kPadIndex = 0xFFFF; // > any candidate index (P <= 4096)

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

__device__ __forceinline__ float warpSum(float v)
{
    for (int32_t offset = kWarpSize / 2; offset > 0; offset >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v; // every lane holds the same total
}

//! v0 clamped so that the span [v0, v0 + P) lies inside [0, n) (callers guarantee n >= P).
//! Valid inputs are unaffected; invalid ones cannot read or write out of bounds.
__device__ __forceinline__ int64_t loadVisualStart(int64_t const* visualStart, int64_t n, int64_t P)
{
    int64_t const v0 = *visualStart;
    return v0 < 0 ? 0 : (v0 > n - P ? n - P : v0);
}

//! Position in the n-token sequence of compact slot s (PoolGather's source, PoolScatter's target).
//! `sel` is this batch row of `selected`; entries are clamped into [0, P) for memory safety.
__device__ __forceinline__ int64_t compactSource(
    int64_t s, int64_t v0, int64_t P, int64_t k, int64_t const* __restrict__ sel)
{
    if (s < v0)
    {
        return s;
    }
    if (s < v0 + k)
    {
        int64_t const c = sel[s - v0];
        return v0 + (c < 0 ? 0 : (c >= P ? P - 1 : c));
    }
    return s + (P - k);
}

// ---------------------------------------------------------------------------------------------
// PoolSelect, kernel 1: per-head softmax probabilities of the candidates
// ---------------------------------------------------------------------------------------------

//! Running softmax normaliser: max logit m and sum of exp(logit - m).
struct MaxSum
{
    float m;
    float s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b)
{
    if (b.s == 0.f)
    {
        return a;
    }
    if (a.s == 0.f)
    {
        return b;
    }
    float const m = fmaxf(a.m, b.m);
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

//! scale * dot(q, key) for one key row, computed by a whole warp (lanes stride over hd).
template <typename T>
__device__ __forceinline__ float warpLogit(
    float const* qShared, T const* __restrict__ keyRow, int32_t headDim, float scale, int32_t lane)
{
    float acc = 0.f;
    for (int32_t d = lane; d < headDim; d += kWarpSize)
    {
        acc += qShared[d] * toFloat(keyRow[d]);
    }
    return scale * warpSum(acc);
}

//! Softmax normaliser of one head's logits over all n keys, reduced across the block.
//! Keys [firstKey, n): the sample's left padding (keys before firstKey) never enters the softmax.
template <typename T>
__device__ MaxSum blockSoftmaxNorm(
    float const* qShared, T const* __restrict__ keys, SelectParams const& p, int64_t firstKey, MaxSum* warpStates)
{
    int32_t const lane = threadIdx.x % kWarpSize;
    int32_t const warp = threadIdx.x / kWarpSize;
    int32_t const nWarps = blockDim.x / kWarpSize;

    MaxSum state{-INFINITY, 0.f};
    for (int64_t j = firstKey + warp; j < p.seqLen; j += nWarps)
    {
        float const logit = warpLogit(qShared, keys + int64_t(j) * p.headDim, p.headDim, p.scale, lane);
        state = combine(state, MaxSum{logit, 1.f});
    }
    if (lane == 0)
    {
        warpStates[warp] = state;
    }
    __syncthreads();

    // Every thread folds the per-warp states in the same fixed order: deterministic, no broadcast.
    MaxSum total = warpStates[0];
    for (int32_t w = 1; w < nWarps; ++w)
    {
        total = combine(total, warpStates[w]);
    }
    return total;
}

//! grid (heads, batch). probs[b, h, c] = softmax_j(scale * q[b,h] . keys[b,g,j])[v0 + c].
template <typename T>
__global__ void __launch_bounds__(kHeadThreads, kHeadMinBlocksPerSm)
    poolSelectHeadProbsKernel(T const* __restrict__ qLast, T const* __restrict__ keys,
        int64_t const* __restrict__ visualStart, int64_t const* __restrict__ padLengths, float* __restrict__ probs,
        SelectParams p)
{
    extern __shared__ float headShared[];
    float* qShared = headShared;                                           // [headDim]
    MaxSum* warpStates = reinterpret_cast<MaxSum*>(headShared + p.headDim); // [nWarps]

    int32_t const h = blockIdx.x;
    int32_t const b = blockIdx.y;
    int32_t const group = h / (p.heads / p.kvHeads); // GQA: query head h reads KV head h / (H / KVH)

    T const* q = qLast + (int64_t(b) * p.heads + h) * p.headDim;
    for (int32_t d = threadIdx.x; d < p.headDim; d += blockDim.x)
    {
        qShared[d] = toFloat(q[d]);
    }
    __syncthreads();

    int64_t const v0 = loadVisualStart(visualStart + int64_t(b) * p.startStride, p.seqLen, p.numCandidates);
    // padding precedes the span: clamped into [0, v0] so the span's own keys always stay in
    int64_t const padding = padLengths == nullptr ? 0 : padLengths[int64_t(b) * p.startStride];
    int64_t const firstKey = padding < 0 ? 0 : (padding > v0 ? v0 : padding);
    T const* headKeys = keys + (int64_t(b) * p.kvHeads + group) * p.seqLen * p.headDim;
    MaxSum const norm = blockSoftmaxNorm(qShared, headKeys, p, firstKey, warpStates);

    // Second pass over the candidate span only: recompute its logits and normalise.
    int32_t const lane = threadIdx.x % kWarpSize;
    int32_t const warp = threadIdx.x / kWarpSize;
    int32_t const nWarps = blockDim.x / kWarpSize;
    float* out = probs + (int64_t(b) * p.heads + h) * p.numCandidates;
    for (int32_t c = warp; c < p.numCandidates; c += nWarps)
    {
        float const logit = warpLogit(qShared, headKeys + (v0 + c) * p.headDim, p.headDim, p.scale, lane);
        if (lane == 0)
        {
            out[c] = expf(logit - norm.m) / norm.s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PoolSelect, kernel 2: exact top-k per batch row
// ---------------------------------------------------------------------------------------------

//! Maps a float to a uint32 whose unsigned order is the float order (-0 and +0 made equal).
//! Key 0 is only produced by the all-ones NaN; padding uses key 0 with kPadIndex, so it always
//! sorts after every real candidate.
__device__ __forceinline__ uint32_t orderedKey(float v)
{
    uint32_t const bits = __float_as_uint(v == 0.f ? 0.f : v);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

//! In-place bitonic sort of n (a power of two) shared-memory slots by the strict order
//! `order.before(i, j)`, which must be total on the slots (it is: indices are distinct).
//! Pairs within a stage are disjoint, so one __syncthreads per stage is enough.
template <typename Order>
__device__ void bitonicSort(int32_t n, Order order)
{
    for (int32_t size = 2; size <= n; size <<= 1)
    {
        for (int32_t stride = size >> 1; stride > 0; stride >>= 1)
        {
            for (int32_t i = threadIdx.x; i < n; i += blockDim.x)
            {
                int32_t const j = i ^ stride;
                if (j > i)
                {
                    bool const ascending = (i & size) == 0; // final pass (size == n): all ascending
                    if (ascending ? order.before(j, i) : order.before(i, j))
                    {
                        order.swap(i, j);
                    }
                }
            }
            __syncthreads();
        }
    }
}

//! Score descending, then candidate index ascending: ONNX TopK(largest=1) with its tie rule.
struct ByScoreThenIndex
{
    uint32_t* key;
    uint16_t* index;

    __device__ bool before(int32_t a, int32_t b) const
    {
        return key[a] > key[b] || (key[a] == key[b] && index[a] < index[b]);
    }

    __device__ void swap(int32_t a, int32_t b) const
    {
        uint32_t const k = key[a];
        key[a] = key[b];
        key[b] = k;
        uint16_t const i = index[a];
        index[a] = index[b];
        index[b] = i;
    }
};

//! Candidate index ascending (the output order of `selected`).
struct ByIndex
{
    uint16_t* index;

    __device__ bool before(int32_t a, int32_t b) const
    {
        return index[a] < index[b];
    }

    __device__ void swap(int32_t a, int32_t b) const
    {
        uint16_t const i = index[a];
        index[a] = index[b];
        index[b] = i;
    }
};

//! grid (batch). Head-average the candidate probabilities, keep the top k, sort them ascending.
//! padP / padK are P and k rounded up to powers of two (the bitonic network sizes).
__global__ void poolSelectTopKKernel(
    float const* __restrict__ probs, int64_t* __restrict__ selected, SelectParams p, int32_t padP, int32_t padK)
{
    extern __shared__ uint32_t topkShared[];
    uint32_t* key = topkShared;                                // [padP]
    uint16_t* index = reinterpret_cast<uint16_t*>(key + padP); // [padP]

    int32_t const b = blockIdx.x;
    float const* rowProbs = probs + int64_t(b) * p.heads * p.numCandidates;
    for (int32_t c = threadIdx.x; c < padP; c += blockDim.x)
    {
        if (c < p.numCandidates)
        {
            float sum = 0.f; // heads summed in order 0..H-1, as a sequential ReduceMean would
            for (int32_t h = 0; h < p.heads; ++h)
            {
                sum += rowProbs[int64_t(h) * p.numCandidates + c];
            }
            key[c] = orderedKey(sum / float(p.heads));
            index[c] = static_cast<uint16_t>(c);
        }
        else
        {
            key[c] = 0u;
            index[c] = kPadIndex;
        }
    }
    __syncthreads();

    bitonicSort(padP, ByScoreThenIndex{key, index}); // winners now in slots [0, k)

    for (int32_t r = p.k + threadIdx.x; r < padK; r += blockDim.x)
    {
        index[r] = kPadIndex; // drop the losers from the second, smaller network
    }
    __syncthreads();

    bitonicSort(padK, ByIndex{index});

    for (int32_t r = threadIdx.x; r < p.k; r += blockDim.x)
    {
        selected[int64_t(b) * p.k + r] = index[r];
    }
}

// ---------------------------------------------------------------------------------------------
// PoolGather / PoolScatter: row copies
// ---------------------------------------------------------------------------------------------

//! Grid-stride over compact rows (grid.y) and the words of each row (grid.x, threads).
//! Gather: out[b, s] = x[b, src(s)]. Scatter: out[b, src(s)] = compact[b, s].
template <typename W, bool kScatter>
__global__ void poolCopyRowsKernel(W const* __restrict__ src, W* __restrict__ dst,
    int64_t const* __restrict__ selected, int64_t const* __restrict__ visualStart, int64_t batch, int64_t n,
    int64_t words, int64_t P, int64_t k, int64_t startStride)
{
    int64_t const m = n - P + k;
    for (int64_t row = blockIdx.y; row < batch * m; row += gridDim.y)
    {
        int64_t const b = row / m;
        int64_t const s = row - b * m;
        int64_t const v0 = loadVisualStart(visualStart + b * startStride, n, P); // this sample's span
        int64_t const seqRow = b * n + compactSource(s, v0, P, k, selected + b * k);
        W const* in = src + (kScatter ? row : seqRow) * words;
        W* out = dst + (kScatter ? seqRow : row) * words;
        for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
             w += int64_t(gridDim.x) * blockDim.x)
        {
            out[w] = in[w];
        }
    }
}

//! Widest copy word (16, 8, 4, 2 or 1 bytes) that divides the row and aligns every pointer.
int32_t copyWordBytes(int64_t rowBytes, void const* a, void const* b)
{
    int32_t width = 16;
    auto const misaligned = [&](int32_t w) {
        return rowBytes % w != 0 || reinterpret_cast<uintptr_t>(a) % w != 0
            || reinterpret_cast<uintptr_t>(b) % w != 0;
    };
    while (width > 1 && misaligned(width))
    {
        width /= 2;
    }
    return width;
}

template <typename W, bool kScatter>
cudaError_t launchCopyRows(void const* src, void* dst, int64_t const* selected, int64_t const* visualStart,
    PoolShape const& s, cudaStream_t stream)
{
    int64_t const words = s.rowBytes / int64_t(sizeof(W));
    int64_t const rows = s.batch * (s.seqLen - s.numCandidates + s.k);
    if (rows <= 0 || words <= 0)
    {
        return cudaSuccess;
    }
    int64_t const blocksX = (words + kCopyThreads - 1) / kCopyThreads;
    dim3 const grid(static_cast<uint32_t>(blocksX < 1024 ? blocksX : 1024),
        static_cast<uint32_t>(rows < kMaxGridY ? rows : kMaxGridY));
    poolCopyRowsKernel<W, kScatter><<<grid, kCopyThreads, 0, stream>>>(static_cast<W const*>(src),
        static_cast<W*>(dst), selected, visualStart, s.batch, s.seqLen, words, s.numCandidates, s.k, s.startStride);
    return cudaGetLastError();
}

template <bool kScatter>
cudaError_t dispatchCopyRows(void const* src, void* dst, int64_t const* selected, int64_t const* visualStart,
    PoolShape const& s, cudaStream_t stream)
{
    switch (copyWordBytes(s.rowBytes, src, dst))
    {
    case 16: return launchCopyRows<uint4, kScatter>(src, dst, selected, visualStart, s, stream);
    case 8: return launchCopyRows<uint2, kScatter>(src, dst, selected, visualStart, s, stream);
    case 4: return launchCopyRows<uint32_t, kScatter>(src, dst, selected, visualStart, s, stream);
    case 2: return launchCopyRows<uint16_t, kScatter>(src, dst, selected, visualStart, s, stream);
    default: return launchCopyRows<uint8_t, kScatter>(src, dst, selected, visualStart, s, stream);
    }
}

bool validPoolShape(PoolShape const& s)
{
    return s.batch >= 0 && s.rowBytes >= 0 && s.numCandidates >= 1 && s.k >= 0 && s.k <= s.numCandidates
        && s.seqLen >= s.numCandidates && (s.startStride == 0 || s.startStride == 1);
}

bool validSelectParams(SelectParams const& p)
{
    bool const sizes = p.batch >= 0 && p.batch <= kMaxGridY && p.heads >= 1 && p.kvHeads >= 1
        && p.heads % p.kvHeads == 0 && p.headDim >= 1 && p.headDim <= kMaxHeadDim;
    return sizes && p.numCandidates >= 1 && p.numCandidates <= kMaxCandidates && p.k >= 1
        && p.k <= p.numCandidates && p.seqLen >= p.numCandidates && (p.startStride == 0 || p.startStride == 1);
}

int32_t nextPow2(int32_t v)
{
    int32_t r = 1;
    while (r < v)
    {
        r <<= 1;
    }
    return r;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Public launchers
// ---------------------------------------------------------------------------------------------

size_t poolSelectWorkspaceBytes(int64_t batch, int64_t heads, int64_t numCandidates)
{
    return static_cast<size_t>(batch * heads * numCandidates) * sizeof(float);
}

cudaError_t launchPoolSelect(FloatKind kind, void const* qLast, void const* keys, int64_t const* visualStart,
    int64_t* selected, void* workspace, SelectParams const& params, cudaStream_t stream)
{
    return launchPoolSelect(kind, qLast, keys, visualStart, nullptr, selected, workspace, params, stream);
}

cudaError_t launchPoolSelect(FloatKind kind, void const* qLast, void const* keys, int64_t const* visualStart,
    int64_t const* padLengths, int64_t* selected, void* workspace, SelectParams const& params, cudaStream_t stream)
{
    if (!validSelectParams(params))
    {
        return cudaErrorInvalidValue;
    }
    if (params.batch == 0)
    {
        return cudaSuccess;
    }
    auto* probs = static_cast<float*>(workspace);

    dim3 const headGrid(params.heads, params.batch);
    size_t const headSmem = params.headDim * sizeof(float) + (kHeadThreads / kWarpSize) * sizeof(MaxSum);
    if (kind == FloatKind::kFloat16)
    {
        poolSelectHeadProbsKernel<__half><<<headGrid, kHeadThreads, headSmem, stream>>>(
            static_cast<__half const*>(qLast), static_cast<__half const*>(keys), visualStart, padLengths, probs,
            params);
    }
    else
    {
        poolSelectHeadProbsKernel<float><<<headGrid, kHeadThreads, headSmem, stream>>>(
            static_cast<float const*>(qLast), static_cast<float const*>(keys), visualStart, padLengths, probs,
            params);
    }
    cudaError_t const err = cudaGetLastError();
    if (err != cudaSuccess)
    {
        return err;
    }

    int32_t const padP = nextPow2(params.numCandidates);
    int32_t const padK = nextPow2(params.k);
    int32_t threads = padP / 2; // one thread per compare-exchange pair
    threads = threads < kWarpSize ? kWarpSize : (threads > kMaxTopKThreads ? kMaxTopKThreads : threads);
    size_t const topkSmem = padP * (sizeof(uint32_t) + sizeof(uint16_t)); // <= 24 KiB
    poolSelectTopKKernel<<<params.batch, threads, topkSmem, stream>>>(probs, selected, params, padP, padK);
    return cudaGetLastError();
}

cudaError_t launchPoolGather(void const* x, int64_t const* selected, int64_t const* visualStart, void* out,
    PoolShape const& shape, cudaStream_t stream)
{
    if (!validPoolShape(shape))
    {
        return cudaErrorInvalidValue;
    }
    return dispatchCopyRows<false>(x, out, selected, visualStart, shape, stream);
}

cudaError_t launchPoolScatter(void const* x, void const* compact, int64_t const* selected,
    int64_t const* visualStart, void* out, PoolShape const& shape, cudaStream_t stream)
{
    if (!validPoolShape(shape))
    {
        return cudaErrorInvalidValue;
    }
    if (out != x)
    {
        size_t const bytes = static_cast<size_t>(shape.batch * shape.seqLen * shape.rowBytes);
        cudaError_t const err = cudaMemcpyAsync(out, x, bytes, cudaMemcpyDeviceToDevice, stream);
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    return dispatchCopyRows<true>(compact, out, selected, visualStart, shape, stream);
}

} // namespace reroute

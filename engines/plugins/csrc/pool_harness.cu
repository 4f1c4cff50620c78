// ctypes harness for the token-pool kernels: runs them on a GPU without TensorRT.
//
// Why host-pointer wrappers (and not CuPy RawModule on the cubin): the plugins call the host
// launchers in pool_kernels.cu, which pick grid sizes, shared memory, the copy word width and the
// scatter's memcpy. Calling the same launchers tests exactly the launch configurations TensorRT
// uses; a RawModule would have to re-implement them in Python (and the kernels are templates in an
// anonymous namespace, so their mangled names are not a stable API). Each function copies its
// inputs to the device, launches on the legacy default stream, synchronises and copies back, so
// the Python side needs only numpy and ctypes (no CuPy, no torch).
//
// Every function returns a cudaError_t as int (0 = success). `misalign` shifts the device
// pointers of x / out by that many bytes to exercise the narrower copy words.
#include "pool_kernels.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace
{

//! Device buffer freed on scope exit, so an early error return leaks nothing.
struct DeviceBuffer
{
    void* base = nullptr;
    cudaError_t err = cudaSuccess;

    DeviceBuffer(size_t bytes)
    {
        err = cudaMalloc(&base, bytes == 0 ? 1 : bytes);
    }
    ~DeviceBuffer()
    {
        if (base != nullptr)
        {
            cudaFree(base);
        }
    }
    char* at(size_t offset) const
    {
        return static_cast<char*>(base) + offset;
    }
};

#define HARNESS_CHECK(expr)                                                                                            \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const status_ = (expr);                                                                            \
        if (status_ != cudaSuccess)                                                                                    \
        {                                                                                                              \
            return static_cast<int>(status_);                                                                          \
        }                                                                                                              \
    } while (0)

//! Launch result, then the kernel's own (asynchronous) errors.
int finish(cudaError_t launched)
{
    HARNESS_CHECK(launched);
    HARNESS_CHECK(cudaDeviceSynchronize());
    return static_cast<int>(cudaGetLastError());
}

} // namespace

extern "C"
{

//! Number of visible CUDA devices, or -(cudaError_t) when the runtime cannot start.
int rr_device_count()
{
    int count = 0;
    cudaError_t const err = cudaGetDeviceCount(&count);
    return err == cudaSuccess ? count : -static_cast<int>(err);
}

char const* rr_error_string(int code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

//! selected [batch, k] int64 (host) <- PoolSelect(q [batch, heads, headDim], keys
//! [batch, kvHeads, seqLen, headDim]); `fp16` selects __half inputs (else fp32). `v0`: nStarts span starts
//! (1: one for the batch, or batch: per sample); `pad`: null, or nStarts left-padding counts.
int rr_pool_select(int fp16, void const* q, void const* keys, int64_t const* v0, int64_t const* pad, int nStarts,
    int64_t* selected, int batch, int heads, int kvHeads, int seqLen, int headDim, int numCandidates, int k,
    float scale)
{
    reroute::SelectParams const p{batch, heads, kvHeads, seqLen, headDim, numCandidates, k, scale, nStarts == 1 ? 0 : 1};
    size_t const startBytes = size_t(nStarts) * sizeof(int64_t);
    size_t const elem = fp16 ? 2 : 4;
    size_t const qBytes = size_t(batch) * heads * headDim * elem;
    size_t const keyBytes = size_t(batch) * kvHeads * seqLen * headDim * elem;
    size_t const selBytes = size_t(batch) * k * sizeof(int64_t);
    DeviceBuffer dq(qBytes), dk(keyBytes), dv0(startBytes), dpad(startBytes), dsel(selBytes),
        dws(reroute::poolSelectWorkspaceBytes(batch, heads, numCandidates));
    for (DeviceBuffer const* b : {&dq, &dk, &dv0, &dpad, &dsel, &dws})
    {
        HARNESS_CHECK(b->err);
    }
    HARNESS_CHECK(cudaMemcpy(dq.base, q, qBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dk.base, keys, keyBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dv0.base, v0, startBytes, cudaMemcpyHostToDevice));
    if (pad != nullptr)
    {
        HARNESS_CHECK(cudaMemcpy(dpad.base, pad, startBytes, cudaMemcpyHostToDevice));
    }
    auto const kind = fp16 ? reroute::FloatKind::kFloat16 : reroute::FloatKind::kFloat32;
    int const rc = finish(reroute::launchPoolSelect(kind, dq.base, dk.base, static_cast<int64_t const*>(dv0.base),
        pad == nullptr ? nullptr : static_cast<int64_t const*>(dpad.base), static_cast<int64_t*>(dsel.base),
        dws.base, p, nullptr));
    if (rc != 0)
    {
        return rc;
    }
    return static_cast<int>(cudaMemcpy(selected, dsel.base, selBytes, cudaMemcpyDeviceToHost));
}

//! out [batch, n - P + k, rowBytes] (host) <- PoolGather(x [batch, n, rowBytes]).
int rr_pool_gather(void const* x, int64_t const* selected, int64_t const* v0, int64_t nStarts, void* out,
    int64_t batch, int64_t seqLen, int64_t rowBytes, int64_t numCandidates, int64_t k, int misalign)
{
    reroute::PoolShape const s{batch, seqLen, rowBytes, numCandidates, k, nStarts == 1 ? 0 : 1};
    size_t const startBytes = size_t(nStarts) * sizeof(int64_t);
    size_t const xBytes = size_t(batch * seqLen * rowBytes);
    size_t const outBytes = size_t(batch * (seqLen - numCandidates + k) * rowBytes);
    size_t const selBytes = size_t(batch * k) * sizeof(int64_t);
    DeviceBuffer dx(xBytes + misalign), dout(outBytes + misalign), dsel(selBytes), dv0(startBytes);
    for (DeviceBuffer const* b : {&dx, &dout, &dsel, &dv0})
    {
        HARNESS_CHECK(b->err);
    }
    HARNESS_CHECK(cudaMemcpy(dx.at(misalign), x, xBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dsel.base, selected, selBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dv0.base, v0, startBytes, cudaMemcpyHostToDevice));
    int const rc = finish(reroute::launchPoolGather(dx.at(misalign), static_cast<int64_t const*>(dsel.base),
        static_cast<int64_t const*>(dv0.base), dout.at(misalign), s, nullptr));
    if (rc != 0)
    {
        return rc;
    }
    return static_cast<int>(cudaMemcpy(out, dout.at(misalign), outBytes, cudaMemcpyDeviceToHost));
}

//! out [batch, n, rowBytes] (host) <- PoolScatter(x, compact [batch, n - P + k, rowBytes]).
//! `inPlace` passes out == x (the launcher then skips its copy).
int rr_pool_scatter(void const* x, void const* compact, int64_t const* selected, int64_t const* v0,
    int64_t nStarts, void* out, int64_t batch, int64_t seqLen, int64_t rowBytes, int64_t numCandidates, int64_t k,
    int misalign, int inPlace)
{
    reroute::PoolShape const s{batch, seqLen, rowBytes, numCandidates, k, nStarts == 1 ? 0 : 1};
    size_t const startBytes = size_t(nStarts) * sizeof(int64_t);
    size_t const xBytes = size_t(batch * seqLen * rowBytes);
    size_t const cBytes = size_t(batch * (seqLen - numCandidates + k) * rowBytes);
    size_t const selBytes = size_t(batch * k) * sizeof(int64_t);
    DeviceBuffer dx(xBytes + misalign), dc(cBytes + misalign), dout(xBytes + misalign), dsel(selBytes),
        dv0(startBytes);
    for (DeviceBuffer const* b : {&dx, &dc, &dout, &dsel, &dv0})
    {
        HARNESS_CHECK(b->err);
    }
    HARNESS_CHECK(cudaMemcpy(dx.at(misalign), x, xBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dc.at(misalign), compact, cBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dsel.base, selected, selBytes, cudaMemcpyHostToDevice));
    HARNESS_CHECK(cudaMemcpy(dv0.base, v0, startBytes, cudaMemcpyHostToDevice));
    char* const target = inPlace ? dx.at(misalign) : dout.at(misalign);
    int const rc = finish(reroute::launchPoolScatter(dx.at(misalign), dc.at(misalign),
        static_cast<int64_t const*>(dsel.base), static_cast<int64_t const*>(dv0.base), target, s, nullptr));
    if (rc != 0)
    {
        return rc;
    }
    return static_cast<int>(cudaMemcpy(out, target, xBytes, cudaMemcpyDeviceToHost));
}

} // extern "C"

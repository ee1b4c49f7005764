// CUDA channel-wise (depthwise) convolution of the framework-free core: the
// GPU twin of kernels/core/depthwise.h, with the same sums in the same
// order (bit for bit where both compilers contract a * b + c the same way:
// the x86-64-v3 CPU build and nvcc both fuse) and the conventions of
// core_gpu.h (raw device pointers, caller workspace, a stream).
//
// Forward and input gradient are output-stationary: a [K, rows] table of
// each row's pair per offset (built with an atomic min, so a row given two
// pairs of one offset keeps the smaller, deterministically), then one
// thread per (row, channel) applies the offsets in order. The weight
// gradient sums the CPU's fixed segments of pairs, then the segments of
// each offset in order. No float atomics.
#ifndef SPARSE_OPS_KERNELS_CUDA_DEPTHWISE_GPU_H_
#define SPARSE_OPS_KERNELS_CUDA_DEPTHWISE_GPU_H_

#include <cstddef>
#include <cstdint>

#include "kernels/core/status.h"
#include "kernels/cuda/core_gpu.h"

namespace sparse_ops {
namespace gpu {

// out [n_out, C * M] as DepthwiseConv(transpose = false); W [K, C, M].
size_t DepthwiseConvWorkspaceBytes(int64_t num_offsets, int64_t n_out);
template <typename T>
Status DepthwiseConv(const T* in, int64_t n_in, int64_t channels,
                     int64_t multiplier, const T* weights,
                     const DeviceKernelMap& map, int64_t n_out, T* out,
                     void* workspace, size_t workspace_bytes, GpuStream stream);

// grad_in [n_in, C] from grad_out [n_out, C * M]. With `check` (after
// CheckKernelMap into it), an input row repeated within an offset is
// reported there, as the CPU's transposition refuses it.
size_t DepthwiseConvBackpropInputWorkspaceBytes(int64_t num_offsets,
                                                int64_t n_in);
template <typename T>
Status DepthwiseConvBackpropInput(const T* grad_out, int64_t n_out,
                                  int64_t channels, int64_t multiplier,
                                  const T* weights, const DeviceKernelMap& map,
                                  int64_t n_in, T* grad_in, void* workspace,
                                  size_t workspace_bytes, GpuStream stream,
                                  KernelMapCheck* check = nullptr);

// grad_weights [K, C, M].
template <typename T>
size_t DepthwiseConvBackpropKernelWorkspaceBytes(int64_t num_offsets,
                                                 int64_t num_pairs,
                                                 int64_t channels,
                                                 int64_t multiplier);
template <typename T>
Status DepthwiseConvBackpropKernel(const T* in, int64_t n_in, int64_t channels,
                                   int64_t multiplier, const T* grad_out,
                                   int64_t n_out, const DeviceKernelMap& map,
                                   T* grad_weights, void* workspace,
                                   size_t workspace_bytes, GpuStream stream);

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_DEPTHWISE_GPU_H_

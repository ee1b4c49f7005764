// CUDA pooling of the framework-free core: the GPU twins of
// kernels/core/pool.h, with the same results bit for bit (the same sums in
// the same order, the same ties; averaged unpooling to the last bit, see
// pool_gpu.cu.cc) and the conventions of core_gpu.h (raw
// device pointers, caller workspace, a stream; nothing allocates).
//
// Deterministic without float atomics: max and sum pooling are output-
// stationary (one warp per output row applies the offsets in order);
// the max-pool gradient sorts its (input row, channel) targets stably and
// sums each target's terms in output-row order; the global pools sort rows
// by batch item stably and reduce the CPU's fixed chunks of 2048 rows, then
// the chunks of an item in order.
//
// Index inputs a user may give (argmax, batch_index) are checked on the
// device into an IndexCheck; bad entries are skipped (never read through),
// and the op reads the check back and fails with the CPU's message.
#ifndef SPARSE_OPS_KERNELS_CUDA_POOL_GPU_H_
#define SPARSE_OPS_KERNELS_CUDA_POOL_GPU_H_

#include <cstddef>
#include <cstdint>

#include "kernels/core/status.h"
#include "kernels/cuda/core_gpu.h"

namespace sparse_ops {
namespace gpu {

// The first bad entry of an index input (all ones: none) and its value.
struct IndexCheck {
  uint64_t bad;
  int32_t value;
  int32_t pad;
};
// "argmax entry J is V, out of range [-1, n_in)", as ValidateArgmax.
Status ArgmaxCheckStatus(const IndexCheck& check, int64_t n_in);
// "batch index of row I is V, out of range [0, B)", as GroupByBatch.
Status BatchCheckStatus(const IndexCheck& check, int64_t num_batches);

// out[o, c] = max over the pairs (i, o) of in[i, c]; argmax[o, c] = i (ties:
// the first in offset order), or -1 and out 0 for rows without pairs.
template <typename T>
Status MaxPool(const T* in, int64_t n_in, int64_t channels,
               const DeviceKernelMap& map, int64_t n_out, T* out,
               int32_t* argmax, GpuStream stream);

// grad_in[i, c] = sum over o with argmax[o, c] == i of grad_out[o, c], in
// increasing o. Entries outside [-1, n_in) go to `check`.
template <typename T>
size_t MaxPoolGradWorkspaceBytes(int64_t n_out, int64_t channels, int64_t n_in);
template <typename T>
Status MaxPoolGrad(const T* grad_out, const int32_t* argmax, int64_t channels,
                   int64_t n_out, int64_t n_in, T* grad_in, IndexCheck* check,
                   void* workspace, size_t workspace_bytes, GpuStream stream);

// out[o] = sum over the pairs (i, o) of in[i] in offset order, divided by
// the pair count of o when `average` (and it is >= 2).
template <typename T>
Status SumPool(const T* in, int64_t n_in, int64_t channels,
               const DeviceKernelMap& map, int64_t n_out, bool average, T* out,
               GpuStream stream);

// The transpose: out[i] = sum over the pairs (i, o) in offset order of
// in[o] (times 1 / pair count of o when `average`); in is [n_out, C].
// `check` as in TransposeKernelMap (repeated input rows).
template <typename T>
size_t SumPoolTransposeWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                      int64_t n_in, int64_t n_out);
template <typename T>
Status SumPoolTranspose(const T* in, int64_t n_out, int64_t channels,
                        const DeviceKernelMap& map, int64_t n_in, bool average,
                        T* out, void* workspace, size_t workspace_bytes,
                        GpuStream stream, KernelMapCheck* check = nullptr);

// Global pools over the rows of each batch item (batch [n]; entries
// outside [0, num_batches) go to `check`). Max: argmax the row (ties: the
// lowest), -1 and 0 for empty items. Sum: divided by the row count when
// `average` (and it is >= 2).
template <typename T>
size_t GlobalPoolWorkspaceBytes(int64_t n, int64_t channels,
                                int64_t num_batches);
template <typename T>
Status GlobalMaxPool(const T* in, int64_t n, int64_t channels,
                     const int32_t* batch, int64_t num_batches, T* out,
                     int32_t* argmax, IndexCheck* check, void* workspace,
                     size_t workspace_bytes, GpuStream stream);
template <typename T>
Status GlobalSumPool(const T* in, int64_t n, int64_t channels,
                     const int32_t* batch, int64_t num_batches, bool average,
                     T* out, IndexCheck* check, void* workspace,
                     size_t workspace_bytes, GpuStream stream);

// out[i] = grad[batch[i]] (times 1 / rows of that item when `average`).
size_t GlobalSumPoolGradWorkspaceBytes(int64_t num_batches, int64_t channels);
template <typename T>
Status GlobalSumPoolGrad(const T* grad, int64_t channels, const int32_t* batch,
                         int64_t n, int64_t num_batches, bool average, T* out,
                         IndexCheck* check, void* workspace,
                         size_t workspace_bytes, GpuStream stream);

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_POOL_GPU_H_

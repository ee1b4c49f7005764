// CUDA k-selection attention of the framework-free core: the GPU twin of
// kernels/core/attention.h, with the same kept entries (the same ranking
// keys: NaN as -inf, -0 as +0; ties to the lower row) and the conventions
// of core_gpu.h (raw device pointers, caller workspace, a stream; nothing
// allocates).
//
// Where the CPU selects per (batch item, channel) with a histogram and
// nth_element, the GPU ranks every entry with two stable radix sorts: by
// key descending, then by (batch item, channel); an entry is kept when its
// rank within its (batch item, channel) is below k. Deterministic, no
// atomics on values.
#ifndef SPARSE_OPS_KERNELS_CUDA_ATTENTION_GPU_H_
#define SPARSE_OPS_KERNELS_CUDA_ATTENTION_GPU_H_

#include <cstddef>
#include <cstdint>

#include "kernels/core/attention.h"
#include "kernels/core/status.h"
#include "kernels/cuda/core_gpu.h"

namespace sparse_ops {
namespace gpu {

// Written by AttentionKeep; the op reads it back once (num_rows sizes its
// rows output).
struct AttentionInfo {
  uint64_t
      negative_row;  // first row with a negative batch index (all ones: none)
  int64_t num_rows;  // rows with at least one kept entry
  int32_t negative_value;
  int32_t pad;
};

// "coordinates row R has a negative batch index V", as the CPU op.
Status AttentionInfoStatus(const AttentionInfo& info);

// keep [n, channels] as the CPU's AttentionKeep (batch item = column 0 of
// coords [n, dims]), and the kept rows (ascending) left in the workspace
// for AttentionKeptRows. The entries ranked (n * channels, or n per site)
// must be fewer than 2^31 - 1.
template <typename T>
size_t AttentionWorkspaceBytes(int64_t n, int64_t channels, AttentionPer per);
template <typename T>
Status AttentionKeep(const T* features, int64_t n, int64_t channels,
                     const int32_t* coords, int dims, int64_t k,
                     AttentionMode mode, AttentionPer per, bool* keep,
                     AttentionInfo* info, void* workspace,
                     size_t workspace_bytes, GpuStream stream);

// Copies the num_rows (info->num_rows, read back) kept rows into rows.
template <typename T>
Status AttentionKeptRows(int64_t n, int64_t channels, AttentionPer per,
                         int64_t num_rows, int32_t* rows, void* workspace,
                         size_t workspace_bytes, GpuStream stream);

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_ATTENTION_GPU_H_

// CUDA half of the framework-free core: the kernel map (key layout from the
// data, coordinate hash table, neighbour search, per-offset CSR pairs) and
// the convolution over a kernel map (forward, input and weight gradients).
//
// Same contracts as the CPU core (kernels/core/coordinates.h, conv.h): the
// same 64-bit key layout as KeyPacker, the same kernel-map format
// (offset_splits int64 [K + 1], in_rows / out_rows int32 [P], sorted by
// output row within each offset), and deterministic arithmetic: no atomics
// on values, every sum taken in a fixed order, so two runs are bitwise equal.
//
// Conventions:
// - Every pointer is device memory unless its comment says "host".
// - Work is enqueued on `stream` and runs asynchronously; the functions
//   return an error Status only for bad sizes or a failed launch. Errors
//   that depend on the data (duplicate sites, keys wider than 63 bits,
//   negative batch indices, malformed kernel maps) are written to small
//   device "info" structs that the caller copies back and turns into a
//   Status with KernelMapInfoStatus / KernelMapCheckStatus.
// - Temporary memory is the caller's: each entry point has a *WorkspaceBytes
//   function, and takes `workspace` (aligned to at least 16 bytes; cudaMalloc
//   and TF's allocator give 256) of at least that many bytes. Nothing
//   allocates.
// - Memory safety does not depend on valid inputs: every index read from a
//   kernel map is range-checked before use, so a malformed map gives wrong
//   numbers, never an out-of-bounds access (CheckKernelMap says which).
// - The key layout, packing and hashing are kernels/core/key_layout.h,
//   compiled by both g++ and nvcc, so GPU keys are the CPU's.
// - This header needs no CUDA header: GpuStream is cudaStream_t.
#ifndef SPARSE_OPS_KERNELS_CUDA_CORE_GPU_H_
#define SPARSE_OPS_KERNELS_CUDA_CORE_GPU_H_

#include <cstddef>
#include <cstdint>

#include "kernels/core/coordinates.h"
#include "kernels/core/status.h"

struct CUstream_st;

namespace sparse_ops {
namespace gpu {

using GpuStream = CUstream_st*;  // == cudaStream_t

enum KernelMapError : int32_t {
  kMapOk = 0,
  kMapKeyTooWide = 1,        // the ranges need more than 63 bits
  kMapDuplicate = 2,         // two input rows are the same site
  kMapStridedUnderflow = 3,  // strided coordinates of error_axis below int32
  kMapGenerativeOverflow =
      4,  // generated coordinates of error_axis leave int32
};

// Written by KernelMapCount on the device; copy it back (one small
// cudaMemcpyAsync + sync) to learn the pair count and any data error.
struct KernelMapInfo {
  int64_t num_pairs;       // what KernelMapFill writes (0 on a key error)
  int32_t error;           // KernelMapError
  int32_t mirrored;        // 1 when half the offsets were probed
  int32_t duplicate_flag;  // set by the hash build, resolved below
  int32_t
      error_axis;  // the axis of kMapStridedUnderflow / kMapGenerativeOverflow
  int32_t lo[kMaxDims];  // per-axis bounds of in_coordinates
  int32_t hi[kMaxDims];
  KeyLayout layout;  // kernels/core/key_layout.h, set on the device
  // Smallest row that repeats an earlier site, as (row << 32) | earliest
  // row with that site; all ones when there is none. Deterministic.
  uint64_t duplicate;
  int32_t duplicate_site[kMaxDims];
  // First row with a negative batch index (all ones: none), and its value.
  uint64_t negative_in_row;
  uint64_t negative_out_row;
  int32_t negative_in_value;
  int32_t negative_out_value;
};

// The data errors in `info` (a host copy) as the CPU core words them, in the
// order the CPU op checks them: negative batch indices, then key width,
// then duplicate sites.
Status KernelMapInfoStatus(const KernelMapInfo& info);

// The stride of a kernel map's input, passed by value (it is a host input
// of the op, checked there): entries [0, dims - 1), each >= 1.
struct Stride {
  int32_t v[kMaxDims];
};

// Kernel geometry: offsets int32 [K, dims - 1] on the device (in units of
// the stride), and the stride.
struct DeviceGeometry {
  const int32_t* offsets;
  int64_t num_offsets;
  Stride stride;
};

// Copies `bytes` from the device to (page-locked) host memory on `stream`,
// without waiting: the way an op reads back a result struct.
Status CopyToHost(void* host, const void* device, size_t bytes,
                  GpuStream stream);

// --- Kernel map --------------------------------------------------------------
// Two phases around one host sync (the pair count sizes the outputs):
//   KernelMapCount(...);                 // hash, probe, count
//   cudaMemcpyAsync(&host_info, info, sizeof(KernelMapInfo), D2H, stream);
//   cudaStreamSynchronize(stream);
//   KernelMapInfoStatus(host_info) -> error?; allocate in_rows/out_rows [P]
//   KernelMapFill(...);                  // splits + pairs
// The workspace must stay untouched between the two calls.
// `same_coordinates` says in_coords and out_coords are the same rows (a
// submanifold convolution): a symmetric geometry then probes half the
// offsets and mirrors the rest, as on the CPU.
size_t KernelMapWorkspaceBytes(int64_t n_in, int64_t n_out,
                               int64_t num_offsets);

Status KernelMapCount(const int32_t* in_coords, int64_t n_in,
                      const int32_t* out_coords, int64_t n_out, int dims,
                      const DeviceGeometry& geometry, bool same_coordinates,
                      KernelMapInfo* info, void* workspace,
                      size_t workspace_bytes, GpuStream stream);

// splits [K + 1]; in_rows, out_rows [info.num_pairs].
Status KernelMapFill(int64_t n_in, int64_t n_out, int64_t num_offsets,
                     int64_t* splits, int32_t* in_rows, int32_t* out_rows,
                     void* workspace, size_t workspace_bytes, GpuStream stream);

// The key layout of coords [n, dims] into info->layout (per-axis bounds on
// the device, then KeyPacker::Finalize's rules; info->error is
// kMapKeyTooWide when the rows need more than 63 bits), for PackKeys.
Status KeyLayoutOf(const int32_t* coords, int64_t n, int dims,
                   KernelMapInfo* info, GpuStream stream);

// keys[i] = the packed key of coords row i under info->layout (as set by
// KernelMapCount or KeyLayoutOf); all ones for a row outside the layout's
// range or when the layout is too wide.
Status PackKeys(const int32_t* coords, int64_t n, int dims,
                const KernelMapInfo* info, uint64_t* keys, GpuStream stream);

// --- Strided coordinates
// ------------------------------------------------------ The output sites of a
// strided convolution, as the CPU's StridedKeys gives them: unique(floor(c / s)
// * s) per spatial axis, batch kept, sorted batch-major and row-major (a radix
// sort of packed keys, then unique). Two phases around one host read of `info`
// (the site count sizes the output):
//   StridedCoordinatesCount(...);   // info->num_pairs = the number of sites
//   copy info to the host; StridedCoordinatesInfoStatus(host info) -> error?
//   StridedCoordinatesFill(info, n, dims, sites, out [sites, dims], ...);
// The workspace must stay untouched between the two calls.
size_t StridedCoordinatesWorkspaceBytes(int64_t n);
Status StridedCoordinatesCount(const int32_t* coords, int64_t n, int dims,
                               const Stride& stride, KernelMapInfo* info,
                               void* workspace, size_t workspace_bytes,
                               GpuStream stream);
// The CPU op's errors, in its order: a negative batch index, strided
// coordinates below the int32 range, keys wider than 63 bits.
Status StridedCoordinatesInfoStatus(const KernelMapInfo& info);
Status StridedCoordinatesFill(const KernelMapInfo* info, int64_t n, int dims,
                              int64_t num_sites, int32_t* out, void* workspace,
                              size_t workspace_bytes, GpuStream stream);

// --- Generative coordinates
// --------------------------------------------------- Every site c + offsets[k]
// * stride of the rows c (a generative transposed convolution), unique and
// sorted, as the CPU's GenerativeKeys gives them; in the same two phases as the
// strided coordinates. All n * K candidates are sorted at once (the CPU works
// in chunks within a budget), so n * K must stay below 2^31 - 1 and fit the
// workspace.
size_t GenerativeCoordinatesWorkspaceBytes(int64_t n, int64_t num_offsets);
Status GenerativeCoordinatesCount(const int32_t* coords, int64_t n, int dims,
                                  const DeviceGeometry& geometry,
                                  KernelMapInfo* info, void* workspace,
                                  size_t workspace_bytes, GpuStream stream);
// A negative batch index, generated coordinates leaving int32, keys wider
// than 63 bits: the CPU op's errors, in its order.
Status GenerativeCoordinatesInfoStatus(const KernelMapInfo& info);
Status GenerativeCoordinatesFill(const KernelMapInfo* info, int64_t n,
                                 int64_t num_offsets, int dims,
                                 int64_t num_sites, int32_t* out,
                                 void* workspace, size_t workspace_bytes,
                                 GpuStream stream);

// --- Coordinate lookup
// ---------------------------------------------------------- rows[q] = the row
// of coords [n, dims] equal to queries[q] ([num_queries, dims]), or -1 (queries
// outside the set's range, a negative batch included, are not found), as the
// CPU's LookupRows. The errors of coords (a negative batch index, keys wider
// than 63 bits, duplicate sites) go to `info`; the output's size needs no host
// read, so the op reads `info` back after the work, once.
size_t CoordinateLookupWorkspaceBytes(int64_t n);
Status CoordinateLookup(const int32_t* coords, int64_t n, int dims,
                        const int32_t* queries, int64_t num_queries,
                        int32_t* rows, KernelMapInfo* info, void* workspace,
                        size_t workspace_bytes, GpuStream stream);
Status CoordinateLookupInfoStatus(const KernelMapInfo& info);

// --- Coordinate union
// ----------------------------------------------------------- The union of
// coordinate sets inputs[i] (host array of device pointers, [sizes[i], dims]
// each), as the CPU's UnionCoordinates and UnionSites: union rows in order of
// first appearance, rows[i][r] (host array of device pointers, [sizes[i]] each)
// the union row of row r of input i. Two phases around one host read of `info`
// (num_pairs = the number of union sites):
//   CoordinateUnionCount(...);      // writes rows[i]
//   copy info to the host; CoordinateUnionInfoStatus(host info, sizes, n)
//   CoordinateUnionFill(total, dims, out [num_pairs, dims], ...);
// The workspace must stay untouched between the two calls.
size_t CoordinateUnionWorkspaceBytes(int64_t total, int dims);
Status CoordinateUnionCount(const int32_t* const* inputs, const int64_t* sizes,
                            int num_inputs, int dims, int32_t* const* rows,
                            KernelMapInfo* info, void* workspace,
                            size_t workspace_bytes, GpuStream stream);
// A negative batch index, keys wider than 63 bits, a site repeated within
// one input: the CPU op's errors, naming coordinates[i].
Status CoordinateUnionInfoStatus(const KernelMapInfo& info,
                                 const int64_t* sizes, int num_inputs);
Status CoordinateUnionFill(int64_t total, int dims, int32_t* out,
                           void* workspace, size_t workspace_bytes,
                           GpuStream stream);

// --- Kernel maps as inputs
// -----------------------------------------------------

// A kernel map on the device. num_offsets and num_pairs are host values
// (the shapes of the tensors).
struct DeviceKernelMap {
  const int64_t* splits;
  const int32_t* in_rows;
  const int32_t* out_rows;
  int64_t num_offsets;
  int64_t num_pairs;
};

// Validation of a kernel map that came from outside (a user may build one):
// splits monotone from 0 to P, rows in range, output rows increasing
// within each offset. The conv kernels never read or write out of bounds
// even on a bad map, but their results are then meaningless.
struct KernelMapCheck {
  uint64_t bad_pair;   // first bad pair (all ones: none)
  int32_t bad_splits;  // 1 when offset_splits is malformed
  int32_t in_row;      // the bad pair's rows
  int32_t out_row;
  int32_t repeated_row;  // the input row of repeated_pair
  // Set by a transposition given this struct: the smallest pair whose input
  // row occurs twice within its offset (all ones: none), which the CPU's
  // transposition refuses.
  uint64_t repeated_pair;
};
Status CheckKernelMap(const DeviceKernelMap& map, int64_t n_in, int64_t n_out,
                      KernelMapCheck* check, GpuStream stream);
Status KernelMapCheckStatus(const KernelMapCheck& check, int64_t num_pairs,
                            int64_t n_in, int64_t n_out);

// The transposed map (roles of input and output swapped), sorted by the
// original input row within each offset. Its offset_splits equal the
// original's, so only the rows are written: t_in_rows[P] (original output
// rows) and t_out_rows[P] (original input rows).
size_t TransposeKernelMapWorkspaceBytes(int64_t n_in, int64_t num_offsets);
// With `check` (after CheckKernelMap into it, on the same stream), input
// rows repeated within an offset are reported there.
Status TransposeKernelMap(const DeviceKernelMap& map, int64_t n_in,
                          int32_t* t_in_rows, int32_t* t_out_rows,
                          void* workspace, size_t workspace_bytes,
                          GpuStream stream, KernelMapCheck* check = nullptr);

// --- Convolution
// ---------------------------------------------------------------

// out[o] = sum over pairs (i, o) of offset k of in[i] . W_k, for all n_out
// rows (rows without pairs get zeros). W is [K, c_in, c_out]; with
// transpose_weights it is [K, c_out, c_in] and W_k^T is used. `map` must be
// sorted by output row within each offset. Each output tile is owned by one
// thread block that applies the offsets in order: deterministic. Offsets
// whose weights are all zero (pruned) are skipped, as on the CPU's default
// path: the same sums for finite inputs.
template <typename T>
size_t ConvWorkspaceBytes(int64_t num_offsets, int64_t n_out, int64_t c_in,
                          int64_t c_out, bool transpose_weights);
template <typename T>
Status Conv(const T* in, int64_t n_in, int64_t c_in, const T* weights,
            int64_t c_out, bool transpose_weights, const DeviceKernelMap& map,
            int64_t n_out, T* out, void* workspace, size_t workspace_bytes,
            GpuStream stream);

// grad_in[i] = sum over pairs (i, o) of offset k of grad_out[o] . W_k^T,
// W [K, c_in, c_out]: builds the transposed map in the workspace and runs
// Conv on it with transposed weights; `check` as in TransposeKernelMap.
template <typename T>
size_t ConvBackpropInputWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                       int64_t n_in, int64_t c_in,
                                       int64_t c_out);
template <typename T>
Status ConvBackpropInput(const T* grad_out, int64_t n_out, int64_t c_out,
                         const T* weights, int64_t c_in,
                         const DeviceKernelMap& map, int64_t n_in, T* grad_in,
                         void* workspace, size_t workspace_bytes,
                         GpuStream stream, KernelMapCheck* check = nullptr);

// grad_weights[k] = sum over pairs (i, o) of offset k of
// in[i]^T grad_out[o], [K, c_in, c_out]. Each offset's pairs are cut into
// segments whose size depends only on (P, K); segment partial products are
// summed in segment order.
template <typename T>
size_t ConvBackpropKernelWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                        int64_t c_in, int64_t c_out);
template <typename T>
Status ConvBackpropKernel(const T* in, int64_t n_in, int64_t c_in,
                          const T* grad_out, int64_t n_out, int64_t c_out,
                          const DeviceKernelMap& map, T* grad_weights,
                          void* workspace, size_t workspace_bytes,
                          GpuStream stream);

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_CORE_GPU_H_

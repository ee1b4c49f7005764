// CUDA channel-wise convolution; see depthwise_gpu.h for the contract.
#include "kernels/cuda/depthwise_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

constexpr int32_t kNoPair = 2147483647;
constexpr int64_t kSegment =
    2048;  // the CPU core's pairs per weight-gradient unit

__global__ void FillKernel(int32_t* table, int64_t size) {
  SPARSE_OPS_GRID_STRIDE(e, size) { table[e] = kNoPair; }
}

// The pairs of offset k, clamped so that a malformed map stays in bounds.
__device__ __forceinline__ bool PairOffset(const int64_t* __restrict__ splits,
                                           int64_t K, int64_t P, int64_t p,
                                           int64_t* k) {
  *k = OffsetOf(splits, K, p);
  const int64_t begin = min(max(splits[*k], int64_t{0}), P);
  const int64_t end = min(max(splits[*k + 1], begin), P);
  return p >= begin && p < end;
}

// table[k * n_rows + rows[p]] = the smallest pair p of offset k with that row.
__global__ void PairTableKernel(const int64_t* __restrict__ splits, int64_t K,
                                int64_t P, const int32_t* __restrict__ rows,
                                int64_t n_rows, int32_t* table) {
  SPARSE_OPS_GRID_STRIDE(p, P) {
    int64_t k;
    const int32_t r = rows[p];
    if (PairOffset(splits, K, P, p, &k) && r >= 0 && r < n_rows) {
      atomicMin(&table[k * n_rows + r], static_cast<int32_t>(p));
    }
  }
}

// The smallest pair whose row another pair of its offset already holds.
__global__ void RepeatedPairKernel(const int64_t* __restrict__ splits,
                                   int64_t K, int64_t P,
                                   const int32_t* __restrict__ rows,
                                   int64_t n_rows,
                                   const int32_t* __restrict__ table,
                                   KernelMapCheck* check) {
  SPARSE_OPS_GRID_STRIDE(p, P) {
    int64_t k;
    const int32_t r = rows[p];
    if (PairOffset(splits, K, P, p, &k) && r >= 0 && r < n_rows &&
        table[k * n_rows + r] != p) {
      atomicMin(reinterpret_cast<ull*>(&check->repeated_pair),
                static_cast<ull>(p));
    }
  }
}

__global__ void RepeatedRowKernel(const int32_t* __restrict__ rows,
                                  KernelMapCheck* check) {
  if (check->repeated_pair != kNone)
    check->repeated_row = rows[check->repeated_pair];
}

// out[o, c * M + m] = sum over offsets in order of in[i, c] * W[k, c, m].
template <typename T>
__global__ void ForwardKernel(const T* __restrict__ in, int64_t n_in, int64_t C,
                              int64_t M, const T* __restrict__ w,
                              const int32_t* __restrict__ in_rows,
                              const int32_t* __restrict__ table, int64_t K,
                              int64_t n_out, T* __restrict__ out) {
  const int64_t width = C * M;
  SPARSE_OPS_GRID_STRIDE(e, n_out * width) {
    const int64_t o = e / width, j = e - o * width, c = j / M;
    T acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t p = table[k * n_out + o];
      if (p == kNoPair) continue;
      const int32_t i = in_rows[p];
      if (i >= 0 && i < n_in) acc += in[int64_t{i} * C + c] * w[k * width + j];
    }
    out[e] = acc;
  }
}

// grad_in[i, c] = sum over offsets in order of sum over m of
// grad_out[o, c * M + m] * W[k, c, m] (M == 1: one product, as the CPU).
template <typename T>
__global__ void InputGradKernel(const T* __restrict__ grad_out, int64_t n_out,
                                int64_t C, int64_t M, const T* __restrict__ w,
                                const int32_t* __restrict__ out_rows,
                                const int32_t* __restrict__ table, int64_t K,
                                int64_t n_in, T* __restrict__ grad_in) {
  const int64_t width = C * M;
  SPARSE_OPS_GRID_STRIDE(e, n_in * C) {
    const int64_t i = e / C, c = e - i * C;
    T acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t p = table[k * n_in + i];
      if (p == kNoPair) continue;
      const int32_t o = out_rows[p];
      if (o < 0 || o >= n_out) continue;
      const T* g = grad_out + int64_t{o} * width + c * M;
      const T* wk = w + k * width + c * M;
      if (M == 1) {
        acc += g[0] * wk[0];
      } else {
        T sum = 0;
        for (int64_t m = 0; m < M; ++m) sum += g[m] * wk[m];
        acc += sum;
      }
    }
    grad_in[e] = acc;
  }
}

// One thread: first[k] = the first weight-gradient unit of offset k
// (first[K] = the total), kSegment pairs a unit, capped at max_units.
__global__ void UnitPlanKernel(const int64_t* __restrict__ splits, int64_t K,
                               int64_t P, int64_t max_units, int64_t* first) {
  first[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t begin = min(max(splits[k], int64_t{0}), P);
    const int64_t end = min(max(splits[k + 1], begin), P);
    first[k + 1] =
        min(first[k] + (end - begin + kSegment - 1) / kSegment, max_units);
  }
}

// partial[u, j] = the sum over unit u's pairs, in order, of
// in[i, c] * grad_out[o, j] (j = c * M + m).
template <typename T>
__global__ void UnitKernel(const T* __restrict__ in, int64_t n_in, int64_t C,
                           int64_t M, const T* __restrict__ grad_out,
                           int64_t n_out, const int64_t* __restrict__ splits,
                           int64_t K, int64_t P,
                           const int32_t* __restrict__ in_rows,
                           const int32_t* __restrict__ out_rows,
                           const int64_t* __restrict__ first, int64_t max_units,
                           T* __restrict__ partial) {
  const int64_t width = C * M;
  SPARSE_OPS_GRID_STRIDE(e, max_units * width) {
    const int64_t u = e / width, j = e - u * width, c = j / M;
    if (u >= first[K]) continue;
    const int64_t k = OffsetOf(first, K, u);
    const int64_t begin = min(max(splits[k], int64_t{0}), P);
    const int64_t end = min(max(splits[k + 1], begin), P);
    const int64_t lo = begin + (u - first[k]) * kSegment,
                  hi = min(end, lo + kSegment);
    T acc = 0;
    for (int64_t p = lo; p < hi; ++p) {
      const int32_t i = in_rows[p], o = out_rows[p];
      if (i >= 0 && i < n_in && o >= 0 && o < n_out) {
        acc += in[int64_t{i} * C + c] * grad_out[int64_t{o} * width + j];
      }
    }
    partial[e] = acc;
  }
}

template <typename T>
__global__ void UnitSumKernel(const T* __restrict__ partial,
                              const int64_t* __restrict__ first, int64_t K,
                              int64_t width, T* __restrict__ grad_weights) {
  SPARSE_OPS_GRID_STRIDE(e, K * width) {
    const int64_t k = e / width, j = e - k * width;
    T sum = 0;
    for (int64_t u = first[k]; u < first[k + 1]; ++u)
      sum += partial[u * width + j];
    grad_weights[e] = sum;
  }
}

Status CheckSizes(int64_t rows, int64_t C, int64_t M, int64_t K,
                  const char* what) {
  if (rows < 0 || rows >= kNoPair || C < 0 || M < 0 || K < 0 ||
      CountProduct(CountProduct(rows, C), std::max<int64_t>(M, 1)) < 0) {
    return Status::Error(std::string("sparse_ops GPU ") + what + ": bad sizes");
  }
  return Status::Ok();
}

// The [K, rows] table of `rows_of_pairs` (in_rows or out_rows).
Status BuildTable(const DeviceKernelMap& map, const int32_t* rows_of_pairs,
                  int64_t n_rows, int32_t* table, GpuStream stream) {
  const int64_t size = map.num_offsets * n_rows;
  if (size > 0) FillKernel<<<GridFor(size), kThreads, 0, stream>>>(table, size);
  if (map.num_pairs > 0 && map.num_offsets > 0) {
    PairTableKernel<<<GridFor(map.num_pairs), kThreads, 0, stream>>>(
        map.splits, map.num_offsets, map.num_pairs, rows_of_pairs, n_rows,
        table);
  }
  return LaunchStatus("DepthwiseConv");
}

int64_t MaxUnits(int64_t P, int64_t K) {
  return CeilDiv(std::max<int64_t>(P, 0), kSegment) + K;
}

}  // namespace

size_t DepthwiseConvWorkspaceBytes(int64_t num_offsets, int64_t n_out) {
  Carver c(nullptr);
  c.Take<int32_t>(CountProduct(num_offsets, n_out));
  return c.used();
}

template <typename T>
Status DepthwiseConv(const T* in, int64_t n_in, int64_t channels,
                     int64_t multiplier, const T* weights,
                     const DeviceKernelMap& map, int64_t n_out, T* out,
                     void* workspace, size_t workspace_bytes,
                     GpuStream stream) {
  Status status =
      CheckSizes(n_out, channels, multiplier, map.num_offsets, "DepthwiseConv");
  if (!status.ok()) return status;
  Carver c(workspace);
  int32_t* table = c.Take<int32_t>(CountProduct(map.num_offsets, n_out));
  status = CheckWorkspace(workspace_bytes, c.used(), "DepthwiseConv");
  if (!status.ok()) return status;
  const int64_t entries = n_out * channels * multiplier;
  if (entries == 0) return Status::Ok();
  status = BuildTable(map, map.out_rows, n_out, table, stream);
  if (!status.ok()) return status;
  ForwardKernel<T><<<GridFor(entries, 65535), kThreads, 0, stream>>>(
      in, n_in, channels, multiplier, weights, map.in_rows, table,
      map.num_offsets, n_out, out);
  return LaunchStatus("DepthwiseConv");
}

size_t DepthwiseConvBackpropInputWorkspaceBytes(int64_t num_offsets,
                                                int64_t n_in) {
  return DepthwiseConvWorkspaceBytes(num_offsets, n_in);
}

template <typename T>
Status DepthwiseConvBackpropInput(const T* grad_out, int64_t n_out,
                                  int64_t channels, int64_t multiplier,
                                  const T* weights, const DeviceKernelMap& map,
                                  int64_t n_in, T* grad_in, void* workspace,
                                  size_t workspace_bytes, GpuStream stream,
                                  KernelMapCheck* check) {
  Status status = CheckSizes(n_in, channels, multiplier, map.num_offsets,
                             "DepthwiseConvBackpropInput");
  if (!status.ok()) return status;
  Carver c(workspace);
  int32_t* table = c.Take<int32_t>(CountProduct(map.num_offsets, n_in));
  status =
      CheckWorkspace(workspace_bytes, c.used(), "DepthwiseConvBackpropInput");
  if (!status.ok()) return status;
  status = BuildTable(map, map.in_rows, n_in, table, stream);
  if (!status.ok()) return status;
  if (check != nullptr && map.num_pairs > 0 && map.num_offsets > 0) {
    RepeatedPairKernel<<<GridFor(map.num_pairs), kThreads, 0, stream>>>(
        map.splits, map.num_offsets, map.num_pairs, map.in_rows, n_in, table,
        check);
    RepeatedRowKernel<<<1, 1, 0, stream>>>(map.in_rows, check);
  }
  const int64_t entries = n_in * channels;
  if (entries > 0) {
    InputGradKernel<T><<<GridFor(entries, 65535), kThreads, 0, stream>>>(
        grad_out, n_out, channels, multiplier, weights, map.out_rows, table,
        map.num_offsets, n_in, grad_in);
  }
  return LaunchStatus("DepthwiseConvBackpropInput");
}

template <typename T>
size_t DepthwiseConvBackpropKernelWorkspaceBytes(int64_t num_offsets,
                                                 int64_t num_pairs,
                                                 int64_t channels,
                                                 int64_t multiplier) {
  Carver c(nullptr);
  c.Take<int64_t>(num_offsets + 1);
  c.Take<T>(CountProduct(MaxUnits(num_pairs, num_offsets),
                         CountProduct(channels, multiplier)));
  return c.used();
}

template <typename T>
Status DepthwiseConvBackpropKernel(const T* in, int64_t n_in, int64_t channels,
                                   int64_t multiplier, const T* grad_out,
                                   int64_t n_out, const DeviceKernelMap& map,
                                   T* grad_weights, void* workspace,
                                   size_t workspace_bytes, GpuStream stream) {
  const int64_t K = map.num_offsets, P = map.num_pairs,
                width = channels * multiplier;
  Status status =
      CheckSizes(n_in, channels, multiplier, K, "DepthwiseConvBackpropKernel");
  if (!status.ok()) return status;
  const int64_t max_units = MaxUnits(P, K);
  Carver c(workspace);
  int64_t* first = c.Take<int64_t>(K + 1);
  T* partial = c.Take<T>(CountProduct(max_units, width));
  status =
      CheckWorkspace(workspace_bytes, c.used(), "DepthwiseConvBackpropKernel");
  if (!status.ok() || K * width == 0) return status;
  UnitPlanKernel<<<1, 1, 0, stream>>>(map.splits, K, P, max_units, first);
  UnitKernel<T><<<GridFor(max_units * width, 65535), kThreads, 0, stream>>>(
      in, n_in, channels, multiplier, grad_out, n_out, map.splits, K, P,
      map.in_rows, map.out_rows, first, max_units, partial);
  UnitSumKernel<T><<<GridFor(K * width), kThreads, 0, stream>>>(
      partial, first, K, width, grad_weights);
  return LaunchStatus("DepthwiseConvBackpropKernel");
}

#define SPARSE_OPS_INSTANTIATE(T)                                             \
  template Status DepthwiseConv<T>(const T*, int64_t, int64_t, int64_t,       \
                                   const T*, const DeviceKernelMap&, int64_t, \
                                   T*, void*, size_t, GpuStream);             \
  template Status DepthwiseConvBackpropInput<T>(                              \
      const T*, int64_t, int64_t, int64_t, const T*, const DeviceKernelMap&,  \
      int64_t, T*, void*, size_t, GpuStream, KernelMapCheck*);                \
  template size_t DepthwiseConvBackpropKernelWorkspaceBytes<T>(               \
      int64_t, int64_t, int64_t, int64_t);                                    \
  template Status DepthwiseConvBackpropKernel<T>(                             \
      const T*, int64_t, int64_t, int64_t, const T*, int64_t,                 \
      const DeviceKernelMap&, T*, void*, size_t, GpuStream);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace gpu
}  // namespace sparse_ops

// CUDA convolution of the framework-free core and its gradients; see
// core_gpu.h for the contracts.
//
// Convolution: output-stationary tiles. One thread block owns BM output
// rows x BN output channels, keeps them in shared memory, and applies the
// offsets in order: for offset k it gathers the (at most BM) input rows
// whose pairs land in its rows, multiplies them by W_k in registers and adds
// each product row to its output row. Within an offset every output row
// occurs once, so no atomics are needed, and every output element is
// summed in the same order on every run. The input gradient is the same
// kernel over the transposed map (TransposeKernelMap).
//
// Weight gradient: each offset's pairs are cut into segments of S pairs (S a
// function of P and K only); a block computes one segment's partial
// X^T dY tile, and a second kernel adds the partials of each offset in
// segment order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/core_gpu.h"
#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

// --- Convolution
// ---------------------------------------------------------------------

template <typename T>
struct ConvConfig;
// f32 tile: BM output rows, fragments of TM x TN per thread; overridable
// for tuning experiments.
#ifndef SPARSE_OPS_GPU_F32_BM
#define SPARSE_OPS_GPU_F32_BM 128
#endif
#ifndef SPARSE_OPS_GPU_F32_TN
#define SPARSE_OPS_GPU_F32_TN 4
#endif
template <>
struct ConvConfig<float> {
  static constexpr int BM = SPARSE_OPS_GPU_F32_BM, BN = 64, BK = 32, TM = 8,
                       TN = SPARSE_OPS_GPU_F32_TN, PAD = 4;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kMinBlocks = kThreads >= 256 ? 2 : 3;
};
template <>
struct ConvConfig<double> {
  static constexpr int BM = 64, BN = 64, BK = 32, TM = 4, TN = 4, PAD = 2;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kMinBlocks = 2;
};

template <typename T>
constexpr size_t ConvSharedBytes() {
  using C = ConvConfig<T>;
  return sizeof(T) *
             (C::BM * C::BN + C::BK * (C::BM + C::PAD) + C::BK * C::BN) +
         4 * C::BM * sizeof(int32_t);
}

// 16-byte shared-memory loads of a register fragment.
template <int N>
__device__ __forceinline__ void LoadFragment(const float* p, float (&r)[N]) {
  static_assert(N % 4 == 0, "float fragments are whole float4s");
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    const float4 v = reinterpret_cast<const float4*>(p)[i];
    r[4 * i] = v.x;
    r[4 * i + 1] = v.y;
    r[4 * i + 2] = v.z;
    r[4 * i + 3] = v.w;
  }
}
template <int N>
__device__ __forceinline__ void LoadFragment(const double* p, double (&r)[N]) {
  static_assert(N % 2 == 0, "double fragments are whole double2s");
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const double2 v = reinterpret_cast<const double2*>(p)[i];
    r[2 * i] = v.x;
    r[2 * i + 1] = v.y;
  }
}

// 16 bytes of T, for vector loads of whole channel groups.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// nonzero[k] = whether offset k has a non-zero weight ([K, per_offset]
// weights, either layout). Pruned offsets are skipped, as the CPU's
// default path skips them: a zero weight adds nothing to a sum.
template <typename T>
__global__ void NonzeroOffsetsKernel(const T* __restrict__ w, int64_t K,
                                     int64_t per_offset, int32_t* nonzero) {
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {  // uniform in the block
    int any = 0;
    for (int64_t j = threadIdx.x; j < per_offset && !any; j += blockDim.x) {
      any = w[k * per_offset + j] != T(0);
    }
    any = __syncthreads_or(any);
    if (threadIdx.x == 0) nonzero[k] = any;
  }
}

// tiles[k * (num_tiles + 1) + t] = the first pair of offset k whose output
// row is >= t * BM (t = num_tiles: the offset's end); an offset without
// non-zero weights gets no pairs in any tile.
__global__ void TilePointersKernel(const int64_t* __restrict__ splits,
                                   const int32_t* __restrict__ out_rows,
                                   const int32_t* __restrict__ nonzero,
                                   int64_t K, int64_t P, int64_t num_tiles,
                                   int64_t rows_per_tile, int64_t* tiles) {
  const int64_t n = K * (num_tiles + 1);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx =
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / (num_tiles + 1), t = idx - k * (num_tiles + 1);
    // Clamped, so that a malformed map cannot send a reader out of bounds.
    const int64_t b = min(max(splits[k], int64_t{0}), P);
    const int64_t e = nonzero[k] ? min(max(splits[k + 1], b), P) : b;
    int64_t lo = e, hi = e;
    if (t < num_tiles) {
      lo = b;
      const int64_t row = t * rows_per_tile;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (out_rows[mid] < row) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
    }
    tiles[idx] = lo;
  }
}

template <typename T>
__global__ void TransposeWeightsKernel(const T* __restrict__ w, int64_t K,
                                       int64_t a, int64_t b, T* out) {
  // w [K, a, b] -> out [K, b, a]
  const int64_t n = K * a * b;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx =
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / (a * b), r = idx - k * (a * b);
    const int64_t j = r / a, i = r - j * a;  // out[k][j][i]
    out[idx] = w[(k * a + i) * b + j];
  }
}

// Software pipeline over steps (offset, BK-channel chunk). The row indices
// of offset i + 1 sit in shared memory (loaded during offset i - 1), so the
// gathered rows and the W_k chunk of step s + 1 are loaded into registers
// while step s computes, with no dependent global load in front of the
// arithmetic. Offsets without pairs in this tile are skipped.
// kVec: c_in and c_out are multiples of 16 bytes' worth of T and the
// operands 16-byte aligned: whole channel groups move with 16-byte loads.
template <typename T, bool kVec>
__global__ void __launch_bounds__(ConvConfig<T>::kThreads,
                                  ConvConfig<T>::kMinBlocks)
    ConvKernel(const T* __restrict__ in, int64_t n_in, int c_in,
               const T* __restrict__ w, int c_out,
               const int64_t* __restrict__ tiles,
               const int32_t* __restrict__ in_rows,
               const int32_t* __restrict__ out_rows, int64_t K, int64_t n_out,
               int64_t num_tiles, T* __restrict__ out) {
  using C = ConvConfig<T>;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, TM = C::TM, TN = C::TN;
  constexpr int LDA = BM + C::PAD;
  constexpr int kThreads = C::kThreads;  // one TM x TN fragment a thread
  static_assert(kThreads % BK == 0 && kThreads % BN == 0 && BM <= kThreads,
                "load mapping");
  constexpr int kARowStep = kThreads / BK;  // gathered rows per pass
  constexpr int kAPer = BM / kARowStep;     // A elements per thread
  constexpr int kBRowStep = kThreads / BN;  // weight rows per pass
  constexpr int kBPer = BK / kBRowStep;     // B elements per thread
  // The same with 16-byte vectors of V channels.
  using V16 = Vec16<T>;
  constexpr int V = V16::N;
  constexpr int kALanes = BK / V, kBLanes = BN / V;
  constexpr int kAVRowStep = kThreads / kALanes, kAVPer = BM / kAVRowStep;
  constexpr int kBVRowStep = kThreads / kBLanes, kBVPer = BK / kBVRowStep;
  static_assert(kAVPer * V == kAPer && kBVPer * V == kBPer,
                "vector and scalar paths hold the same registers");
  extern __shared__ __align__(16) unsigned char smem[];
  T* acc = reinterpret_cast<T*>(smem);  // [BM][BN]
  T* as = acc + BM * BN;                // [BK][LDA], gathered rows, transposed
  T* bs = as + BK * LDA;                // [BK][BN], W_k chunk
  int32_t* rin = reinterpret_cast<int32_t*>(bs + BK * BN);  // [2][BM]
  int32_t* rout = rin + 2 * BM;                             // [2][BM]

  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int a_kk = tid % BK, a_j0 = tid / BK;
  const int b_n = tid % BN, b_kk0 = tid / BN;
  const int av_q = tid % kALanes, av_j0 = tid / kALanes;
  const int bv_q = tid % kBLanes, bv_kk0 = tid / kBLanes;
  const int64_t t = blockIdx.x;
  const int64_t o0 = t * BM;
  const int n0 = blockIdx.y * BN;
  for (int idx = tid; idx < BM * BN; idx += kThreads) acc[idx] = T(0);

  struct Offset {
    int64_t k, p0;
    int m;
    bool ok;
  };
  // The next offset >= from with pairs in this tile (the same for every
  // thread of the block).
  auto find = [&](int64_t from) {
    for (int64_t k = from; k < K; ++k) {
      const int64_t b = tiles[k * (num_tiles + 1) + t];
      const int64_t count = tiles[k * (num_tiles + 1) + t + 1] - b;
      if (count > 0) {
        return Offset{k, b, static_cast<int>(min(count, int64_t{BM})), true};
      }
    }
    return Offset{K, 0, 0, false};
  };
  // Row indices of an offset into registers (thread j: pair j).
  int32_t ir = -1, orow = -1;
  auto fetch_rows = [&](const Offset& o) {
    ir = -1;
    orow = -1;
    if (o.ok && tid < o.m) {
      const int32_t i = in_rows[o.p0 + tid];
      ir = (i >= 0 && i < n_in) ? i : -1;
      const int64_t r = static_cast<int64_t>(out_rows[o.p0 + tid]) - o0;
      orow = (r >= 0 && r < BM) ? static_cast<int32_t>(r) : -1;
    }
  };
  // One step's operands into registers; row indices from shared memory.
  T ra[kAPer], rb[kBPer];
  auto fetch_data = [&](int64_t k, int c0, int m, const int32_t* rows) {
    if constexpr (kVec) {
      const int c = c0 + av_q * V;
#pragma unroll
      for (int r = 0; r < kAVPer; ++r) {
        const int j = av_j0 + r * kAVRowStep;
        const int32_t i = j < m ? rows[j] : -1;
        V16 v;
        if (i >= 0 && c < c_in) {
          v = *reinterpret_cast<const V16*>(in +
                                            static_cast<int64_t>(i) * c_in + c);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = T(0);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) ra[r * V + e] = v.v[e];
      }
      const int col = n0 + bv_q * V;
#pragma unroll
      for (int r = 0; r < kBVPer; ++r) {
        const int cc = c0 + bv_kk0 + r * kBVRowStep;
        V16 v;
        if (cc < c_in && col < c_out) {
          v = *reinterpret_cast<const V16*>(
              w + (k * c_in + cc) * static_cast<int64_t>(c_out) + col);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = T(0);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) rb[r * V + e] = v.v[e];
      }
      return;
    }
    const int c = c0 + a_kk;
#pragma unroll
    for (int r = 0; r < kAPer; ++r) {
      const int j = a_j0 + r * kARowStep;
      const int32_t i = j < m ? rows[j] : -1;
      ra[r] =
          (i >= 0 && c < c_in) ? in[static_cast<int64_t>(i) * c_in + c] : T(0);
    }
    const int col = n0 + b_n;
#pragma unroll
    for (int r = 0; r < kBPer; ++r) {
      const int cc = c0 + b_kk0 + r * kBRowStep;
      rb[r] = (cc < c_in && col < c_out)
                  ? w[(k * c_in + cc) * static_cast<int64_t>(c_out) + col]
                  : T(0);
    }
  };

  Offset cur = find(0), nxt{K, 0, 0, false};
  if (cur.ok) {
    fetch_rows(cur);
    if (tid < BM) {
      rin[tid] = ir;
      rout[tid] = orow;
    }
    nxt = find(cur.k + 1);
    fetch_rows(nxt);  // stored at cur's first step
  }
  __syncthreads();
  if (cur.ok) fetch_data(cur.k, 0, cur.m, rin);
  int buf = 0;
  T prod[TM][TN];
  while (cur.ok) {
    Offset after{K, 0, 0, false};
    for (int c0 = 0; c0 < c_in; c0 += BK) {
      __syncthreads();  // the previous step is done with as / bs / rows
      if constexpr (kVec) {
#pragma unroll
        for (int r = 0; r < kAVPer; ++r) {
          const int j = av_j0 + r * kAVRowStep;
          if (j < cur.m) {
#pragma unroll
            for (int e = 0; e < V; ++e)
              as[(av_q * V + e) * LDA + j] = ra[r * V + e];
          }
        }
#pragma unroll
        for (int r = 0; r < kBVPer; ++r) {
          V16 v;
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = rb[r * V + e];
          *reinterpret_cast<V16*>(bs + (bv_kk0 + r * kBVRowStep) * BN +
                                  bv_q * V) = v;
        }
      } else {
#pragma unroll
        for (int r = 0; r < kAPer; ++r) {
          const int j = a_j0 + r * kARowStep;
          if (j < cur.m) as[a_kk * LDA + j] = ra[r];
        }
#pragma unroll
        for (int r = 0; r < kBPer; ++r)
          bs[(b_kk0 + r * kBRowStep) * BN + b_n] = rb[r];
      }
      if (c0 == 0 && tid < BM) {  // next offset's rows: the other buffer
        rin[(buf ^ 1) * BM + tid] = ir;
        rout[(buf ^ 1) * BM + tid] = orow;
      }
      __syncthreads();
      // Prefetch the next step.
      if (c0 + BK < c_in) {
        fetch_data(cur.k, c0 + BK, cur.m, rin + buf * BM);
      } else if (nxt.ok) {
        fetch_data(nxt.k, 0, nxt.m, rin + (buf ^ 1) * BM);
      }
      if (c0 == 0) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) prod[i][j] = T(0);
        }
      }
      const bool active = ty * TM < cur.m;
      if (active) {
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          T a[TM], b[TN];
          LoadFragment<TM>(as + kk * LDA + ty * TM, a);
          LoadFragment<TN>(bs + kk * BN + tx * TN, b);
#pragma unroll
          for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j)
              prod[i][j] = fma(a[i], b[j], prod[i][j]);
          }
        }
        if (c0 + BK >= c_in) {  // the offset's last chunk: add to the tile
#pragma unroll
          for (int i = 0; i < TM; ++i) {
            const int r = ty * TM + i;
            if (r < cur.m) {
              const int lr = rout[buf * BM + r];
              if (lr >= 0) {
#pragma unroll
                for (int j = 0; j < TN; ++j)
                  acc[lr * BN + tx * TN + j] += prod[i][j];
              }
            }
          }
        }
      }
      if (c0 == 0) {  // rows of the offset after next, stored at nxt's start
        after = nxt.ok ? find(nxt.k + 1) : Offset{K, 0, 0, false};
        fetch_rows(after);
      }
    }
    cur = nxt;
    nxt = after;
    buf ^= 1;
  }
  __syncthreads();
  for (int idx = tid; idx < BM * BN; idx += kThreads) {
    const int r = idx / BN, n = idx % BN;
    const int64_t o = o0 + r;
    const int col = n0 + n;
    if (o < n_out && col < c_out) out[o * c_out + col] = acc[idx];
  }
}

struct ConvBuffers {
  int64_t* tiles;
  int32_t* nonzero;  // [K]
  void* weights_t;   // [K, c_in, c_out] transposed copy, when asked for
  int64_t num_tiles;
};

template <typename T>
ConvBuffers CarveConv(Carver* c, int64_t K, int64_t n_out, int64_t c_in,
                      int64_t c_out, bool transpose_weights) {
  ConvBuffers b;
  b.num_tiles = CeilDiv(n_out, ConvConfig<T>::BM);
  b.tiles = c->Take<int64_t>(K * (b.num_tiles + 1));
  b.nonzero = c->Take<int32_t>(K);
  b.weights_t = transpose_weights ? c->Take<T>(K * c_in * c_out) : nullptr;
  return b;
}

Status CheckChannels(int64_t c_in, int64_t c_out) {
  if (c_in < 0 || c_out < 0 || c_in > (1 << 24) || c_out > (1 << 24)) {
    return Status::Error(
        "sparse_ops GPU convolution: channel counts must be "
        "in [0, 2^24], got " +
        std::to_string(c_in) + " and " + std::to_string(c_out));
  }
  return Status::Ok();
}

template <typename T>
Status LaunchConv(const T* in, int64_t n_in, int64_t c_in, const T* weights,
                  int64_t c_out, bool transpose_weights,
                  const DeviceKernelMap& map, int64_t n_out, T* out,
                  const ConvBuffers& b, cudaStream_t stream) {
  const int64_t K = map.num_offsets;
  if (n_out == 0 || c_out == 0) return Status::Ok();
  if (c_in == 0 || K == 0) {  // nothing to add: zeros
    cudaMemsetAsync(out, 0, n_out * c_out * sizeof(T), stream);
    return LaunchStatus("Conv");
  }
  const T* w = weights;
  if (transpose_weights && K * c_in * c_out > 0) {
    T* wt = static_cast<T*>(b.weights_t);
    TransposeWeightsKernel<T>
        <<<GridFor(K * c_in * c_out), kThreads, 0, stream>>>(weights, K, c_out,
                                                             c_in, wt);
    w = wt;
  }
  NonzeroOffsetsKernel<T>
      <<<static_cast<int>(std::min<int64_t>(K, 65535)), kThreads, 0, stream>>>(
          weights, K, c_in * c_out, b.nonzero);
  TilePointersKernel<<<GridFor(K * (b.num_tiles + 1)), kThreads, 0, stream>>>(
      map.splits, map.out_rows, b.nonzero, K, map.num_pairs, b.num_tiles,
      ConvConfig<T>::BM, b.tiles);
  constexpr size_t smem = ConvSharedBytes<T>();
  constexpr int V = Vec16<T>::N;
  const bool vec = c_in % V == 0 && c_out % V == 0 &&
                   reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0;
  auto kernel = vec ? ConvKernel<T, true> : ConvKernel<T, false>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem));
  const dim3 grid(static_cast<unsigned>(b.num_tiles),
                  static_cast<unsigned>(CeilDiv(c_out, ConvConfig<T>::BN)));
  kernel<<<grid, ConvConfig<T>::kThreads, smem, stream>>>(
      in, n_in, static_cast<int>(c_in), w, static_cast<int>(c_out), b.tiles,
      map.in_rows, map.out_rows, K, n_out, b.num_tiles, out);
  return LaunchStatus("Conv");
}

// --- Weight gradient
// -----------------------------------------------------------------

constexpr int kGradBC = 64, kGradBN = 64, kGradBP = 32, kGradTM = 4,
              kGradTN = 4;
constexpr int64_t kTargetSegments = 1024;
constexpr int64_t kMinSegment = 512;

// Pairs per segment: a function of P alone (deterministic whatever the GPU).
int64_t SegmentSize(int64_t P) {
  const int64_t s = CeilDiv(std::max<int64_t>(P, 1), kTargetSegments);
  return std::max(kMinSegment, CeilDiv(s, kGradBP) * kGradBP);
}
int64_t MaxSegments(int64_t P, int64_t K) {
  return CeilDiv(P, SegmentSize(P)) + K;
}

// One thread: first[k] = the first segment of offset k (first[K] = total),
// capped at max_segments so that a malformed map stays in bounds.
__global__ void SegmentPlanKernel(const int64_t* __restrict__ splits, int64_t K,
                                  int64_t segment, int64_t max_segments,
                                  int64_t* first) {
  int64_t s = 0;
  first[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = max(int64_t{0}, splits[k + 1] - splits[k]);
    s = min(max_segments, s + (n + segment - 1) / segment);
    first[k + 1] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    WeightGradPartialKernel(const T* __restrict__ in, int64_t n_in, int c_in,
                            const T* __restrict__ grad, int64_t n_out,
                            int c_out, const int64_t* __restrict__ splits,
                            const int32_t* __restrict__ in_rows,
                            const int32_t* __restrict__ out_rows, int64_t K,
                            int64_t P, const int64_t* __restrict__ first,
                            int64_t segment, T* __restrict__ partial) {
  static_assert(kGradBC == kGradBN && kThreads % kGradBC == 0, "mapping");
  constexpr int kRowStep = kThreads / kGradBC;  // pairs per load pass
  constexpr int kPer = kGradBP / kRowStep;      // elements per thread
  __shared__ __align__(16) T xs[kGradBP * kGradBC];
  __shared__ __align__(16) T gs[kGradBP * kGradBN];
  const int64_t s = blockIdx.x;
  if (s >= first[K]) return;
  int64_t lo = 0, hi = K;  // the offset: largest k with first[k] <= s
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first[mid] <= s) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t k = lo;
  const int64_t begin = min(max(splits[k], int64_t{0}), P);
  const int64_t end = min(max(splits[k + 1], begin), P);
  const int64_t p_begin = min(end, begin + (s - first[k]) * segment);
  const int64_t p_end = min(end, p_begin + segment);
  const int tid = threadIdx.x;
  const int tx = tid % (kGradBN / kGradTN), ty = tid / (kGradBN / kGradTN);
  const int l_c = tid % kGradBC, l_pp0 = tid / kGradBC;
  const int c0 = blockIdx.y * kGradBC, n0 = blockIdx.z * kGradBN;
  // Pipeline over chunks of kGradBP pairs: the row indices of chunk c + 1
  // are in shared memory (buffer (c + 1) & 1) before its operands are
  // loaded into registers during chunk c's arithmetic.
  __shared__ int32_t ri[2][kGradBP], ro[2][kGradBP];
  int32_t reg_i = -1, reg_o = -1;
  auto fetch_rows = [&](int64_t p) {
    reg_i = -1;
    reg_o = -1;
    if (tid < kGradBP && p + tid < p_end) {
      const int32_t i = in_rows[p + tid], o = out_rows[p + tid];
      reg_i = (i >= 0 && i < n_in) ? i : -1;
      reg_o = (o >= 0 && o < n_out) ? o : -1;
    }
  };
  T rx[kPer], rg[kPer];
  auto fetch_data = [&](const int32_t* rows_i, const int32_t* rows_o) {
    const int c = c0 + l_c, n = n0 + l_c;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int pp = l_pp0 + r * kRowStep;
      const int32_t i = rows_i[pp], o = rows_o[pp];
      rx[r] =
          (i >= 0 && c < c_in) ? in[static_cast<int64_t>(i) * c_in + c] : T(0);
      rg[r] = (o >= 0 && n < c_out) ? grad[static_cast<int64_t>(o) * c_out + n]
                                    : T(0);
    }
  };
  T acc[kGradTM][kGradTN];
#pragma unroll
  for (int i = 0; i < kGradTM; ++i) {
#pragma unroll
    for (int j = 0; j < kGradTN; ++j) acc[i][j] = T(0);
  }
  if (p_begin < p_end) {
    fetch_rows(p_begin);
    if (tid < kGradBP) {
      ri[0][tid] = reg_i;
      ro[0][tid] = reg_o;
    }
    fetch_rows(p_begin + kGradBP);
  }
  __syncthreads();
  if (p_begin < p_end) fetch_data(ri[0], ro[0]);
  int buf = 0;
  for (int64_t p = p_begin; p < p_end; p += kGradBP) {
    __syncthreads();  // the previous chunk consumed
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int pp = l_pp0 + r * kRowStep;
      xs[pp * kGradBC + l_c] = rx[r];
      gs[pp * kGradBN + l_c] = rg[r];
    }
    if (tid < kGradBP) {
      ri[buf ^ 1][tid] = reg_i;
      ro[buf ^ 1][tid] = reg_o;
    }
    __syncthreads();
    if (p + kGradBP < p_end) fetch_data(ri[buf ^ 1], ro[buf ^ 1]);
    fetch_rows(p + 2 * kGradBP);
#pragma unroll 8
    for (int pp = 0; pp < kGradBP; ++pp) {
      T a[kGradTM], b[kGradTN];
      LoadFragment<kGradTM>(xs + pp * kGradBC + ty * kGradTM, a);
      LoadFragment<kGradTN>(gs + pp * kGradBN + tx * kGradTN, b);
#pragma unroll
      for (int i = 0; i < kGradTM; ++i) {
#pragma unroll
        for (int j = 0; j < kGradTN; ++j)
          acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
    }
    buf ^= 1;
  }
  T* dst = partial + s * static_cast<int64_t>(c_in) * c_out;
#pragma unroll
  for (int i = 0; i < kGradTM; ++i) {
    const int c = c0 + ty * kGradTM + i;
    if (c >= c_in) continue;
#pragma unroll
    for (int j = 0; j < kGradTN; ++j) {
      const int n = n0 + tx * kGradTN + j;
      if (n < c_out) dst[static_cast<int64_t>(c) * c_out + n] = acc[i][j];
    }
  }
}

template <typename T>
__global__ void WeightGradReduceKernel(const T* __restrict__ partial,
                                       const int64_t* __restrict__ first,
                                       int64_t K, int64_t size,
                                       T* __restrict__ grad_weights) {
  const int64_t n = K * size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx =
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / size, e = idx - k * size;
    T sum = T(0);
    for (int64_t s = first[k]; s < first[k + 1]; ++s)
      sum += partial[s * size + e];
    grad_weights[idx] = sum;
  }
}

struct GradBuffers {
  int64_t* first;
  void* partial;
  int64_t segment;
  int64_t max_segments;
};

template <typename T>
GradBuffers CarveGrad(Carver* c, int64_t K, int64_t P, int64_t c_in,
                      int64_t c_out) {
  GradBuffers b;
  b.segment = SegmentSize(P);
  b.max_segments = MaxSegments(P, K);
  b.first = c->Take<int64_t>(K + 1);
  b.partial = c->Take<T>(b.max_segments * c_in * c_out);
  return b;
}

}  // namespace

template <typename T>
size_t ConvWorkspaceBytes(int64_t num_offsets, int64_t n_out, int64_t c_in,
                          int64_t c_out, bool transpose_weights) {
  Carver c(nullptr);
  CarveConv<T>(&c, num_offsets, n_out, c_in, c_out, transpose_weights);
  return c.used();
}

template <typename T>
Status Conv(const T* in, int64_t n_in, int64_t c_in, const T* weights,
            int64_t c_out, bool transpose_weights, const DeviceKernelMap& map,
            int64_t n_out, T* out, void* workspace, size_t workspace_bytes,
            GpuStream stream) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  Carver c(workspace);
  const ConvBuffers b =
      CarveConv<T>(&c, map.num_offsets, n_out, c_in, c_out, transpose_weights);
  status = CheckWorkspace(workspace_bytes, c.used(), "Conv");
  if (!status.ok()) return status;
  return LaunchConv<T>(in, n_in, c_in, weights, c_out, transpose_weights, map,
                       n_out, out, b, stream);
}

template <typename T>
size_t ConvBackpropInputWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                       int64_t n_in, int64_t c_in,
                                       int64_t c_out) {
  Carver c(nullptr);
  c.Take<int32_t>(num_pairs);
  c.Take<int32_t>(num_pairs);
  c.TakeBytes(TransposeKernelMapWorkspaceBytes(n_in, num_offsets));
  CarveConv<T>(&c, num_offsets, n_in, c_out, c_in, true);
  return c.used();
}

template <typename T>
Status ConvBackpropInput(const T* grad_out, int64_t n_out, int64_t c_out,
                         const T* weights, int64_t c_in,
                         const DeviceKernelMap& map, int64_t n_in, T* grad_in,
                         void* workspace, size_t workspace_bytes,
                         GpuStream stream, KernelMapCheck* check) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  const int64_t K = map.num_offsets, P = map.num_pairs;
  Carver c(workspace);
  int32_t* t_in = c.Take<int32_t>(P);
  int32_t* t_out = c.Take<int32_t>(P);
  const size_t transpose_bytes = TransposeKernelMapWorkspaceBytes(n_in, K);
  void* transpose = c.TakeBytes(transpose_bytes);
  const ConvBuffers cb = CarveConv<T>(&c, K, n_in, c_out, c_in, true);
  status = CheckWorkspace(workspace_bytes, c.used(), "ConvBackpropInput");
  if (!status.ok()) return status;
  if (n_in == 0 || c_in == 0) return Status::Ok();
  status = TransposeKernelMap(map, n_in, t_in, t_out, transpose,
                              transpose_bytes, stream, check);
  if (!status.ok()) return status;
  const DeviceKernelMap transposed{map.splits, t_in, t_out, K, P};
  return LaunchConv<T>(grad_out, n_out, c_out, weights, c_in,
                       /*transpose_weights=*/true, transposed, n_in, grad_in,
                       cb, stream);
}

template <typename T>
size_t ConvBackpropKernelWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                        int64_t c_in, int64_t c_out) {
  Carver c(nullptr);
  CarveGrad<T>(&c, num_offsets, num_pairs, c_in, c_out);
  return c.used();
}

template <typename T>
Status ConvBackpropKernel(const T* in, int64_t n_in, int64_t c_in,
                          const T* grad_out, int64_t n_out, int64_t c_out,
                          const DeviceKernelMap& map, T* grad_weights,
                          void* workspace, size_t workspace_bytes,
                          GpuStream stream) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  const int64_t K = map.num_offsets, P = map.num_pairs;
  Carver c(workspace);
  const GradBuffers b = CarveGrad<T>(&c, K, P, c_in, c_out);
  status = CheckWorkspace(workspace_bytes, c.used(), "ConvBackpropKernel");
  if (!status.ok()) return status;
  const int64_t size = c_in * c_out;
  if (K == 0 || size == 0) return Status::Ok();
  T* partial = static_cast<T*>(b.partial);
  SegmentPlanKernel<<<1, 1, 0, stream>>>(map.splits, K, b.segment,
                                         b.max_segments, b.first);
  const dim3 grid(static_cast<unsigned>(b.max_segments),
                  static_cast<unsigned>(CeilDiv(c_in, kGradBC)),
                  static_cast<unsigned>(CeilDiv(c_out, kGradBN)));
  WeightGradPartialKernel<T><<<grid, kThreads, 0, stream>>>(
      in, n_in, static_cast<int>(c_in), grad_out, n_out,
      static_cast<int>(c_out), map.splits, map.in_rows, map.out_rows, K, P,
      b.first, b.segment, partial);
  WeightGradReduceKernel<T><<<GridFor(K * size, 8192), kThreads, 0, stream>>>(
      partial, b.first, K, size, grad_weights);
  return LaunchStatus("ConvBackpropKernel");
}

#define SPARSE_OPS_INSTANTIATE(T)                                              \
  template size_t ConvWorkspaceBytes<T>(int64_t, int64_t, int64_t, int64_t,    \
                                        bool);                                 \
  template Status Conv<T>(const T*, int64_t, int64_t, const T*, int64_t, bool, \
                          const DeviceKernelMap&, int64_t, T*, void*, size_t,  \
                          GpuStream);                                          \
  template size_t ConvBackpropInputWorkspaceBytes<T>(                          \
      int64_t, int64_t, int64_t, int64_t, int64_t);                            \
  template Status ConvBackpropInput<T>(                                        \
      const T*, int64_t, int64_t, const T*, int64_t, const DeviceKernelMap&,   \
      int64_t, T*, void*, size_t, GpuStream, KernelMapCheck*);                 \
  template size_t ConvBackpropKernelWorkspaceBytes<T>(int64_t, int64_t,        \
                                                      int64_t, int64_t);       \
  template Status ConvBackpropKernel<T>(                                       \
      const T*, int64_t, int64_t, const T*, int64_t, int64_t,                  \
      const DeviceKernelMap&, T*, void*, size_t, GpuStream);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace gpu
}  // namespace sparse_ops

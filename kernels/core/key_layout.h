// The 64-bit key of a coordinate row, in one place for both cores: the bit
// widths of the axes, packing and unpacking, the hash of the coordinate
// tables and the symmetry test of kernel geometries. g++ compiles it into
// the CPU core (KeyPacker, CoordinateTable), nvcc into the CUDA core, so a
// key made on the GPU is the CPU's key bit for bit.
//
// Layout: axis a holds (c[a] - lo[a]) in bits [shift[a], shift[a] +
// bits[a]), with just enough bits for the axis' range [lo, hi] and the
// batch axis highest, so sorted keys are batch-major and row-major. Only
// a total wider than kMaxKeyBits is an error; all ones is the tables'
// empty mark.
#ifndef SPARSE_OPS_KERNELS_CORE_KEY_LAYOUT_H_
#define SPARSE_OPS_KERNELS_CORE_KEY_LAYOUT_H_

#include <cstdint>

#if defined(__CUDACC__)
#define SPARSE_OPS_HOST_DEVICE __host__ __device__
#define SPARSE_OPS_UNROLL _Pragma("unroll")
#else
#define SPARSE_OPS_HOST_DEVICE
#define SPARSE_OPS_UNROLL
#endif

namespace sparse_ops {

constexpr int kMaxDims = 32;     // batch + up to 31 spatial axes
constexpr int kMaxKeyBits = 63;  // all-ones is the hash tables' empty mark
constexpr uint64_t kEmptyKey = ~uint64_t{0};

// Bits to hold 0 .. span.
SPARSE_OPS_HOST_DEVICE inline int BitsFor(int64_t span) {
  int bits = 0;
  while (bits < 63 && (span >> bits) != 0) ++bits;
  return bits;
}

struct KeyLayout {
  int32_t dims;
  int32_t total_bits;
  int64_t lo[kMaxDims];
  int64_t span[kMaxDims];  // hi - lo
  int32_t shift[kMaxDims];
  int32_t bits[kMaxDims];
};

// The layout of per-axis ranges [lo[a], hi[a]] (lo > hi: no rows, the empty
// range [0, 0]). The caller refuses total_bits > kMaxKeyBits.
SPARSE_OPS_HOST_DEVICE inline void SetKeyLayout(int dims, const int64_t* lo,
                                                const int64_t* hi,
                                                KeyLayout* l) {
  l->dims = dims;
  int total = 0;
  for (int a = dims - 1; a >= 0; --a) {
    const bool empty = lo[a] > hi[a];
    l->lo[a] = empty ? 0 : lo[a];
    l->span[a] = empty ? 0 : hi[a] - lo[a];
    l->shift[a] = total;
    l->bits[a] = BitsFor(l->span[a]);
    total += l->bits[a];
  }
  l->total_bits = total;
}

// Packs row c (dims entries); false when c lies outside the layout's range.
// D > 0: dims known at compile time (unrolled on the GPU). `Layout` is a
// KeyLayout or any copy of its lo, span and shift (the GPU keeps one in
// shared memory).
template <int D = 0, typename Layout, typename C>
SPARSE_OPS_HOST_DEVICE inline bool PackKey(const Layout& l, int dims,
                                           const C* c, uint64_t* key) {
  uint64_t k = 0;
  SPARSE_OPS_UNROLL
  for (int a = 0; a < (D > 0 ? D : kMaxDims); ++a) {
    if (D == 0 && a >= dims) break;
    const int64_t v = static_cast<int64_t>(c[a]) - l.lo[a];
    if (v < 0 || v > l.span[a]) return false;
    k |= static_cast<uint64_t>(v) << l.shift[a];
  }
  *key = k;
  return true;
}

SPARSE_OPS_HOST_DEVICE inline void UnpackKey(const KeyLayout& l, uint64_t key,
                                             int32_t* c) {
  for (int a = 0; a < l.dims; ++a) {
    const uint64_t mask = l.bits[a] == 0 ? 0 : (uint64_t{1} << l.bits[a]) - 1;
    c[a] = static_cast<int32_t>(
        l.lo[a] + static_cast<int64_t>((key >> l.shift[a]) & mask));
  }
}

// The coordinate tables' hash of a key: the murmur3 finaliser.
SPARSE_OPS_HOST_DEVICE inline uint64_t HashKey(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// True when offset k and offset K-1-k (rows of offsets [K, d]) are
// negatives of each other: a map between identical coordinate sets then
// needs only half the probes, and mirrors the rest.
SPARSE_OPS_HOST_DEVICE inline bool IsSymmetricOffsets(const int32_t* offsets,
                                                      int64_t K, int d) {
  for (int64_t k = 0; k < K; ++k) {
    for (int j = 0; j < d; ++j) {
      if (offsets[k * d + j] != -offsets[(K - 1 - k) * d + j]) return false;
    }
  }
  return true;
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_KEY_LAYOUT_H_

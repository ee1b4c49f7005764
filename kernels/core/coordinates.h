// Coordinate algorithms of the framework-free core: 64-bit key packing, a
// parallel open-addressing hash table, kernel maps (per-offset CSR pairs),
// and the output coordinates of strided and generative convolutions.
//
// Coordinates are int32 rows [batch, x1 .. xD] (dims = 1 + D). Offsets are
// int32 [K, D] in units of a per-axis stride: the input site paired with
// output site o through offset k is o + offsets[k] * stride.
#ifndef SPARSE_OPS_KERNELS_CORE_COORDINATES_H_
#define SPARSE_OPS_KERNELS_CORE_COORDINATES_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/core/key_layout.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

// Temporary tables (neighbour tables [offsets, rows], candidate keys) hold
// at most TableBudget(rows) entries for an op on `rows` input and output
// rows: larger ones are built in chunks of offsets or replaced by sorting.
// So no op's temporary memory exceeds a fixed floor (256 MB of int32) or a
// constant factor of its inputs and outputs, whatever sizes it is handed.
constexpr int64_t kMinTableEntries = int64_t{1} << 26;
// Row counts must be below kMaxRows: row indices are int32, and -1 marks
// "no row".
constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1;
constexpr int64_t kTableEntriesPerRow = 64;
inline int64_t TableBudget(int64_t rows) {
  return std::max(kMinTableEntries, kTableEntriesPerRow * rows);
}
// Offsets per chunk of a table with rows_per_offset entries per offset
// within `budget` entries: in [1, num_offsets] (all of them when it fits).
inline int64_t OffsetsPerChunk(int64_t num_offsets, int64_t rows_per_offset,
                               int64_t budget) {
  const int64_t all = std::max<int64_t>(num_offsets, 1);
  if (rows_per_offset <= 0) return all;
  return std::min(all, std::max<int64_t>(1, budget / rows_per_offset));
}

// Packs a coordinate row into one uint64: each axis contributes
// (c - min) in just enough bits for its range [min, max]. The range is taken
// from the data, so coordinates near the int32 limits pack as well as small
// ones; only a total span wider than 63 bits is an error (never a wrap).
class KeyPacker {
 public:
  explicit KeyPacker(int dims);

  int dims() const { return dims_; }
  // Bits a packed key uses (after Finalize).
  int key_bits() const { return layout_.total_bits; }
  // The layout Finalize fixed (key_layout.h).
  const KeyLayout& layout() const { return layout_; }
  // Widens axis a's range to include [lo, hi].
  void Cover(int axis, int64_t lo, int64_t hi);
  // Widens every axis to include the rows of coords [n, dims].
  void CoverRows(const int32_t* coords, int64_t n);
  // Fixes the bit layout; fails when the ranges need more than 63 bits.
  Status Finalize();

  // Packs row c; returns false when c lies outside the covered range.
  template <typename C>
  bool Pack(const C* c, uint64_t* key) const {
    return PackKey(layout_, dims_, c, key);
  }
  void Unpack(uint64_t key, int32_t* c) const { UnpackKey(layout_, key, c); }
  // Pack(c + step) == Pack(c) + KeyStep(step) (mod 2^64) whenever c and
  // c + step both lie in the covered range: each axis' field then moves by
  // its step without a borrow or carry. step has dims() entries.
  uint64_t KeyStep(const int64_t* step) const;

 private:
  int dims_;
  int64_t lo_[kMaxDims];  // the covered ranges
  int64_t hi_[kMaxDims];
  KeyLayout layout_ = {};
};

// Finalize's error for a layout wider than kMaxKeyBits (the CUDA core's
// too).
Status KeyWidthStatus(const KeyLayout& layout);

// Open-addressing hash table from packed key to row, on caller storage.
class CoordinateTable {
 public:
  // Slots needed for n rows (a power of two, load factor <= 1/2).
  static int64_t CapacityFor(int64_t n);

  CoordinateTable(uint64_t* keys, int32_t* rows, int64_t capacity)
      : keys_(keys), rows_(rows), mask_(capacity - 1) {}

  // Inserts rows [0, n) of coords in parallel. Duplicate rows are an error
  // naming both rows; so are rows outside the packer's range.
  Status Build(const int32_t* coords, int64_t n, const KeyPacker& packer,
               const ParallelFor& parallel_for);

  void Prefetch(uint64_t key) const {
    const uint64_t slot = HashKey(key) & mask_;
    __builtin_prefetch(&keys_[slot]);
    __builtin_prefetch(&rows_[slot]);
  }

  int32_t Find(uint64_t key) const {
    uint64_t slot = HashKey(key) & mask_;
    while (true) {
      const uint64_t k = keys_[slot];
      if (k == key) return rows_[slot];
      if (k == kEmpty) return -1;
      slot = (slot + 1) & mask_;
    }
  }

  static constexpr uint64_t kEmpty = kEmptyKey;

 private:
  uint64_t* keys_;
  int32_t* rows_;
  uint64_t mask_;
};

struct KernelGeometry {
  const int32_t* offsets;  // [num_offsets, dims - 1]
  int64_t num_offsets;
  const int32_t* stride;  // [dims - 1], multiplies the offsets
};

// True when offset k and offset K-1-k are negatives of each other: then a
// map between identical coordinate sets needs only half the probes.
bool IsSymmetric(const KernelGeometry& geometry, int dims);

// neighbours[k * n_out + o] = the input row at out_coords[o] + offset k, or
// -1. `same_coordinates` says in_coords and out_coords are the same rows, so
// symmetric geometries probe half the offsets and mirror the rest. When
// counts is not null, counts[k] = the number of pairs of offset k.
void FindNeighbours(const CoordinateTable& in_table, const KeyPacker& packer,
                    const int32_t* out_coords, int64_t n_out,
                    const KernelGeometry& geometry, bool same_coordinates,
                    int32_t* neighbours, int64_t* counts,
                    const ParallelFor& parallel_for);

// The same neighbour table without a hash table, for coordinates in the
// order every coordinate op outputs (rows sorted, batch first, unique):
// an input row is then the rank of its key. Keys of a small range (bounded
// grids) take a rank bitmap (a bit test and a popcount per probe); others a
// merge per offset, whose probes are sorted too (O(K (n_in + n_out))).
// Returns false without writing when the rows are not strictly increasing
// or their keys would need more than 63 bits; the caller then hashes.
// The same rows on both sides with symmetric offsets (a submanifold map)
// probe half the offsets and mirror the others; with `mirrored` given, the
// mirrored rows of the table (offsets K/2 .. K-1) are left unwritten and
// *mirrored says so: FillPairs of the first K/2 offsets then MirrorPairs
// give the pairs.
bool FindNeighboursSorted(const int32_t* in_coords, int64_t n_in,
                          const int32_t* out_coords, int64_t n_out, int dims,
                          const KernelGeometry& geometry, int32_t* neighbours,
                          int64_t* counts, const ParallelFor& parallel_for,
                          bool* mirrored = nullptr);

// The pairs of offsets K/2 .. K-1 of a mirrored map (FindNeighboursSorted)
// of n rows, from those of offsets 0 .. K/2-1: offset K-1-k's pairs are
// offset k's with in and out swapped, in the same order (in sorted rows
// they are sorted by their new output row too); the centre (K odd) pairs
// every row with itself.
void MirrorPairs(const int64_t* splits, int64_t num_offsets, int64_t n,
                 int32_t* in_rows, int32_t* out_rows,
                 const ParallelFor& parallel_for);

// splits[0] = 0, splits[k + 1] = splits[k] + counts[k].
void SplitsFromCounts(const int64_t* counts, int64_t num_offsets,
                      int64_t* splits);

// Neighbour table [K, n_out] -> per-offset CSR. CountPairs writes
// splits[K + 1]; FillPairs then writes the pairs, within each offset in
// increasing output row.
void CountPairs(const int32_t* neighbours, int64_t num_offsets, int64_t n_out,
                int64_t* splits, const ParallelFor& parallel_for);
void FillPairs(const int32_t* neighbours, int64_t num_offsets, int64_t n_out,
               const int64_t* splits, int32_t* in_rows, int32_t* out_rows,
               const ParallelFor& parallel_for);

// A kernel map: for offset k, pairs [splits[k], splits[k+1]) of
// (in_rows[p], out_rows[p]), sorted by out_rows within each offset.
struct KernelMapView {
  const int64_t* splits;
  const int32_t* in_rows;
  const int32_t* out_rows;
  int64_t num_offsets;
};

// Checks a kernel map that came from outside: splits monotone from 0 to
// the pair count, rows in range, output rows increasing within an offset.
Status ValidateKernelMap(const KernelMapView& map, int64_t num_pairs,
                         int64_t n_in, int64_t n_out,
                         const ParallelFor& parallel_for);

// The neighbour table of the transposed map (roles of in and out swapped):
// table[k * n_in + i] = out row paired with input row i through offset k.
// Fails when an input row occurs twice within one offset (a map that did
// not come from unique coordinates).
Status TransposedNeighbours(const KernelMapView& map, int64_t n_in,
                            int32_t* table, const ParallelFor& parallel_for);

// Whether TransposeKernelMap builds a [K, n_in] neighbour table (within
// the TableBudget of the pair count) or sorts each offset's pairs.
bool TransposeUsesTable(const KernelMapView& map, int64_t n_in);

// The transposed map of a valid map: the same pair counts per offset
// (t_splits = map.splits), t_in = the map's out rows and t_out = its in
// rows, sorted by t_out within each offset (the order the core's kernels
// need). Scratch: `table` [K, n_in] when TransposeUsesTable, else `pairs`
// [P]. Fails when an input row occurs twice within one offset.
Status TransposeKernelMap(const KernelMapView& map, int64_t n_in,
                          int32_t* table, uint64_t* pairs, int64_t* t_splits,
                          int32_t* t_in, int32_t* t_out,
                          const ParallelFor& parallel_for);

// Keys of the output sites of a strided convolution: floor(c / s) * s per
// spatial axis, batch kept. Writes n keys, sorts them and returns the
// number of unique ones in *num_unique. `packer` is set up for Unpack.
Status StridedKeys(const int32_t* coords, int64_t n, int dims,
                   const int32_t* stride, KeyPacker* packer, uint64_t* keys,
                   int64_t* num_unique);

// The sorted unique keys of every site c + offsets[k] * stride (generative
// transposed convolution) in *keys. The n * K candidates are made in chunks
// of offsets of at most `budget` keys (TableBudget(n)), merged as they come;
// fails as soon as there would be `max_sites` sites (kMaxRows) or more.
Status GenerativeKeys(const int32_t* coords, int64_t n, int dims,
                      const KernelGeometry& geometry, int64_t budget,
                      int64_t max_sites, KeyPacker* packer,
                      std::vector<uint64_t>* keys,
                      const ParallelFor& parallel_for);

void UnpackKeys(const KeyPacker& packer, const uint64_t* keys, int64_t n,
                int32_t* coords, const ParallelFor& parallel_for);

// First row with a negative batch index, or -1.
int64_t FindNegativeBatch(const int32_t* coords, int64_t n, int dims);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_COORDINATES_H_

// The kernel map of two coordinate sets, from end to end: the choice
// between merging sorted rows and hashing, the uniqueness checks, and the
// neighbour table in chunks of offsets within TableBudget. Two phases, as
// on the GPU: Count gives the pairs per offset (which size the outputs),
// Fill writes them.
#ifndef SPARSE_OPS_KERNELS_CORE_KERNEL_MAP_H_
#define SPARSE_OPS_KERNELS_CORE_KERNEL_MAP_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/core/allocate.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

class KernelMapSearch {
 public:
  // in_coords [n_in, dims], out_coords [n_out, dims]; the same pointer and
  // count for both is a submanifold map (symmetric geometries then probe
  // half the offsets). Pointers must outlive the search. table_budget
  // (entries of the neighbour table; tests set it small) defaults to
  // TableBudget(n_in + n_out).
  KernelMapSearch(const int32_t* in_coords, int64_t n_in,
                  const int32_t* out_coords, int64_t n_out, int dims,
                  const KernelGeometry& geometry, Allocate allocate,
                  ParallelFor parallel_for, int64_t table_budget = 0);

  // counts[k] = the pairs of offset k (K entries). Fails on duplicate
  // sites in either set, on keys wider than 63 bits, or without memory.
  Status Count(int64_t* counts);

  // The pairs, after Count: splits [K + 1] from SplitsFromCounts, in_rows
  // and out_rows [splits[K]], sorted by output row within each offset.
  Status Fill(const int64_t* splits, int32_t* in_rows, int32_t* out_rows);

 private:
  // The neighbour table of offsets [first, first + count) into table_.
  Status Find(int64_t first, int64_t count, int64_t* counts);
  Status BuildHashTable();

  const int32_t* in_;
  const int32_t* out_;
  const int64_t n_in_, n_out_;
  const int dims_;
  const KernelGeometry geometry_;
  const Allocate allocate_;
  const ParallelFor parallel_for_;
  const int64_t chunk_;       // offsets per neighbour table
  int32_t* table_ = nullptr;  // [min(chunk_, K), n_out]
  bool try_sorted_ = true;    // until rows turn out not to be sorted
  bool mirrored_ = false;     // table_ holds the first K/2 offsets only
  KeyPacker packer_;
  std::unique_ptr<CoordinateTable> hash_;
};

// Fails unless the rows of coords [n, dims] are unique (the error names
// the two rows) and their keys fit 63 bits.
Status CheckUniqueRows(const int32_t* coords, int64_t n, int dims,
                       const Allocate& allocate,
                       const ParallelFor& parallel_for);

// The transposed map of a valid map (TransposeKernelMap) in memory from
// `allocate`, scratch included (within TableBudget: a [K, n_in] table or
// the pairs to sort). Fails when an input row repeats within an offset.
Status TransposedKernelMap(const KernelMapView& map, int64_t n_in,
                           const Allocate& allocate,
                           const ParallelFor& parallel_for,
                           KernelMapView* transposed);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_KERNEL_MAP_H_

#include "kernels/core/kernel_map.h"

#include <algorithm>
#include <string>
#include <utility>

namespace sparse_ops {

KernelMapSearch::KernelMapSearch(const int32_t* in_coords, int64_t n_in,
                                 const int32_t* out_coords, int64_t n_out,
                                 int dims, const KernelGeometry& geometry,
                                 Allocate allocate, ParallelFor parallel_for,
                                 int64_t table_budget)
    : in_(in_coords), out_(out_coords), n_in_(n_in), n_out_(n_out), dims_(dims),
      geometry_(geometry), allocate_(std::move(allocate)),
      parallel_for_(std::move(parallel_for)),
      chunk_(OffsetsPerChunk(
          geometry.num_offsets, n_out,
          table_budget > 0 ? table_budget : TableBudget(n_in + n_out))),
      packer_(dims) {}

Status KernelMapSearch::Count(int64_t* counts) {
  const int64_t K = geometry_.num_offsets;
  const int64_t entries = std::min(chunk_, K) * n_out_;
  table_ = static_cast<int32_t*>(allocate_(entries * int64_t{sizeof(int32_t)}));
  if (table_ == nullptr && entries > 0) {
    return Status::OutOfMemory("out of memory for a neighbour table of " +
                               std::to_string(entries) + " entries");
  }
  // At least one search, so that the coordinates are checked (duplicate
  // sites, key width) even without offsets.
  for (int64_t k0 = 0; k0 < std::max<int64_t>(K, 1); k0 += chunk_) {
    const Status status = Find(k0, std::min(chunk_, K - k0), counts + k0);
    if (!status.ok()) return status;
  }
  return Status::Ok();
}

Status KernelMapSearch::Fill(const int64_t* splits, int32_t* in_rows,
                             int32_t* out_rows) {
  const int64_t K = geometry_.num_offsets;
  // One chunk: the table of Count is still there. Several: search each
  // again (the table holds one chunk at a time).
  if (mirrored_) {  // one chunk, a mirrored submanifold map
    FillPairs(table_, K / 2, n_out_, splits, in_rows, out_rows, parallel_for_);
    MirrorPairs(splits, K, n_out_, in_rows, out_rows, parallel_for_);
    return Status::Ok();
  }
  std::vector<int64_t> counts(chunk_ < K ? chunk_ : 0);
  for (int64_t k0 = 0; k0 < K; k0 += chunk_) {
    const int64_t count = std::min(chunk_, K - k0);
    if (chunk_ < K) {
      const Status status = Find(k0, count, counts.data());
      if (!status.ok()) return status;
    }
    FillPairs(table_, count, n_out_, splits + k0, in_rows, out_rows,
              parallel_for_);
  }
  return Status::Ok();
}

Status KernelMapSearch::Find(int64_t first, int64_t count, int64_t* counts) {
  const KernelGeometry chunk{geometry_.offsets + first * (dims_ - 1), count,
                             geometry_.stride};
  // Sorted rows (what every coordinate op outputs) merge without a table.
  if (try_sorted_) {
    // With every offset in one chunk, Fill mirrors the pairs themselves.
    const bool whole = count == geometry_.num_offsets;
    if (FindNeighboursSorted(in_, n_in_, out_, n_out_, dims_, chunk, table_,
                             counts, parallel_for_,
                             whole ? &mirrored_ : nullptr)) {
      return Status::Ok();
    }
    try_sorted_ = false;  // rows out of order: hash from now on
  }
  if (hash_ == nullptr) {
    const Status status = BuildHashTable();
    if (!status.ok()) return status;
  }
  // The same rows on both sides (a submanifold convolution) let a symmetric
  // kernel probe half its offsets.
  const bool same = in_ == out_ && n_in_ == n_out_;
  FindNeighbours(*hash_, packer_, out_, n_out_, chunk, same, table_, counts,
                 parallel_for_);
  return Status::Ok();
}

namespace {

// A hash table of the rows of coords, built with `packer` (finalized):
// fails on duplicate rows, naming both.
Status BuildTable(const int32_t* coords, int64_t n, const KeyPacker& packer,
                  const Allocate& allocate, const ParallelFor& parallel_for,
                  std::unique_ptr<CoordinateTable>* table) {
  const int64_t capacity = CoordinateTable::CapacityFor(n);
  auto* keys =
      static_cast<uint64_t*>(allocate(capacity * int64_t{sizeof(uint64_t)}));
  auto* rows =
      static_cast<int32_t*>(allocate(capacity * int64_t{sizeof(int32_t)}));
  if (keys == nullptr || rows == nullptr) {
    return Status::OutOfMemory("out of memory for a hash table of " +
                               std::to_string(capacity) + " slots");
  }
  *table = std::make_unique<CoordinateTable>(keys, rows, capacity);
  return (*table)->Build(coords, n, packer, parallel_for);
}

Status Named(const char* name, const Status& status) {
  if (status.ok() || status.out_of_memory()) return status;
  return Status::Error(std::string(name) + ": " + status.message());
}

}  // namespace

Status KernelMapSearch::BuildHashTable() {
  // One key layout for both sets: the input range is all a probe can hit.
  packer_.CoverRows(in_, n_in_);
  Status status = packer_.Finalize();
  if (status.ok()) {
    status = BuildTable(in_, n_in_, packer_, allocate_, parallel_for_, &hash_);
  }
  if (!status.ok()) return status;
  const bool same = in_ == out_ && n_in_ == n_out_;
  return same ? status
              : Named("out_coordinates",
                      CheckUniqueRows(out_, n_out_, dims_, allocate_,
                                      parallel_for_));
}

Status CheckUniqueRows(const int32_t* coords, int64_t n, int dims,
                       const Allocate& allocate,
                       const ParallelFor& parallel_for) {
  KeyPacker packer(dims);
  packer.CoverRows(coords, n);
  Status status = packer.Finalize();
  std::unique_ptr<CoordinateTable> table;
  if (status.ok())
    status = BuildTable(coords, n, packer, allocate, parallel_for, &table);
  return status;
}

Status TransposedKernelMap(const KernelMapView& map, int64_t n_in,
                           const Allocate& allocate,
                           const ParallelFor& parallel_for,
                           KernelMapView* transposed) {
  const int64_t K = map.num_offsets, pairs = map.splits[K];
  const bool table = TransposeUsesTable(map, n_in);
  int32_t* table_scratch =
      table ? AllocateArray<int32_t>(allocate, K * n_in) : nullptr;
  uint64_t* pair_scratch =
      table ? nullptr : AllocateArray<uint64_t>(allocate, pairs);
  auto* splits = AllocateArray<int64_t>(allocate, K + 1);
  auto* in_rows = AllocateArray<int32_t>(allocate, pairs);
  auto* out_rows = AllocateArray<int32_t>(allocate, pairs);
  if ((table_scratch == nullptr && pair_scratch == nullptr) ||
      splits == nullptr || in_rows == nullptr || out_rows == nullptr) {
    return Status::OutOfMemory(
        "out of memory for the transposed kernel map of " +
        std::to_string(pairs) + " pairs");
  }
  const Status status =
      TransposeKernelMap(map, n_in, table_scratch, pair_scratch, splits,
                         in_rows, out_rows, parallel_for);
  if (status.ok()) *transposed = KernelMapView{splits, in_rows, out_rows, K};
  return status;
}

}  // namespace sparse_ops

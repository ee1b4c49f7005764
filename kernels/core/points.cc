#include "kernels/core/points.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace sparse_ops {

void LookupRows(const CoordinateTable& table, const KeyPacker& packer,
                const int32_t* queries, int64_t num_queries, int32_t* rows,
                const ParallelFor& parallel_for) {
  const int dims = packer.dims();
  parallel_for(num_queries, 40, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      uint64_t key;
      rows[q] = packer.Pack(queries + q * dims, &key) ? table.Find(key) : -1;
    }
  });
}

Status UnionCoordinates(const int32_t* const* inputs, const int64_t* sizes,
                        int num_inputs, int dims, int32_t* rows, int64_t* first,
                        int64_t* num_union) {
  KeyPacker packer(dims);
  int64_t total = 0;
  for (int i = 0; i < num_inputs; ++i) {
    packer.CoverRows(inputs[i], sizes[i]);
    total += sizes[i];
  }
  Status status = packer.Finalize();
  if (!status.ok()) return status;

  // (key, position in the concatenation); sorting groups equal sites with
  // their positions increasing, so a group's first entry is the site's
  // first appearance and entries of one input are adjacent.
  std::vector<std::pair<uint64_t, int64_t>> entries(total);
  std::vector<int> input_of(total);
  int64_t p = 0;
  for (int i = 0; i < num_inputs; ++i) {
    for (int64_t r = 0; r < sizes[i]; ++r, ++p) {
      packer.Pack(inputs[i] + r * dims, &entries[p].first);  // covered above
      entries[p].second = p;
      input_of[p] = i;
    }
  }
  std::sort(entries.begin(), entries.end());

  // first_of[p] = the first appearance of the site at position p.
  std::vector<int64_t> first_of(total);
  std::vector<char> is_first(total, 0);
  for (int64_t e = 0; e < total; ++e) {
    const bool new_site = e == 0 || entries[e].first != entries[e - 1].first;
    const int64_t pos = entries[e].second;
    if (!new_site && input_of[entries[e - 1].second] == input_of[pos]) {
      const int i = input_of[pos];
      int64_t offset = 0;
      for (int j = 0; j < i; ++j) offset += sizes[j];
      return Status::Error("coordinates[" + std::to_string(i) +
                           "] has duplicate sites: rows " +
                           std::to_string(entries[e - 1].second - offset) +
                           " and " + std::to_string(pos - offset) +
                           " are equal; merge duplicates first, e.g. with "
                           "sparse_ops.utils.sparse_quantize");
    }
    first_of[pos] = new_site ? pos : first_of[entries[e - 1].second];
    if (new_site) is_first[pos] = 1;
  }
  // Union rows number the first appearances in position order; a position
  // refers back to its first appearance, which comes no later.
  int64_t count = 0;
  for (int64_t q = 0; q < total; ++q) {
    if (is_first[q]) {
      first[count] = q;
      rows[q] = static_cast<int32_t>(count++);
    } else {
      rows[q] = rows[first_of[q]];
    }
  }
  *num_union = count;
  return Status::Ok();
}

void UnionSites(const int32_t* const* inputs, const int64_t* sizes, int dims,
                const int64_t* first, int64_t num_union, int32_t* out) {
  // first[] increases (union rows are numbered by first appearance), so one
  // pass walks the inputs in step.
  int input = 0;
  int64_t offset = 0;
  for (int64_t u = 0; u < num_union; ++u) {
    while (first[u] >= offset + sizes[input]) offset += sizes[input++];
    std::copy_n(inputs[input] + (first[u] - offset) * dims, dims,
                out + u * dims);
  }
}

}  // namespace sparse_ops

// Framework-free test of kernels/core/points.h against std::map oracles:
// lookups (present, absent, out of range, int32 limits) and unions (order
// of first appearance, rows, duplicate and overflow errors). Exits nonzero
// on any failure. Run: bazel test //kernels:points_test
#include "kernels/core/points.h"

#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/test_harness.h"

namespace sparse_ops {
namespace {

using Row = std::vector<int32_t>;
constexpr int kDims = 4;
constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
constexpr int32_t kMin = std::numeric_limits<int32_t>::min();

std::vector<Row> RandomRows(std::mt19937* rng, int n, int lo, int hi) {
  std::map<Row, int> seen;
  std::vector<Row> rows;
  std::uniform_int_distribution<int> batch(0, 1), axis(lo, hi);
  while (static_cast<int>(rows.size()) < n) {
    Row r{batch(*rng), axis(*rng), axis(*rng), axis(*rng)};
    if (seen.emplace(r, 0).second) rows.push_back(r);
  }
  return rows;
}

std::vector<int32_t> Flatten(const std::vector<Row>& rows) {
  std::vector<int32_t> flat;
  for (const Row& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return flat;
}

void TestLookup() {
  std::mt19937 rng(1);
  const std::vector<Row> set = RandomRows(&rng, 300, -5, 5);
  std::vector<Row> queries = RandomRows(&rng, 400, -7, 7);
  queries.push_back({0, kMax, kMin, 0});
  queries.push_back({-1, 0, 0, 0});
  queries.push_back({kMax, kMax, kMax, kMax});
  queries.push_back(set[7]);
  queries.push_back(set[7]);
  const std::vector<int32_t> coords = Flatten(set), q = Flatten(queries);
  KeyPacker packer(kDims);
  packer.CoverRows(coords.data(), set.size());
  EXPECT(packer.Finalize().ok());
  const int64_t capacity = CoordinateTable::CapacityFor(set.size());
  std::vector<uint64_t> keys(capacity);
  std::vector<int32_t> slots(capacity);
  CoordinateTable table(keys.data(), slots.data(), capacity);
  EXPECT(table.Build(coords.data(), set.size(), packer, SerialFor).ok());
  std::vector<int32_t> rows(queries.size());
  LookupRows(table, packer, q.data(), queries.size(), rows.data(), SerialFor);
  std::map<Row, int32_t> oracle;
  for (size_t i = 0; i < set.size(); ++i) oracle[set[i]] = i;
  for (size_t i = 0; i < queries.size(); ++i) {
    const auto it = oracle.find(queries[i]);
    EXPECT(rows[i] == (it == oracle.end() ? -1 : it->second));
  }
}

void TestUnion() {
  std::mt19937 rng(2);
  std::vector<std::vector<Row>> sets = {RandomRows(&rng, 200, -4, 4),
                                        {},
                                        RandomRows(&rng, 150, -4, 4),
                                        RandomRows(&rng, 100, -4, 4)};
  sets[3].push_back({1, kMax, 0, 0});  // the int32 limits on one axis
  sets[2].push_back({0, kMin, 1, 1});
  std::vector<std::vector<int32_t>> flat;
  std::vector<const int32_t*> ptrs;
  std::vector<int64_t> sizes;
  for (const auto& s : sets) flat.push_back(Flatten(s));
  int64_t total = 0;
  for (size_t i = 0; i < sets.size(); ++i) {
    ptrs.push_back(flat[i].data());
    sizes.push_back(sets[i].size());
    total += sets[i].size();
  }
  std::vector<int32_t> rows(total);
  std::vector<int64_t> first(total);
  int64_t num_union = -1;
  EXPECT(UnionCoordinates(ptrs.data(), sizes.data(), sets.size(), kDims,
                          rows.data(), first.data(), &num_union)
             .ok());
  // Oracle: insertion order over the concatenation.
  std::map<Row, int32_t> index;
  std::vector<int64_t> want_first;
  int64_t p = 0;
  for (const auto& s : sets) {
    for (const Row& r : s) {
      const auto inserted =
          index.emplace(r, static_cast<int32_t>(index.size()));
      if (inserted.second) want_first.push_back(p);
      EXPECT(rows[p] == inserted.first->second);
      ++p;
    }
  }
  EXPECT(num_union == static_cast<int64_t>(index.size()));
  for (int64_t u = 0; u < num_union; ++u) EXPECT(first[u] == want_first[u]);
  for (int64_t r = 0; r < 200; ++r)
    EXPECT(rows[r] == r);  // first input: identity

  // A site repeated within one input is an error; across inputs it is not.
  std::vector<int32_t> a = Flatten({{0, 1, 2, 3}}),
                       b = Flatten({{0, 5, 5, 5}, {0, 1, 2, 3}, {0, 5, 5, 5}});
  const int32_t* two[] = {a.data(), b.data()};
  int64_t two_sizes[] = {1, 3};
  std::vector<int32_t> r4(4);
  std::vector<int64_t> f4(4);
  EXPECT(!UnionCoordinates(two, two_sizes, 2, kDims, r4.data(), f4.data(),
                           &num_union)
              .ok());
  two_sizes[1] = 2;
  EXPECT(UnionCoordinates(two, two_sizes, 2, kDims, r4.data(), f4.data(),
                          &num_union)
             .ok());
  EXPECT(num_union == 2 && r4[0] == 0 && r4[1] == 1 && r4[2] == 0);
  // Ranges too wide for a 64-bit key.
  std::vector<int32_t> wide =
      Flatten({{0, kMin, kMin, kMin}, {1, kMax, kMax, kMax}});
  const int32_t* one[] = {wide.data()};
  int64_t one_size[] = {2};
  EXPECT(!UnionCoordinates(one, one_size, 1, kDims, r4.data(), f4.data(),
                           &num_union)
              .ok());
  // No rows at all.
  int64_t zero[] = {0};
  EXPECT(UnionCoordinates(one, zero, 1, kDims, r4.data(), f4.data(), &num_union)
             .ok());
  EXPECT(num_union == 0);
}

}  // namespace
}  // namespace sparse_ops

int main() {
  sparse_ops::TestLookup();
  sparse_ops::TestUnion();
  return sparse_ops::testing::TestResult("points_test");
}

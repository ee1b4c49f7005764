// Framework-free test of the core (no TensorFlow, no gtest): kernel maps,
// key packing and convolutions against brute-force oracles, error Statuses,
// and determinism between a serial and a 2-thread ParallelFor.
// Exits nonzero on any failure. Run: bazel test //kernels:core_test
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/core/conv.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/kernel_map.h"
#include "kernels/core/parallel.h"
#include "kernels/core/pool.h"
#include "kernels/core/status.h"
#include "kernels/core/test_harness.h"

namespace sparse_ops {
namespace {

using testing::AllNear;
using testing::BitwiseEqual;
using testing::Contains;

constexpr int32_t kMin = std::numeric_limits<int32_t>::min();
constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
constexpr int kDims = 4;  // batch + 3 spatial axes

using Row = std::array<int32_t, kDims>;

// A ParallelFor on `threads` std::threads: [0, n) is cut into chunks of
// `chunk` units, dealt round-robin, so shards differ from SerialFor's.
ParallelFor ThreadedFor(int threads, int64_t chunk) {
  return [threads, chunk](int64_t n, int64_t /*cost*/,
                          const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([=, &fn] {
        for (int64_t b = t * chunk; b < n; b += threads * chunk) {
          fn(b, std::min(n, b + chunk));
        }
      });
    }
    for (auto& th : pool) th.join();
  };
}

struct Runner {
  const char* name;
  ParallelFor parallel_for;
};

std::vector<Runner> Runners() {
  return {{"serial", SerialFor},
          {"2 threads, halves", ThreadedFor(2, int64_t{1} << 40)},
          {"2 threads, chunks of 7", ThreadedFor(2, 7)},
          {"2 threads, chunks of 1", ThreadedFor(2, 1)}};
}

std::vector<int32_t> Flatten(const std::vector<Row>& rows) {
  std::vector<int32_t> flat;
  for (const Row& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return flat;
}

std::string RowString(const int32_t* c, int dims) {
  std::string s = "[";
  for (int a = 0; a < dims; ++a) s += (a ? ", " : "") + std::to_string(c[a]);
  return s + "]";
}

// Unique rows drawn from boxes [lo, hi] per axis, about `fill` of each box.
std::vector<Row> RandomRows(std::mt19937_64* rng, const std::vector<Row>& lo,
                            const std::vector<Row>& hi, double fill) {
  std::set<Row> seen;
  std::vector<Row> rows;
  for (size_t box = 0; box < lo.size(); ++box) {
    double volume = 1;
    for (int a = 0; a < kDims; ++a) {
      volume *= static_cast<double>(hi[box][a]) - lo[box][a] + 1;
    }
    const int64_t count = static_cast<int64_t>(volume * fill) + 1;
    for (int64_t i = 0; i < count; ++i) {
      Row r;
      for (int a = 0; a < kDims; ++a) {
        r[a] = std::uniform_int_distribution<int32_t>(lo[box][a],
                                                      hi[box][a])(*rng);
      }
      if (seen.insert(r).second) rows.push_back(r);
    }
  }
  std::shuffle(rows.begin(), rows.end(), *rng);
  return rows;
}

// --- Kernel maps -------------------------------------------------------------

struct KernelMap {
  std::vector<int64_t> splits;
  std::vector<int32_t> in_rows, out_rows, neighbours;
  std::vector<int64_t> counts;  // from FindNeighbours, where it gives them
  bool merged = false;          // FindNeighboursSorted made the table
  KernelMapView view() const {
    return {splits.data(), in_rows.data(), out_rows.data(),
            static_cast<int64_t>(splits.size()) - 1};
  }
};

// Calls FindNeighbours with or without its per-offset pair `counts`
// argument (newer cores have one), so that this test builds against both;
// *counts stays empty without it. With it, also checks that passing no
// counts (nullptr) gives the same neighbour table.
template <typename Fn>
void CallFindNeighbours(Fn find, const CoordinateTable& table,
                        const KeyPacker& packer, const int32_t* out_coords,
                        int64_t n_out, const KernelGeometry& geometry,
                        bool same, int32_t* neighbours,
                        std::vector<int64_t>* counts,
                        const ParallelFor& parallel_for) {
  if constexpr (std::is_invocable_v<Fn, const CoordinateTable&,
                                    const KeyPacker&, const int32_t*, int64_t,
                                    const KernelGeometry&, bool, int32_t*,
                                    int64_t*, const ParallelFor&>) {
    counts->assign(geometry.num_offsets, -7);
    find(table, packer, out_coords, n_out, geometry, same, neighbours,
         counts->data(), parallel_for);
    std::vector<int32_t> again(geometry.num_offsets * n_out, -7);
    find(table, packer, out_coords, n_out, geometry, same, again.data(),
         nullptr, parallel_for);
    EXPECT(std::equal(again.begin(), again.end(), neighbours));
  } else {
    counts->clear();
    find(table, packer, out_coords, n_out, geometry, same, neighbours,
         parallel_for);
  }
}

// The kernel op's recipe (kernels/tf/coordinate_kernels.cc, KernelMapOp).
Status BuildKernelMap(const std::vector<int32_t>& in,
                      const std::vector<int32_t>& out, bool same,
                      const std::vector<int32_t>& offsets,
                      const std::vector<int32_t>& stride,
                      const ParallelFor& parallel_for, KernelMap* map) {
  const int64_t n_in = in.size() / kDims, n_out = out.size() / kDims;
  const int64_t K = offsets.size() / (kDims - 1);
  const KernelGeometry geometry{offsets.data(), K, stride.data()};
  const int32_t* out_coords = same ? in.data() : out.data();
  map->neighbours.assign(K * n_out, -7);
  map->counts.assign(K, -7);
  map->merged = FindNeighboursSorted(in.data(), n_in, out_coords, n_out, kDims,
                                     geometry, map->neighbours.data(),
                                     map->counts.data(), parallel_for);
  if (!map->merged) {
    KeyPacker packer(kDims);
    packer.CoverRows(in.data(), n_in);
    Status status = packer.Finalize();
    if (!status.ok()) return status;
    const int64_t capacity = CoordinateTable::CapacityFor(n_in);
    std::vector<uint64_t> keys(capacity);
    std::vector<int32_t> rows(capacity, -1);
    CoordinateTable table(keys.data(), rows.data(), capacity);
    status = table.Build(in.data(), n_in, packer, parallel_for);
    if (!status.ok()) return status;
    CallFindNeighbours(&FindNeighbours, table, packer, out_coords, n_out,
                       geometry, same, map->neighbours.data(), &map->counts,
                       parallel_for);
  }
  map->splits.assign(K + 1, -7);
  CountPairs(map->neighbours.data(), K, n_out, map->splits.data(),
             parallel_for);
  map->in_rows.assign(map->splits[K], -7);
  map->out_rows.assign(map->splits[K], -7);
  FillPairs(map->neighbours.data(), K, n_out, map->splits.data(),
            map->in_rows.data(), map->out_rows.data(), parallel_for);
  return Status::Ok();
}

// Brute force: std::map from site to row, probe every (offset, out row).
KernelMap OracleKernelMap(const std::vector<Row>& in,
                          const std::vector<Row>& out,
                          const std::vector<int32_t>& offsets,
                          const std::vector<int32_t>& stride) {
  std::map<Row, int32_t> index;
  for (size_t i = 0; i < in.size(); ++i) index[in[i]] = static_cast<int32_t>(i);
  const int64_t K = offsets.size() / (kDims - 1);
  KernelMap map;
  map.splits.push_back(0);
  for (int64_t k = 0; k < K; ++k) {
    for (size_t o = 0; o < out.size(); ++o) {
      Row q = out[o];
      bool in_range = true;
      for (int a = 1; a < kDims; ++a) {
        const int64_t v =
            static_cast<int64_t>(out[o][a]) +
            static_cast<int64_t>(offsets[k * (kDims - 1) + a - 1]) *
                stride[a - 1];
        if (v < kMin || v > kMax) in_range = false;
        q[a] = static_cast<int32_t>(v);
      }
      if (!in_range) continue;
      auto it = index.find(q);
      if (it == index.end()) continue;
      map.in_rows.push_back(it->second);
      map.out_rows.push_back(static_cast<int32_t>(o));
    }
    map.splits.push_back(static_cast<int64_t>(map.in_rows.size()));
  }
  return map;
}

std::vector<int32_t> Cube3(int radius) {  // offsets [-r, r]^3, row-major
  std::vector<int32_t> offsets;
  for (int x = -radius; x <= radius; ++x)
    for (int y = -radius; y <= radius; ++y)
      for (int z = -radius; z <= radius; ++z)
        offsets.insert(offsets.end(), {x, y, z});
  return offsets;
}

std::vector<int32_t> Corner2() {  // offsets {0, 1}^3: not symmetric
  std::vector<int32_t> offsets;
  for (int x = 0; x <= 1; ++x)
    for (int y = 0; y <= 1; ++y)
      for (int z = 0; z <= 1; ++z) offsets.insert(offsets.end(), {x, y, z});
  return offsets;
}

void ExpectSameMap(const KernelMap& got, const KernelMap& want,
                   const std::string& what) {
  EXPECT_MSG(got.splits == want.splits, what + ": splits");
  EXPECT_MSG(got.in_rows == want.in_rows, what + ": in_rows");
  EXPECT_MSG(got.out_rows == want.out_rows, what + ": out_rows");
}

// Checks one kernel map against the oracle for every runner, and that all
// runners agree exactly (including the neighbour tables).
void CheckKernelMap(const std::string& name, const std::vector<Row>& in,
                    const std::vector<Row>& out, bool same,
                    const std::vector<int32_t>& offsets,
                    const std::vector<int32_t>& stride, bool want_merged) {
  const KernelMap want = OracleKernelMap(in, same ? in : out, offsets, stride);
  const std::vector<int32_t> in_flat = Flatten(in), out_flat = Flatten(out);
  const int64_t K = offsets.size() / (kDims - 1);
  const int64_t n_out = same ? in.size() : out.size();
  EXPECT_MSG(want.splits[K] > 0, name + ": the oracle found no pairs");
  KernelMap first;
  bool have_first = false;
  for (const Runner& runner : Runners()) {
    const std::string what = name + " (" + runner.name + ")";
    KernelMap got;
    const Status status = BuildKernelMap(in_flat, out_flat, same, offsets,
                                         stride, runner.parallel_for, &got);
    EXPECT_MSG(status.ok(), what + ": " + status.message());
    if (!status.ok()) continue;
    EXPECT_MSG(got.merged == want_merged,
               what + (want_merged ? ": the sorted path declined"
                                   : ": the sorted path ran"));
    ExpectSameMap(got, want, what);
    // KernelMapSearch (what the op runs): one table, and chunks of 1 and 5
    // offsets (each searched twice), give the same map.
    for (const int64_t budget : {int64_t{0}, n_out, 5 * n_out}) {
      std::vector<std::vector<char>> memory;
      const Allocate allocate = [&memory](int64_t bytes) -> void* {
        memory.emplace_back(bytes + 64);
        return reinterpret_cast<void*>(
            (reinterpret_cast<uintptr_t>(memory.back().data()) + 63) &
            ~uintptr_t{63});
      };
      KernelMapSearch search(
          in_flat.data(), in.size(), same ? in_flat.data() : out_flat.data(),
          n_out, kDims, KernelGeometry{offsets.data(), K, stride.data()},
          allocate, runner.parallel_for, budget);
      KernelMap searched;
      searched.counts.assign(K, -7);
      Status s2 = search.Count(searched.counts.data());
      EXPECT_MSG(s2.ok(), what + ": KernelMapSearch: " + s2.message());
      searched.splits.assign(K + 1, -7);
      SplitsFromCounts(searched.counts.data(), K, searched.splits.data());
      searched.in_rows.assign(searched.splits[K], -7);
      searched.out_rows.assign(searched.splits[K], -7);
      s2 = search.Fill(searched.splits.data(), searched.in_rows.data(),
                       searched.out_rows.data());
      EXPECT_MSG(s2.ok(), what + ": KernelMapSearch: " + s2.message());
      ExpectSameMap(
          searched, want,
          what + ", KernelMapSearch budget " + std::to_string(budget));
    }
    // Neighbour table agrees with the pairs.
    std::vector<int32_t> expected_nbr(K * n_out, -1);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t p = want.splits[k]; p < want.splits[k + 1]; ++p) {
        expected_nbr[k * n_out + want.out_rows[p]] = want.in_rows[p];
      }
    }
    EXPECT_MSG(got.neighbours == expected_nbr, what + ": neighbour table");
    if (!got.counts.empty()) {
      std::vector<int64_t> want_counts(K);
      for (int64_t k = 0; k < K; ++k)
        want_counts[k] = want.splits[k + 1] - want.splits[k];
      EXPECT_MSG(got.counts == want_counts, what + ": FindNeighbours counts");
    }
    // The map validates; its transpose is the oracle's transpose.
    const Status valid = ValidateKernelMap(got.view(), got.splits[K],
                                           static_cast<int64_t>(in.size()),
                                           n_out, runner.parallel_for);
    EXPECT_MSG(valid.ok(), what + ": ValidateKernelMap: " + valid.message());
    std::vector<int32_t> transposed(K * in.size(), -7);
    TransposedNeighbours(got.view(), in.size(), transposed.data(),
                         runner.parallel_for);
    std::vector<int32_t> expected_t(K * in.size(), -1);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t p = want.splits[k]; p < want.splits[k + 1]; ++p) {
        expected_t[k * in.size() + want.in_rows[p]] = want.out_rows[p];
      }
    }
    EXPECT_MSG(transposed == expected_t, what + ": TransposedNeighbours");
    if (!have_first) {
      first = got;
      have_first = true;
    } else {
      EXPECT_MSG(got.neighbours == first.neighbours,
                 what + ": differs from serial");
    }
  }
}

void TestKernelMaps() {
  std::mt19937_64 rng(12345);
  const std::vector<int32_t> unit = {1, 1, 1};
  // Around the origin, negative coordinates included; 3 batches.
  const std::vector<Row> small =
      RandomRows(&rng, {{0, -7, -6, -5}}, {{2, 6, 7, 5}}, 0.35);
  // Near the int32 limits: x at the top, y at the bottom, probes fall
  // outside the int32 range and must simply miss.
  const std::vector<Row> limits = RandomRows(&rng, {{0, kMax - 6, kMin, -3}},
                                             {{1, kMax, kMin + 6, 3}}, 0.4);
  // A wide sparse spread (2 + 3 * 20 bits) plus a dense cluster.
  const std::vector<Row> wide = RandomRows(
      &rng, {{0, -(1 << 19), -(1 << 19), 0}, {0, -3, -3, -3}},
      {{3, (1 << 19) - 1, (1 << 19) - 1, (1 << 20) - 1}, {3, 3, 3, 3}},
      0.3 / (1.0 * (1 << 20) * (1 << 20) * (1 << 20) / 2000));
  std::fprintf(stderr,
               "kernel maps: %zu small, %zu near-limit, %zu wide rows\n",
               small.size(), limits.size(), wide.size());

  // "wide" with its corner rows: 62-bit keys, and the probes around them
  // would need 65, more than the merge's one key layout can hold.
  std::vector<Row> full_span = wide;
  for (const Row& corner :
       {Row{0, -(1 << 19), -(1 << 19), 0},
        Row{3, (1 << 19) - 1, (1 << 19) - 1, (1 << 20) - 1}}) {
    if (std::find(full_span.begin(), full_span.end(), corner) ==
        full_span.end()) {
      full_span.push_back(corner);
    }
  }
  // Shuffled rows take the hash table; sorted rows (the coordinate ops'
  // output order) the merge, except "full span".
  auto sorted = [](std::vector<Row> rows) {
    std::sort(rows.begin(), rows.end());
    return rows;
  };
  for (const auto& set :
       {std::make_pair("small", &small), std::make_pair("limits", &limits),
        std::make_pair("wide", &wide),
        std::make_pair("full span", &std::as_const(full_span))}) {
    for (const bool in_order : {false, true}) {
      const std::string name =
          std::string(set.first) + (in_order ? " sorted" : "");
      const std::vector<Row> rows =
          in_order ? sorted(*set.second) : *set.second;
      const bool merged = in_order && name != "full span sorted";
      // Symmetric 3x3x3 on identical sets: the mirrored half-probe path.
      CheckKernelMap(name + " 3x3x3 same", rows, rows, true, Cube3(1), unit,
                     merged);
      // The same, without the mirroring shortcut.
      CheckKernelMap(name + " 3x3x3 not-same", rows, rows, false, Cube3(1),
                     unit, merged);
      // Non-symmetric {0,1}^3: every offset probed.
      CheckKernelMap(name + " {0,1}^3 same", rows, rows, true, Corner2(), unit,
                     merged);
    }
  }
  // One set sorted, the other not: the hash table.
  CheckKernelMap("small sorted in, shuffled out", sorted(small), small, false,
                 Cube3(1), unit, false);
  CheckKernelMap("small shuffled in, sorted out", small, sorted(small), false,
                 Cube3(1), unit, false);
  // Strided: output sites on a coarser grid than the input (stride 2, 1, 3),
  // a different output set, some output rows without any pair.
  std::vector<Row> coarse;
  {
    std::set<Row> seen;
    for (const Row& r : small) {
      Row q = {r[0], static_cast<int32_t>(std::floor(r[1] / 2.0) * 2), r[2],
               static_cast<int32_t>(std::floor(r[3] / 3.0) * 3)};
      if (seen.insert(q).second) coarse.push_back(q);
    }
    for (int i = 0; i < 20; ++i)
      coarse.push_back({1, 1000 + i, 0, 0});  // no pairs
  }
  CheckKernelMap("small strided 3x3x3", small, coarse, false, Cube3(1),
                 {2, 1, 3}, false);
  CheckKernelMap("small strided {0,1}^3", small, coarse, false, Corner2(),
                 {2, 1, 3}, false);
  CheckKernelMap("small strided 3x3x3 sorted", sorted(small), sorted(coarse),
                 false, Cube3(1), {2, 1, 3}, true);
  CheckKernelMap("small strided {0,1}^3 sorted", sorted(small), sorted(coarse),
                 false, Corner2(), {2, 1, 3}, true);
}

// --- Convolutions ------------------------------------------------------------

template <typename T>
std::vector<T> RandomValues(std::mt19937_64* rng, int64_t n) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(u(*rng));
  return v;
}

template <typename T>
void CheckConv(const char* type, double tol, const KernelMap& map, int64_t n_in,
               int64_t n_out, int64_t c_in, int64_t c_out,
               std::mt19937_64* rng) {
  const int64_t K = map.splits.size() - 1;
  const KernelMapView view = map.view();
  const std::vector<T> in = RandomValues<T>(rng, n_in * c_in);
  const std::vector<T> w = RandomValues<T>(rng, K * c_in * c_out);
  const std::vector<T> grad_out = RandomValues<T>(rng, n_out * c_out);

  // Naive triple loops, in double.
  std::vector<double> want_out(n_out * c_out, 0.0), want_t(n_out * c_in, 0.0),
      want_dw(K * c_in * c_out, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
      const int64_t i = map.in_rows[p], o = map.out_rows[p];
      for (int64_t ci = 0; ci < c_in; ++ci) {
        for (int64_t co = 0; co < c_out; ++co) {
          const double wv = w[(k * c_in + ci) * c_out + co];
          want_out[o * c_out + co] +=
              static_cast<double>(in[i * c_in + ci]) * wv;
          want_dw[(k * c_in + ci) * c_out + co] +=
              static_cast<double>(in[i * c_in + ci]) * grad_out[o * c_out + co];
        }
      }
    }
  }
  // transpose_weights (the input gradient): input with c_out channels,
  // output with c_in; the same weight buffer, read as [K, c_out', c_in'] with
  // c_out' = c_in, c_in' = c_out, and W_k^T applied:
  // out[o][ci] += in[i][co] * W[k][ci][co].
  const std::vector<T> in_t = RandomValues<T>(rng, n_in * c_out);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
      const int64_t i = map.in_rows[p], o = map.out_rows[p];
      for (int64_t ci = 0; ci < c_in; ++ci) {
        for (int64_t co = 0; co < c_out; ++co) {
          want_t[o * c_in + ci] += static_cast<double>(in_t[i * c_out + co]) *
                                   w[(k * c_in + ci) * c_out + co];
        }
      }
    }
  }

  std::vector<T> first_out, first_t, first_dw;
  for (const Runner& runner : Runners()) {
    const std::string what = std::string(type) + " " + std::to_string(c_in) +
                             "->" + std::to_string(c_out) + " (" + runner.name +
                             ")";
    std::string where;
    std::vector<T> out(n_out * c_out, T(-99));
    SparseConv<T>(in.data(), c_in, w.data(), c_out, false, view, n_out,
                  out.data(), runner.parallel_for);
    EXPECT_MSG(AllNear(out, want_out, tol, &where),
               what + " SparseConv: " + where);
    // transpose_weights: [K, c_out', c_in'] with c_out' = c_in, c_in' = c_out.
    std::vector<T> out_t(n_out * c_in, T(-99));
    SparseConv<T>(in_t.data(), c_out, w.data(), c_in, true, view, n_out,
                  out_t.data(), runner.parallel_for);
    EXPECT_MSG(AllNear(out_t, want_t, tol, &where),
               what + " SparseConv transpose_weights: " + where);
    std::vector<T> dw(K * c_in * c_out, T(-99));
    std::vector<T> scratch(WeightGradientScratchSize(view, c_in, c_out));
    SparseConvWeightGradient<T>(in.data(), c_in, grad_out.data(), c_out, view,
                                dw.data(), scratch.data(), runner.parallel_for);
    EXPECT_MSG(AllNear(dw, want_dw, tol, &where),
               what + " SparseConvWeightGradient: " + where);
    if (first_out.empty()) {
      first_out = out;
      first_t = out_t;
      first_dw = dw;
    } else {
      EXPECT_MSG(BitwiseEqual(out, first_out),
                 what + ": SparseConv not bitwise serial");
      EXPECT_MSG(BitwiseEqual(out_t, first_t),
                 what + ": SparseConv transposed not bitwise serial");
      EXPECT_MSG(BitwiseEqual(dw, first_dw),
                 what + ": SparseConvWeightGradient not bitwise serial");
    }
  }
}

// Pruned weights: every WeightPath gives what the plain dense product gives
// (bit for bit where both sides run AVX2 float products, c_out % 8 == 0),
// for unstructured zeros, zero offsets and zero output channels.
void CheckPrunedPaths(const KernelMap& map, int64_t n, int64_t c_in,
                      int64_t c_out, std::mt19937_64* rng) {
  const int64_t K = map.splits.size() - 1;
  const KernelMapView view = map.view();
  const std::vector<float> in = RandomValues<float>(rng, n * c_in);
  std::uniform_real_distribution<double> u(0, 1);
  for (const char* pattern : {"unstructured", "offsets", "channels", "zero"}) {
    std::vector<float> w = RandomValues<float>(rng, K * c_in * c_out);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t i = 0; i < c_in; ++i) {
        for (int64_t j = 0; j < c_out; ++j) {
          const std::string p = pattern;
          const bool zero = (p == "unstructured" && u(*rng) > 0.1) ||
                            (p == "offsets" && k % 3 != 0) ||
                            (p == "channels" && j % 4 != 1) || p == "zero";
          if (zero) w[(k * c_in + i) * c_out + j] = 0.0f;
        }
      }
    }
    std::vector<float> want(n * c_out);
    SparseConv<float>(in.data(), c_in, w.data(), c_out, false, view, n,
                      want.data(), SerialFor, WeightPath::kDense);
    std::vector<double> want_d(want.begin(), want.end());
    for (const Runner& runner : Runners()) {
      for (WeightPath path : {WeightPath::kAuto, WeightPath::kSparse}) {
        const std::string what =
            std::string("pruned ") + pattern + " " + std::to_string(c_in) +
            "->" + std::to_string(c_out) + " (" + runner.name + ")";
        std::vector<float> out(n * c_out, -99.0f);
        SparseConv<float>(in.data(), c_in, w.data(), c_out, false, view, n,
                          out.data(), runner.parallel_for, path);
        std::string where;
        if (c_out % 8 == 0) {
          EXPECT_MSG(BitwiseEqual(out, want),
                     what + ": not bitwise the dense product");
        } else {
          EXPECT_MSG(AllNear(out, want_d, 1e-5, &where), what + ": " + where);
        }
      }
    }
  }
}

void TestConvolutions() {
  std::mt19937_64 rng(777);
  // ~8000 sites: many 256-row output blocks, and several segments (of at
  // least 1024 pairs) per offset in the weight gradient.
  const std::vector<Row> rows =
      RandomRows(&rng, {{0, -10, -10, -10}}, {{1, 9, 9, 9}}, 0.7);
  const std::vector<int32_t> flat = Flatten(rows);
  const std::vector<int32_t> unit = {1, 1, 1};
  KernelMap map;
  Status status =
      BuildKernelMap(flat, flat, true, Cube3(1), unit, SerialFor, &map);
  EXPECT_MSG(status.ok(), status.message());
  std::fprintf(stderr, "convolutions: %zu sites, %lld pairs\n", rows.size(),
               static_cast<long long>(map.splits.back()));
  EXPECT_MSG(map.splits[1] - map.splits[0] > 2 * 1024,
             "too few pairs per offset for several weight-gradient segments");
  const int64_t n = rows.size();
  CheckConv<float>("float", 1e-4, map, n, n, 5, 7, &rng);
  CheckConv<float>("float", 1e-4, map, n, n, 16, 32, &rng);
  CheckConv<double>("double", 1e-11, map, n, n, 5, 7, &rng);
  CheckConv<double>("double", 1e-11, map, n, n, 1, 1, &rng);
  CheckPrunedPaths(map, n, 64, 64, &rng);
  CheckPrunedPaths(map, n, 13, 24, &rng);
  CheckPrunedPaths(map, n, 9, 5, &rng);

  // A strided map (more output rows than paired ones; zero rows must be 0).
  std::vector<Row> coarse;
  {
    std::set<Row> seen;
    for (const Row& r : rows) {
      Row q = {r[0], static_cast<int32_t>(std::floor(r[1] / 2.0) * 2),
               static_cast<int32_t>(std::floor(r[2] / 2.0) * 2),
               static_cast<int32_t>(std::floor(r[3] / 2.0) * 2)};
      if (seen.insert(q).second) coarse.push_back(q);
    }
    for (int i = 0; i < 300; ++i) coarse.push_back({0, 100 + 2 * i, 0, 0});
  }
  KernelMap strided;
  status = BuildKernelMap(flat, Flatten(coarse), false, Corner2(), {2, 2, 2},
                          SerialFor, &strided);
  EXPECT_MSG(status.ok(), status.message());
  CheckConv<float>("float strided", 1e-4, strided, n, coarse.size(), 3, 4,
                   &rng);
  CheckConv<double>("double strided", 1e-11, strided, n, coarse.size(), 3, 4,
                    &rng);

  // An empty map.
  KernelMap empty;
  empty.splits.assign(28, 0);
  CheckConv<float>("float empty", 1e-6, empty, 0, 5, 2, 3, &rng);
}

// --- Pooling
// -------------------------------------------------------------------

// Pooling over `map` for every runner: max (with argmax), sum, average, the
// transpose, and the max gradient against brute force over the pairs (taken
// in the map's order, as the kernels do, so float sums agree bitwise), and
// every runner against the serial one bit for bit.
template <typename T>
void CheckPool(const std::string& name, const KernelMap& map, int64_t n_in,
               int64_t n_out, int64_t channels, std::mt19937_64* rng) {
  const int64_t C = channels, K = map.splits.size() - 1;
  std::normal_distribution<double> normal;
  std::vector<T> in(n_in * C), grad(n_out * C), up(n_out * C);
  for (T& v : in) v = static_cast<T>(normal(*rng));
  for (T& v : grad) v = static_cast<T>(normal(*rng));
  for (T& v : up) v = static_cast<T>(normal(*rng));
  // Oracle.
  std::vector<T> max_want(n_out * C, T(0)), sum_want(n_out * C, T(0));
  std::vector<T> avg_want, t_want(n_in * C, T(0)), t_avg_want(n_in * C, T(0));
  std::vector<int32_t> arg_want(n_out * C, -1), count(n_out, 0);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
      const int64_t i = map.in_rows[p], o = map.out_rows[p];
      ++count[o];
      for (int64_t c = 0; c < C; ++c) {
        if (arg_want[o * C + c] < 0 || in[i * C + c] > max_want[o * C + c]) {
          max_want[o * C + c] = in[i * C + c];
          arg_want[o * C + c] = static_cast<int32_t>(i);
        }
        sum_want[o * C + c] += in[i * C + c];
        t_want[i * C + c] += up[o * C + c];
      }
    }
  }
  avg_want = sum_want;
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t c = 0; c < C; ++c) {
      if (count[o] > 1) avg_want[o * C + c] /= static_cast<T>(count[o]);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
      const int64_t i = map.in_rows[p], o = map.out_rows[p];
      const T s = T(1) / static_cast<T>(count[o]);
      for (int64_t c = 0; c < C; ++c)
        t_avg_want[i * C + c] += up[o * C + c] * s;
    }
  }
  std::vector<T> grad_want(n_in * C, T(0));
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t c = 0; c < C; ++c) {
      const int32_t a = arg_want[o * C + c];
      if (a >= 0) grad_want[a * C + c] += grad[o * C + c];
    }
  }
  std::vector<std::vector<T>> first;
  for (const Runner& runner : Runners()) {
    const std::string what = name + " (" + runner.name + ")";
    std::vector<T> max_got(n_out * C, T(-7)), sum_got(n_out * C, T(-7)),
        avg_got(n_out * C, T(-7)), t_got(n_in * C, T(-7)),
        t_avg_got(n_in * C, T(-7)), grad_got(n_in * C, T(-7)), inverse(n_out);
    std::vector<int32_t> arg_got(n_out * C, -7), table(K * n_in, -7);
    std::vector<uint64_t> pair_scratch(map.splits.back());
    SparseMaxPool<T>(in.data(), C, map.view(), n_out, max_got.data(),
                     arg_got.data(), runner.parallel_for);
    SparseSumPool<T>(in.data(), C, map.view(), n_out, false, sum_got.data(),
                     runner.parallel_for);
    SparseSumPool<T>(in.data(), C, map.view(), n_out, true, avg_got.data(),
                     runner.parallel_for);
    // The transposed map through a table and by sorting: the same map.
    const int64_t P = map.splits.back();
    std::vector<int64_t> t_splits(K + 1), s_splits(K + 1);
    std::vector<int32_t> t_in(P), t_out(P), s_in(P), s_out(P);
    Status status = TransposeKernelMap(map.view(), n_in, table.data(), nullptr,
                                       t_splits.data(), t_in.data(),
                                       t_out.data(), runner.parallel_for);
    EXPECT_MSG(status.ok(), what + ": " + status.message());
    status = TransposeKernelMap(map.view(), n_in, nullptr, pair_scratch.data(),
                                s_splits.data(), s_in.data(), s_out.data(),
                                runner.parallel_for);
    EXPECT_MSG(status.ok(), what + ": " + status.message());
    EXPECT_MSG(t_splits == s_splits && t_in == s_in && t_out == s_out,
               what + ": transposed map by table != by sorting");
    const KernelMapView transposed{t_splits.data(), t_in.data(), t_out.data(),
                                   K};
    SparseSumPoolTranspose<T>(up.data(), C, map.view(), transposed, n_in, n_out,
                              false, inverse.data(), t_got.data(),
                              runner.parallel_for);
    SparseSumPoolTranspose<T>(up.data(), C, map.view(), transposed, n_in, n_out,
                              true, inverse.data(), t_avg_got.data(),
                              runner.parallel_for);
    EXPECT_MSG(ValidateArgmax(arg_got.data(), arg_got.size(), n_in,
                              runner.parallel_for)
                   .ok(),
               what + ": argmax out of range");
    SparseMaxPoolGrad<T>(grad.data(), arg_got.data(), C, n_out, n_in,
                         grad_got.data(), runner.parallel_for);
    EXPECT_MSG(max_got == max_want, what + ": max pool");
    EXPECT_MSG(arg_got == arg_want, what + ": argmax");
    EXPECT_MSG(sum_got == sum_want, what + ": sum pool");
    EXPECT_MSG(avg_got == avg_want, what + ": average pool");
    EXPECT_MSG(grad_got == grad_want, what + ": max pool gradient");
    // The transposes add per input row in offset order too.
    EXPECT_MSG(t_got == t_want, what + ": sum pool transpose");
    bool close = true;
    for (size_t j = 0; j < t_avg_got.size(); ++j) {
      close &= std::abs(t_avg_got[j] - t_avg_want[j]) <=
               1e-5 * (1 + std::abs(t_avg_want[j]));
    }
    EXPECT_MSG(close, what + ": average pool transpose");
    std::vector<std::vector<T>> all = {max_got, sum_got,   avg_got,
                                       t_got,   t_avg_got, grad_got};
    if (first.empty()) first = all;
    EXPECT_MSG(all == first, what + ": differs from serial");
  }
}

// Global pools of random batch indices (unsorted, items without rows,
// items of several chunks) against brute force, bit for bit across runners.
template <typename T>
void CheckGlobalPool(const std::string& name, int64_t n, int64_t num_batches,
                     int64_t channels, std::mt19937_64* rng) {
  const int64_t C = channels, B = num_batches;
  std::normal_distribution<double> normal;
  std::vector<T> in(n * C), grad(B * C);
  for (T& v : in) v = static_cast<T>(normal(*rng));
  for (T& v : grad) v = static_cast<T>(normal(*rng));
  std::vector<int32_t> batch(n);
  // Items 0 and B - 1 take most rows; item 1 none.
  for (int32_t& b : batch) {
    const int64_t r = (*rng)() % 10;
    b = static_cast<int32_t>(r < 4   ? 0
                             : r < 8 ? B - 1
                                     : 2 + (*rng)() % (B - 2));
  }
  std::vector<T> max_want(B * C, T(0)), sum_want(B * C, T(0));
  std::vector<int32_t> arg_want(B * C, -1), count(B, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = batch[i];
    ++count[b];
    for (int64_t c = 0; c < C; ++c) {
      if (arg_want[b * C + c] < 0 || in[i * C + c] > max_want[b * C + c]) {
        max_want[b * C + c] = in[i * C + c];
        arg_want[b * C + c] = static_cast<int32_t>(i);
      }
      sum_want[b * C + c] += in[i * C + c];
    }
  }
  std::vector<std::vector<T>> first;
  for (const Runner& runner : Runners()) {
    const std::string what = name + " (" + runner.name + ")";
    std::vector<int64_t> starts(B + 1), chunk_first(B + 1);
    std::vector<int32_t> order(n);
    const Status status = GroupByBatch(batch.data(), n, B, starts.data(),
                                       order.data(), chunk_first.data());
    EXPECT_MSG(status.ok(), what + ": " + status.message());
    const int64_t chunks =
        GlobalPoolChunks(starts.data(), B, chunk_first.data());
    EXPECT_MSG(chunks > B, what + ": expected items of several chunks");
    std::vector<T> partial(chunks * C), max_got(B * C), sum_got(B * C),
        avg_got(B * C), back(n * C), back_avg(n * C);
    std::vector<int32_t> partial_arg(chunks * C), arg_got(B * C);
    GlobalMaxPool<T>(in.data(), C, starts.data(), order.data(),
                     chunk_first.data(), B, partial.data(), partial_arg.data(),
                     max_got.data(), arg_got.data(), runner.parallel_for);
    GlobalSumPool<T>(in.data(), C, starts.data(), order.data(),
                     chunk_first.data(), B, false, partial.data(),
                     sum_got.data(), runner.parallel_for);
    GlobalSumPool<T>(in.data(), C, starts.data(), order.data(),
                     chunk_first.data(), B, true, partial.data(),
                     avg_got.data(), runner.parallel_for);
    GlobalSumPoolGrad<T>(grad.data(), C, batch.data(), n, starts.data(), false,
                         back.data(), runner.parallel_for);
    GlobalSumPoolGrad<T>(grad.data(), C, batch.data(), n, starts.data(), true,
                         back_avg.data(), runner.parallel_for);
    EXPECT_MSG(max_got == max_want, what + ": global max");
    EXPECT_MSG(arg_got == arg_want, what + ": global argmax");
    bool close = true;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t c = 0; c < C; ++c) {
        const T s = sum_want[b * C + c];
        const T a = count[b] ? s / static_cast<T>(count[b]) : T(0);
        close &= std::abs(sum_got[b * C + c] - s) <= 1e-4 * (1 + std::abs(s));
        close &= std::abs(avg_got[b * C + c] - a) <= 1e-4 * (1 + std::abs(a));
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < C; ++c) {
        const T g = grad[batch[i] * C + c];
        close &= back[i * C + c] == g;
        close &=
            back_avg[i * C + c] == g * (T(1) / static_cast<T>(count[batch[i]]));
      }
    }
    EXPECT_MSG(close, what + ": global sum / average / gradient");
    std::vector<std::vector<T>> all = {max_got, sum_got, avg_got, back,
                                       back_avg};
    if (first.empty()) first = all;
    EXPECT_MSG(all == first, what + ": differs from serial");
  }
  // A bad batch index is an error naming it.
  std::vector<int64_t> starts(B + 1), scratch(B + 1);
  std::vector<int32_t> order(n);
  batch[n / 2] = static_cast<int32_t>(B);
  const Status bad = GroupByBatch(batch.data(), n, B, starts.data(),
                                  order.data(), scratch.data());
  EXPECT_MSG(!bad.ok() &&
                 bad.message().find(std::to_string(n / 2)) != std::string::npos,
             name + ": bad batch index: " + bad.message());
}

void TestPooling() {
  std::mt19937_64 rng(4242);
  const std::vector<Row> rows =
      RandomRows(&rng, {{0, -10, -10, -10}}, {{1, 9, 9, 9}}, 0.5);
  const std::vector<int32_t> flat = Flatten(rows);
  const int64_t n = rows.size();
  // Overlapping windows: the submanifold 3^3 map (many 256-row blocks).
  KernelMap subm;
  Status status =
      BuildKernelMap(flat, flat, true, Cube3(1), {1, 1, 1}, SerialFor, &subm);
  EXPECT_MSG(status.ok(), status.message());
  CheckPool<float>("pool float 3^3", subm, n, n, 5, &rng);
  CheckPool<double>("pool double 3^3", subm, n, n, 3, &rng);
  // Pool size 2, stride 2, plus output rows without pairs.
  std::vector<Row> coarse;
  std::set<Row> seen;
  for (const Row& r : rows) {
    Row q = {r[0], static_cast<int32_t>(std::floor(r[1] / 2.0) * 2),
             static_cast<int32_t>(std::floor(r[2] / 2.0) * 2),
             static_cast<int32_t>(std::floor(r[3] / 2.0) * 2)};
    if (seen.insert(q).second) coarse.push_back(q);
  }
  for (int i = 0; i < 300; ++i) coarse.push_back({0, 100 + 2 * i, 0, 0});
  KernelMap strided;
  status = BuildKernelMap(flat, Flatten(coarse), false, Corner2(), {1, 1, 1},
                          SerialFor, &strided);
  EXPECT_MSG(status.ok(), status.message());
  CheckPool<float>("pool float 2/2", strided, n, coarse.size(), 16, &rng);
  // Empty: no pairs, no rows.
  KernelMap empty;
  empty.splits.assign(9, 0);
  CheckPool<float>("pool empty", empty, 0, 0, 4, &rng);
  CheckPool<float>("pool empty map", empty, 3, 5, 4, &rng);
  CheckGlobalPool<float>("global float", 9000, 5, 6, &rng);
  CheckGlobalPool<double>("global double", 6000, 3, 2, &rng);
}

// --- Strided / generative keys -----------------------------------------------

int64_t FloorDiv(int64_t a, int64_t b) {
  return static_cast<int64_t>(std::floor(static_cast<long double>(a) / b));
}

void CheckStrided(const std::string& name, const std::vector<Row>& rows,
                  const std::vector<int32_t>& stride) {
  std::set<Row> want;
  for (const Row& r : rows) {
    Row q = r;
    for (int a = 1; a < kDims; ++a)
      q[a] =
          static_cast<int32_t>(FloorDiv(r[a], stride[a - 1]) * stride[a - 1]);
    want.insert(q);
  }
  const std::vector<int32_t> flat = Flatten(rows);
  std::vector<int32_t> first;
  for (const Runner& runner : Runners()) {
    const std::string what = name + " (" + runner.name + ")";
    KeyPacker packer(kDims);
    std::vector<uint64_t> keys(rows.size());
    int64_t unique = -1;
    const Status status =
        StridedKeys(flat.data(), rows.size(), kDims, stride.data(), &packer,
                    keys.data(), &unique);
    EXPECT_MSG(status.ok(), what + ": " + status.message());
    if (!status.ok()) continue;
    EXPECT_MSG(unique == static_cast<int64_t>(want.size()),
               what + ": " + std::to_string(unique) + " unique, want " +
                   std::to_string(want.size()));
    std::vector<int32_t> got(unique * kDims, -7);
    UnpackKeys(packer, keys.data(), unique, got.data(), runner.parallel_for);
    // Keys sort batch-major, then row-major: the std::set order.
    std::vector<Row> want_rows(want.begin(), want.end());
    EXPECT_MSG(got == Flatten(want_rows), what + ": strided sites");
    if (first.empty()) first = got;
    EXPECT_MSG(got == first, what + ": differs from serial");
  }
}

void CheckGenerative(const std::string& name, const std::vector<Row>& rows,
                     const std::vector<int32_t>& offsets,
                     const std::vector<int32_t>& stride) {
  const int64_t K = offsets.size() / (kDims - 1);
  std::set<Row> want;
  for (const Row& r : rows) {
    for (int64_t k = 0; k < K; ++k) {
      Row q = r;
      for (int a = 1; a < kDims; ++a)
        q[a] = r[a] + offsets[k * (kDims - 1) + a - 1] * stride[a - 1];
      want.insert(q);
    }
  }
  const std::vector<int32_t> flat = Flatten(rows);
  const KernelGeometry geometry{offsets.data(), K, stride.data()};
  for (const Runner& runner : Runners()) {
    const std::string what = name + " (" + runner.name + ")";
    // All offsets at once, and in chunks of 1 and 5 offsets merged.
    for (const int64_t budget : {TableBudget(rows.size()), int64_t(rows.size()),
                                 int64_t(5 * rows.size())}) {
      KeyPacker packer(kDims);
      std::vector<uint64_t> keys;
      const Status status =
          GenerativeKeys(flat.data(), rows.size(), kDims, geometry, budget,
                         kMaxRows, &packer, &keys, runner.parallel_for);
      EXPECT_MSG(status.ok(), what + ": " + status.message());
      if (!status.ok()) continue;
      std::vector<int32_t> got(keys.size() * kDims, -7);
      UnpackKeys(packer, keys.data(), keys.size(), got.data(),
                 runner.parallel_for);
      std::vector<Row> want_rows(want.begin(), want.end());
      EXPECT_MSG(got == Flatten(want_rows),
                 what + ": generated sites, budget " + std::to_string(budget));
      // One site fewer allowed than there are: refused, whatever the chunks.
      KeyPacker small_packer(kDims);
      const Status too_many =
          GenerativeKeys(flat.data(), rows.size(), kDims, geometry, budget,
                         static_cast<int64_t>(want.size()), &small_packer,
                         &keys, runner.parallel_for);
      EXPECT_MSG(
          !too_many.ok() && Contains(too_many.message(), "too many sites"),
          what + ": max_sites not enforced, budget " + std::to_string(budget));
    }
  }
}

void TestKeys() {
  std::mt19937_64 rng(99);
  const std::vector<Row> small =
      RandomRows(&rng, {{0, -9, -9, -9}}, {{2, 9, 9, 9}}, 0.3);
  CheckStrided("strided 2,2,2", small, {2, 2, 2});
  CheckStrided("strided 3,1,4", small, {3, 1, 4});
  CheckStrided("strided 1,1,1", small, {1, 1, 1});
  // Near the limits: floor division rounds towards -inf, never wraps.
  const std::vector<Row> limits = RandomRows(&rng, {{0, kMin, kMax - 20, -20}},
                                             {{1, kMin + 20, kMax, 20}}, 0.05);
  CheckStrided("strided near limits", limits, {2, 4, 5});
  CheckGenerative("generative 3x3x3", small, Cube3(1), {2, 2, 2});
  CheckGenerative("generative {0,1}^3", small, Corner2(), {1, 3, 1});
  // Over 4,096 keys with a span across int32: the radix sort's every digit.
  const std::vector<Row> wide =
      RandomRows(&rng, {{0, kMin + 1, -9, -9}, {0, kMax - 20, -9, -9}},
                 {{3, kMin + 20, 9, 9}, {3, kMax - 1, 9, 9}}, 0.2);
  CheckStrided("strided wide span (radix)", wide, {2, 3, 1});
  CheckGenerative("generative wide span (radix)", wide, Cube3(1), {1, 1, 1});

  // Pack / Unpack round trip at exactly 63 bits: batch 0 .. 1 (1 bit),
  // x over all of int32 (32 bits), y over 2^30 values (30 bits), z fixed.
  {
    const std::vector<Row> extremes = {{0, kMin, 0, 5},
                                       {1, kMax, (1 << 30) - 1, 5},
                                       {0, kMax, 0, 5},
                                       {1, kMin, 17, 5},
                                       {1, -1, 1 << 29, 5}};
    const std::vector<int32_t> flat = Flatten(extremes);
    KeyPacker packer(kDims);
    packer.CoverRows(flat.data(), extremes.size());
    const Status status = packer.Finalize();
    EXPECT_MSG(status.ok(), "63-bit keys: " + status.message());
    std::set<uint64_t> distinct;
    for (const Row& r : extremes) {
      uint64_t key = 0;
      EXPECT(packer.Pack(r.data(), &key));
      EXPECT(key != CoordinateTable::kEmpty);
      distinct.insert(key);
      Row back;
      packer.Unpack(key, back.data());
      EXPECT_MSG(back == r, RowString(r.data(), kDims) + " unpacks to " +
                                RowString(back.data(), kDims));
    }
    EXPECT(distinct.size() == extremes.size());
    // Just outside the covered range: Pack says no.
    const Row outside = {2, 0, 0, 5};
    uint64_t key;
    EXPECT(!packer.Pack(outside.data(), &key));
  }
}

// --- Errors ------------------------------------------------------------------

void TestErrors() {
  std::mt19937_64 rng(5);
  for (const Runner& runner : Runners()) {
    const std::string who = std::string(" (") + runner.name + ")";
    // Duplicate sites: an error naming both rows, not a crash or a hang.
    std::vector<Row> rows =
        RandomRows(&rng, {{0, -5, -5, -5}}, {{1, 5, 5, 5}}, 0.3);
    const size_t a = rows.size() / 3;
    rows.push_back(rows[a]);
    const std::vector<int32_t> flat = Flatten(rows);
    KernelMap map;
    Status status = BuildKernelMap(flat, flat, true, Cube3(1), {1, 1, 1},
                                   runner.parallel_for, &map);
    EXPECT_MSG(!status.ok(), "duplicates accepted" + who);
    EXPECT_MSG(Contains(status.message(), "duplicate"), status.message() + who);
    EXPECT_MSG(
        Contains(status.message(), "rows " + std::to_string(a) + " and " +
                                       std::to_string(rows.size() - 1)),
        status.message() + who);

    // Keys wider than 63 bits: two axes over all of int32 need 64.
    const std::vector<Row> wide = {
        {0, kMin, kMin, 0}, {0, kMax, kMax, 0}, {0, 0, 0, 0}};
    const std::vector<int32_t> wide_flat = Flatten(wide);
    status = BuildKernelMap(wide_flat, wide_flat, true, Cube3(1), {1, 1, 1},
                            runner.parallel_for, &map);
    EXPECT_MSG(!status.ok(), "64-bit keys accepted" + who);
    EXPECT_MSG(Contains(status.message(), "64-bit key"),
               status.message() + who);
    // ... also with the batch taking the 64th bit.
    const std::vector<Row> wide2 = {{0, kMin, 0, 0}, {1, kMax, (1 << 30), 0}};
    const std::vector<int32_t> wide2_flat = Flatten(wide2);
    status = BuildKernelMap(wide2_flat, wide2_flat, true, Cube3(1), {1, 1, 1},
                            runner.parallel_for, &map);
    EXPECT_MSG(!status.ok(), "64-bit keys (batch bit) accepted" + who);

    KeyPacker packer(kDims);
    std::vector<uint64_t> keys(wide.size());
    int64_t unique = 0;
    status = StridedKeys(wide_flat.data(), wide.size(), kDims,
                         std::vector<int32_t>{1, 1, 1}.data(), &packer,
                         keys.data(), &unique);
    EXPECT_MSG(!status.ok(), "StridedKeys accepted 64-bit keys" + who);

    // Generated sites beyond int32.
    KeyPacker gen_packer(kDims);
    const std::vector<int32_t> offsets = Cube3(1), stride = {1, 1, 1};
    const KernelGeometry geometry{offsets.data(), 27, stride.data()};
    std::vector<uint64_t> gen_keys;
    status = GenerativeKeys(wide_flat.data(), wide.size(), kDims, geometry,
                            TableBudget(wide.size()), kMaxRows, &gen_packer,
                            &gen_keys, runner.parallel_for);
    EXPECT_MSG(!status.ok(), "GenerativeKeys overflowed int32" + who);
  }

  // Strided sites below int32: floor(INT32_MIN / 3) * 3 < INT32_MIN.
  {
    const std::vector<Row> low = {{0, kMin, 0, 0}};
    const std::vector<int32_t> flat = Flatten(low);
    KeyPacker packer(kDims);
    std::vector<uint64_t> keys(1);
    int64_t unique = 0;
    const Status status =
        StridedKeys(flat.data(), 1, kDims, std::vector<int32_t>{3, 1, 1}.data(),
                    &packer, keys.data(), &unique);
    EXPECT_MSG(!status.ok(), "strided below int32 accepted");
  }
  // Bad stride; too many columns; rows outside the packer's range.
  {
    const std::vector<int32_t> flat = {0, 1, 2, 3};
    KeyPacker packer(kDims);
    std::vector<uint64_t> keys(1);
    int64_t unique = 0;
    Status status =
        StridedKeys(flat.data(), 1, kDims, std::vector<int32_t>{1, 0, 1}.data(),
                    &packer, keys.data(), &unique);
    EXPECT_MSG(!status.ok(), "stride 0 accepted");
    KeyPacker zero(0);
    EXPECT_MSG(!zero.Finalize().ok(), "0 columns accepted");
    KeyPacker too_many(kMaxDims + 1);
    EXPECT_MSG(!too_many.Finalize().ok(), "33 columns accepted");

    KeyPacker narrow(kDims);
    narrow.CoverRows(flat.data(), 1);
    EXPECT(narrow.Finalize().ok());
    const std::vector<int32_t> two = {0, 1, 2, 3, 0, 1, 2, 4};
    std::vector<uint64_t> tk(CoordinateTable::CapacityFor(2));
    std::vector<int32_t> tr(tk.size(), -1);
    CoordinateTable table(tk.data(), tr.data(), tk.size());
    status = table.Build(two.data(), 2, narrow, SerialFor);
    EXPECT_MSG(!status.ok(), "row outside the packer range accepted");
    EXPECT_MSG(Contains(status.message(), "row 1"), status.message());
  }
  // A corrupted kernel map fails validation.
  {
    const std::vector<Row> rows =
        RandomRows(&rng, {{0, -3, -3, -3}}, {{0, 3, 3, 3}}, 0.5);
    const std::vector<int32_t> flat = Flatten(rows);
    KernelMap map;
    EXPECT(
        BuildKernelMap(flat, flat, true, Cube3(1), {1, 1, 1}, SerialFor, &map)
            .ok());
    const int64_t n = rows.size(), pairs = map.splits.back();
    KernelMap bad = map;
    bad.in_rows[pairs / 2] = static_cast<int32_t>(n);
    EXPECT(!ValidateKernelMap(bad.view(), pairs, n, n, SerialFor).ok());
    bad = map;
    std::swap(bad.out_rows[map.splits[13]], bad.out_rows[map.splits[13] + 1]);
    EXPECT(!ValidateKernelMap(bad.view(), pairs, n, n, SerialFor).ok());
    bad = map;
    EXPECT(!ValidateKernelMap(bad.view(), pairs + 1, n, n, SerialFor).ok());
    // An input row twice within one offset (valid in range and order) is
    // refused by both ways of transposing the map.
    bad = map;
    const int64_t first = map.splits[13];
    bad.in_rows[first + 1] = bad.in_rows[first];
    EXPECT(ValidateKernelMap(bad.view(), pairs, n, n, SerialFor).ok());
    std::vector<int32_t> table(27 * n), t_in(pairs), t_out(pairs);
    std::vector<uint64_t> scratch(pairs);
    std::vector<int64_t> t_splits(28);
    Status repeated = TransposeKernelMap(bad.view(), n, table.data(), nullptr,
                                         t_splits.data(), t_in.data(),
                                         t_out.data(), SerialFor);
    EXPECT_MSG(
        !repeated.ok() && Contains(repeated.message(), "repeats input row"),
        repeated.message());
    repeated = TransposeKernelMap(bad.view(), n, nullptr, scratch.data(),
                                  t_splits.data(), t_in.data(), t_out.data(),
                                  SerialFor);
    EXPECT_MSG(
        !repeated.ok() && Contains(repeated.message(), "repeats input row"),
        repeated.message());
  }
}

}  // namespace
}  // namespace sparse_ops

int main() {
  sparse_ops::TestKernelMaps();
  sparse_ops::TestConvolutions();
  sparse_ops::TestKeys();
  sparse_ops::TestPooling();
  sparse_ops::TestErrors();
  return sparse_ops::testing::TestResult("core_test");
}

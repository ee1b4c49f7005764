// Standalone test of the CUDA pooling core (kernels/cuda/pool_gpu.h)
// against the CPU core (kernels/core/pool.h): no TensorFlow, needs a GPU.
// Every result must equal the CPU's bit for bit (the same sums in the same
// order, the same ties and NaN handling; averaged unpooling, whose CPU
// rounding depends on FMA contraction, to rounding), twice (determinism); the
// index errors must carry the CPU's message; empty inputs and a corrupted map
// must not fault (run under compute-sanitizer by device_check.sh).
//
//   nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -I. -x cu \
//     kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/pool_gpu.cu.cc \
//     kernels/cuda/pool_gpu_test.cu.cc kernels/core/coordinates.cc \
//     kernels/core/kernel_map.cc kernels/core/pool.cc -o /tmp/pool_gpu_test
#if !defined(GOOGLE_CUDA) || !GOOGLE_CUDA

#include "kernels/cuda/pool_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/kernel_map.h"
#include "kernels/core/pool.h"
#include "kernels/cuda/core_gpu.h"
#include "kernels/cuda/gpu_test_harness.h"

namespace {

namespace sg = sparse_ops::gpu;
using sparse_ops::KernelMapView;
using sparse_ops::Status;

const sparse_ops::ParallelFor kSerial =
    [](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
      if (n > 0) fn(0, n);
    };

// A kernel map made by the CPU core.
struct HostMap {
  std::vector<int64_t> splits;
  std::vector<int32_t> in_rows, out_rows;
  int64_t K() const { return static_cast<int64_t>(splits.size()) - 1; }
  int64_t P() const { return splits.back(); }
  KernelMapView View() const {
    return KernelMapView{splits.data(), in_rows.data(), out_rows.data(), K()};
  }
};

HostMap CpuMap(const std::vector<int32_t>& in, const std::vector<int32_t>& out,
               int dims, const std::vector<int32_t>& offsets,
               const std::vector<int32_t>& stride) {
  std::vector<std::unique_ptr<char[]>> temps;
  sparse_ops::Allocate allocate = [&temps](int64_t bytes) -> void* {
    temps.emplace_back(new char[bytes + 64]);
    return reinterpret_cast<void*>(
        (reinterpret_cast<uintptr_t>(temps.back().get()) + 63) &
        ~uintptr_t{63});
  };
  const int64_t K = static_cast<int64_t>(offsets.size()) / (dims - 1);
  sparse_ops::KernelMapSearch search(
      in.data(), static_cast<int64_t>(in.size()) / dims, out.data(),
      static_cast<int64_t>(out.size()) / dims, dims,
      sparse_ops::KernelGeometry{offsets.data(), K, stride.data()}, allocate,
      kSerial);
  std::vector<int64_t> counts(K);
  ASSERT_OK(search.Count(counts.data()));
  HostMap m;
  m.splits.resize(K + 1);
  sparse_ops::SplitsFromCounts(counts.data(), K, m.splits.data());
  m.in_rows.resize(m.P());
  m.out_rows.resize(m.P());
  ASSERT_OK(search.Fill(m.splits.data(), m.in_rows.data(), m.out_rows.data()));
  return m;
}

// Unique random sites [batch, x, y, z] in a box, and their 2x coarsening.
std::vector<int32_t> RandomSites(std::mt19937_64* rng, int batches, int lo,
                                 int hi, double density) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> rows;
  for (int b = 0; b < batches; ++b)
    for (int x = lo; x < hi; ++x)
      for (int y = lo; y < hi; ++y)
        for (int z = lo; z < hi; ++z)
          if (u(*rng) < density) rows.insert(rows.end(), {b, x, y, z});
  return rows;
}

std::vector<int32_t> Coarsen(const std::vector<int32_t>& sites) {
  std::set<std::vector<int32_t>> out;
  auto down = [](int32_t v) {
    return static_cast<int32_t>(std::floor(v / 2.0)) * 2;
  };
  for (size_t r = 0; r < sites.size(); r += 4) {
    out.insert(
        {sites[r], down(sites[r + 1]), down(sites[r + 2]), down(sites[r + 3])});
  }
  std::vector<int32_t> rows;
  for (const auto& row : out) rows.insert(rows.end(), row.begin(), row.end());
  return rows;
}

std::vector<int32_t> Box(int lo, int hi) {
  std::vector<int32_t> offsets;
  for (int x = lo; x <= hi; ++x)
    for (int y = lo; y <= hi; ++y)
      for (int z = lo; z <= hi; ++z) offsets.insert(offsets.end(), {x, y, z});
  return offsets;
}

// Values with many ties (small integers) and negative zeros, and with
// `nans` some NaNs.
template <typename T>
std::vector<T> TieValues(std::mt19937_64* rng, int64_t n, bool nans = true) {
  std::uniform_int_distribution<int> d(-3, 3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) {
    const double r = u(*rng);
    x = (nans && r < 0.02) ? std::numeric_limits<T>::quiet_NaN()
        : r < 0.05         ? T(-0.0)
                           : static_cast<T>(d(*rng)) / T(3);
  }
  return v;
}

template <typename T>
std::vector<T> NormalValues(std::mt19937_64* rng, int64_t n) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(*rng));
  return v;
}

// Bit for bit; a NaN equals any NaN (the GPU's arithmetic returns the
// canonical NaN where x86 keeps the operand's payload).
template <typename U>
bool Bitwise(const std::vector<U>& a, const std::vector<U>& b) {
  if (a.size() != b.size()) return false;
  for (size_t j = 0; j < a.size(); ++j) {
    if (std::memcmp(&a[j], &b[j], sizeof(U)) == 0) continue;
    if constexpr (std::is_floating_point_v<U>) {
      if (std::isnan(a[j]) && std::isnan(b[j])) continue;
    }
    return false;
  }
  return true;
}

// Equal to rounding (64 ulp of the largest magnitude), NaN where NaN.
template <typename T>
bool Close(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  T scale = 0;
  for (const T v : b)
    scale = std::isnan(v) ? scale : std::max(scale, std::abs(v));
  for (size_t j = 0; j < a.size(); ++j) {
    if (std::isnan(a[j]) || std::isnan(b[j])) {
      if (std::isnan(a[j]) != std::isnan(b[j])) return false;
      continue;
    }
    if (std::abs(a[j] - b[j]) > 64 * std::numeric_limits<T>::epsilon() * scale)
      return false;
  }
  return true;
}

struct DeviceMap {
  DevBuf<int64_t> splits;
  DevBuf<int32_t> in_rows, out_rows;
  sg::DeviceKernelMap view;
  explicit DeviceMap(const HostMap& m) {
    splits.Upload(m.splits);
    in_rows.Upload(m.in_rows);
    out_rows.Upload(m.out_rows);
    view = sg::DeviceKernelMap{splits.get(), in_rows.get(), out_rows.get(),
                               m.K(), m.P()};
  }
};

template <typename T>
void MapPools(const std::string& name, const HostMap& m, int64_t n_in,
              int64_t n_out, int64_t C, std::mt19937_64* rng, cudaStream_t s) {
  const std::string what =
      name + (sizeof(T) == 4 ? " f32" : " f64") + " C=" + std::to_string(C);
  const std::vector<T> in = TieValues<T>(rng, n_in * C);
  DeviceMap dm(m);
  DevBuf<T> d_in(in), d_out(n_out * C);
  DevBuf<int32_t> d_arg(n_out * C);
  // Max pooling and its argmax.
  std::vector<T> out(n_out * C);
  std::vector<int32_t> arg(n_out * C);
  sparse_ops::SparseMaxPool<T>(in.data(), C, m.View(), n_out, out.data(),
                               arg.data(), kSerial);
  for (int run = 0; run < 2; ++run) {
    d_out.Poison();
    d_arg.Poison();
    ASSERT_OK(sg::MaxPool<T>(d_in.get(), n_in, C, dm.view, n_out, d_out.get(),
                             d_arg.get(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_MSG(Bitwise(d_out.Download(), out),
               what + " max pool values, run " + std::to_string(run));
    EXPECT_MSG(Bitwise(d_arg.Download(), arg),
               what + " max pool argmax, run " + std::to_string(run));
  }
  // Its gradient, through the CPU's argmax.
  const std::vector<T> grad = NormalValues<T>(rng, n_out * C);
  std::vector<T> grad_in(n_in * C);
  sparse_ops::SparseMaxPoolGrad<T>(grad.data(), arg.data(), C, n_out, n_in,
                                   grad_in.data(), kSerial);
  DevBuf<T> d_grad(grad), d_grad_in(n_in * C);
  DevBuf<sg::IndexCheck> d_check(1);
  DevBuf<unsigned char> ws(sg::MaxPoolGradWorkspaceBytes<T>(n_out, C, n_in));
  for (int run = 0; run < 2; ++run) {
    d_grad_in.Poison();
    ASSERT_OK(sg::MaxPoolGrad<T>(d_grad.get(), d_arg.get(), C, n_out, n_in,
                                 d_grad_in.get(), d_check.get(), ws.get(),
                                 ws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_MSG(Bitwise(d_grad_in.Download(), grad_in),
               what + " max pool grad, run " + std::to_string(run));
    EXPECT_MSG(sg::ArgmaxCheckStatus(d_check.Download()[0], n_in).ok(),
               what + " argmax check");
  }
  // Sum and average pooling, and their transposes.
  for (const bool average : {false, true}) {
    const std::string w = what + (average ? " average" : " sum");
    std::vector<T> sum(n_out * C);
    sparse_ops::SparseSumPool<T>(in.data(), C, m.View(), n_out, average,
                                 sum.data(), kSerial);
    for (int run = 0; run < 2; ++run) {
      d_out.Poison();
      ASSERT_OK(sg::SumPool<T>(d_in.get(), n_in, C, dm.view, n_out, average,
                               d_out.get(), s));
      CUDA_OK(cudaStreamSynchronize(s));
      EXPECT_MSG(Bitwise(d_out.Download(), sum),
                 w + " pool, run " + std::to_string(run));
    }

    // The CPU transposed map, as the op builds it.
    const int64_t K = m.K(), P = m.P();
    std::vector<int64_t> t_splits(K + 1);
    std::vector<int32_t> t_in(P), t_out(P);
    const bool table = sparse_ops::TransposeUsesTable(m.View(), n_in);
    std::vector<int32_t> table_buf(table ? K * n_in : 0);
    std::vector<uint64_t> pair_buf(table ? 0 : P);
    ASSERT_OK(sparse_ops::TransposeKernelMap(
        m.View(), n_in, table ? table_buf.data() : nullptr,
        table ? nullptr : pair_buf.data(), t_splits.data(), t_in.data(),
        t_out.data(), kSerial));
    const KernelMapView transposed{t_splits.data(), t_in.data(), t_out.data(),
                                   K};
    const std::vector<T> up_in = NormalValues<T>(rng, n_out * C);
    std::vector<T> inverse(n_out), up(n_in * C);
    sparse_ops::SparseSumPoolTranspose<T>(up_in.data(), C, m.View(), transposed,
                                          n_in, n_out, average, inverse.data(),
                                          up.data(), kSerial);
    DevBuf<T> d_up_in(up_in), d_up(n_in * C);
    DevBuf<unsigned char> tws(
        sg::SumPoolTransposeWorkspaceBytes<T>(K, P, n_in, n_out));
    DevBuf<sg::KernelMapCheck> map_check(1);
    for (int run = 0; run < 2; ++run) {
      d_up.Poison();
      // As the op runs it: the map check, then the transpose adding to it.
      ASSERT_OK(sg::CheckKernelMap(dm.view, n_in, n_out, map_check.get(), s));
      ASSERT_OK(sg::SumPoolTranspose<T>(d_up_in.get(), n_out, C, dm.view, n_in,
                                        average, d_up.get(), tws.get(),
                                        tws.size(), s, map_check.get()));
      CUDA_OK(cudaStreamSynchronize(s));
      const Status checked =
          sg::KernelMapCheckStatus(map_check.Download()[0], m.P(), n_in, n_out);
      EXPECT_MSG(checked.ok(), w + " valid map refused: " + checked.message());
      const std::vector<T> got = d_up.Download();
      EXPECT_MSG(average ? Close(got, up) : Bitwise(got, up),
                 w + " pool transpose, run " + std::to_string(run));
    }
  }
}

// Many outputs per input row: the gradient sums 3+ terms per target.
template <typename T>
void MaxPoolGradCollisions(std::mt19937_64* rng, cudaStream_t s) {
  const int64_t n_out = 3000, n_in = 40, C = 7;
  std::uniform_int_distribution<int32_t> d(-1, n_in - 1);
  std::vector<int32_t> arg(n_out * C);
  for (auto& a : arg) a = d(*rng);
  const std::vector<T> grad = NormalValues<T>(rng, n_out * C);
  std::vector<T> want(n_in * C);
  sparse_ops::SparseMaxPoolGrad<T>(grad.data(), arg.data(), C, n_out, n_in,
                                   want.data(), kSerial);
  DevBuf<T> d_grad(grad), d_out(n_in * C);
  DevBuf<int32_t> d_arg(arg);
  DevBuf<sg::IndexCheck> d_check(1);
  DevBuf<unsigned char> ws(sg::MaxPoolGradWorkspaceBytes<T>(n_out, C, n_in));
  for (int run = 0; run < 2; ++run) {
    d_out.Poison();
    ASSERT_OK(sg::MaxPoolGrad<T>(d_grad.get(), d_arg.get(), C, n_out, n_in,
                                 d_out.get(), d_check.get(), ws.get(),
                                 ws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_MSG(
        Bitwise(d_out.Download(), want),
        "max pool grad, ~73 terms per target, run " + std::to_string(run));
  }
  // A bad entry: the CPU's message, the smallest bad position.
  arg[5 * C + 3] = static_cast<int32_t>(n_in);
  arg[9 * C + 1] = -2;
  d_arg.Upload(arg);
  ASSERT_OK(sg::MaxPoolGrad<T>(d_grad.get(), d_arg.get(), C, n_out, n_in,
                               d_out.get(), d_check.get(), ws.get(), ws.size(),
                               s));
  CUDA_OK(cudaStreamSynchronize(s));
  const Status gpu = sg::ArgmaxCheckStatus(d_check.Download()[0], n_in);
  const Status cpu =
      sparse_ops::ValidateArgmax(arg.data(), n_out * C, n_in, kSerial);
  EXPECT_MSG(!gpu.ok() && gpu.message() == cpu.message(),
             "argmax error: GPU '" + gpu.message() + "' vs CPU '" +
                 cpu.message() + "'");
}

template <typename T>
void GlobalPools(int64_t n, int64_t B, int64_t C, std::mt19937_64* rng,
                 cudaStream_t s) {
  const std::string what =
      std::string("global pools") + (sizeof(T) == 4 ? " f32" : " f64") +
      " n=" + std::to_string(n) + " B=" + std::to_string(B);
  // Unsorted items; item 1 left empty when there are several.
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(B - 1));
  std::vector<int32_t> batch(n);
  for (auto& b : batch) {
    b = d(*rng);
    if (B > 2 && b == 1) b = 0;
  }
  // Ties, and a single NaN (sums over thousands of rows with NaNs would all
  // be NaN and compare equal whatever their order).
  std::vector<T> in = TieValues<T>(rng, n * C, /*nans=*/false);
  if (n * C > 0) in[0] = std::numeric_limits<T>::quiet_NaN();
  std::vector<int64_t> starts(B + 1), chunk_first(B + 1), scratch(B + 1);
  std::vector<int32_t> order(n);
  ASSERT_OK(sparse_ops::GroupByBatch(batch.data(), n, B, starts.data(),
                                     order.data(), scratch.data()));
  const int64_t chunks =
      sparse_ops::GlobalPoolChunks(starts.data(), B, chunk_first.data());
  std::vector<T> partial(chunks * C), max(B * C), sum(B * C), mean(B * C);
  std::vector<int32_t> partial_arg(chunks * C), arg(B * C);
  sparse_ops::GlobalMaxPool<T>(
      in.data(), C, starts.data(), order.data(), chunk_first.data(), B,
      partial.data(), partial_arg.data(), max.data(), arg.data(), kSerial);
  sparse_ops::GlobalSumPool<T>(in.data(), C, starts.data(), order.data(),
                               chunk_first.data(), B, false, partial.data(),
                               sum.data(), kSerial);
  sparse_ops::GlobalSumPool<T>(in.data(), C, starts.data(), order.data(),
                               chunk_first.data(), B, true, partial.data(),
                               mean.data(), kSerial);
  DevBuf<T> d_in(in), d_out(B * C);
  DevBuf<int32_t> d_batch(batch), d_arg(B * C);
  DevBuf<sg::IndexCheck> d_check(1);
  DevBuf<unsigned char> ws(sg::GlobalPoolWorkspaceBytes<T>(n, C, B));
  for (int run = 0; run < 2; ++run) {
    d_out.Poison();
    d_arg.Poison();
    ASSERT_OK(sg::GlobalMaxPool<T>(d_in.get(), n, C, d_batch.get(), B,
                                   d_out.get(), d_arg.get(), d_check.get(),
                                   ws.get(), ws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_MSG(Bitwise(d_out.Download(), max),
               what + " max, run " + std::to_string(run));
    EXPECT_MSG(Bitwise(d_arg.Download(), arg),
               what + " argmax, run " + std::to_string(run));
    EXPECT_MSG(sg::BatchCheckStatus(d_check.Download()[0], B).ok(),
               what + " batch check");
    for (const bool average : {false, true}) {
      d_out.Poison();
      ASSERT_OK(sg::GlobalSumPool<T>(d_in.get(), n, C, d_batch.get(), B,
                                     average, d_out.get(), d_check.get(),
                                     ws.get(), ws.size(), s));
      CUDA_OK(cudaStreamSynchronize(s));
      EXPECT_MSG(
          Bitwise(d_out.Download(), average ? mean : sum),
          what + (average ? " mean" : " sum") + ", run " + std::to_string(run));
    }
  }
  // The gradients of the sum and the mean.
  const std::vector<T> grad = NormalValues<T>(rng, B * C);
  DevBuf<T> d_grad(grad), d_grad_in(n * C);
  DevBuf<unsigned char> gws(sg::GlobalSumPoolGradWorkspaceBytes(B, C));
  for (const bool average : {false, true}) {
    std::vector<T> grad_in(n * C);
    sparse_ops::GlobalSumPoolGrad<T>(grad.data(), C, batch.data(), n,
                                     starts.data(), average, grad_in.data(),
                                     kSerial);
    d_grad_in.Poison();
    ASSERT_OK(sg::GlobalSumPoolGrad<T>(d_grad.get(), C, d_batch.get(), n, B,
                                       average, d_grad_in.get(), d_check.get(),
                                       gws.get(), gws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_MSG(Bitwise(d_grad_in.Download(), grad_in),
               what + (average ? " mean" : " sum") + " gradient");
  }
  // A bad batch index: the CPU's message.
  if (n > 10) {
    batch[7] = static_cast<int32_t>(B);
    batch[10] = -1;
    d_batch.Upload(batch);
    ASSERT_OK(sg::GlobalSumPool<T>(d_in.get(), n, C, d_batch.get(), B, false,
                                   d_out.get(), d_check.get(), ws.get(),
                                   ws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    const Status gpu = sg::BatchCheckStatus(d_check.Download()[0], B);
    const Status cpu = sparse_ops::GroupByBatch(
        batch.data(), n, B, starts.data(), order.data(), scratch.data());
    EXPECT_MSG(!gpu.ok() && gpu.message() == cpu.message(),
               "batch error: GPU '" + gpu.message() + "' vs CPU '" +
                   cpu.message() + "'");
    ASSERT_OK(sg::GlobalSumPoolGrad<T>(d_grad.get(), C, d_batch.get(), n, B,
                                       false, d_grad_in.get(), d_check.get(),
                                       gws.get(), gws.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    const Status grad_gpu = sg::BatchCheckStatus(d_check.Download()[0], B);
    EXPECT_MSG(!grad_gpu.ok() && grad_gpu.message() == cpu.message(),
               "gradient batch error: GPU '" + grad_gpu.message() + "'");
  }
}

// A map whose rows point far outside the features: wrong numbers are
// allowed, a fault is not (compute-sanitizer checks the accesses).
void CorruptMap(cudaStream_t s) {
  HostMap m;
  m.splits = {0, 9, -3, 4};  // past P, negative, decreasing
  m.in_rows = {0, 1 << 30, -5, 2};
  m.out_rows = {3, -1, 1 << 29, 0};
  DeviceMap dm(m);
  DevBuf<float> in(std::vector<float>(3 * 4, 1.0f)), out(5 * 4);
  DevBuf<int32_t> arg(5 * 4);
  DevBuf<sg::KernelMapCheck> check(1);
  DevBuf<unsigned char> ws(
      sg::SumPoolTransposeWorkspaceBytes<float>(3, 4, 3, 5));
  ASSERT_OK(
      sg::MaxPool<float>(in.get(), 3, 4, dm.view, 5, out.get(), arg.get(), s));
  ASSERT_OK(sg::SumPool<float>(in.get(), 3, 4, dm.view, 5, true, out.get(), s));
  ASSERT_OK(sg::CheckKernelMap(dm.view, 3, 5, check.get(), s));
  ASSERT_OK(sg::SumPoolTranspose<float>(out.get(), 5, 4, dm.view, 3, true,
                                        in.get(), ws.get(), ws.size(), s,
                                        check.get()));
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_MSG(!sg::KernelMapCheckStatus(check.Download()[0], 4, 3, 5).ok(),
             "corrupt map: the check refuses it (and compute-sanitizer sees no "
             "fault)");
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  std::mt19937_64 rng(2026);
  std::printf("== sparse_ops GPU pooling test ==\n");
  const std::vector<int32_t> stride = {1, 1, 1};
  // 2x2x2 pooling with stride 2 onto the coarsened sites; a 3x3x3
  // submanifold "pooling"; and empty sets.
  const std::vector<int32_t> fine = RandomSites(&rng, 3, -7, 7, 0.3);
  const std::vector<int32_t> coarse = Coarsen(fine);
  const int64_t n_fine = static_cast<int64_t>(fine.size()) / 4;
  const int64_t n_coarse = static_cast<int64_t>(coarse.size()) / 4;
  const HostMap down = CpuMap(fine, coarse, 4, Box(0, 1), stride);
  const HostMap subm = CpuMap(fine, fine, 4, Box(-1, 1), stride);
  const HostMap empty = CpuMap({}, coarse, 4, Box(0, 1), stride);
  for (const int64_t C : {1, 5, 37, 70}) {
    MapPools<float>("2x2x2/2", down, n_fine, n_coarse, C, &rng, s);
    MapPools<double>("2x2x2/2", down, n_fine, n_coarse, C, &rng, s);
  }
  MapPools<float>("3x3x3 subm", subm, n_fine, n_fine, 16, &rng, s);
  MapPools<double>("3x3x3 subm", subm, n_fine, n_fine, 16, &rng, s);
  MapPools<float>("no input sites", empty, 0, n_coarse, 8, &rng, s);
  MapPools<float>("no channels", down, n_fine, n_coarse, 0, &rng, s);
  MaxPoolGradCollisions<float>(&rng, s);
  MaxPoolGradCollisions<double>(&rng, s);
  // Several 2048-row chunks per item, one item, no rows, no channels.
  GlobalPools<float>(9000, 5, 19, &rng, s);
  GlobalPools<double>(9000, 5, 19, &rng, s);
  GlobalPools<float>(300, 1, 3, &rng, s);
  GlobalPools<float>(0, 4, 3, &rng, s);
  GlobalPools<float>(50, 3, 0, &rng, s);
  CorruptMap(s);
  CUDA_OK(cudaStreamDestroy(s));
  return sparse_ops::testing::TestResult("pool_gpu_test");
}

#endif  // !GOOGLE_CUDA

// Standalone test and benchmark of the CUDA core (kernels/cuda/core_gpu.h):
// no TensorFlow, needs a GPU. Checks the kernel map against a brute-force
// std::unordered_map oracle, the convolution and both gradients against
// naive float64 loops, determinism (two runs bitwise equal), the key layout
// against the CPU KeyPacker, the coordinate ops against the CPU core, and
// the data errors; then times the benchmark workload (docs/benchmarks.md,
// "Workload": sphere shell, ~100k sites, 64 -> 64 channels, 3x3x3): the
// kernel map, the convolution and
// its gradients, and every other op beside the conv forward (the GPU
// benchmark program of the core; MinkUNet14 needs TensorFlow).
//
// Build and run (see kernels/cuda/README.md; -x cu applies to every input,
// so coordinates.cc for the KeyPacker comparison is compiled alongside):
//   nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -I. -x cu \
//     kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/conv_gpu.cu.cc
//     kernels/cuda/pool_gpu.cu.cc \
//     kernels/cuda/attention_gpu.cu.cc kernels/cuda/voxelize_gpu.cu.cc
//     kernels/cuda/depthwise_gpu.cu.cc kernels/cuda/gpu_core_test.cu.cc \
//     kernels/core/coordinates.cc kernels/core/points.cc
//     kernels/core/voxelize.cc kernels/core/depthwise.cc
//     kernels/core/kernel_map.cc -o /tmp/gpu_core_test && /tmp/gpu_core_test
// Flags: --small (small and error cases, for compute-sanitizer memcheck),
// --tiny (one case, for racecheck), --shell (the PEERS workload, for ncu).
// Add -DSPARSE_OPS_WITH_CUBLAS -lcublas for the shape-matched GEMM rate.
//
// The op library's builds compile kernels/cuda/*.cu.cc with GOOGLE_CUDA=1;
// this file is then empty, so its main() never enters the library.
#if !defined(GOOGLE_CUDA) || !GOOGLE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#ifdef SPARSE_OPS_WITH_CUBLAS
#include <cublas_v2.h>
#endif

#include "kernels/core/attention.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/depthwise.h"
#include "kernels/core/kernel_map.h"
#include "kernels/core/points.h"
#include "kernels/core/voxelize.h"
#include "kernels/cuda/attention_gpu.h"
#include "kernels/cuda/core_gpu.h"
#include "kernels/cuda/depthwise_gpu.h"
#include "kernels/cuda/gpu_test_harness.h"
#include "kernels/cuda/pool_gpu.h"
#include "kernels/cuda/voxelize_gpu.h"

namespace {

namespace sg = sparse_ops::gpu;
using sparse_ops::Status;
using sparse_ops::testing::Contains;

// --- Host helpers
// ----------------------------------------------------------------

void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t b = n * t / threads, e = n * (t + 1) / threads;
    pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  for (auto& th : pool) th.join();
}

struct Coords {
  int dims = 0;
  std::vector<int32_t> rows;
  int64_t n() const {
    return dims ? static_cast<int64_t>(rows.size()) / dims : 0;
  }
};

// Every grid site in [lo, hi]^(dims-1) x batches, kept with probability
// `density`, in shuffled order.
Coords RandomCoords(std::mt19937_64* rng, int dims, int batches, int lo, int hi,
                    double density) {
  Coords c;
  c.dims = dims;
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int32_t> q(dims, 0);
  const int span = hi - lo + 1;
  int64_t total = batches;
  for (int a = 1; a < dims; ++a) total *= span;
  for (int64_t idx = 0; idx < total; ++idx) {
    int64_t r = idx;
    for (int a = dims - 1; a >= 1; --a) {
      q[a] = lo + static_cast<int32_t>(r % span);
      r /= span;
    }
    q[0] = static_cast<int32_t>(r);
    if (u(*rng) < density) c.rows.insert(c.rows.end(), q.begin(), q.end());
  }
  std::vector<int64_t> order(c.n());
  for (int64_t i = 0; i < c.n(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), *rng);
  std::vector<int32_t> shuffled(c.rows.size());
  for (int64_t i = 0; i < c.n(); ++i) {
    std::copy_n(&c.rows[order[i] * dims], dims, &shuffled[i * dims]);
  }
  c.rows.swap(shuffled);
  return c;
}

// The benchmark shell (docs/benchmarks.md, "Workload"): 4M random unit
// vectors * 75, floored, unique, + 76.
Coords SphereShell(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 1);
  std::vector<int64_t> keys;
  keys.reserve(4000000);
  for (int s = 0; s < 4000000; ++s) {
    double v[3];
    double norm = 0;
    for (double& x : v) {
      x = normal(rng);
      norm += x * x;
    }
    norm = std::sqrt(norm);
    int64_t key = 0;
    for (double x : v) {
      key = key * 256 + static_cast<int64_t>(std::floor(x / norm * 75) + 76);
    }
    keys.push_back(key);
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  Coords c;
  c.dims = 4;
  for (int64_t key : keys) {
    c.rows.insert(c.rows.end(), {0, static_cast<int32_t>(key >> 16),
                                 static_cast<int32_t>((key >> 8) & 255),
                                 static_cast<int32_t>(key & 255)});
  }
  return c;
}

// Offsets of the box [lo[a], hi[a]] per axis, lexicographic (a symmetric
// box gives offset K-1-k == -offset k).
std::vector<int32_t> BoxOffsets(const std::vector<int>& lo,
                                const std::vector<int>& hi) {
  const int d = static_cast<int>(lo.size());
  std::vector<int32_t> out;
  std::vector<int32_t> q(lo.begin(), lo.end());
  while (true) {
    out.insert(out.end(), q.begin(), q.end());
    int a = d - 1;
    while (a >= 0 && q[a] == hi[a]) {
      q[a] = lo[a];
      --a;
    }
    if (a < 0) break;
    ++q[a];
  }
  return out;
}

struct HostMap {
  std::vector<int64_t> splits;
  std::vector<int32_t> in_rows, out_rows;
  int64_t K() const { return static_cast<int64_t>(splits.size()) - 1; }
  int64_t P() const { return static_cast<int64_t>(in_rows.size()); }
};

using Key = std::array<int32_t, 8>;
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int32_t v : k) {
      h ^= static_cast<uint32_t>(v);
      h *= 1099511628211ull;
    }
    return h;
  }
};

// Brute force: every (k, o), looked up in a std::unordered_map.
HostMap OracleMap(const Coords& in, const Coords& out,
                  const std::vector<int32_t>& offsets,
                  const std::vector<int32_t>& stride) {
  const int dims = in.dims, d = dims - 1;
  const int64_t K = static_cast<int64_t>(offsets.size()) / std::max(d, 1);
  std::unordered_map<Key, int32_t, KeyHash> table;
  for (int64_t i = 0; i < in.n(); ++i) {
    Key key{};
    std::copy_n(&in.rows[i * dims], dims, key.begin());
    table.emplace(key, static_cast<int32_t>(i));
  }
  std::vector<std::vector<int32_t>> per_in(K), per_out(K);
  ParallelFor(K, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      for (int64_t o = 0; o < out.n(); ++o) {
        Key key{};
        key[0] = out.rows[o * dims];
        bool inside = true;
        for (int a = 1; a < dims; ++a) {
          const int64_t v =
              static_cast<int64_t>(out.rows[o * dims + a]) +
              static_cast<int64_t>(offsets[k * d + a - 1]) * stride[a - 1];
          if (v < INT32_MIN || v > INT32_MAX) inside = false;
          key[a] = static_cast<int32_t>(v);
        }
        if (!inside) continue;
        const auto it = table.find(key);
        if (it == table.end()) continue;
        per_in[k].push_back(it->second);
        per_out[k].push_back(static_cast<int32_t>(o));
      }
    }
  });
  HostMap m;
  m.splits.assign(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    m.splits[k + 1] = m.splits[k] + static_cast<int64_t>(per_in[k].size());
    m.in_rows.insert(m.in_rows.end(), per_in[k].begin(), per_in[k].end());
    m.out_rows.insert(m.out_rows.end(), per_out[k].begin(), per_out[k].end());
  }
  return m;
}

bool SameMap(const HostMap& a, const HostMap& b) {
  return a.splits == b.splits && a.in_rows == b.in_rows &&
         a.out_rows == b.out_rows;
}

// --- GPU kernel map
// ----------------------------------------------------------------

struct GpuMapRunner {
  const Coords* in;
  const Coords* out;
  bool same;
  int64_t K;
  DevBuf<int32_t> d_in, d_out, d_offsets;
  sg::Stride stride_{};
  DevBuf<sg::KernelMapInfo> d_info;
  DevBuf<unsigned char> ws;
  DevBuf<int64_t> splits;
  DevBuf<int32_t> in_rows, out_rows;
  sg::KernelMapInfo* h_info = nullptr;  // pinned
  size_t ws_bytes = 0;

  GpuMapRunner(const Coords& in_c, const Coords& out_c, bool same_coords,
               const std::vector<int32_t>& offsets,
               const std::vector<int32_t>& stride)
      : in(&in_c), out(&out_c), same(same_coords) {
    const int d = in_c.dims - 1;
    K = static_cast<int64_t>(offsets.size()) / std::max(d, 1);
    d_in.Upload(in_c.rows);
    d_out.Upload(out_c.rows);
    d_offsets.Upload(offsets);
    std::copy(stride.begin(), stride.end(), stride_.v);
    d_info.Alloc(1);
    ws_bytes = sg::KernelMapWorkspaceBytes(in_c.n(), out_c.n(), K);
    ws.Alloc(ws_bytes);
    splits.Alloc(K + 1);
    CUDA_OK(cudaMallocHost(&h_info, sizeof(sg::KernelMapInfo)));
  }
  ~GpuMapRunner() { cudaFreeHost(h_info); }

  // Count, read the info back, size the outputs, fill. Returns the status.
  Status Run(cudaStream_t stream) {
    const sg::DeviceGeometry g{d_offsets.get(), K, stride_};
    ASSERT_OK(sg::KernelMapCount(
        d_in.get(), in->n(), same ? d_in.get() : d_out.get(), out->n(),
        in->dims, g, same, d_info.get(), ws.get(), ws_bytes, stream));
    CUDA_OK(cudaMemcpyAsync(h_info, d_info.get(), sizeof(sg::KernelMapInfo),
                            cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    const Status status = sg::KernelMapInfoStatus(*h_info);
    if (!status.ok()) return status;
    const size_t P = static_cast<size_t>(h_info->num_pairs);
    if (in_rows.size() != P) {
      in_rows.Alloc(P);
      out_rows.Alloc(P);
    }
    ASSERT_OK(sg::KernelMapFill(in->n(), out->n(), K, splits.get(),
                                in_rows.get(), out_rows.get(), ws.get(),
                                ws_bytes, stream));
    return Status::Ok();
  }

  HostMap Download() {
    CUDA_OK(cudaDeviceSynchronize());
    HostMap m;
    m.splits = splits.Download();
    m.in_rows = in_rows.Download();
    m.out_rows = out_rows.Download();
    m.in_rows.resize(h_info->num_pairs);
    m.out_rows.resize(h_info->num_pairs);
    return m;
  }

  sg::DeviceKernelMap View() const {
    return sg::DeviceKernelMap{splits.get(), in_rows.get(), out_rows.get(), K,
                               h_info->num_pairs};
  }
};

// --- Convolution oracles (float64)
// -------------------------------------------------

std::vector<int32_t> NeighbourTable(const HostMap& m, int64_t n, bool by_out) {
  std::vector<int32_t> t(m.K() * n, -1);
  for (int64_t k = 0; k < m.K(); ++k) {
    for (int64_t p = m.splits[k]; p < m.splits[k + 1]; ++p) {
      if (by_out) {
        t[k * n + m.out_rows[p]] = m.in_rows[p];
      } else {
        t[k * n + m.in_rows[p]] = m.out_rows[p];
      }
    }
  }
  return t;
}

// y[o] = sum_k x[nbr[k][o]] W_k, W [K, a, b] (transpose: W_k^T, W [K, b, a]).
std::vector<double> OracleApply(const std::vector<int32_t>& nbr, int64_t K,
                                int64_t n, const std::vector<double>& x,
                                int64_t a, const std::vector<double>& w,
                                int64_t b, bool transpose) {
  std::vector<double> y(n * b, 0.0);
  ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      double* yo = &y[o * b];
      for (int64_t k = 0; k < K; ++k) {
        const int32_t i = nbr[k * n + o];
        if (i < 0) continue;
        const double* xi = &x[i * a];
        const double* wk = &w[k * a * b];
        for (int64_t c = 0; c < a; ++c) {
          const double xv = xi[c];
          if (transpose) {
            for (int64_t j = 0; j < b; ++j) yo[j] += xv * wk[j * a + c];
          } else {
            const double* wr = wk + c * b;
            for (int64_t j = 0; j < b; ++j) yo[j] += xv * wr[j];
          }
        }
      }
    }
  });
  return y;
}

std::vector<double> OracleWeightGrad(const HostMap& m,
                                     const std::vector<double>& x, int64_t c_in,
                                     const std::vector<double>& g,
                                     int64_t c_out) {
  std::vector<double> dw(m.K() * c_in * c_out, 0.0);
  ParallelFor(m.K(), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double* d = &dw[k * c_in * c_out];
      for (int64_t p = m.splits[k]; p < m.splits[k + 1]; ++p) {
        const double* xi = &x[static_cast<int64_t>(m.in_rows[p]) * c_in];
        const double* go = &g[static_cast<int64_t>(m.out_rows[p]) * c_out];
        for (int64_t c = 0; c < c_in; ++c) {
          const double xv = xi[c];
          for (int64_t j = 0; j < c_out; ++j) d[c * c_out + j] += xv * go[j];
        }
      }
    }
  });
  return dw;
}

// max |got - ref| / max |ref|; infinity for NaN or a size mismatch.
template <typename T>
double RelErr(const std::vector<T>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double err = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(d == d)) return INFINITY;
    err = std::max(err, d);
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return scale > 0 ? err / scale : err;
}

std::vector<double> RandomValues(std::mt19937_64* rng, int64_t n) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<double> v(n);
  for (double& x : v) x = u(*rng);  // float-representable
  return v;
}

template <typename T>
std::vector<T> Cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// --- GPU convolution
// ----------------------------------------------------------------

template <typename T>
struct GpuConv {
  int64_t n_in, n_out, c_in, c_out;
  sg::DeviceKernelMap map;
  DevBuf<T> x, w, g, y, dx, dw;
  DevBuf<unsigned char> ws_fwd, ws_dx, ws_dw;
  size_t fwd_bytes, dx_bytes, dw_bytes;

  GpuConv(const sg::DeviceKernelMap& m, int64_t n_in_, int64_t n_out_,
          int64_t c_in_, int64_t c_out_, const std::vector<double>& hx,
          const std::vector<double>& hw, const std::vector<double>& hg)
      : n_in(n_in_), n_out(n_out_), c_in(c_in_), c_out(c_out_), map(m) {
    x.Upload(Cast<T>(hx));
    w.Upload(Cast<T>(hw));
    g.Upload(Cast<T>(hg));
    y.Alloc(n_out * c_out);
    dx.Alloc(n_in * c_in);
    dw.Alloc(map.num_offsets * c_in * c_out);
    fwd_bytes =
        sg::ConvWorkspaceBytes<T>(map.num_offsets, n_out, c_in, c_out, false);
    dx_bytes = sg::ConvBackpropInputWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, n_in, c_in, c_out);
    dw_bytes = sg::ConvBackpropKernelWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, c_in, c_out);
    ws_fwd.Alloc(fwd_bytes);
    ws_dx.Alloc(dx_bytes);
    ws_dw.Alloc(dw_bytes);
  }
  void Forward(cudaStream_t s) {
    ASSERT_OK(sg::Conv<T>(x.get(), n_in, c_in, w.get(), c_out, false, map,
                          n_out, y.get(), ws_fwd.get(), fwd_bytes, s));
  }
  void InputGrad(cudaStream_t s) {
    ASSERT_OK(sg::ConvBackpropInput<T>(g.get(), n_out, c_out, w.get(), c_in,
                                       map, n_in, dx.get(), ws_dx.get(),
                                       dx_bytes, s));
  }
  void WeightGrad(cudaStream_t s) {
    ASSERT_OK(sg::ConvBackpropKernel<T>(x.get(), n_in, c_in, g.get(), n_out,
                                        c_out, map, dw.get(), ws_dw.get(),
                                        dw_bytes, s));
  }
};

struct Oracle {
  std::vector<double> y, dx, dw;
};

Oracle ComputeOracle(const HostMap& m, int64_t n_in, int64_t n_out,
                     int64_t c_in, int64_t c_out, const std::vector<double>& x,
                     const std::vector<double>& w,
                     const std::vector<double>& g) {
  Oracle r;
  const std::vector<int32_t> by_out = NeighbourTable(m, n_out, true);
  r.y = OracleApply(by_out, m.K(), n_out, x, c_in, w, c_out, false);
  const std::vector<int32_t> by_in = NeighbourTable(m, n_in, false);
  r.dx = OracleApply(by_in, m.K(), n_in, g, c_out, w, c_in, true);
  r.dw = OracleWeightGrad(m, x, c_in, g, c_out);
  return r;
}

struct ConvErrors {
  double fwd, dx, dw;
  bool deterministic;
};

// Runs all three ops twice on poisoned outputs; errors against the oracle
// and whether the two runs agree bit for bit.
template <typename T>
ConvErrors CheckConv(GpuConv<T>* c, const Oracle& o, cudaStream_t s) {
  std::vector<T> runs[2][3];
  for (int r = 0; r < 2; ++r) {
    c->y.Poison();
    c->dx.Poison();
    c->dw.Poison();
    c->Forward(s);
    c->InputGrad(s);
    c->WeightGrad(s);
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaGetLastError());
    runs[r][0] = c->y.Download();
    runs[r][1] = c->dx.Download();
    runs[r][2] = c->dw.Download();
  }
  ConvErrors e;
  e.fwd = RelErr(runs[0][0], o.y);
  e.dx = RelErr(runs[0][1], o.dx);
  e.dw = RelErr(runs[0][2], o.dw);
  e.deterministic = true;
  for (int i = 0; i < 3; ++i) {
    e.deterministic = e.deterministic &&
                      runs[0][i].size() == runs[1][i].size() &&
                      std::memcmp(runs[0][i].data(), runs[1][i].data(),
                                  runs[0][i].size() * sizeof(T)) == 0;
  }
  return e;
}

template <typename T>
void ExpectConv(const std::string& name, const ConvErrors& e, double tol,
                double dw_tol) {
  const char* type = sizeof(T) == 4 ? "f32" : "f64";
  std::printf("  %-34s %s  fwd %.2e  dX %.2e  dW %.2e  %s\n", name.c_str(),
              type, e.fwd, e.dx, e.dw,
              e.deterministic ? "deterministic" : "NOT DETERMINISTIC");
  EXPECT_MSG(e.fwd <= tol, name + " " + type + " forward error");
  EXPECT_MSG(e.dx <= tol, name + " " + type + " input-gradient error");
  EXPECT_MSG(e.dw <= dw_tol, name + " " + type + " weight-gradient error");
  EXPECT_MSG(e.deterministic, name + " " + type + " runs differ");
}

// One small case: map vs oracle (twice), keys vs KeyPacker, conv vs oracle.
void SmallCase(const std::string& name, const Coords& in, const Coords& out,
               bool same, const std::vector<int32_t>& offsets,
               const std::vector<int32_t>& stride, int64_t c_in, int64_t c_out,
               std::mt19937_64* rng, cudaStream_t s) {
  GpuMapRunner runner(in, out, same, offsets, stride);
  const Status st = runner.Run(s);
  EXPECT_MSG(st.ok(), name + ": map failed: " + st.message());
  if (!st.ok()) return;
  const HostMap gpu = runner.Download();
  const HostMap oracle = OracleMap(in, same ? in : out, offsets, stride);
  EXPECT_MSG(SameMap(gpu, oracle), name + ": map differs from the oracle");
  ASSERT_OK(runner.Run(s));
  EXPECT_MSG(SameMap(runner.Download(), gpu), name + ": map not deterministic");

  // Keys: the GPU layout packs exactly as the CPU KeyPacker.
  sparse_ops::KeyPacker packer(in.dims);
  packer.CoverRows(in.rows.data(), in.n());
  ASSERT_OK(packer.Finalize());
  DevBuf<uint64_t> keys(in.n());
  ASSERT_OK(sg::PackKeys(runner.d_in.get(), in.n(), in.dims,
                         runner.d_info.get(), keys.get(), s));
  const std::vector<uint64_t> got = keys.Download();
  bool keys_ok = true;
  for (int64_t i = 0; i < in.n(); ++i) {
    uint64_t key = 0;
    keys_ok =
        keys_ok && packer.Pack(&in.rows[i * in.dims], &key) && key == got[i];
  }
  EXPECT_MSG(keys_ok, name + ": GPU keys differ from KeyPacker's");

  // The map passes the GPU validation.
  DevBuf<sg::KernelMapCheck> check(1);
  ASSERT_OK(sg::CheckKernelMap(runner.View(), in.n(), out.n(), check.get(), s));
  const sg::KernelMapCheck hc = check.Download()[0];
  EXPECT_MSG(sg::KernelMapCheckStatus(hc, gpu.P(), in.n(), out.n()).ok(),
             name + ": valid map rejected");

  const std::vector<double> x = RandomValues(rng, in.n() * c_in);
  const std::vector<double> w = RandomValues(rng, runner.K * c_in * c_out);
  const std::vector<double> g = RandomValues(rng, out.n() * c_out);
  const Oracle o = ComputeOracle(gpu, in.n(), out.n(), c_in, c_out, x, w, g);
  std::printf("  %s: n_in %lld, n_out %lld, K %lld, pairs %lld, map %s\n",
              name.c_str(), static_cast<long long>(in.n()),
              static_cast<long long>(out.n()), static_cast<long long>(runner.K),
              static_cast<long long>(gpu.P()),
              SameMap(gpu, oracle) ? "== oracle" : "WRONG");
  {
    GpuConv<float> c(runner.View(), in.n(), out.n(), c_in, c_out, x, w, g);
    ExpectConv<float>(name, CheckConv(&c, o, s), 1e-5, 1e-5);
  }
  {
    GpuConv<double> c(runner.View(), in.n(), out.n(), c_in, c_out, x, w, g);
    ExpectConv<double>(name, CheckConv(&c, o, s), 1e-12, 1e-12);
  }
  // Pruned: every third offset's weights are zero, which the forward and
  // input-gradient kernels skip; every other offset's pairs must count.
  std::vector<double> pruned = w;
  for (int64_t k = 0; k < runner.K; k += 3) {
    std::fill(pruned.begin() + k * c_in * c_out,
              pruned.begin() + (k + 1) * c_in * c_out, 0.0);
  }
  const Oracle po =
      ComputeOracle(gpu, in.n(), out.n(), c_in, c_out, x, pruned, g);
  {
    GpuConv<float> c(runner.View(), in.n(), out.n(), c_in, c_out, x, pruned, g);
    ExpectConv<float>(name + " pruned", CheckConv(&c, po, s), 1e-5, 1e-5);
  }
}

void ErrorCases(std::mt19937_64* rng, cudaStream_t s) {
  const std::vector<int32_t> cube = BoxOffsets({-1, -1, -1}, {1, 1, 1});
  const std::vector<int32_t> ones = {1, 1, 1};
  // Duplicates: the smallest repeating row and the first row of its site,
  // the same on every run and in the CPU core's words.
  {
    Coords c = RandomCoords(rng, 4, 2, -5, 5, 0.3);
    const int64_t n = c.n(), a = n / 3, b = n / 5;
    for (int64_t r : {a, b}) {
      const std::vector<int32_t> row(&c.rows[r * 4], &c.rows[r * 4] + 4);
      c.rows.insert(c.rows.end(), row.begin(), row.end());
    }
    std::string first;
    for (int run = 0; run < 2; ++run) {
      GpuMapRunner runner(c, c, true, cube, ones);
      const Status st = runner.Run(s);
      EXPECT_MSG(!st.ok() && Contains(st.message(), "duplicate"),
                 "duplicates accepted: " + st.message());
      EXPECT_MSG(Contains(st.message(), "rows " + std::to_string(a) + " and " +
                                            std::to_string(n)),
                 "duplicate rows misreported: " + st.message());
      if (run == 0) first = st.message();
      if (run == 1)
        EXPECT_MSG(st.message() == first, "duplicate report varies");
    }
    std::printf("  duplicates: %s\n", first.c_str());
  }
  // Keys wider than 63 bits: the CPU KeyPacker's message, word for word.
  {
    Coords c;
    c.dims = 4;
    c.rows = {0,         INT32_MIN, INT32_MIN, 0, 0, INT32_MAX,
              INT32_MAX, 0,         0,         0, 0, 0};
    GpuMapRunner runner(c, c, true, cube, ones);
    const Status st = runner.Run(s);
    sparse_ops::KeyPacker packer(4);
    packer.CoverRows(c.rows.data(), c.n());
    const Status cpu = packer.Finalize();
    EXPECT_MSG(!st.ok() && st.message() == cpu.message(),
               "wide keys: GPU says '" + st.message() + "', CPU says '" +
                   cpu.message() + "'");
    EXPECT_MSG(runner.h_info->num_pairs == 0, "wide keys: pairs reported");
  }
  // Negative batch index in the output coordinates.
  {
    Coords in = RandomCoords(rng, 4, 1, -3, 3, 0.5);
    Coords out = in;
    out.rows[5 * 4] = -2;
    GpuMapRunner runner(in, out, false, cube, ones);
    const Status st = runner.Run(s);
    EXPECT_MSG(!st.ok() && st.message() ==
                               "out_coordinates row 5 has a "
                               "negative batch index -2",
               "negative batch: " + st.message());
  }
  // Empty inputs.
  {
    Coords empty;
    empty.dims = 4;
    Coords out = RandomCoords(rng, 4, 1, -2, 2, 0.5);
    GpuMapRunner runner(empty, out, false, cube, ones);
    const Status st = runner.Run(s);
    const HostMap m = runner.Download();
    EXPECT_MSG(st.ok() && m.P() == 0 && m.splits == std::vector<int64_t>(28, 0),
               "empty input map: " + st.message());
    GpuMapRunner none(empty, empty, true, cube, ones);
    EXPECT_MSG(none.Run(s).ok() &&
                   none.Download().splits == std::vector<int64_t>(28, 0),
               "empty map");
    // Convolutions over an empty map write zeros.
    const std::vector<double> w = RandomValues(rng, 27 * 8 * 8);
    GpuConv<float> c(runner.View(), 0, out.n(), 8, 8, {}, w,
                     RandomValues(rng, out.n() * 8));
    c.y.Poison();
    c.dw.Poison();
    c.Forward(s);
    c.WeightGrad(s);
    bool zeros = true;
    for (float v : c.y.Download()) zeros = zeros && v == 0.f;
    for (float v : c.dw.Download()) zeros = zeros && v == 0.f;
    EXPECT_MSG(zeros, "empty map convolution is not zero");
  }
  // A corrupted map fails the GPU validation at the first bad pair.
  {
    Coords c = RandomCoords(rng, 4, 1, -4, 4, 0.4);
    GpuMapRunner runner(c, c, true, cube, ones);
    ASSERT_OK(runner.Run(s));
    HostMap m = runner.Download();
    const int64_t p = m.splits[3] + 2;  // swap two output rows of offset 3
    std::swap(m.out_rows[p], m.out_rows[p + 1]);
    DevBuf<int64_t> sp(m.splits);
    DevBuf<int32_t> ir(m.in_rows), orr(m.out_rows);
    DevBuf<sg::KernelMapCheck> check(1);
    const sg::DeviceKernelMap view{sp.get(), ir.get(), orr.get(), m.K(), m.P()};
    ASSERT_OK(sg::CheckKernelMap(view, c.n(), c.n(), check.get(), s));
    const Status st =
        sg::KernelMapCheckStatus(check.Download()[0], m.P(), c.n(), c.n());
    EXPECT_MSG(!st.ok() && Contains(st.message(),
                                    "pair " + std::to_string(p + 1) + " "),
               "corrupt map: " + st.message());
    m.splits[5] = m.splits[4] - 1;
    DevBuf<int64_t> sp2(m.splits);
    const sg::DeviceKernelMap view2{sp2.get(), ir.get(), orr.get(), m.K(),
                                    m.P()};
    ASSERT_OK(sg::CheckKernelMap(view2, c.n(), c.n(), check.get(), s));
    EXPECT_MSG(
        !sg::KernelMapCheckStatus(check.Download()[0], m.P(), c.n(), c.n())
             .ok(),
        "non-monotone splits accepted");
  }
  // A map that repeats an input row within an offset (valid for the
  // forward pass) is refused by the transposition given a check, naming
  // the first repeat (pair 2, row 1), as the CPU's transposition does.
  {
    const std::vector<int64_t> splits = {0, 3, 4};
    const std::vector<int32_t> in_rows = {1, 0, 1, 2}, out_rows = {0, 1, 2, 0};
    DevBuf<int64_t> sp(splits);
    DevBuf<int32_t> ir(in_rows), orr(out_rows), t_in(4), t_out(4);
    DevBuf<sg::KernelMapCheck> check(1);
    const sg::DeviceKernelMap view{sp.get(), ir.get(), orr.get(), 2, 4};
    DevBuf<unsigned char> ws(sg::TransposeKernelMapWorkspaceBytes(3, 2));
    for (int run = 0; run < 2; ++run) {
      ASSERT_OK(sg::CheckKernelMap(view, 3, 3, check.get(), s));
      ASSERT_OK(sg::TransposeKernelMap(view, 3, t_in.get(), t_out.get(),
                                       ws.get(), ws.size(), s, check.get()));
      const Status st = sg::KernelMapCheckStatus(check.Download()[0], 4, 3, 3);
      EXPECT_MSG(
          !st.ok() && Contains(st.message(), "pair 2 repeats input row 1"),
          "repeated input row: " + st.message());
    }
  }
}

// --- Strided coordinates
// -------------------------------------------------------------

// GPU strided coordinates (count, read back, fill) or the error.
Status GpuStrided(const Coords& c, const std::vector<int32_t>& stride,
                  std::vector<int32_t>* out, cudaStream_t s) {
  sg::Stride by_value{};
  std::copy(stride.begin(), stride.end(), by_value.v);
  DevBuf<int32_t> d_in(c.rows);
  DevBuf<sg::KernelMapInfo> info(1);
  DevBuf<unsigned char> ws(sg::StridedCoordinatesWorkspaceBytes(c.n()));
  ASSERT_OK(sg::StridedCoordinatesCount(d_in.get(), c.n(), c.dims, by_value,
                                        info.get(), ws.get(), ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  const sg::KernelMapInfo host = info.Download()[0];
  const Status status = sg::StridedCoordinatesInfoStatus(host);
  if (!status.ok()) return status;
  DevBuf<int32_t> d_out(host.num_pairs * c.dims);
  ASSERT_OK(sg::StridedCoordinatesFill(info.get(), c.n(), c.dims,
                                       host.num_pairs, d_out.get(), ws.get(),
                                       ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  *out = d_out.Download();
  out->resize(host.num_pairs * c.dims);
  return Status::Ok();
}

// The CPU op's sites: StridedKeys, then Unpack.
Status CpuStrided(const Coords& c, const std::vector<int32_t>& stride,
                  std::vector<int32_t>* out) {
  sparse_ops::KeyPacker packer(c.dims);
  std::vector<uint64_t> keys(c.n());
  int64_t unique = 0;
  const Status status =
      sparse_ops::StridedKeys(c.rows.data(), c.n(), c.dims, stride.data(),
                              &packer, keys.data(), &unique);
  if (!status.ok()) return status;
  out->assign(unique * c.dims, 0);
  for (int64_t i = 0; i < unique; ++i)
    packer.Unpack(keys[i], out->data() + i * c.dims);
  return Status::Ok();
}

void StridedCases(std::mt19937_64* rng, cudaStream_t s) {
  struct Case {
    std::string name;
    Coords c;
    std::vector<int32_t> stride;
  };
  std::vector<Case> cases = {
      {"3D stride (2,1,3), negative coordinates",
       RandomCoords(rng, 4, 3, -9, 8, 0.3),
       {2, 1, 3}},
      {"2D stride 4", RandomCoords(rng, 3, 2, -20, 20, 0.3), {4, 4}},
      {"5D stride 2", RandomCoords(rng, 6, 2, -2, 3, 0.3), {2, 2, 2, 2, 2}},
      {"no rows", Coords{4, {}}, {2, 2, 2}},
      {"one row, huge stride",
       Coords{4, {1, -7, 2147483647, 5}},
       {1 << 30, 3, 1}},
  };
  for (const Case& k : cases) {
    std::vector<int32_t> want, got, again;
    ASSERT_OK(CpuStrided(k.c, k.stride, &want));
    ASSERT_OK(GpuStrided(k.c, k.stride, &got, s));
    ASSERT_OK(GpuStrided(k.c, k.stride, &again, s));
    EXPECT_MSG(got == want, "strided coordinates: " + k.name);
    EXPECT_MSG(again == got, "strided coordinates twice: " + k.name);
  }
  // The CPU op's errors: a negative batch index (its glue's message), a
  // strided range below int32.
  std::vector<int32_t> out;
  Coords negative{4, {0, 1, 1, 1, 2, 0, 0, 0, -3, 5, 5, 5}};
  Status gpu = GpuStrided(negative, {2, 2, 2}, &out, s);
  EXPECT_MSG(!gpu.ok() && gpu.message() ==
                              "coordinates row 2 has a negative batch index -3",
             "strided negative batch: " + gpu.message());
  Coords low{3, {0, -2147483647 - 1 + 1, 0}};
  gpu = GpuStrided(low, {3, 1}, &out, s);
  const Status cpu = CpuStrided(low, {3, 1}, &out);
  EXPECT_MSG(!gpu.ok() && !cpu.ok() && gpu.message() == cpu.message(),
             "strided underflow: GPU '" + gpu.message() + "' vs CPU '" +
                 cpu.message() + "'");
}

// --- Generative coordinates
// -----------------------------------------------------------

Status GpuGenerative(const Coords& c, const std::vector<int32_t>& offsets,
                     const std::vector<int32_t>& stride,
                     std::vector<int32_t>* out, cudaStream_t s) {
  const int64_t K = static_cast<int64_t>(offsets.size()) / (c.dims - 1);
  DevBuf<int32_t> d_in(c.rows), d_offsets(offsets);
  sg::DeviceGeometry g{d_offsets.get(), K, {}};
  std::copy(stride.begin(), stride.end(), g.stride.v);
  DevBuf<sg::KernelMapInfo> info(1);
  DevBuf<unsigned char> ws(sg::GenerativeCoordinatesWorkspaceBytes(c.n(), K));
  ASSERT_OK(sg::GenerativeCoordinatesCount(d_in.get(), c.n(), c.dims, g,
                                           info.get(), ws.get(), ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  const sg::KernelMapInfo host = info.Download()[0];
  const Status status = sg::GenerativeCoordinatesInfoStatus(host);
  if (!status.ok()) return status;
  DevBuf<int32_t> d_out(host.num_pairs * c.dims);
  ASSERT_OK(sg::GenerativeCoordinatesFill(info.get(), c.n(), K, c.dims,
                                          host.num_pairs, d_out.get(), ws.get(),
                                          ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  *out = d_out.Download();
  out->resize(host.num_pairs * c.dims);
  return Status::Ok();
}

Status CpuGenerative(const Coords& c, const std::vector<int32_t>& offsets,
                     const std::vector<int32_t>& stride,
                     std::vector<int32_t>* out) {
  const int64_t K = static_cast<int64_t>(offsets.size()) / (c.dims - 1);
  const sparse_ops::ParallelFor serial =
      [](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
        if (n > 0) fn(0, n);
      };
  sparse_ops::KeyPacker packer(c.dims);
  std::vector<uint64_t> keys;
  const Status status = sparse_ops::GenerativeKeys(
      c.rows.data(), c.n(), c.dims,
      sparse_ops::KernelGeometry{offsets.data(), K, stride.data()},
      int64_t{1} << 40, sparse_ops::kMaxRows, &packer, &keys, serial);
  if (!status.ok()) return status;
  out->assign(keys.size() * c.dims, 0);
  for (size_t i = 0; i < keys.size(); ++i)
    packer.Unpack(keys[i], out->data() + i * c.dims);
  return Status::Ok();
}

void GenerativeCases(std::mt19937_64* rng, cudaStream_t s) {
  struct Case {
    std::string name;
    Coords c;
    std::vector<int32_t> offsets, stride;
  };
  const std::vector<Case> cases = {
      {"3D 2x2x2 stride 2",
       RandomCoords(rng, 4, 3, -6, 6, 0.2),
       BoxOffsets({0, 0, 0}, {1, 1, 1}),
       {2, 2, 2}},
      {"3D 3x3x3 stride (1,2,4)",
       RandomCoords(rng, 4, 2, -5, 5, 0.2),
       BoxOffsets({-1, -1, -1}, {1, 1, 1}),
       {1, 2, 4}},
      {"2D cross",
       RandomCoords(rng, 3, 2, -20, 20, 0.2),
       {0, 0, 1, 0, -1, 0, 0, 1, 0, -1},
       {1, 1}},
      {"no rows", Coords{4, {}}, BoxOffsets({0, 0, 0}, {1, 1, 1}), {2, 2, 2}},
      {"no offsets", RandomCoords(rng, 4, 1, 0, 3, 0.5), {}, {1, 1, 1}},
  };
  for (const Case& k : cases) {
    std::vector<int32_t> want, got, again;
    ASSERT_OK(CpuGenerative(k.c, k.offsets, k.stride, &want));
    ASSERT_OK(GpuGenerative(k.c, k.offsets, k.stride, &got, s));
    ASSERT_OK(GpuGenerative(k.c, k.offsets, k.stride, &again, s));
    EXPECT_MSG(got == want, "generative coordinates: " + k.name);
    EXPECT_MSG(again == got, "generative coordinates twice: " + k.name);
  }
  // A shift past int32: the CPU's error.
  const Coords edge{3, {0, 2147483647 - 1, 0}};
  std::vector<int32_t> out;
  const Status gpu = GpuGenerative(edge, {4, 0}, {1, 1}, &out, s);
  const Status cpu = CpuGenerative(edge, {4, 0}, {1, 1}, &out);
  EXPECT_MSG(!gpu.ok() && !cpu.ok() && gpu.message() == cpu.message(),
             "generative overflow: GPU '" + gpu.message() + "' vs CPU '" +
                 cpu.message() + "'");
}

// --- Coordinate lookup
// ----------------------------------------------------------------

Status GpuLookup(const Coords& c, const std::vector<int32_t>& queries,
                 std::vector<int32_t>* rows, cudaStream_t s) {
  const int64_t q = static_cast<int64_t>(queries.size()) / c.dims;
  DevBuf<int32_t> d_in(c.rows), d_q(queries), d_rows(q);
  DevBuf<sg::KernelMapInfo> info(1);
  DevBuf<unsigned char> ws(sg::CoordinateLookupWorkspaceBytes(c.n()));
  d_rows.Poison();
  ASSERT_OK(sg::CoordinateLookup(d_in.get(), c.n(), c.dims, d_q.get(), q,
                                 d_rows.get(), info.get(), ws.get(), ws.size(),
                                 s));
  CUDA_OK(cudaStreamSynchronize(s));
  *rows = d_rows.Download();
  rows->resize(q);
  return sg::CoordinateLookupInfoStatus(info.Download()[0]);
}

void LookupCases(std::mt19937_64* rng, cudaStream_t s) {
  const Coords c = RandomCoords(rng, 4, 3, -7, 6, 0.3);
  // Queries: every row, shuffled sites of a wider box (many absent), a
  // negative batch and values far outside the range.
  std::vector<int32_t> queries = c.rows;
  const Coords wide = RandomCoords(rng, 4, 4, -9, 8, 0.2);
  queries.insert(queries.end(), wide.rows.begin(), wide.rows.end());
  queries.insert(queries.end(),
                 {-1, 0, 0, 0, 0, 2147483647, -2147483647 - 1, 0});
  std::unordered_map<std::string, int32_t> index;
  auto key = [&](const int32_t* r) {
    return std::string(reinterpret_cast<const char*>(r),
                       c.dims * sizeof(int32_t));
  };
  for (int64_t i = 0; i < c.n(); ++i)
    index[key(&c.rows[i * c.dims])] = static_cast<int32_t>(i);
  const int64_t q = static_cast<int64_t>(queries.size()) / c.dims;
  std::vector<int32_t> want(q);
  for (int64_t i = 0; i < q; ++i) {
    const auto it = index.find(key(&queries[i * c.dims]));
    want[i] = it == index.end() ? -1 : it->second;
  }
  std::vector<int32_t> got, again;
  ASSERT_OK(GpuLookup(c, queries, &got, s));
  ASSERT_OK(GpuLookup(c, queries, &again, s));
  EXPECT_MSG(got == want, "coordinate lookup against a hash map");
  EXPECT_MSG(again == got, "coordinate lookup twice");
  std::vector<int32_t> none;
  ASSERT_OK(GpuLookup(Coords{4, {}}, {0, 0, 0, 0}, &none, s));
  EXPECT_MSG(none == std::vector<int32_t>{-1}, "lookup in an empty set");
  const Status duplicate = GpuLookup(
      Coords{4, {0, 1, 1, 1, 0, 2, 2, 2, 0, 1, 1, 1}}, {0, 1, 1, 1}, &none, s);
  EXPECT_MSG(!duplicate.ok() &&
                 Contains(duplicate.message(), "duplicate sites: rows 0 and 2"),
             "lookup duplicates: " + duplicate.message());
  const Status negative =
      GpuLookup(Coords{4, {0, 1, 1, 1, -4, 2, 2, 2}}, {0, 1, 1, 1}, &none, s);
  EXPECT_MSG(
      !negative.ok() && negative.message() ==
                            "coordinates row 1 has a negative batch index -4",
      "lookup negative batch: " + negative.message());
}

// --- Coordinate union
// -----------------------------------------------------------------

struct UnionResult {
  std::vector<int32_t> sites;
  std::vector<std::vector<int32_t>> rows;
  bool operator==(const UnionResult& o) const {
    return sites == o.sites && rows == o.rows;
  }
};

Status GpuUnion(const std::vector<Coords>& inputs, UnionResult* out,
                cudaStream_t s) {
  const int dims = inputs[0].dims;
  const int num = static_cast<int>(inputs.size());
  std::vector<DevBuf<int32_t>> d_in(num), d_rows(num);
  std::vector<const int32_t*> in_ptrs;
  std::vector<int32_t*> row_ptrs;
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (int i = 0; i < num; ++i) {
    d_in[i].Upload(inputs[i].rows);
    d_rows[i].Alloc(inputs[i].n());
    d_rows[i].Poison();
    in_ptrs.push_back(d_in[i].get());
    row_ptrs.push_back(d_rows[i].get());
    sizes.push_back(inputs[i].n());
    total += inputs[i].n();
  }
  DevBuf<sg::KernelMapInfo> info(1);
  DevBuf<unsigned char> ws(sg::CoordinateUnionWorkspaceBytes(total, dims));
  ASSERT_OK(sg::CoordinateUnionCount(in_ptrs.data(), sizes.data(), num, dims,
                                     row_ptrs.data(), info.get(), ws.get(),
                                     ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  const sg::KernelMapInfo host = info.Download()[0];
  const Status status = sg::CoordinateUnionInfoStatus(host, sizes.data(), num);
  if (!status.ok()) return status;
  DevBuf<int32_t> d_out(host.num_pairs * dims);
  ASSERT_OK(sg::CoordinateUnionFill(total, dims, d_out.get(), ws.get(),
                                    ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  out->sites = d_out.Download();
  out->sites.resize(host.num_pairs * dims);
  out->rows.clear();
  for (int i = 0; i < num; ++i) {
    out->rows.push_back(d_rows[i].Download());
    out->rows.back().resize(sizes[i]);
  }
  return Status::Ok();
}

// The CPU core's union (kernels/core/points.h).
Status CpuUnion(const std::vector<Coords>& inputs, UnionResult* out) {
  const int dims = inputs[0].dims;
  std::vector<const int32_t*> in_ptrs;
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (const Coords& c : inputs) {
    in_ptrs.push_back(c.rows.data());
    sizes.push_back(c.n());
    total += c.n();
  }
  std::vector<int32_t> rows(total);
  std::vector<int64_t> first(total);
  int64_t num_union = 0;
  const Status status = sparse_ops::UnionCoordinates(
      in_ptrs.data(), sizes.data(), static_cast<int>(inputs.size()), dims,
      rows.data(), first.data(), &num_union);
  if (!status.ok()) return status;
  out->sites.assign(num_union * dims, 0);
  sparse_ops::UnionSites(in_ptrs.data(), sizes.data(), dims, first.data(),
                         num_union, out->sites.data());
  out->rows.clear();
  int64_t offset = 0;
  for (int64_t size : sizes) {
    out->rows.emplace_back(rows.begin() + offset, rows.begin() + offset + size);
    offset += size;
  }
  return Status::Ok();
}

void UnionCases(std::mt19937_64* rng, cudaStream_t s) {
  // Overlapping random sets (negative coordinates, 4 batches), the same set
  // twice, an empty input between others, 2D and 5D.
  const Coords a = RandomCoords(rng, 4, 3, -7, 6, 0.3);
  const Coords b = RandomCoords(rng, 4, 3, -5, 8, 0.3);
  const Coords c = RandomCoords(rng, 4, 2, -9, 9, 0.1);
  const std::vector<std::pair<std::string, std::vector<Coords>>> cases = {
      {"three overlapping 3D sets", {a, b, c}},
      {"a set with itself", {a, a}},
      {"an empty input between", {b, Coords{4, {}}, a}},
      {"one input", {c}},
      {"all empty", {Coords{4, {}}, Coords{4, {}}}},
      {"2D",
       {RandomCoords(rng, 3, 2, -20, 20, 0.3),
        RandomCoords(rng, 3, 2, -20, 20, 0.3)}},
      {"5D, huge coordinates",
       {RandomCoords(rng, 6, 2, -2, 3, 0.3),
        Coords{6,
               {0, 2147483647, -2147483647 - 1, 0, 0, 0, 1, 0, 0, 0, 0, 0}}}},
  };
  for (const auto& [name, inputs] : cases) {
    UnionResult want, got, again;
    ASSERT_OK(CpuUnion(inputs, &want));
    ASSERT_OK(GpuUnion(inputs, &got, s));
    ASSERT_OK(GpuUnion(inputs, &again, s));
    EXPECT_MSG(got == want, "coordinate union: " + name);
    EXPECT_MSG(again == got, "coordinate union twice: " + name);
  }
  // The CPU's errors: a site repeated within one input (not across inputs),
  // a negative batch index (the glue's wording), keys wider than 63 bits.
  const Coords repeated{4, {0, 1, 1, 1, 0, 2, 2, 2, 0, 1, 1, 1}};
  UnionResult out, cpu_out;
  Status gpu = GpuUnion({b, repeated}, &out, s);
  Status cpu = CpuUnion({b, repeated}, &cpu_out);
  EXPECT_MSG(!gpu.ok() && !cpu.ok() && gpu.message() == cpu.message() &&
                 Contains(gpu.message(),
                          "coordinates[1] has duplicate sites: rows 0 and 2"),
             "union duplicates: GPU '" + gpu.message() + "' vs CPU '" +
                 cpu.message() + "'");
  gpu = GpuUnion({a, Coords{4, {0, 1, 1, 1, -4, 2, 2, 2}}}, &out, s);
  EXPECT_MSG(
      !gpu.ok() &&
          gpu.message() == "coordinates[1] row 1 has a negative batch index -4",
      "union negative batch: " + gpu.message());
  const Coords wide{5,
                    {0, -2147483647 - 1, -2147483647 - 1, -2147483647 - 1, 0, 1,
                     2147483647, 2147483647, 2147483647, 0}};
  gpu = GpuUnion({wide}, &out, s);
  cpu = CpuUnion({wide}, &cpu_out);
  EXPECT_MSG(!gpu.ok() && !cpu.ok() && gpu.message() == cpu.message(),
             "union key width: GPU '" + gpu.message() + "' vs CPU '" +
                 cpu.message() + "'");
}

// --- Voxelization
// --------------------------------------------------------------------

struct VoxelResult {
  std::vector<int32_t> coordinates, inverse, counts, source;
  std::vector<double> merged;  // as double, bitwise comparable
  bool operator==(const VoxelResult& o) const {
    return coordinates == o.coordinates && inverse == o.inverse &&
           counts == o.counts && source == o.source &&
           std::memcmp(merged.data(), o.merged.data(),
                       merged.size() * sizeof(double)) == 0 &&
           merged.size() == o.merged.size();
  }
};

template <typename T>
Status CpuVoxelize(const std::vector<T>& points, int dims,
                   const std::vector<T>& features, int64_t C,
                   const std::vector<double>& size, sparse_ops::VoxelMode mode,
                   VoxelResult* r) {
  const int64_t n = static_cast<int64_t>(points.size()) / dims;
  std::vector<int32_t> grid(n * dims);
  Status status = sparse_ops::VoxelGrid<T>(points.data(), n, dims, size.data(),
                                           grid.data(), sparse_ops::SerialFor);
  if (!status.ok()) return status;
  std::vector<std::vector<char>> memory;
  const sparse_ops::Allocate allocate = [&](int64_t bytes) -> void* {
    memory.emplace_back(bytes + 64);
    return reinterpret_cast<void*>(
        (reinterpret_cast<uintptr_t>(memory.back().data()) + 63) &
        ~uintptr_t{63});
  };
  r->inverse.assign(n, 0);
  sparse_ops::VoxelSites sites;
  status = sparse_ops::FindVoxelSites(grid.data(), n, dims, allocate,
                                      r->inverse.data(), &sites,
                                      sparse_ops::SerialFor);
  if (!status.ok()) return status;
  const int64_t m = sites.num_sites;
  r->coordinates.assign(m * dims, 0);
  r->counts.assign(m, 0);
  sparse_ops::VoxelCoordinates(grid.data(), dims, sites, r->coordinates.data(),
                               r->counts.data(), sparse_ops::SerialFor);
  std::vector<T> merged(m * C);
  const bool with_source = mode == sparse_ops::VoxelMode::kMax ||
                           mode == sparse_ops::VoxelMode::kFirst;
  r->source.assign(with_source ? m * C : 0, 0);
  sparse_ops::MergeVoxelFeatures<T>(
      features.data(), C, sites, mode, merged.data(),
      with_source ? r->source.data() : nullptr, sparse_ops::SerialFor);
  r->merged.assign(merged.begin(), merged.end());
  return Status::Ok();
}

template <typename T>
Status GpuVoxelize(const std::vector<T>& points, int dims,
                   const std::vector<T>& features, int64_t C,
                   const std::vector<double>& size, sparse_ops::VoxelMode mode,
                   VoxelResult* r, cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(points.size()) / dims;
  DevBuf<T> d_points(points), d_features(features);
  DevBuf<int32_t> d_inverse(n);
  d_inverse.Poison();
  DevBuf<sg::VoxelInfo> info(1);
  DevBuf<unsigned char> ws(sg::VoxelizeWorkspaceBytes<T>(n, dims));
  ASSERT_OK(sg::VoxelizeCount<T>(d_points.get(), n, dims, size.data(),
                                 d_inverse.get(), info.get(), ws.get(),
                                 ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  const sg::VoxelInfo host = info.Download()[0];
  const Status status = sg::VoxelInfoStatus(host, size.data());
  if (!status.ok()) return status;
  const int64_t m = host.num_sites;
  const bool with_source = mode == sparse_ops::VoxelMode::kMax ||
                           mode == sparse_ops::VoxelMode::kFirst;
  DevBuf<int32_t> coords(m * dims), counts(m), source(with_source ? m * C : 0);
  DevBuf<T> merged(m * C);
  coords.Poison();
  merged.Poison();
  ASSERT_OK(sg::VoxelizeFill<T>(d_features.get(), n, dims, C, m, mode,
                                coords.get(), counts.get(), merged.get(),
                                with_source ? source.get() : nullptr, ws.get(),
                                ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  r->coordinates = coords.Download();
  r->coordinates.resize(m * dims);
  r->counts = counts.Download();
  r->counts.resize(m);
  r->source = source.Download();
  r->source.resize(with_source ? m * C : 0);
  r->inverse = d_inverse.Download();
  r->inverse.resize(n);
  const std::vector<T> merged_host = merged.Download();
  r->merged.assign(merged_host.begin(), merged_host.begin() + m * C);
  return Status::Ok();
}

template <typename T>
void VoxelizeCasesOf(std::mt19937_64* rng, cudaStream_t s) {
  const char* type = sizeof(T) == 4 ? " f32" : " f64";
  std::normal_distribution<double> normal;
  for (const int dims : {2, 4, 6}) {
    const int64_t n = 3000, C = 5;
    std::vector<T> points(n * dims), features(n * C);
    for (int64_t i = 0; i < n; ++i) {
      points[i * dims] = static_cast<T>((*rng)() % 3);
      for (int a = 1; a < dims; ++a)
        points[i * dims + a] = static_cast<T>(normal(*rng) * 3);
    }
    // Few levels (ties for max), some NaN, signed zeros.
    for (int64_t e = 0; e < n * C; ++e) {
      const uint64_t r = (*rng)() % 50;
      features[e] = r == 0 ? std::numeric_limits<T>::quiet_NaN()
                    : r == 1
                        ? -T(0)
                        : static_cast<T>(static_cast<int>((*rng)() % 7) - 3);
    }
    const std::vector<double> size(dims - 1, 0.9);
    for (const auto mode :
         {sparse_ops::VoxelMode::kAverage, sparse_ops::VoxelMode::kSum,
          sparse_ops::VoxelMode::kMax, sparse_ops::VoxelMode::kFirst}) {
      VoxelResult want, got, again;
      ASSERT_OK(CpuVoxelize<T>(points, dims, features, C, size, mode, &want));
      ASSERT_OK(GpuVoxelize<T>(points, dims, features, C, size, mode, &got, s));
      ASSERT_OK(
          GpuVoxelize<T>(points, dims, features, C, size, mode, &again, s));
      const std::string what = "voxelize" + std::string(type) + " dims " +
                               std::to_string(dims) + " mode " +
                               std::to_string(static_cast<int>(mode));
      EXPECT_MSG(got == want, what + " equals the CPU");
      EXPECT_MSG(again == got, what + " twice");
    }
  }
}

void VoxelizeCases(std::mt19937_64* rng, cudaStream_t s) {
  VoxelizeCasesOf<float>(rng, s);
  VoxelizeCasesOf<double>(rng, s);
  const std::vector<double> ones = {1.0, 1.0, 1.0};
  VoxelResult none;
  ASSERT_OK(GpuVoxelize<float>({}, 4, {}, 2, ones,
                               sparse_ops::VoxelMode::kAverage, &none, s));
  EXPECT_MSG(none.coordinates.empty() && none.inverse.empty(),
             "voxelize no points");
  // The CPU's errors (the first bad point in row order).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::vector<double>> bad = {
      {0, 1, 1, 1, 0, 2, nan, 2, -1, 0, 0,
       0},  // NaN in row 1 before the batch in row 2
      {0.5, 0, 0, 0},
      {0, 0, 0, 0, 0, 0, 5e9, 0},
  };
  for (const auto& points : bad) {
    VoxelResult cpu_r, gpu_r;
    const std::vector<double> f(points.size() / 4, 1.0);
    const Status cpu = CpuVoxelize<double>(points, 4, f, 1, ones,
                                           sparse_ops::VoxelMode::kSum, &cpu_r);
    const Status gpu = GpuVoxelize<double>(
        points, 4, f, 1, ones, sparse_ops::VoxelMode::kSum, &gpu_r, s);
    EXPECT_MSG(!cpu.ok() && !gpu.ok() && cpu.message() == gpu.message(),
               "voxelize error: GPU '" + gpu.message() + "' vs CPU '" +
                   cpu.message() + "'");
  }
  // Rows too wide for a 64-bit key: the CPU compares rows, the GPU refuses.
  const std::vector<double> wide = {0, 2147483647.0,  -2147483648.0, 0,
                                    1, -2147483648.0, 2147483647.0,  5};
  const Status gpu = GpuVoxelize<double>(wide, 4, {1.0, 2.0}, 1, ones,
                                         sparse_ops::VoxelMode::kSum, &none, s);
  EXPECT_MSG(!gpu.ok() && Contains(gpu.message(), "64-bit key"),
             "voxelize wide keys: " + gpu.message());
}

// --- Depthwise convolution
// -------------------------------------------------------------

// The CPU core's forward, input and weight gradients on a host map, and the
// GPU's on the same map; compared bit for bit, the GPU twice.
template <typename T>
void DepthwiseCase(const std::string& name, const HostMap& m,
                   const sg::DeviceKernelMap& view, int64_t n_in, int64_t n_out,
                   int64_t C, int64_t M, std::mt19937_64* rng, cudaStream_t s) {
  const std::vector<T> x = Cast<T>(RandomValues(rng, n_in * C));
  const std::vector<T> w = Cast<T>(RandomValues(rng, m.K() * C * M));
  const std::vector<T> g = Cast<T>(RandomValues(rng, n_out * C * M));
  const sparse_ops::KernelMapView cpu_map{m.splits.data(), m.in_rows.data(),
                                          m.out_rows.data(), m.K()};
  std::vector<std::vector<char>> memory;
  const sparse_ops::Allocate allocate = [&](int64_t bytes) -> void* {
    memory.emplace_back(bytes + 64);
    return reinterpret_cast<void*>(
        (reinterpret_cast<uintptr_t>(memory.back().data()) + 63) &
        ~uintptr_t{63});
  };
  std::vector<T> y(n_out * C * M), dx(n_in * C), dw(m.K() * C * M);
  sparse_ops::DepthwiseConv<T>(x.data(), C, M, w.data(), false, cpu_map, n_out,
                               y.data(), sparse_ops::SerialFor);
  sparse_ops::KernelMapView transposed;
  ASSERT_OK(sparse_ops::TransposedKernelMap(
      cpu_map, n_in, allocate, sparse_ops::SerialFor, &transposed));
  sparse_ops::DepthwiseConv<T>(g.data(), C, M, w.data(), true, transposed, n_in,
                               dx.data(), sparse_ops::SerialFor);
  ASSERT_OK(sparse_ops::DepthwiseConvWeightGradient<T>(
      x.data(), C, M, g.data(), cpu_map, dw.data(), allocate,
      sparse_ops::SerialFor));
  DevBuf<T> d_x(x), d_w(w), d_g(g), d_y(y.size()), d_dx(dx.size()),
      d_dw(dw.size());
  DevBuf<unsigned char> ws_y(sg::DepthwiseConvWorkspaceBytes(m.K(), n_out));
  DevBuf<unsigned char> ws_dx(
      sg::DepthwiseConvBackpropInputWorkspaceBytes(m.K(), n_in));
  DevBuf<unsigned char> ws_dw(
      sg::DepthwiseConvBackpropKernelWorkspaceBytes<T>(m.K(), m.P(), C, M));
  std::vector<T> runs[2][3];
  for (int r = 0; r < 2; ++r) {
    d_y.Poison();
    d_dx.Poison();
    d_dw.Poison();
    ASSERT_OK(sg::DepthwiseConv<T>(d_x.get(), n_in, C, M, d_w.get(), view,
                                   n_out, d_y.get(), ws_y.get(), ws_y.size(),
                                   s));
    ASSERT_OK(sg::DepthwiseConvBackpropInput<T>(
        d_g.get(), n_out, C, M, d_w.get(), view, n_in, d_dx.get(), ws_dx.get(),
        ws_dx.size(), s));
    ASSERT_OK(sg::DepthwiseConvBackpropKernel<T>(
        d_x.get(), n_in, C, M, d_g.get(), n_out, view, d_dw.get(), ws_dw.get(),
        ws_dw.size(), s));
    CUDA_OK(cudaStreamSynchronize(s));
    runs[r][0] = d_y.Download();
    runs[r][1] = d_dx.Download();
    runs[r][2] = d_dw.Download();
  }
  const std::string what = "depthwise " + name +
                           (sizeof(T) == 4 ? " f32" : " f64") +
                           " M=" + std::to_string(M);
  const auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() &&
           std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  };
  EXPECT_MSG(same(runs[0][0], y), what + ": forward equals the CPU");
  EXPECT_MSG(same(runs[0][1], dx), what + ": input gradient equals the CPU");
  EXPECT_MSG(same(runs[0][2], dw), what + ": weight gradient equals the CPU");
  for (int i = 0; i < 3; ++i)
    EXPECT_MSG(same(runs[1][i], runs[0][i]), what + ": twice");
}

void DepthwiseCases(std::mt19937_64* rng, cudaStream_t s) {
  const Coords c = RandomCoords(rng, 4, 3, -7, 6, 0.3);
  const Coords coarse = RandomCoords(rng, 4, 3, -4, 3, 0.4);
  struct MapCase {
    std::string name;
    const Coords* in;
    const Coords* out;
    bool same;
    std::vector<int32_t> offsets, stride;
  };
  const std::vector<MapCase> cases = {
      {"subm 3x3x3",
       &c,
       &c,
       true,
       BoxOffsets({-1, -1, -1}, {1, 1, 1}),
       {1, 1, 1}},
      {"box 2x2x2 onto other sites",
       &c,
       &coarse,
       false,
       BoxOffsets({0, 0, 0}, {1, 1, 1}),
       {2, 2, 2}},
  };
  for (const MapCase& k : cases) {
    GpuMapRunner runner(*k.in, *k.out, k.same, k.offsets, k.stride);
    ASSERT_OK(runner.Run(s));
    const HostMap m = runner.Download();
    for (const int64_t M : {int64_t{1}, int64_t{3}}) {
      DepthwiseCase<float>(k.name, m, runner.View(), k.in->n(), k.out->n(), 37,
                           M, rng, s);
      DepthwiseCase<double>(k.name, m, runner.View(), k.in->n(), k.out->n(), 16,
                            M, rng, s);
    }
  }
  // A user's map that repeats an input row within an offset: reported.
  DevBuf<int64_t> splits(std::vector<int64_t>{0, 2});
  DevBuf<int32_t> in_rows(std::vector<int32_t>{1, 1}),
      out_rows(std::vector<int32_t>{0, 1});
  const sg::DeviceKernelMap repeated{splits.get(), in_rows.get(),
                                     out_rows.get(), 1, 2};
  DevBuf<sg::KernelMapCheck> check(1);
  ASSERT_OK(sg::CheckKernelMap(repeated, 4, 2, check.get(), s));
  DevBuf<float> grad(std::vector<float>(2 * 3, 1.0f)),
      w(std::vector<float>(3, 1.0f)), dx(12);
  DevBuf<unsigned char> ws(sg::DepthwiseConvBackpropInputWorkspaceBytes(1, 4));
  ASSERT_OK(sg::DepthwiseConvBackpropInput<float>(
      grad.get(), 2, 3, 1, w.get(), repeated, 4, dx.get(), ws.get(), ws.size(),
      s, check.get()));
  CUDA_OK(cudaStreamSynchronize(s));
  const Status status = sg::KernelMapCheckStatus(check.Download()[0], 2, 4, 2);
  EXPECT_MSG(!status.ok() && Contains(status.message(),
                                      "kernel map pair 1 repeats input row 1"),
             "depthwise repeated input row: " + status.message());
}

// --- Timing
// ----------------------------------------------------------------------------

template <typename F>
double MedianMs(cudaStream_t s, F&& f, int reps = 20) {
  cudaEvent_t a, b;
  CUDA_OK(cudaEventCreate(&a));
  CUDA_OK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  CUDA_OK(cudaStreamSynchronize(s));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CUDA_OK(cudaEventRecord(a, s));
    f();
    CUDA_OK(cudaEventRecord(b, s));
    CUDA_OK(cudaEventSynchronize(b));
    float t = 0;
    CUDA_OK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CUDA_OK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The other ops on the shell, f32, 64 channels, beside the f32 conv
// forward (the targets: pooling and attention each under the conv's time):
// strided coordinates, the 2x2x2 stride-2 map onto them, max and sum
// pooling over it, global pooling, attention (k = a tenth of the sites),
// the union of the shell and its strided sites, and the forward with two
// offsets in three pruned. Each op as a TensorFlow op runs it: host reads
// included.
void OtherOpTimings(const Coords& shell, GpuConv<float>& cf,
                    const std::vector<double>& x, const std::vector<double>& w,
                    const std::vector<double>& g, double conv_ms,
                    cudaStream_t s) {
  const int64_t n = shell.n(), C = 64;
  const float* features = cf.x.get();
  DevBuf<int32_t> d_shell(shell.rows);
  sg::KernelMapInfo* host = nullptr;
  CUDA_OK(cudaMallocHost(&host, sizeof(sg::KernelMapInfo)));
  DevBuf<sg::KernelMapInfo> info(1);
  auto read_info = [&] {
    CUDA_OK(cudaMemcpyAsync(host, info.get(), sizeof(sg::KernelMapInfo),
                            cudaMemcpyDeviceToHost, s));
    CUDA_OK(cudaStreamSynchronize(s));
  };
  auto report = [&](const char* what, double ms) {
    std::printf("  %-44s %.3f ms  (%.2fx the conv forward)\n", what, ms,
                ms / conv_ms);
  };

  // Strided coordinates (stride 2): count, one host read, fill.
  sg::Stride two{};
  std::fill(two.v, two.v + 3, 2);
  DevBuf<unsigned char> strided_ws(sg::StridedCoordinatesWorkspaceBytes(n));
  DevBuf<int32_t> d_coarse(n * 4);
  auto strided = [&] {
    ASSERT_OK(sg::StridedCoordinatesCount(d_shell.get(), n, 4, two, info.get(),
                                          strided_ws.get(), strided_ws.size(),
                                          s));
    read_info();
    ASSERT_OK(sg::StridedCoordinatesFill(info.get(), n, 4, host->num_pairs,
                                         d_coarse.get(), strided_ws.get(),
                                         strided_ws.size(), s));
  };
  strided();
  CUDA_OK(cudaStreamSynchronize(s));
  Coords coarse{4, d_coarse.Download()};
  coarse.rows.resize(host->num_pairs * 4);
  const int64_t nc = coarse.n();
  report("strided coordinates (stride 2)", MedianMs(s, strided));

  // The downsampling map and pooling over it.
  GpuMapRunner down(shell, coarse, false, BoxOffsets({0, 0, 0}, {1, 1, 1}),
                    {1, 1, 1});
  ASSERT_OK(down.Run(s));
  report("kernel map 2x2x2 onto the strided sites",
         MedianMs(s, [&] { ASSERT_OK(down.Run(s)); }));
  DevBuf<float> pooled(nc * C);
  DevBuf<int32_t> argmax(nc * C);
  report("max pool 2x2x2", MedianMs(s, [&] {
           ASSERT_OK(sg::MaxPool<float>(features, n, C, down.View(), nc,
                                        pooled.get(), argmax.get(), s));
         }));
  report("average pool 2x2x2", MedianMs(s, [&] {
           ASSERT_OK(sg::SumPool<float>(features, n, C, down.View(), nc, true,
                                        pooled.get(), s));
         }));
  DevBuf<int32_t> batch(n);
  CUDA_OK(cudaMemset(batch.get(), 0, n * sizeof(int32_t)));
  DevBuf<sg::IndexCheck> index_check(1);
  DevBuf<unsigned char> global_ws(sg::GlobalPoolWorkspaceBytes<float>(n, C, 1));
  DevBuf<float> global(C);
  report("global average pool", MedianMs(s, [&] {
           ASSERT_OK(sg::GlobalSumPool<float>(
               features, n, C, batch.get(), 1, true, global.get(),
               index_check.get(), global_ws.get(), global_ws.size(), s));
         }));

  // Attention: the keep mask and the kept rows' count, read back.
  for (const auto per :
       {sparse_ops::AttentionPer::kChannel, sparse_ops::AttentionPer::kSite}) {
    DevBuf<unsigned char> ws(sg::AttentionWorkspaceBytes<float>(n, C, per));
    DevBuf<unsigned char> keep(n * C);
    DevBuf<sg::AttentionInfo> attention_info(1);
    const double ms = MedianMs(s, [&] {
      ASSERT_OK(sg::AttentionKeep<float>(
          features, n, C, d_shell.get(), 4, n / 10,
          sparse_ops::AttentionMode::kValue, per,
          reinterpret_cast<bool*>(keep.get()), attention_info.get(), ws.get(),
          ws.size(), s));
      CUDA_OK(cudaStreamSynchronize(s));
    });
    report(per == sparse_ops::AttentionPer::kSite
               ? "attention per site, k = n / 10"
               : "attention per channel, k = n / 10",
           ms);
  }

  // Union of the shell and its strided sites.
  {
    const int32_t* inputs[2] = {d_shell.get(), d_coarse.get()};
    const int64_t sizes[2] = {n, nc};
    DevBuf<int32_t> rows0(n), rows1(nc), out((n + nc) * 4);
    int32_t* rows[2] = {rows0.get(), rows1.get()};
    DevBuf<unsigned char> ws(sg::CoordinateUnionWorkspaceBytes(n + nc, 4));
    report(
        "coordinate union (shell + strided sites)", MedianMs(s, [&] {
          ASSERT_OK(sg::CoordinateUnionCount(
              inputs, sizes, 2, 4, rows, info.get(), ws.get(), ws.size(), s));
          read_info();
          ASSERT_OK(sg::CoordinateUnionFill(n + nc, 4, out.get(), ws.get(),
                                            ws.size(), s));
        }));
  }

  // Pruned offsets are skipped: 9 of 27 kept.
  std::vector<double> pruned = w;
  for (int64_t k = 0; k < 27; ++k) {
    if (k % 3 != 0)
      std::fill(pruned.begin() + k * C * C, pruned.begin() + (k + 1) * C * C,
                0.0);
  }
  GpuConv<float> pc(cf.map, n, n, C, C, x, pruned, g);
  report("conv forward, 18 of 27 offsets pruned",
         MedianMs(s, [&] { pc.Forward(s); }));
  CUDA_OK(cudaFreeHost(host));
}

void ShellWorkload(std::mt19937_64* rng, cudaStream_t s) {
  const Coords shell = SphereShell(2024);
  const std::vector<int32_t> cube = BoxOffsets({-1, -1, -1}, {1, 1, 1});
  const std::vector<int32_t> ones = {1, 1, 1};
  const int64_t n = shell.n(), C = 64;

  GpuMapRunner runner(shell, shell, true, cube, ones);
  ASSERT_OK(runner.Run(s));
  const HostMap gpu = runner.Download();
  const HostMap oracle = OracleMap(shell, shell, cube, ones);
  const bool map_ok = SameMap(gpu, oracle);
  EXPECT_MSG(map_ok, "shell: map differs from the oracle");
  ASSERT_OK(runner.Run(s));
  const bool map_det = SameMap(runner.Download(), gpu);
  EXPECT_MSG(map_det, "shell: map not deterministic");
  // The general path (no mirroring) gives the same map.
  GpuMapRunner general(shell, shell, false, cube, ones);
  ASSERT_OK(general.Run(s));
  EXPECT_MSG(SameMap(general.Download(), gpu), "shell: unmirrored map differs");
  const int64_t P = gpu.P();
  std::printf("PEERS shell: %lld sites, %lld pairs (%.2f per site), map %s%s\n",
              static_cast<long long>(n), static_cast<long long>(P),
              static_cast<double>(P) / n, map_ok ? "== oracle" : "WRONG",
              map_det ? ", deterministic" : ", NOT DETERMINISTIC");

  const std::vector<double> x = RandomValues(rng, n * C);
  const std::vector<double> w = RandomValues(rng, 27 * C * C);
  const std::vector<double> g = RandomValues(rng, n * C);
  const Oracle o = ComputeOracle(gpu, n, n, C, C, x, w, g);
  GpuConv<float> cf(runner.View(), n, n, C, C, x, w, g);
  ExpectConv<float>("shell 64->64", CheckConv(&cf, o, s), 1e-5, 1e-4);
  GpuConv<double> cd(runner.View(), n, n, C, C, x, w, g);
  ExpectConv<double>("shell 64->64", CheckConv(&cd, o, s), 1e-12, 1e-12);

  // Timings: median of 20 after 3 warm-ups, CUDA events on one stream.
  const double flops = 2.0 * P * C * C;
  const double t_map = MedianMs(s, [&] { ASSERT_OK(runner.Run(s)); });
  const double t_map_general = MedianMs(s, [&] { ASSERT_OK(general.Run(s)); });
  DevBuf<int32_t> t_in(P), t_out(P);
  DevBuf<unsigned char> t_ws(sg::TransposeKernelMapWorkspaceBytes(n, 27));
  const double t_transpose = MedianMs(s, [&] {
    ASSERT_OK(sg::TransposeKernelMap(runner.View(), n, t_in.get(), t_out.get(),
                                     t_ws.get(), t_ws.size(), s));
  });
  const double f_fwd = MedianMs(s, [&] { cf.Forward(s); });
  const double f_dx = MedianMs(s, [&] { cf.InputGrad(s); });
  const double f_dw = MedianMs(s, [&] { cf.WeightGrad(s); });
  const double d_fwd = MedianMs(s, [&] { cd.Forward(s); });
  const double d_dx = MedianMs(s, [&] { cd.InputGrad(s); });
  const double d_dw = MedianMs(s, [&] { cd.WeightGrad(s); });
  std::printf("timings (H100 median of 20, ms):\n");
  std::printf(
      "  kernel map (count + info sync + fill) %.3f ms  (%.0f Mpairs/s)"
      "; unmirrored %.3f ms\n",
      t_map, P / t_map / 1e3, t_map_general);
  std::printf("  transposed map (part of dX)           %.3f ms\n", t_transpose);
  std::printf(
      "  f32 forward %.3f ms (%.0f GFLOP/s)  dX %.3f ms (%.0f)  dW %.3f ms "
      "(%.0f)\n",
      f_fwd, flops / f_fwd / 1e6, f_dx, flops / f_dx / 1e6, f_dw,
      flops / f_dw / 1e6);
  std::printf(
      "  f64 forward %.3f ms (%.0f GFLOP/s)  dX %.3f ms (%.0f)  dW %.3f ms "
      "(%.0f)\n",
      d_fwd, flops / d_fwd / 1e6, d_dx, flops / d_dx / 1e6, d_dw,
      flops / d_dw / 1e6);
  std::printf("  workspace bytes: map %zu, f32 fwd %zu, dX %zu, dW %zu\n",
              runner.ws_bytes, cf.fwd_bytes, cf.dx_bytes, cf.dw_bytes);
  OtherOpTimings(shell, cf, x, w, g, f_fwd, s);
#ifdef SPARSE_OPS_WITH_CUBLAS
  {
    cublasHandle_t h;
    cublasCreate(&h);
    cublasSetStream(h, s);
    DevBuf<float> a(P * C), b(C * C), c(P * C);
    CUDA_OK(cudaMemset(a.get(), 0x3c, P * C * sizeof(float)));
    CUDA_OK(cudaMemset(b.get(), 0x3c, C * C * sizeof(float)));
    const float one = 1.f, zero = 0.f;
    const double t = MedianMs(s, [&] {
      // Row-major [P, C] x [C, C] as column-major C^T = B^T A^T.
      cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, P, C, &one, b.get(), C,
                  a.get(), C, &zero, c.get(), C);
    });
    std::printf(
        "  cuBLAS SGEMM [%lld,64]x[64,64] (the same FLOPs, packed): "
        "%.3f ms (%.0f GFLOP/s)\n",
        static_cast<long long>(P), t, flops / t / 1e6);
    cublasDestroy(h);
  }
#endif
}

}  // namespace

int main(int argc, char** argv) {
  // --small: the small and error cases only (for compute-sanitizer);
  // --tiny: one small case (for racecheck, which is slow).
  const bool small_only = argc > 1 && (std::strcmp(argv[1], "--small") == 0 ||
                                       std::strcmp(argv[1], "--tiny") == 0);
  const bool tiny = argc > 1 && std::strcmp(argv[1], "--tiny") == 0;
  // --shell: the PEERS workload only (for profilers).
  const bool shell_only = argc > 1 && std::strcmp(argv[1], "--shell") == 0;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int device = 0;
  CUDA_OK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, device));
  std::printf("== sparse_ops GPU core test on %s (%d SMs) ==\n", prop.name,
              prop.multiProcessorCount);
  cudaStream_t s;
  // A blocking stream: the legacy-stream cudaMemset / cudaMemcpy of the
  // helpers are ordered with it.
  CUDA_OK(cudaStreamCreate(&s));
  std::mt19937_64 rng(12345);

  if (shell_only) {
    ShellWorkload(&rng, s);
    return sparse_ops::testing::TestResult("gpu_core_test");
  }
  std::printf("small cases:\n");
  {
    // Submanifold 3x3x3 with negative coordinates, 3 batches: mirrored.
    const Coords c = RandomCoords(&rng, 4, 3, -7, 6, 0.3);
    const std::vector<int32_t> cube = BoxOffsets({-1, -1, -1}, {1, 1, 1});
    SmallCase("subm 3x3x3 mirrored", c, c, true, cube, {1, 1, 1}, 37, 70, &rng,
              s);
    if (tiny) {
      return sparse_ops::testing::TestResult("gpu_core_test");
    }
    SmallCase("subm 3x3x3 general", c, c, false, cube, {1, 1, 1}, 64, 64, &rng,
              s);
    // Non-symmetric geometry, different in / out sets, a stride, output
    // sites far outside the input range.
    Coords out = RandomCoords(&rng, 4, 3, -9, 8, 0.2);
    out.rows.insert(out.rows.end(), {0, -100000, 5, 5, 2, 1 << 30, 0, 0});
    const std::vector<int32_t> box = BoxOffsets({0, -1, 0}, {1, 1, 2});
    SmallCase("box 2x3x3 stride (2,1,3)", c, out, false, box, {2, 1, 3}, 5, 130,
              &rng, s);
    // 2D (dims 3) and 5D (dims 6, the generic path).
    const Coords c2 = RandomCoords(&rng, 3, 2, -20, 20, 0.3);
    SmallCase("2D 5x5", c2, c2, true, BoxOffsets({-2, -2}, {2, 2}), {1, 1}, 16,
              16, &rng, s);
    const Coords c5 = RandomCoords(&rng, 6, 2, -2, 3, 0.3);
    SmallCase("5D 3^5", c5, c5, true,
              BoxOffsets({-1, -1, -1, -1, -1}, {1, 1, 1, 1, 1}),
              {1, 1, 1, 1, 1}, 8, 12, &rng, s);
  }
  std::printf("errors:\n");
  ErrorCases(&rng, s);
  std::printf("strided coordinates:\n");
  StridedCases(&rng, s);
  std::printf("generative coordinates:\n");
  GenerativeCases(&rng, s);
  std::printf("coordinate lookup:\n");
  LookupCases(&rng, s);
  std::printf("coordinate union:\n");
  UnionCases(&rng, s);
  std::printf("voxelization:\n");
  VoxelizeCases(&rng, s);
  std::printf("depthwise convolution:\n");
  DepthwiseCases(&rng, s);
  if (!small_only) ShellWorkload(&rng, s);
  CUDA_OK(cudaStreamDestroy(s));
  return sparse_ops::testing::TestResult("gpu_core_test");
}

#endif  // !GOOGLE_CUDA

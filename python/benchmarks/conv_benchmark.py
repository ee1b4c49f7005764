"""Benchmark of the sparse convolution core on the PEERS workload
(docs/benchmarks.md, "Workload").

Submanifold 3x3x3 convolution, 64 -> 64 channels, float32, no bias, on every
voxel of a sphere shell of radius 75 (~100k sites, ~14 neighbours per site).
Prints sites, pairs, kernel-map time, convolution time, effective GFLOP/s,
and the shape-matched GEMM (`tf.linalg.matmul` of [pairs, 64] @ [64, 64])
measured in the same run, plus the stride-2 convolution and the backward
pass. With --peers, runs the spconv script of python/benchmarks/ in its own
virtual environment on the same workload, side by side.

    python python/benchmarks/conv_benchmark.py [--repeats 7] [--peers]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sparse_ops as so  # noqa: E402
from sparse_ops import _loader  # noqa: E402
from sparse_ops.ops import cache  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def sphere_shell(radius=75, samples=4_000_000, seed=0):
    """Every voxel of a sphere shell: the PEERS workload (docs/benchmarks.md)."""
    v = np.random.default_rng(seed).normal(size=(samples, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sites = np.unique(np.floor(v * radius).astype(np.int32) + radius + 1, axis=0)
    return np.concatenate([np.zeros((len(sites), 1), np.int32), sites], 1)


def timed(fn, repeats):
    """Median wall time of fn() in ms over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def alternating(fn_a, fn_b, repeats):
    """(median, best) ms of fn_a and of fn_b, timed in alternation."""
    fn_a(), fn_b()
    times = ([], [])
    for _ in range(repeats):
        for fn, acc in ((fn_a, times[0]), (fn_b, times[1])):
            start = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - start) * 1e3)
    return tuple((round(statistics.median(t), 2), round(min(t), 2)) for t in times)


def run_peer(script, venv_python, repeats):
    if not os.path.exists(venv_python):
        return {"error": f"{venv_python} not found; see python/benchmarks/README.md"}
    out = subprocess.run([venv_python, os.path.join(HERE, script), "--reps",
                          str(max(5, repeats))], capture_output=True, text=True)
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": out.stderr[-500:]}


def cpu_paths():
    """The kernel paths this CPU runs (sparse_ops picks the widest itself;
    SPARSE_OPS_ISA narrows it): from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":")[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    paths = ["portable"]
    if {"avx2", "fma"} <= set(flags):
        paths.append("avx2")
    if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= set(flags):
        paths.append("avx512")
        if "avx512_bf16" in flags:  # adds the bfloat16 dot products only
            paths.append("avx512bf16")
    return paths


def isa_paths(repeats, flops, conv_cached, weight_gradient, conv_cached_bf16):
    """The cached conv and the weight gradient on every kernel path of this
    CPU, each as a fraction of the square-GEMM rate (2048^3
    tf.linalg.matmul) measured in the same run, and the cached conv in
    bfloat16 against the float32 one (calls alternating, so that both see
    the same machine load)."""
    a = tf.constant(np.random.default_rng(4).standard_normal((2048, 2048)), tf.float32)
    median, best = timed(lambda: tf.linalg.matmul(a, a), repeats)
    square = 2.0 * 2048 ** 3 / median / 1e6
    out = {"square_gemm_gflops": round(square, 1),
           "square_gemm_best_gflops": round(2.0 * 2048 ** 3 / best / 1e6, 1)}
    print(f"square GEMM (2048^3 matmul): {square:.0f} GFLOP/s median, "
          f"{out['square_gemm_best_gflops']:.0f} best")
    previous = os.environ.get("SPARSE_OPS_ISA")
    try:
        for path in cpu_paths():
            os.environ["SPARSE_OPS_ISA"] = path
            row = {}
            for name, fn in (("conv_cached", conv_cached), ("weight_gradient", weight_gradient)):
                median, best = timed(fn, repeats)
                row[f"{name}_ms"], row[f"{name}_best_ms"] = round(median, 2), round(best, 2)
                row[f"{name}_of_square_gemm"] = round(flops / median / 1e6 / square, 3)
            f32, bf16 = alternating(conv_cached, conv_cached_bf16, repeats)
            row["bf16_conv_cached_ms"], row["bf16_conv_cached_best_ms"] = bf16
            row["bf16_speedup"] = round(f32[0] / bf16[0], 3)
            row["bf16_speedup_best"] = round(f32[1] / bf16[1], 3)
            out[path] = row
            print(f"  {path:10s} conv cached {row['conv_cached_ms']:7.1f} ms "
                  f"({row['conv_cached_of_square_gemm']:.2f} of square GEMM), "
                  f"weight gradient {row['weight_gradient_ms']:7.1f} ms "
                  f"({row['weight_gradient_of_square_gemm']:.2f}), "
                  f"bfloat16 conv {bf16[0]:6.1f} ms ({row['bf16_speedup']:.2f}x "
                  f"float32 median, {row['bf16_speedup_best']:.2f}x best)")
    finally:
        if previous is None:
            os.environ.pop("SPARSE_OPS_ISA", None)
        else:
            os.environ["SPARSE_OPS_ISA"] = previous
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--radius", type=int, default=75)
    parser.add_argument("--peers", action="store_true",
                        help="also run spconv (venv at $SPCONV_PYTHON or "
                             "/work/venvs/spconv/bin/python)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    lib = _loader.library()
    c_np = sphere_shell(args.radius)
    coords = tf.constant(c_np)
    n, ch = len(c_np), args.channels
    features = tf.constant(np.random.default_rng(1).standard_normal((n, ch)), tf.float32)
    kernel = tf.constant(np.random.default_rng(2).standard_normal((3, 3, 3, ch, ch)) * 0.05,
                         tf.float32)
    k3 = tf.reshape(kernel, [27, ch, ch])
    offsets = so.kernel_offsets(3, dimension=3)
    unit = tf.constant([1, 1, 1])
    x = so.SparseTensor(features, coords)
    rows = tf.constant(n, tf.int64)

    kmap = lib.sparse_ops_kernel_map(coords, coords, offsets, unit)
    pairs = int(kmap[0][-1])
    flops = 2.0 * pairs * ch * ch
    lhs = tf.constant(np.random.default_rng(3).standard_normal((pairs, ch)), tf.float32)

    def conv_uncached():
        cache.clear()
        return so.ops.conv(x, kernel).features

    def conv_cached():
        return lib.sparse_ops_conv(features, k3, *kmap, rows)

    def stride2():
        cache.clear()
        return so.ops.conv(x, kernel, strides=2).features

    def backward():
        with tf.GradientTape() as tape:
            tape.watch([features, kernel])
            y = so.ops.conv(so.SparseTensor(features, coords), kernel).features
        return tape.gradient(y, [features, kernel], output_gradients=y)

    results = {"sites": n, "pairs": pairs,
               "neighbours_per_site": pairs / n, "channels": ch,
               "threads": os.cpu_count()}
    measures = {
        "gemm_ms": lambda: tf.linalg.matmul(lhs, k3[0]),
        "kernel_map_ms": lambda: lib.sparse_ops_kernel_map(coords, coords, offsets, unit),
        "conv_ms": conv_uncached,
        "conv_cached_map_ms": conv_cached,
        "stride2_conv_ms": stride2,
        "forward_backward_ms": backward,
    }
    for name, fn in measures.items():
        median, best = timed(fn, args.repeats)
        results[name] = round(median, 2)
        results[name.replace("_ms", "_best_ms")] = round(best, 2)
    gemm = results["gemm_ms"]
    results["gemm_gflops"] = round(flops / gemm / 1e6, 1)
    results["conv_gflops"] = round(flops / results["conv_ms"] / 1e6, 1)
    results["conv_over_gemm"] = round(results["conv_ms"] / gemm, 3)
    results["kernel_map_over_gemm"] = round(results["kernel_map_ms"] / gemm, 3)
    results["kernel_map_mpairs_per_s"] = round(pairs / results["kernel_map_ms"] / 1e3, 1)

    print(f"sites {n:,}  pairs {pairs:,}  neighbours/site {pairs / n:.1f}  "
          f"channels {ch}  threads {os.cpu_count()}")
    print(f"GEMM reference [{pairs:,}, {ch}] @ [{ch}, {ch}]: {gemm:8.1f} ms  "
          f"({results['gemm_gflops']} GFLOP/s)")
    print(f"kernel map:                {results['kernel_map_ms']:8.1f} ms  "
          f"({results['kernel_map_over_gemm']:.2f} x GEMM, "
          f"{results['kernel_map_mpairs_per_s']} M pairs/s)")
    print(f"conv incl. kernel map:     {results['conv_ms']:8.1f} ms  "
          f"({results['conv_over_gemm']:.2f} x GEMM, {results['conv_gflops']} GFLOP/s)")
    print(f"conv, map cached:          {results['conv_cached_map_ms']:8.1f} ms")
    print(f"stride-2 conv incl. map:   {results['stride2_conv_ms']:8.1f} ms")
    print(f"forward + backward:        {results['forward_backward_ms']:8.1f} ms")

    features_bf16, k3_bf16 = tf.cast(features, tf.bfloat16), tf.cast(k3, tf.bfloat16)
    results["isa"] = isa_paths(args.repeats, flops, conv_cached,
                               lambda: lib.sparse_ops_conv_backprop_kernel(
                                   features, features, *kmap),
                               lambda: lib.sparse_ops_conv(features_bf16, k3_bf16,
                                                           *kmap, rows))
    if args.peers:
        python = os.environ.get("SPCONV_PYTHON", "/work/venvs/spconv/bin/python")
        peer = run_peer("peer_spconv.py", python, args.repeats)
        results["spconv"] = peer
        if "subm_ms" in peer:
            print(f"spconv {peer.get('version')} (1 thread): subm incl. rulebook "
                  f"{peer['subm_ms']:.1f} ms, cached {peer['subm_cached_ms']:.1f} ms, "
                  f"stride 2 {peer['stride2_ms']:.1f} ms, fwd+bwd {peer['fwd_bwd_ms']:.1f} ms"
                  f"  -> sparse_ops is {peer['subm_ms'] / results['conv_ms']:.2f}x faster")
        else:
            print(f"spconv: {peer}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""Benchmark of the sparse convolution core on the PEERS.md workload.

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
    """Every voxel of a sphere shell: the PEERS.md workload."""
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


def run_peer(script, venv_python, repeats):
    if not os.path.exists(venv_python):
        return {"error": f"{venv_python} not found; see python/benchmarks/README.md"}
    out = subprocess.run([venv_python, os.path.join(HERE, script), "--reps",
                          str(max(5, repeats))], capture_output=True, text=True)
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": out.stderr[-500:]}


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

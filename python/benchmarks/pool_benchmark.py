"""Benchmark of sparse pooling on the PEERS workload (docs/benchmarks.md,
"Workload"), side by side with
the convolutions of the same geometry.

Every voxel of a sphere shell of radius 75 (~100k sites), 64 channels,
float32. For pool_size 2 and 3 at stride 2: max / avg / sum pooling, and
unpooling of the pooled tensor, each including the output coordinates and
kernel map ("incl. map": the cache is cleared first) and with them cached
("map cached"), forward and forward + backward; next to the strided `conv`
of the same geometry 64 -> 64 (and the generative `conv_transpose` for
unpooling). Global max / avg / sum pooling (no map). Reference: the
submanifold 3x3x3 conv 64 -> 64 incl. its map (the core issue's convolution).
All in one run, measured round robin (each measure once per round), so the
ratios hold under the machine's load of the moment.

    python python/benchmarks/pool_benchmark.py [--repeats 7] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_ops as so  # noqa: E402
from sparse_ops.ops import cache  # noqa: E402
from conv_benchmark import sphere_shell  # noqa: E402


def forward_backward(fn, features):
    """fn(features) -> output tensor; time of the output and d/dfeatures."""
    def run():
        with tf.GradientTape() as tape:
            tape.watch(features)
            y = fn(features)
        return tape.gradient(y, features, output_gradients=y)
    return run


def uncached(fn):
    """fn with the coordinate/kernel-map cache cleared first (incl. map)."""
    def run():
        cache.clear()
        return fn()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--radius", type=int, default=75)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    coords = tf.constant(sphere_shell(args.radius))
    n, ch = int(coords.shape[0]), args.channels
    rng = np.random.default_rng(1)
    features = tf.constant(rng.standard_normal((n, ch)), tf.float32)

    def kernel(size):
        return tf.constant(rng.standard_normal((size,) * 3 + (ch, ch)) * 0.05, tf.float32)

    k3 = kernel(3)

    def site(f):
        return so.SparseTensor(f, coords)

    results = {"sites": n, "channels": ch, "threads": os.cpu_count()}
    measures = {}

    def measure(name, fn):
        measures[name] = fn

    measure("subm_conv3_incl_map_ms", uncached(lambda: so.ops.conv(site(features), k3).features))
    measure("subm_conv3_fwd_bwd_incl_map_ms", uncached(forward_backward(
        lambda f: so.ops.conv(site(f), k3).features, features)))

    alive = []
    for pool in (2, 3):
        kp = kernel(pool)
        tag = f"p{pool}s2"
        conv = lambda f, kp=kp: so.ops.conv(site(f), kp, strides=2).features  # noqa: E731
        # Keep the pooled coordinates alive, so "map cached" finds them.
        keep = so.ops.sum_pool(site(features), pool, 2)
        alive.append(keep)
        coarse = so.SparseTensor(tf.constant(rng.standard_normal(keep.features.shape),
                                             tf.float32), keep.coordinates, stride=2)
        results[f"{tag}_out_sites"] = int(keep.coordinates.shape[0])
        measure(f"{tag}_conv_incl_map_ms", uncached(lambda conv=conv: conv(features)))
        measure(f"{tag}_conv_map_cached_ms", lambda conv=conv: conv(features))
        measure(f"{tag}_conv_fwd_bwd_incl_map_ms", uncached(forward_backward(conv, features)))
        for mode in ("max", "avg", "sum"):
            op = getattr(so.ops, f"{mode}_pool")
            fn = lambda f, op=op, pool=pool: op(site(f), pool, 2).features  # noqa: E731
            measure(f"{tag}_{mode}_pool_incl_map_ms", uncached(lambda fn=fn: fn(features)))
            measure(f"{tag}_{mode}_pool_map_cached_ms", lambda fn=fn: fn(features))
            measure(f"{tag}_{mode}_pool_fwd_bwd_incl_map_ms",
                    uncached(forward_backward(fn, features)))
            measure(f"{tag}_{mode}_pool_fwd_bwd_map_cached_ms", forward_backward(fn, features))

        # Unpooling of the pooled tensor, next to the generative transposed
        # conv of the same geometry.
        ct = lambda f, kp=kp: so.ops.conv_transpose(  # noqa: E731
            so.SparseTensor(f, coarse.coordinates, 2), kp, strides=2, generative=True).features
        up = lambda f, pool=pool: so.ops.unpool(  # noqa: E731
            so.SparseTensor(f, coarse.coordinates, 2), pool, 2).features
        alive.append(up(coarse.features))  # keeps the fine sites cached
        measure(f"{tag}_conv_transpose_incl_map_ms", uncached(lambda ct=ct: ct(coarse.features)))
        measure(f"{tag}_conv_transpose_fwd_bwd_incl_map_ms",
                uncached(forward_backward(ct, coarse.features)))
        measure(f"{tag}_unpool_incl_map_ms", uncached(lambda up=up: up(coarse.features)))
        measure(f"{tag}_unpool_map_cached_ms", lambda up=up: up(coarse.features))
        measure(f"{tag}_unpool_fwd_bwd_incl_map_ms",
                uncached(forward_backward(up, coarse.features)))
        measure(f"{tag}_unpool_fwd_bwd_map_cached_ms", forward_backward(up, coarse.features))

    for mode in ("max", "avg", "sum"):
        fn = lambda f, mode=mode: so.ops.global_pool(site(f), mode)  # noqa: E731
        measure(f"global_{mode}_pool_ms", lambda fn=fn: fn(features))
        measure(f"global_{mode}_pool_fwd_bwd_ms", forward_backward(fn, features))

    # Round robin: every measure once per round, so that the machine's load
    # of the moment weighs on all of them alike (medians over the rounds).
    for fn in measures.values():
        fn()  # warm-up
    times = {name: [] for name in measures}
    for _ in range(args.repeats):
        for name, fn in measures.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    for name, t in times.items():
        results[name] = round(statistics.median(t), 2)
        results[name.replace("_ms", "_best_ms")] = round(min(t), 2)
        print(f"{name:44s} {results[name]:8.1f} ms  (best {min(t):7.1f})")

    # Ratios: every pooling op against the strided conv of its geometry
    # incl. map (the target: <= 1.1), unpooling also against the generative
    # transposed conv of its geometry, and all against the submanifold conv.
    print("\nratios: pool op / same-geometry conv incl. map (strided conv; for "
          "unpool also conv_transpose), / submanifold conv")
    ratios = {}
    for name in measures:
        if "conv" in name:
            continue
        tag = name.split("_")[0]
        kind = "conv_fwd_bwd_incl_map_ms" if "fwd_bwd" in name else "conv_incl_map_ms"
        refs = [("p2s2" if tag == "global" else tag) + "_" + kind]
        if "unpool" in name:
            refs.append(tag + "_" + kind.replace("conv_", "conv_transpose_"))
        refs.append("subm_" + kind.replace("conv_", "conv3_"))
        ratios[name] = {ref: round(results[name] / results[ref], 3) for ref in refs}
        print(f"{name:44s} " + "  ".join(f"{r:5.2f} x {ref.replace('_ms', '')}"
                                          for ref, r in ratios[name].items()))
    results["ratios"] = ratios
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

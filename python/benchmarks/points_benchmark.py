"""Benchmark of union, interpolation and slicing on the PEERS shell
(docs/benchmarks.md, "Workload").

~100k sites of a sphere shell of radius 75, 64 float32 channels. Times (median
ms) of the C++ coordinate ops against the pure-TF reference path, side by side
in one run, and the submanifold 3x3x3 64 -> 64 convolution (kernel map
cached) on the same tensor as the yardstick:
- union of the shell with itself shifted by one voxel along x;
- interpolation at 100k float points near the shell (forward, and forward +
  backward to features and points);
- slicing the voxels back to 400k points.

    python python/benchmarks/points_benchmark.py [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sparse_ops as so  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_benchmark import sphere_shell  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up (and tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    coords = sphere_shell()
    n, c = len(coords), args.channels
    feats = tf.constant(rng.normal(size=[n, c]).astype(np.float32))
    x = so.SparseTensor(feats, tf.constant(coords))
    shifted = so.SparseTensor(feats, tf.constant(coords + np.array([0, 1, 0, 0],
                                                                    np.int32)))
    picks = coords[rng.integers(n, size=100_000)].astype(np.float32)
    points = tf.constant(np.concatenate(
        [picks[:, :1], picks[:, 1:] + rng.uniform(-1, 1, [len(picks), 3])], 1))
    inverse = tf.constant(rng.integers(n, size=400_000))
    kernel = tf.constant(rng.normal(size=[3, 3, 3, c, c]).astype(np.float32) * 0.05)

    def interp_grad():
        with tf.GradientTape() as tape:
            tape.watch([feats, points])
            y = so.ops.interpolate(x, points)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [feats, points])

    cases = {
        "union": lambda: so.ops.union([x, shifted]).features.numpy(),
        "interpolate": lambda: so.ops.interpolate(x, points).numpy(),
        "interpolate fwd+bwd": lambda: [tf.convert_to_tensor(g).numpy() for g in interp_grad()],
        "slice 400k points": lambda: so.ops.slice(x, inverse).numpy(),
    }
    results = {}
    jobs = [(impl, name) for impl in ("custom", "reference") for name in cases]
    for impl, name in tqdm(jobs + [("custom", "conv")], desc="benchmarks"):
        with so.config.implementation(impl):
            if name == "conv":
                so.ops.conv(x, kernel)  # builds and caches the kernel map
                results[(impl, name)] = timed(
                    lambda: so.ops.conv(x, kernel).features.numpy(), args.repeats)
            else:
                results[(impl, name)] = timed(cases[name], args.repeats)

    conv = results[("custom", "conv")]
    print(f"{n} sites, {c} channels; submanifold 3x3x3 conv (map cached): "
          f"{conv:.1f} ms")
    print(f"{'op':24s} {'custom ms':>10s} {'reference ms':>13s} {'ref/custom':>11s} "
          f"{'custom/conv':>12s}")
    for name in cases:
        cu, ref = results[("custom", name)], results[("reference", name)]
        print(f"{name:24s} {cu:10.1f} {ref:13.1f} {ref / cu:11.2f} {cu / conv:12.2f}")


if __name__ == "__main__":
    main()

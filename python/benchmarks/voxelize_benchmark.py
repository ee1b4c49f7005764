"""Benchmark of so.ops.voxelize against so.utils.sparse_quantize.

One million LiDAR-like points (a ground plane, walls and scattered objects
over 100 m x 100 m, 2 scans in the batch), 4 features, voxel size 0.05 m,
mode "average" with the inverse map: the numpy path a tf.data pipeline had
before (`sparse_quantize`, with the batch column as an axis of size 1) beside
the C++ op (eager, a new points tensor each call) and its pure-TF reference
path. Prints best and median of --repeats runs and the ratios.

    python python/benchmarks/voxelize_benchmark.py [--points 1000000] [--repeats 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sparse_ops as so  # noqa: E402
from sparse_ops import utils  # noqa: E402


def lidar_like(n, rng):
    """Points on a ground plane (60%), vertical walls (25%) and boxes (15%)."""
    ground = rng.uniform([-50, -50, -0.1], [50, 50, 0.1], (int(n * 0.6), 3))
    walls = rng.uniform([-50, -50, 0], [50, 50, 8], (int(n * 0.25), 3))
    walls[: len(walls) // 2, 0] = rng.choice([-50.0, 50.0], len(walls) // 2)
    walls[len(walls) // 2:, 1] = rng.choice([-50.0, 50.0], len(walls) - len(walls) // 2)
    rest = n - len(ground) - len(walls)
    centers = rng.uniform([-45, -45, 0], [45, 45, 2], (200, 3))
    boxes = centers[rng.integers(0, 200, rest)] + rng.uniform(-1, 1, (rest, 3))
    xyz = np.concatenate([ground, walls, boxes])
    batch = rng.integers(0, 2, (n, 1)).astype(np.float64)
    return np.concatenate([batch, xyz], 1)


def timed(fn, repeats):
    fn()  # warm-up (tracing, thread pools)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    points = lidar_like(args.points, rng)
    features = rng.normal(size=(args.points, 4)).astype(np.float32)
    size = args.voxel_size

    def numpy_path():
        utils.sparse_quantize(points, features, voxel_size=[1.0, size, size, size],
                              mode="average", return_inverse=True)

    def op_path(implementation):
        def run():
            with so.config.implementation(implementation):
                x, inverse = so.ops.voxelize(tf.constant(points), tf.constant(features), size)
                x.features.numpy()
                inverse.numpy()
        return run

    x, _ = so.ops.voxelize(points, features, size)
    print(f"{args.points} points -> {x.coordinates.shape[0]} sites "
          f"(voxel size {size}), 4 float32 features, mode average")
    results = {}
    for name, fn in [("sparse_quantize (numpy)", numpy_path),
                     ("so.ops.voxelize (C++ op)", op_path("custom")),
                     ("so.ops.voxelize (reference, pure TF)", op_path("reference"))]:
        results[name] = timed(fn, args.repeats)
        best, median = results[name]
        print(f"  {name:40s} best {best * 1e3:8.1f} ms   median {median * 1e3:8.1f} ms")
    base = results["sparse_quantize (numpy)"]
    op = results["so.ops.voxelize (C++ op)"]
    print(f"  speed-up of the op over sparse_quantize: best {base[0] / op[0]:.1f}x, "
          f"median {base[1] / op[1]:.1f}x")


if __name__ == "__main__":
    main()

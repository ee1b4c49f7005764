"""Benchmark of the channel-wise convolution against Conv of the same geometry.

The PEERS workload (docs/benchmarks.md, "Workload": every voxel of a
sphere shell, ~100k sites, 3x3x3, submanifold), 64 channels, float32: `so.ops.depthwise_conv` (depth
multiplier 1) beside `so.ops.conv` 64 -> 64, both on the cached kernel map,
forward and forward + backward. Prints best and median of --repeats runs
and the speed-up (the issue's target: at least 10x).

    python python/benchmarks/depthwise_benchmark.py [--repeats 7]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sparse_ops as so  # noqa: E402
from conv_benchmark import sphere_shell  # noqa: E402


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    coords = sphere_shell()
    c = args.channels
    x = so.SparseTensor(tf.constant(rng.normal(size=(len(coords), c)).astype(np.float32)),
                        tf.constant(coords))
    dense_kernel = tf.constant(rng.normal(size=(3, 3, 3, c, c)).astype(np.float32) * 0.05)
    depth_kernel = tf.constant(rng.normal(size=(3, 3, 3, c, 1)).astype(np.float32))

    def forward(op, kernel):
        return lambda: op(x, kernel).features.numpy()

    def both(op, kernel):
        def run():
            with tf.GradientTape() as tape:
                tape.watch([x.features, kernel])
                loss = tf.reduce_sum(op(x, kernel).features)
            for g in tape.gradient(loss, [x.features, kernel]):
                g.numpy()
        return run

    print(f"sphere shell: {len(coords)} sites, 3x3x3 submanifold, {c} channels, float32, "
          "kernel map cached")
    results = {}
    for name, fn in [("conv forward", forward(so.ops.conv, dense_kernel)),
                     ("depthwise forward", forward(so.ops.depthwise_conv, depth_kernel)),
                     ("conv forward+backward", both(so.ops.conv, dense_kernel)),
                     ("depthwise forward+backward", both(so.ops.depthwise_conv, depth_kernel))]:
        results[name] = timed(fn, args.repeats)
        best, median = results[name]
        print(f"  {name:28s} best {best * 1e3:8.1f} ms   median {median * 1e3:8.1f} ms")
    for what in ("forward", "forward+backward"):
        conv, depth = results[f"conv {what}"], results[f"depthwise {what}"]
        print(f"  depthwise speed-up, {what}: best {conv[0] / depth[0]:.1f}x, "
              f"median {conv[1] / depth[1]:.1f}x")


if __name__ == "__main__":
    main()

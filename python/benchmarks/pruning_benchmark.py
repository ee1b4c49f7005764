"""Run time of the convolution with pruned weights against filter density.

The PEERS workload (docs/benchmarks.md, "Workload": submanifold 3x3x3
convolution, 64 -> 64 channels, float32, on the ~100k-site sphere shell,
kernel map cached) with weights
pruned three ways at filter density d = 0.1 .. 1 (fraction of non-zero
weights): "unstructured" (random single weights, the paper's setting),
"offsets" (whole kernel offsets zero) and "channels" (whole input and output
channels zero, sqrt(d) of each kept). For each, the forward convolution and
its input gradient are timed with the op's weight paths: "auto" (what
so.ops.conv runs), "dense" (nothing skipped) and "sparse" (the sparse-weight
product for every offset). Times are reported as ratios to the unpruned
convolution measured in the same run, interleaved with it (the machine is
shared: best times of --repeats runs each); the crossover is the density
below which the sparse-weight product beats the dense one on unstructured
weights.

    python python/benchmarks/pruning_benchmark.py [--repeats 7] [--csv out.csv]
"""

import argparse
import csv
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sparse_ops as so  # noqa: E402
from sparse_ops import _loader  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_benchmark import sphere_shell  # noqa: E402

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
PATHS = ("auto", "dense", "sparse")


def pruned(kernel, pattern, density, rng):
    """kernel [K, C_in, C_out] with about `density` of its weights left."""
    k, c_in, c_out = kernel.shape
    keep = np.zeros(kernel.shape, bool)
    if pattern == "unstructured":
        keep = rng.random(kernel.shape) < density
    elif pattern == "offsets":
        keep[rng.permutation(k)[:max(1, round(density * k))]] = True
    elif pattern == "channels":
        ins = rng.permutation(c_in)[:max(1, round(np.sqrt(density) * c_in))]
        outs = rng.permutation(c_out)[:max(1, round(np.sqrt(density) * c_out))]
        keep[:, ins[:, None], outs[None, :]] = True
    else:
        raise ValueError(pattern)
    return kernel * keep


def timed_pair(fn, reference, repeats):
    """fn's time over reference's, run alternately: the ratio of the best
    times (the runs least disturbed by other work on a shared machine)."""
    fn(), reference()
    mine, ref = [], []
    for _ in range(repeats):
        for f, store in ((reference, ref), (fn, mine)):
            start = time.perf_counter()
            f()
            store.append(time.perf_counter() - start)
    return min(mine) / min(ref), min(ref)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--radius", type=int, default=75)
    parser.add_argument("--patterns", default="unstructured,offsets,channels")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--structured-densities", default="0.1,0.5",
                        help="densities of the offsets and channels patterns")
    parser.add_argument("--csv", help="write the rows to this CSV file")
    args = parser.parse_args()

    lib = _loader.library()
    c_np = sphere_shell(args.radius)
    coords = tf.constant(c_np)
    n, ch = len(c_np), args.channels
    rng = np.random.default_rng(0)
    features = tf.constant(rng.standard_normal((n, ch)), tf.float32)
    grad = tf.constant(rng.standard_normal((n, ch)), tf.float32)
    dense_kernel = (rng.standard_normal((27, ch, ch)) * 0.05).astype(np.float32)
    kmap = lib.sparse_ops_kernel_map(coords, coords, so.kernel_offsets(3, dimension=3),
                                     tf.constant([1, 1, 1]))
    rows = tf.constant(n, tf.int64)
    pairs = int(kmap[0][-1])

    def forward(kernel, path):
        return lambda: lib.sparse_ops_conv(features, kernel, *kmap, rows,
                                           weight_path=path)

    def backward(kernel, path):
        return lambda: lib.sparse_ops_conv_backprop_input(grad, kernel, *kmap, rows,
                                                          weight_path=path)

    unpruned = tf.constant(dense_kernel)
    reference = {"forward": forward(unpruned, "auto"),
                 "input_gradient": backward(unpruned, "auto")}
    print(f"sites {n:,}  pairs {pairs:,}  channels {ch} -> {ch}  "
          f"threads {os.cpu_count()}; times relative to the unpruned conv")
    patterns = args.patterns.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    out = []
    structured = [float(d) for d in args.structured_densities.split(",")]
    jobs = [(p, d, op) for p in patterns
            for d in (densities if p == "unstructured" else structured)
            for op in reference]
    for pattern, density, op in tqdm(jobs, desc="pruned conv", file=sys.stderr):
        kernel = pruned(dense_kernel, pattern, density, rng)
        k = tf.constant(kernel)
        row = {"pattern": pattern, "density": density, "op": op,
               "actual_density": round(float(np.count_nonzero(kernel)) / kernel.size, 4)}
        make = forward if op == "forward" else backward
        for path in PATHS:
            ratio, ref_s = timed_pair(make(k, path), reference[op], args.repeats)
            row[path] = round(ratio, 3)
        row["unpruned_ms"] = round(ref_s * 1e3, 1)
        out.append(row)
        tqdm.write(f"{pattern} {op} density {row['actual_density']}: " + ", ".join(
            f"{path} {row[path]}" for path in PATHS), file=sys.stderr)

    print(f"{'pattern':13s} {'op':15s} {'density':>7s} {'auto':>6s} {'dense':>6s} "
          f"{'sparse':>6s}  (time / unpruned conv)")
    for r in out:
        print(f"{r['pattern']:13s} {r['op']:15s} {r['actual_density']:7.3f} "
              f"{r['auto']:6.2f} {r['dense']:6.2f} {r['sparse']:6.2f}")
    for op in reference:
        rows_u = [r for r in out if r["pattern"] == "unstructured" and r["op"] == op]
        wins = [r["density"] for r in rows_u if r["sparse"] < r["dense"]]
        if rows_u:
            print(f"crossover ({op}, unstructured): the sparse-weight product is "
                  f"faster at densities {wins or 'none'}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(out[0]))
            writer.writeheader()
            writer.writerows(out)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

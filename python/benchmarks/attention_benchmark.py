"""Benchmark of the k-selection attention (paper Sec. 3.2) on the benchmark
workload (docs/benchmarks.md, "Workload"): ~100k sites of a sphere shell,
64 channels, float32.

Side by side in one run (ratios are what to compare; absolute times are
noisy on a shared machine):
  conv            the submanifold 3x3x3 64 -> 64 convolution on the same
                  tensor, kernel map cached (what attention follows in Conv),
                  timed again beside every row
  attention       so.ops.attention with the C++ op (O(n) selection), the whole
                  op: selection, zeroing, gathering the surviving sites
  select only     the raw C++ op (keep mask and surviving rows)
  reference       so.ops.attention on the pure-TF path (two full sorts)
  tf.math.top_k   top_k of every channel's column ([64, N], k), the stock
                  partial sort, without grouping by batch item
  tf.sort         a full sort of every channel's column
for several k, and for the same sites split into 8 batch items.

    python python/benchmarks/attention_benchmark.py [--repeats 5] [--json out.json]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sparse_ops as so  # noqa: E402
from sparse_ops import _loader  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_benchmark import sphere_shell, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    lib = _loader.library()
    c_np = sphere_shell()
    n, ch = len(c_np), args.channels
    features = tf.constant(np.random.default_rng(1).standard_normal((n, ch)), tf.float32)
    kernel = tf.constant(np.random.default_rng(2).standard_normal((3, 3, 3, ch, ch))
                         * 0.05, tf.float32)
    k3 = tf.reshape(kernel, [27, ch, ch])
    coords = tf.constant(c_np)
    kmap = lib.sparse_ops_kernel_map(coords, coords, so.kernel_offsets(3, dimension=3),
                                     tf.constant([1, 1, 1]))
    rows = tf.constant(n, tf.int64)
    columns = tf.transpose(features)  # [C, N]

    def conv():
        return lib.sparse_ops_conv(features, k3, *kmap, rows)

    def sort():
        return tf.sort(columns, axis=1)

    print(f"sites {n:,}  channels {ch}  threads {os.cpu_count()}; the conv and "
          "tf.sort are timed again beside every row (the machine's load drifts)")
    # Batch items: the whole shell, or 8 items split by x coordinate.
    batched = c_np.copy()
    batched[:, 0] = (c_np[:, 1] * 8) // (c_np[:, 1].max() + 1)
    results = {"sites": n, "channels": ch, "threads": os.cpu_count(), "runs": []}
    header = (f"{'items':>5} {'k':>7} {'conv':>8} {'attention':>10} {'select':>8} "
              f"{'reference':>10} {'top_k':>8} {'sort':>8}   ratios: attention/conv  "
              f"reference/attention  top_k/attention  sort/attention")
    print(header)
    for items, c in ((1, c_np), (8, batched)):
        x = so.SparseTensor(features, tf.constant(c))
        for k in (100, n // 100, n // 10, n // 2):
            k_items = max(1, k // items)
            conv_ms, _ = timed(conv, args.repeats)
            sort_ms, _ = timed(sort, args.repeats)
            with so.config.implementation("custom"):
                attention_ms, _ = timed(lambda: so.ops.attention(x, k=k_items).features,
                                        args.repeats)
            select_ms, _ = timed(lambda: lib.sparse_ops_attention(
                features, x.coordinates, tf.constant(k_items, tf.int64)), args.repeats)
            with so.config.implementation("reference"):
                reference_ms, _ = timed(
                    lambda: so.ops.attention(x, k=k_items).features, args.repeats)
            top_k_ms, _ = timed(lambda: tf.math.top_k(columns, k=k).indices,
                                args.repeats)
            run = {"batch_items": items, "k_per_item": k_items,
                   "conv_ms": round(conv_ms, 2), "sort_ms": round(sort_ms, 2),
                   "attention_ms": round(attention_ms, 2),
                   "select_ms": round(select_ms, 2),
                   "reference_ms": round(reference_ms, 2),
                   "top_k_ms": round(top_k_ms, 2),
                   "attention_over_conv": round(attention_ms / conv_ms, 3),
                   "reference_over_attention": round(reference_ms / attention_ms, 2),
                   "top_k_over_attention": round(top_k_ms / attention_ms, 2),
                   "sort_over_attention": round(sort_ms / attention_ms, 2)}
            results["runs"].append(run)
            print(f"{items:>5} {k_items:>7} {conv_ms:>6.1f}ms {attention_ms:>8.1f}ms "
                  f"{select_ms:>6.1f}ms {reference_ms:>8.1f}ms {top_k_ms:>6.1f}ms "
                  f"{sort_ms:>6.1f}ms   "
                  f"{run['attention_over_conv']:>20.3f} "
                  f"{run['reference_over_attention']:>20.2f} "
                  f"{run['top_k_over_attention']:>16.2f} "
                  f"{run['sort_over_attention']:>15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

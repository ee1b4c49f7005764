"""MinkUNet forward + backward on a real ~100k-voxel scan: time and peak memory.

Input: autzen_trim.laz (110,000 aerial LiDAR points, see
python/examples/segmentation.py for the fetch) voxelized at 1.5 ft: 101,524
voxels, 4.5 active sites per 3x3x3 neighbourhood on average (itself
included). Features: RGB (3 channels); labels: ground / non-ground.

One iteration = forward (BatchNorm in training mode) + cross-entropy loss +
gradients of every weight (no optimizer step), inside one `tf.function`;
kernel maps are built in every iteration (nothing is cached across calls),
as MinkowskiEngine does with a fresh coordinate manager per input.

Each measurement runs in a fresh subprocess; its peak memory is the
process's VmHWM (peak resident set, /proc/self/status), reported in total
and as the increase over the same process just before the network was
built (TensorFlow / PyTorch loaded, data in memory).

With --me-python PATH, the same network in MinkowskiEngine
(minkunet_benchmark_me.py, run by that interpreter) is measured on the same
voxels, side by side.

    python python/benchmarks/minkunet_benchmark.py [--network 14A] [--iters 5]
        [--me-python /work/venvs/minkowski/bin/python]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
VOXEL_SIZE = 1.5  # ft: ~100k voxels


def vm_hwm_mb():
    """Peak resident set of this process so far (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def prepare_input(path):
    """Voxelizes autzen once and stores (coordinates, features, labels) as
    .npz for both workers."""
    sys.path.insert(0, str(HERE.parent / "examples"))
    import numpy as np  # pylint: disable=import-outside-toplevel
    import segmentation  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    scan = segmentation.load_autzen()
    coords, feats, vlabels = so.utils.sparse_quantize(
        scan.xyz, scan.attributes[:, :3] + 0.5, scan.labels, voxel_size=VOXEL_SIZE, ignore_label=0)
    np.savez(path, coordinates=coords.astype(np.int32),
             features=feats.astype(np.float32), labels=vlabels.astype(np.int64))
    return len(coords)


def planes_of(network):
    """(depths, planes) of ME's MinkUNet14A/18A/34C ..."""
    from sparse_ops import models  # pylint: disable=import-outside-toplevel
    depth, variant = int(network[:-1]), network[-1]
    return models.MINKUNET_DEPTHS[depth], models.MINKUNET_PLANES[depth][variant]


def ints(text):
    return tuple(int(v) for v in text.split(","))


def worker(args):
    """Measures sparse_ops; prints one JSON line."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    data = np.load(args.input)
    coordinates = np.concatenate(
        [np.zeros((len(data["coordinates"]), 1), np.int32), data["coordinates"]], 1)
    features, labels = data["features"], data["labels"].astype(np.int32)
    base = vm_hwm_mb()
    model = so.models.MinkUNet(2, depths=ints(args.depths), planes=ints(args.planes),
                               init_dim=32)
    model.build(((None, 3), (None, 4), (3,)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32),
                                  tf.TensorSpec([None, 4], tf.int32),
                                  tf.TensorSpec([None], tf.int32)])
    def step(f, c, y):
        with tf.GradientTape() as tape:
            logits = model([f, c], training=True).features
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, tf.add_n([tf.reduce_sum(g) for g in grads])

    f, c, y = tf.constant(features), tf.constant(coordinates), tf.constant(labels)
    t = time.perf_counter()
    step(f, c, y)[0].numpy()  # trace + first run
    first = time.perf_counter() - t
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step(f, c, y)[0].numpy()
        times.append(time.perf_counter() - t)
    peak = vm_hwm_mb()
    # Same-run reference for a shared machine: the shape-matched GEMM of the
    # benchmark workload (docs/benchmarks.md, "Workload").
    a, b = tf.random.normal([1414535, 64]), tf.random.normal([64, 64])
    gemm = []
    for _ in range(5):
        t = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        gemm.append(time.perf_counter() - t)
    print(json.dumps({"library": "sparse_ops", "sites": len(c), "times": times,
                      "gemm_ms": 1000 * sorted(gemm)[2],
                      "first": first, "peak_mb": peak, "base_mb": base,
                      "params": int(sum(np.prod(v.shape)
                                        for v in model.trainable_variables))}))


def run_worker(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result from {cmd}:\n{out.stdout}\n{out.stderr}")


def summary(r):
    t = sorted(r["times"])
    return (f"{r['library']:<20} {r['sites']:>8} {1000 * t[len(t) // 2]:>9.0f} "
            f"{1000 * t[0]:>9.0f} {r['first']:>9.1f} {r['peak_mb']:>9.0f} "
            f"{r['peak_mb'] - r['base_mb']:>9.0f} {r['params']:>10}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="14A",
                   help="MinkUNet depth + ME width variant: 14A, 18A, 34C, ...")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--me-python", default=None,
                   help="a Python with MinkowskiEngine: measure it side by side")
    p.add_argument("--input", default=None, help=argparse.SUPPRESS)
    p.add_argument("--depths", default=None, help=argparse.SUPPRESS)
    p.add_argument("--planes", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cache = pathlib.Path(os.environ.get(
        "SPARSE_OPS_CACHE", pathlib.Path.home() / ".cache" / "sparse_ops"))
    path = cache / f"autzen_voxels_{VOXEL_SIZE}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"voxelizing autzen at {VOXEL_SIZE} ft -> {path}", flush=True)
        prepare_input(path)
    depths, planes = planes_of(args.network)
    common = ["--network", args.network, "--iters", str(args.iters),
              "--threads", str(args.threads), "--input", str(path),
              "--depths", ",".join(map(str, depths)),
              "--planes", ",".join(map(str, planes))]
    results = []
    runs = [[sys.executable, __file__, "--worker"]]
    if args.me_python:
        runs.append([args.me_python, str(HERE / "minkunet_benchmark_me.py")])
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    for cmd in tqdm(runs, desc=f"MinkUNet{args.network}", unit="library"):
        results.append(run_worker(cmd + common))
    print(f"MinkUNet{args.network}, forward + backward, {args.threads} threads, "
          f"median / best of {args.iters} iterations")
    print(f"{'library':<20} {'voxels':>8} {'median ms':>9} {'best ms':>9} "
          f"{'first s':>9} {'peak MB':>9} {'+MB':>9} {'weights':>10}")
    for r in results:
        print(summary(r))
    if "gemm_ms" in results[0]:
        t = sorted(results[0]["times"])[len(results[0]["times"]) // 2]
        print(f"same-run reference: tf.linalg.matmul [1.41M, 64] @ [64, 64] "
              f"{results[0]['gemm_ms']:.0f} ms; iteration = "
              f"{1000 * t / results[0]['gemm_ms']:.0f}x that GEMM")
    if len(results) == 2:
        ours, me = (sorted(r["times"])[len(r["times"]) // 2] for r in results)
        ours_mb, me_mb = (r["peak_mb"] - r["base_mb"] for r in results)
        print(f"time ratio sparse_ops / MinkowskiEngine: {ours / me:.2f}; "
              f"peak-memory increase ratio: {ours_mb / max(me_mb, 1):.2f}")
    return results


if __name__ == "__main__":
    main()

"""Demo: a sparse conv net on a real 3D scan, next to its dense TensorFlow twin.

Voxelizes the Stanford bunny scan (shipped in the `pymeshfix` package, see
../../README.md), runs a small sparse convolutional network forward and
backward, checks its first layer against dense `tf.nn.convolution`, and prints
time per iteration and peak memory next to the same network built from dense
`keras.layers.Conv3D` on the whole voxel grid. Each variant runs in its own
process so that its peak memory is its own.

    python python/examples/demo.py [--resolution 128] [--channels 16]
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def bunny_path():
    spec = importlib.util.find_spec("pymeshfix")
    if spec is None:
        sys.exit("The demo's scan comes with the pymeshfix package: "
                 "pip install pymeshfix")
    path = os.path.join(os.path.dirname(spec.origin), "examples", "StanfordBunny.ply")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing from the installed pymeshfix")
    return path


def read_ply(path):
    """Vertices [V, 3] and triangles [F, 3] of a binary little-endian PLY."""
    with open(path, "rb") as f:
        header = []
        while True:
            line = f.readline().decode("ascii").strip()
            header.append(line)
            if line == "end_header":
                break
        if "format binary_little_endian 1.0" not in header:
            raise ValueError(f"{path}: only binary little-endian PLY is supported")
        counts = {line.split()[1]: int(line.split()[2]) for line in header
                  if line.startswith("element")}
        vertices = np.frombuffer(f.read(12 * counts["vertex"]), "<f4").reshape(-1, 3)
        faces = np.frombuffer(f.read(13 * counts.get("face", 0)),
                              np.dtype([("n", "u1"), ("v", "<i4", 3)]))
    return vertices.astype(np.float64), faces["v"].astype(np.int64)


def surface_points(vertices, faces, count, seed=0):
    """Points sampled uniformly on the mesh surface."""
    rng = np.random.default_rng(seed)
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[tri] + u[:, None] * (b - a)[tri] + v[:, None] * (c - a)[tri]


def voxelize(resolution):
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    vertices, faces = read_ply(bunny_path())
    points = surface_points(vertices, faces, 40 * resolution ** 2)
    lo, hi = points.min(0), points.max(0)
    voxel = (hi - lo).max() / (resolution - 1)
    coords = so.utils.sparse_quantize(points - lo, voxel_size=voxel)
    return coords  # [N, 3] within [0, resolution)


def network(kind, channels, so, keras):
    """conv 3 (1->C) relu, conv 3 stride 2 (C->2C) relu, conv 3 (2C->2C)."""
    if kind == "sparse":
        conv = so.layers.Conv
        return [conv(channels, 3), conv(2 * channels, 3, strides=2),
                conv(2 * channels, 3)]
    conv = keras.layers.Conv3D
    return [conv(channels, 3, padding="same"),
            conv(2 * channels, 3, strides=2, padding="same"),
            conv(2 * channels, 3, padding="same")]


def reset_peak_rss():
    """Restarts the peak-RSS count (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(kind, resolution, channels, repeats):
    """Runs in a child process; prints one JSON line."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    coords = voxelize(resolution)
    n = len(coords)
    batch = np.concatenate([np.zeros((n, 1), np.int32), coords], 1)
    features = tf.constant(np.random.default_rng(0).random((n, 1)), tf.float32)
    layers = network(kind, channels, so, keras)
    if kind == "sparse":
        x = so.SparseTensor(features, batch)
    else:
        x = tf.scatter_nd(batch, features, [1, resolution, resolution, resolution, 1])
    def step():
        with tf.GradientTape() as tape:
            y = x
            for i, layer in enumerate(layers):
                y = layer(y)
                if i < len(layers) - 1:
                    y = y.with_features(tf.nn.relu(y.features)) if kind == "sparse" \
                        else tf.nn.relu(y)
            out = y.features if kind == "sparse" else y
            loss = tf.reduce_mean(tf.square(out))
        variables = [v for layer in layers for v in layer.trainable_variables]
        return loss, tape.gradient(loss, variables)

    reset_peak_rss()
    baseline = current_rss_mb()
    step()  # builds the layers; kernel maps are cached for later steps
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss, _ = step()
        float(loss)
        times.append(time.perf_counter() - start)
    result = {"kind": kind, "sites": n, "ms": 1e3 * float(np.median(times)),
              "peak_mb": peak_rss_mb(), "baseline_mb": baseline}
    if kind == "sparse":
        # First layer against dense tf.nn.convolution at the active sites.
        y = layers[0](x)
        dense = tf.nn.convolution(
            tf.scatter_nd(batch, features, [1, resolution, resolution, resolution, 1]),
            layers[0].kernel, padding="SAME") + layers[0].bias
        ref = tf.gather_nd(dense, batch).numpy()
        result["max_abs_error_vs_dense"] = float(np.abs(y.features.numpy() - ref).max())
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, args.resolution, args.channels, args.repeats)
        return
    print(f"Stanford bunny scan from {bunny_path()}")
    print(f"voxel grid {args.resolution}^3, channels {args.channels}, forward + backward "
          f"of conv3-relu-conv3/2-relu-conv3, median of {args.repeats}")
    try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    except ImportError:
        def tqdm(items, **_):
            return items
    results = {}
    for kind in tqdm(["sparse", "dense"], desc="variants", unit="net"):
        out = subprocess.run([sys.executable, __file__, "--variant", kind,
                              "--resolution", str(args.resolution),
                              "--channels", str(args.channels),
                              "--repeats", str(args.repeats)],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            print(f"{kind} run failed:\n{out.stderr[-2000:]}")
            sys.exit(1)
        results[kind] = json.loads(lines[-1])
    s, d = results["sparse"], results["dense"]
    print(f"\nactive voxels: {s['sites']:,} of {args.resolution ** 3:,} "
          f"({100 * s['sites'] / args.resolution ** 3:.2f}%)")
    print(f"first layer vs dense tf.nn.convolution: max abs error "
          f"{s['max_abs_error_vs_dense']:.2e}")
    print(f"{'':8}{'time/iter':>12}{'peak memory':>14}")
    for name, r in (("sparse", s), ("dense", d)):
        print(f"{name:8}{r['ms']:10.1f} ms{r['peak_mb'] - r['baseline_mb']:11.0f} MB")
    print(f"sparse is {d['ms'] / s['ms']:.1f}x faster and uses "
          f"{(d['peak_mb'] - d['baseline_mb']) / max(s['peak_mb'] - s['baseline_mb'], 1):.1f}x "
          "less memory")
    if s["max_abs_error_vs_dense"] > 1e-3:
        sys.exit("sparse result disagrees with the dense reference")


if __name__ == "__main__":
    main()

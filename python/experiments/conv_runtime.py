"""Fig. 3 of the paper: run time of sparse against dense convolution.

One 3x3x3 convolution, minibatch 1, 1 input and 8 output channels (the
paper's setting), on r^3 volumes of uniformly random sites with density
rho = 1/r and a density bound rho_up = 1/r per channel, for filter
densities rho_f from 0.1 to 1 (a random fraction of the kernel entries set
to zero):
- dense: tf.nn.conv3d on the whole grid (its cost does not depend on rho_f);
- sparse: so.ops.conv (submanifold) then so.ops.attention, kernel map
  included (a fresh coordinates tensor each call, so nothing is cached);
- sparse-full: the paper's Algorithm 1 (fill-in onto every cell the kernel
  reaches, then the attention).
Reports the median forward time and the ratio dense / sparse from the same
run, and the mean number of neighbours per site. Writes
fig3_runtime.csv and fig3_runtime.png (into --out).

    python python/experiments/conv_runtime.py [--resolutions 16 32 64 128 256]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measurement  # noqa: E402
import random_volumes  # noqa: E402
import reporting  # noqa: E402

KINDS = ("dense", "sparse", "sparse-full")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--filter-densities", type=float, nargs="+",
                        default=[0.1, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: r = 8, 16, rho_f = 0.1, 1, 1 repeat")
    reporting.add_output_argument(parser)
    args = parser.parse_args()
    reporting.use_output(args)
    if args.tiny:
        args.resolutions, args.filter_densities, args.repeats = [8, 16], [0.1, 1.0], 1

    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    has_attention = hasattr(so.ops, "attention")
    offsets = so.kernel_offsets(3, dimension=3)
    reporting.log(f"one conv layer, batch 1, 1 -> {args.channels} channels, density = bound "
               f"= 1/r, attention {'on' if has_attention else 'NOT AVAILABLE'}; "
               f"{measurement.machine_note()}")
    rng = np.random.default_rng(args.seed)
    rows = []
    configs = [(r, f) for r in args.resolutions for f in args.filter_densities]
    for r, rho_f in reporting.progress(configs, desc="configurations", unit="run"):
        coords = random_volumes.random_sites(r, 1, 1.0 / r, seed=args.seed + r)
        features = tf.constant(rng.random((len(coords), 1)), tf.float32)
        weights = rng.normal(size=(3, 3, 3, 1, args.channels))
        weights *= rng.random(weights.shape) < rho_f
        kernel = tf.constant(weights, tf.float32)

        def sparse(full):
            c = tf.identity(tf.constant(coords))  # new tensor: kernel map not cached
            x = so.SparseTensor(features, c)
            out = None
            if full:
                sites = so.ops.generative_coordinates(c, offsets, 1)
                inside = tf.reduce_all((sites[:, 1:] >= 0) & (sites[:, 1:] < r), 1)
                out = tf.boolean_mask(sites, inside)
            y = so.ops.conv(x, kernel, out_coordinates=out)
            if has_attention:
                y = so.ops.attention(y, density=1.0 / r, spatial_shape=(r, r, r))
            return y.features.numpy()

        dense_x = tf.scatter_nd(coords, features, [1, r, r, r, 1])

        def dense():
            return tf.nn.conv3d(dense_x, kernel, [1] * 5, "SAME").numpy()

        row = {"r": r, "filter_density": rho_f, "sites": len(coords),
               "neighbours_per_site": random_volumes.neighbours_per_site(coords, r),
               "attention": has_attention}
        timers = {"dense": dense, "sparse": lambda: sparse(False),
                  "sparse-full": lambda: sparse(True)}
        for kind in args.kinds:
            row[f"{kind}_ms"] = 1e3 * measurement.median_seconds(timers[kind], args.repeats)
        for kind in args.kinds:
            if kind != "dense" and "dense" in args.kinds:
                row[f"dense_over_{kind}"] = row["dense_ms"] / row[f"{kind}_ms"]
        rows.append(row)
        reporting.log(f"r={r} rho_f={rho_f:g}: " + ", ".join(
            f"{k} {row[f'{k}_ms']:.2f} ms" for k in args.kinds))
        # Written after every configuration: the large ones take minutes.
        reporting.write_csv(reporting.output_name("fig3_runtime", args.tiny, "csv"), rows)
    plot(rows, args)


def plot(rows, args):
    fig, axes = reporting.figure(2, width=5.0)
    cmap_f = sorted(set(row["filter_density"] for row in rows))
    for kind, ax in zip(("sparse", "sparse-full"), axes):
        if f"{kind}_ms" not in rows[0]:
            continue
        for i, rho_f in enumerate(cmap_f):
            pts = [(row["r"], row[f"{kind}_ms"]) for row in rows
                   if row["filter_density"] == rho_f]
            ax.plot(*zip(*pts), marker=".", color=f"C{i}", label=f"{kind}, rho_f={rho_f:g}")
        if "dense_ms" in rows[0]:
            pts = [(row["r"], row["dense_ms"]) for row in rows
                   if row["filter_density"] == cmap_f[-1]]
            ax.plot(*zip(*pts), marker="s", color="k", ls="--", label="dense tf.nn.conv3d")
        ax.set(xscale="log", yscale="log", xlabel="resolution r (grid r^3, density 1/r)",
               ylabel="forward time [ms]", title=kind)
        ax.set_xticks(args.resolutions, [str(r) for r in args.resolutions])
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=6)
    reporting.save_figure(fig, reporting.output_name("fig3_runtime", args.tiny, "png"),
                       f"one conv layer, batch 1, 1->{args.channels} ch, median of "
                       f"{args.repeats}")


if __name__ == "__main__":
    main()

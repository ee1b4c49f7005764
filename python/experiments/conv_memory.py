"""Table 1 / Fig. 7 of the paper: memory of one convolution layer, measured.

A 3x3x3 convolution with 1 input and 8 output channels on a minibatch of 32
volumes of r^3 cells with density 1/r (uniformly random sites, the paper's
Sec. 4.1 data), density bound rho_up = 1/r per channel:
- dense: tf.nn.conv3d on the [32, r, r, r, 1] grid;
- sparse: so.ops.conv (submanifold: output sites = input sites) followed by
  so.ops.attention(density=1/r): what sparse_ops does by default;
- sparse-full: the paper's Algorithm 1, a convolution onto every cell the
  kernel reaches (fill-in, 27x the sites for random data), then the attention.

Each configuration runs in its own process; the number reported is the
process' peak resident memory (VmHWM) during the forward pass minus what was
resident before it, with the input already built (the paper neglects the
input too). Configurations whose dense output alone would exceed
--max-gb are not run and say so. Writes (into --out) table1_memory.csv and
fig7_memory.png.

    python python/experiments/conv_memory.py [--resolutions 32 64 128 256 512]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measurement  # noqa: E402
import random_volumes  # noqa: E402
import reporting  # noqa: E402

# The paper's Table 1 (theoretical, GB): dense, sparse with 32-bit and 64-bit keys.
PAPER = {32: (0.04, 2e-3, 3e-3), 64: (0.27, 8e-3, 0.013), 128: (2.15, 0.03, 0.05),
         256: (17.18, None, 0.2)}
KINDS = ("dense", "sparse", "sparse-full")


def estimate_gb(kind, r, batch, channels):
    """A rough upper estimate, only used to skip what cannot fit."""
    if kind == "dense":
        return batch * r ** 3 * channels * 4 / 1e9
    sites = batch * r ** 2 * (27 if kind == "sparse-full" else 1)
    return sites * (channels * 4 + 16 + 27 * 8 * (kind == "sparse-full")) / 1e9


def run_config(args):
    """Child: one (kind, r); prints one JSON line."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    r, kind, batch, cout = args.r, args.kind, args.batch, args.channels
    coords = random_volumes.random_sites(r, batch, 1.0 / r, seed=args.seed)
    features = tf.constant(np.random.default_rng(1).random((len(coords), 1)), tf.float32)
    kernel = tf.constant(np.random.default_rng(2).normal(size=(3, 3, 3, 1, cout)), tf.float32)
    has_attention = hasattr(so.ops, "attention")
    offsets = so.kernel_offsets(3, dimension=3)

    def sparse_forward(x):
        out = None
        if kind == "sparse-full":
            sites = so.ops.generative_coordinates(x.coordinates, offsets, 1)
            inside = tf.reduce_all((sites[:, 1:] >= 0) & (sites[:, 1:] < r), 1)
            out = tf.boolean_mask(sites, inside)
        y = so.ops.conv(x, kernel, out_coordinates=out)
        if has_attention:
            y = so.ops.attention(y, density=1.0 / r, spatial_shape=(r, r, r))
        return y

    # Warm up on a small input so that loading kernels and thread pools is
    # not counted.
    small = random_volumes.random_sites(8, 1, 0.25)
    if kind == "dense":
        tf.nn.conv3d(tf.zeros([1, 8, 8, 8, 1]), kernel, [1] * 5, "SAME").numpy()
        x = tf.scatter_nd(coords, features, [batch, r, r, r, 1])
        with measurement.PeakMemory() as memory:
            y = tf.nn.conv3d(x, kernel, [1] * 5, "SAME")
            y.numpy()  # force it
        out_sites, out_entries = batch * r ** 3, batch * r ** 3 * cout
    else:
        sparse_forward(so.SparseTensor(tf.ones([len(small), 1]), small)).features.numpy()
        x = so.SparseTensor(features, tf.constant(coords))
        with measurement.PeakMemory() as memory:
            y = sparse_forward(x)
            y.features.numpy()
        out_sites = int(y.features.shape[0])
        out_entries = int(np.count_nonzero(y.features.numpy()))
    measurement.emit({"kind": kind, "r": r, "peak_bytes": memory.bytes,
                 "input_sites": len(coords), "output_sites": out_sites,
                 "output_nonzeros": out_entries, "attention": has_attention})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--max-gb", type=float, default=6.0,
                        help="skip configurations estimated above this (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="smoke run: r = 16, 32, batch 2")
    parser.add_argument("--r", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    reporting.add_output_argument(parser)
    args = parser.parse_args()
    reporting.use_output(args)
    if args.tiny:
        args.resolutions, args.batch = [16, 32], 2
    if args.r:
        run_config(args)
        return
    reporting.log(f"one conv layer, batch {args.batch}, 1 -> {args.channels} channels, "
               f"density = bound = 1/r; {measurement.machine_note()}")
    rows = []
    configs = [(r, k) for r in args.resolutions for k in args.kinds]
    for r, kind in reporting.progress(configs, desc="configurations", unit="run"):
        need = estimate_gb(kind, r, args.batch, args.channels)
        row = {"r": r, "kind": kind, "batch": args.batch, "channels": args.channels}
        if need > args.max_gb:
            row["note"] = f"not run: needs about {need:.1f} GB > --max-gb {args.max_gb:g}"
        else:
            result = measurement.run_child(__file__, ["--r", r, "--kind", kind, "--batch",
                                                 args.batch, "--channels", args.channels,
                                                 "--seed", args.seed], quiet=True)
            if "error" in result:
                row["note"] = f"failed: {result['error']}"
            else:
                row.update(peak_mb=result["peak_bytes"] / 2**20,
                           input_sites=result["input_sites"],
                           output_sites=result["output_sites"],
                           output_nonzeros=result["output_nonzeros"],
                           attention=result["attention"])
        paper = PAPER.get(r)
        if paper:
            row["paper_gb"] = {"dense": paper[0]}.get(kind, paper[2])
        rows.append(row)
        reporting.log(f"r={r} {kind}: " + (f"{row['peak_mb']:.1f} MB" if "peak_mb" in row
                                       else row["note"]))
    reporting.write_csv(reporting.output_name("table1_memory", args.tiny, "csv"), rows)
    plot(rows, args)
    print_table(rows, args.resolutions)


def print_table(rows, resolutions):
    print(f"\n{'kind':>12}" + "".join(f"{f'r={r}':>12}" for r in resolutions) + "   (MB)")
    for kind in KINDS:
        cells = {row["r"]: row for row in rows if row["kind"] == kind}
        if not cells:
            continue
        print(f"{kind:>12}" + "".join(
            f"{cells[r]['peak_mb']:12.1f}" if "peak_mb" in cells.get(r, {}) else f"{'-':>12}"
            for r in resolutions))


def plot(rows, args):
    fig, (ax,) = reporting.figure(1, width=5.5)
    for kind, color in zip(KINDS, ("C3", "C0", "C2")):
        pts = [(row["r"], row["peak_mb"] / 1024) for row in rows
               if row["kind"] == kind and "peak_mb" in row]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=color, label=f"{kind} (measured)")
    for i, (label, style) in enumerate((("paper dense", "C3"), ("paper sparse 64-bit", "C0"))):
        pts = [(r, v[0 if i == 0 else 2]) for r, v in sorted(PAPER.items())
               if v[0 if i == 0 else 2] is not None and r in args.resolutions]
        if pts:
            ax.plot(*zip(*pts), ls="--", color=style, alpha=0.6, label=f"{label} (theory)")
    ax.set(xscale="log", yscale="log", xlabel="resolution r (grid r^3)",
           ylabel="peak memory of the forward pass [GB]")
    ax.set_xticks(args.resolutions, [str(r) for r in args.resolutions])
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=7)
    reporting.save_figure(fig, reporting.output_name("fig7_memory", args.tiny, "png"),
                       f"one conv layer, batch {args.batch}, 1->{args.channels} ch, "
                       "density = bound = 1/r")


if __name__ == "__main__":
    main()

"""Fig. 6 (left) of the paper: 3D shape classification accuracy against the
density bound, next to the equivalent dense network.

OctNet3-16^3 (conv(1,8) x3, maxPooling(2), conv(8,16) x3, sparseToDense,
dropout, fc(1024), fc(classes)) with the paper's bound pairs
(rho11, rho12) in {(0.06, 0.12), (0.12, 0.24), (0.33, 0.33), (1, 1)} and
sparse back-propagation, and the same network built from keras Conv3D, on
KiCad 3D component models (the offline stand-in for ModelNet40, see
docs/tutorials.md, "Data sources") voxelized at 16^3, a stratified 20% held out.
Each variant runs in its own process (its peak memory is its own). Writes
fig6_shapes_density.csv (in --out) (per variant and epoch), a _summary.csv
and fig6_shapes_density.png.

    python python/experiments/shapes_density.py [--epochs 5] [--categories ...]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kicad_models  # noqa: E402
import measurement  # noqa: E402
import reporting  # noqa: E402

PAPER_BOUNDS = {"0.06": (0.06, 0.12), "0.12": (0.12, 0.24), "0.33": (0.33, 0.33),
                "1": (1.0, 1.0)}
# The paper's Fig. 6 (left), read from the text: dense and OctNet about 0.83,
# sparse 0.833 at rho = 1, about 3 points lower at rho = 0.06.
PAPER_ACCURACY = {"dense": 0.83, "1": 0.833, "0.06": 0.80}


def load(args):
    x_train, y_train, x_test, y_test, cats = kicad_models.kicad_shapes(
        args.resolution, args.categories, args.per_class, seed=args.seed)
    return (x_train, y_train), (x_test, y_test), cats


def run_variant(args):
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import octnet  # pylint: disable=import-outside-toplevel

    train, test, cats = load(args)
    keras.utils.set_random_seed(args.seed)
    sparse = args.variant != "dense"
    with measurement.PeakMemory() as memory:
        model = octnet.shape_network(
            args.resolution, len(cats), sparse=sparse, conv=args.conv,
            densities=PAPER_BOUNDS[args.variant] if sparse else None)
        rows = octnet.fit(model, sparse, train, test, args.epochs, args.batch_size,
                          octnet.make_optimizer(args.optimizer, args.learning_rate),
                          f"rho={args.variant}" if sparse else "dense",
                          seed=args.seed)
    measurement.emit({"variant": args.variant, "rows": rows, "peak_bytes": memory.bytes,
                 "input_density": float(np.mean(train[0] != 0)),
                 "train_size": len(train[1]), "test_size": len(test[1]),
                 "classes": len(cats)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["dense"] + list(PAPER_BOUNDS),
                        choices=["dense"] + list(PAPER_BOUNDS))
    parser.add_argument("--resolution", type=int, default=16, choices=[16])
    parser.add_argument("--categories", nargs="+", default=list(kicad_models.KICAD_DEFAULT))
    parser.add_argument("--per-class", type=int, default=40, help="models per category")
    parser.add_argument("--epochs", type=int, default=5, help="the paper trains 90")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--optimizer", default="adam", choices=["adagrad", "adam", "sgd"])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--conv", default="full", choices=["full", "submanifold"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="fig6_shapes_density",
                        help="output base name (files <name>.csv / .png in --out)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: 3 categories x 8 models, 1 epoch, 2 variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    reporting.add_output_argument(parser)
    args = parser.parse_args()
    reporting.use_output(args)
    if args.tiny:
        args.categories, args.per_class, args.epochs = args.categories[:3], 8, 1
        args.variants = ["dense", "0.06"]
    if args.variant:
        run_variant(args)
        return
    load(args)  # voxelize once, before the children need it
    reporting.log(f"OctNet3-16^3 on {len(args.categories)} KiCad categories, {args.epochs} "
               f"epochs, {args.optimizer} lr {args.learning_rate}; {measurement.machine_note()}")
    child = ["--resolution", args.resolution, "--per-class", args.per_class,
             "--epochs", args.epochs, "--batch-size", args.batch_size,
             "--optimizer", args.optimizer, "--learning-rate", args.learning_rate,
             "--conv", args.conv, "--seed", args.seed, "--categories"] + args.categories
    results = measurement.run_variants(__file__, args.variants, child)
    base = args.name + ("_tiny" if args.tiny else "")
    rows = [dict(variant=v, peak_mb=r["peak_bytes"] / 2**20, **row)
            for v, r in results.items() for row in r["rows"]]
    reporting.write_csv(base + ".csv", rows)
    table = []
    for v, r in results.items():
        last = r["rows"][-3:]  # accuracy: mean of the last 3 epochs (less noise)
        timed = r["rows"][1:] or r["rows"]
        table.append({"variant": v, "rho11": PAPER_BOUNDS.get(v, ("",))[0],
                      "test_accuracy": sum(x["test_accuracy"] for x in last) / len(last),
                      "final_test_accuracy": r["rows"][-1]["test_accuracy"],
                      "seconds_per_epoch": sum(x["seconds"] for x in timed) / len(timed),
                      "peak_mb": r["peak_bytes"] / 2**20,
                      "paper_accuracy": PAPER_ACCURACY.get(v, "")})
    reporting.write_csv(base + "_summary.csv", table)
    info = next(iter(results.values()))
    fig, (ax_acc, ax_curve) = reporting.figure(2, width=4.8)
    sparse = [t for t in table if t["variant"] != "dense"]
    if sparse:
        ax_acc.plot([float(t["variant"]) for t in sparse],
                    [100 * t["test_accuracy"] for t in sparse], "o-", label="sparse (ours)")
    for t in table:
        if t["variant"] == "dense":
            ax_acc.axhline(100 * t["test_accuracy"], color="gray", ls="--",
                           label="dense twin (ours)")
    ax_acc.set(xscale="log", xlabel="density bound rho11", ylabel="test accuracy [%] "
               "(mean of last 3 epochs)", title="accuracy vs bound")
    ax_acc.legend(fontsize=7)
    for v, r in results.items():
        ax_curve.plot([x["epoch"] for x in r["rows"]],
                      [100 * x["test_accuracy"] for x in r["rows"]], marker=".",
                      label=v if v == "dense" else f"rho11={v}")
    ax_curve.set(xlabel="epoch", ylabel="test accuracy [%]", title="over training")
    ax_curve.legend(fontsize=7)
    reporting.save_figure(fig, base + ".png",
                       f"OctNet3-16^3, {info['classes']} KiCad categories "
                       f"({info['train_size']} train / {info['test_size']} test, input "
                       f"density {info['input_density']:.3f})")
    print(f"\n{'variant':>8} {'test acc':>9} {'s/epoch':>8} {'peak MB':>8}")
    for t in table:
        print(f"{t['variant']:>8} {100 * t['test_accuracy']:8.2f}% "
              f"{t['seconds_per_epoch']:8.2f} {t['peak_mb']:8.0f}")


if __name__ == "__main__":
    main()

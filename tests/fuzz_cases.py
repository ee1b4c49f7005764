"""Seeded fuzz cases over every public entry point and the raw ops.

Run by tests/test_fuzz.py in child processes (a crash or a hang fails the
case, not the run):

    python tests/fuzz_cases.py --entries conv,raw_conv --first 0 --count 100

Each case draws hostile arguments from numpy's Generator seeded with (entry,
case number): extreme and wrong-typed scalars, coordinates near the int32
limits, duplicate rows, negative batch indices, empty and one-site tensors,
half floats, NaN, kernel maps whose splits and rows are corrupted. For every
case the child prints one JSON line with the outcome:

- "ok", or the exception type; InvalidArgumentError, ValueError and
  TypeError are the clean refusals. ResourceExhaustedError is clean only
  where the case explicitly asked for a large output (a row count or a
  channel count of 2^20 or more); the child runs under RLIMIT_DATA of its
  baseline plus MEMORY_LIMIT, so any other allocation of that size fails.
- for ops with a pure-TF reference path, whether both implementations
  agreed (both refuse, or both give the same result).

Before each case it prints {"start": n}, so the parent knows which case a
dead or stuck child was running.
"""

import argparse
import json
import os
import resource
import sys
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Allocations beyond the baseline that a case may make before it counts as
# an allocation from sizes alone (1 GB, plus slack for TF's own buffers).
MEMORY_LIMIT = (1 << 30) + (256 << 20)
LARGE = 1 << 20  # a requested row / channel count from here on is "explicit"
CLEAN = ("InvalidArgumentError", "ValueError", "TypeError")

I32MAX, I32MIN = 2**31 - 1, -2**31
HOSTILE_INTS = [0, 1, 2, 3, -1, -2, 5, 7, I32MAX, I32MIN, 2**31, 2**32 + 1, 2**40,
                2**62, 2**63 - 1, -(2**63)]
HOSTILE_SCALARS = HOSTILE_INTS + [1.5, 2.0, float("nan"), float("inf"), -0.0, None,
                                  "a", True, [], [1, 2], np.int64(3), np.float32(2.5)]


class Case:
    """What a case asks for: `fn` to run (and `reference`, the same through
    the pure-TF path, or None), and whether it explicitly requests a large
    output."""

    def __init__(self, rng):
        self.rng = rng
        self.explicit_large = False
        # NaN / inf inputs: the two paths must both accept or both refuse, but
        # which entry a NaN maximum's gradient goes to is not specified.
        self.nonfinite = False

    # -- value generators -------------------------------------------------
    def pick(self, values):
        return values[int(self.rng.integers(len(values)))]

    def chance(self, p):
        return self.rng.random() < p

    def small_int(self, lo=-3, hi=4):
        return int(self.rng.integers(lo, hi))

    def hostile_int(self):
        return self.pick(HOSTILE_INTS) if self.chance(0.3) else self.small_int(0, 4)

    def scalar(self):
        """Mostly sensible ints, sometimes anything."""
        return self.pick(HOSTILE_SCALARS) if self.chance(0.25) else self.small_int(1, 4)

    def size_tuple(self, d):
        if self.chance(0.6):
            return self.small_int(1, 4)
        if self.chance(0.5):
            return tuple(self.small_int(1, 4) for _ in range(d))
        return self.pick([(), (2,) * (d + 1), [self.scalar()] * d, self.scalar(),
                          np.array([2.0] * d), tf.constant([2] * d)])

    def rows(self, n):
        if self.chance(0.7):
            return n
        if self.chance(0.5):
            self.explicit_large = True
            return self.pick([LARGE, LARGE, 2**26, 2**26, I32MAX - 1, I32MAX, 2**31, 2**40])
        return self.pick([-1, 0, n + 1, max(n - 1, 0)])

    def coordinates(self, n=None, cols=None, unique=True):
        """int32-ish coordinates [n, cols], mostly valid."""
        rng = self.rng
        n = self.pick([0, 1, 2, 3, 8, 33, 150]) if n is None else n
        cols = self.pick([3, 3, 4, 4, 2, 5]) if cols is None else cols
        lo, hi = (-4, 5) if self.chance(0.8) else self.pick(
            [(I32MAX - 6, I32MAX), (I32MIN, I32MIN + 6), (-2**30, 2**30)])
        c = rng.integers(lo, hi, size=(n, cols), dtype=np.int64, endpoint=True)
        c[:, 0] = rng.integers(0, 3, size=n)
        if self.chance(0.05) and n:
            c[rng.integers(n), 0] = self.pick([-1, I32MAX, I32MAX - 1, 2**31])
        if unique and not self.chance(0.05):
            c = np.unique(c, axis=0)
            if self.chance(0.5):
                rng.shuffle(c)
        roll = self.rng.random()
        if roll < 0.85:
            if c.size and (c.min() < I32MIN or c.max() > I32MAX):
                return tf.constant(c, tf.int64)
            return tf.constant(c.astype(np.int32))
        if roll < 0.9:
            return tf.constant(c, tf.int64)
        if roll < 0.94:
            return c.astype(np.float64) + self.pick([0.0, 0.5])
        if roll < 0.97:
            return c.tolist()
        return self.pick([np.zeros((n,), np.int32), np.zeros((n, cols), bool), "abc",
                          None, np.zeros((n, cols, 1), np.int32)])

    def features(self, n, c=None):
        c = self.pick([1, 2, 3, 4, 8]) if c is None else c
        dtype = self.pick([tf.float32] * 6 + [tf.float64, tf.float16, tf.bfloat16])
        values = self.rng.normal(size=(max(n, 0), c))
        if self.chance(0.05):
            values.flat[::3] = self.pick([np.nan, np.inf, 0.0])
            self.nonfinite = True
        if self.chance(0.04):
            return self.pick([np.zeros((n,)), np.zeros((n, c), np.int32), "x",
                              np.zeros((n + 1, c), np.float32), np.zeros((n, c, 2))])
        return tf.cast(tf.constant(values), dtype)

    def sparse(self, n=None, cols=None, c=None):
        import sparse_ops as so  # pylint: disable=import-outside-toplevel
        coords = self.coordinates(n, cols)
        rows = np.shape(coords)[0] if np.ndim(coords) else 0
        stride = self.scalar() if self.chance(0.1) else self.pick([1, 1, 1, 2])
        return so.SparseTensor(self.features(rows, c), coords, stride)

    def kernel(self, k, c_in, c_out, dtype=tf.float32, hypercube_d=None):
        if self.chance(0.05):
            self.explicit_large = self.explicit_large or True
            return tf.zeros([k, 0, self.pick([LARGE, 2**16 + 1])], dtype)
        shape = ([self.small_int(1, 4)] * hypercube_d if hypercube_d else [k]) + [c_in, c_out]
        if self.chance(0.05):
            shape[-1] = self.pick([0, 3])
        return tf.constant(self.rng.normal(size=shape), dtype)

    def kernel_map(self, n_in, n_out, k):
        """(splits int64 [K + 1], in_rows int32 [P], out_rows int32 [P]):
        valid-looking pairs, often corrupted."""
        rng = self.rng
        pairs, splits = [], [0]
        for _ in range(k):
            outs = np.sort(rng.choice(max(n_out, 1), size=min(n_out, rng.integers(0, 4)),
                                      replace=False)) if n_out else np.zeros(0, int)
            ins = rng.integers(0, max(n_in, 1), size=len(outs))
            pairs += list(zip(ins, outs))
            splits.append(len(pairs))
        splits = np.array(splits, np.int64)
        in_rows = np.array([p[0] for p in pairs], np.int64)
        out_rows = np.array([p[1] for p in pairs], np.int64)
        for _ in range(int(rng.integers(0, 3))):
            what = self.pick(["split", "in", "out", "len", "order", "huge_k"])
            if what == "split" and len(splits) > 1:
                splits[rng.integers(len(splits))] = self.pick([-1, 2**40, 5, len(pairs) + 1])
            elif what == "in" and len(in_rows):
                in_rows[rng.integers(len(in_rows))] = self.pick([-1, n_in, I32MAX, -2**31])
            elif what == "out" and len(out_rows):
                out_rows[rng.integers(len(out_rows))] = self.pick([-1, n_out, I32MAX])
            elif what == "len":
                in_rows = in_rows[:-1] if len(in_rows) else np.zeros(1, np.int64)
            elif what == "order" and len(out_rows) > 1:
                out_rows = out_rows[::-1].copy()
            elif what == "huge_k":
                splits = np.zeros(self.pick([2**16, 2**17]) + 1, np.int64)
                splits[-1] = 0
        clip = lambda a: np.clip(a, I32MIN, I32MAX).astype(np.int32)  # noqa: E731
        return (tf.constant(splits), tf.constant(clip(in_rows)), tf.constant(clip(out_rows)))


# -- entry points: each returns (fn, reference fn or None) --------------------------

def _so():
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    return so


def _both(fn):
    """fn run with the custom ops and with the reference path."""
    so = _so()

    def custom():
        with so.config.implementation("custom"):
            return fn()

    def reference():
        with so.config.implementation("reference"):
            return fn()
    return custom, reference


def entry_tensor(case):
    so = _so()
    coords = case.coordinates()
    n = np.shape(coords)[0] if np.ndim(coords) else 1
    feats = case.features(n)
    kwargs = {}
    if case.chance(0.3):
        kwargs["stride"] = case.scalar() if case.chance(0.5) else case.size_tuple(3)
    if case.chance(0.2):
        kwargs["dimension"] = case.scalar()

    method = case.pick(["batch_size", "dense", "to_tf_sparse", "repr", "none"])
    d = (np.shape(coords)[1] - 1) if np.ndim(coords) == 2 else 2
    shape = None if case.chance(0.4) else case.pick(
        [[4] * d, [case.scalar()] * d, [2, 3], [-1], [2**20] * d, [case.scalar()] * (d + 2)])
    origin = None if case.chance(0.7) else [case.scalar()] * d
    if method == "dense":
        # The data's extent, or the shape, is the size of the dense output.
        case.explicit_large = True

    def fn():
        x = so.SparseTensor(feats, coords, **kwargs)
        if method == "batch_size":
            return x.batch_size()
        if method == "dense":
            return x.dense(shape, origin)
        if method == "to_tf_sparse":
            return x.to_tf_sparse(shape)
        return repr(x)
    return fn, None


def entry_dense_interop(case):
    so = _so()
    shape = [case.small_int(0, 3)] + [case.small_int(0, 4)] * case.small_int(1, 4) + [
        case.small_int(1, 3)]
    x = tf.constant(case.rng.normal(size=shape) * (case.rng.random(shape) < 0.3),
                    tf.float32)
    mask = None if case.chance(0.6) else case.pick(
        [True, tf.zeros(shape[:-1], tf.bool), tf.ones(shape, tf.bool), tf.zeros(shape[:-1])])

    round_trip = case.chance(0.5)

    def fn():
        sp = so.SparseTensor.from_dense(x, mask)
        if round_trip:
            return so.SparseTensor.from_tf_sparse(sp.to_tf_sparse())
        return sp
    return fn, None


def entry_kernel_offsets(case):
    so = _so()
    d = case.pick([1, 2, 3, None, case.scalar()])
    region = case.pick(["hypercube", "hypercross", "bogus",
                        case.rng.integers(-3, 4, size=(case.small_int(0, 5), 2)),
                        np.array([[2**40, 0]]), np.array([[1.5, 0]]), [[case.scalar(), 0]]])
    size = case.pick([case.scalar(), 3, (3, 3), 2**31 - 1, 2**20, 64])
    kwargs = dict(dilation=case.scalar() if case.chance(0.4) else 1,
                  stride=case.scalar() if case.chance(0.3) else 1)
    return (lambda: so.kernel_offsets(size, region=region, dimension=d, **kwargs)), None


def entry_sparse_quantize(case):
    so = _so()
    n = case.pick([0, 1, 5, 50])
    points = case.rng.normal(size=(n, case.pick([2, 3]))) * case.pick([1.0, 1e3, 1e12])
    if case.chance(0.1) and n:
        points[0, 0] = case.pick([np.nan, np.inf])
    if case.chance(0.05):
        points = case.pick([None, "pts", np.zeros(5), points.tolist()])
    voxel = case.pick([1.0, 0.5, [1.0, 2.0, 3.0], 0.0, -1.0, np.nan, 1e-30, "v", [1.0]])
    feats = None if case.chance(0.5) else case.rng.normal(size=(n, 2))
    labels = None if case.chance(0.6) else case.rng.integers(0, 3, size=case.pick([n, n + 1]))
    mode = case.pick(["average", "sum", "max", "first", "random", "bogus"])
    flags = dict(return_index=case.chance(0.5), return_inverse=case.chance(0.5))
    return (lambda: so.utils.sparse_quantize(points, feats, labels, voxel_size=voxel,
                                             mode=mode, **flags)), None


def entry_batching(case):
    so = _so()
    lists = [case.rng.integers(-3, 4, size=(case.small_int(0, 5), 3))
             for _ in range(case.small_int(0, 4))]
    if case.chance(0.2):
        lists = case.pick([5, None, [None], ["ab"], [np.zeros(3)], lists + [np.zeros((2, 2))]])
    feats = [np.ones((len(c), 2)) for c in lists] if isinstance(lists, list) and all(
        hasattr(c, "__len__") for c in lists) else 6
    if case.chance(0.2):
        feats = case.pick([6, [5], feats[:-1] if isinstance(feats, list) else 6])
    if case.chance(0.5):
        return (lambda: so.utils.batched_coordinates(lists)), None
    labels = None if case.chance(0.5) else [np.zeros(len(c)) for c in lists] if isinstance(
        lists, list) and all(hasattr(c, "__len__") for c in lists) else [7]
    return (lambda: so.utils.sparse_collate(lists, feats, labels)), None


def _conv_args(case, x, transposed):
    d = x.dimension or 2
    region = case.pick(["hypercube"] * 5 + ["hypercross", "bogus",
                                            case.rng.integers(-2, 3, size=(3, d))])
    c_in = x.num_channels or 2
    c_out = case.pick([1, 2, 5])
    if region == "hypercube":
        kernel = case.kernel(0, c_out if transposed else c_in,
                             c_in if transposed else c_out, x.dtype, hypercube_d=d)
    else:
        k = 1 + 2 * d if region == "hypercross" else 3
        kernel = case.kernel(k, c_out if transposed else c_in,
                             c_in if transposed else c_out, x.dtype)
    bias = None if case.chance(0.6) else case.pick([tf.zeros([c_out], x.dtype), "b",
                                                   tf.zeros([c_out + 1], x.dtype)])
    return dict(kernel=kernel, bias=bias, region=region,
                strides=case.size_tuple(d) if case.chance(0.5) else case.pick([1, 2]),
                dilation_rate=1 if case.chance(0.7) else case.size_tuple(d))


def _with_gradient(case, op, x, **kwargs):
    """op(x, ...) and, sometimes, the gradient w.r.t. the features; sometimes
    traced in a tf.function whose inputs have unknown row counts and a
    stride tensor known only at run time (the ops' run-time checks)."""
    gradient = case.chance(0.3)
    traced = case.chance(0.3) and all(isinstance(t, tf.Tensor) for t in x[:3])

    def apply(features, coordinates, stride):
        x2 = type(x)(features, coordinates, stride, x.finer)
        if not gradient:
            return op(x2, **kwargs)
        with tf.GradientTape() as tape:
            tape.watch(features)
            y = op(x2, **kwargs)
            loss = tf.reduce_sum(tf.cast(y.features, tf.float32))
        return y, tape.gradient(loss, features)

    if not traced:
        return lambda: apply(x.features, x.coordinates, x.stride_tensor)
    signature = [tf.TensorSpec([None, x.features.shape[1]], x.features.dtype),
                 tf.TensorSpec([None, x.coordinates.shape[1]], x.coordinates.dtype),
                 tf.TensorSpec([None], x.stride_tensor.dtype)]
    return lambda: tf.function(apply, input_signature=signature, autograph=False)(
        x.features, x.coordinates, x.stride_tensor)


def entry_conv(case):
    so = _so()
    x = case.sparse()
    kwargs = _conv_args(case, x, False)
    if case.chance(0.15):
        kwargs["out_coordinates"] = case.pick([case.coordinates(), case.sparse(), x])
    kwargs["masked_gradients"] = case.chance(0.2)
    return _both(_with_gradient(case, so.ops.conv, x, **kwargs))


def entry_conv_transpose(case):
    so = _so()
    x = case.sparse()
    if case.chance(0.5):  # a coarse tensor that links to finer sites
        with so.config.implementation("custom"):
            try:
                x = so.ops.conv(x, tf.ones([2] * x.dimension + [x.num_channels] * 2, x.dtype),
                                strides=2)
            except (tf.errors.InvalidArgumentError, ValueError, TypeError):
                pass
    kwargs = _conv_args(case, x, True)
    kwargs["generative"] = case.chance(0.3)
    if case.chance(0.2):
        kwargs["out_coordinates"] = case.pick([case.coordinates(), case.sparse()])
    return _both(_with_gradient(case, so.ops.conv_transpose, x, **kwargs))


def entry_coordinate_ops(case):
    so = _so()
    if case.chance(0.03):
        # Many sites times many offsets: neighbour tables and candidate keys
        # beyond the table budget, built in chunks on both paths.
        coords = case.coordinates(n=2048, cols=3)
        big = tf.constant(case.rng.integers(-300, 300, size=(2**16, 2)), tf.int32)
        which = case.pick(["kernel_map", "generative"])
        if which == "kernel_map":
            return _both(lambda: so.ops.kernel_map(coords, coords, big))
        return _both(lambda: so.ops.generative_coordinates(coords, big[:2**12], 1))
    coords = case.coordinates()
    d = (np.shape(coords)[1] - 1) if np.ndim(coords) == 2 else 2
    offsets = case.pick([so.kernel_offsets(3, dimension=max(d, 1)),
                         case.rng.integers(-3, 4, size=(case.small_int(0, 6), max(d, 1))),
                         np.array([[2**40] * max(d, 1)]), np.array([[1.5] * max(d, 1)]),
                         tf.zeros([4, d + 1], tf.int32)])
    stride = case.pick([1, 2, [1] * max(d, 1), case.scalar(), tf.constant([-1] * max(d, 1)),
                        tf.constant([2**30] * max(d, 1))])
    which = case.pick(["kernel_map", "strided", "generative", "lookup", "union"])
    if which == "kernel_map":
        out = coords if case.chance(0.5) else case.coordinates(cols=d + 1)
        return _both(lambda: so.ops.kernel_map(coords, out, offsets, stride))
    if which == "strided":
        return _both(lambda: so.ops.strided_coordinates(coords, stride))
    if which == "generative":
        return _both(lambda: so.ops.generative_coordinates(coords, offsets, stride))
    if which == "lookup":
        queries = case.coordinates(cols=case.pick([d + 1, d + 1, d + 2]), unique=False)
        return _both(lambda: so.ops.lookup_coordinates(coords, queries))
    others = [case.coordinates(cols=case.pick([d + 1, d + 1, d])) for _ in range(
        case.small_int(0, 3))]
    return _both(lambda: so.ops.union_coordinates([coords] + others))


def entry_pool(case):
    so = _so()
    x = case.sparse()
    name = case.pick(["max_pool", "avg_pool", "sum_pool", "unpool"])
    op = getattr(so.ops, name)
    pool = case.size_tuple(x.dimension or 2)
    strides = None if case.chance(0.5) else case.size_tuple(x.dimension or 2)
    return _both(_with_gradient(case, op, x, pool_size=pool, strides=strides))


def entry_features(case):
    so = _so()
    x = case.sparse()
    which = case.pick(["global_pool", "broadcast", "instance_norm", "attention",
                       "union", "slice", "interpolate"])
    if which == "global_pool":
        mode = case.pick(["max", "avg", "sum", "min"])
        if isinstance(x.coordinates, tf.Tensor) and x.coordinates.shape[0] and int(
                tf.reduce_max(tf.cast(x.coordinates[:, 0], tf.int64))) >= LARGE:
            case.explicit_large = True  # [B, C] with B = the batch index
        return _both(lambda: so.ops.global_pool(x, mode))
    if which == "broadcast":
        g = case.pick([tf.ones([3, x.num_channels or 1], x.dtype), tf.ones([3, 4]),
                       tf.ones([1, 1]), "g", tf.ones([3])])
        op = case.pick(["add", "multiply", "concat", "pow"])
        return (lambda: so.ops.broadcast(x, g, op)), None
    if which == "instance_norm":
        eps = case.pick([1e-5, 0.0, -1.0, float("nan"), "e"])
        return (lambda: so.ops.instance_norm(x, eps)), None
    if which == "attention":
        kwargs = case.pick([dict(k=case.hostile_int()),
                            dict(k=tf.constant(case.small_int(0, 5), tf.int64)),
                            dict(k=tf.constant([1])),
                            dict(density=case.pick([0.1, 1.5, -0.1, float("nan")]),
                                 spatial_shape=case.pick([[8] * (x.dimension or 1), [0],
                                                          [2**20] * 3, None])),
                            dict(k=None, density=None)])
        kwargs["mode"] = case.pick(["value", "abs", "bogus"])
        kwargs["per"] = case.pick(["channel", "site", "bogus"])
        return _both(lambda: so.ops.attention(x, **kwargs))
    if which == "union":
        others = [case.sparse(cols=case.pick([x.dimension + 1 if x.dimension else 3, 3]),
                              c=case.pick([x.num_channels, 2])) for _ in range(
            case.small_int(0, 3))]
        return _both(lambda: so.ops.union([x] + others))
    if which == "slice":
        n = getattr(x.coordinates, "shape", [0])[0] or 0
        inverse = case.pick([tf.constant(case.rng.integers(0, max(n, 1), size=5), tf.int32),
                             tf.constant([-1, n]), tf.zeros([2, 2], tf.int32),
                             tf.constant([2**40])])
        return _both(lambda: so.ops.slice(x, inverse))
    points = tf.constant(case.rng.normal(size=(4, (x.dimension or 2) + 1)) *
                         case.pick([1.0, 1e10]), case.pick([tf.float32, tf.float64]))
    normalize = case.chance(0.5)
    return _both(lambda: so.ops.interpolate(x, points, normalize=normalize))


LAYER_FACTORIES = {
    "Conv": lambda c: (c.pick([1, 2, c.scalar()]), ), "ConvTranspose": lambda c: (2,),
    "MaxPool": lambda c: (), "AvgPool": lambda c: (), "SumPool": lambda c: (),
    "Unpool": lambda c: (), "GlobalMaxPool": lambda c: (), "BatchNorm": lambda c: (),
    "InstanceNorm": lambda c: (), "Dense": lambda c: (c.pick([1, 3, c.scalar()]),),
    "Dropout": lambda c: (c.pick([0.5, 1.5, -1, "r"]),), "ReLU": lambda c: (),
    "ToDense": lambda c: (c.pick([[4, 4], [4, 4, 4], [c.scalar()] * 3]),),
    "Attention": lambda c: (), "Activation": lambda c: (c.pick(["relu", "bogus", 3]),),
}


def entry_layers(case):
    so = _so()
    name = case.pick(sorted(LAYER_FACTORIES))
    args = LAYER_FACTORIES[name](case)
    kwargs = {}
    if name in ("Conv", "ConvTranspose"):
        kwargs = dict(kernel_size=case.size_tuple(3), strides=case.pick([1, 2, case.scalar()]))
        if name == "ConvTranspose":
            kwargs["generative"] = case.chance(0.5)
        if case.chance(0.2):
            args = (case.pick([2**31, LARGE, 0]),)
            case.explicit_large = True
    elif name in ("MaxPool", "AvgPool", "SumPool", "Unpool"):
        kwargs = dict(pool_size=case.size_tuple(3))
    elif name == "Attention":
        kwargs = case.pick([dict(k=case.hostile_int()), dict(density=0.5, spatial_shape=[4] * 3)])
    elif name == "InstanceNorm":
        kwargs = dict(epsilon=case.pick([1e-5, -1.0, float("nan")]))
    x = case.sparse(cols=4)

    def fn():
        layer = getattr(so.layers, name)(*args, **kwargs)
        config = layer.get_config()
        out = layer(x)
        type(layer).from_config(config)
        return out
    return fn, None


def _raw_args(case):
    n_in = case.pick([0, 1, 3, 8])
    n_out = case.pick([0, 1, 2, 5])
    k = case.pick([0, 1, 2, 3])
    dtype = case.pick([tf.float32, tf.float64])
    c_in, c_out = case.pick([0, 1, 2, 3]), case.pick([0, 1, 2])
    feats = case.features(n_in, c_in) if case.chance(0.2) else tf.constant(
        case.rng.normal(size=(n_in, c_in)), dtype)
    grad = tf.constant(case.rng.normal(size=(n_out, c_out)), dtype)
    kernel = case.kernel(k, c_in, c_out, dtype)
    return n_in, n_out, k, dtype, feats, grad, kernel


def entry_raw_ops(case):
    lib = _so()._loader.library()  # pylint: disable=protected-access
    n_in, n_out, k, dtype, feats, grad, kernel = _raw_args(case)
    kmap = case.kernel_map(n_in, n_out, k)
    i64 = lambda v: tf.constant(v, tf.int64)  # noqa: E731
    rows_out, rows_in = case.rows(n_out), case.rows(n_in)
    op = case.pick(["conv", "backprop_input", "backprop_kernel", "max_pool", "max_pool_grad",
                    "sum_pool", "sum_pool_transpose", "global_max", "global_sum",
                    "global_sum_grad", "attention", "lookup", "union", "kernel_map",
                    "strided", "generative"])
    coords = case.coordinates()
    coords32 = tf.cast(coords, tf.int32) if isinstance(coords, tf.Tensor) and \
        coords.dtype.is_integer else tf.zeros([3, 3], tf.int32)
    d = int(coords32.shape[1]) - 1
    offsets = tf.constant(case.rng.integers(-3, 4, size=(case.pick([0, 1, 27, 2**14]),
                                                          max(d, 0))), tf.int32)
    stride = tf.constant(case.pick([[1] * d, [2] * d, [-1] * d, [0] * (d + 1),
                                    [2**30] * d]), tf.int32)
    batch = tf.constant(case.rng.integers(case.pick([0, -1]), 3, size=n_in), tf.int32)
    num_batches = case.pick([3, 0, 1, LARGE, 2**31])
    if num_batches >= LARGE:
        case.explicit_large = True
    average = case.chance(0.5)
    weight_path = case.pick(["auto", "dense", "sparse"])
    k_select = case.pick([0, 1, 2**62, -1])
    mode, per = case.pick(["value", "abs"]), case.pick(["channel", "site"])
    argmax = tf.constant(case.rng.integers(-2, max(n_in, 1) + 1, size=grad.shape), tf.int32)
    calls = {
        "conv": lambda: lib.sparse_ops_conv(feats, kernel, *kmap, i64(rows_out),
                                            weight_path=weight_path),
        "backprop_input": lambda: lib.sparse_ops_conv_backprop_input(
            grad, kernel, *kmap, i64(rows_in)),
        "backprop_kernel": lambda: lib.sparse_ops_conv_backprop_kernel(feats, grad, *kmap),
        "max_pool": lambda: lib.sparse_ops_max_pool(feats, *kmap, i64(rows_out)),
        "max_pool_grad": lambda: lib.sparse_ops_max_pool_grad(grad, argmax, i64(rows_in)),
        "sum_pool": lambda: lib.sparse_ops_sum_pool(feats, *kmap, i64(rows_out),
                                                    average=average),
        "sum_pool_transpose": lambda: lib.sparse_ops_sum_pool_transpose(
            grad, *kmap, i64(rows_in), average=average),
        "global_max": lambda: lib.sparse_ops_global_max_pool(feats, batch, i64(num_batches)),
        "global_sum": lambda: lib.sparse_ops_global_sum_pool(feats, batch, i64(num_batches),
                                                             average=average),
        "global_sum_grad": lambda: lib.sparse_ops_global_sum_pool_grad(
            grad, batch, average=average),
        "attention": lambda: lib.sparse_ops_attention(feats, coords32, i64(k_select),
                                                      mode=mode, per=per),
        "lookup": lambda: lib.sparse_ops_coordinate_lookup(coords32, coords32[::-1]),
        "union": lambda: lib.sparse_ops_coordinate_union([coords32, coords32[:1]]),
        "kernel_map": lambda: lib.sparse_ops_kernel_map(coords32, coords32, offsets, stride),
        "strided": lambda: lib.sparse_ops_strided_coordinates(coords32, stride),
        "generative": lambda: lib.sparse_ops_generative_coordinates(coords32, offsets, stride),
    }
    return calls[op], None


ENTRIES = {
    "tensor": entry_tensor, "dense_interop": entry_dense_interop,
    "kernel_offsets": entry_kernel_offsets, "sparse_quantize": entry_sparse_quantize,
    "batching": entry_batching, "conv": entry_conv, "conv_transpose": entry_conv_transpose,
    "coordinate_ops": entry_coordinate_ops, "pool": entry_pool, "features": entry_features,
    "layers": entry_layers, "raw_ops": entry_raw_ops,
}


# -- running cases ------------------------------------------------------------------

def _outcome(fn):
    """("ok", result) or (exception type name, message)."""
    try:
        out = fn()
        # Materialise lazily computed results (and their errors) now.
        flat = []
        for t in tf.nest.flatten(out):
            if isinstance(t, tf.IndexedSlices):  # a gather's gradient
                t = tf.convert_to_tensor(t)
            if isinstance(t, tf.SparseTensor):
                t = t.values
            if isinstance(t, tf.Tensor):
                flat.append(np.asarray(t))
        return "ok", flat
    except Exception as e:  # pylint: disable=broad-except
        return type(e).__name__, str(e)[:300]


def _same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            tol = 1e-2 if x.dtype.itemsize <= 2 else 1e-4
            if not np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=tol,
                               atol=tol, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def run_case(entry, number):
    """The JSON record of one case."""
    seed = zlib.crc32(f"{entry}:{number}".encode())
    case = Case(np.random.default_rng(seed))
    record = {"entry": entry, "case": number}
    start = time.perf_counter()
    try:
        fn, reference = ENTRIES[entry](case)
    except Exception as e:  # pylint: disable=broad-except
        fn, reference = (lambda e=e: (_ for _ in ()).throw(e)), None
    kind, value = _outcome(fn)
    record.update(outcome=kind, explicit_large=case.explicit_large)
    if kind != "ok":
        record["message"] = value
    if reference is not None:
        ref_kind, ref_value = _outcome(reference)
        record["reference"] = ref_kind
        if ref_kind != "ok":
            record["reference_message"] = ref_value
        record["agree"] = (kind == ref_kind == "ok" and (
            case.nonfinite or _same(value, ref_value))) or (kind != "ok" and ref_kind != "ok")
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _data_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--skip", default="", help="entry:case pairs already run")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    # Warm up (threads, the op library), then cap the data segment.
    for entry in ENTRIES:
        run_case(entry, -1)
    so.ops.conv(so.SparseTensor(tf.ones([2, 1]), [[0, 0], [0, 1]]), tf.ones([3, 1, 1]))
    resource.setrlimit(resource.RLIMIT_DATA, (_data_bytes() + MEMORY_LIMIT,
                                              resource.RLIM_INFINITY))
    skip = set(args.skip.split(",")) if args.skip else set()
    for number in range(args.first, args.first + args.count):
        for entry in args.entries.split(","):
            if f"{entry}:{number}" in skip:
                continue
            print(json.dumps({"start": f"{entry}:{number}"}), flush=True)
            print(json.dumps(run_case(entry, number)), flush=True)
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

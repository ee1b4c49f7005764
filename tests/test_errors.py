"""Bad inputs raise clean errors and never crash the process
(docs/concepts.md, "Errors and limits").

Every case runs in a child python process, so a segfault, an abort or a hang
fails that case instead of killing pytest. The cases are batched into one
child (TensorFlow takes seconds to import); when the child dies, the case it
was running is recorded as crashed and the remaining cases run in a fresh one.

A case is python code run inside `with so.config.implementation(IMPL):` for
the implementations it lists ("raw" cases call the op library directly,
"python" cases need no op at all).
It either must raise one of the allowed exception types with a message
matching a pattern, or ("ok") must finish; ok cases check their results with
asserts against references computed here (dense TF ops or sums by hand).
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from sparse_ops import _loader

TIMEOUT_S = 300
# Without a built op library the custom-op cases are skipped, not failed.
HAVE_LIBRARY = _loader.try_library() is not None

# Runs in the child before the cases.
PRELUDE = r'''
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)
import sparse_ops as so
lib = so._loader.try_library()  # None: the custom cases are skipped

I32MAX, I32MIN = 2**31 - 1, -2**31


def rows(values, cols):
    return np.asarray(values, np.int64).reshape(-1, cols)


def sparse(coords, channels=2, dtype=tf.float32, stride=1, seed=0, cols=None):
    coords = rows(coords, cols or np.shape(coords)[1])
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=[len(coords), channels])
    return so.SparseTensor(tf.constant(feats, dtype),
                           tf.constant(coords.astype(np.int32)), stride)


def weights(shape, dtype=tf.float32, seed=1):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=shape), dtype)


def to_np(t):
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def check_conv_dense(x, kernel, strides=1, shape=None, origin=None, bias=None):
    """so.ops.conv(x) equals dense tf.nn.convolution(SAME) at its output
    sites; returns the output."""
    y = so.ops.conv(x, kernel, bias=bias, strides=strides)
    d = x.dimension
    origin = np.zeros(d, np.int64) if origin is None else np.asarray(origin, np.int64)
    dense = x.dense(shape=shape, min_coordinate=origin)
    ref = tf.nn.convolution(dense, kernel, strides=strides, padding="SAME")
    if bias is not None:
        ref = ref + bias
    c = to_np(y.coordinates).astype(np.int64)
    out_stride = np.asarray(y.stride, np.int64)
    assert np.all((c[:, 1:] - origin) % out_stride == 0)
    idx = np.concatenate([c[:, :1], (c[:, 1:] - origin) // out_stride], 1)
    want = tf.gather_nd(ref, idx).numpy()
    np.testing.assert_allclose(to_np(y.features), want, rtol=1e-4, atol=1e-4)
    return y


def site_dict(st):
    return {tuple(int(v) for v in c): f for c, f in
            zip(to_np(st.coordinates), to_np(st.features))}


def expect_sites(st, want, tol=1e-4):
    """want: {site tuple: feature vector}; compares as sets of sites."""
    got = site_dict(st)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol)


# A valid kernel map for the raw conv ops: N = 3 input rows, M = 2 output rows,
# K = 2 offsets; pairs of offset 0: (0, 0), (1, 1); of offset 1: (2, 0).
GOOD = dict(features=np.ones([3, 2]), grad=np.ones([2, 4]),
            kernel=np.ones([2, 2, 4]), splits=[0, 2, 3], in_rows=[0, 1, 2],
            out_rows=[0, 1, 0], n_out=2, n_in=3)


def _map_args(a):
    def t(v, dtype):
        return v if isinstance(v, tf.Tensor) else tf.constant(v, dtype)
    return (t(a["splits"], tf.int64), t(a["in_rows"], tf.int32),
            t(a["out_rows"], tf.int32))


def _args(over):
    a = dict(GOOD)
    a.update(over)
    return a


def _f(v):
    return v if isinstance(v, tf.Tensor) else tf.constant(v, tf.float32)


def _i64(v):
    return v if isinstance(v, tf.Tensor) else tf.constant(v, tf.int64)


def raw_conv(**over):
    a = _args(over)
    return lib.sparse_ops_conv(_f(a["features"]), _f(a["kernel"]), *_map_args(a),
                               _i64(a["n_out"]))


def raw_backprop_input(**over):
    a = _args(over)
    return lib.sparse_ops_conv_backprop_input(_f(a["grad"]), _f(a["kernel"]),
                                              *_map_args(a), _i64(a["n_in"]))


def raw_backprop_kernel(**over):
    a = _args(over)
    return lib.sparse_ops_conv_backprop_kernel(_f(a["features"]), _f(a["grad"]),
                                               *_map_args(a))


RAW_CONV_OPS = {"conv": raw_conv, "backprop_input": raw_backprop_input,
                "backprop_kernel": raw_backprop_kernel}

SQUARE = [[0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]
OFFSETS3 = so.kernel_offsets(3, dimension=2)


def raw_kernel_map(in_c=SQUARE, out_c=SQUARE, offsets=None, stride=(1, 1)):
    def t(v):
        return v if isinstance(v, tf.Tensor) else tf.constant(
            np.asarray(v, np.int32))
    return lib.sparse_ops_kernel_map(t(in_c), t(out_c),
                                     OFFSETS3 if offsets is None else t(offsets),
                                     t(stride))


def i32(v, cols=None):
    a = np.asarray(v, np.int64)
    if cols is not None:
        a = a.reshape(-1, cols)
    return tf.constant(a.astype(np.int32))
'''

# Runs the cases read from stdin, reporting each as it goes.
DRIVER = r'''
import json, sys
cases = json.load(sys.stdin)
prelude = cases.pop(0)
base = {"__name__": "__case__"}
exec(compile(prelude, "<prelude>", "exec"), base)
for name, code in cases:
    print("@@START " + name, flush=True)
    ns = dict(base)
    try:
        exec(compile(code, "<" + name + ">", "exec"), ns)
        result = {"status": "ok"}
    except BaseException as e:  # pylint: disable=broad-except
        import traceback
        result = {"status": "raised", "type": type(e).__name__,
                  "mro": [c.__name__ for c in type(e).__mro__],
                  "message": str(e)[:3000],
                  "traceback": traceback.format_exc()[-3000:]}
    print("@@RESULT " + json.dumps([name, result]), flush=True)
print("@@DONE", flush=True)
'''

API_ERRORS = ("InvalidArgumentError", "ValueError", "TypeError")


class Raises:
    def __init__(self, pattern, types=API_ERRORS):
        self.pattern, self.types = pattern, types

    def __repr__(self):
        return f"Raises({self.pattern!r})"


class OkOrRaises(Raises):
    """Either finishes (its asserts passing) or raises a clean error."""


OK = "ok"

CASES = {}  # name -> (code, expectation, xfail reason or None)
BOTH = ("custom", "reference")


def add(name, code, expect, impls=BOTH, xfail=None):
    """Registers a case once per implementation. xfail: a reason, or a dict
    {implementation: reason}."""
    code = textwrap.dedent(code).strip("\n")
    for impl in impls:
        full = f"{impl}:{name}"
        assert full not in CASES, full
        if impl in ("raw", "python"):  # no implementation switch
            body = code
        else:
            body = (f"IMPL = {impl!r}\nwith so.config.implementation(IMPL):\n"
                    + textwrap.indent(code, "    "))
        reason = xfail.get(impl) if isinstance(xfail, dict) else xfail
        CASES[full] = (body, expect, reason)


# == SparseTensor construction ================================================

add("tensor/rows_mismatch", """
    so.SparseTensor(np.ones([3, 2], np.float32), i32(SQUARE[:2]))
""", Raises(r"rows"), impls=("python",))
add("tensor/features_rank1", """
    so.SparseTensor(np.ones([4], np.float32), i32(SQUARE))
""", Raises(r"features.*\[N, C\]|features.*rank|features.*shape"), impls=("python",))
add("tensor/features_rank3", """
    so.SparseTensor(np.ones([4, 2, 1], np.float32), i32(SQUARE))
""", Raises(r"features"), impls=("python",))
add("tensor/coordinates_rank1", """
    so.SparseTensor(np.ones([4, 2], np.float32), tf.constant([0, 1, 2, 3]))
""", Raises(r"coordinates"), impls=("python",))
add("tensor/coordinates_rank3", """
    so.SparseTensor(np.ones([4, 2], np.float32), tf.zeros([4, 3, 1], tf.int32))
""", Raises(r"coordinates"), impls=("python",))
add("tensor/string_coordinates", """
    so.SparseTensor(np.ones([1, 2], np.float32), tf.constant([["0", "1", "2"]]))
""", Raises(r"coordinates.*(int|string)", ("TypeError", "InvalidArgumentError")),
    impls=("python",))
add("tensor/bool_coordinates", """
    so.SparseTensor(np.ones([1, 2], np.float32), tf.constant([[True, False]]))
""", Raises(r"coordinates", ("TypeError", "InvalidArgumentError")), impls=("python",))
add("tensor/string_features", """
    so.SparseTensor(tf.constant([["a", "b"]]), i32([[0, 1, 2]]))
""", Raises(r"features", ("TypeError", "InvalidArgumentError")), impls=("python",))
add("tensor/non_whole_float_coordinates", """
    so.SparseTensor(np.ones([1, 2], np.float32), tf.constant([[0.0, 1.5, 2.0]]))
""", Raises(r"whole|integer"), impls=("python",))
add("tensor/int64_coordinates_beyond_int32", """
    so.SparseTensor(np.ones([1, 2], np.float32),
                    tf.constant([[0, 2**40, 0]], tf.int64))
""", Raises(r"int32"), impls=("python",))
add("tensor/zero_columns", """
    so.SparseTensor(np.ones([2, 2], np.float32), tf.zeros([2, 0], tf.int32))
""", Raises(r"column|coordinates"), impls=("python",))
add("tensor/one_column", """
    so.SparseTensor(np.ones([2, 2], np.float32), tf.constant([[0], [1]]))
""", Raises(r"column|coordinates"), impls=("python",))
add("tensor/stride_zero", """
    so.SparseTensor(np.ones([1, 2], np.float32), i32([[0, 1, 2]]), 0)
""", Raises(r"stride"), impls=("python",))
add("tensor/stride_wrong_length", """
    so.SparseTensor(np.ones([1, 2], np.float32), i32([[0, 1, 2]]), (1, 2, 2))
""", Raises(r"stride"), impls=("python",))

# == so.ops.conv / conv_transpose / kernel_map: bad inputs ====================

add("conv/kernel_channels_mismatch", """
    so.ops.conv(sparse(SQUARE, channels=2), weights([3, 3, 3, 4]))
""", Raises(r"channel"))
add("conv/kernel_rank_mismatch", """
    so.ops.conv(sparse(SQUARE, channels=2), weights([3, 2, 4]))
""", Raises(r"kernel"))
add("conv/hypercross_kernel_size_mismatch", """
    # K = 4 is no 2D hypercross (those have 1 + 2 * (k - 1) offsets).
    so.ops.conv(sparse(SQUARE, channels=2), weights([4, 2, 4]), region="hypercross")
""", Raises(r"kernel|offsets|hypercross"))
add("conv/hypercross_matching_kernel_works", """
    # The valid counterpart of the case above: K = 5, a 3x3 cross.
    x = sparse(SQUARE + [[0, 2, 1]], channels=2)
    w = weights([5, 2, 3])
    y = so.ops.conv(x, w, region="hypercross")
    off = so.kernel_offsets(3, region="hypercross", dimension=2).numpy()
    f = site_dict(x)
    W = to_np(w)
    want = {}
    for site in f:
        acc = np.zeros(3)
        for k, o in enumerate(off):
            n = (site[0], site[1] + o[0], site[2] + o[1])
            if n in f:
                acc += f[n] @ W[k]
        want[site] = acc
    expect_sites(y, want)
""", OK)
add("conv/custom_region_kernel_mismatch", """
    so.ops.conv(sparse(SQUARE, channels=2), weights([2, 2, 4]),
                region=np.array([[0, 0], [1, 0], [0, 1]]))
""", Raises(r"kernel|offsets"))
add("conv/int_kernel", """
    so.ops.conv(sparse(SQUARE, channels=2), tf.ones([3, 3, 2, 4], tf.int32))
""", Raises(r"kernel.*(float|int)", ("TypeError", "InvalidArgumentError")))
add("conv/int_features_float64_kernel", """
    x = so.SparseTensor(tf.ones([4, 2], tf.int32), i32(SQUARE))  # -> float32
    so.ops.conv(x, weights([3, 3, 2, 4], tf.float64))
""", Raises(r"dtype|float", ("TypeError", "InvalidArgumentError")))
add("conv/kernel_dtype_mismatch", """
    so.ops.conv(sparse(SQUARE, channels=2), weights([3, 3, 2, 4], tf.float64))
""", Raises(r"dtype|float", ("TypeError", "InvalidArgumentError")))
add("conv/bias_wrong_size", """
    so.ops.conv(sparse(SQUARE, channels=2), weights([3, 3, 2, 4]), bias=tf.ones([3]))
""", Raises(r"bias|dimension|shape|must"))
add("conv/negative_batch", """
    so.ops.conv(sparse([[0, 0, 0], [-1, 1, 0]]), weights([3, 3, 2, 4]))
""", Raises(r"negative batch"))
add("conv/negative_batch_strided", """
    so.ops.conv(sparse([[0, 0, 0], [-2, 1, 0]]), weights([2, 2, 2, 4]), strides=2)
""", Raises(r"negative batch"))
add("conv/duplicate_sites", """
    so.ops.conv(sparse([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), weights([3, 3, 2, 4]))
""", Raises(r"duplicate"))
add("conv/duplicate_sites_strided", """
    so.ops.conv(sparse([[0, 3, 3], [0, 1, 0], [0, 3, 3]]), weights([2, 2, 2, 4]),
                strides=2)
""", Raises(r"duplicate"))
add("conv/duplicate_sites_in_tf_function", """
    x = sparse([[1, 5, 5], [0, 1, 0], [1, 5, 5]])
    w = weights([3, 3, 2, 4])
    f = tf.function(lambda feats, coords: so.ops.conv(
        so.SparseTensor(feats, coords), w).features)
    f(x.features, x.coordinates).numpy()
""", Raises(r"duplicate"))
add("conv/out_coordinates_negative_batch", """
    so.ops.conv(sparse(SQUARE), weights([3, 3, 2, 4]),
                out_coordinates=i32([[0, 0, 0], [-3, 0, 0]]))
""", Raises(r"negative batch"))
add("conv/out_coordinates_wrong_columns", """
    so.ops.conv(sparse(SQUARE), weights([3, 3, 2, 4]),
                out_coordinates=i32([[0, 0, 0, 0]]))
""", Raises(r"out_coordinates|column"))
add("conv/rows_mismatch_hidden_in_tf_function", """
    # Row counts unknown while tracing: 5 feature rows for 4 sites.
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([None, 3], tf.int32)])
    def f(feats, coords):
        return so.ops.conv(so.SparseTensor(feats, coords),
                           weights([3, 3, 2, 4])).features
    f(tf.ones([5, 2]), i32(SQUARE)).numpy()
""", Raises(r"rows|features|coordinates"))
add("conv/rows_mismatch_fewer_features_in_tf_function", """
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([None, 3], tf.int32)])
    def f(feats, coords):
        return so.ops.conv(so.SparseTensor(feats, coords),
                           weights([3, 3, 2, 4])).features
    f(tf.ones([3, 2]), i32(SQUARE)).numpy()
""", Raises(r"rows|features|coordinates|kernel map|indices"))
add("conv/strides_zero", """
    so.ops.conv(sparse(SQUARE), weights([3, 3, 2, 4]), strides=0)
""", Raises(r"stride"))
add("conv/dilation_zero", """
    so.ops.conv(sparse(SQUARE), weights([3, 3, 2, 4]), dilation_rate=0)
""", Raises(r"dilation"))

add("conv_transpose/kernel_channels_mismatch", """
    x = sparse([[0, 0, 0], [0, 2, 2]], channels=3, stride=2)
    so.ops.conv_transpose(x, weights([2, 2, 4, 2]), generative=True)
""", Raises(r"channel"))
add("conv_transpose/unknown_output_sites", """
    x = sparse([[0, 0, 0], [0, 2, 2]], channels=2, stride=2)
    so.ops.conv_transpose(x, weights([2, 2, 4, 2]))
""", Raises(r"coordinates=|generative", ("ValueError",)))
add("conv_transpose/stride_not_divisible", """
    x = sparse([[0, 0, 0], [0, 1, 1]], channels=2, stride=1)
    so.ops.conv_transpose(x, weights([2, 2, 4, 2]), strides=2, generative=True)
""", Raises(r"stride|divisible"))
add("conv_transpose/duplicate_input_sites", """
    x = sparse([[0, 2, 2], [0, 0, 0], [0, 2, 2]], channels=2, stride=2)
    fine = i32([[0, 2, 2], [0, 3, 3], [0, 0, 1]])
    so.ops.conv_transpose(x, weights([2, 2, 4, 2]), out_coordinates=fine)
""", Raises(r"duplicate"))
add("conv_transpose/negative_batch", """
    x = sparse([[0, 2, 2], [-1, 0, 0]], channels=2, stride=2)
    so.ops.conv_transpose(x, weights([2, 2, 4, 2]), generative=True)
""", Raises(r"negative batch"))

add("kernel_map/duplicate_sites", """
    c = i32([[0, 1, 1], [0, 2, 1], [0, 1, 1]])
    so.ops.kernel_map(c, c, so.kernel_offsets(3, dimension=2))
""", Raises(r"duplicate"))
add("kernel_map/duplicate_sites_distinct_out", """
    c = i32([[0, 1, 1], [0, 2, 1], [0, 1, 1]])
    so.ops.kernel_map(c, i32([[0, 1, 1]]), so.kernel_offsets(3, dimension=2))
""", Raises(r"duplicate"))
add("kernel_map/negative_batch", """
    c = i32([[0, 1, 1], [-5, 2, 1]])
    so.ops.kernel_map(c, c, so.kernel_offsets(3, dimension=2))
""", Raises(r"negative batch"))
add("kernel_map/offsets_wrong_columns", """
    c = i32(SQUARE)
    so.ops.kernel_map(c, c, so.kernel_offsets(3, dimension=3))
""", Raises(r"offsets"))
add("kernel_map/stride_zero", """
    c = i32(SQUARE)
    so.ops.kernel_map(c, c, OFFSETS3, stride=0)
""", Raises(r"stride"))
add("kernel_map/stride_negative", """
    c = i32(SQUARE)
    so.ops.kernel_map(c, c, OFFSETS3, stride=(1, -1))
""", Raises(r"stride"))

# -- keys that would overflow 63 bits, coordinates that would overflow int32 ----

FULL3 = "[[0, I32MIN, I32MIN, I32MIN], [7, I32MAX, I32MAX, I32MAX], [3, 0, 5, -9]]"
add("overflow/conv_key_3_axes_plus_batch", f"""
    so.ops.conv(sparse({FULL3}), weights([3, 3, 3, 2, 4])).features.numpy()
""", Raises(r"64-bit key|span|overflow"))
add("overflow/strided_conv_key_3_axes_plus_batch", f"""
    so.ops.conv(sparse({FULL3}), weights([2, 2, 2, 2, 4]), strides=2
                ).features.numpy()
""", Raises(r"64-bit key|span|overflow"))
add("overflow/kernel_map_key_3_axes_plus_batch", f"""
    c = i32({FULL3})
    so.ops.kernel_map(c, c, so.kernel_offsets(3, dimension=3))[1].numpy()
""", Raises(r"64-bit key|span|overflow"))
add("overflow/kernel_map_key_2_full_axes", """
    # 2 * 32 bits: one bit too many.
    c = i32([[0, I32MIN, I32MIN], [0, I32MAX, I32MAX]])
    so.ops.kernel_map(c, c, OFFSETS3)[1].numpy()
""", Raises(r"64-bit key|span|overflow"))
add("overflow/conv_key_in_tf_function", f"""
    x = sparse({FULL3})
    w = weights([3, 3, 3, 2, 4])
    f = tf.function(lambda feats, coords: so.ops.conv(
        so.SparseTensor(feats, coords), w).features)
    f(x.features, x.coordinates).numpy()
""", Raises(r"64-bit key|span|overflow"))
add("overflow/reference_product_just_above_2_63", """
    # Axis spans 252017 * 11949 * 3062868337 = 2**63 + 13 (all odd, so the
    # stride-2 output sites equal the input sites). Either a clean error or the
    # right output sites; never keys that wrap around.
    lo = np.array([0, 0, -1531434168])
    span = np.array([252017, 11949, 3062868337])
    c = np.array([[0, *lo], [0, *(lo + span - 1)], [0, *(lo + 2 * (span // 4))]])
    x = sparse(c)
    y = so.ops.conv(x, weights([2, 2, 2, 2, 3]), strides=2)
    got = sorted(map(tuple, to_np(y.coordinates).tolist()))
    assert got == sorted(map(tuple, c.tolist())), got
""", OkOrRaises(r"64-bit key|span|overflow"))
add("overflow/conv_transpose_generative_above_int32", """
    x = sparse([[0, 0], [0, I32MAX - 1]], stride=2, cols=2)
    so.ops.conv_transpose(x, weights([3, 4, 2]), strides=2, generative=True
                          ).features.numpy()
""", Raises(r"overflow|int32"))
add("overflow/conv_transpose_generative_below_int32", """
    x = sparse([[0, I32MIN], [0, 0]], stride=2, cols=2)
    so.ops.conv_transpose(x, weights([4, 4, 2]), strides=2, generative=True
                          ).features.numpy()
""", Raises(r"overflow|int32"))
add("overflow/strided_conv_below_int32", """
    # floor(I32MIN / 3) * 3 < I32MIN: no int32 output site exists.
    x = sparse([[0, I32MIN], [0, 0]], cols=2)
    so.ops.conv(x, weights([3, 2, 2]), strides=3).features.numpy()
""", Raises(r"int32|range|overflow"))

# == raw ops: garbage kernel maps, strides, shapes ============================

for op in ("conv", "backprop_input", "backprop_kernel"):
    # label -> keyword arguments (source) replacing parts of the valid map GOOD.
    garbage = {
        "in_row_too_large": "in_rows=[0, 1, 3]",
        "in_row_negative": "in_rows=[0, -1, 2]",
        "in_row_int32_max": "in_rows=[0, I32MAX, 2]",
        "in_row_int32_min": "in_rows=[0, I32MIN, 2]",
        "out_row_too_large": "out_rows=[0, 2, 0]",
        "out_row_negative": "out_rows=[-1, 1, 0]",
        "out_row_int32_min": "out_rows=[0, 1, I32MIN]",
        "out_rows_not_increasing": "out_rows=[1, 0, 0]",
        "splits_not_monotone": "splits=[0, 4, 3]",
        "splits_negative_middle": "splits=[0, -1, 3]",
        "splits_not_starting_at_0": "splits=[1, 2, 3]",
        "splits_end_beyond_pairs": "splits=[0, 2, 5]",
        "splits_end_before_pairs": "splits=[0, 1, 2]",
        "splits_huge": "splits=[0, 2**40, 3]",
        "splits_int64_min": "splits=[0, -2**63, 3]",
        "splits_empty": "splits=np.zeros([0], np.int64)",
        "splits_rank2": "splits=[[0, 2, 3]]",
        "rows_length_mismatch": "in_rows=[0, 1]",
        "rows_rank2": "in_rows=[[0, 1, 2]], out_rows=[[0, 1, 0]]",
        "rows_int64": "in_rows=tf.constant([0, 1, 2], tf.int64)",
    }
    if op != "backprop_kernel":
        garbage.update({
            "kernel_k_mismatch": "kernel=np.ones([3, 2, 4])",
            "kernel_rank2": "kernel=np.ones([2, 8])",
        })
    if op == "conv":
        garbage.update({
            "num_out_rows_negative": "n_out=-1",
            "num_out_rows_int64_min": "n_out=-2**63",
            "num_out_rows_huge": "n_out=2**40",
            "num_out_rows_vector": "n_out=[2]",
            "kernel_cin_mismatch": "kernel=np.ones([2, 3, 4])",
            "features_rank1": "features=np.ones([3])",
            "features_rank3": "features=np.ones([3, 2, 1])",
            "features_int": "features=tf.ones([3, 2], tf.int32)",
            "features_string": "features=tf.constant([['a', 'b']] * 3)",
            "kernel_dtype_mismatch": "kernel=tf.ones([2, 2, 4], tf.float64)",
        })
    if op == "backprop_input":
        garbage.update({
            "num_in_rows_negative": "n_in=-1",
            "num_in_rows_too_small": "n_in=2",
            "kernel_cout_mismatch": "kernel=np.ones([2, 2, 5])",
            "grad_rank1": "grad=np.ones([8])",
        })
    if op == "backprop_kernel":
        garbage.update({
            "features_rank1": "features=np.ones([3])",
            "grad_rank3": "grad=np.ones([2, 4, 1])",
            "grad_too_few_rows": "grad=np.ones([1, 4])",
            "features_too_few_rows": "features=np.ones([2, 2])",
            "dtype_mismatch": "grad=tf.ones([2, 4], tf.float64)",
        })
    for label, over_src in garbage.items():
        add(f"raw_{op}/{label}", f"""
            RAW_CONV_OPS[{op!r}]({over_src}).numpy()
        """, Raises(r"kernel map|offset_splits|in_rows|out_rows|num_out_rows|"
                    r"num_in_rows|kernel must|features must|grad_output must|"
                    r"expected to be a|allowed values"),
            impls=("raw",))
    add(f"raw_{op}/valid_map_sanity", f"""
        out = RAW_CONV_OPS[{op!r}]().numpy()
        f, g, w = GOOD["features"], GOOD["grad"], GOOD["kernel"]
        pairs = [(0, 0, 0), (0, 1, 1), (1, 2, 0)]  # (k, in, out)
        if {op!r} == "conv":
            want = np.zeros([2, 4])
            for k, i, o in pairs:
                want[o] += f[i] @ w[k]
        elif {op!r} == "backprop_input":
            want = np.zeros([3, 2])
            for k, i, o in pairs:
                want[i] += g[o] @ w[k].T
        else:
            want = np.zeros([2, 2, 4])
            for k, i, o in pairs:
                want[k] += np.outer(f[i], g[o])
        np.testing.assert_allclose(out, want)
    """, OK, impls=("raw",))

add("raw_conv/empty_everything", """
    out = raw_conv(features=np.zeros([0, 2]), splits=[0, 0, 0], in_rows=[],
                   out_rows=[], n_out=0)
    assert out.shape == (0, 4), out.shape
""", OK, impls=("raw",))
add("raw_conv/empty_map_with_outputs", """
    out = raw_conv(features=np.zeros([0, 2]), splits=[0, 0, 0], in_rows=[],
                   out_rows=[], n_out=3).numpy()
    assert out.shape == (3, 4) and not out.any()
""", OK, impls=("raw",))
add("raw_conv/zero_offsets", """
    out = raw_conv(kernel=np.zeros([0, 2, 4]), splits=[0], in_rows=[],
                   out_rows=[]).numpy()
    assert out.shape == (2, 4) and not out.any()
""", OK, impls=("raw",))
add("raw_conv/zero_channels", """
    out = raw_conv(features=np.zeros([3, 0]), kernel=np.zeros([2, 0, 4])).numpy()
    assert out.shape == (2, 4) and not out.any()
""", OK, impls=("raw",))
add("raw_backprop_input/empty_everything", """
    out = raw_backprop_input(grad=np.zeros([0, 4]), splits=[0, 0, 0], in_rows=[],
                             out_rows=[], n_in=0)
    assert out.shape == (0, 2), out.shape
""", OK, impls=("raw",))
add("raw_backprop_input/empty_map_with_inputs", """
    out = raw_backprop_input(grad=np.zeros([0, 4]), splits=[0, 0, 0], in_rows=[],
                             out_rows=[], n_in=5).numpy()
    assert out.shape == (5, 2) and not out.any()
""", OK, impls=("raw",))
add("raw_backprop_kernel/empty_everything", """
    out = raw_backprop_kernel(features=np.zeros([0, 2]), grad=np.zeros([0, 4]),
                              splits=[0, 0, 0], in_rows=[], out_rows=[]).numpy()
    assert out.shape == (2, 2, 4) and not out.any()
""", OK, impls=("raw",))
add("raw_backprop_kernel/zero_offsets", """
    out = raw_backprop_kernel(splits=[0], in_rows=[], out_rows=[]).numpy()
    assert out.shape == (0, 2, 4)
""", OK, impls=("raw",))
add("raw_conv/graph_mode_rank_errors_at_trace", """
    f = tf.function(lambda feats: raw_conv(features=feats))
    f.get_concrete_function(tf.TensorSpec([3], tf.float32))
""", Raises(r"rank|shape", ("ValueError", "InvalidArgumentError")), impls=("raw",))

# == raw pooling ops: garbage kernel maps and batch indices =====================

# The map ops of pooling on the valid map GOOD (3 input rows, 2 output rows).
RAW_POOL = """
def raw_pool(op, average=False, **over):
    a = _args(over)
    if op == "max_pool":
        return lib.sparse_ops_max_pool(_f(a["features"]), *_map_args(a), _i64(a["n_out"]))[0]
    if op == "sum_pool":
        return lib.sparse_ops_sum_pool(_f(a["features"]), *_map_args(a), _i64(a["n_out"]),
                                       average=average)
    return lib.sparse_ops_sum_pool_transpose(_f(a["grad"]), *_map_args(a), _i64(a["n_in"]),
                                             average=average)
"""
POOL_GARBAGE = {
    "in_row_too_large": "in_rows=[0, 1, 3]",
    "in_row_negative": "in_rows=[0, -1, 2]",
    "in_row_int32_min": "in_rows=[0, I32MIN, 2]",
    "out_row_too_large": "out_rows=[0, 2, 0]",
    "out_row_negative": "out_rows=[-1, 1, 0]",
    "out_rows_not_increasing": "out_rows=[1, 0, 0]",
    "splits_not_monotone": "splits=[0, 4, 3]",
    "splits_not_starting_at_0": "splits=[1, 2, 3]",
    "splits_end_beyond_pairs": "splits=[0, 2, 5]",
    "splits_huge": "splits=[0, 2**40, 3]",
    "splits_empty": "splits=np.zeros([0], np.int64)",
    "rows_length_mismatch": "in_rows=[0, 1]",
    "rows_rank2": "in_rows=[[0, 1, 2]], out_rows=[[0, 1, 0]]",
    "num_out_rows_negative": "n_out=-1",
    "num_out_rows_huge": "n_out=2**40",
    "num_in_rows_negative": "n_in=-1",
    "num_in_rows_too_small": "n_in=2",
    "features_rank1": "features=np.ones([3]), grad=np.ones([2])",
    "features_int": "features=tf.ones([3, 2], tf.int32), grad=tf.ones([2, 4], tf.int32)",
}
for op in ("max_pool", "sum_pool", "sum_pool_transpose"):
    for average in ((False,) if op == "max_pool" else (False, True)):
        for label, over_src in POOL_GARBAGE.items():
            takes = "n_in" if op == "sum_pool_transpose" else "n_out"
            if over_src.startswith(("n_in", "n_out")) and not over_src.startswith(takes):
                continue  # a row count the op does not take
            add(f"raw_{op}{'_avg' if average else ''}/{label}", RAW_POOL + f"""
raw_pool({op!r}, {average}, {over_src}).numpy()
""", Raises(r"kernel map|offset_splits|in_rows|out_rows|num_out_rows|num_in_rows|"
            r"features must|rank|shape|expected to be a|allowed values"),
                impls=("raw",))
    add(f"raw_{op}/valid_map_sanity", RAW_POOL + f"""
f = np.arange(6.0).reshape(3, 2)
g = np.arange(8.0).reshape(2, 4) - 3
pairs = [(0, 0), (1, 1), (2, 0)]  # (in, out)
count = {{0: 2, 1: 1}}
for average in (False, True):
    got = raw_pool({op!r}, average, features=f, grad=g).numpy()
    if {op!r} == "max_pool":
        want = np.array([np.maximum(f[0], f[2]), f[1]])
    elif {op!r} == "sum_pool":
        want = np.zeros([2, 2])
        for i, o in pairs:
            want[o] += f[i] / (count[o] if average else 1)
    else:
        want = np.zeros([3, 4])
        for i, o in pairs:
            want[i] += g[o] / (count[o] if average else 1)
    np.testing.assert_allclose(got, want)
""", OK, impls=("raw",))
    add(f"raw_{op}/empty_everything", RAW_POOL + f"""
out = raw_pool({op!r}, features=np.zeros([0, 2]), grad=np.zeros([0, 4]), splits=[0, 0, 0],
               in_rows=[], out_rows=[], n_out=0, n_in=0).numpy()
assert out.shape == ((0, 4) if {op!r} == "sum_pool_transpose" else (0, 2)), out.shape
""", OK, impls=("raw",))
add("raw_sum_pool_transpose/repeated_in_row_within_offset", RAW_POOL + """
raw_pool("sum_pool_transpose", in_rows=[0, 0, 2]).numpy()
""", Raises(r"kernel map"), impls=("raw",))
add("raw_sum_pool_transpose/empty_map_with_rows", RAW_POOL + """
out = raw_pool("sum_pool_transpose", True, grad=np.ones([2, 4]), splits=[0, 0, 0],
               in_rows=[], out_rows=[]).numpy()
np.testing.assert_array_equal(out, np.zeros([3, 4]))
""", OK, impls=("raw",))

RAW_GLOBAL = """
def raw_global(op, features=np.ones([3, 2]), batch=(0, 1, 1), num=2, average=False):
    f = features if isinstance(features, tf.Tensor) else tf.constant(features, tf.float32)
    b = batch if isinstance(batch, tf.Tensor) else tf.constant(np.asarray(batch, np.int32))
    n = num if isinstance(num, tf.Tensor) else tf.constant(num, tf.int64)
    if op == "max":
        return lib.sparse_ops_global_max_pool(f, b, n)[0]
    if op == "sum":
        return lib.sparse_ops_global_sum_pool(f, b, n, average=average)
    return lib.sparse_ops_global_sum_pool_grad(f, b, average=average)  # f: [B, C]
"""
GLOBAL_GARBAGE = {
    "batch_too_large": "batch=[0, 1, 2]",
    "batch_negative": "batch=[0, -1, 1]",
    "batch_int32_min": "batch=[0, I32MIN, 1]",
    "batch_int32_max": "batch=[I32MAX, 0, 1]",
    "batch_too_short": "batch=[0, 1]",
    "batch_rank2": "batch=[[0, 1, 1]]",
    "batch_int64": "batch=tf.constant([0, 1, 1], tf.int64)",
    "num_batches_negative": "num=-1",
    "num_batches_huge": "num=2**40",
    "num_batches_vector": "num=[2]",
    "features_rank1": "features=np.ones([3])",
    "zero_channels_bad_batch": "features=np.ones([3, 0]), batch=[0, 5, 1]",
}
for op in ("max", "sum", "grad"):
    for label, over_src in GLOBAL_GARBAGE.items():
        if op == "grad" and label.startswith(("num_batches", "batch_too_short")):
            continue  # the gradient takes B from grad_output and N from batch_index
        if op == "grad":
            over_src = over_src.replace("np.ones([3, 0])", "np.ones([2, 0])")
            if "features" not in over_src:
                over_src += ", features=np.ones([2, 2])"
        add(f"raw_global_{op}_pool/{label}", RAW_GLOBAL + f"""
raw_global({op!r}, {over_src}).numpy()
""", Raises(r"batch|num_batches|features must|grad_output must|rank|shape|"
            r"expected to be a|allowed values"), impls=("raw",))
add("raw_global_pool/valid_and_empty", RAW_GLOBAL + """
f = np.array([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]])
np.testing.assert_allclose(raw_global("max", f, (1, 0, 1), 3), [[3, 4], [1, 6], [0, 0]])
np.testing.assert_allclose(raw_global("sum", f, (1, 0, 1), 3, True), [[3, 4], [-2, 2], [0, 0]])
np.testing.assert_allclose(raw_global("grad", f[:2], (1, 1, 0), average=True),
                           [[1.5, 2], [1.5, 2], [1, -2]])
for op in ("max", "sum"):
    assert raw_global(op, np.zeros([0, 2]), (), 0).shape == (0, 2)
    np.testing.assert_array_equal(raw_global(op, np.zeros([0, 2]), (), 2), np.zeros([2, 2]))
    assert raw_global(op, np.zeros([3, 0]), (0, 1, 1), 2).shape == (2, 0)
assert raw_global("grad", np.zeros([0, 2]), ()).shape == (0, 2)
""", OK, impls=("raw",))

RAW_KM_BAD = {
    "in_rank1": ("in_c=i32([0, 1, 2])", r"in_coordinates|rank|shape"),
    "in_zero_columns": ("in_c=tf.zeros([4, 0], tf.int32)",
                        r"in_coordinates|column|\[N, 1 \+ D\]"),
    "in_one_column": ("in_c=i32([[0], [1]])", r"in_coordinates|column|\[N, 1 \+ D\]"),
    "in_40_columns": ("in_c=tf.zeros([2, 40], tf.int32)",
                      r"in_coordinates|column|\[N, 1 \+ D\]"),
    "in_33_columns": ("in_c=tf.zeros([1, 33], tf.int32)",
                      r"in_coordinates|column|\[N, 1 \+ D\]"),
    "out_40_columns": ("out_c=tf.zeros([2, 40], tf.int32)",
                       r"out_coordinates|column|\[N, 1 \+ D\]"),
    "column_mismatch": ("out_c=i32([[0, 0, 0, 0]])", r"column"),
    "offsets_wrong_columns": ("offsets=i32([[0, 0, 0]])", r"offsets"),
    "offsets_rank1": ("offsets=i32([0, 0])", r"offsets|rank"),
    "stride_wrong_length": ("stride=(1, 1, 1)", r"stride"),
    "stride_scalar": ("stride=tf.constant(1)", r"stride|rank"),
    "stride_zero": ("stride=(1, 0)", r"stride"),
    "stride_negative": ("stride=(-2, 1)", r"stride"),
    "stride_int32_min": ("stride=(I32MIN, 1)", r"stride"),
    "negative_batch_in": ("in_c=i32([[0, 0, 0], [-1, 0, 1]])", r"negative batch"),
    "negative_batch_out": ("out_c=i32([[0, 0, 0], [I32MIN, 0, 1]])",
                           r"negative batch"),
    "duplicate_in": ("in_c=i32([[0, 0, 0], [0, 1, 1], [0, 0, 0]])", r"duplicate"),
    "key_overflow": (f"in_c=i32({FULL3}), out_c=i32({FULL3}), "
                     "offsets=so.kernel_offsets(3, dimension=3), stride=(1, 1, 1)",
                     r"64-bit key|span|overflow"),
    "string_coordinates": ("in_c=tf.constant([['0', '0', '0']])",
                           r"int32|string|type|dtype"),
    "int64_coordinates": ("in_c=tf.constant([[0, 0, 0]], tf.int64)",
                          r"int32|int64|type|dtype"),
}
for label, (args, pattern) in RAW_KM_BAD.items():
    add(f"raw_kernel_map/{label}", f"""
        [t.numpy() for t in raw_kernel_map({args})]
    """, Raises(pattern), impls=("raw",))

add("raw_kernel_map/valid_map_sanity", """
    # Map of SQUARE onto itself, 3x3 kernel: checked pair by pair.
    splits, ins, outs = (t.numpy() for t in raw_kernel_map())
    sq = np.asarray(SQUARE)
    off = OFFSETS3.numpy()
    want = set()
    for k, o in enumerate(off):
        for oi, oc in enumerate(sq):
            for ii, ic in enumerate(sq):
                if ic[0] == oc[0] and np.all(ic[1:] == oc[1:] + o):
                    want.add((k, ii, oi))
    got = {(k, int(ins[p]), int(outs[p])) for k in range(len(off))
           for p in range(splits[k], splits[k + 1])}
    assert got == want and len(ins) == len(want)
""", OK, impls=("raw",))
add("raw_kernel_map/same_tensor_symmetric_regions", """
    # The same tensor as input and output lets symmetric offsets be probed half
    # and mirrored; the pairs must equal the brute-force map all the same.
    rng = np.random.default_rng(3)
    pts = {(int(b), int(x), int(y)) for b, x, y in zip(rng.integers(0, 2, 40),
                                                        rng.integers(-4, 4, 40),
                                                        rng.integers(-4, 4, 40))}
    c = i32(sorted(pts), 3)
    regions = [OFFSETS3, so.kernel_offsets(5, region="hypercross", dimension=2),
               i32([[2, -1], [0, 0], [-2, 1]], 2), i32([[1, 0], [-1, 0]], 2),
               i32([[1, 1], [0, 1], [0, -1], [-1, -1]], 2)]
    for off in regions:
        for stride in ([1, 1], [2, 1]):
            s_, ins, outs = (t.numpy() for t in raw_kernel_map(
                in_c=c, out_c=c, offsets=off, stride=stride))
            cn, on = c.numpy(), off.numpy()
            index = {tuple(r): i for i, r in enumerate(cn.tolist())}
            want = set()
            for k, o in enumerate(on):
                for oi, r in enumerate(cn):
                    n = (r[0], r[1] + o[0] * stride[0], r[2] + o[1] * stride[1])
                    if n in index:
                        want.add((k, index[n], oi))
            got = {(k, int(ins[p]), int(outs[p])) for k in range(len(on))
                   for p in range(s_[k], s_[k + 1])}
            assert got == want and len(ins) == len(want), (on.tolist(), stride)
            for k in range(len(on)):  # sorted by output row within an offset
                assert np.all(np.diff(outs[s_[k]:s_[k + 1]]) > 0)
""", OK, impls=("raw",))
add("raw_kernel_map/empty_in", """
    s, i, o = raw_kernel_map(in_c=tf.zeros([0, 3], tf.int32))
    assert list(s.numpy()) == [0] * 10 and i.shape == (0,) and o.shape == (0,)
""", OK, impls=("raw",))
add("raw_kernel_map/empty_out", """
    s, i, o = raw_kernel_map(out_c=tf.zeros([0, 3], tf.int32))
    assert list(s.numpy()) == [0] * 10 and i.shape == (0,) and o.shape == (0,)
""", OK, impls=("raw",))
add("raw_kernel_map/empty_both", """
    e = tf.zeros([0, 3], tf.int32)
    s, i, o = raw_kernel_map(in_c=e, out_c=e)
    assert list(s.numpy()) == [0] * 10 and i.shape == (0,) and o.shape == (0,)
""", OK, impls=("raw",))
add("raw_kernel_map/zero_offsets", """
    s, i, o = raw_kernel_map(offsets=tf.zeros([0, 2], tf.int32))
    assert list(s.numpy()) == [0] and i.shape == (0,)
""", OK, impls=("raw",))
add("raw_kernel_map/huge_offsets_and_stride", """
    # offsets * stride far outside int32: no pairs, no wrap-around.
    s, i, o = raw_kernel_map(offsets=i32([[I32MAX, I32MAX], [I32MIN, 0]]),
                             stride=(I32MAX, I32MAX))
    assert list(s.numpy()) == [0, 0, 0]
""", OK, impls=("raw",))
add("raw_kernel_map/near_int32_limits", """
    c = i32([[0, I32MAX, 0], [0, I32MAX - 1, 0], [0, I32MIN, 0]])
    s, ins, outs = (t.numpy() for t in raw_kernel_map(in_c=c, out_c=c))
    # Only the two sites 1 apart along axis 1 are neighbours: no wrap-around
    # from I32MAX + 1 to I32MIN.
    off = OFFSETS3.numpy()
    got = {(tuple(off[k]), int(ins[p]), int(outs[p])) for k in range(len(off))
           for p in range(s[k], s[k + 1])}
    want = {((0, 0), 0, 0), ((0, 0), 1, 1), ((0, 0), 2, 2),
            ((-1, 0), 1, 0), ((1, 0), 0, 1)}
    assert got == want, got
""", OK, impls=("raw",))

RAW_STRIDED_BAD = {
    "stride_zero": ("i32(SQUARE), i32([0, 1])", r"stride"),
    "stride_negative": ("i32(SQUARE), i32([2, -2])", r"stride"),
    "stride_wrong_length": ("i32(SQUARE), i32([2])", r"stride"),
    "stride_rank2": ("i32(SQUARE), i32([[2, 2]])", r"stride|rank"),
    "zero_columns": ("tf.zeros([3, 0], tf.int32), i32([])",
                     r"coordinates|column|\[N, 1 \+ D\]"),
    "one_column": ("i32([[0], [1]]), tf.zeros([0], tf.int32)",
                   r"coordinates|column|\[N, 1 \+ D\]"),
    "40_columns": ("tf.zeros([2, 40], tf.int32), tf.ones([39], tf.int32)",
                   r"coordinates|column|\[N, 1 \+ D\]"),
    "rank1": ("i32([0, 1, 2]), i32([1, 1])", r"coordinates|rank"),
    "negative_batch": ("i32([[0, 0, 0], [-1, 2, 2]]), i32([2, 2])",
                       r"negative batch"),
    "below_int32": ("i32([[0, I32MIN]]), i32([3])", r"int32|range"),
    "key_overflow": (f"i32({FULL3}), i32([1, 1, 1])", r"64-bit key|span|overflow"),
}
for label, (args, pattern) in RAW_STRIDED_BAD.items():
    add(f"raw_strided/{label}", f"""
        lib.sparse_ops_strided_coordinates({args}).numpy()
    """, Raises(pattern), impls=("raw",))

add("raw_strided/valid_and_edge_cases", """
    c = rows([[0, 5, -3], [0, 4, -4], [1, 5, -3], [0, I32MAX, I32MIN]], 3)
    out = lib.sparse_ops_strided_coordinates(i32(c), i32([3, 2])).numpy()
    s = np.array([1, 3, 2])
    want = sorted({tuple((r // s) * s) for r in c})
    assert sorted(map(tuple, out.tolist())) == want, out
    e = lib.sparse_ops_strided_coordinates(tf.zeros([0, 3], tf.int32), i32([2, 2]))
    assert e.shape == (0, 3)
    c = rows([[0, 5, 3], [0, I32MAX, 7], [1, -I32MAX, 0]], 3)
    big = lib.sparse_ops_strided_coordinates(i32(c), i32([I32MAX, I32MAX])).numpy()
    want = sorted({tuple((r // [1, I32MAX, I32MAX]) * [1, I32MAX, I32MAX])
                   for r in c})
    assert sorted(map(tuple, big.tolist())) == want, big
""", OK, impls=("raw",))

RAW_GEN_BAD = {
    "above_int32": ("i32([[0, I32MAX - 1]]), i32([[0], [2]]), i32([1])",
                    r"overflow|int32"),
    "below_int32": ("i32([[0, I32MIN + 1]]), i32([[-1], [-2]]), i32([1])",
                    r"overflow|int32"),
    "stride_overflow": ("i32([[0, 0]]), i32([[2]]), i32([I32MAX])",
                        r"overflow|int32"),
    "stride_zero": ("i32([[0, 0, 0]]), i32([[1, 1]]), i32([0, 1])", r"stride"),
    "stride_negative": ("i32([[0, 0, 0]]), i32([[1, 1]]), i32([1, -1])", r"stride"),
    "offsets_wrong_columns": ("i32([[0, 0, 0]]), i32([[1]]), i32([1, 1])",
                              r"offsets"),
    "zero_columns": ("tf.zeros([2, 0], tf.int32), tf.zeros([1, 0], tf.int32), "
                     "i32([])", r"coordinates|column|\[N, 1 \+ D\]"),
    "40_columns": ("tf.zeros([2, 40], tf.int32), tf.zeros([1, 39], tf.int32), "
                   "tf.ones([39], tf.int32)", r"coordinates|column|\[N, 1 \+ D\]"),
    "negative_batch": ("i32([[-1, 0, 0]]), i32([[1, 1]]), i32([1, 1])",
                       r"negative batch"),
    "key_overflow": (f"i32({FULL3}), i32([[0, 0, 0]]), i32([1, 1, 1])",
                     r"64-bit key|span|overflow"),
}
for label, (args, pattern) in RAW_GEN_BAD.items():
    add(f"raw_generative/{label}", f"""
        lib.sparse_ops_generative_coordinates({args}).numpy()
    """, Raises(pattern), impls=("raw",))

add("raw_generative/valid_and_edge_cases", """
    c = rows([[0, 0, 0], [0, 1, 0], [1, I32MAX - 1, 0], [1, I32MIN, -1]], 3)
    off = rows([[0, 0], [1, 0], [0, 1]], 2)
    out = lib.sparse_ops_generative_coordinates(i32(c), i32(off), i32([1, 1]))
    want = sorted({(r[0], r[1] + o[0], r[2] + o[1]) for r in c.tolist()
                   for o in off.tolist()})
    assert sorted(map(tuple, out.numpy().tolist())) == want
    e = lib.sparse_ops_generative_coordinates(tf.zeros([0, 3], tf.int32), i32(off),
                                              i32([1, 1]))
    assert e.shape == (0, 3)
    k0 = lib.sparse_ops_generative_coordinates(i32(c), tf.zeros([0, 2], tf.int32),
                                               i32([1, 1]))
    assert k0.shape == (0, 3)
""", OK, impls=("raw",))

# == 0 and 40 spatial columns through the public ops ===========================

add("conv/40_columns", """
    # 39 spatial axes: supported and right (a 1x..x1 kernel is a matmul), or
    # a clean error naming the number of columns.
    c = np.zeros([2, 40], np.int64)
    c[1, 5] = 1
    x = sparse(c)
    w = weights([1] * 39 + [2, 3])
    y = so.ops.conv(x, w)
    np.testing.assert_allclose(to_np(y.features),
                               to_np(x.features) @ to_np(w).reshape(2, 3), rtol=1e-5)
""", OkOrRaises(r"column|\[N, 1 \+ D\]|dimension"))
add("kernel_map/40_columns", """
    c = tf.zeros([1, 40], tf.int32)
    s, i, o = so.ops.kernel_map(c, c, tf.zeros([1, 39], tf.int32))
    assert list(to_np(s)) == [0, 1] and list(to_np(i)) == [0]
""", OkOrRaises(r"column|\[N, 1 \+ D\]|dimension"))
add("kernel_map/zero_columns", """
    c = tf.zeros([1, 0], tf.int32)
    so.ops.kernel_map(c, c, tf.zeros([1, 0], tf.int32))
""", Raises(r"column|coordinates"))

# == empty tensors, single sites, int32 limits: must work =====================

add("empty/conv_stride1", """
    x = sparse(np.zeros([0, 3]))
    y = so.ops.conv(x, weights([3, 3, 2, 4]), bias=tf.ones([4]))
    assert y.features.shape == (0, 4) and y.coordinates.shape == (0, 3)
    assert y.stride == (1, 1)
""", OK)
add("empty/conv_stride2_and_transpose_back", """
    x = sparse(np.zeros([0, 4]))
    y = so.ops.conv(x, weights([2, 2, 2, 2, 4]), strides=2)
    assert to_np(y.features).shape == (0, 4) and y.coordinates.shape[0] == 0
    assert y.stride == (2, 2, 2)
    z = so.ops.conv_transpose(y, weights([2, 2, 2, 5, 4]), strides=2)
    assert to_np(z.features).shape == (0, 5) and z.coordinates.shape[0] == 0
    assert z.stride == (1, 1, 1)
""", OK)
add("empty/conv_transpose_generative_and_out_coordinates", """
    x = sparse(np.zeros([0, 3]), stride=2)
    w = weights([2, 2, 3, 2])
    z = so.ops.conv_transpose(x, w, generative=True)
    assert to_np(z.features).shape == (0, 3) and z.coordinates.shape[0] == 0
    z = so.ops.conv_transpose(x, w, out_coordinates=tf.zeros([0, 3], tf.int32))
    assert to_np(z.features).shape == (0, 3)
    z = so.ops.conv_transpose(x, w, bias=tf.ones([3]),
                              out_coordinates=i32([[0, 1, 1], [1, 0, 0]]))
    np.testing.assert_allclose(to_np(z.features), np.ones([2, 3]))
""", OK)
add("empty/conv_to_given_out_coordinates", """
    x = sparse(np.zeros([0, 3]))
    b = tf.constant([1.0, 2.0, 3.0, 4.0])
    y = so.ops.conv(x, weights([3, 3, 2, 4]), bias=b,
                    out_coordinates=i32([[0, 1, 1], [2, 0, 5]]))
    np.testing.assert_allclose(to_np(y.features), np.tile(to_np(b), [2, 1]))
""", OK)
add("empty/conv_gradients", """
    x = sparse(np.zeros([0, 3]))
    w = tf.Variable(weights([3, 3, 2, 4]))
    f = tf.Variable(x.features)
    with tf.GradientTape() as tape:
        y = so.ops.conv(so.SparseTensor(f, x.coordinates), w, strides=1)
        loss = tf.reduce_sum(y.features)
    gf, gw = tape.gradient(loss, [f, w])
    assert tf.convert_to_tensor(gf).shape == (0, 2)
    assert gw is None or not to_np(gw).any()
""", OK)
add("empty/kernel_map_and_tf_function", """
    e = tf.zeros([0, 3], tf.int32)
    s, i, o = so.ops.kernel_map(e, e, OFFSETS3)
    assert list(to_np(s)) == [0] * 10 and to_np(i).shape == (0,)

    @tf.function
    def f(feats, coords):
        y = so.ops.conv(so.SparseTensor(feats, coords), weights([2, 2, 2, 4]),
                        strides=2)
        return y.features, y.coordinates
    feats, coords = f(tf.zeros([0, 2]), e)
    assert feats.shape == (0, 4) and coords.shape == (0, 3)
""", OK)

add("single_site/conv_stride1", """
    x = sparse([[0, 3, 4]], channels=2)
    w = weights([3, 3, 2, 4])
    y = so.ops.conv(x, w)
    np.testing.assert_allclose(to_np(y.features), to_np(x.features) @ to_np(w)[1, 1],
                               rtol=1e-5, atol=1e-5)
    check_conv_dense(x, w, shape=[6, 6])
""", OK)
add("single_site/conv_strided_and_transpose", """
    x = sparse([[1, 3, 4, 5]], channels=2)
    w = weights([3, 3, 3, 2, 4])
    y = check_conv_dense(x, w, strides=2, shape=[2, 6, 6, 6])
    assert to_np(y.coordinates).tolist() == [[1, 2, 4, 4]]
    wt = weights([2, 2, 2, 3, 4])
    z = so.ops.conv_transpose(y, wt, strides=2)
    assert to_np(z.coordinates).tolist() == [[1, 3, 4, 5]]
    g = so.ops.conv_transpose(y, wt, strides=2, generative=True)
    dense = tf.nn.conv_transpose(y.dense(shape=[2, 3, 3, 3]), wt, [2, 6, 6, 6, 3],
                                 strides=2, padding="SAME")
    c = to_np(g.coordinates)
    assert len(c) == 8
    np.testing.assert_allclose(to_np(g.features), tf.gather_nd(dense, c).numpy(),
                               rtol=1e-4, atol=1e-4)
""", OK)

add("limits/conv_1d_full_range_plus_batch", """
    # Batch spans 31 bits and the axis 32: 63 bits, the most a key holds.
    c = [[0, I32MIN], [0, I32MAX - 1], [0, I32MAX], [I32MAX, I32MIN],
         [I32MAX, I32MAX]]
    x = sparse(c, channels=2, cols=2)
    w = weights([3, 2, 3])
    y = so.ops.conv(x, w)
    f = {tuple(r): v for r, v in zip(c, to_np(x.features))}
    W = to_np(w)
    # y[o] = sum_k x[o + k - 1] @ W[k], with no wrap-around at the limits.
    want = {}
    for site in f:
        acc = np.zeros(3)
        for k in range(3):
            n = (site[0], site[1] + k - 1)
            if n in f:
                acc += f[n] @ W[k]
        want[site] = acc
    expect_sites(y, want)
""", OK)
add("limits/conv_2d_near_int32_max_and_min", """
    pattern = [[0, 0, 0], [0, 1, 0], [0, 7, 7], [0, 6, 7], [1, 3, 2], [0, 2, 5]]
    w = weights([3, 3, 2, 4])
    for origin in ([I32MAX - 7, I32MIN], [I32MIN, I32MAX - 7]):
        c = rows(pattern, 3) + np.array([0, *origin])
        x = sparse(c)
        check_conv_dense(x, w, shape=[2, 8, 8], origin=origin)
""", OK)
add("limits/strided_conv_near_limits", """
    pattern = [[0, 0, 0], [0, 1, 0], [0, 7, 7], [0, 6, 7], [1, 3, 2], [0, 2, 5]]
    w = weights([3, 3, 2, 4])
    for origin in ([2**31 - 8, -2**31], [-2**31, 2**31 - 8]):
        c = rows(pattern, 3) + np.array([0, *origin])
        x = sparse(c)
        check_conv_dense(x, w, strides=2, shape=[2, 8, 8], origin=origin)
""", OK)
add("limits/strided_conv_1d_exact", """
    c = [[0, I32MIN], [0, I32MIN + 1], [0, I32MAX - 1], [0, I32MAX]]
    x = sparse(c, cols=2)
    w = weights([3, 2, 3])
    y = so.ops.conv(x, w, strides=2)
    f = {r[1]: v for r, v in zip(c, to_np(x.features))}
    W = to_np(w)
    # Stride 2, size 3: offsets 0, 1, 2 (SAME pads nothing before).
    want = {}
    for o in (I32MIN, I32MAX - 1):
        want[(0, o)] = sum((f[o + k] @ W[k] for k in range(3) if o + k in f),
                           np.zeros(3))
    expect_sites(y, want)
""", OK)
add("limits/conv_transpose_generative_at_limits", """
    c = [[0, I32MIN], [0, I32MAX - 1]]
    x = sparse(c, stride=2, cols=2)
    w = weights([2, 4, 2])  # [K, Cout, Cin]
    z = so.ops.conv_transpose(x, w, strides=2, generative=True)
    f = to_np(x.features)
    W = to_np(w)
    want = {}
    for row, site in enumerate((I32MIN, I32MAX - 1)):
        for k in range(2):
            want[(0, site + k)] = f[row] @ W[k].T
    expect_sites(z, want)
""", OK)


# == attention: the raw op and the public op ===================================

RAW_ATTENTION = r"""
def raw_attention(features=np.ones([3, 2]), coords=((0, 0), (1, 1), (0, 2)), k=1,
                  dtype=tf.float32, **attrs):
    f = features if isinstance(features, tf.Tensor) else tf.constant(features, dtype)
    c = coords if isinstance(coords, tf.Tensor) else tf.constant(
        np.asarray(coords, np.int64).astype(np.int32))
    k = k if isinstance(k, tf.Tensor) else tf.constant(k, tf.int64)
    keep, rows = lib.sparse_ops_attention(f, c, k, **attrs)
    return keep.numpy(), rows.numpy()
"""
RAW_ATTENTION_BAD = {
    "k_negative": ("k=-1", r"k must be a scalar >= 0"),
    "k_int64_min": ("k=-2**63", r"k must be a scalar >= 0"),
    "k_vector": ("k=tf.constant([1, 2], tf.int64)", r"k must be a scalar|rank|shape"),
    "k_int32": ("k=tf.constant(1, tf.int32)", r"int64|int32|type"),
    "features_rank1": ("features=tf.ones([3])", r"features|rank|shape"),
    "features_rank3": ("features=tf.ones([3, 2, 1])", r"features|rank|shape"),
    "rows_mismatch": ("features=np.ones([4, 2])", r"same number of rows|shape|dimension"),
    "rows_mismatch_unknown_shapes": (
        "features=tf.function(lambda: tf.ones([4, 2]))()", r"same number of rows|shape"),
    "coordinates_rank1": ("coords=tf.constant([0, 1, 2])", r"coordinates|rank"),
    "coordinates_one_column": ("coords=((0,), (1,), (0,))", r"coordinates|\[N, 1 \+ D\]"),
    "coordinates_40_columns": ("coords=tf.zeros([3, 40], tf.int32)",
                               r"coordinates|\[N, 1 \+ D\]"),
    "negative_batch": ("coords=((0, 0), (-1, 1), (0, 2))", r"negative batch"),
    "int32_min_batch": ("coords=((0, 0), (I32MIN, 1), (0, 2))", r"negative batch"),
    "int_features": ("features=tf.ones([3, 2], tf.int32)", r"float|type|T"),
    "mode_invalid": ("mode='max'", r"mode|value|abs"),
    "per_invalid": ("per='batch'", r"per|channel|site"),
}
for label, (args, pattern) in RAW_ATTENTION_BAD.items():
    add(f"raw_attention/{label}", RAW_ATTENTION + f"raw_attention({args})\n",
        Raises(pattern), impls=("raw",))

RAW_ATTENTION_OK = {
    # The brute force checks are in tests/test_attention.py; here: no crash,
    # and the shapes and a few hand-checked selections.
    "empty": ("features=np.zeros([0, 2]), coords=np.zeros([0, 3])",
              "keep.shape == (0, 2) and rows.shape == (0,)"),
    "empty_per_site": ("features=np.zeros([0, 2]), coords=np.zeros([0, 3]), per='site'",
                       "keep.shape == (0, 2) and rows.shape == (0,)"),
    "zero_channels": ("features=np.zeros([3, 0])",
                      "keep.shape == (3, 0) and rows.shape == (0,)"),
    "zero_channels_per_site": ("features=np.zeros([3, 0]), per='site'",
                               "keep.shape == (3, 0) and rows.shape == (0,)"),
    "k_zero": ("k=0", "not keep.any() and rows.shape == (0,)"),
    "k_int64_max": ("k=2**63 - 1", "keep.all() and list(rows) == [0, 1, 2]"),
    "int32_max_batch": ("coords=((I32MAX, 0), (0, 1), (I32MAX, 2))",
                        "keep.tolist() == [[True, True], [True, True], [False, False]]"),
    "huge_batch_gaps_many_rows": (
        "features=np.arange(64.0).reshape(32, 2), "
        "coords=[(b * 60000000, i) for i, b in enumerate(np.arange(32) % 3)]",
        "keep.sum() == 6 and list(rows) == [29, 30, 31]"),
    "all_nan": ("features=np.full([3, 2], np.nan)",
                "keep.tolist() == [[True, True], [True, True], [False, False]]"),
    "all_nan_per_site": ("features=np.full([3, 2], np.nan), per='site'",
                         "keep.tolist() == [[True, True], [True, True], [False, False]]"),
    "inf_overflowing_norm": ("features=[[3e38, 3e38], [-np.inf, 0], [1, 1]], per='site'",
                             "list(rows) == [0, 1]"),
    "float64_abs": ("features=[[1, -5], [0, 0], [-3, 2]], dtype=tf.float64, mode='abs'",
                    "keep.tolist() == [[False, True], [True, True], [True, False]]"),
}
for label, (args, check) in RAW_ATTENTION_OK.items():
    add(f"raw_attention/{label}", RAW_ATTENTION + f"""
keep, rows = raw_attention({args})
assert {check}, (keep, rows)
""", OK, impls=("raw",))

add("attention/k_tensor_negative", """
    x = sparse([[0, 0], [0, 1]])
    to_np(so.ops.attention(x, k=tf.constant(-2)).features)
""", Raises(r"k must be"))
add("attention/negative_batch", """
    x = so.SparseTensor(tf.ones([2, 1]), tf.constant([[0, 0], [-3, 1]]))
    to_np(so.ops.attention(x, k=1).features)
""", Raises(r"negative batch"))
add("attention/rows_mismatch_hidden_in_tf_function", """
    @tf.function(input_signature=[tf.TensorSpec([None, 2]),
                                  tf.TensorSpec([None, 3], tf.int32)])
    def f(feats, coords):
        return so.ops.attention(so.SparseTensor(feats, coords), k=1).features
    f(tf.ones([5, 2]), i32(SQUARE))
""", Raises(r"same number of rows"))
add("attention/empty_and_huge_k", """
    x = sparse(np.zeros([0, 3]), cols=3)
    assert to_np(so.ops.attention(x, k=5).features).shape == (0, 2)
    y = so.ops.attention(sparse(SQUARE), k=2**62, per="site")
    assert to_np(y.features).shape == (4, 2)
""", OK)


# == coordinate lookup and union (raw ops and public ops) =====================

add("raw_lookup/valid_and_edge_cases", """
    lk = lib.sparse_ops_coordinate_lookup
    c = i32([[0, 1, 2], [1, -5, 7], [0, I32MAX, 3]], 3)
    q = i32([[0, 1, 2], [0, 1, 2], [1, -5, 7], [0, I32MAX, 3],
              [-1, 1, 2], [I32MIN, 0, 0], [I32MAX, I32MAX, I32MAX],
              [0, I32MIN, I32MAX], [2, 1, 2]], 3)
    np.testing.assert_array_equal(lk(c, q), [0, 0, 1, 2, -1, -1, -1, -1, -1])
    assert lk(i32([], 3), q).numpy().tolist() == [-1] * 9
    assert lk(c, i32([], 3)).shape == (0,)
    assert lk(i32([], 3), i32([], 3)).shape == (0,)
""", OK, impls=("raw",))
add("raw_lookup/duplicate_sites", """
    lib.sparse_ops_coordinate_lookup(i32([[0, 1, 1], [0, 1, 1]], 3),
                                     i32([[0, 1, 1]], 3))
""", Raises(r"duplicate"), impls=("raw",))
add("raw_lookup/negative_batch_in_set", """
    lib.sparse_ops_coordinate_lookup(i32([[-1, 1, 1]], 3), i32([[0, 1, 1]], 3))
""", Raises(r"coordinates.*negative batch"), impls=("raw",))
add("raw_lookup/column_mismatch", """
    lib.sparse_ops_coordinate_lookup(i32([[0, 1, 1]], 3), i32([[0, 1]], 2))
""", Raises(r"queries"), impls=("raw",))
add("raw_lookup/rank_errors", """
    lib.sparse_ops_coordinate_lookup(tf.constant([0, 1, 1]), tf.constant([[0, 1, 1]]))
""", Raises(r"coordinates|rank|shape"), impls=("raw",))
add("raw_lookup/40_columns", """
    lib.sparse_ops_coordinate_lookup(tf.zeros([2, 40], tf.int32),
                                     tf.zeros([1, 40], tf.int32))
""", Raises(r"coordinates"), impls=("raw",))
add("raw_lookup/one_column", """
    lib.sparse_ops_coordinate_lookup(tf.zeros([2, 1], tf.int32),
                                     tf.zeros([1, 1], tf.int32))
""", Raises(r"coordinates"), impls=("raw",))
add("raw_lookup/span_too_wide", """
    c = i32([[0] + [I32MIN] * 3, [I32MAX] + [I32MAX] * 3], 4)
    lib.sparse_ops_coordinate_lookup(c, c)
""", Raises(r"64-bit key"), impls=("raw",))
add("raw_union/valid_and_edge_cases", """
    un = lib.sparse_ops_coordinate_union
    a = i32([[0, 1, 2], [0, I32MAX, -3]], 3)
    b = i32([[1, 0, 0], [0, I32MAX, -3], [0, 1, 2], [0, I32MIN, 5]], 3)
    out, rows = un([a, i32([], 3), b])
    np.testing.assert_array_equal(
        out, [[0, 1, 2], [0, I32MAX, -3], [1, 0, 0], [0, I32MIN, 5]])
    assert [r.numpy().tolist() for r in rows] == [[0, 1], [], [2, 1, 0, 3]]
    out, rows = un([i32([], 3)])
    assert out.shape == (0, 3) and rows[0].shape == (0,)
    out, rows = un([a])
    np.testing.assert_array_equal(out, a)
""", OK, impls=("raw",))
add("raw_union/duplicate_within_input", """
    lib.sparse_ops_coordinate_union([i32([[0, 1, 1]], 3),
                                     i32([[0, 2, 2], [0, 3, 3], [0, 2, 2]], 3)])
""", Raises(r"coordinates\[1\] has duplicate sites: rows 0 and 2"), impls=("raw",))
add("raw_union/column_mismatch", """
    lib.sparse_ops_coordinate_union([i32([[0, 1, 1]], 3), i32([[0, 1]], 2)])
""", Raises(r"columns"), impls=("raw",))
add("raw_union/negative_batch", """
    lib.sparse_ops_coordinate_union([i32([[0, 1, 1]], 3), i32([[-2, 1, 1]], 3)])
""", Raises(r"coordinates\[1\].*negative batch"), impls=("raw",))
add("raw_union/span_too_wide", """
    lib.sparse_ops_coordinate_union([i32([[0] + [I32MIN] * 3], 4),
                                     i32([[I32MAX] * 4], 4)])
""", Raises(r"64-bit key"), impls=("raw",))
add("raw_union/rank_error", """
    lib.sparse_ops_coordinate_union([i32([[0, 1, 1]], 3), tf.constant([0, 1])])
""", Raises(r"coordinates|rank|shape"), impls=("raw",))
add("union/span_too_wide", """
    so.ops.union([sparse([[0] + [I32MIN] * 3], cols=4), sparse([[I32MAX] * 4], cols=4)])
""", Raises(r"64-bit key|range"))
add("interpolate/points_near_int32_limits", """
    x = sparse([[0, I32MAX, I32MIN], [0, I32MAX - 1, I32MIN]])
    y = so.ops.interpolate(x, tf.constant(
        [[0.0, I32MAX - 0.5, float(I32MIN)], [0.0, 2.0**31 + 5, -2.0**31 - 5],
         [0.0, 1e30, -1e30], [3e9, 0.0, 0.0]], tf.float64))
    f = to_np(x.features)
    np.testing.assert_allclose(to_np(y), [(f[0] + f[1]) / 2, 0 * f[0], 0 * f[0],
                                          0 * f[0]], atol=1e-6)
""", OK)
add("interpolate/batch_beyond_int32_is_no_site", """
    x = sparse([[0, 0, 0]])
    y = so.ops.interpolate(x, tf.constant([[2.0**32, 0.0, 0.0]], tf.float64))
    assert not to_np(y).any()
""", OK)


# == the runner ===============================================================

def _child_env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("SPARSE_OPS_IMPLEMENTATION", None)
    return env


def _run(cases, prelude=PRELUDE):
    """Runs [(name, code)] in child processes; returns {name: result}."""
    results = {}
    remaining = list(cases)
    while remaining:
        payload = json.dumps([prelude] + [[n, c] for n, c in remaining])
        try:
            proc = subprocess.run([sys.executable, "-c", DRIVER], input=payload,
                                  capture_output=True, text=True,
                                  timeout=TIMEOUT_S, env=_child_env(),
                                  check=False)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            def text(v):
                return v.decode(errors="replace") if isinstance(v, bytes) else (
                    v or "")
            stdout, stderr, rc = text(e.stdout), text(e.stderr), "timeout"
        started = None
        done = False
        for line in stdout.splitlines():
            if line.startswith("@@START "):
                started = line[len("@@START "):]
            elif line.startswith("@@RESULT "):
                name, result = json.loads(line[len("@@RESULT "):])
                results[name] = result
                started = None
            elif line == "@@DONE":
                done = True
        if done and rc == 0:
            break
        tail = stderr[-4000:]
        if started is None:
            # Died before the first case (or after the last one).
            culprit = next((n for n, _ in remaining if n not in results), None)
            if culprit is None:
                results["<exit>"] = {"status": "crashed", "returncode": rc,
                                     "stderr": tail}
                break
            if not any(n in results for n, _ in remaining):
                # The prelude itself failed: every case fails with its output.
                for n, _ in remaining:
                    results[n] = {"status": "crashed", "returncode": rc,
                                  "stderr": tail}
                break
            started = culprit
        results[started] = {"status": "crashed", "returncode": rc, "stderr": tail}
        remaining = [(n, c) for n, c in remaining if n not in results]
    return results


def _runnable(name):
    return HAVE_LIBRARY or name.startswith(("reference:", "python:"))


@pytest.fixture(scope="module")
def results(request):
    # Only the cases selected for this session (e.g. with -k) are run.
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "callspec", None) is not None
                and item.module is sys.modules[__name__]
                and "name" in item.callspec.params}
    return _run([(name, code) for name, (code, _, _) in CASES.items()
                 if name in selected and _runnable(name)])


def _params():
    for name, (_, _, reason) in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_case(results, name):
    if not _runnable(name):
        pytest.skip("the sparse_ops op library is not built")
    _, expect, _ = CASES[name]
    result = results.get(name)
    assert result is not None, f"{name} was not run"
    assert result["status"] != "crashed", (
        f"{name} crashed or hung the process (return code "
        f"{result['returncode']}):\n{result['stderr']}")
    if isinstance(expect, OkOrRaises) and result["status"] == "ok":
        return
    if expect == OK:
        assert result["status"] == "ok", (
            f"{name} raised {result['type']}: {result['message']}\n"
            f"{result['traceback']}")
        return
    assert result["status"] == "raised", f"{name} did not raise"
    assert set(result["mro"]) & set(expect.types), (
        f"{name} raised {result['type']}, expected one of {expect.types}: "
        f"{result['message']}\n{result['traceback']}")
    assert re.search(expect.pattern, result["message"], re.IGNORECASE), (
        f"{name}: message does not match {expect.pattern!r}: "
        f"{result['message']}")


def test_child_process_exits_cleanly(results):
    assert "<exit>" not in results, results.get("<exit>")


def test_runner_reports_crashes_and_continues():
    """The harness itself: a case that kills its process is reported as
    crashed and the cases after it still run."""
    out = _run([("a", "x = 1"), ("b", "import os; os.abort()"),
                ("c", "raise ValueError('boom')")], prelude="")
    assert out["a"]["status"] == "ok"
    assert out["b"]["status"] == "crashed"
    assert out["c"]["status"] == "raised" and out["c"]["message"] == "boom"

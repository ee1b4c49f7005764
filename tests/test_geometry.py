"""Tests of `so.kernel_offsets` (docs/concepts.md, "Kernel offsets: TF-SAME").

Hypercube offsets are checked against TensorFlow itself: a dense one-hot input
convolved with a dense one-hot kernel (`tf.nn.convolution(padding="SAME")`)
shows which input cell every kernel tap reads for every output cell; the offset
of tap t is that input cell minus the output cell's position in input units.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so


# -- independent oracle: which input cell does each kernel tap read? ---------

def _dense_tap_offsets(size, dilation, stride):
    """Offsets [K, D] derived from dense `tf.nn.convolution(padding="SAME")`.

    Tap t (row-major over `size`, the order of `kernel.reshape([K, ...])`) gets
    the offset p - j * s at which an input that is one-hot at p makes output
    channel t (a kernel one-hot at tap t) non-zero at output cell j.
    """
    size, dilation, stride = (np.asarray(v) for v in (size, dilation, stride))
    dims = len(size)
    extent = (size - 1) * dilation + 1
    # Input extent a multiple of the stride (the contract's condition), with
    # room for the whole window on both sides of the one-hot cells.
    length = stride * -(-(2 * extent + 2 * stride) // stride)
    base = stride * ((length // 2) // stride)
    residues = list(itertools.product(*[range(s) for s in stride]))
    x = np.zeros([len(residues), *length, 1], np.float32)
    positions = []
    for b, r in enumerate(residues):
        p = base + np.asarray(r)
        x[(b, *p, 0)] = 1.0
        positions.append(p)
    num_taps = int(np.prod(size))
    taps = list(np.ndindex(*size))  # row-major, as numpy reshapes
    if np.all(dilation == 1) or np.all(stride == 1):
        w = np.zeros([*size, 1, num_taps], np.float32)
        for t, tap in enumerate(taps):
            w[(*tap, 0, t)] = 1.0
        y = tf.nn.convolution(x, w, strides=stride.tolist(),
                              dilations=dilation.tolist(), padding="SAME")
    else:
        # TF cannot combine strides and dilations: spell the dilated kernel out.
        w = np.zeros([*extent, 1, num_taps], np.float32)
        for t, tap in enumerate(taps):
            w[(*(np.asarray(tap) * dilation), 0, t)] = 1.0
        y = tf.nn.convolution(x, w, strides=stride.tolist(), padding="SAME")
    y = y.numpy()
    assert y.shape[1:-1] == tuple(length // stride)
    offsets = np.zeros([num_taps, dims], np.int64)
    for t in range(num_taps):
        hits = np.argwhere(y[..., t] != 0)
        # Exactly one (input, output cell) pair per tap: the one-hot inputs
        # cover every residue modulo the stride once.
        assert len(hits) == 1, (t, hits)
        b, *j = hits[0]
        assert y[(b, *j, t)] == 1.0
        offsets[t] = positions[b] - np.asarray(j) * stride
    return offsets


def _offsets(*args, **kwargs):
    out = so.kernel_offsets(*args, **kwargs)
    assert isinstance(out, tf.Tensor)
    assert out.dtype == tf.int32
    return out.numpy()


# -- hypercube ------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_hypercube_1d_matches_dense_same_padding(kernel_size, dilation, stride):
    got = _offsets(kernel_size, dilation=dilation, dimension=1, stride=stride)
    assert got.shape == (kernel_size, 1)
    want = _dense_tap_offsets([kernel_size], [dilation], [stride])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel_size,dilation,stride", [
    ((3, 3), 1, 1),
    ((2, 2), 1, 2),
    ((4, 4), 1, 1),
    ((3, 2), (1, 2), 1),
    ((5, 1), 2, 1),
    ((2, 5), 1, (2, 3)),
    ((3, 4), (2, 1), (2, 1)),
    ((1, 3), 2, 3),
])
def test_hypercube_2d_matches_dense_same_padding(kernel_size, dilation, stride):
    d = 2
    got = _offsets(kernel_size, dilation=dilation, dimension=d, stride=stride)
    want = _dense_tap_offsets(
        kernel_size,
        so.geometry.normalize_tuple(dilation, d, "dilation"),
        so.geometry.normalize_tuple(stride, d, "stride"))
    assert got.shape == (int(np.prod(kernel_size)), d)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel_size,dilation,stride", [
    ((3, 3, 3), 1, 1),
    ((2, 2, 2), 1, 2),
    ((2, 3, 1), (1, 2, 1), (3, 1, 2)),
])
def test_hypercube_3d_matches_dense_same_padding(kernel_size, dilation, stride):
    got = _offsets(kernel_size, dilation=dilation, stride=stride)  # D from size
    want = _dense_tap_offsets(kernel_size,
                              so.geometry.normalize_tuple(dilation, 3, "d"),
                              so.geometry.normalize_tuple(stride, 3, "s"))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_hypercube_follows_the_documented_formula(kernel_size, dilation, stride):
    # docs/concepts.md: offset_k = k*d - max((K-1)*d + 1 - s, 0) // 2 along each axis,
    # row-major over the axes.
    axis = [k * dilation - max((kernel_size - 1) * dilation + 1 - stride, 0) // 2
            for k in range(kernel_size)]
    want = np.array(list(itertools.product(axis, axis)), np.int64)
    got = _offsets((kernel_size, kernel_size), dilation=dilation, stride=stride)
    np.testing.assert_array_equal(got, want)


def test_int_kernel_size_with_dimension_equals_tuple():
    np.testing.assert_array_equal(_offsets(3, dimension=3), _offsets((3, 3, 3)))
    np.testing.assert_array_equal(_offsets(2, dilation=2, dimension=2, stride=2),
                                  _offsets((2, 2), dilation=(2, 2), stride=(2, 2)))


def test_odd_stride1_hypercube_is_centred_and_symmetric():
    got = _offsets(3, dimension=2)
    assert {tuple(o) for o in got} == set(itertools.product([-1, 0, 1], repeat=2))
    np.testing.assert_array_equal(got, -got[::-1])


# -- row-major order: Keras kernels line up ----------------------------------

def _keras_reference_check(layer, x, size, dilation, stride):
    """y from a Keras ConvND equals sum_k x[j*s + offset_k] @ W_k with
    W = kernel.reshape([K, Cin, Cout]) and offsets from kernel_offsets."""
    y = layer(x).numpy()
    kernel, bias = (w.numpy() for w in layer.weights)
    k = int(np.prod(size))
    w3 = kernel.reshape([k, kernel.shape[-2], kernel.shape[-1]])
    offsets = _offsets(size, dilation=dilation, stride=stride)
    xs = x.numpy()
    spatial = np.asarray(xs.shape[1:-1])
    want = np.zeros_like(y)
    for j in np.ndindex(*y.shape[1:-1]):
        acc = bias.astype(np.float64).copy()
        for kk in range(k):
            p = np.asarray(j) * np.asarray(stride) + offsets[kk]
            if np.all(p >= 0) and np.all(p < spatial):
                acc = acc + xs[(0, *p)] @ w3[kk]
        want[(0, *j)] = acc
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_row_major_order_matches_keras_conv2d():
    import keras  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=[1, 6, 5, 3]), tf.float32)
    size = (3, 2)
    layer = keras.layers.Conv2D(2, size, padding="same",
                                bias_initializer="random_normal")
    _keras_reference_check(layer, x, size, (1, 1), (1, 1))


def test_row_major_order_matches_keras_conv2d_dilated():
    import keras  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=[1, 7, 6, 2]), tf.float32)
    size = (2, 3)
    layer = keras.layers.Conv2D(3, size, padding="same", dilation_rate=(2, 1))
    _keras_reference_check(layer, x, size, (2, 1), (1, 1))


def test_row_major_order_matches_keras_conv3d_strided():
    import keras  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=[1, 4, 6, 4, 2]), tf.float32)
    size = (2, 3, 1)
    layer = keras.layers.Conv3D(2, size, strides=(2, 2, 1), padding="same")
    _keras_reference_check(layer, x, size, (1, 1, 1), (2, 2, 1))


# -- hypercross ----------------------------------------------------------------

def _cross(sizes, dilation):
    out = {tuple([0] * len(sizes))}
    for axis, k in enumerate(sizes):
        for step in range(1, (k - 1) // 2 + 1):
            for sign in (-1, 1):
                o = [0] * len(sizes)
                o[axis] = sign * step * dilation
                out.add(tuple(o))
    return out


@pytest.mark.parametrize("kernel_size,dimension", [
    (1, 1), (3, 1), (5, 1), (1, 2), (3, 2), (5, 2), (3, 3), (5, 3),
    ((3, 5), None), ((5, 1, 3), None),
])
def test_hypercross_is_centre_plus_axis_steps(kernel_size, dimension):
    got = _offsets(kernel_size, region="hypercross", dimension=dimension)
    sizes = (kernel_size,) * dimension if dimension else kernel_size
    d = len(sizes)
    assert got.shape == (1 + sum(k - 1 for k in sizes), d)
    as_set = {tuple(o) for o in got.tolist()}
    assert len(as_set) == len(got), "repeated offsets"
    assert as_set == _cross(sizes, 1)
    # Symmetric under negation, every offset on one axis.
    assert {tuple(-np.asarray(o)) for o in as_set} == as_set
    assert np.all(np.count_nonzero(got, axis=1) <= 1)


def test_hypercross_dilation_scales_the_steps():
    got = _offsets(5, dilation=2, region="hypercross", dimension=2)
    assert {tuple(o) for o in got.tolist()} == _cross((5, 5), 2)


def test_hypercross_ignores_stride_for_its_set():
    a = _offsets(3, region="hypercross", dimension=3)
    b = _offsets(3, region="hypercross", dimension=3, stride=2)
    assert {tuple(o) for o in a.tolist()} == {tuple(o) for o in b.tolist()}


# -- custom regions ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_custom_region_is_returned_in_order(dtype):
    region = np.array([[0, 0, 1], [-2, 0, 0], [5, -7, 3], [0, 0, 0]], dtype)
    got = _offsets(None, region=region)
    np.testing.assert_array_equal(got, region)
    got = _offsets((9, 9, 9), region=region, dimension=3)  # kernel_size ignored
    np.testing.assert_array_equal(got, region)


def test_custom_region_from_a_list():
    region = [[1], [-1], [4]]
    np.testing.assert_array_equal(_offsets(None, region=region), region)


# -- errors --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2, region="hypercross", dimension=2),
    dict(kernel_size=4, region="hypercross", dimension=1),
    dict(kernel_size=(3, 2), region="hypercross"),
], ids=["even2d", "even1d", "one_even_axis"])
def test_even_hypercross_raises(kwargs):
    with pytest.raises(ValueError, match="(?i)odd|hypercross"):
        so.kernel_offsets(**kwargs)


@pytest.mark.parametrize("region", ["sphere", "", "Hypercube ", "cube"])
def test_bad_region_string_raises(region):
    with pytest.raises(ValueError, match="region"):
        so.kernel_offsets(3, region=region, dimension=2)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(kernel_size=(3, 3, 3), dimension=2), "kernel_size"),
    (dict(kernel_size=(3, 3), dilation=(1, 1, 1)), "dilation"),
    (dict(kernel_size=(3, 3), stride=(1, 2, 1)), "stride"),
    (dict(kernel_size=3), "dimension"),
    (dict(kernel_size=0, dimension=2), "kernel_size"),
    (dict(kernel_size=3, dilation=0, dimension=2), "dilation"),
    (dict(kernel_size=3, stride=0, dimension=2), "stride"),
    (dict(kernel_size=3, stride=-1, dimension=1), "stride"),
    (dict(kernel_size=None, region=np.array([[0, 0], [1, 0]]), dimension=3),
     "dimension|columns"),
    (dict(kernel_size=None, region=np.array([0, 1, 2])), "region"),
    (dict(kernel_size=None, region=np.zeros([2, 2, 2], np.int32)), "region"),
    (dict(kernel_size=None, region=np.array([[0.5, 0.0]])), "region"),
    (dict(kernel_size=None, region=np.zeros([0, 2], np.int32)), "region"),
], ids=["size_dims", "dilation_dims", "stride_dims", "no_dimension", "size0",
        "dilation0", "stride0", "stride_negative", "custom_dims", "custom_1d",
        "custom_3d", "custom_float", "custom_empty"])
def test_wrong_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        so.kernel_offsets(**kwargs)

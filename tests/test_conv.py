"""Acceptance tests of sparse convolution: `so.ops.conv` and `so.ops.conv_transpose`.

Ground truth is dense TensorFlow (`tf.nn.convolution` / `tf.nn.conv_transpose`
with padding="SAME") on the densified input, read at the output sites; in 4D
and 5D, where TF has no convolution, a brute-force numpy oracle. Every test
runs with both implementations (the C++ ops and the pure-TF reference path)
through the `impl` fixture unless it compares the two.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops.ops import cache as so_cache

from conftest import (as_tuple, assert_close, brute_force_conv,
                      brute_force_conv_transpose, densify, hypercross_offsets,
                      random_sparse, read_at, same_offsets, site_set,
                      strided_sites)

CIN, COUT = 3, 4


def _kernel(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def _dense_conv(dense, kernel, strides=1, dilation=1):
    return tf.nn.convolution(dense, kernel, strides=strides, dilations=dilation,
                             padding="SAME").numpy()


def _dense_conv_transpose(dense, kernel, fine_shape, strides):
    b = dense.shape[0]
    out_shape = [b] + list(fine_shape) + [kernel.shape[-2]]
    return tf.nn.conv_transpose(dense, kernel, out_shape, strides=strides,
                                padding="SAME").numpy()


def _grid(d, strides, extent):
    """A spatial shape whose extent is a multiple of the strides (the
    condition of the dense reference, docs/concepts.md)."""
    s = as_tuple(strides, d)
    e = as_tuple(extent, d)
    return tuple(-(-n // k) * k for n, k in zip(e, s))


def check_conv_against_dense(rng, d, kernel_size, strides, dilation, dtype,
                             extent=6, in_stride=1, origin=0, bias=False,
                             density=0.35):
    """so.ops.conv == tf.nn.convolution(SAME) at the output sites."""
    shape = _grid(d, strides, extent)
    x, dense = random_sparse(rng, shape, CIN, dtype=dtype, stride=in_stride,
                             origin=origin, density=density)
    kernel = _kernel(rng, as_tuple(kernel_size, d) + (CIN, COUT), dtype)
    b = _kernel(rng, (COUT,), dtype) if bias else None
    y = so.ops.conv(x, kernel, b, strides=strides, dilation_rate=dilation)
    expected = _dense_conv(dense, kernel, strides, dilation)
    if bias:
        expected = expected + b
    cell = tuple(s * t for s, t in zip(as_tuple(strides, d), as_tuple(in_stride, d)))
    assert y.stride == cell
    assert y.features.dtype == dtype
    assert y.features.shape[1] == COUT
    if all(s == 1 for s in as_tuple(strides, d)):
        # Submanifold: output sites are the input sites, in their order.
        np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())
    else:
        assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, cell, origin),
                 dtype)
    return x, y


# -- forward vs dense TF ------------------------------------------------------

_GRID_2D = [(k, s, dl) for k in range(1, 6) for s in (1, 2, 3) for dl in (1, 2)
            if not (s > 1 and dl > 1)]  # TF refuses strides > 1 with dilation > 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel_size,strides,dilation", _GRID_2D)
def test_conv_2d_matches_dense(impl, rng, kernel_size, strides, dilation, dtype):
    check_conv_against_dense(rng, 2, kernel_size, strides, dilation, dtype)


_SUBSET_1D = [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 1, 2), (5, 1, 2), (2, 2, 1),
              (3, 2, 1), (4, 3, 1), (5, 3, 1), (1, 3, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel_size,strides,dilation", _SUBSET_1D)
def test_conv_1d_matches_dense(impl, rng, kernel_size, strides, dilation, dtype):
    check_conv_against_dense(rng, 1, kernel_size, strides, dilation, dtype,
                             extent=12, density=0.5)


_SUBSET_3D = [(1, 1, 1, np.float32), (2, 1, 1, np.float32), (3, 1, 1, np.float64),
              (4, 1, 1, np.float32), (5, 1, 1, np.float32), (3, 1, 2, np.float32),
              (2, 1, 2, np.float64), (2, 2, 1, np.float32), (3, 2, 1, np.float64),
              (4, 2, 1, np.float32), (3, 3, 1, np.float32), (5, 3, 1, np.float64)]


@pytest.mark.parametrize("kernel_size,strides,dilation,dtype", _SUBSET_3D)
def test_conv_3d_matches_dense(impl, rng, kernel_size, strides, dilation, dtype):
    check_conv_against_dense(rng, 3, kernel_size, strides, dilation, dtype,
                             density=0.25)


@pytest.mark.parametrize("kernel_size,strides,dilation", [
    ((3, 2), (2, 1), 1), ((2, 3), 1, (2, 1)), ((1, 4), (3, 2), 1),
    ((4, 1), (1, 3), 1), ((5, 2), 1, (1, 2))])
def test_conv_2d_anisotropic(impl, rng, kernel_size, strides, dilation):
    check_conv_against_dense(rng, 2, kernel_size, strides, dilation, np.float32)


@pytest.mark.parametrize("d,kernel_size,strides", [
    (2, 3, 1), (2, 2, 2), (2, 3, 2), (2, 4, 3), (3, 3, 2), (1, 4, 2)])
def test_conv_on_strided_input(impl, rng, d, kernel_size, strides):
    """Input tensor stride t = 2: cells are t apart, output stride is s * t."""
    check_conv_against_dense(rng, d, kernel_size, strides, 1, np.float32,
                             in_stride=2, extent=6 if d < 3 else 4, density=0.4)


@pytest.mark.parametrize("d,kernel_size,strides,dilation", [
    (1, 3, 1, 1), (2, 3, 1, 1), (2, 4, 2, 1), (2, 3, 3, 1), (2, 3, 1, 2),
    (3, 2, 2, 1)])
def test_conv_with_bias(impl, rng, d, kernel_size, strides, dilation):
    check_conv_against_dense(rng, d, kernel_size, strides, dilation, np.float64,
                             bias=True, extent=6 if d < 3 else 4)


@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (2, 1), (3, 2), (4, 2), (2, 3)])
def test_conv_out_coordinates(impl, rng, kernel_size, strides):
    """out_coordinates= anywhere on the output grid (also where no input is)."""
    d = 2
    shape = _grid(d, strides, 6)
    x, dense = random_sparse(rng, shape, CIN, dtype=np.float64)
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float64)
    out_shape = tuple(n // strides for n in shape)
    mask = rng.random((2,) + out_shape) < 0.5
    mask[0, 0, 0] = True
    out_idx = np.argwhere(mask)
    rng.shuffle(out_idx)
    out_c = np.concatenate([out_idx[:, :1], out_idx[:, 1:] * strides], 1).astype(np.int32)
    y = so.ops.conv(x, kernel, strides=strides, out_coordinates=out_c)
    np.testing.assert_array_equal(y.coordinates.numpy(), out_c)
    assert y.stride == (strides,) * d
    expected = _dense_conv(dense, kernel, strides)
    assert_close(y.features.numpy(), read_at(expected, out_c, strides), np.float64)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("strides", [1, 2])
def test_conv_half_precision(impl, rng, dtype, strides):
    """float16/bfloat16 features: the result (in that dtype) equals the float32
    dense convolution of the rounded inputs, up to the output rounding."""
    x, dense = random_sparse(rng, (6, 6), CIN)
    kernel = _kernel(rng, (3, 3, CIN, COUT), np.float32)
    xh = x.with_features(tf.cast(x.features, dtype))
    kh = tf.cast(kernel, dtype)
    y = so.ops.conv(xh, kh, strides=strides)
    assert y.features.dtype == dtype
    rounded = tf.cast(tf.cast(dense, dtype), tf.float32).numpy()
    expected = _dense_conv(rounded, tf.cast(kh, tf.float32).numpy(), strides)
    eps = {tf.float16: 2e-3, tf.bfloat16: 1.6e-2}[dtype]
    got = tf.cast(y.features, tf.float32).numpy()
    np.testing.assert_allclose(got, read_at(expected, y.coordinates, strides),
                               rtol=eps, atol=eps * 4)


def test_conv_accepts_tf_sparse_tensor(impl, rng):
    """so.ops.conv on a tf.SparseTensor [B, *spatial, C] (sites = cells with a
    non-zero channel)."""
    _, dense = random_sparse(rng, (6, 6), CIN)
    kernel = _kernel(rng, (3, 3, CIN, COUT), np.float32)
    y = so.ops.conv(tf.sparse.from_dense(dense), kernel, strides=2)
    active = np.argwhere(np.any(dense != 0, axis=-1))
    assert site_set(y.coordinates) == strided_sites(active, 2)
    assert_close(y.features.numpy(), read_at(_dense_conv(dense, kernel, 2),
                                             y.coordinates, 2), np.float32)


def test_anisotropic_tensor_stride_and_transpose(impl, rng):
    """Tensor stride (2, 1), strides (1, 2): output stride (2, 2); then back with
    strides (1, 2) onto the input sites."""
    dtype = np.float64
    x, dense = random_sparse(rng, (5, 6), CIN, dtype=dtype, stride=(2, 1), density=0.5)
    kernel = _kernel(rng, (3, 4, CIN, COUT), dtype)
    y = so.ops.conv(x, kernel, strides=(1, 2))
    assert y.stride == (2, 2)
    assert site_set(y.coordinates) == strided_sites(x.coordinates, (2, 2))
    expected = _dense_conv(dense, kernel, (1, 2))
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, (2, 2)), dtype)
    k_t = _kernel(rng, (2, 3, CIN, COUT), dtype)
    z = so.ops.conv_transpose(y, k_t, strides=(1, 2))
    assert z.stride == (2, 1)
    assert site_set(z.coordinates) == site_set(x.coordinates)
    coarse = densify(y, (5, 3), batch=2)
    expected = _dense_conv_transpose(coarse, k_t, (5, 6), (1, 2))
    assert_close(z.features.numpy(), read_at(expected, z.coordinates, (2, 1)), dtype)


# -- hypercross and custom regions ------------------------------------------

def _region_dense_kernel(offsets, kernel3, strides):
    """A dense hypercube kernel with kernel3[k] at offsets[k] and zeros elsewhere,
    for tf.nn.convolution(SAME, strides): the smallest size per axis whose
    SAME window (offset = index - pad_before) covers the offsets."""
    offsets = np.asarray(offsets)
    d = offsets.shape[1]
    sizes, pads = [], []
    for a, s in zip(range(d), as_tuple(strides, d)):
        lo, hi = offsets[:, a].min(), offsets[:, a].max()
        for n in range(1, 64):
            pad = max(n - s, 0) // 2
            if pad >= -lo and n - 1 - pad >= hi:
                break
        sizes.append(n)
        pads.append(pad)
    dense = np.zeros(sizes + list(kernel3.shape[1:]), kernel3.dtype)
    for k, o in enumerate(offsets):
        dense[tuple(np.asarray(o) + pads)] = kernel3[k]
    return dense


def check_region_conv(rng, d, region, strides, dilation=1, kernel_size=None,
                      dtype=np.float64, extent=6):
    offsets = so.kernel_offsets(kernel_size, dilation, region, dimension=d).numpy()
    kernel3 = _kernel(rng, (len(offsets), CIN, COUT), dtype)
    shape = _grid(d, strides, extent)
    x, dense = random_sparse(rng, shape, CIN, dtype=dtype)
    y = so.ops.conv(x, kernel3, strides=strides, dilation_rate=dilation, region=region)
    expected = _dense_conv(dense, _region_dense_kernel(offsets, kernel3, strides),
                           strides)
    cell = as_tuple(strides, d)
    assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, cell), dtype)


@pytest.mark.parametrize("d,size,dilation", [(2, 3, 1), (2, 5, 1), (3, 3, 1),
                                             (3, 5, 2), (1, 5, 1), (2, 3, 2)])
def test_hypercross_offsets(d, size, dilation):
    """The offsets are the centre plus (K-1)/2 steps along each axis, both ways."""
    offsets = so.kernel_offsets(size, dilation, "hypercross", dimension=d).numpy()
    rows = [tuple(r) for r in offsets.tolist()]
    assert len(rows) == len(set(rows)) == 1 + 2 * d * ((size - 1) // 2)
    assert set(rows) == hypercross_offsets(size, dilation, d)


@pytest.mark.parametrize("d,size,strides,dilation", [
    (2, 3, 1, 1), (2, 5, 1, 1), (2, 3, 1, 2), (2, 3, 2, 1), (3, 3, 1, 1),
    (3, 5, 2, 1), (1, 5, 1, 1)])
def test_conv_hypercross_matches_dense(impl, rng, d, size, strides, dilation):
    check_region_conv(rng, d, "hypercross", strides, dilation, kernel_size=size,
                      extent=6 if d < 3 else 4)


_CUSTOM_REGIONS = {
    "L2d": [[0, 0], [1, 0], [0, 1]],
    "asym2d": [[-2, 1], [0, 0], [1, 2], [2, -1], [0, -2]],
    "no_centre2d": [[1, 1], [-1, -1]],
    "single_offset2d": [[1, 0]],
    "diag3d": [[0, 0, 0], [1, 1, 1], [-1, -1, -1], [2, 0, -1]],
    "line1d": [[-3], [0], [2]],
}


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("name", sorted(_CUSTOM_REGIONS))
def test_conv_custom_region_matches_dense(impl, rng, name, strides):
    region = np.array(_CUSTOM_REGIONS[name], np.int32)
    d = region.shape[1]
    np.testing.assert_array_equal(
        so.kernel_offsets(None, region=region).numpy(), region)
    check_region_conv(rng, d, region, strides, extent=6 if d < 3 else 4)


def test_conv_custom_region_matches_brute_force(impl, rng):
    """A custom region with offsets far from the centre, against the oracle."""
    region = np.array([[0, 0], [5, -3], [-4, 4], [0, 7]], np.int32)
    x, _ = random_sparse(rng, (10, 10), CIN, dtype=np.float64, density=0.5)
    kernel3 = _kernel(rng, (4, CIN, COUT), np.float64)
    y = so.ops.conv(x, kernel3, region=region)
    expected = brute_force_conv(x.coordinates, x.features, x.coordinates, kernel3,
                                region, 1)
    assert_close(y.features.numpy(), expected, np.float64)


# -- 4D and 5D: brute-force oracle ------------------------------------------

@pytest.mark.parametrize("d,kernel_size,strides,dilation", [
    (4, 3, 1, 1), (4, 2, 1, 1), (4, 3, 2, 1), (4, 2, 1, 2), (5, 3, 1, 1),
    (5, 2, 2, 1)])
def test_conv_high_dimension_brute_force(impl, rng, d, kernel_size, strides, dilation):
    shape = _grid(d, strides, 4 if d == 4 else 3)
    x, _ = random_sparse(rng, shape, CIN, dtype=np.float64, density=0.15)
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float64)
    y = so.ops.conv(x, kernel, strides=strides, dilation_rate=dilation)
    cell = (strides,) * d
    if strides == 1:
        np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())
    else:
        assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
    offsets = same_offsets(kernel_size, dilation, strides, d)
    expected = brute_force_conv(x.coordinates, x.features, y.coordinates,
                                kernel.reshape(-1, CIN, COUT), offsets, 1)
    assert_close(y.features.numpy(), expected, np.float64)


@pytest.mark.parametrize("d,kernel_size,strides", [(4, 3, 1), (4, 2, 2), (5, 2, 1)])
def test_conv_high_dimension_custom_equals_reference(rng, d, kernel_size, strides):
    x, _ = random_sparse(rng, _grid(d, strides, 4 if d == 4 else 3), CIN,
                         density=0.2)
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float32)
    out = {}
    for name in ("custom", "reference"):
        with so.config.implementation(name):
            xt = so.SparseTensor(tf.identity(x.features), tf.identity(x.coordinates))
            y = so.ops.conv(xt, kernel, strides=strides)
            with tf.GradientTape() as tape:
                tape.watch(xt.features)
                z = so.ops.conv_transpose(so.ops.conv(xt, kernel, strides=strides),
                                          kernel, strides=strides)
                loss = tf.reduce_sum(z.features ** 2)
            grad = tf.convert_to_tensor(tape.gradient(loss, xt.features))
            out[name] = (y.coordinates.numpy(), y.features.numpy(), z.features.numpy(),
                         grad.numpy())
    c, r = out["custom"], out["reference"]
    np.testing.assert_array_equal(site_set(c[0]), site_set(r[0]))
    # Compare rows by site, whatever the row order.
    order_c = np.lexsort(c[0].T[::-1])
    order_r = np.lexsort(r[0].T[::-1])
    assert_close(c[1][order_c], r[1][order_r], np.float32)
    assert_close(c[2], r[2], np.float32)
    assert_close(c[3], r[3], np.float32, rtol=1e-4, atol=1e-3)


# -- conv_transpose vs dense TF -----------------------------------------------

_TRANSPOSE_GRID = [(d, k, s) for d, ks in ((1, (1, 2, 3, 4)), (2, (1, 2, 3, 4)),
                                          (3, (2, 3)))
                   for k in ks for s in (2, 3)]


def _coarse_from_fine(rng, d, strides, dtype, extent=6, density=0.4):
    shape = _grid(d, strides, extent)
    x, _ = random_sparse(rng, shape, CIN, dtype=dtype, density=density)
    down = _kernel(rng, (2,) * d + (CIN, CIN), dtype)
    y = so.ops.conv(x, down, strides=strides)
    # New features on the same coordinates: the finer link must survive.
    y = y.with_features(_kernel(rng, (y.features.shape[0], CIN), dtype))
    return x, y, shape


@pytest.mark.parametrize("d,kernel_size,strides", _TRANSPOSE_GRID)
def test_conv_transpose_onto_finer(impl, rng, d, kernel_size, strides):
    """(a) Output sites = the sites the input was strided from."""
    dtype = np.float64
    x, y, shape = _coarse_from_fine(rng, d, strides, dtype,
                                    extent=6 if d < 3 else 4)
    kernel = _kernel(rng, (kernel_size,) * d + (COUT, CIN), dtype)
    z = so.ops.conv_transpose(y, kernel, strides=strides)
    assert z.stride == (1,) * d
    assert site_set(z.coordinates) == site_set(x.coordinates)
    coarse = densify(y, [n // strides for n in shape], batch=2)
    expected = _dense_conv_transpose(coarse, kernel, shape, strides)
    assert_close(z.features.numpy(), read_at(expected, z.coordinates, 1), dtype)


@pytest.mark.parametrize("d,kernel_size,strides,out_stride", [
    (1, 3, 2, 1), (1, 4, 3, 1), (2, 1, 2, 1), (2, 2, 2, 1), (2, 3, 2, 1),
    (2, 4, 2, 1), (2, 3, 3, 1), (2, 2, 2, 2), (2, 3, 2, 2), (3, 2, 2, 1),
    (3, 3, 3, 1), (3, 4, 2, 1)])
def test_conv_transpose_out_coordinates(impl, rng, d, kernel_size, strides,
                                        out_stride):
    """(b) out_coordinates= given: any sites on the fine grid, reached or not."""
    dtype = np.float64
    t = strides * out_stride
    fine_shape = _grid(d, strides, 6 if d < 3 else 4)
    coarse_shape = tuple(n // strides for n in fine_shape)
    y, coarse = random_sparse(rng, coarse_shape, CIN, dtype=dtype, stride=t,
                              density=0.4)
    mask = rng.random((2,) + fine_shape) < 0.4
    idx = np.argwhere(mask)
    rng.shuffle(idx)
    out_c = np.concatenate([idx[:, :1], idx[:, 1:] * out_stride], 1).astype(np.int32)
    kernel = _kernel(rng, (kernel_size,) * d + (COUT, CIN), dtype)
    bias = _kernel(rng, (COUT,), dtype)
    z = so.ops.conv_transpose(y, kernel, bias, strides=strides, out_coordinates=out_c)
    np.testing.assert_array_equal(z.coordinates.numpy(), out_c)
    assert z.stride == (out_stride,) * d
    expected = _dense_conv_transpose(coarse, kernel, fine_shape, strides) + bias
    assert_close(z.features.numpy(), read_at(expected, out_c, out_stride), dtype)


@pytest.mark.parametrize("d,kernel_size,strides", _TRANSPOSE_GRID)
def test_conv_transpose_generative(impl, rng, d, kernel_size, strides):
    """(c) generative=True: every site the kernel reaches, dense values there."""
    dtype = np.float64
    # A margin of one coarse cell around the sites keeps every generated site
    # inside the dense grid.
    inner = (3,) * d if d < 3 else (2,) * d
    coarse_shape = tuple(n + 2 for n in inner)
    fine_shape = tuple(n * strides for n in coarse_shape)
    y_in, _ = random_sparse(rng, inner, CIN, dtype=dtype, stride=strides,
                            origin=strides, density=0.4)
    coarse = densify(y_in, coarse_shape, batch=2)
    kernel = _kernel(rng, (kernel_size,) * d + (COUT, CIN), dtype)
    z = so.ops.conv_transpose(y_in, kernel, strides=strides, generative=True)
    assert z.stride == (1,) * d
    offsets = same_offsets(kernel_size, 1, strides, d)
    c = y_in.coordinates.numpy().astype(np.int64)
    reached = {(int(r[0]),) + tuple(int(v) for v in r[1:] + o)
               for r in c for o in offsets}
    assert site_set(z.coordinates) == sorted(reached)
    expected = _dense_conv_transpose(coarse, kernel, fine_shape, strides)
    zc = z.coordinates.numpy()
    inside = np.all((zc[:, 1:] >= 0) & (zc[:, 1:] < np.array(fine_shape)), 1)
    assert inside.all()  # the margin is wide enough
    assert_close(z.features.numpy()[inside], read_at(expected, zc[inside], 1), dtype)
    # Every site that the dense result has non-zero was generated.
    nonzero = {tuple(int(v) for v in r)
               for r in np.argwhere(np.any(expected != 0, axis=-1))}
    assert nonzero <= reached


def test_conv_transpose_generative_sites_outside_grid(impl, rng):
    """Sites generated beyond the grid edges (and at negative coordinates)."""
    d, strides, kernel_size = 2, 2, 4  # offsets -1..2: reaches below 0
    y, coarse = random_sparse(rng, (3, 3), CIN, dtype=np.float64, stride=2,
                              density=0.6)
    kernel = _kernel(rng, (kernel_size,) * d + (COUT, CIN), np.float64)
    z = so.ops.conv_transpose(y, kernel, strides=strides, generative=True)
    zc = z.coordinates.numpy()
    expected = brute_force_conv_transpose(
        y.coordinates, y.features, zc, kernel.reshape(-1, COUT, CIN),
        same_offsets(kernel_size, 1, strides, d), 1)
    assert_close(z.features.numpy(), expected, np.float64)
    inside = np.all((zc[:, 1:] >= 0) & (zc[:, 1:] < 6), 1)
    dense = _dense_conv_transpose(coarse, kernel, (6, 6), strides)
    assert_close(z.features.numpy()[inside], read_at(dense, zc[inside], 1), np.float64)


@pytest.mark.parametrize("d,region,strides,dilation,kernel_size", [
    (2, "hypercube", 2, 1, 3), (2, "hypercube", 1, 2, 3), (1, "hypercube", 1, 2, 4),
    (3, "hypercube", 1, 2, 2), (2, "custom", 1, 1, None), (2, "custom", 2, 1, None),
    (2, "hypercross", 1, 1, 3), (3, "hypercross", 2, 1, 3), (2, "hypercross", 1, 2, 5)])
def test_conv_transpose_is_adjoint_of_conv(impl, rng, d, region, strides, dilation,
                                           kernel_size):
    """<conv(x, W), g> == <x, conv_transpose(g, W)> with the same geometry; covers
    dilation and regions where TF has no dense transposed convolution."""
    dtype = np.float64
    x, _ = random_sparse(rng, _grid(d, strides, 6), CIN, dtype=dtype, density=0.5)
    if region == "custom":
        region = np.array([[0, 0], [1, -1], [-2, 0], [1, 2]], np.int32)
        kernel = _kernel(rng, (4, CIN, COUT), dtype)
    elif region == "hypercross":
        kernel = _kernel(rng, (1 + 2 * d * ((kernel_size - 1) // 2), CIN, COUT), dtype)
    else:
        kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), dtype)
    y = so.ops.conv(x, kernel, strides=strides, dilation_rate=dilation, region=region)
    g = y.with_features(_kernel(rng, (y.features.shape[0], COUT), dtype))
    xt = so.ops.conv_transpose(g, kernel, strides=strides,
                               dilation_rate=dilation, region=region,
                               out_coordinates=x.coordinates)
    lhs = np.sum(y.features.numpy() * g.features.numpy())
    rhs = np.sum(x.features.numpy() * xt.features.numpy())
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    # Also element-wise against the oracle.
    if not isinstance(region, str):
        offsets = np.asarray(region)
    elif region == "hypercube":
        offsets = same_offsets(kernel_size, dilation, strides, d)
    else:
        offsets = so.kernel_offsets(kernel_size, dilation, region, d).numpy()
    expected = brute_force_conv_transpose(g.coordinates, g.features, x.coordinates,
                                          kernel.reshape(-1, CIN, COUT), offsets, 1)
    assert_close(xt.features.numpy(), expected, dtype)


# -- gradients ---------------------------------------------------------------

def _dense_indices(coordinates, cell, origin=0):
    """[N, 1 + D] int32 indices into a dense [B, *spatial, C] grid (numpy)."""
    c = np.asarray(coordinates).astype(np.int64)
    d = c.shape[1] - 1
    rel = c[:, 1:] - np.array(as_tuple(origin, d))
    cell_v = np.array(as_tuple(cell, d))
    assert np.all(rel % cell_v == 0)
    return np.concatenate([c[:, :1], rel // cell_v], 1).astype(np.int32)


def _conv_grads(x, kernel, upstream, strides, dilation, bias=None):
    features = tf.convert_to_tensor(x.features)
    kernel = tf.convert_to_tensor(kernel)
    sources = [features, kernel] + ([tf.convert_to_tensor(bias)] if bias is not None
                                    else [])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        y = so.ops.conv(x.with_features(features), kernel, sources[2] if bias is not None
                        else None, strides=strides, dilation_rate=dilation)
        loss = tf.reduce_sum(y.features * upstream)
    return y, [tf.convert_to_tensor(g) for g in tape.gradient(loss, sources)]


def _dense_conv_grads(x, kernel, upstream, out_coordinates, shape, strides,
                      dilation, bias=None):
    """Gradients of sum(dense_conv(scatter(features)) [at out sites] * upstream)."""
    d = len(shape)
    features = tf.convert_to_tensor(x.features)
    kernel = tf.convert_to_tensor(kernel)
    sources = [features, kernel] + ([tf.convert_to_tensor(bias)] if bias is not None
                                    else [])
    in_idx = _dense_indices(x.coordinates, as_tuple(np.asarray(x.stride_tensor), d))
    cell = tuple(s * t for s, t in zip(as_tuple(strides, d),
                                       as_tuple(np.asarray(x.stride_tensor), d)))
    out_idx = _dense_indices(out_coordinates, cell)
    # In graph mode: eager tapes through tf.nn.convolution fail in TF 2.21
    # ('NoneType' object has no attribute 'decode' in nn_grad.py).
    @tf.function
    def grads(sources):
        with tf.GradientTape() as tape:
            tape.watch(sources)
            dense = tf.scatter_nd(in_idx, sources[0], [2, *shape, features.shape[1]])
            out = tf.nn.convolution(dense, sources[1], strides=strides,
                                    dilations=dilation, padding="SAME")
            if bias is not None:
                out = out + sources[2]
            loss = tf.reduce_sum(tf.gather_nd(out, out_idx) * upstream)
        return tape.gradient(loss, sources)

    return grads(sources)


@pytest.mark.parametrize("d,kernel_size,strides,dilation,dtype", [
    (2, 3, 1, 1, np.float32), (2, 2, 1, 1, np.float64), (2, 3, 2, 1, np.float64),
    (2, 4, 2, 1, np.float32), (2, 3, 3, 1, np.float32), (2, 3, 1, 2, np.float64),
    (1, 5, 1, 1, np.float64), (1, 3, 2, 1, np.float32), (3, 3, 1, 1, np.float32),
    (3, 2, 2, 1, np.float64)])
def test_conv_gradients_match_dense(impl, rng, d, kernel_size, strides, dilation,
                                    dtype):
    shape = _grid(d, strides, 6 if d < 3 else 4)
    x, _ = random_sparse(rng, shape, CIN, dtype=dtype, density=0.4)
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), dtype)
    bias = _kernel(rng, (COUT,), dtype)
    y = so.ops.conv(x, kernel, strides=strides, dilation_rate=dilation)
    upstream = _kernel(rng, (y.features.shape[0], COUT), dtype)
    y, grads = _conv_grads(x, kernel, upstream, strides, dilation, bias)
    expected = _dense_conv_grads(x, kernel, upstream, y.coordinates, shape, strides,
                                 dilation, bias)
    tol = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: {}}[dtype]
    for name, g, e in zip(("features", "kernel", "bias"), grads, expected):
        assert g.dtype == dtype, name
        assert_close(g.numpy(), e.numpy(), dtype, **tol)


@pytest.mark.parametrize("d,kernel_size,strides", [(1, 3, 2), (2, 2, 2), (2, 3, 2),
                                                   (2, 4, 3), (3, 2, 2)])
def test_conv_transpose_gradients_match_dense(impl, rng, d, kernel_size, strides):
    dtype = np.float64
    x, y, shape = _coarse_from_fine(rng, d, strides, dtype, extent=6 if d < 3 else 4)
    kernel = tf.constant(_kernel(rng, (kernel_size,) * d + (COUT, CIN), dtype))
    upstream = _kernel(rng, (x.features.shape[0], COUT), dtype)
    features = tf.convert_to_tensor(y.features)
    with tf.GradientTape() as tape:
        tape.watch([features, kernel])
        z = so.ops.conv_transpose(y.with_features(features), kernel, strides=strides)
        loss = tf.reduce_sum(z.features * upstream)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [features, kernel])]
    coarse_shape = [n // strides for n in shape]
    in_idx = _dense_indices(y.coordinates, strides)
    out_idx = _dense_indices(z.coordinates, 1)
    with tf.GradientTape() as tape:
        tape.watch([features, kernel])
        dense = tf.scatter_nd(in_idx, features, [2, *coarse_shape, CIN])
        out = tf.nn.conv_transpose(dense, kernel, [2, *shape, COUT], strides=strides,
                                   padding="SAME")
        loss = tf.reduce_sum(tf.gather_nd(out, out_idx) * upstream)
    expected = tape.gradient(loss, [features, kernel])
    for g, e in zip(grads, expected):
        assert_close(g.numpy(), e.numpy(), dtype)


def _jacobians_close(theoretical, numerical, atol=1e-6):
    assert len(theoretical) == len(numerical)
    for t, n in zip(theoretical, numerical):
        assert t.shape == n.shape
        assert np.abs(n).max() > 0  # the check is not vacuous
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=atol)


def _fast(f, impl):
    """compute_gradient calls f a few hundred times; the reference path costs
    ~20 ms per eager call (one small op per kernel offset), so trace it once.
    The custom ops run eagerly."""
    return tf.function(f) if impl == "reference" else f


# The custom ops' registered gradients are what compute_gradient checks; the
# reference path is differentiated by TF (and checked against dense TF in
# test_conv_gradients_match_dense), and is slow here (~5-10 s per case).
_IMPL_CUSTOM_FAST = pytest.mark.parametrize(
    "impl", ["custom", pytest.param("reference", marks=pytest.mark.slow)],
    indirect=True)


@_IMPL_CUSTOM_FAST
@pytest.mark.parametrize("d,kernel_size,strides", [(2, 3, 1), (2, 2, 2), (1, 3, 2),
                                                   (3, 2, 1)])
def test_conv_compute_gradient_float64(impl, rng, d, kernel_size, strides):
    x, _ = random_sparse(rng, _grid(d, strides, 4 if d < 3 else 2), 2,
                         dtype=np.float64, density=0.3)
    kernel = _kernel(rng, (kernel_size,) * d + (2, 2), np.float64)

    def f(features, kernel):
        return so.ops.conv(x.with_features(features), kernel, strides=strides).features

    _jacobians_close(*tf.test.compute_gradient(_fast(f, impl),
                                               [x.features, tf.constant(kernel)]))


@_IMPL_CUSTOM_FAST
@pytest.mark.parametrize("mode", ["finer", "out_coordinates", "generative"])
def test_conv_transpose_compute_gradient_float64(impl, rng, mode):
    strides = 2
    x, _ = random_sparse(rng, (4, 4), 2, dtype=np.float64, density=0.25)
    down = _kernel(rng, (2, 2, 2, 2), np.float64)
    y = so.ops.conv(x, down, strides=strides)
    kernel = tf.constant(_kernel(rng, (3, 3, 1, 2), np.float64))
    kwargs = {"finer": {}, "out_coordinates": {"out_coordinates": x.coordinates[::-1]},
              "generative": {"generative": True}}[mode]

    def f(features, kernel):
        # The strided conv runs inside f so that, when f is traced, the finer
        # sites are known in that graph.
        coarse = so.ops.conv(x, down, strides=strides).with_features(features)
        return so.ops.conv_transpose(coarse, kernel, strides=strides,
                                     **kwargs).features

    _jacobians_close(*tf.test.compute_gradient(_fast(f, impl), [y.features, kernel]))


def test_conv_second_order_gradients_match_dense(impl, rng):
    """Gradient of a gradient (the registered gradients of the backprop ops)."""
    dtype, strides, shape = np.float64, 2, (4, 4)
    x, _ = random_sparse(rng, shape, CIN, dtype=dtype, density=0.5)
    kernel = tf.constant(_kernel(rng, (3, 3, CIN, COUT), dtype))
    features = tf.convert_to_tensor(x.features)
    y_sites = so.ops.conv(x, kernel, strides=strides).coordinates
    upstream = _kernel(rng, (y_sites.shape[0], COUT), dtype)
    in_idx = _dense_indices(x.coordinates, 1)
    out_idx = _dense_indices(y_sites, strides)

    def sparse_loss(f, k):
        return tf.reduce_sum(so.ops.conv(x.with_features(f), k, strides=strides).features
                             * upstream)

    def dense_loss(f, k):
        dense = tf.scatter_nd(in_idx, f, [2, *shape, CIN])
        out = tf.nn.convolution(dense, k, strides=strides, padding="SAME")
        return tf.reduce_sum(tf.gather_nd(out, out_idx) * upstream)

    def second_order(loss_fn):
        with tf.GradientTape() as outer:
            outer.watch([features, kernel])
            with tf.GradientTape() as inner:
                inner.watch([features, kernel])
                loss = loss_fn(features, kernel)
            gf, gk = inner.gradient(loss, [features, kernel])
            second = tf.reduce_sum(tf.convert_to_tensor(gf) ** 3) + tf.reduce_sum(
                tf.sin(gk))
        return [tf.convert_to_tensor(g) for g in outer.gradient(second, [features, kernel])]

    got = second_order(sparse_loss)
    expected = tf.function(second_order)(dense_loss)  # see _dense_conv_grads
    for g, e in zip(got, expected):
        assert_close(g.numpy(), e.numpy(), dtype)


def test_masked_gradients(impl, rng):
    """No gradient to zero input entries nor to exactly-zero weights
    (docs/guides/paper.md, "Sparse back-propagation")."""
    dtype = np.float64
    x, _ = random_sparse(rng, (6, 6), CIN, dtype=dtype, density=0.5)
    f = x.features.numpy().copy()
    f[rng.random(f.shape) < 0.3] = 0.0
    w = _kernel(rng, (3, 3, CIN, COUT), dtype)
    w[rng.random(w.shape) < 0.3] = 0.0
    upstream = None
    grads = {}
    for masked in (False, True):
        features, kernel = tf.constant(f), tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch([features, kernel])
            y = so.ops.conv(x.with_features(features), kernel, masked_gradients=masked)
            if upstream is None:
                upstream = _kernel(rng, y.features.shape, dtype)
            loss = tf.reduce_sum(y.features * upstream)
        grads[masked] = (y.features.numpy(), [tf.convert_to_tensor(g).numpy()
                                              for g in tape.gradient(loss, [features,
                                                                            kernel])])
    np.testing.assert_array_equal(grads[True][0], grads[False][0])
    (gf, gk), (uf, uk) = grads[True][1], grads[False][1]
    assert np.all(uf[f == 0] != 0) and np.all(gf[f == 0] == 0)
    assert_close(gf[f != 0], uf[f != 0], dtype)
    assert np.all(gk[w == 0] == 0)
    assert_close(gk[w != 0], uk[w != 0], dtype)


# -- graph mode and determinism -----------------------------------------------

def _conv_pipeline(features, coordinates, k_down, k_sub, k_up):
    x = so.SparseTensor(features, coordinates)
    with tf.GradientTape() as tape:
        tape.watch([features, k_down, k_sub, k_up])
        y = so.ops.conv(x, k_down, strides=2)
        y = so.ops.conv(y, k_sub)
        z = so.ops.conv_transpose(y, k_up, strides=2)
        loss = tf.reduce_sum(z.features ** 2)
    grads = tape.gradient(loss, [features, k_down, k_sub, k_up])
    return [y.coordinates, y.features, z.coordinates, z.features] + [
        tf.convert_to_tensor(g) for g in grads]


def _pipeline_inputs(rng, dtype=np.float32, shape=(8, 8), density=0.4):
    x, _ = random_sparse(rng, shape, CIN, dtype=dtype, density=density)
    d = len(shape)
    return [x.features, x.coordinates,
            tf.constant(_kernel(rng, (2,) * d + (CIN, COUT), dtype)),
            tf.constant(_kernel(rng, (3,) * d + (COUT, COUT), dtype)),
            tf.constant(_kernel(rng, (2,) * d + (CIN, COUT), dtype))]


def test_eager_equals_tf_function(impl, rng):
    inputs = _pipeline_inputs(rng)
    eager = _conv_pipeline(*inputs)
    graph = tf.function(_conv_pipeline)(*inputs)
    for e, g in zip(eager, graph):
        assert e.dtype == g.dtype and e.shape == g.shape
        if e.dtype.is_integer or impl == "custom":
            # The same kernels run in both modes: bitwise equal.
            np.testing.assert_array_equal(e.numpy(), g.numpy())
        else:
            # Grappler may rewrite the reference path's small ops.
            assert_close(g.numpy(), e.numpy(), np.float32, rtol=1e-6, atol=1e-6)


def test_tf_function_with_unknown_number_of_sites(impl, rng):
    """A traced function with [None, ...] signatures serves every input size."""
    signature = [tf.TensorSpec([None, CIN], tf.float32),
                 tf.TensorSpec([None, 3], tf.int32),
                 tf.TensorSpec([2, 2, CIN, COUT], tf.float32),
                 tf.TensorSpec([3, 3, COUT, COUT], tf.float32),
                 tf.TensorSpec([2, 2, CIN, COUT], tf.float32)]
    fn = tf.function(_conv_pipeline, input_signature=signature)
    for density in (0.2, 0.6):
        inputs = _pipeline_inputs(rng, density=density)
        eager = _conv_pipeline(*inputs)
        for e, g in zip(eager, fn(*inputs)):
            assert_close(g.numpy(), e.numpy(), np.float32, rtol=1e-6, atol=1e-6)
    assert fn.experimental_get_tracing_count() == 1


def test_sparse_tensor_as_tf_function_argument(impl, rng):
    x, dense = random_sparse(rng, (6, 6), CIN, dtype=np.float64)
    kernel = _kernel(rng, (3, 3, CIN, COUT), np.float64)

    @tf.function
    def f(x):
        return so.ops.conv(x, kernel, strides=2)

    y = f(x)
    assert isinstance(y, so.SparseTensor)
    assert_close(y.features.numpy(), read_at(_dense_conv(dense, kernel, 2),
                                             y.coordinates, 2), np.float64)


def test_tensor_stride_unknown_while_tracing(impl, rng):
    """A tf.function whose tensor stride is an input: strided conv, transpose
    back onto the finer sites and a generative transpose, for two strides."""
    k = tf.constant(_kernel(rng, (3, 3, CIN, COUT), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, CIN], tf.float32),
                                  tf.TensorSpec([None, 3], tf.int32),
                                  tf.TensorSpec([2], tf.int32)])
    def f(features, coordinates, stride):
        x = so.SparseTensor(features, coordinates, stride)
        y = so.ops.conv(x, k, strides=2)
        z = so.ops.conv_transpose(y, k, strides=2)
        g = so.ops.conv_transpose(y, k, strides=2, generative=True)
        return (y.features, y.coordinates, y.stride_tensor, z.features, z.coordinates,
                z.stride_tensor, g.features, g.coordinates)

    x, dense = random_sparse(rng, (6, 6), CIN)
    for t in (1, 2):
        xt = so.SparseTensor(x.features, x.coordinates * np.array([1, t, t], np.int32),
                             stride=t)
        out = f(xt.features, xt.coordinates, tf.constant([t, t]))
        np.testing.assert_array_equal(out[2].numpy(), [2 * t, 2 * t])
        np.testing.assert_array_equal(out[5].numpy(), [t, t])
        assert site_set(out[1]) == strided_sites(xt.coordinates, 2 * t)
        assert_close(out[0].numpy(), read_at(_dense_conv(dense, k.numpy(), 2), out[1],
                                             2 * t), np.float32)
        eager_y = so.ops.conv(xt, k, strides=2)
        eager_z = so.ops.conv_transpose(eager_y, k, strides=2)
        eager_g = so.ops.conv_transpose(eager_y, k, strides=2, generative=True)
        for got, want in ((out[3], eager_z.features), (out[4], eager_z.coordinates),
                          (out[6], eager_g.features), (out[7], eager_g.coordinates)):
            assert_close(got.numpy(), want.numpy(), np.float32, rtol=1e-6, atol=1e-6)
    assert f.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic(impl, rng, dtype):
    """The same input twice: bitwise identical outputs and gradients."""
    inputs = _pipeline_inputs(rng, dtype=dtype, shape=(12, 12, 12), density=0.3)
    first = _conv_pipeline(*inputs)
    so_cache.clear()  # also when the kernel maps are built again
    # Fresh tensors (no cached maps), same values.
    second = _conv_pipeline(*[tf.identity(t) for t in inputs])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


_THREADS_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np, tensorflow as tf

    def compute():
        import sparse_ops as so
        rng = np.random.default_rng(1234)
        idx = np.argwhere(rng.random((2, 20, 20, 20)) < 0.25).astype(np.int32)
        f = tf.constant(rng.standard_normal((len(idx), 16)).astype(np.float32))
        c = tf.constant(idx)
        k1 = tf.constant(rng.standard_normal((3, 3, 3, 16, 16)).astype(np.float32))
        k2 = tf.constant(rng.standard_normal((2, 2, 2, 16, 16)).astype(np.float32))
        with so.config.implementation("custom"):
            with tf.GradientTape() as tape:
                tape.watch([f, k1, k2])
                y = so.ops.conv(so.SparseTensor(f, c), k1)
                z = so.ops.conv(y, k2, strides=2)
                u = so.ops.conv_transpose(z, k2, strides=2)
                loss = tf.reduce_sum(u.features ** 2)
            grads = tape.gradient(loss, [f, k1, k2])
        out = dict(y=y.features, z=z.features, zc=z.coordinates, u=u.features,
                   gf=grads[0], gk1=grads[1], gk2=grads[2])
        return {k: v.numpy() for k, v in out.items()}

    if __name__ == "__main__":
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
        np.savez(sys.argv[2], **compute())
""")


def _results_in_subprocess(tmp_path, threads):
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    out = tmp_path / f"out{threads}.npz"
    subprocess.run([sys.executable, str(script), str(threads), str(out)], check=True,
                   timeout=300, env=dict(os.environ),
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _assert_same_results(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_deterministic_across_thread_pools(tmp_path):
    """The C++ ops give bitwise identical results with this process' intra-op
    pool and with a single thread (a fresh process)."""
    namespace = {"__name__": "threads_script"}
    exec(_THREADS_SCRIPT, namespace)  # pylint: disable=exec-used
    in_process = namespace["compute"]()
    _assert_same_results(in_process, _results_in_subprocess(tmp_path, 1))


@pytest.mark.slow
def test_deterministic_with_many_threads(tmp_path):
    _assert_same_results(_results_in_subprocess(tmp_path, 1),
                         _results_in_subprocess(tmp_path, 8))


# -- edge cases --------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 3])
def test_empty_input(impl, d):
    """A tensor with no sites is valid: empty outputs of the right channel count,
    and gradients of the right shapes."""
    dtype = tf.float32
    x = so.SparseTensor(tf.zeros([0, CIN], dtype), tf.zeros([0, 1 + d], tf.int32))
    kernel = tf.ones((3,) * d + (CIN, COUT), dtype)
    bias = tf.ones([COUT], dtype)
    for strides in (1, 2):
        with tf.GradientTape() as tape:
            tape.watch([x.features, kernel, bias])
            y = so.ops.conv(x, kernel, bias, strides=strides)
            loss = tf.reduce_sum(y.features)
        assert y.features.shape == (0, COUT) and y.features.dtype == dtype
        assert y.coordinates.shape == (0, 1 + d)
        assert y.stride == (strides,) * d
        gf, gk, gb = [tf.convert_to_tensor(g) for g in
                      tape.gradient(loss, [x.features, kernel, bias])]
        assert gf.shape == (0, CIN)
        np.testing.assert_array_equal(gk.numpy(), np.zeros(kernel.shape))
        np.testing.assert_array_equal(gb.numpy(), np.zeros([COUT]))
    # Strided then transposed back onto the (empty) finer sites.
    y = so.ops.conv(x, kernel, strides=2)
    z = so.ops.conv_transpose(y, tf.ones((2,) * d + (CIN, COUT), dtype), strides=2)
    assert z.features.shape == (0, CIN) and z.coordinates.shape == (0, 1 + d)
    g = so.ops.conv_transpose(y, tf.ones((3,) * d + (CIN, COUT), dtype), strides=2,
                              generative=True)
    assert g.features.shape == (0, CIN) and g.coordinates.shape == (0, 1 + d)


def test_empty_input_with_out_coordinates(impl):
    """No input sites but some output sites: the output is the bias there."""
    x = so.SparseTensor(tf.zeros([0, CIN], tf.float64), tf.zeros([0, 3], tf.int32),
                        stride=2)
    out_c = np.array([[0, 0, 0], [1, 4, 2], [0, 2, 2]], np.int32)
    bias = np.arange(1.0, COUT + 1.0)
    y = so.ops.conv(x, tf.ones((3, 3, CIN, COUT), tf.float64), bias,
                    out_coordinates=out_c)
    assert_close(y.features.numpy(), np.tile(bias, (3, 1)), np.float64)
    z = so.ops.conv_transpose(x, tf.ones((2, 2, COUT, CIN), tf.float64), bias,
                              strides=2, out_coordinates=out_c)
    assert z.stride == (1, 1)
    assert_close(z.features.numpy(), np.tile(bias, (3, 1)), np.float64)


def test_empty_out_coordinates(impl, rng):
    x, _ = random_sparse(rng, (4, 4), CIN)
    kernel = tf.constant(_kernel(rng, (3, 3, CIN, COUT), np.float32))
    with tf.GradientTape() as tape:
        tape.watch([x.features, kernel])
        y = so.ops.conv(x, kernel, out_coordinates=tf.zeros([0, 3], tf.int32))
        loss = tf.reduce_sum(y.features)
    assert y.features.shape == (0, COUT)
    gf, gk = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [x.features, kernel])]
    np.testing.assert_array_equal(gf.numpy(), np.zeros(x.features.shape))
    np.testing.assert_array_equal(gk.numpy(), np.zeros(kernel.shape))


@pytest.mark.parametrize("strides,kernel_size", [(1, 3), (1, 4), (2, 3), (3, 5)])
def test_single_site(impl, rng, strides, kernel_size):
    d = 2
    shape = _grid(d, strides, 6)
    coords = np.array([[1, 4, 3]], np.int32)
    feats = _kernel(rng, (1, CIN), np.float64)
    x = so.SparseTensor(feats, coords)
    dense = np.zeros((2,) + shape + (CIN,))
    dense[1, 4, 3] = feats[0]
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float64)
    y = so.ops.conv(x, kernel, strides=strides)
    np.testing.assert_array_equal(y.coordinates.numpy(),
                                  [[1, 4 // strides * strides, 3 // strides * strides]])
    assert_close(y.features.numpy(),
                 read_at(_dense_conv(dense, kernel, strides), y.coordinates, strides),
                 np.float64)
    if strides > 1:
        z = so.ops.conv_transpose(y, kernel, strides=strides, generative=True)
        assert len(z.coordinates) == kernel_size ** d
        expected = brute_force_conv_transpose(
            y.coordinates, y.features, z.coordinates, kernel.reshape(-1, CIN, COUT),
            same_offsets(kernel_size, 1, strides, d), 1)
        assert_close(z.features.numpy(), expected, np.float64)


def _aligned_dense(x, cell):
    """Dense twin of x on a grid whose origin is aligned to the output cell."""
    c = x.coordinates.numpy().astype(np.int64)
    cell = np.asarray(cell)
    origin = np.floor_divide(c[:, 1:].min(0), cell) * cell
    extent = c[:, 1:].max(0) - origin + 1
    shape = tuple(int(v) for v in -(-extent // cell) * cell)
    return densify(x, shape, origin=origin), origin


@pytest.mark.parametrize("d,origin,kernel_size,strides,dilation", [
    (1, -7, 3, 1, 1), (1, -9, 4, 2, 1), (2, (-7, -3), 3, 1, 1),
    (2, (-6, -12), 3, 2, 1), (2, (-7, -5), 4, 2, 1), (2, (-5, 3), 2, 3, 1),
    (2, (-3, -20), 3, 1, 2), (3, (-2, -5, -1), 3, 2, 1)])
def test_negative_coordinates(impl, rng, d, origin, kernel_size, strides, dilation):
    x, _ = random_sparse(rng, (6,) * d if d < 3 else (4,) * d, CIN,
                         dtype=np.float64, origin=origin, density=0.4)
    assert (x.coordinates.numpy()[:, 1:] < 0).any()
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float64)
    y = so.ops.conv(x, kernel, strides=strides, dilation_rate=dilation)
    cell = (strides,) * d
    assert site_set(y.coordinates) == strided_sites(x.coordinates, cell)
    dense, dense_origin = _aligned_dense(x, cell)
    expected = _dense_conv(dense, kernel, strides, dilation)
    assert_close(y.features.numpy(), read_at(expected, y.coordinates, cell, dense_origin),
                 np.float64)
    if strides > 1:
        k_t = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float64)
        z = so.ops.conv_transpose(y, k_t, strides=strides)
        assert site_set(z.coordinates) == site_set(x.coordinates)
        coarse = densify(y, [n // strides for n in dense.shape[1:-1]],
                         origin=dense_origin, batch=dense.shape[0])
        expected = _dense_conv_transpose(coarse, k_t, dense.shape[1:-1], strides)
        assert_close(z.features.numpy(),
                     read_at(expected, z.coordinates, 1, dense_origin), np.float64)


_LIMIT_CASES = {  # name: (kernel_size, strides, dilation, transpose)
    "k3": (3, 1, 1, False), "k4": (4, 1, 1, False), "k3_dil2": (3, 1, 2, False),
    "k3_s2": (3, 2, 1, False), "k4_s2": (4, 2, 1, False), "k5_s4": (5, 4, 1, False),
    "transpose_k3_s2": (3, 2, 1, True), "transpose_k4_s2": (4, 2, 1, True),
}


@pytest.mark.parametrize("base", [2**31 - 16, -2**31], ids=["max", "min"])
@pytest.mark.parametrize("case", sorted(_LIMIT_CASES))
def test_coordinates_near_int32_limits(impl, rng, case, base):
    """Sites within 16 of the int32 limits give exactly the results of the same
    data shifted to small coordinates (probes beyond the limits must miss)."""
    kernel_size, strides, dilation, transpose = _LIMIT_CASES[case]
    d = 2
    mask = rng.random((2, 16, 16)) < 0.3
    mask[:, 0, 0] = mask[:, 15, 15] = mask[0, 0, 15] = mask[1, 15, 0] = True
    idx = np.argwhere(mask).astype(np.int64)
    rng.shuffle(idx)
    feats = _kernel(rng, (len(idx), CIN), np.float32)
    kernel = _kernel(rng, (kernel_size,) * d + (CIN, COUT), np.float32)
    near_base = 32  # same alignment to every stride used (a multiple of 16)
    results = []
    for b in (base, near_base):
        coords = np.concatenate([idx[:, :1], idx[:, 1:] + b], 1)
        assert coords.min() >= -2**31 and coords.max() <= 2**31 - 1
        x = so.SparseTensor(feats, coords.astype(np.int32))
        y = so.ops.conv(x, kernel, strides=strides, dilation_rate=dilation)
        if transpose:
            y = so.ops.conv_transpose(y, kernel, strides=strides)
        shift = np.array([0] + [b] * d, np.int64)
        results.append((y.coordinates.numpy().astype(np.int64) - shift,
                        y.features.numpy()))
    (far_c, far_f), (near_c, near_f) = results
    np.testing.assert_array_equal(far_c, near_c)
    np.testing.assert_array_equal(far_f, near_f)
    # ... and the shifted result is right.
    x_near = so.SparseTensor(feats, np.concatenate(
        [idx[:, :1], idx[:, 1:] + near_base], 1).astype(np.int32))
    offsets = same_offsets(kernel_size, dilation, strides, d)
    out_c = near_c + np.array([0] + [near_base] * d)
    if not transpose:
        expected = brute_force_conv(x_near.coordinates, feats, out_c,
                                    kernel.reshape(-1, CIN, COUT), offsets, 1)
    else:
        coarse_c = strided_sites(x_near.coordinates, strides)
        coarse = brute_force_conv(x_near.coordinates, feats, coarse_c,
                                  kernel.reshape(-1, CIN, COUT), offsets, 1)
        expected = brute_force_conv_transpose(coarse_c, coarse, out_c,
                                              kernel.reshape(-1, CIN, COUT), offsets, 1)
    assert_close(near_f, expected, np.float32)


@pytest.mark.parametrize("coordinate,kernel_size,overflows", [
    (2**31 - 2, 3, True),     # offsets 0..2: 2^31 - 2 + 2 > int32 max
    (2**31 - 4, 3, False),    # reaches exactly 2^31 - 2
    (-2**31, 4, True),        # offsets -1..2: -2^31 - 1 < int32 min
    (-2**31 + 2, 4, False)])  # reaches exactly -2^31 + 1
def test_generative_near_int32_limits(impl, rng, coordinate, kernel_size, overflows):
    """Generated sites must not wrap around: an error naming the overflow, or
    correct sites."""
    # Both sites near the same corner (a range of 2^32 on two axes could not
    # be packed into a 64-bit key at all).
    inward = -2 if coordinate > 0 else 2
    coords = np.array([[0, coordinate, coordinate],
                       [1, coordinate + inward, coordinate]], np.int32)
    x = so.SparseTensor(_kernel(rng, (2, CIN), np.float32), coords, stride=2)
    kernel = _kernel(rng, (kernel_size, kernel_size, COUT, CIN), np.float32)
    if overflows:
        with pytest.raises(tf.errors.InvalidArgumentError, match="overflow|int32"):
            so.ops.conv_transpose(x, kernel, strides=2, generative=True)
        return
    z = so.ops.conv_transpose(x, kernel, strides=2, generative=True)
    offsets = same_offsets(kernel_size, 1, 2, 2)
    reached = {(int(r[0]),) + tuple(int(v) for v in np.asarray(r[1:], np.int64) + o)
               for r in coords for o in offsets}
    assert site_set(z.coordinates) == sorted(reached)
    expected = brute_force_conv_transpose(coords, x.features, z.coordinates,
                                          kernel.reshape(-1, COUT, CIN), offsets, 1)
    assert_close(z.features.numpy(), expected, np.float32)


@pytest.mark.parametrize("batch_ids", [(1000, 7), (2**31 - 1, 0), (2**20, 2**31 - 2)])
def test_large_batch_indices(impl, rng, batch_ids):
    """Batch indices are labels: relabelling them changes nothing else."""
    x, _ = random_sparse(rng, (6, 6), CIN, density=0.4)
    c = x.coordinates.numpy()
    big = c.copy()
    big[:, 0] = np.where(c[:, 0] == 0, batch_ids[0], batch_ids[1])
    kernel = _kernel(rng, (3, 3, CIN, COUT), np.float32)
    k_t = _kernel(rng, (2, 2, CIN, COUT), np.float32)
    results = []
    for coords in (c, big):
        xb = so.SparseTensor(x.features, coords)
        y = so.ops.conv(xb, kernel, strides=2)
        z = so.ops.conv_transpose(y, k_t, strides=2)
        g = so.ops.conv_transpose(y, k_t, strides=2, generative=True)
        results.append({"y": y, "z": z, "g": g})
    relabel = {0: batch_ids[0], 1: batch_ids[1]}
    for key in ("y", "z", "g"):
        small, large = results[0][key], results[1][key]
        sc = small.coordinates.numpy().astype(np.int64)
        sc[:, 0] = [relabel[b] for b in sc[:, 0]]
        lc = large.coordinates.numpy().astype(np.int64)
        # Same sites and the same feature at each site.
        order_s, order_l = np.lexsort(sc.T[::-1]), np.lexsort(lc.T[::-1])
        np.testing.assert_array_equal(sc[order_s], lc[order_l])
        # Rows may be ordered differently (sorted by batch), so summation order
        # may differ: equal up to rounding.
        assert_close(large.features.numpy()[order_l], small.features.numpy()[order_s],
                     np.float32, rtol=1e-6, atol=1e-6)


# -- kernel-map reuse ----------------------------------------------------------

def test_kernel_map_identity_and_pairs(impl, rng):
    x, _ = random_sparse(rng, (5, 5), CIN, density=0.5)
    c = x.coordinates
    offsets = so.kernel_offsets(3, dimension=2)
    m1 = so.ops.kernel_map(c, c, offsets, 1)
    assert so.ops.kernel_map(c, c, offsets, 1) is m1
    assert so.ops.kernel_map(c, c, so.kernel_offsets(3, dimension=2), [1, 1]) is m1
    m2 = so.ops.kernel_map(c, c, so.kernel_offsets(3, 2, dimension=2), 1)
    assert m2 is not m1
    # The pairs are right: (in, out) with in_c == out_c + offset, by offset.
    cn = c.numpy().astype(np.int64)
    table = {tuple(r): i for i, r in enumerate(cn.tolist())}
    splits = m1.offset_splits.numpy()
    for k, o in enumerate(same_offsets(3, 1, 1, 2)):
        expected = sorted((table[q], j) for j, r in enumerate(cn)
                          if (q := (int(r[0]),) + tuple(int(v) for v in r[1:] + o))
                          in table)
        got = sorted(zip(m1.in_rows.numpy()[splits[k]:splits[k + 1]].tolist(),
                         m1.out_rows.numpy()[splits[k]:splits[k + 1]].tolist()))
        assert got == expected, k


def _pairs_by_offset(kmap):
    """[{(in_row, out_row)} per offset] of a KernelMap."""
    splits = kmap.offset_splits.numpy()
    pairs = list(zip(kmap.in_rows.numpy().tolist(), kmap.out_rows.numpy().tolist()))
    return [set(pairs[splits[k]:splits[k + 1]]) for k in range(len(splits) - 1)]


@pytest.mark.parametrize("case", ["submanifold", "fill-in", "strided", "near int32 limits"])
def test_kernel_map_same_for_sorted_and_shuffled_rows(case, rng):
    """Sorted rows (the order every coordinate op outputs) take the C++ op's
    merge path, rows in any other order its hash table: both give the pairs
    of a brute-force search, whatever the order of the rows."""
    lo, hi = (2**31 - 9, 2**31 - 1) if case == "near int32 limits" else (-6, 5)
    n = 120
    coords = np.unique(np.concatenate(
        [rng.integers(0, 3, (n, 1)), rng.integers(lo, hi + 1, (n, 3))], 1), axis=0)
    stride = [2, 1, 3] if case == "strided" else [1, 1, 1]
    offsets = so.kernel_offsets(3, dimension=3)
    if case == "strided":
        coords[:, 1:] = coords[:, 1:] // stride * stride
        coords = np.unique(coords, axis=0)
    if case == "fill-in":
        out = so.ops.generative_coordinates(coords.astype(np.int32), offsets, 1).numpy()
    else:
        out = coords
    out = np.unique(out, axis=0)  # sorted rows
    steps = offsets.numpy() * np.asarray(stride)
    table = {tuple(r): i for i, r in enumerate(coords.tolist())}
    want = [{(table[q], o) for o, r in enumerate(out.tolist())
             if (q := (r[0],) + tuple(np.add(r[1:], step).tolist())) in table}
            for step in steps]
    assert sum(map(len, want)) > len(out) // 2
    perm_in, perm_out = rng.permutation(len(coords)), rng.permutation(len(out))
    for shuffle_in, shuffle_out in ((False, False), (True, False), (False, True),
                                    (True, True)):
        in_c = coords[perm_in] if shuffle_in else coords
        out_c = out[perm_out] if shuffle_out else out
        kmap = so.ops.kernel_map(tf.constant(in_c, tf.int32), tf.constant(out_c, tf.int32),
                                 offsets, stride)
        got = [{(int(perm_in[i]) if shuffle_in else i, int(perm_out[o]) if shuffle_out else o)
                for i, o in pairs} for pairs in _pairs_by_offset(kmap)]
        assert got == want, (shuffle_in, shuffle_out)


def test_stride1_convs_share_kernel_map(impl, rng, kernel_map_builds):
    x, dense = random_sparse(rng, (6, 6), CIN)
    k1 = _kernel(rng, (3, 3, CIN, COUT), np.float32)
    k2 = _kernel(rng, (3, 3, COUT, COUT), np.float32)
    y = so.ops.conv(x, k1)
    z = so.ops.conv(y, k2)  # same coordinates tensor, same geometry
    w = so.ops.conv(x.with_features(x.features * 2), k1)
    assert len(kernel_map_builds) == 1
    assert kernel_map_builds[0] == impl
    # Submanifold: the second conv sees the first's output at the active sites only.
    y_ref = read_at(_dense_conv(dense, k1), x.coordinates, 1)
    assert_close(y.features.numpy(), y_ref, np.float32)
    y_dense = densify(y.with_features(y_ref), dense.shape[1:-1], batch=2)
    expected = read_at(_dense_conv(y_dense, k2), x.coordinates, 1)
    assert_close(z.features.numpy(), expected, np.float32)
    assert_close(w.features.numpy(), 2 * y.features.numpy(), np.float32)
    so.ops.conv(x, _kernel(rng, (5, 5, CIN, COUT), np.float32))  # new geometry
    assert len(kernel_map_builds) == 2


def test_conv_transpose_reuses_strided_conv_map(impl, rng, kernel_map_builds):
    x, _ = random_sparse(rng, (6, 6), CIN)
    k = _kernel(rng, (2, 2, CIN, COUT), np.float32)
    y = so.ops.conv(x, k, strides=2)
    assert len(kernel_map_builds) == 1
    z = so.ops.conv_transpose(y, k, strides=2)
    assert len(kernel_map_builds) == 1
    # The transpose is the adjoint of the same map: <conv(x), y> == <x, conv^T(y)>.
    np.testing.assert_allclose(np.sum(y.features.numpy() ** 2),
                               np.sum(x.features.numpy() * z.features.numpy()),
                               rtol=1e-5)


def test_kernel_map_reuse_inside_tf_function(impl, rng, kernel_map_builds):
    x, dense = random_sparse(rng, (6, 6), CIN)
    k1 = tf.constant(_kernel(rng, (3, 3, CIN, COUT), np.float32))
    k2 = tf.constant(_kernel(rng, (3, 3, COUT, COUT), np.float32))
    kd = tf.constant(_kernel(rng, (2, 2, COUT, COUT), np.float32))

    @tf.function
    def f(features, coordinates):
        x = so.SparseTensor(features, coordinates)
        y = so.ops.conv(so.ops.conv(x, k1), k2)        # one map
        down = so.ops.conv(y, kd, strides=2)            # a second map
        up = so.ops.conv_transpose(down, kd, strides=2)  # reuses the second
        return y.features, up.features

    y, _ = f(x.features, x.coordinates)
    assert len(kernel_map_builds) == 2
    y1 = read_at(_dense_conv(dense, k1.numpy()), x.coordinates, 1)
    y1_dense = densify(x.with_features(y1), dense.shape[1:-1], batch=2)
    expected = read_at(_dense_conv(y1_dense, k2.numpy()), x.coordinates, 1)
    assert_close(y.numpy(), expected, np.float32)
    f(x.features * 2, x.coordinates)  # no retrace, no new maps
    assert len(kernel_map_builds) == 2


def test_cache_never_returns_a_stale_map(impl, rng):
    """Tensors die and their ids get reused; every result must still be right."""
    kernel = _kernel(rng, (3, 3, CIN, COUT), np.float32)
    for _ in range(6):
        x, dense = random_sparse(rng, (5, 5), CIN, density=float(rng.uniform(0.2, 0.8)))
        y = so.ops.conv(x, kernel, strides=int(rng.integers(1, 3)))
        s = y.stride[0]
        assert_close(y.features.numpy(),
                     read_at(_dense_conv(np.pad(dense, [(0, 0), (0, 1), (0, 1), (0, 0)]),
                                         kernel, s), y.coordinates, s), np.float32)
        del x, y


# -- invalid input -----------------------------------------------------------

def test_invalid_kernels(impl, rng):
    x, _ = random_sparse(rng, (4, 4), CIN)
    with pytest.raises(ValueError, match="channels"):
        so.ops.conv(x, np.ones((3, 3, CIN + 1, COUT), np.float32))
    with pytest.raises(ValueError):
        so.ops.conv(x, np.ones((3, CIN, COUT), np.float32))  # hypercube needs rank 4
    with pytest.raises(TypeError):
        so.ops.conv(x, np.ones((3, 3, CIN, COUT), np.float64))
    with pytest.raises(ValueError):
        so.ops.conv(x, np.ones((4, CIN, COUT), np.float32),
                    region=np.array([[0, 0], [1, 0], [0, 1]], np.int32))
    with pytest.raises(ValueError, match="channels"):
        so.ops.conv_transpose(x, np.ones((2, 2, COUT, CIN + 1), np.float32),
                              generative=True)


def test_duplicate_sites_raise(impl):
    c = np.array([[0, 1, 1], [0, 2, 1], [0, 1, 1]], np.int32)
    x = so.SparseTensor(np.ones((3, CIN), np.float32), c)
    with pytest.raises(tf.errors.InvalidArgumentError, match="duplicate"):
        so.ops.conv(x, np.ones((3, 3, CIN, COUT), np.float32)).features.numpy()


def test_negative_batch_index_raises(impl):
    c = np.array([[0, 1, 1], [-1, 2, 1]], np.int32)
    x = so.SparseTensor(np.ones((2, CIN), np.float32), c)
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch"):
        so.ops.conv(x, np.ones((3, 3, CIN, COUT), np.float32)).features.numpy()


def test_conv_transpose_without_output_sites_raises(impl, rng):
    x, _ = random_sparse(rng, (4, 4), CIN, stride=2)  # not made by a strided op
    with pytest.raises(ValueError, match="generative"):
        so.ops.conv_transpose(x, np.ones((2, 2, COUT, CIN), np.float32), strides=2)

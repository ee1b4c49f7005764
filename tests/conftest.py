"""Shared fixtures and oracles for the sparse_ops tests.

Everything here that produces an expected value is independent of the
library: dense arrays are built in numpy from the same random draw that makes
the sparse input, kernel offsets follow the documented formula
(docs/concepts.md, "Kernel offsets: TF-SAME"), and the
brute-force convolution is a dict lookup per (output site, offset).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import itertools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import sparse_ops as so  # noqa: E402
from sparse_ops.ops import cache as so_cache  # noqa: E402
from sparse_ops.ops import coordinates as so_coordinates  # noqa: E402

IMPLEMENTATIONS = ("custom", "reference")

# Absolute and relative tolerances per dtype for values of order 1-10 that
# are sums of up to a few hundred products.
TOLERANCES = {
    np.dtype(np.float16): dict(rtol=2e-2, atol=2e-2),
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
}


def tolerance(dtype):
    """{rtol, atol} for a numpy or TF dtype."""
    if isinstance(dtype, tf.DType):
        dtype = dtype.as_numpy_dtype
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None, **overrides):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    tol = dict(tolerance(dtype if dtype is not None else actual.dtype))
    tol.update(overrides)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, **tol)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """Runs the test once with the C++ ops and once with the pure-TF path."""
    with so.config.implementation(request.param):
        yield request.param


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's id (stable across runs)."""
    seed = sum(map(ord, request.node.nodeid)) * 7919 % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture
def kernel_map_builds(monkeypatch):
    """Counts kernel maps actually built (cache misses), for both paths."""
    calls = []
    # Both implementations of the raw op that kernel_map runs on a miss.
    op = so_coordinates._kernel_map_op

    def counted(name, fn):
        def run(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(op, "reference", counted("reference", op.reference))
    monkeypatch.setattr(op, "custom", counted("custom", op.custom))
    so_cache.clear()
    yield calls
    so_cache.clear()


# -- geometry oracle (docs/concepts.md's formula, written out independently) --

def as_tuple(v, d):
    return (int(v),) * d if np.ndim(v) == 0 else tuple(int(a) for a in v)


def same_offsets(kernel_size, dilation, stride, d):
    """Hypercube offsets per docs/concepts.md: offset_k = k*d - max((K-1)*d+1-s, 0)//2,
    row-major over the axes; int64 [K, D]."""
    ks, ds, ss = as_tuple(kernel_size, d), as_tuple(dilation, d), as_tuple(stride, d)
    axes = [[k * dl - max((n - 1) * dl + 1 - s, 0) // 2 for k in range(n)]
            for n, dl, s in zip(ks, ds, ss)]
    return np.array(list(itertools.product(*axes)), np.int64).reshape(-1, d)


def hypercross_offsets(kernel_size, dilation, d):
    """Set of hypercross offsets per docs/concepts.md (centre + steps along
    each axis)."""
    ks, ds = as_tuple(kernel_size, d), as_tuple(dilation, d)
    out = {(0,) * d}
    for axis in range(d):
        for step in range(1, (ks[axis] - 1) // 2 + 1):
            for sign in (-1, 1):
                o = [0] * d
                o[axis] = sign * step * ds[axis]
                out.add(tuple(o))
    return out


# -- random sparse inputs with their dense twin --------------------------------

def random_sparse(rng, spatial_shape, channels, batch=2, density=0.35,
                  dtype=np.float32, stride=1, origin=0):
    """A random sparse tensor and its dense twin.

    Sites are drawn on a grid of `spatial_shape` cells per batch item; cell
    index i sits at coordinate origin + i * stride. Features are non-zero.
    Returns (SparseTensor, dense [B, *spatial_shape, C] numpy array).
    """
    d = len(spatial_shape)
    stride_v = np.array(as_tuple(stride, d), np.int64)
    origin_v = np.array(as_tuple(origin, d), np.int64)
    mask = rng.random((batch,) + tuple(spatial_shape)) < density
    if not mask.any():
        mask.flat[rng.integers(mask.size)] = True
    idx = np.argwhere(mask)
    rng.shuffle(idx)  # row order must not matter
    feats = rng.uniform(0.25, 1.0, (len(idx), channels)) * rng.choice(
        [-1.0, 1.0], (len(idx), channels))
    feats = feats.astype(dtype)
    dense = np.zeros((batch,) + tuple(spatial_shape) + (channels,), dtype)
    dense[tuple(idx.T)] = feats
    coords = np.concatenate(
        [idx[:, :1], origin_v + idx[:, 1:] * stride_v], 1).astype(np.int32)
    x = so.SparseTensor(feats, coords, stride=tuple(int(s) for s in stride_v))
    return x, dense


def densify(x, shape, origin=0, batch=None):
    """numpy densification of a SparseTensor (independent of x.dense()).

    Cell index = (coordinate - origin) / stride; shape is the spatial shape.
    """
    f = np.asarray(x.features)
    c = np.asarray(x.coordinates).astype(np.int64)
    d = c.shape[1] - 1
    stride_v = np.array(as_tuple(np.asarray(x.stride_tensor), d), np.int64)
    origin_v = np.array(as_tuple(origin, d), np.int64)
    rel = c[:, 1:] - origin_v
    assert np.all(rel % stride_v == 0), "coordinates not on the stride grid"
    idx = rel // stride_v
    assert np.all(idx >= 0) and np.all(idx < np.array(shape)), "site outside grid"
    b = int(c[:, 0].max()) + 1 if batch is None and len(c) else (batch or 0)
    dense = np.zeros((b,) + tuple(shape) + (f.shape[1],), f.dtype)
    assert len({tuple(r) for r in c.tolist()}) == len(c), "duplicate sites"
    dense[(c[:, 0],) + tuple(idx.T)] = f
    return dense


def read_at(dense, coordinates, cell, origin=0):
    """dense[b, (c - origin) / cell] for each row of coordinates (numpy).

    `cell` is the coordinate extent of one dense cell (s * t for a conv
    output). Asserts that every site is on a cell corner and inside the grid.
    """
    c = np.asarray(coordinates).astype(np.int64)
    d = c.shape[1] - 1
    cell_v = np.array(as_tuple(cell, d), np.int64)
    rel = c[:, 1:] - np.array(as_tuple(origin, d), np.int64)
    assert np.all(rel % cell_v == 0), "output site not on the output grid"
    idx = rel // cell_v
    dense = np.asarray(dense)
    assert np.all(idx >= 0) and np.all(idx < np.array(dense.shape[1:-1])), (
        "output site outside the dense grid")
    return dense[(c[:, 0],) + tuple(idx.T)]


def strided_sites(coordinates, cell):
    """unique(floor(c / cell) * cell), as a sorted set of tuples (numpy)."""
    c = np.asarray(coordinates).astype(np.int64)
    d = c.shape[1] - 1
    cell_v = np.array(as_tuple(cell, d), np.int64)
    s = np.concatenate([c[:, :1], np.floor_divide(c[:, 1:], cell_v) * cell_v], 1)
    return sorted({tuple(r) for r in s.tolist()})


def site_set(coordinates):
    rows = [tuple(r) for r in np.asarray(coordinates).astype(np.int64).tolist()]
    assert len(set(rows)) == len(rows), "duplicate output sites"
    return sorted(rows)


def brute_force_conv(in_coords, in_feats, out_coords, kernel3, offsets, in_stride):
    """out[o] = sum_k sum over input sites at out + offsets[k] * stride of
    features @ kernel3[k]; a dict of coordinate -> row (numpy, float64)."""
    in_c = np.asarray(in_coords).astype(np.int64)
    out_c = np.asarray(out_coords).astype(np.int64)
    f = np.asarray(in_feats, np.float64)
    w = np.asarray(kernel3, np.float64)
    d = in_c.shape[1] - 1
    t = np.array(as_tuple(in_stride, d), np.int64)
    table = {tuple(r): i for i, r in enumerate(in_c.tolist())}
    out = np.zeros((len(out_c), w.shape[2]))
    steps = np.asarray(offsets, np.int64) * t
    for o, row in enumerate(out_c):
        for k, step in enumerate(steps):
            q = (int(row[0]),) + tuple(int(v) for v in row[1:] + step)
            i = table.get(q)
            if i is not None:
                out[o] += f[i] @ w[k]
    return out


def brute_force_conv_transpose(in_coords, in_feats, out_coords, kernel3,
                               offsets, out_stride):
    """Adjoint of brute_force_conv: out[i] += in[o] @ kernel3[k]^T for every
    out site i at in_site + offsets[k] * out_stride."""
    in_c = np.asarray(in_coords).astype(np.int64)
    out_c = np.asarray(out_coords).astype(np.int64)
    f = np.asarray(in_feats, np.float64)
    w = np.asarray(kernel3, np.float64)  # [K, Cout, Cin]
    d = in_c.shape[1] - 1
    t = np.array(as_tuple(out_stride, d), np.int64)
    table = {tuple(r): i for i, r in enumerate(out_c.tolist())}
    out = np.zeros((len(out_c), w.shape[1]))
    steps = np.asarray(offsets, np.int64) * t
    for o, row in enumerate(in_c):
        for k, step in enumerate(steps):
            q = (int(row[0]),) + tuple(int(v) for v in row[1:] + step)
            i = table.get(q)
            if i is not None:
                out[i] += w[k] @ f[o]
    return out

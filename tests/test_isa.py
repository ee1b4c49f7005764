"""The CPU kernel paths (AVX-512, AVX2, portable), chosen at run time from
what the CPU reports and narrowed by SPARSE_OPS_ISA, against each other:
AVX-512 and AVX2 bit for bit (the same FMA chains), the portable path (Eigen)
within float rounding; every path against a dense float64 reference."""

import os

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader


def cpu_paths():
    with open("/proc/cpuinfo") as f:
        flags = set(next((line.split(":")[1].split() for line in f
                          if line.startswith("flags")), []))
    paths = ["portable"]
    if {"avx2", "fma"} <= flags:
        paths.append("avx2")
    if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= flags:
        paths.append("avx512")
    return paths


PATHS = cpu_paths() if os.path.exists("/proc/cpuinfo") else ["portable"]


@pytest.fixture
def isa():
    """Runs the body under each SPARSE_OPS_ISA, restoring the environment."""
    previous = os.environ.get("SPARSE_OPS_ISA")

    def run(path, fn):
        os.environ["SPARSE_OPS_ISA"] = path
        try:
            return fn()
        finally:
            if previous is None:
                os.environ.pop("SPARSE_OPS_ISA", None)
            else:
                os.environ["SPARSE_OPS_ISA"] = previous
    return run


def _problem(rng, c_in, c_out, n=300, zero_fraction=0.0):
    coords = np.unique(rng.integers(-5, 5, (n, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(coords), 1), int), coords], 1).astype(np.int32)
    feats = rng.standard_normal((len(coords), c_in)).astype(np.float32)
    kernel = rng.standard_normal((27, c_in, c_out)).astype(np.float32)
    if zero_fraction:
        kernel[rng.random(kernel.shape) < zero_fraction] = 0.0
        kernel[:, :, : c_out // 3] = 0.0  # whole column tiles without weights
        kernel[3] = 0.0  # an offset without weights
    return coords, feats, kernel


def _run_all(coords, feats, kernel):
    """Forward, input gradient and weight gradient of one convolution."""
    lib = _loader.library()
    offsets = so.kernel_offsets(3, dimension=3)
    splits, in_rows, out_rows = lib.sparse_ops_kernel_map(coords, coords, offsets,
                                                          tf.constant([1, 1, 1]))
    n = tf.constant(len(coords), tf.int64)
    out = lib.sparse_ops_conv(feats, kernel, splits, in_rows, out_rows, n)
    grad_in = lib.sparse_ops_conv_backprop_input(out, kernel, splits, in_rows, out_rows, n)
    grad_kernel = lib.sparse_ops_conv_backprop_kernel(feats, out, splits, in_rows, out_rows)
    return [t.numpy() for t in (out, grad_in, grad_kernel)], (splits, in_rows, out_rows)


def _dense_reference(coords, feats, kernel, pairs):
    splits, in_rows, out_rows = (p.numpy() for p in pairs)
    out = np.zeros((len(coords), kernel.shape[2]))
    for k in range(kernel.shape[0]):
        i, o = in_rows[splits[k]:splits[k + 1]], out_rows[splits[k]:splits[k + 1]]
        np.add.at(out, o, feats[i].astype(np.float64) @ kernel[k].astype(np.float64))
    return out


@pytest.mark.parametrize("c_in,c_out", [(64, 64), (13, 48), (7, 16), (5, 24), (3, 80), (8, 5)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.7])
def test_paths_agree(isa, c_in, c_out, zero_fraction):
    rng = np.random.default_rng(c_in * 100 + c_out)
    coords, feats, kernel = _problem(rng, c_in, c_out, zero_fraction=zero_fraction)
    results = {}
    for path in PATHS:
        results[path], pairs = isa(path, lambda: _run_all(coords, feats, kernel))
        again, _ = isa(path, lambda: _run_all(coords, feats, kernel))
        for a, b in zip(results[path], again):  # each path is deterministic
            np.testing.assert_array_equal(a, b)
    want = _dense_reference(coords, feats, kernel, pairs)
    for path, (out, _, _) in results.items():
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=path)
    if "avx512" in results:  # the same FMA chains: bit for bit
        for a, b in zip(results["avx512"], results["avx2"]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(results["portable"], results[PATHS[-1]]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_unknown_isa_name_takes_the_cpu_path(isa):
    rng = np.random.default_rng(9)
    coords, feats, kernel = _problem(rng, 16, 32)
    best, _ = _run_all(coords, feats, kernel)
    other, _ = isa("no-such-isa", lambda: _run_all(coords, feats, kernel))
    for a, b in zip(best, other):
        np.testing.assert_array_equal(a, b)


def test_empty_and_one_site_on_every_path(isa):
    for path in PATHS:
        for n in (0, 1):
            coords = np.zeros((n, 4), np.int32)
            feats = np.ones((n, 32), np.float32)
            kernel = np.ones((27, 32, 32), np.float32)
            (out, grad_in, grad_kernel), _ = isa(path, lambda: _run_all(coords, feats, kernel))
            assert out.shape == (n, 32)
            if n:  # the centre offset only: 32 ones
                np.testing.assert_array_equal(out, np.full((1, 32), 32.0))
            assert grad_kernel.shape == (27, 32, 32)

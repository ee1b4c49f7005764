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
        if "avx512_bf16" in flags:
            paths.append("avx512bf16")
    return paths


ALL_PATHS = cpu_paths() if os.path.exists("/proc/cpuinfo") else ["portable"]
# The float kernels' paths (avx512bf16 differs from avx512 only in bfloat16).
PATHS = [p for p in ALL_PATHS if p != "avx512bf16"]


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


# -- bfloat16 ------------------------------------------------------------------
# Products of bfloat16 values are exact in float; each output is a float sum
# rounded once to bfloat16 (2^-8 relative). On avx512bf16 the products are
# vdpbf16ps dot products (pairs of channels summed in another order); the
# other paths widen the rows to float and run the float kernels.

def _bf16_problem(rng, c_in, c_out, zero_fraction=0.0):
    coords, feats, kernel = _problem(rng, c_in, c_out, zero_fraction=zero_fraction)
    as_bf16 = lambda a: tf.constant(a, tf.bfloat16)  # noqa: E731
    return coords, as_bf16(feats), as_bf16(kernel)


def _bf16_forward_and_input_gradient(coords, feats, kernel, grad):
    lib = _loader.library()
    offsets = so.kernel_offsets(3, dimension=3)
    kmap = lib.sparse_ops_kernel_map(coords, coords, offsets, tf.constant([1, 1, 1]))
    n = tf.constant(len(coords), tf.int64)
    out = lib.sparse_ops_conv(feats, kernel, *kmap, n)
    grad_in = lib.sparse_ops_conv_backprop_input(grad, kernel, *kmap, n)
    assert out.dtype == grad_in.dtype == tf.bfloat16
    return [tf.cast(t, tf.float64).numpy() for t in (out, grad_in)], kmap


def _within_bfloat16_rounding(got, want, scale, err_msg):
    """got equals want rounded to bfloat16 after a float32 sum: within half
    a bfloat16 ulp (2^-8 relative) plus float32 accumulation error."""
    bound = 2.0 ** -8 * np.abs(want) + 1e-5 * scale
    assert np.all(np.abs(got - want) <= bound), (
        f"{err_msg}: max excess {np.max(np.abs(got - want) - bound)}")


@pytest.mark.parametrize("c_in,c_out", [(64, 64), (32, 48), (13, 48), (6, 16), (3, 80), (8, 5)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.7])
def test_bfloat16_paths(isa, c_in, c_out, zero_fraction):
    rng = np.random.default_rng(c_in * 100 + c_out + 7)
    coords, feats, kernel = _bf16_problem(rng, c_in, c_out, zero_fraction)
    grad = tf.constant(rng.standard_normal((len(coords), c_out)), tf.bfloat16)
    results = {}
    for path in ALL_PATHS:
        run = lambda: _bf16_forward_and_input_gradient(coords, feats, kernel, grad)  # noqa: E731
        results[path], kmap = isa(path, run)
        again, _ = isa(path, run)
        for a, b in zip(results[path], again):  # deterministic
            np.testing.assert_array_equal(a, b)
    f64 = lambda t: tf.cast(t, tf.float64).numpy()  # noqa: E731
    x, w, g = f64(feats), f64(kernel), f64(grad)
    want_out = _dense_reference(coords, x, w, kmap)
    want_in = _dense_reference(coords, g, np.transpose(w, (0, 2, 1)),
                               [kmap[0], kmap[2], kmap[1]])
    scale_out = _dense_reference(coords, np.abs(x), np.abs(w), kmap)
    scale_in = _dense_reference(coords, np.abs(g), np.abs(np.transpose(w, (0, 2, 1))),
                                [kmap[0], kmap[2], kmap[1]])
    for path, (out, grad_in) in results.items():
        _within_bfloat16_rounding(out, want_out, scale_out, f"{path} forward")
        _within_bfloat16_rounding(grad_in, want_in, scale_in, f"{path} input gradient")
    if "avx512" in results:  # widened rows, the same float FMA chains
        for a, b in zip(results["avx512"], results["avx2"]):
            np.testing.assert_array_equal(a, b)


def test_bfloat16_empty_and_one_site(isa):
    for path in ALL_PATHS:
        for n in (0, 1):
            coords = np.zeros((n, 4), np.int32)
            ones = tf.ones((n, 32), tf.bfloat16)
            kernel = tf.ones((27, 32, 32), tf.bfloat16)
            (out, grad_in), _ = isa(path, lambda: _bf16_forward_and_input_gradient(
                coords, ones, kernel, ones))
            assert out.shape == grad_in.shape == (n, 32)
            if n:  # the centre offset only: 32 ones
                np.testing.assert_array_equal(out, np.full((1, 32), 32.0))


def test_bfloat16_conv_ops_and_gradients():
    """so.ops.conv / conv_transpose in bfloat16 against the float32 ops on
    the same (bfloat16) values, and gradients of both inputs."""
    rng = np.random.default_rng(3)
    coords, feats, kernel = _bf16_problem(rng, 16, 32)
    kernel5 = tf.reshape(kernel, [3, 3, 3, 16, 32])
    x16 = so.SparseTensor(feats, coords)
    x32 = so.SparseTensor(tf.cast(feats, tf.float32), coords)
    k32 = tf.cast(kernel5, tf.float32)

    def loss(x, k):
        y = so.ops.conv(x, k)
        z = so.ops.conv_transpose(y, k, strides=1)  # [..., Cout 16, Cin 32]
        return y, z, tf.reduce_sum(tf.cast(z.features, tf.float32) ** 2)

    with tf.GradientTape() as tape:
        tape.watch([x16.features, kernel5])
        y16, z16, l16 = loss(x16, kernel5)
    d16 = tape.gradient(l16, [x16.features, kernel5])
    with tf.GradientTape() as tape:
        tape.watch([x32.features, k32])
        y32, z32, l32 = loss(x32, k32)
    d32 = tape.gradient(l32, [x32.features, k32])
    assert y16.features.dtype == z16.features.dtype == tf.bfloat16
    assert d16[0].dtype == d16[1].dtype == tf.bfloat16
    for a, b in [(y16.features, y32.features), (z16.features, z32.features),
                 (d16[0], d32[0]), (d16[1], d32[1])]:
        a, b = tf.cast(a, tf.float64).numpy(), tf.cast(b, tf.float64).numpy()
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * np.abs(b).max())


def test_mixed_bfloat16_training_step():
    """A Keras model under mixed_bfloat16 runs its convolutions in bfloat16
    and takes a training step close to the float32 model's."""
    import keras  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(5)
    coords, feats, _ = _problem(rng, 8, 8)
    y_true = rng.standard_normal((len(coords), 4)).astype(np.float32)

    def step(policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(1)
            layers = [so.layers.Conv(16, 3), so.layers.Conv(4, 3)]
            x = so.SparseTensor(tf.constant(feats), coords)
            with tf.GradientTape() as tape:
                h = layers[1](layers[0](x))
                loss = tf.reduce_mean((tf.cast(h.features, tf.float32) - y_true) ** 2)
            variables = layers[0].trainable_variables + layers[1].trainable_variables
            grads = tape.gradient(loss, variables)
            return h.features.dtype, float(loss), [g.numpy() for g in grads]
        finally:
            keras.mixed_precision.set_global_policy("float32")

    dtype16, loss16, grads16 = step("mixed_bfloat16")
    dtype32, loss32, grads32 = step("float32")
    assert dtype16 == tf.bfloat16 and dtype32 == tf.float32
    assert abs(loss16 - loss32) <= 0.02 * loss32
    for a, b in zip(grads16, grads32):
        assert a.dtype == np.float32  # float32 variables get float32 gradients
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.03 * np.abs(b).max())


# -- the other kernels: one copy per path through RunVectorized ----------------
# Element-wise loops and sums per element in a fixed order: every path gives
# the same bits, except where the AVX2 / AVX-512 copies fuse a multiply and
# an add that the baseline copy rounds twice (depthwise, averaged unpooling):
# those are compared within float rounding.

def _other_kernels(coords, feats, points):
    x = so.SparseTensor(tf.constant(feats), coords)
    dk = tf.constant(np.linspace(-1, 1, 27 * feats.shape[1]).reshape(
        3, 3, 3, feats.shape[1], 1), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x.features)
        pooled = so.ops.max_pool(x, 2, strides=2)
        loss = tf.reduce_sum(pooled.features ** 2)
    exact = {
        "kernel_map": tf.concat([tf.cast(t, tf.int64) for t in _loader.library()
                                 .sparse_ops_kernel_map(coords, coords,
                                                        so.kernel_offsets(3, dimension=3),
                                                        tf.constant([1, 1, 1]))], 0),
        "max_pool": pooled.features,
        "max_pool_grad": tape.gradient(loss, x.features),
        "avg_pool": so.ops.avg_pool(x, 3, strides=2).features,
        "sum_pool": so.ops.sum_pool(x, 2, strides=1).features,
        "global_max": so.ops.global_pool(x, "max"),
        "global_avg": so.ops.global_pool(x, "avg"),
        "attention": so.ops.attention(x, k=40).features,
    }
    voxels, inverse = so.ops.voxelize(points[:, :4], points[:, 4:], voxel_size=0.7)
    exact.update(voxel_features=voxels.features, voxel_coordinates=voxels.coordinates,
                 voxel_inverse=inverse)
    rounded = {
        "depthwise": so.ops.depthwise_conv(x, dk).features,
        "unpool": so.ops.unpool(so.ops.avg_pool(x, 2, strides=2), 2).features,
    }
    return ({k: v.numpy() for k, v in exact.items()},
            {k: v.numpy() for k, v in rounded.items()})


def test_other_kernels_agree_on_every_path(isa):
    rng = np.random.default_rng(11)
    coords, feats, _ = _problem(rng, 24, 8, n=400)
    points = np.concatenate([np.zeros((500, 1)), rng.uniform(-4, 4, (500, 3)),
                             rng.standard_normal((500, 5))], 1).astype(np.float32)
    results = {p: isa(p, lambda: _other_kernels(coords, feats, points)) for p in PATHS}
    first = results[PATHS[0]]
    for path, (exact, rounded) in results.items():
        again = isa(path, lambda: _other_kernels(coords, feats, points))
        for name in exact:  # deterministic, and the same bits on every path
            np.testing.assert_array_equal(exact[name], again[0][name], err_msg=name)
            np.testing.assert_array_equal(exact[name], first[0][name],
                                          err_msg=f"{name}: {path} vs {PATHS[0]}")
        for name in rounded:
            np.testing.assert_array_equal(rounded[name], again[1][name], err_msg=name)
            np.testing.assert_allclose(rounded[name], first[1][name], rtol=1e-5,
                                       atol=1e-5 * np.abs(first[1][name]).max(),
                                       err_msg=f"{name}: {path} vs {PATHS[0]}")

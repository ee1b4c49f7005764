"""The defects that outside testing found (hostile input, wrong exception
types, invalid input silently accepted, anonymous messages, API gaps, the
transposed convolution's link to finer sites): one test each, every one of
which failed before the fix. Cases that could crash the process live in
test_errors.py / test_fuzz.py, which run them in child processes."""

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader
from sparse_ops.ops import cache as so_cache

from conftest import brute_force_conv_transpose, same_offsets, site_set

INVALID = tf.errors.InvalidArgumentError


def _x(channels=2, stride=1):
    return so.SparseTensor(tf.ones([3, channels]), [[0, 0, 0], [0, 2, 0], [1, 0, 2]],
                           stride)


# -- sizes checked before anything is built ----------------------------------------

def test_hypercross_of_huge_size_is_refused_at_once():
    with pytest.raises(ValueError, match="offsets"):
        so.kernel_offsets(2**31 - 1, region="hypercross", dimension=2)


def test_huge_dimension_is_refused_with_a_value_error():
    with pytest.raises(ValueError, match="dimension"):
        so.kernel_offsets(64, dimension=10**6)


@pytest.mark.parametrize("name", ["dilation_rate", "strides"])
def test_values_beyond_int32_raise_value_errors(name):
    kwargs = {name: 2**31}
    with pytest.raises(ValueError, match=name.split("_")[0]):
        so.ops.conv(_x(), tf.ones([3, 3, 2, 2]), **kwargs)
    with pytest.raises(ValueError, match=name):
        so.layers.Conv(2, 3, **kwargs)


def test_batch_index_at_the_int32_limit_raises_instead_of_wrapping():
    x = so.SparseTensor(tf.ones([1, 2]), [[2**31 - 1, 0]])
    with pytest.raises(INVALID, match="batch"):
        x.batch_size()
    # Largest allowed: the batch size is still an int32.
    y = so.SparseTensor(tf.ones([1, 2]), [[2**31 - 2, 0]])
    assert int(y.batch_size()) == 2**31 - 1


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_instance_norm_memory_follows_sites_not_batch_indices(dtype):
    # Two sites of batch items 0 and 2^31 - 2: segments over the items
    # present, not a [2^31 - 1, C] table.
    f = tf.constant([[1.0, 2.0], [3.0, 5.0], [4.0, 9.0]], dtype)
    x = so.SparseTensor(f, [[0, 0], [2**31 - 2, 1], [2**31 - 2, 2]])
    out = so.ops.instance_norm(x, epsilon=1e-6).features.numpy().astype(np.float64)
    np.testing.assert_allclose(out, [[0, 0], [-1, -1], [1, 1]], atol=1e-2)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_global_pool_rejects_negative_batch_in_every_dtype(impl, dtype):
    del impl
    x = so.SparseTensor(tf.ones([2, 2], dtype), [[0, 0], [-1, 1]])
    with pytest.raises(INVALID, match="batch"):
        so.ops.global_pool(x)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_global_pool_of_half_floats_matches_float32(dtype):
    f = np.random.default_rng(0).normal(size=[6, 3]).astype(np.float32)
    c = [[0, 0], [0, 1], [1, 0], [1, 4], [3, 2], [3, 3]]
    for mode in ("max", "avg", "sum"):
        want = so.ops.global_pool(so.SparseTensor(f, c), mode)
        got = so.ops.global_pool(so.SparseTensor(tf.cast(f, dtype), c), mode)
        assert got.dtype == dtype
        np.testing.assert_allclose(tf.cast(got, tf.float32), want, rtol=2e-2, atol=2e-2)


# -- invalid input is refused, never truncated or wrapped ----------------------------

@pytest.mark.parametrize("stride,error", [
    (2**31, ValueError), (2**32 + 1, ValueError), (1.5, TypeError), (0, ValueError),
    (True, TypeError), ("2", TypeError)])
def test_sparse_tensor_stride_is_checked(stride, error):
    with pytest.raises(error, match="stride"):
        _x(stride=stride)


def test_whole_float_stride_is_accepted_and_a_float_tensor_stride_is_checked():
    assert _x(stride=2.0).stride == (2, 2)
    assert _x(stride=tf.constant([2.0, 4.0])).stride == (2, 4)
    with pytest.raises(INVALID, match="whole"):
        _x(stride=tf.constant([1.5, 1.0]))


@pytest.mark.parametrize("offsets,error", [
    (np.array([[2**40, 0]], np.int64), INVALID),
    (np.array([[1.5, 0.0]]), INVALID),
    (tf.constant([[2**40, 0]], tf.int64), INVALID),
])
def test_kernel_map_offsets_are_never_wrapped_or_truncated(offsets, error):
    c = tf.constant([[0, 0, 0], [0, 1, 0]])
    with pytest.raises(error, match="offsets"):
        so.ops.kernel_map(c, c, offsets)


@pytest.mark.parametrize("stride,error", [(1.5, TypeError), (2**32 + 1, ValueError)])
def test_kernel_map_stride_is_checked(stride, error):
    c = tf.constant([[0, 0, 0], [0, 1, 0]])
    with pytest.raises(error, match="stride"):
        so.ops.kernel_map(c, c, [[1, 0]], stride=stride)


def test_custom_region_times_dilation_cannot_overflow():
    with pytest.raises(ValueError, match="region"):
        so.kernel_offsets(None, dilation=2**30, region=np.array([[2**30, 0]]))
    with pytest.raises(ValueError):
        so.kernel_offsets(None, dilation=2**40, region=np.array([[1, 0]]))
    # 2^33 * 2^31 = 2^64 wrapped to 0 in int64 (once accepted as offset 0).
    with pytest.raises(ValueError, match="region|dilation"):
        so.kernel_offsets(None, dilation=[2**31, 1], region=np.array([[2**33, 0]]))
    # The product is exact when it fits.
    np.testing.assert_array_equal(
        so.kernel_offsets(None, dilation=[3, 1], region=[[1, 0], [0, -2]]),
        [[3, 0], [0, -2]])


@pytest.mark.parametrize("points,voxel_size", [
    ([[np.nan, 0.0]], 1.0), ([[np.inf, 0.0]], 1.0), ([[1.0, 0.0]], np.nan),
    ([[1.0, 0.0]], [1.0, -1.0]), ([[1.0, 0.0]], [1.0, 1.0, 1.0])])
def test_sparse_quantize_rejects_non_finite_points_and_sizes(points, voxel_size):
    with pytest.raises(ValueError, match="points|voxel_size"):
        so.utils.sparse_quantize(np.asarray(points), voxel_size=voxel_size)


@pytest.mark.parametrize("shape", [[1, 1], [3, 2, 2, 2], [-1, -1], [2.5, 3]])
def test_to_tf_sparse_shape_must_hold_the_data(shape):
    x = _x()  # sites up to (1, 2, 2) with 2 channels
    with pytest.raises((INVALID, ValueError, TypeError), match="shape"):
        x.to_tf_sparse(shape=shape)


def test_to_tf_sparse_with_a_shape_large_enough():
    sp = _x().to_tf_sparse(shape=[3, 3])
    assert sp.dense_shape.numpy().tolist() == [2, 3, 3, 2]


@pytest.mark.parametrize("shape,error", [([2.5], TypeError), ([-1], ValueError),
                                         ([1], INVALID)])
def test_dense_shape_is_checked(shape, error):
    x = so.SparseTensor(tf.ones([1, 2]), [[0, 1]])
    with pytest.raises(error, match="shape"):
        x.dense(shape=shape)


def test_generative_coordinates_reject_bad_strides_on_both_paths(impl):
    del impl
    c = tf.constant([[0, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="stride"):
        so.ops.generative_coordinates(c, [[1, 0]], [-1, 1])
    with pytest.raises(INVALID, match="stride"):
        so.ops.generative_coordinates(c, [[1, 0]], tf.constant([-1, 1]))


def test_attention_k_must_be_a_scalar_on_both_paths(impl):
    del impl
    with pytest.raises(ValueError, match="scalar"):
        so.ops.attention(_x(), k=tf.constant([1]))


@pytest.mark.parametrize("op", [so.layers.BroadcastAdd, so.layers.BroadcastMultiply])
def test_broadcast_needs_matching_channels(op):
    x = so.SparseTensor(tf.ones([3, 1]), _x().coordinates)
    with pytest.raises(ValueError, match="channels"):
        op()(x, tf.ones([2, 4]))
    # One channel of g broadcasts over x's channels.
    out = op()(_x(channels=4), tf.fill([2, 1], 2.0))
    assert out.features.shape == (3, 4)


@pytest.mark.parametrize("epsilon", [-1, float("nan"), float("inf"), "1e-5"])
def test_instance_norm_epsilon_is_checked(epsilon):
    with pytest.raises((ValueError, TypeError), match="epsilon"):
        so.layers.InstanceNorm(epsilon=epsilon)
    with pytest.raises((ValueError, TypeError), match="epsilon"):
        so.ops.instance_norm(_x(), epsilon=epsilon)


# -- messages that name the argument ------------------------------------------------

def test_from_dense_mask_of_the_wrong_shape_or_type_is_named():
    dense = tf.ones([1, 2, 2, 1])
    with pytest.raises(ValueError, match="mask"):
        so.SparseTensor.from_dense(dense, mask=True)
    with pytest.raises(TypeError, match="mask"):
        so.SparseTensor.from_dense(dense, mask=tf.ones([1, 2, 2]))
    x = so.SparseTensor.from_dense(dense, mask=tf.constant([[[True, False],
                                                             [False, True]]]))
    assert set(site_set(x.coordinates)) == {(0, 0, 0), (0, 1, 1)}


@pytest.mark.parametrize("args,pattern", [
    ((5,), "list_of_coords"), (([None],), r"list_of_coords\[0\]"),
    ((["ab"],), r"list_of_coords\[0\]"), (([np.zeros([2, 2]), np.zeros(3)],),
                                         r"list_of_coords\[1\]")])
def test_batched_coordinates_names_the_bad_argument(args, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        so.utils.batched_coordinates(*args)


@pytest.mark.parametrize("args,pattern", [
    ((5, 6), "coords_list"), (([np.zeros([2, 2])], 6), "feats_list"),
    (([np.zeros([2, 2])], [5]), r"feats_list\[0\]"),
    (([np.zeros([2, 2])], [np.zeros([2, 1])], [7]), r"labels_list\[0\]")])
def test_sparse_collate_names_the_bad_argument(args, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        so.utils.sparse_collate(*args)


@pytest.mark.parametrize("bias,error", [("abc", TypeError), ([1, 2], TypeError),
                                        (tf.ones([2, 2]), ValueError),
                                        (tf.ones([3]), ValueError)])
def test_bad_bias_is_named(bias, error):
    with pytest.raises(error, match="bias"):
        so.ops.conv(_x(), tf.ones([3, 3, 2, 2]), bias=bias)


# -- conv_transpose: output sites given as a SparseTensor -----------------------------

def test_conv_transpose_onto_a_sparse_tensor(impl):
    del impl
    rng = np.random.default_rng(1)
    fine = so.SparseTensor(rng.normal(size=[4, 2]).astype(np.float32),
                           [[0, 0, 0], [0, 1, 0], [0, 2, 3], [1, 3, 3]])
    kernel = tf.constant(rng.normal(size=[2, 2, 3, 2]), tf.float32)
    coarse = so.ops.conv(fine, tf.ones([2, 2, 2, 2]), strides=2)
    by_tensor = so.ops.conv_transpose(coarse, kernel, out_coordinates=fine)
    by_coords = so.ops.conv_transpose(coarse, kernel, out_coordinates=fine.coordinates)
    np.testing.assert_array_equal(by_tensor.features, by_coords.features)
    np.testing.assert_array_equal(by_tensor.coordinates, fine.coordinates)
    want = brute_force_conv_transpose(
        coarse.coordinates.numpy(), coarse.features.numpy(), fine.coordinates.numpy(),
        kernel.numpy().reshape(4, 3, 2), same_offsets(2, 1, 2, 2), 1)
    np.testing.assert_allclose(by_tensor.features, want, rtol=1e-5, atol=1e-5)
    # A SparseTensor of another stride is refused.
    with pytest.raises(ValueError, match="stride"):
        so.ops.conv_transpose(coarse, kernel, out_coordinates=coarse)


# -- the link from a strided tensor to its finer sites travels with it ---------------

def _unet_parts():
    fine = so.SparseTensor(np.arange(10, dtype=np.float32).reshape(5, 2),
                           [[0, 0, 0], [0, 1, 0], [0, 2, 3], [0, 5, 5], [1, 3, 3]])
    down = so.layers.Conv(3, 2, strides=2)
    up = so.layers.ConvTranspose(2, 2, strides=2)
    return fine, down, up


def _eager_reference(fine, down, up):
    return up(down(fine)).features.numpy()


def test_link_survives_identity_of_the_fields(impl):
    del impl
    fine, down, up = _unet_parts()
    want = _eager_reference(fine, down, up)
    y = tf.nest.map_structure(tf.identity, down(fine))
    np.testing.assert_array_equal(up(y).features, want)
    np.testing.assert_array_equal(up(y).coordinates, fine.coordinates)


def test_link_survives_a_cleared_cache(impl):
    del impl
    fine, down, up = _unet_parts()
    want = _eager_reference(fine, down, up)
    y = down(fine)
    so_cache.clear()
    np.testing.assert_array_equal(up(y).features, want)


def test_link_inside_a_cond_branch(impl):
    del impl
    fine, down, up = _unet_parts()
    want = _eager_reference(fine, down, up)

    @tf.function
    def f(features, pred):
        y = down(fine.with_features(features))
        return tf.cond(pred, lambda: up(y).features, lambda: tf.zeros_like(features))

    np.testing.assert_array_equal(f(fine.features, tf.constant(True)), want)


def test_link_across_tf_function_boundaries(impl):
    del impl
    fine, down, up = _unet_parts()
    want = _eager_reference(fine, down, up)
    y = down(fine)
    # Made eagerly, used inside a function.
    np.testing.assert_array_equal(tf.function(lambda y: up(y).features)(y), want)
    # Made inside a function, used eagerly.
    y2 = tf.function(down)(fine)
    np.testing.assert_array_equal(up(y2).features, want)
    np.testing.assert_array_equal(up(y2).coordinates, fine.coordinates)


def test_link_through_two_levels_and_back(impl):
    del impl
    fine, _, _ = _unet_parts()
    k = tf.ones([2, 2, 2, 2])
    mid = so.ops.conv(fine, k, strides=2)
    coarse = so.ops.max_pool(mid, 2)
    assert coarse.stride == (4, 4)
    back_mid = so.ops.unpool(coarse, 2, 2)  # generative: new sites, mid's link
    back = so.ops.conv_transpose(so.ops.conv_transpose(coarse, k, out_coordinates=mid),
                                 k)
    np.testing.assert_array_equal(back.coordinates, fine.coordinates)
    assert back.stride == (1, 1) and back.finer == ()
    np.testing.assert_array_equal(so.ops.conv_transpose(back_mid, k).coordinates,
                                  fine.coordinates)


def test_rebuilt_tensor_without_link_gives_a_clear_error():
    fine, down, up = _unet_parts()
    y = down(fine)
    rebuilt = so.SparseTensor(y.features, y.coordinates, y.stride)
    with pytest.raises(ValueError, match="coordinates=.*generative"):
        up(rebuilt)
    # Keeping the link explicitly works.
    np.testing.assert_array_equal(
        up(so.SparseTensor(y.features, y.coordinates, y.stride, y.finer)).features,
        up(y).features)


def test_link_in_a_functional_keras_model_and_after_reload(tmp_path):
    import keras  # pylint: disable=import-outside-toplevel
    inputs = keras.Input(shape=(None, None, 2), sparse=True)
    h = so.layers.Conv(3, 3)(inputs)
    d = so.layers.Conv(4, 2, strides=2)(h)
    d2 = so.layers.MaxPool(2)(d)
    u2 = so.layers.ConvTranspose(4, 2, strides=2)(d2)
    u = so.layers.ConvTranspose(3, 2, strides=2)(so.layers.Concat()([u2, d]))
    out = so.layers.Dense(1)(so.layers.Concat()([u, h]))
    model = keras.Model(inputs, out.features)
    rng = np.random.default_rng(3)
    sp = tf.sparse.reorder(tf.SparseTensor(
        [[0, 0, 1, 0], [0, 0, 1, 1], [0, 3, 2, 0], [1, 4, 4, 1], [1, 5, 4, 0]],
        rng.normal(size=5).astype(np.float32), [2, 6, 6, 2]))
    want = model(sp)
    assert want.shape == (4, 1)
    path = str(tmp_path / "unet.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again(sp), want, rtol=1e-6, atol=1e-6)


# -- WeightPruning driven by hand from a custom training loop -------------------------

def test_weight_pruning_by_hand_in_a_traced_custom_loop():
    import keras  # pylint: disable=import-outside-toplevel

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = so.layers.Conv(3, 3)
            self.pool = so.layers.GlobalSumPool()

        def call(self, x):
            return self.pool(self.conv(x))

    rng = np.random.default_rng(0)
    x = so.SparseTensor(rng.normal(size=[6, 2]).astype(np.float32),
                        [[0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 2, 2], [1, 3, 2], [1, 0, 4]])
    model = Net()
    model(x)
    kernel = model.conv.kernel
    w = rng.choice([-1.0, 1.0], size=kernel.shape) * rng.uniform(0.2, 1.0, kernel.shape)
    w = w.astype(np.float32)
    small = rng.random(kernel.shape) < 0.3
    w[small] = 1e-4
    kernel.assign(w)
    pruning = so.callbacks.WeightPruning(epsilon=0.01)
    pruning.set_model(model)  # before the first traced step
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x) - 1.0))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step()
    pruning.on_epoch_end(0)  # first warning: nothing pruned yet
    assert np.all(kernel.numpy() != 0)
    step()
    pruning.on_epoch_end(1)  # small twice: pruned
    assert np.all(kernel.numpy()[small] == 0)
    assert pruning.nonzero_weights == int((~small).sum())
    for _ in range(5):  # Adam's momentum and gradients would move them
        step()
    assert np.all(kernel.numpy()[small] == 0)
    assert np.all(kernel.numpy()[~small] != 0)


def test_weight_pruning_on_epoch_end_without_a_model_says_what_to_do():
    with pytest.raises(ValueError, match="set_model"):
        so.callbacks.WeightPruning(0.1).on_epoch_end(0)


# -- first use ----------------------------------------------------------------------

def test_stating_the_dimension_refuses_points_without_a_batch_column():
    points = np.random.default_rng(0).integers(-5, 5, (10, 3))
    with pytest.raises(ValueError, match="batch column.*batched_coordinates"):
        so.SparseTensor(tf.ones([10, 1]), points, dimension=3)
    x = so.SparseTensor(tf.ones([10, 1]), so.utils.batched_coordinates([points]),
                        dimension=3)
    assert x.dimension == 3
    import keras  # pylint: disable=import-outside-toplevel
    inputs = so.layers.Input(1, dimension=3)
    model = keras.Model(inputs, so.layers.GlobalSumPool()(so.layers.Conv(2, 3)(inputs)))
    with pytest.raises(ValueError, match="coordinates"):
        model(so.SparseTensor(tf.ones([10, 1]), points))
    assert model(x).shape == (1, 2)


# -- found by review ------------------------------------------------------------------

def test_conv_transpose_spec_reads_coordinates_given_by_keyword():
    """A skip connection passed as coordinates= (not positionally): the Keras
    spec must carry the skip's link, as the op's output does."""
    import keras  # pylint: disable=import-outside-toplevel
    inputs = so.layers.Input(2, dimension=2)
    a = so.layers.Conv(3, 3)(inputs)
    c = so.layers.Conv(3, 2, strides=2)(so.layers.Conv(3, 2, strides=2)(a))
    u = so.layers.ConvTranspose(3, 4, strides=4)(c, coordinates=a)
    model = keras.Model(inputs, u)  # the link's structure must match
    x = so.SparseTensor(np.ones([4, 2], np.float32), [[0, 0, 0], [0, 1, 3], [0, 5, 5],
                                                      [1, 2, 2]])
    y = model(x)
    np.testing.assert_array_equal(y.coordinates, x.coordinates)


def test_gradient_with_respect_to_a_sparse_tensor():
    x = _x()
    with tf.GradientTape() as tape:
        tape.watch(x.features)
        loss = tf.reduce_sum(so.ops.conv(x, tf.ones([3, 3, 2, 2])).features)
    grad = tape.gradient(loss, x)
    assert isinstance(grad, so.SparseTensor) and grad.features.shape == (3, 2)
    assert grad.coordinates is None


def test_a_model_on_so_layers_input_saves_and_reloads(tmp_path):
    import keras  # pylint: disable=import-outside-toplevel
    inputs = so.layers.Input(2, dimension=2)
    model = keras.Model(inputs, so.layers.GlobalMaxPool()(so.layers.Conv(3, 3)(inputs)))
    x = _x()
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again(x), model(x))


def test_variables_are_read_not_cached_by_identity():
    coords = tf.Variable([[0, 0], [0, 1], [0, 2]])
    x = so.SparseTensor(tf.ones([3, 1]), coords)
    first = so.ops.conv(x, tf.ones([3, 1, 1])).features.numpy()[:, 0]
    coords.assign([[0, 0], [0, 5], [0, 10]])  # nobody is a neighbour now
    second = so.ops.conv(so.SparseTensor(tf.ones([3, 1]), coords),
                         tf.ones([3, 1, 1])).features.numpy()[:, 0]
    np.testing.assert_array_equal(first, [2, 3, 2])
    np.testing.assert_array_equal(second, [1, 1, 1])


def test_zero_dimensional_arrays_and_constants_are_ints():
    assert _x(stride=np.array(2)).stride == (2, 2)
    assert so.layers.Conv(2, np.array(3)).kernel_size == 3
    assert so.SparseTensor(tf.ones([1, 1]), [[0, 1]], dimension=tf.constant(1)).dimension == 1


def test_to_tf_sparse_refuses_a_negative_batch_index():
    x = so.SparseTensor(tf.ones([2, 1]), [[0, 0, 0], [-1, 1, 1]])
    with pytest.raises(INVALID, match="batch"):
        x.to_tf_sparse()


def test_batched_coordinates_of_a_stacked_array():
    stacked = np.arange(12).reshape(2, 3, 2)
    np.testing.assert_array_equal(so.utils.batched_coordinates(stacked),
                                  so.utils.batched_coordinates(list(stacked)))


def test_kernel_map_without_offsets_still_checks_the_coordinates(impl):
    del impl
    valid = tf.constant([[0, 0, 0], [0, 5, 5], [1, 2, 2]])
    keys_64 = tf.constant([[0] + [-2**30] * 4, [2**31 - 2] + [2**30] * 4], tf.int32)
    with pytest.raises(INVALID, match="64-bit key"):
        so.ops.kernel_map(keys_64, keys_64, tf.zeros([0, 4], tf.int32), 2)
    twice = tf.constant([[0, 1, 1], [0, 1, 1]])
    with pytest.raises(INVALID, match="duplicate"):
        so.ops.kernel_map(twice, twice, tf.zeros([0, 2], tf.int32))
    splits, in_rows, _ = so.ops.kernel_map(valid, valid, tf.zeros([0, 2], tf.int32))
    assert splits.numpy().tolist() == [0] and in_rows.shape == (0,)


@pytest.mark.skipif(_loader.try_library() is None, reason="op library not built")
def test_validate_map_false_never_switches_off_the_cpu_check():
    """validate_map=False only lets GPU kernels skip their round trip; the
    CPU kernels check every map, so a bad map is still an error here."""
    lib = _loader.library()
    bad = (tf.constant([0, 2], tf.int64), tf.constant([0, 9]), tf.constant([0, 1]))
    features, kernel = tf.ones([4, 2]), tf.ones([1, 2, 3])
    rows = tf.constant(4, tf.int64)
    calls = [
        lambda: lib.sparse_ops_conv(features, kernel, *bad, rows, validate_map=False),
        lambda: lib.sparse_ops_conv_backprop_input(tf.ones([4, 3]), kernel, *bad, rows,
                                                   validate_map=False),
        lambda: lib.sparse_ops_conv_backprop_kernel(features, tf.ones([4, 3]), *bad,
                                                    validate_map=False),
        lambda: lib.sparse_ops_max_pool(features, *bad, rows, validate_map=False),
        lambda: lib.sparse_ops_sum_pool(features, *bad, rows, validate_map=False),
        lambda: lib.sparse_ops_sum_pool_transpose(features, *bad, rows, validate_map=False),
    ]
    for call in calls:
        with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError,
                                                match="out of range"):
            call()

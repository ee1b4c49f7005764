"""k-selection attention (paper Sec. 3.2): `so.ops.attention`, the
`Attention` layer and `Conv(attention=...)`.

The oracle is a brute force written here in numpy: per batch item and
channel, sort the entries by (key descending, row ascending) with Python's
`sorted` and keep the first k.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from sparse_ops import _loader
from sparse_ops.ops.attention import density_to_k

from conftest import assert_close

HAVE_LIBRARY = _loader.try_library() is not None


# -- oracle ----------------------------------------------------------------

def brute_keep(features, coords, k, mode="value", per="channel"):
    """keep [N, C]: the k best of each (batch item, channel) by (key desc,
    row asc); per="site" by the L2 norm of the site. NaN ranks as -inf."""
    features = np.asarray(features, np.float64)
    n, channels = features.shape
    keep = np.zeros((n, channels), bool)

    def best(rows, keys):
        keys = np.where(np.isnan(keys), -np.inf, keys)
        ranked = sorted(range(len(rows)), key=lambda j: (-keys[j], rows[j]))
        return rows[ranked[:k]]

    for b in np.unique(coords[:, 0]):
        rows = np.nonzero(coords[:, 0] == b)[0]
        if per == "site":
            if channels:
                keep[best(rows, (features[rows] ** 2).sum(1)), :] = True
            continue
        for c in range(channels):
            keys = features[rows, c]
            keep[best(rows, np.abs(keys) if mode == "abs" else keys), c] = True
    return keep


def expected(features, coords, keep):
    """(features, coordinates) of the result: kept entries, sites with any."""
    rows = np.nonzero(keep.any(1))[0]
    return np.where(keep, features, 0)[rows], coords[rows]


def random_input(rng, n=40, channels=5, batches=3, dims=2, ties=True,
                 dtype=np.float32):
    """Unique sites of several batch items, rows shuffled (not batch-sorted);
    integer-valued features (many ties, negatives) when ties."""
    sites = set()
    while len(sites) < n:
        sites.add((int(rng.integers(batches)),) + tuple(
            int(v) for v in rng.integers(-6, 6, dims)))
    coords = np.array(sorted(sites), np.int32)
    coords = coords[rng.permutation(n)]
    if ties:
        features = rng.integers(-3, 4, [n, channels]).astype(dtype)
    else:
        features = rng.normal(size=[n, channels]).astype(dtype)
    return features, coords


def run(features, coords, **kwargs):
    x = so.SparseTensor(tf.constant(features), tf.constant(coords))
    y = so.ops.attention(x, **kwargs)
    return y.features.numpy(), y.coordinates.numpy(), y


def check(features, coords, k, mode="value", per="channel", **kwargs):
    got_f, got_c, y = run(features, coords, k=k, mode=mode, per=per, **kwargs)
    want_f, want_c = expected(features, coords,
                              brute_keep(features, coords, k, mode, per))
    np.testing.assert_array_equal(got_c, want_c)
    assert_close(got_f, want_f, features.dtype)
    return y


# -- semantics ---------------------------------------------------------------

@pytest.mark.parametrize("per", ["channel", "site"])
@pytest.mark.parametrize("mode", ["value", "abs"])
@pytest.mark.parametrize("k", [0, 1, 3, 7, 100])
def test_matches_brute_force_with_ties(impl, rng, mode, per, k):
    features, coords = random_input(rng)
    check(features, coords, k, mode, per)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["value", "abs"])
def test_matches_brute_force_random(impl, rng, mode, dtype):
    features, coords = random_input(rng, n=200, channels=37, batches=4, dims=3,
                                    ties=False, dtype=dtype)
    check(features, coords, 9, mode)
    check(features, coords, 9, mode, per="site")


def test_ties_go_to_the_lower_row(impl):
    # Equal values everywhere: the first k rows of each batch item (in row
    # order, interleaved batch items) win, in both modes.
    coords = np.array([[1, 5], [0, 4], [1, 3], [0, 2], [1, 1], [0, 0]], np.int32)
    for mode in ("value", "abs"):
        for sign in (1.0, -1.0):
            features = np.full([6, 2], sign, np.float32)
            _, got_c, _ = run(features, coords, k=2, mode=mode)
            np.testing.assert_array_equal(got_c, coords[:4])


def test_value_and_abs_differ_on_negative_values(impl):
    coords = np.array([[0, 0], [0, 1], [0, 2]], np.int32)
    features = np.array([[-9.0], [-1.0], [-4.0]], np.float32)
    f, c, _ = run(features, coords, k=1, mode="value")
    np.testing.assert_array_equal(c, [[0, 1]])  # the largest value is -1
    np.testing.assert_array_equal(f, [[-1.0]])
    f, c, _ = run(features, coords, k=1, mode="abs")
    np.testing.assert_array_equal(c, [[0, 0]])  # the largest magnitude is 9
    np.testing.assert_array_equal(f, [[-9.0]])


def test_per_site_keeps_whole_sites(impl):
    coords = np.array([[0, 0], [0, 1], [0, 2], [1, 0]], np.int32)
    features = np.array([[3, 0], [1, 1], [0, -4], [0.5, 0]], np.float32)
    f, c, _ = run(features, coords, k=1, per="site")
    # Norms 3, sqrt 2, 4 in item 0: the site [0, 2] with both its channels.
    np.testing.assert_array_equal(c, [[0, 2], [1, 0]])
    np.testing.assert_array_equal(f, [[0, -4], [0.5, 0]])


def test_sites_without_kept_entries_are_dropped(impl):
    # Item 0: channel 0 keeps row 0, channel 1 keeps row 2; row 1 has no
    # kept entry and goes, rows 0 and 2 keep one entry each.
    coords = np.array([[0, 0], [0, 1], [0, 2]], np.int32)
    features = np.array([[5, 1], [4, 2], [1, 3]], np.float32)
    f, c, _ = run(features, coords, k=1)
    np.testing.assert_array_equal(c, [[0, 0], [0, 2]])
    np.testing.assert_array_equal(f, [[5, 0], [0, 3]])


def test_k_at_least_sites_is_the_identity(impl, rng):
    features, coords = random_input(rng, n=30, batches=2)
    for k in (30, 31, 10**9):
        f, c, _ = run(features, coords, k=k)
        np.testing.assert_array_equal(c, coords)
        np.testing.assert_array_equal(f, features)


def test_k_zero_removes_everything(impl, rng):
    features, coords = random_input(rng, n=10)
    f, c, y = run(features, coords, k=0)
    assert f.shape == (0, 5) and c.shape == (0, 3)
    assert y.stride == (1, 1)


def test_bound_k_times_channels_per_batch_item(impl, rng):
    features, coords = random_input(rng, n=300, channels=4, batches=3, dims=3,
                                    ties=False)
    _, c, _ = run(features, coords, k=5)
    counts = np.bincount(c[:, 0], minlength=3)
    assert np.all(counts <= 5 * 4) and counts.sum() > 5
    _, c, _ = run(features, coords, k=5, per="site")
    assert np.all(np.bincount(c[:, 0], minlength=3) == 5)


def test_nan_ranks_as_minus_infinity(impl):
    # NaN ties with -inf (the lower row wins) and loses to every number.
    coords = np.array([[0, 0], [0, 1], [0, 2]], np.int32)
    for first, second in ((np.nan, -np.inf), (-np.inf, np.nan)):
        features = np.array([[first], [second], [-7.0]], np.float32)
        _, c, _ = run(features, coords, k=2)
        np.testing.assert_array_equal(c, [[0, 0], [0, 2]])
        # Per site the -inf site has norm inf; the NaN site's norm is NaN.
        _, c, _ = run(features, coords, k=1, per="site")
        np.testing.assert_array_equal(c, coords[np.isneginf(features[:, 0])])
    f, c, _ = run(features, coords, k=3)
    assert c.shape == (3, 2) and np.isnan(f[1, 0])


def test_empty_and_one_site(impl):
    f, c, _ = run(np.zeros([0, 3], np.float32), np.zeros([0, 3], np.int32), k=2)
    assert f.shape == (0, 3) and c.shape == (0, 3)
    f, c, _ = run(np.zeros([0, 3], np.float32), np.zeros([0, 3], np.int32), k=2,
                  per="site")
    assert f.shape == (0, 3)
    one = np.array([[2.0, -1.0]], np.float32)
    site = np.array([[4, -3, 7]], np.int32)  # negative coordinate, batch 4
    for k, sites in ((0, 0), (1, 1)):
        f, c, _ = run(one, site, k=k)
        assert c.shape == (sites, 3)
        np.testing.assert_array_equal(f, one[:sites])


def test_stride_is_kept(impl, rng):
    features, coords = random_input(rng, n=12)
    x = so.SparseTensor(tf.constant(features), tf.constant(coords * 4), stride=4)
    y = so.ops.attention(x, k=2)
    assert y.stride == (4, 4)


def test_float16(impl, rng):
    features, coords = random_input(rng, n=20)
    f, c, _ = run(features.astype(np.float16), coords, k=3, mode="abs")
    want_f, want_c = expected(features, coords, brute_keep(features, coords, 3, "abs"))
    np.testing.assert_array_equal(c, want_c)
    assert f.dtype == np.float16
    np.testing.assert_array_equal(f.astype(np.float32), want_f)


def test_tf_sparse_input(impl):
    dense = np.zeros([1, 3, 3, 1], np.float32)
    dense[0, 0, 0, 0], dense[0, 1, 2, 0], dense[0, 2, 1, 0] = 1.0, 3.0, 2.0
    y = so.ops.attention(tf.sparse.from_dense(dense), k=2)
    np.testing.assert_array_equal(y.coordinates.numpy(), [[0, 1, 2], [0, 2, 1]])


def test_tf_function_unknown_rows(impl, rng):
    features, coords = random_input(rng, n=50, batches=2)

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32),
                                  tf.TensorSpec([None, 3], tf.int32),
                                  tf.TensorSpec([], tf.int64)])
    def f(feats, c, k):
        y = so.ops.attention(so.SparseTensor(feats, c), k=k, mode="abs")
        return y.features, y.coordinates

    got_f, got_c = f(features, coords, tf.constant(4, tf.int64))
    want_f, want_c = expected(features, coords, brute_keep(features, coords, 4, "abs"))
    np.testing.assert_array_equal(got_c.numpy(), want_c)
    np.testing.assert_array_equal(got_f.numpy(), want_f)


@pytest.mark.skipif(not HAVE_LIBRARY, reason="the op library is not built")
@pytest.mark.parametrize("per", ["channel", "site"])
@pytest.mark.parametrize("mode", ["value", "abs"])
def test_custom_equals_reference(rng, mode, per):
    """Both implementations agree entry for entry, ties included, on
    batch items of very different sizes and huge batch indices."""
    features, coords = random_input(rng, n=2000, channels=20, batches=5, dims=3)
    coords[coords[:, 0] == 4, 0] = 2**31 - 1  # a sparse, huge batch index
    results = []
    for name in ("custom", "reference"):
        with so.config.implementation(name):
            results.append(run(features, coords, k=17, mode=mode, per=per)[:2])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    want = expected(features, coords, brute_keep(features, coords, 17, mode, per))
    np.testing.assert_array_equal(results[0][1], want[1])


# -- density -> k ------------------------------------------------------------

def test_density_to_k():
    assert density_to_k(0.07, (10, 10)) == 7  # 0.07 * 100 = 7.000000000000001
    assert density_to_k(0.071, (10, 10)) == 8
    assert density_to_k(1 / 28, (28, 28)) == 28
    assert density_to_k(0.0, (5,)) == 0
    assert density_to_k(1.0, (4, 4, 4)) == 64
    assert density_to_k(0.035, (28, 28)) == math.ceil(0.035 * 784)


def test_density_equals_k(impl, rng):
    features, coords = random_input(rng, n=60, batches=2, ties=False)
    by_density = run(features, coords, density=0.07, spatial_shape=(10, 10))
    by_k = run(features, coords, k=7)
    np.testing.assert_array_equal(by_density[1], by_k[1])
    np.testing.assert_array_equal(by_density[0], by_k[0])


# -- gradient ----------------------------------------------------------------

def test_gradient_reaches_only_kept_entries(impl, rng):
    n, channels = 12, 3
    features, coords = random_input(rng, n=n, channels=channels, batches=2)
    # Magnitudes 1 apart, random signs: the numeric gradient's steps never
    # change the selection.
    features = (rng.permutation(n * channels) + 1.0).reshape(n, channels)
    features *= rng.choice([-1.0, 1.0], size=features.shape)
    weights = tf.constant(rng.normal(size=[n, channels]))
    keep = brute_keep(features, coords, 2, "abs")
    c = tf.constant(coords)

    def loss(f):
        y = so.ops.attention(so.SparseTensor(f, c), k=2, mode="abs")
        # Weight each output entry by its site's weight row.
        rows = tf.argmax(tf.reduce_all(tf.equal(
            y.coordinates[:, None, :], c[None, :, :]), -1), axis=1)
        return tf.reduce_sum(y.features * tf.gather(weights, rows))

    theoretical, numerical = tf.test.compute_gradient(loss, [tf.constant(features)])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-8, atol=1e-8)
    with tf.GradientTape() as tape:
        f = tf.constant(features)
        tape.watch(f)
        value = loss(f)
    grad = tape.gradient(value, f).numpy()
    np.testing.assert_array_equal(grad, np.where(keep, weights.numpy(), 0.0))


# -- layers --------------------------------------------------------------------

def test_layer_matches_op_and_round_trips(impl, rng):
    features, coords = random_input(rng, n=40)
    x = so.SparseTensor(tf.constant(features), tf.constant(coords))
    layer = so.layers.Attention(density=0.05, spatial_shape=[12, 12], mode="abs")
    y = layer(x)
    want = so.ops.attention(x, density=0.05, spatial_shape=[12, 12], mode="abs")
    np.testing.assert_array_equal(y.coordinates.numpy(), want.coordinates.numpy())
    np.testing.assert_array_equal(y.features.numpy(), want.features.numpy())
    config = layer.get_config()
    assert config["density"] == 0.05 and config["spatial_shape"] == [12, 12]
    again = so.layers.Attention.from_config(config)
    assert again.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert isinstance(revived, so.layers.Attention)
    assert revived.get_config() == config
    # The fields as a list (what Keras hands over after a .keras reload).
    y2 = layer([x.features, x.coordinates, x.stride_tensor])
    np.testing.assert_array_equal(y2.coordinates.numpy(), want.coordinates.numpy())


@pytest.mark.parametrize("as_layer", [False, True])
def test_conv_attention_equals_conv_then_attention(impl, rng, as_layer):
    features, coords = random_input(rng, n=50, channels=3, batches=2, ties=False)
    x = so.SparseTensor(tf.constant(features), tf.constant(coords))
    options = dict(k=4, mode="abs")
    attention = so.layers.Attention(**options) if as_layer else options
    fused = so.layers.Conv(6, 3, attention=attention, bias_initializer="ones")
    plain = so.layers.Conv(6, 3, bias_initializer="ones")
    y = fused(x)
    plain(x)  # builds it
    plain.set_weights(fused.get_weights())
    want = so.layers.Attention(**options)(plain(x))
    np.testing.assert_array_equal(y.coordinates.numpy(), want.coordinates.numpy())
    assert_close(y.features.numpy(), want.features.numpy(), np.float32)
    assert np.all(np.bincount(y.coordinates.numpy()[:, 0]) <= 4 * 6)
    config = fused.get_config()
    assert config["attention"] == dict(k=4, density=None, spatial_shape=None,
                                       mode="abs", per="channel")
    again = so.layers.Conv.from_config(config)
    assert again.get_config() == config


def test_conv_attention_in_a_keras_model_saves_and_loads(tmp_path, rng):
    features, coords = random_input(rng, n=30, channels=2, batches=2, ties=False)
    x = so.SparseTensor(tf.constant(features), tf.constant(coords))

    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = so.layers.Conv(4, 3, attention={"density": 0.1,
                                                        "spatial_shape": [12, 12]})
            self.pool = so.layers.GlobalSumPool()

        def call(self, x):
            return self.pool(self.conv(x))

    keras.saving.register_keras_serializable("test_attention")(Net)
    model = Net()
    want = model(x).numpy()
    path = str(tmp_path / "net.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.conv.attention == model.conv.attention
    assert_close(loaded(x).numpy(), want, np.float32)


# -- errors --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(), ValueError, "exactly one of k .* or density"),
    (dict(k=3, density=0.1, spatial_shape=[4]), ValueError, "exactly one of k"),
    (dict(density=0.1), ValueError, "density needs spatial_shape"),
    (dict(k=3, spatial_shape=[4, 4]), ValueError, "spatial_shape is only used"),
    (dict(k=-1), ValueError, "k must be >= 0"),
    (dict(k=1.5), TypeError, "k must be an int"),
    (dict(k=True), TypeError, "k must be an int"),
    (dict(density=1.5, spatial_shape=[4]), ValueError, r"density must be in \[0, 1\]"),
    (dict(density=-0.1, spatial_shape=[4]), ValueError, r"density must be in"),
    (dict(density="a", spatial_shape=[4]), TypeError, "density must be a float"),
    (dict(density=0.1, spatial_shape=[4, 0]), ValueError, "spatial_shape"),
    (dict(density=0.1, spatial_shape=[2.5]), ValueError, "spatial_shape"),
    (dict(density=0.1, spatial_shape="ab"), ValueError, "spatial_shape"),
    (dict(k=1, mode="max"), ValueError, "mode must be one of"),
    (dict(k=1, per="batch"), ValueError, "per must be one of"),
])
def test_bad_arguments_name_them(kwargs, error, pattern):
    x = so.SparseTensor(tf.ones([2, 1]), tf.constant([[0, 0], [0, 1]]))
    with pytest.raises(error, match=pattern):
        so.ops.attention(x, **kwargs)
    with pytest.raises(error, match=pattern):
        so.layers.Attention(**kwargs)
    with pytest.raises(error, match=pattern):
        so.layers.Conv(2, attention=kwargs)


def test_bad_conv_attention_type():
    with pytest.raises(TypeError, match="attention must be"):
        so.layers.Conv(2, attention=3)
    with pytest.raises(TypeError, match="k as a Python int"):
        so.layers.Attention(k=tf.constant(2))


def test_negative_k_tensor_fails_at_run_time(impl):
    x = so.SparseTensor(tf.ones([2, 1]), tf.constant([[0, 0], [0, 1]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be"):
        so.ops.attention(x, k=tf.constant(-1))

"""Tests of `so.models`: residual blocks, MinkUNet and the sparse ResNet.

The blocks are checked against the same computation written out by hand as
a chain of `so.layers` with the same weights, and the stride-1 BasicBlock in
inference mode against dense `tf.nn.convolution` on the densified input.
The networks are checked for shapes and sites, get_config / `.keras`
round trips, equal results in the functional API and a subclassed model,
and that `model.fit` lowers the loss of a small toy task.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import assert_close, densify, random_sparse, read_at

# Keras' own saving code converts variables with np.array(copy=False).
_KERAS_SAVING_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


_IMPL_CUSTOM_FAST = pytest.mark.parametrize(
    "impl", ["custom", pytest.param("reference", marks=pytest.mark.slow)],
    indirect=True)  # whole networks take 10-35 s on the reference path


def fields(x):
    return [x.features, x.coordinates, x.stride_tensor]


def _randomize(layer, rng):
    """Random weights everywhere (BN moving variances positive), so that no
    check passes through zeros or identities."""
    weights = []
    for w in layer.weights:
        value = rng.uniform(-0.8, 0.8, w.shape)
        if "variance" in w.path:
            value = rng.uniform(0.5, 1.5, w.shape)
        weights.append(value.astype(np.float32))
    layer.set_weights(weights)


def _tiny_unet(out_channels=2, **kwargs):
    return so.models.MinkUNet14(out_channels, planes=(4, 6, 8, 8, 6, 6, 4, 4),
                                init_dim=4, **kwargs)


def _tiny_resnet(num_classes=2, **kwargs):
    return so.models.ResNet14(num_classes, planes=(4, 6, 8, 8), init_dim=4,
                              dropout=0.0, **kwargs)


def _scene(rng, batch=2, size=10, channels=3, density=0.3):
    x, _ = random_sparse(rng, (size, size, size), channels, batch=batch,
                         density=density, origin=-4)  # negative coordinates too
    return x


# -- blocks against hand-written chains of so.layers ----------------------------------

def _copy(src, dst):
    dst.set_weights(src.get_weights())


def _chain_block(block, x, training):
    """The block's computation spelled out with fresh so.layers holding its
    weights: conv-BN(-ReLU) ..., shortcut (identity or 1x1 conv + BN), ReLU."""
    convs = [layer for layer in block.main if isinstance(layer, so.layers.Conv)]
    norms = [layer for layer in block.main if isinstance(layer, so.layers.BatchNorm)]
    h = x
    for i, (conv, norm) in enumerate(zip(convs, norms)):
        c = so.layers.Conv(conv.filters, conv.kernel_size, strides=conv.strides,
                           dilation_rate=conv.dilation_rate, use_bias=False)
        n = so.layers.BatchNorm(momentum=0.9, epsilon=1e-5)
        h_conv = c(h)
        _copy(conv, c)
        h_conv = c(h)
        n(h_conv, training=False)
        _copy(norm, n)
        h = n(h_conv, training=training)
        if i < len(convs) - 1:
            h = so.layers.ReLU()(h)
    if block.projection is None:
        shortcut = x.features
    else:
        conv, norm = block.projection
        c = so.layers.Conv(conv.filters, 1, strides=conv.strides, use_bias=False)
        n = so.layers.BatchNorm(momentum=0.9, epsilon=1e-5)
        c(x)
        _copy(conv, c)
        s = c(x)
        n(s, training=False)
        _copy(norm, n)
        s = n(s, training=training)
        # The shortcut's sites are the main branch's (same rows, same order).
        np.testing.assert_array_equal(s.coordinates.numpy(), h.coordinates.numpy())
        shortcut = s.features
    return h.coordinates, tf.nn.relu(h.features + shortcut)


@pytest.mark.parametrize("block_cls,filters,strides,dilation,projected", [
    (so.models.BasicBlock, 3, 1, 1, False),   # identity shortcut
    (so.models.BasicBlock, 5, 1, 1, True),    # width change: 1x1 projection
    (so.models.BasicBlock, 3, 2, 1, True),    # strided projection
    (so.models.BasicBlock, 3, 1, 2, False),   # dilated
    (so.models.Bottleneck, 2, 1, 1, True),    # 2 * 4 != 3 input channels
    (so.models.Bottleneck, 2, 2, 1, True),
])
@pytest.mark.parametrize("training", [False, True])
def test_block_equals_chain_of_layers(impl, rng, block_cls, filters, strides,
                                      dilation, projected, training):
    x = _scene(rng, size=6, channels=3, density=0.4)
    block = block_cls(filters, strides=strides, dilation_rate=dilation)
    block(x)
    _randomize(block, rng)
    assert (block.projection is not None) == projected
    y = block(x, training=training)
    coordinates, expected = _chain_block(block, x, training)
    np.testing.assert_array_equal(y.coordinates.numpy(), coordinates.numpy())
    assert y.features.shape[1] == filters * block_cls.expansion
    assert_close(y.features.numpy(), expected.numpy(), np.float32)
    if strides == 1:
        np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())


def test_basic_block_against_dense_convolution(rng):
    """Stride 1, inference: relu(bn2(conv2(relu(bn1(conv1(x))))) + x) with
    dense SAME convolutions; the hidden tensor is masked to the active sites
    (submanifold), BN in inference mode is affine per channel."""
    x, dense = random_sparse(rng, (6, 6, 6), 4, density=0.4)
    block = so.models.BasicBlock(4)
    block(x)
    _randomize(block, rng)
    mask = densify(x.with_features(np.ones([x.features.shape[0], 1], np.float32)),
                   (6, 6, 6), batch=2)

    def bn(h, norm):
        gamma, beta, mean, var = norm.get_weights()
        return (h - mean) / np.sqrt(var + 1e-5) * gamma + beta

    conv1, norm1, conv2, norm2 = block.main
    h = tf.nn.convolution(dense, conv1.get_weights()[0], padding="SAME").numpy()
    h = np.maximum(bn(h, norm1), 0) * mask
    h = tf.nn.convolution(h, conv2.get_weights()[0], padding="SAME").numpy()
    expected = np.maximum(bn(h, norm2) + dense, 0)
    y = block(x, training=False)
    assert_close(y.features.numpy(), read_at(expected, x.coordinates, 1), np.float32)


def test_block_argument_errors():
    with pytest.raises(ValueError, match="filters"):
        so.models.BasicBlock(0)
    with pytest.raises(ValueError, match="strides"):
        so.models.Bottleneck(4, strides=0)


# -- networks: shapes, sites, architecture -------------------------------------------------

@_IMPL_CUSTOM_FAST
@pytest.mark.parametrize("d", [2, 3])
def test_minkunet_output_sites_are_input_sites(impl, rng, d):
    """Any extent (not a multiple of 16), negative coordinates, two batch
    items: one output row per input site, in the input's order."""
    x, _ = random_sparse(rng, (13,) * d, 3, batch=2, density=0.3, origin=-7)
    net = _tiny_unet(5)
    y = net(x, training=False)
    assert y.features.shape == (x.features.shape[0], 5)
    np.testing.assert_array_equal(y.coordinates.numpy(), x.coordinates.numpy())
    assert y.stride == (1,) * d
    assert np.all(np.isfinite(y.features.numpy()))


def test_minkunet_one_site_and_empty_input(rng):
    net = _tiny_unet(3)
    one = so.SparseTensor(rng.normal(size=(1, 2)).astype(np.float32), [[0, -3, 5, 7]])
    y = net(one)
    assert y.features.shape == (1, 3)
    empty = so.SparseTensor(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.int32))
    assert net(empty).features.shape == (0, 3)


def test_minkunet_sites_do_not_mix_batch_items(rng):
    """Batch item 1's output does not depend on item 0's features."""
    x = _scene(rng, batch=2, size=8)
    net = _tiny_unet(2)
    y1 = net(x).features.numpy()
    item0 = x.coordinates.numpy()[:, 0] == 0
    f = x.features.numpy().copy()
    f[item0] = rng.normal(size=f[item0].shape)
    y2 = net(x.with_features(f)).features.numpy()
    assert_close(y2[~item0], y1[~item0], np.float32)
    assert np.abs(y2[item0] - y1[item0]).max() > 1e-3


def _block_counts(net):
    return [len(stage) for stage in net.encoder_stages + net.decoder_stages]


@pytest.mark.parametrize("factory,depths,variant,planes", [
    (so.models.MinkUNet14, (1,) * 8, "A", (32, 64, 128, 256, 128, 128, 96, 96)),
    (so.models.MinkUNet14, (1,) * 8, "D", (32, 64, 128, 256, 384, 384, 384, 384)),
    (so.models.MinkUNet18, (2,) * 8, "B", (32, 64, 128, 256, 128, 128, 128, 128)),
    (so.models.MinkUNet34, (2, 3, 4, 6, 2, 2, 2, 2), "C",
     (32, 64, 128, 256, 256, 128, 96, 96)),
])
def test_minkunet_factories_follow_minkowski_engine(factory, depths, variant, planes):
    net = factory(7, variant=variant)
    assert net.depths == depths and net.planes == planes
    assert _block_counts(net) == list(depths)
    assert net.init_dim == 32 and net.out_channels == 7


def test_minkunet14a_weight_shapes():
    """Kernel shapes of ME's MinkUNet14A for 3 input channels, 7 classes."""
    planes = (32, 64, 128, 256, 128, 128, 96, 96)
    net = so.models.MinkUNet14(7)
    net.build(((None, 3), (None, 4), (3,)))
    # conv0: 5x5x5, 3 -> 32; the first up-convolution: 2x2x2 [planes[4], 256].
    assert net.stem[0].kernel.shape == (5, 5, 5, 3, 32)
    assert net.up[0].kernel.shape == (2, 2, 2, planes[4], 256)
    assert net.final.kernel.shape == (1, 1, 1, planes[7], 7)
    # The block after the last concat sees planes[7] + init_dim channels.
    first = net.decoder_stages[3][0]
    assert first.main[0].kernel.shape == (3, 3, 3, planes[7] + 32, planes[7])
    assert first.projection is not None


def test_minkunet_custom_widths_and_errors():
    net = so.models.MinkUNet18(2, planes=(8,) * 8, init_dim=16)
    assert net.planes == (8,) * 8 and net.init_dim == 16
    with pytest.raises(ValueError, match="variants"):
        so.models.MinkUNet34(2, variant="D")
    with pytest.raises(ValueError, match="depths"):
        so.models.MinkUNet(2, depths=(1, 1))
    with pytest.raises(ValueError, match="block"):
        so.models.MinkUNet(2, block="dense")


@pytest.mark.parametrize("factory,block,depths", [
    (so.models.ResNet14, so.models.BasicBlock, (1, 1, 1, 1)),
    (so.models.ResNet18, so.models.BasicBlock, (2, 2, 2, 2)),
    (so.models.ResNet34, so.models.BasicBlock, (3, 4, 6, 3)),
    (so.models.ResNet50, so.models.Bottleneck, (3, 4, 6, 3)),
])
def test_resnet_factories(factory, block, depths):
    net = factory(10)
    assert [len(s) for s in net.stages] == list(depths)
    assert all(type(b) is block for s in net.stages for b in s)
    assert [s[0].strides for s in net.stages] == [2, 2, 2, 2]
    assert [s[-1].output_channels for s in net.stages] == [
        p * block.expansion for p in (64, 128, 256, 512)]


def test_resnet_weight_shapes():
    net = so.models.ResNet18(10, planes=(4, 8, 8, 16), init_dim=4)
    net.build(((None, 1), (None, 4), (3,)))
    assert net.stem[0].kernel.shape == (3, 3, 3, 1, 4)
    assert net.head[1].kernel.shape == (3, 3, 3, 16, 16)
    assert net.head[1].strides == 3
    assert net.final.kernel.shape == (16, 10)
    first = net.stages[1][0]  # 4 -> 8 channels, stride 2: projected
    assert first.projection[0].kernel.shape == (1, 1, 1, 4, 8)
    assert first.projection[0].strides == 2
    assert net.stages[1][1].projection is None


def _spread_scene(rng, batch, points=150, extent=700):
    """Sparse points over a box wider than the ResNet's total stride (192),
    so that each item keeps several sites to the end (InstanceNorm of a
    single site is 0, which would make every logit equal to the bias)."""
    items = [np.unique(rng.integers(0, extent, (points, 3)), axis=0)
             for _ in range(batch)]
    c = so.utils.batched_coordinates(items)
    return so.SparseTensor(rng.normal(size=(len(c), 3)).astype(np.float32), c)


@_IMPL_CUSTOM_FAST
def test_resnet_logits_per_batch_item(impl, rng):
    x = _spread_scene(rng, batch=3)
    net = _tiny_resnet(4)
    logits = net(x, training=False)
    assert logits.shape == (3, 4)
    assert np.abs(logits.numpy()[0] - logits.numpy()[1]).max() > 1e-3
    # Each row depends only on its own batch item.
    keep = x.coordinates.numpy()[:, 0] != 1
    sub = so.SparseTensor(x.features.numpy()[keep], x.coordinates.numpy()[keep])
    logits_sub = net(sub, training=False).numpy()
    assert_close(logits_sub[[0, 2]], logits.numpy()[[0, 2]], np.float32)


# -- configuration and saving ----------------------------------------------------------

_CONFIGS = {
    "basic": lambda: so.models.BasicBlock(4, strides=2, dilation_rate=1,
                                          bn_momentum=0.8, name="b"),
    "bottleneck": lambda: so.models.Bottleneck(2, kernel_initializer="he_uniform"),
    "minkunet": lambda: _tiny_unet(3, bn_epsilon=1e-3),
    "minkunet_bottleneck": lambda: so.models.MinkUNet(
        2, block="bottleneck", depths=(1, 1, 1, 1, 1, 1, 1, 1), planes=(1,) * 8,
        init_dim=2),
    "resnet": lambda: _tiny_resnet(3),
}


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_get_config_round_trip(rng, name):
    layer = _CONFIGS[name]()
    x = _spread_scene(rng, 2, 40) if name == "resnet" else _scene(rng, size=5)
    y1 = layer(x, training=False)
    config = layer.get_config()
    json.dumps(config)
    for clone in (type(layer).from_config(config),
                  keras.layers.deserialize(keras.layers.serialize(layer))):
        assert type(clone) is type(layer)
        assert clone.get_config() == config
        clone(x)
        clone.set_weights(layer.get_weights())
        y2 = clone(x, training=False)
        if isinstance(y1, so.SparseTensor):
            np.testing.assert_array_equal(y2.coordinates.numpy(), y1.coordinates.numpy())
            y1_f, y2_f = y1.features, y2.features
        else:
            y1_f, y2_f = y1, y2
        np.testing.assert_array_equal(y2_f.numpy(), y1_f.numpy())


def _inputs(channels=3, d=3):
    return (keras.Input(shape=(channels,), name="features"),
            keras.Input(shape=(1 + d,), dtype="int32", name="coordinates"))


def _functional_unet(num_classes=2):
    f_in, c_in = _inputs()
    y = _tiny_unet(num_classes)([f_in, c_in])
    logits = keras.layers.Lambda(lambda t: t[0], output_shape=(num_classes,))(y)
    return keras.Model([f_in, c_in], logits)


@keras.saving.register_keras_serializable(package="sparse_ops_tests")
class SegmentationModel(keras.Model):
    """A subclassed model around a MinkUNet, returning per-site logits."""

    def __init__(self, num_classes=2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.unet = _tiny_unet(num_classes)

    def call(self, inputs, training=None):
        features, coordinates = inputs
        return self.unet([features, coordinates], training=training).features

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _toy_segmentation(rng):
    """Two scenes; a site's label is whether its z > 0, and its first
    feature is its height plus noise: the network must smooth over
    neighbours to be right near the boundary."""
    x = _scene(rng, batch=2, size=10, channels=3, density=0.25)
    c = x.coordinates.numpy()
    labels = (c[:, 3] > 0).astype(np.int32)
    f = rng.normal(0, 0.3, (len(c), 3)).astype(np.float32)
    f[:, 0] += (c[:, 3] - 0.5) / 4.0
    return f, c, labels


def _dataset(f, c, labels, repeat=1):
    return tf.data.Dataset.from_tensors(((f, c), labels)).repeat(repeat)


def _predict(model, f, c):
    """predict() on one batch: all sites (Keras would cut numpy inputs into
    batches of rows)."""
    return model.predict((f, c), batch_size=len(c), verbose=0)


def _fit_losses(model, f, c, labels, epochs, steps):
    """Per-epoch mean training losses of model.fit (one traced function)."""
    model.compile(keras.optimizers.Adam(0.02),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(_dataset(f, c, labels, steps), epochs=epochs, verbose=0,
                        shuffle=False)
    return history.history["loss"]


# Tracing a whole network's training graph takes 30-250 s on a busy 2-core
# machine: one network (the functional MinkUNet) runs by default.
@_KERAS_SAVING_WARNING
@pytest.mark.parametrize("kind", [
    "functional", pytest.param("subclassed", marks=pytest.mark.slow)])
def test_minkunet_fit_lowers_loss_and_saves(rng, tmp_path, kind):
    keras.utils.set_random_seed(3)
    f, c, labels = _toy_segmentation(rng)
    model = _functional_unet() if kind == "functional" else SegmentationModel(2)
    losses = _fit_losses(model, f, c, labels, epochs=6, steps=5)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses
    predicted = _predict(model, f, c)
    assert predicted.shape == (len(c), 2)
    assert (predicted.argmax(1) == labels).mean() > 0.8
    # The graph (predict) and an eager call agree.
    eager = model((f, c), training=False).numpy()
    assert_close(eager, predicted, np.float32, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    np.testing.assert_array_equal(loaded((f, c), training=False).numpy(), eager)


@_KERAS_SAVING_WARNING
@pytest.mark.slow
def test_resnet_fit_learns_toy_classes_and_saves(rng, tmp_path):
    """Class 0: points on a wide horizontal plane, class 1: points on a
    tall vertical column (constant features): only geometry tells them apart."""
    keras.utils.set_random_seed(5)
    items, labels = [], []
    for i in range(8):
        label = i % 2
        u = rng.integers(0, 600, (150, 2))
        if label == 0:
            g = np.concatenate([u, np.full((150, 1), 300)], 1)
        else:
            g = np.concatenate([rng.integers(280, 320, (150, 2)), u[:, :1]], 1)
        items.append(np.unique(g, axis=0))
        labels.append(label)
    c = so.utils.batched_coordinates(items)
    f = np.ones((len(c), 1), np.float32)
    labels = np.array(labels, np.int32)
    f_in, c_in = _inputs(channels=1)
    model = keras.Model([f_in, c_in], _tiny_resnet(2)([f_in, c_in]))
    losses = _fit_losses(model, f, c, labels, epochs=6, steps=5)
    assert losses[-1] < 0.5 * losses[0], losses
    predicted = _predict(model, f, c)
    assert predicted.shape == (8, 2)
    np.testing.assert_array_equal(predicted.argmax(1), labels)
    model.save(tmp_path / "resnet.keras")
    loaded = keras.models.load_model(tmp_path / "resnet.keras", safe_mode=False)
    np.testing.assert_array_equal(loaded((f, c), training=False).numpy(),
                                  model((f, c), training=False).numpy())


def test_minkunet_from_sparse_keras_input(rng):
    """A `keras.Input(sparse=True)` [B, *spatial, C] input straight into the
    network gives the logits of the (features, coordinates) form."""
    x, dense = random_sparse(rng, (8, 8, 8), 3, density=0.3)
    inp = keras.Input(shape=(8, 8, 8, 3), sparse=True)
    net = _tiny_unet(3)
    y = net(inp)
    model = keras.Model(inp, [y.features, y.coordinates])
    logits, coordinates = model(tf.sparse.from_dense(dense), training=False)
    expected = net(x, training=False)
    # Same sites, possibly in another order: compare row by row via a dict.
    rows = {tuple(r): i for i, r in enumerate(expected.coordinates.numpy().tolist())}
    order = [rows[tuple(r)] for r in coordinates.numpy().tolist()]
    assert sorted(order) == list(range(len(rows)))
    assert_close(logits.numpy(), expected.features.numpy()[order], np.float32)

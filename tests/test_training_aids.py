"""The paper's training aids (Sec. 3.4-3.6): sparse back-propagation on the
Conv layer, the adaptive density regulariser (Eq. 6) and one-warning-shot
pruning, alone and through model.fit.

Expected values come from numpy: Eq. 6 written out, densities counted on the
layer's output, weight updates from the closed-form gradient of the penalty.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import random_sparse

CIN, COUT = 3, 4


def eq6_bias(rho, target, b1=0.1, b2=0.1, offset=0.1):
    """b of Eq. 6, written out in float32 as the layer computes it (the
    measured density is a float32 variable; rho == target gives b = 0), not
    by numpy's version-dependent promotion of float32 against Python floats."""
    rho, target = np.float32(rho), np.float32(target)
    if rho > target:
        return np.float32(offset) + np.float32(b1) * (rho - target)
    return -np.float32(b2) * (target - rho)


def fields(x):
    return [x.features, x.coordinates]


def _dataset(x, labels, repeat=1):
    return tf.data.Dataset.from_tensors(((x.features, x.coordinates), labels)).repeat(
        repeat)


def _model(conv, channels=CIN, d=2):
    """features, coordinates -> conv -> the output features (a Keras model)."""
    f_in = keras.Input(shape=(channels,), name="features")
    c_in = keras.Input(shape=(1 + d,), dtype="int32", name="coordinates")
    out = keras.layers.Lambda(lambda t: t[0], output_shape=(conv.filters,))(
        conv([f_in, c_in]))
    return keras.Model([f_in, c_in], out)


def _positive_fraction(features):
    f = np.asarray(features)
    return np.count_nonzero(f > 0) / f.size


# -- the regulariser alone ---------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.0, 0.1, 0.3, 0.30001, 0.5, 1.0])
def test_density_regularizer_matches_eq6(rng, rho):
    """scale * sum((w + b)^2) with b from Eq. 6 (float64 numpy), both branches
    and the boundary rho == target."""
    target, scale = 0.3, 0.7
    reg = so.regularizers.DensityRegularizer(target, scale, b1=0.2, b2=0.4, offset=0.05)
    bound = reg.bind(tf.Variable(rho, dtype=tf.float32))
    w = rng.uniform(-1, 1, (3, 3, CIN, COUT)).astype(np.float32)
    b = eq6_bias(np.float32(rho), target, 0.2, 0.4, 0.05)
    np.testing.assert_allclose(bound(tf.constant(w)).numpy(),
                               scale * np.sum((w.astype(np.float64) + b) ** 2),
                               rtol=1e-5)
    assert (b > 0) == (rho > target)  # the paper's sign convention


@pytest.mark.parametrize("rho, direction", [(0.8, -1), (0.05, 1)])
def test_density_regularizer_gradient_sign(rho, direction):
    """Too dense: the gradient step lowers every weight (more outputs cut by the
    ReLU); too sparse: it raises them. The step is exactly -2 scale (w + b)."""
    scale = 0.5
    reg = so.regularizers.DensityRegularizer(0.2, scale).bind(tf.Variable(rho))
    w = tf.Variable(tf.zeros([2, CIN, COUT]))
    with tf.GradientTape() as tape:
        loss = reg(w)
    step = -tape.gradient(loss, w).numpy()
    assert np.all(np.sign(step) == direction)
    np.testing.assert_allclose(step, -2 * scale * eq6_bias(rho, 0.2), rtol=1e-6)


def test_density_regularizer_arguments():
    with pytest.raises(ValueError, match="target_density"):
        so.regularizers.DensityRegularizer(1.5, 0.1)
    with pytest.raises(ValueError, match="scale"):
        so.regularizers.DensityRegularizer(0.5, -0.1)
    with pytest.raises(TypeError, match="b1"):
        so.regularizers.DensityRegularizer(0.5, 0.1, b1="x")
    with pytest.raises(ValueError, match="kernel_regularizer"):
        so.regularizers.DensityRegularizer(0.5, 0.1)(tf.ones([2, 2]))
    # A Keras layer that measures no density cannot use it silently either.
    dense = keras.layers.Dense(2, kernel_regularizer=so.regularizers.DensityRegularizer(
        0.5, 0.1))
    dense(tf.ones([1, 3]))
    with pytest.raises(ValueError, match="sparse_ops layer"):
        _ = dense.losses


def test_density_regularizer_serialisation():
    reg = so.regularizers.DensityRegularizer(0.25, 0.3, b1=0.2, b2=0.05, offset=0.15)
    config = keras.regularizers.serialize(reg)
    json.dumps(config)
    clone = keras.regularizers.deserialize(config)
    assert isinstance(clone, so.regularizers.DensityRegularizer)
    assert clone.get_config() == reg.get_config() == {
        "target_density": 0.25, "scale": 0.3, "b1": 0.2, "b2": 0.05, "offset": 0.15}


# -- driven by the layer's measured density ------------------------------------------------

def _check_layer_loss(conv, y, expected_rho, target, scale):
    rho = float(conv.measured_density.numpy())
    np.testing.assert_allclose(rho, expected_rho, rtol=1e-6)
    kernel = conv.kernel.numpy().astype(np.float64)
    expected = scale * np.sum((kernel + eq6_bias(np.float32(rho), target)) ** 2)
    (loss,) = conv.losses
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("impl", ["custom", "reference"], indirect=True)
def test_layer_feeds_measured_density(impl, rng):
    """The penalty follows the density of the layer's last output: the
    fraction of positive output entries; shifting the bias so that every
    output is positive moves rho to 1 and b to the other branch."""
    target, scale = 0.3, 0.2
    x, _ = random_sparse(rng, (6, 6), CIN, density=0.5)
    conv = so.layers.Conv(COUT, 3, kernel_regularizer=so.regularizers.DensityRegularizer(
        target, scale))
    y = conv(fields(x))
    _check_layer_loss(conv, y, _positive_fraction(y.features), target, scale)
    assert 0.2 < conv.measured_density.numpy() < 0.8
    conv.bias.assign(np.full(COUT, 100.0, np.float32))
    y = conv(fields(x))
    _check_layer_loss(conv, y, 1.0, target, scale)
    conv.bias.assign(np.full(COUT, -100.0, np.float32))
    y = conv(fields(x))
    _check_layer_loss(conv, y, 0.0, target, scale)
    # Weights: kernel, bias, then the measured density (non-trainable).
    assert [w.name for w in conv.weights] == ["kernel", "bias", "measured_density"]
    assert [w.name for w in conv.trainable_weights] == ["kernel", "bias"]


def test_measured_density_over_grid_volume(rng):
    """With spatial_shape, rho = positive entries / (batch x volume x C), the
    paper's density of the feature map."""
    x, _ = random_sparse(rng, (6, 5), CIN, batch=3, density=0.4)
    conv = so.layers.Conv(COUT, 3, spatial_shape=(6, 5),
                          kernel_regularizer=so.regularizers.DensityRegularizer(0.1, 1.0))
    y = conv(fields(x))
    batch = int(x.coordinates.numpy()[:, 0].max()) + 1
    expected = np.count_nonzero(y.features.numpy() > 0) / (batch * 30 * COUT)
    _check_layer_loss(conv, y, expected, 0.1, 1.0)


def test_measured_density_of_empty_input():
    conv = so.layers.Conv(COUT, 3, kernel_regularizer=so.regularizers.DensityRegularizer(
        0.3, 1.0))
    conv([tf.zeros([0, CIN]), tf.zeros([0, 3], tf.int32)])
    assert conv.measured_density.numpy() == 0.0


def test_one_instance_on_two_layers_follows_each_layer(rng):
    """Each layer binds its own copy: one shared instance does not mix densities."""
    reg = so.regularizers.DensityRegularizer(0.5, 1.0)
    x, _ = random_sparse(rng, (6, 6), CIN)
    a = so.layers.Conv(COUT, 3, kernel_regularizer=reg, bias_initializer="ones")
    b = so.layers.Conv(COUT, 3, kernel_regularizer=reg,
                       bias_initializer=keras.initializers.Constant(-100.0))
    a(fields(x))
    b(fields(x))
    assert b.measured_density.numpy() == 0.0 < a.measured_density.numpy()
    for layer in (a, b):
        _check_layer_loss(layer, None, float(layer.measured_density.numpy()), 0.5, 1.0)


def test_conv_with_density_regularizer_config_round_trip(rng):
    x, _ = random_sparse(rng, (6, 6), CIN)
    conv = so.layers.Conv(COUT, 3, spatial_shape=(6, 6), masked_gradients=True,
                          kernel_regularizer=so.regularizers.DensityRegularizer(0.2, 0.1))
    y1 = conv(fields(x))
    config = conv.get_config()
    json.dumps(config)
    clone = keras.layers.deserialize(keras.layers.serialize(conv))
    assert clone.get_config() == config
    clone(fields(x))
    clone.set_weights(conv.get_weights())
    y2 = clone(fields(x))
    np.testing.assert_array_equal(y2.features.numpy(), y1.features.numpy())
    np.testing.assert_allclose(clone.losses[0].numpy(), conv.losses[0].numpy(), rtol=1e-6)


def test_fit_step_uses_density_of_that_step(rng):
    """In model.fit (a tf.function) one SGD step on a loss with no gradient
    moves the kernel by -lr * 2 scale (w + b), b from the density the layer
    measured in that step's forward pass."""
    keras.utils.set_random_seed(3)
    target, scale, lr = 0.2, 0.5, 0.1
    x, _ = random_sparse(rng, (6, 6), CIN)
    conv = so.layers.Conv(COUT, 3, use_bias=False,
                          kernel_regularizer=so.regularizers.DensityRegularizer(
                              target, scale))
    model = _model(conv)
    model.compile(keras.optimizers.SGD(lr), loss=lambda y, p: 0.0 * tf.reduce_sum(p))
    w0 = conv.kernel.numpy().copy()
    rho = _positive_fraction(model((x.features, x.coordinates)))
    assert rho > target  # glorot kernels, random signs: about half are positive
    model.fit(_dataset(x, np.zeros([x.features.shape[0], COUT], np.float32)),
              epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(conv.measured_density.numpy(), rho, rtol=1e-6)
    expected = w0 - lr * 2 * scale * (w0 + eq6_bias(np.float32(rho), target))
    np.testing.assert_allclose(conv.kernel.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", [0.1, 0.9])
def test_fit_steers_density_towards_target(rng, target):
    """Regularisation alone moves the output density towards the target from
    about 0.5, down or up, for non-negative inputs (what a ReLU network's
    layers see; with inputs of both signs lower weights need not mean fewer
    positive outputs)."""
    keras.utils.set_random_seed(5)
    x, _ = random_sparse(rng, (8, 8), CIN, density=0.5)
    x = x.with_features(tf.abs(x.features))
    conv = so.layers.Conv(COUT, 3, kernel_regularizer=so.regularizers.DensityRegularizer(
        target, 1.0, b1=0.5, b2=0.5))
    model = _model(conv)
    model.compile(keras.optimizers.SGD(0.05), loss=lambda y, p: 0.0 * tf.reduce_sum(p))
    start = _positive_fraction(model((x.features, x.coordinates)))
    model.fit(_dataset(x, np.zeros([x.features.shape[0], COUT], np.float32), 30),
              epochs=1, verbose=0, shuffle=False)
    end = _positive_fraction(model((x.features, x.coordinates)))
    assert abs(end - target) < 0.5 * abs(start - target), (start, end)


# -- sparse back-propagation on the layer (Eq. 3-4) -----------------------------------------

@pytest.mark.parametrize("impl", ["custom", "reference"], indirect=True)
def test_conv_layer_masked_gradients(impl, rng):
    """Conv(masked_gradients=True): zero gradient to zero input entries and to
    zero kernel entries; elsewhere the plain gradient."""
    x, _ = random_sparse(rng, (6, 6), CIN, density=0.5)
    f = x.features.numpy().copy()
    f[rng.random(f.shape) < 0.3] = 0.0
    grads = {}
    for masked in (False, True):
        keras.utils.set_random_seed(1)
        conv = so.layers.Conv(COUT, 3, masked_gradients=masked)
        conv.build([(None, CIN), (None, 3)])
        w = conv.kernel.numpy()
        w[0, 1] = 0.0
        conv.kernel.assign(w)
        features = tf.constant(f)
        with tf.GradientTape() as tape:
            tape.watch(features)
            y = conv([features, x.coordinates])
            loss = tf.reduce_sum(tf.sin(y.features))
        grads[masked] = [tf.convert_to_tensor(g).numpy()
                          for g in tape.gradient(loss, [features, conv.kernel])]
    (gf, gk), (uf, uk) = grads[True], grads[False]
    assert np.all(uf[f == 0] != 0) and np.all(gf[f == 0] == 0)
    np.testing.assert_allclose(gf[f != 0], uf[f != 0], rtol=1e-5, atol=1e-6)
    assert np.all(uk[0, 1] != 0) and np.all(gk[0, 1] == 0)
    rest = np.ones(w.shape, bool)
    rest[0, 1] = False
    np.testing.assert_allclose(gk[rest], uk[rest], rtol=1e-5, atol=1e-6)


# -- one-warning-shot pruning ------------------------------------------------------------

def _pruning_setup(epsilon, **kwargs):
    conv = so.layers.Conv(COUT, 3, **kwargs)
    model = _model(conv)
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    callback = so.callbacks.WeightPruning(epsilon)
    callback.set_model(model)
    callback.on_train_begin()
    return conv, model, callback


def test_pruning_needs_a_warning_shot():
    """One check below epsilon prunes nothing; two consecutive ones do; a
    weight that recovers in between starts over. Other weights are untouched."""
    eps = 0.05
    conv, _, callback = _pruning_setup(eps)
    w = np.full(conv.kernel.shape, 0.5, np.float32)
    w.flat[0] = 0.01    # small at every check
    w.flat[1] = -0.02   # small, then large, then small twice
    w.flat[2] = 0.049   # just below epsilon
    w.flat[3] = 0.05    # not below epsilon
    conv.kernel.assign(w)
    callback.on_epoch_end(0, {})
    np.testing.assert_array_equal(conv.kernel.numpy(), w)  # warning only
    w2 = w.copy()
    w2.flat[1] = 0.3
    conv.kernel.assign(w2)
    logs = {}
    callback.on_epoch_end(1, logs)
    expected = w2.copy()
    expected.flat[0] = expected.flat[2] = 0.0
    np.testing.assert_array_equal(conv.kernel.numpy(), expected)
    assert logs["nonzero_weights"] == callback.nonzero_weights == w.size - 2
    w3 = expected.copy()
    w3.flat[1] = 0.01
    conv.kernel.assign(w3)
    callback.on_epoch_end(2, {})
    np.testing.assert_array_equal(conv.kernel.numpy(), w3)  # flat[1]: first warning
    callback.on_epoch_end(3, {})
    expected.flat[1] = 0.0
    np.testing.assert_array_equal(conv.kernel.numpy(), expected)
    np.testing.assert_array_equal(conv.bias.numpy(), 0.0)  # biases are not watched


@pytest.mark.parametrize("masked_gradients", [False, True])
def test_pruned_weights_stay_zero_through_fit_with_adam(rng, masked_gradients):
    """Weights pruned after epoch 2 stay exactly zero through more epochs of
    Adam (several steps each), with or without masked gradients; the rest keep
    training and the pruned set only grows."""
    keras.utils.set_random_seed(11)
    x, _ = random_sparse(rng, (6, 6), CIN, density=0.5)
    labels = rng.normal(size=(x.features.shape[0], COUT)).astype(np.float32)
    conv = so.layers.Conv(COUT, 3, masked_gradients=masked_gradients)
    model = _model(conv)
    model.compile(keras.optimizers.Adam(0.02), loss="mse")
    data = _dataset(x, labels, repeat=4)
    model.fit(data, epochs=1, verbose=0, shuffle=False)  # a train step traced without pruning
    callback = so.callbacks.WeightPruning(0.1)
    model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    pruned = conv.kernel.numpy() == 0
    assert 0 < pruned.sum() < pruned.size
    before = conv.kernel.numpy()
    history = model.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[callback])
    after = conv.kernel.numpy()
    assert np.all(after[pruned] == 0.0)
    assert np.all(after[~pruned] != before[~pruned])  # still training
    assert np.all(np.diff(history.history["nonzero_weights"]) <= 0)
    assert history.history["nonzero_weights"][-1] == np.count_nonzero(after)


def test_pruning_keeps_the_layers_own_constraint(rng):
    """The pruning mask comes on top of a kernel_constraint, which still applies."""
    keras.utils.set_random_seed(2)
    x, _ = random_sparse(rng, (6, 6), CIN)
    labels = rng.normal(size=(x.features.shape[0], COUT)).astype(np.float32)
    conv = so.layers.Conv(COUT, 3, kernel_constraint=keras.constraints.NonNeg())
    model = _model(conv)
    model.compile(keras.optimizers.Adam(0.05), loss="mse")
    callback = so.callbacks.WeightPruning(0.05)
    model.fit(_dataset(x, labels, 3), epochs=3, verbose=0, shuffle=False, callbacks=[callback])
    assert np.all(conv.kernel.numpy() >= 0)


def test_pruning_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        so.callbacks.WeightPruning(0.0)
    with pytest.raises(TypeError, match="epsilon"):
        so.callbacks.WeightPruning("small")

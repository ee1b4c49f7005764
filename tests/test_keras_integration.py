"""Keras integration beyond single layers: a subclassed model trained with
`model.fit` on a tf.data pipeline whose batches all have a different number
of sites, a `tf.function` + `GradientTape` loop that traces once for all of
them, and `tf.distribute.MirroredStrategy` over two logical CPU devices.

The oracles are the same computation run another way: `model.fit` against
`run_eagerly=True`, the traced loop against the plain Python loop, two
replicas against one device on the same global batch.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIN, CLASSES = 2, 2
EPOCHS = 4

_IMPL_CUSTOM_FAST = pytest.mark.parametrize(
    "impl", ["custom", pytest.param("reference", marks=pytest.mark.slow)],
    indirect=True)  # whole-model training is slow on the reference path


@keras.saving.register_keras_serializable(package="sparse_ops_tests")
class SegmentationNet(keras.Model):
    """A small U-shaped per-site classifier written as a subclassed model:
    submanifold conv, strided conv, max pooling, transposed convolutions back
    onto the finer sites, a skip connection, per-site logits [N, classes]."""

    def __init__(self, classes=CLASSES, width=8, **kwargs):
        super().__init__(**kwargs)
        self.stem = so.layers.Conv(width, 3)
        self.down = so.layers.Conv(width, 2, strides=2)
        self.pool = so.layers.MaxPool(2)
        self.up_pool = so.layers.ConvTranspose(width, 2, strides=2)
        self.up = so.layers.ConvTranspose(width, 2, strides=2)
        self.relu = so.layers.ReLU()
        self.head = so.layers.Dense(classes)
        self.traces = 0  # Python side effect: counts calls, i.e. traces in a graph

    def call(self, inputs):
        self.traces += 1
        coordinates, features = inputs
        x = so.SparseTensor(features, coordinates)
        skip = self.relu(self.stem(x))
        h = self.relu(self.down(skip))
        h = self.relu(self.up_pool(self.pool(h)))  # onto the stride-2 sites
        h = self.up(h, coordinates=skip)
        return self.head(skip.with_features(h.features + skip.features)).features


def _batches(seed, count=5):
    """(coordinates, features, labels) of `count` sparse batches, each with a
    different number of sites (and batch items), negative coordinates
    included. A site's label: whether it has at least 3 active neighbours in
    its 3x3 window, a task that needs the convolutions."""
    rng = np.random.default_rng(seed)
    out, sizes = [], set()
    while len(out) < count:
        items = int(rng.integers(1, 4))
        mask = rng.random((items, 8, 8)) < rng.uniform(0.25, 0.6)
        idx = np.argwhere(mask)
        if len(idx) in sizes or len(idx) < 2:
            continue
        sizes.add(len(idx))
        rng.shuffle(idx)
        coordinates = np.concatenate([idx[:, :1], idx[:, 1:] - 3], 1).astype(np.int32)
        padded = np.pad(mask, [(0, 0), (1, 1), (1, 1)])
        neighbours = sum(padded[:, 1 + a:9 + a, 1 + b:9 + b]
                         for a in (-1, 0, 1) for b in (-1, 0, 1)) - 1
        labels = (neighbours[tuple(idx.T)] >= 3).astype(np.int32)
        features = np.concatenate(
            [np.ones((len(idx), 1)), rng.normal(size=(len(idx), CIN - 1))], 1)
        out.append((coordinates, features.astype(np.float32), labels))
    return out


def _dataset(batches):
    """A generator-backed tf.data pipeline: one sparse batch per element, N
    unknown (None) in the signature, so no padding and no ragged batching."""
    def generate():
        for coordinates, features, labels in batches:
            yield (coordinates, features), labels
    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        (tf.TensorSpec([None, 3], tf.int32), tf.TensorSpec([None, CIN], tf.float32)),
        tf.TensorSpec([None], tf.int32)))
    # Known length: Keras then knows where an epoch ends.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))


def _built_model(batches, seed=11):
    keras.utils.set_random_seed(seed)
    model = SegmentationNet()
    coordinates, features, _ = batches[0]
    model((coordinates, features))
    return model


def _compiled(model, run_eagerly):
    model.compile(keras.optimizers.SGD(0.2, momentum=0.5),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
    return model


@_IMPL_CUSTOM_FAST
def test_subclassed_model_fit_on_varying_site_counts(impl):
    batches = _batches(seed=1)
    assert len({len(b[0]) for b in batches}) == len(batches)
    graph_model = _compiled(_built_model(batches), run_eagerly=False)
    eager_model = _compiled(_built_model(batches), run_eagerly=True)
    for a, b in zip(graph_model.get_weights(), eager_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    data = _dataset(batches)
    first = graph_model.evaluate(data, verbose=0)

    graph_model.traces = 0
    history = graph_model.fit(data, epochs=EPOCHS, verbose=0, shuffle=False)
    eager_history = eager_model.fit(data, epochs=EPOCHS, verbose=0, shuffle=False)
    # The train step is traced for the dataset's [None, ...] signature, not
    # once per batch size (eagerly, call runs once per batch).
    assert graph_model.traces <= 2 < len(batches)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert graph_model.evaluate(data, verbose=0) < first
    assert_close(losses, eager_history.history["loss"], np.float32)
    for a, b in zip(graph_model.get_weights(), eager_model.get_weights()):
        assert_close(a, b, np.float32)
    # predict concatenates the per-batch outputs: one row per site.
    pred = graph_model.predict(data.map(lambda x, y: (x,)), verbose=0)
    expected = np.concatenate([graph_model((c, f)).numpy() for c, f, _ in batches])
    assert_close(pred, expected, np.float32)


def _train_step(model, optimizer):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(coordinates, features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model((coordinates, features)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return step


@_IMPL_CUSTOM_FAST
def test_gradient_tape_loop_traces_once_and_matches_eager(impl):
    batches = _batches(seed=2)
    graph_model, eager_model = _built_model(batches), _built_model(batches)
    graph_optimizer = keras.optimizers.Adam(0.02)
    # Its slots now: creating variables while tracing makes TF trace twice.
    graph_optimizer.build(graph_model.trainable_variables)
    graph_step = tf.function(_train_step(graph_model, graph_optimizer),
                             input_signature=[tf.TensorSpec([None, 3], tf.int32),
                                              tf.TensorSpec([None, CIN], tf.float32),
                                              tf.TensorSpec([None], tf.int32)])
    eager_step = _train_step(eager_model, keras.optimizers.Adam(0.02))
    graph_losses, eager_losses = [], []
    for _ in range(3):
        for batch in batches:
            graph_losses.append(float(graph_step(*batch)))
            eager_losses.append(float(eager_step(*batch)))
    assert graph_step.experimental_get_tracing_count() == 1
    first, last = np.mean(graph_losses[:len(batches)]), np.mean(graph_losses[-len(batches):])
    assert last < 0.8 * first, (first, last)
    assert_close(graph_losses, eager_losses, np.float32)
    for a, b in zip(graph_model.get_weights(), eager_model.get_weights()):
        assert_close(a, b, np.float32)


# -- MirroredStrategy ----------------------------------------------------------------------

_MIRRORED_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import sparse_ops as so
    sys.path.insert(0, os.path.join(%(root)r, "tests"))
    from test_keras_integration import SegmentationNet, _batches

    LR, STEPS = 0.3, 3
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum")
    # Each step: one sparse batch per replica, of different sizes.
    steps = list(zip(_batches(seed=3, count=STEPS), _batches(seed=4, count=STEPS)))
    sample = steps[0][0][:2]


    def model_with(weights):
        model = SegmentationNet()
        model(sample)
        if weights is not None:
            model.set_weights(weights)
        return model


    def concat(parts):
        # One global batch: renumber each part's batch items after the last.
        offset, out = 0, []
        for coordinates, features, labels in parts:
            coordinates = coordinates.copy()
            coordinates[:, 0] += offset
            offset = coordinates[:, 0].max() + 1
            out.append((coordinates, features, labels))
        return tuple(np.concatenate(f) for f in zip(*out))


    def one_device(weights):
        # The mean loss over all sites of the global batch.
        model, optimizer = model_with(weights), keras.optimizers.SGD(LR)
        for parts in steps:
            coordinates, features, labels = concat(parts)
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model((coordinates, features))) / len(labels)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return model.get_weights()


    def two_replicas(weights):
        with strategy.scope():
            model, optimizer = model_with(weights), keras.optimizers.SGD(LR)
            optimizer.build(model.trainable_variables)

        def replica_step(coordinates, features, labels, global_sites):
            with tf.GradientTape() as tape:
                # This replica's share of the global mean: the sum over its
                # sites / all sites; the replicas' gradients are summed.
                loss = loss_fn(labels, model((coordinates, features))) / global_sites
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return tf.shape(coordinates)[0]

        @tf.function(reduce_retracing=True)
        def distributed_step(*args):
            return strategy.run(replica_step, args=args)

        sites = []
        for parts in steps:
            values = [strategy.experimental_distribute_values_from_function(
                lambda ctx, i=i: tf.constant(parts[ctx.replica_id_in_sync_group][i]))
                for i in range(3)]
            global_sites = tf.constant(float(sum(len(p[2]) for p in parts)))
            n = distributed_step(*values, global_sites)
            sites.append([int(v) for v in strategy.experimental_local_results(n)])
        return model.get_weights(), sites


    keras.utils.set_random_seed(5)
    initial = model_with(None).get_weights()
    with so.config.implementation(sys.argv[2]):
        single = one_device(initial)
        mirrored, sites = two_replicas(initial)
    out = {"sites": np.array(sites),
           "expected_sites": np.array([[len(a[0]), len(b[0])] for a, b in steps])}
    for i, (w0, a, b) in enumerate(zip(initial, single, mirrored)):
        out[f"initial_{i}"], out[f"single_{i}"], out[f"mirrored_{i}"] = w0, a, b
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("impl_name", [
    "custom", pytest.param("reference", marks=pytest.mark.slow)])
def test_mirrored_strategy_matches_one_device(impl_name, tmp_path):
    """Two logical CPU replicas, each with its own sparse batch (different
    numbers of sites), train to the weights of one device on the union of the
    batches. In a child process: logical devices must be set before
    TensorFlow initialises."""
    out = tmp_path / "weights.npz"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_CHILD % {"root": ROOT}, str(out), impl_name],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = np.load(out)
    count = len([k for k in result.files if k.startswith("initial_")])
    np.testing.assert_array_equal(result["sites"], result["expected_sites"])
    assert np.all(result["sites"][:, 0] != result["sites"][:, 1])
    moved = 0.0
    for i in range(count):
        single = result[f"single_{i}"]
        assert_close(result[f"mirrored_{i}"], single, np.float32, rtol=1e-5, atol=1e-5)
        moved = max(moved, np.abs(single - result[f"initial_{i}"]).max())
    assert moved > 1e-2  # it trained

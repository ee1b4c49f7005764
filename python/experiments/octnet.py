"""The OctNet3 networks of the paper's Table 2, sparse and dense.

OctNet3-r^D: blocks of three 3^D convolutions with 8, 16, 24, 32, ...
channels, a 2x max pooling between blocks; the first `sparse_blocks` blocks
run on sparse tensors (each conv followed by the density-bounding attention
of Sec. 3.2 and a ReLU), then sparseToDense, then the remaining blocks as
dense convolutions, then dropout(0.5), fully-connected(1024) and
fully-connected(classes).

Sparse convolutions come in two flavours:
- "full" (the paper's Algorithm 1): output sites are every grid cell the
  kernel reaches from an input site (fill-in), clipped to the grid; the
  attention then keeps the k strongest responses per channel.
- "submanifold" (MinkowskiEngine / Graham et al.): output sites = input
  sites, so there is no fill-in to bound in the first place; the attention
  still caps each channel at k entries.
"""

import time

import keras
import numpy as np
import tensorflow as tf

import sparse_ops as so
from reporting import log, progress

CHANNELS = (8, 16, 24, 32, 40, 48)


def attention_options(density, spatial_shape, mode="value"):
    """Conv(attention=...) for a density bound below 1 (the paper's
    k-selection: "value" keeps the largest responses, "abs" the largest
    absolute ones), else None."""
    if density is None or density >= 1:
        return None
    return {"density": float(density), "spatial_shape": list(spatial_shape), "mode": mode}


class SparseOctNet(keras.Model):
    """call((features [N, 1], coordinates [N, 1 + D])) -> logits [B, classes].

    densities: one density bound per sparse block (None or >= 1: unbounded).
    attention_mode: "value" or "abs" (magnitude): the paper's two k-selections.
    kernel_initializer: of every convolution ("he_normal" keeps the signal
      of the deeper 3D nets from fading at initialisation).
    regularizer_scale: lambda of the adaptive density regulariser (Sec. 3.5,
      Eq. 6; b1 = b2 = o = 0.1) on every sparse conv kernel, with the block's
      density bound as its target; 0 for none.
    """

    def __init__(self, resolution, dimension, classes, densities, dense_blocks=0,
                 conv="full", masked_gradients=True, regularizer_scale=0.0,
                 attention_mode="value", kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if conv not in ("full", "submanifold"):
            raise ValueError(f"conv must be 'full' or 'submanifold', got {conv!r}")
        self.resolution, self.dimension = int(resolution), int(dimension)
        self.conv_mode = conv
        self.offsets = so.kernel_offsets(3, dimension=dimension)
        self.blocks = []  # (pool or None, [conv, conv, conv], grid size)
        size = self.resolution
        for i, density in enumerate(densities):
            pool = so.layers.MaxPool(2) if i else None
            size = size // 2 if i else size
            shape = (size,) * dimension
            target = 1.0 if density is None else min(float(density), 1.0)
            convs = [so.layers.Conv(
                CHANNELS[i], 3, masked_gradients=masked_gradients, spatial_shape=shape,
                kernel_initializer=kernel_initializer,
                attention=attention_options(density, shape, attention_mode),
                kernel_regularizer=so.regularizers.DensityRegularizer(
                    target, regularizer_scale) if regularizer_scale else None)
                for _ in range(3)]
            self.blocks.append((pool, convs, size))
        self.grid = size
        self.prune = so.layers.Prune()
        self.to_dense = so.layers.ToDense((size,) * dimension)
        dense_conv = keras.layers.Conv3D if dimension == 3 else keras.layers.Conv2D
        dense_pool = keras.layers.MaxPool3D if dimension == 3 else keras.layers.MaxPool2D
        self.dense_layers = []
        for j in range(dense_blocks):
            self.dense_layers.append(dense_pool(2))
            self.dense_layers += [dense_conv(CHANNELS[len(densities) + j], 3, padding="same",
                                             activation="relu",
                                             kernel_initializer=kernel_initializer)
                                  for _ in range(3)]
        self.head = [keras.layers.Flatten(), keras.layers.Dropout(0.5),
                     keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(classes)]

    def sparse_convs(self):
        return [conv for _, convs, _ in self.blocks for conv in convs]

    def _out_sites(self, x, size):
        """Fill-in sites of a full convolution, clipped to the grid."""
        sites = so.ops.generative_coordinates(x.coordinates, self.offsets, x.stride)
        spatial = sites[:, 1:]
        inside = tf.reduce_all((spatial >= 0) & (spatial < size * np.asarray(x.stride)), 1)
        return tf.boolean_mask(sites, inside)

    def _relu(self, x):
        """ReLU, then drop the sites left all zero: the paper's representation
        stores non-zero entries only, so they make no fill-in and no work, and
        a net whose activations the regulariser drives below zero gets faster."""
        features = tf.nn.relu(x.features)
        return self.prune(x.with_features(features), tf.reduce_any(features > 0, axis=1))

    def call(self, inputs, training=False):
        features, coordinates = inputs
        batch = tf.reduce_max(coordinates[:, 0]) + 1
        x = so.SparseTensor(features, coordinates)
        for pool, convs, size in self.blocks:
            if pool is not None:
                x = pool(x)
            for conv in convs:  # conv, attention (fused), ReLU
                if self.conv_mode == "full":
                    x = conv(x, out_coordinates=self._out_sites(x, size))
                else:
                    x = conv(x)
                x = self._relu(x)
        y = self.to_dense(x)
        # The last batch items may have lost every site: zeros for them.
        y = tf.ensure_shape(
            tf.pad(y, [[0, batch - tf.shape(y)[0]]] + [[0, 0]] * (self.dimension + 1)),
            [None] + [self.grid] * self.dimension + [CHANNELS[len(self.blocks) - 1]])
        for layer in self.dense_layers + self.head:
            y = layer(y, training=training) if isinstance(layer, keras.layers.Dropout) \
                else layer(y)
        return y


def dense_octnet(resolution, dimension, classes, sparse_blocks, dense_blocks=0,
                 kernel_initializer="glorot_uniform"):
    """The equivalent dense network: the same layers as keras Conv2D/Conv3D
    on the whole grid (padding "same", ReLU), input [B, *grid, 1]."""
    conv = keras.layers.Conv3D if dimension == 3 else keras.layers.Conv2D
    pool = keras.layers.MaxPool3D if dimension == 3 else keras.layers.MaxPool2D
    layers = [keras.Input((resolution,) * dimension + (1,))]
    for i in range(sparse_blocks + dense_blocks):
        if i:
            layers.append(pool(2))
        layers += [conv(CHANNELS[i], 3, padding="same", activation="relu",
                        kernel_initializer=kernel_initializer) for _ in range(3)]
    layers += [keras.layers.Flatten(), keras.layers.Dropout(0.5),
               keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(classes)]
    return keras.Sequential(layers)


def count_nonzero_weights(model, sparse_only=False):
    """Non-zero entries of the convolution kernels (all conv layers, or only
    the sparse ones)."""
    kernels = [c.kernel for c in model.sparse_convs()] if sparse_only else [
        w for w in model.trainable_weights if "kernel" in w.path and len(w.shape) > 2]
    return int(sum(np.count_nonzero(k.numpy()) for k in kernels))


# -- training -------------------------------------------------------------------

class EpochLog(keras.callbacks.Callback):
    """A tqdm bar per epoch; records training time per epoch (validation
    excluded), the metrics and the non-zero conv weights after each epoch."""

    def __init__(self, steps, label="", count_weights=None):
        super().__init__()
        self.steps, self.label, self.count_weights = steps, label, count_weights
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = progress(total=self.steps, desc=f"{self.label} epoch {epoch + 1}",
                            unit="batch", leave=False)
        self.start, self.train_seconds, self.test_seconds = time.perf_counter(), None, np.nan

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start
        self.test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.test_seconds = time.perf_counter() - self.test_start

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start
        row = {"epoch": epoch + 1, "seconds": self.train_seconds,
               "test_seconds": getattr(self, "test_seconds", np.nan),
               "loss": float(logs.get("loss", np.nan)),
               "train_accuracy": float(logs.get("accuracy", np.nan)),
               "test_loss": float(logs.get("val_loss", np.nan)),
               "test_accuracy": float(logs.get("val_accuracy", np.nan))}
        if self.count_weights is not None:
            row["nonzero_weights"] = self.count_weights()
        self.rows.append(row)
        log(f"{self.label} epoch {epoch + 1}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))


def batches(n, batch_size, rng=None):
    """Index arrays of consecutive (or, with rng, shuffled) batches."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def sparse_batch(volumes, dtype=np.float32):
    """(features [N, 1], coordinates int32 [N, 1 + D]) of the non-zero cells of
    a batch of single-channel volumes [B, *spatial]."""
    idx = np.argwhere(volumes != 0).astype(np.int32)
    return volumes[tuple(idx.T)].astype(dtype)[:, None], idx


def volume_batches(volumes, labels, batch_size, shuffle_seed=None, crop=None):
    """A generator function over (volumes [b, *grid], labels [b]) batches:
    shuffled anew every epoch when a seed is given; with `crop` (cells per
    axis, smaller than the volumes), every volume is cut to a random crop:
    a random translation, the same augmentation for sparse and dense nets."""
    epoch = [0]

    def generate():
        rng = np.random.default_rng(None if shuffle_seed is None else shuffle_seed + epoch[0])
        epoch[0] += 1
        for idx in batches(len(labels), batch_size, None if shuffle_seed is None else rng):
            batch = volumes[idx]
            if crop is not None:
                margin = np.asarray(batch.shape[1:]) - crop
                offsets = rng.integers(0, margin + 1, (len(idx), len(margin)))
                batch = np.stack([v[tuple(slice(o, o + crop) for o in offset)]
                                  for v, offset in zip(batch, offsets)])
            yield batch, labels[idx]

    return generate


def sparse_dataset(volumes, labels, batch_size, shuffle_seed=None, crop=None):
    """tf.data of ((features [N, 1], coordinates [N, 1 + D]), labels [B]) built
    from the non-zero cells of dense single-channel volumes [n, *grid]."""
    generate = volume_batches(volumes, labels, batch_size, shuffle_seed, crop)

    def to_sparse():
        for batch, y in generate():
            yield sparse_batch(batch), y

    spec = ((tf.TensorSpec([None, 1], tf.float32),
             tf.TensorSpec([None, volumes.ndim], tf.int32)), tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(to_sparse, output_signature=spec).prefetch(2)


def dense_dataset(volumes, labels, batch_size, shuffle_seed=None, crop=None):
    """tf.data of (volumes [B, *grid, 1], labels [B])."""
    generate = volume_batches(volumes, labels, batch_size, shuffle_seed, crop)
    grid = volumes.shape[1:] if crop is None else (crop,) * (volumes.ndim - 1)
    spec = (tf.TensorSpec([None, *grid, 1], tf.float32), tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(
        lambda: ((batch[..., None], y) for batch, y in generate()),
        output_signature=spec).prefetch(2)


def fit(model, sparse, train, test, epochs, batch_size, optimizer, label,
        callbacks=(), count_weights=None, seed=0, crop=None):
    """Trains with model.fit, evaluating on the test split after every epoch.
    crop: train on random crops of this size (the test volumes have it).
    Returns the per-epoch rows of EpochLog."""
    make = sparse_dataset if sparse else dense_dataset
    train_data = make(*train, batch_size, shuffle_seed=seed, crop=crop)
    test_data = make(*test, batch_size)
    steps = -(-len(train[1]) // batch_size)
    model.compile(optimizer=optimizer, jit_compile=False, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epoch_log = EpochLog(steps, label, count_weights)
    # The generator's length is unknown to Keras: repeat and count steps.
    model.fit(train_data.repeat(), steps_per_epoch=steps, validation_data=test_data.repeat(),
              validation_steps=-(-len(test[1]) // batch_size), epochs=epochs, verbose=0,
              shuffle=False,
              callbacks=list(callbacks) + [epoch_log])  # count after pruning
    return epoch_log.rows


def make_optimizer(name, learning_rate, decay_steps=0):
    """The named Keras optimizer; with decay_steps, the learning rate follows
    a cosine from learning_rate down to 0 over that many steps."""
    if decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    return {"adagrad": keras.optimizers.Adagrad, "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD}[name](learning_rate)


# The paper's appendix B: sparse blocks, dense blocks and density bounds of the
# OctNet3-r^3 networks it trains on ModelNet40 (Sec. 4.3 / 4.4 b).
SHAPE_NETWORKS = {16: (2, 0, (1.0, 1.0)), 32: (3, 0, (0.14, 0.33, 0.66)),
                  64: (3, 1, (0.06, 0.14, 0.33)), 128: (3, 2, (0.02, 0.06, 0.14))}


def shape_network(resolution, classes, densities=None, sparse=True, **kwargs):
    """OctNet3-r^3 (r in 16, 32, 64, 128), sparse with the paper's bounds
    (or `densities`), or its dense twin."""
    blocks, dense_blocks, paper = SHAPE_NETWORKS[resolution]
    if not sparse:
        return dense_octnet(resolution, 3, classes, blocks, dense_blocks,
                            kwargs.get("kernel_initializer", "glorot_uniform"))
    return SparseOctNet(resolution, 3, classes, densities or paper, dense_blocks, **kwargs)

"""One training step under MirroredStrategy on two logical CPUs, each
replica fed its own sparse batch (different site counts), against one
device trained on the union of the batches. Run by tests/test_distributed.py
in its own process (logical devices must be set before TensorFlow starts);
prints one JSON line of the largest differences. --unsynchronized: plain
BatchNorm (per-replica statistics), which must differ."""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import sparse_ops as so  # noqa: E402


def batch(rng, n, extent=6, batch_index=0, channels=3):
    sites = np.unique(rng.integers(-extent, extent, (n, 3)), axis=0)
    coords = np.concatenate([np.full((len(sites), 1), batch_index), sites], 1).astype(np.int32)
    return coords, rng.normal(size=(len(sites), channels)).astype(np.float32)


SYNCHRONIZED = "--unsynchronized" not in sys.argv


def network():
    keras.utils.set_random_seed(3)
    return so.models.MinkUNet14(2, planes=(4, 6, 8, 8, 6, 6, 4, 4), init_dim=4,
                                bn_synchronized=SYNCHRONIZED)


def main():
    rng = np.random.default_rng(0)
    parts = [batch(rng, 60), batch(rng, 140)]  # replicas of different sizes
    labels = [rng.integers(0, 2, len(c)) for c, _ in parts]
    total = sum(len(c) for c, _ in parts)

    # One device, the union (the second batch as batch item 1).
    union_coords = np.concatenate([parts[0][0], parts[1][0] + [1, 0, 0, 0]])
    union = so.SparseTensor(np.concatenate([parts[0][1], parts[1][1]]), union_coords)
    union_labels = np.concatenate(labels)
    net = network()
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        logits = net(union, training=True).features
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
            union_labels, logits, from_logits=True)) / total
    optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables),
                                  net.trainable_variables))
    single = [v.numpy() for v in net.weights]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        dnet = network()
        dnet(so.SparseTensor(parts[0][1], parts[0][0]))  # build
        doptimizer = keras.optimizers.SGD(0.1)

    def replica_inputs(context):
        r = context.replica_id_in_sync_group
        coords, feats = parts[r]
        return so.SparseTensor(tf.constant(feats), tf.constant(coords)), tf.constant(labels[r])

    inputs = strategy.experimental_distribute_values_from_function(replica_inputs)

    @tf.function
    def step(dist_inputs):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                logits = dnet(x, training=True).features
                # The loss averaged over the global batch.
                loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
                    y, logits, from_logits=True)) / total
            grads = tape.gradient(loss, dnet.trainable_variables)
            doptimizer.apply_gradients(zip(grads, dnet.trainable_variables))
        strategy.run(replica_step, args=dist_inputs)

    step(inputs)
    mirrored = [v.numpy() for v in dnet.weights]
    diffs = [float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(single, mirrored)]
    print(json.dumps({"weights": len(diffs), "max_diff": max(diffs),
                      "replicas": strategy.num_replicas_in_sync}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

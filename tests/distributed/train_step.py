"""One MinkUNet14 training step on two sparse batches of different sizes,
run in its own process by tests/test_distributed.py:

    train_step.py union OUT.npz            one device, the union of the batches
    train_step.py mirrored OUT.npz         MirroredStrategy, two logical CPUs,
                                           replica r fed batch r
    train_step.py worker OUT.npz           MultiWorkerMirroredStrategy: this
                                           process is worker TF_CONFIG's task
                                           index, fed that batch

Every BatchNorm is synchronized (--unsynchronized: plain, per replica); the
loss is averaged over the global batch. Writes the weights after the step
to OUT.npz (worker: OUT.npz with the task index appended) and prints one
JSON line.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

MODE, OUT = sys.argv[1], sys.argv[2]
SYNCHRONIZED = "--unsynchronized" not in sys.argv
if MODE == "mirrored":  # logical devices must exist before TensorFlow starts
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import sparse_ops as so  # noqa: E402


def batches():
    """Two batches (60 and 140 draws), their labels, and the total sites."""
    rng = np.random.default_rng(0)
    parts = []
    for n in (60, 140):
        sites = np.unique(rng.integers(-6, 6, (n, 3)), axis=0)
        coords = np.concatenate([np.zeros((len(sites), 1)), sites], 1).astype(np.int32)
        parts.append((coords, rng.normal(size=(len(sites), 3)).astype(np.float32)))
    labels = [rng.integers(0, 2, len(c)) for c, _ in parts]
    return parts, labels, sum(len(c) for c, _ in parts)


def network():
    keras.utils.set_random_seed(3)
    return so.models.MinkUNet14(2, planes=(4, 6, 8, 8, 6, 6, 4, 4), init_dim=4,
                                bn_synchronized=SYNCHRONIZED)


def loss_of(net, x, y, total):
    logits = net(x, training=True).features
    return tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True)) / total


def union_step(parts, labels, total):
    coords = np.concatenate([parts[0][0], parts[1][0] + [1, 0, 0, 0]])  # batch items 0, 1
    x = so.SparseTensor(np.concatenate([parts[0][1], parts[1][1]]), coords)
    net = network()
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = loss_of(net, x, np.concatenate(labels), total)
    optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables),
                                  net.trainable_variables))
    return net


def strategy_step(strategy, parts, labels, total):
    with strategy.scope():
        net = network()
        net(so.SparseTensor(parts[0][1], parts[0][0]))  # build
        optimizer = keras.optimizers.SGD(0.1)

    def replica_inputs(context):
        r = context.replica_id_in_sync_group
        coords, feats = parts[r]
        return so.SparseTensor(tf.constant(feats), tf.constant(coords)), tf.constant(labels[r])

    inputs = strategy.experimental_distribute_values_from_function(replica_inputs)

    @tf.function
    def step(dist_inputs):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_of(net, x, y, total)
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
        strategy.run(replica_step, args=dist_inputs)

    step(inputs)
    return net


def main():
    parts, labels, total = batches()
    out = OUT
    if MODE == "union":
        net = union_step(parts, labels, total)
    elif MODE == "mirrored":
        net = strategy_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), parts, labels,
                            total)
    elif MODE == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        net = strategy_step(strategy, parts, labels, total)
        out = f"{OUT}.{json.loads(os.environ['TF_CONFIG'])['task']['index']}.npz"
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
    weights = {f"w{i}": v.numpy() for i, v in enumerate(net.weights)}
    np.savez(out, **weights)
    print(json.dumps({"mode": MODE, "weights": len(weights), "out": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

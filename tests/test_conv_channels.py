"""Channel counts that take the vectorized CPU kernels (float32, output
channels a multiple of 8) and the ones around them, forward and backward,
against dense TensorFlow."""

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so
from conftest import assert_close, random_sparse, read_at

CHANNELS = [(13, 8), (7, 24), (16, 40), (64, 64), (6, 12), (5, 7)]


@pytest.mark.parametrize("c_in,c_out", CHANNELS)
@pytest.mark.parametrize("strides", [1, 2])
def test_conv_channels_forward_and_gradients_match_dense(rng, c_in, c_out, strides):
    shape = (6, 6, 6)
    x, dense = random_sparse(rng, shape, c_in, density=0.3)
    kernel = tf.constant(rng.standard_normal((3, 3, 3, c_in, c_out)) * 0.2, tf.float32)
    features = tf.constant(x.features)
    with tf.GradientTape() as tape:
        tape.watch([features, kernel])
        y = so.ops.conv(x.with_features(features), kernel, strides=strides)
        upstream = tf.constant(rng.standard_normal(y.features.shape), tf.float32)
        loss = tf.reduce_sum(y.features * upstream)
    d_features, d_kernel = tape.gradient(loss, [features, kernel])

    @tf.function
    def dense_grads(dense_x, kernel):
        with tf.GradientTape() as t:
            t.watch([dense_x, kernel])
            out = tf.nn.convolution(dense_x, kernel, strides=strides, padding="SAME")
            picked = tf.gather_nd(out, out_idx)
            loss = tf.reduce_sum(picked * upstream)
        return out, t.gradient(loss, [dense_x, kernel])

    c = y.coordinates.numpy()
    out_idx = tf.constant(np.concatenate([c[:, :1], c[:, 1:] // strides], 1))
    out, (g_dense, g_kernel) = dense_grads(tf.constant(dense), kernel)
    assert_close(y.features.numpy(), read_at(out.numpy(), c, strides), np.float32)
    assert_close(d_features.numpy(), read_at(g_dense.numpy(), x.coordinates, 1),
                 np.float32)
    assert_close(d_kernel.numpy(), g_kernel.numpy(), np.float32)

"""Distributed training: a MinkUNet14 step under tf.distribute.MirroredStrategy
with synchronized BatchNorm, each replica fed its own sparse batch, equals
one device trained on the union of the batches.

The strategy needs two logical devices, which must be set before TensorFlow
starts, so the step runs in its own process (tests/distributed/), with a
bounded time.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, os.path.join(HERE, "distributed", "mirrored_step.py"),
                             *args], capture_output=True, text=True, timeout=timeout, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_step_with_synchronized_bn_equals_union():
    result = _run()
    assert result["replicas"] == 2 and result["weights"] > 100
    assert result["max_diff"] < 1e-5, result


@pytest.mark.slow
def test_unsynchronized_bn_differs():
    # The comparison above can fail: per-replica statistics give other weights.
    result = _run("--unsynchronized")
    assert result["max_diff"] > 1e-3, result


def test_synchronized_bn_without_strategy_is_plain_bn():
    import numpy as np  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    coords = np.concatenate([np.zeros((50, 1)), rng.integers(-9, 9, (50, 3))], 1)
    coords = np.unique(coords.astype(np.int32), axis=0)
    x = so.SparseTensor(rng.normal(size=(len(coords), 4)).astype(np.float32), coords)
    plain, synced = so.layers.BatchNorm(), so.layers.BatchNorm(synchronized=True)
    np.testing.assert_allclose(synced(x, training=True).features.numpy(),
                               plain(x, training=True).features.numpy(), atol=1e-6)
    config = synced.get_config()
    assert config["synchronized"] is True
    assert so.layers.BatchNorm.from_config(config).bn.synchronized
    net = so.models.MinkUNet14(2, bn_synchronized=True)
    assert net.get_config()["bn_synchronized"] is True

"""Distributed training: a MinkUNet14 step with synchronized BatchNorm, each
replica fed its own sparse batch (60 and 140 draws), equals one device
trained on the union of the batches, under tf.distribute.MirroredStrategy
(two logical CPUs) and MultiWorkerMirroredStrategy (two worker processes on
127.0.0.1).

Each run is its own process (tests/distributed/train_step.py): logical
devices and TF_CONFIG must be set before TensorFlow starts. Workers get
free ports, a bounded time, and are killed by pid if they overrun.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "distributed", "train_step.py")
TIMEOUT = 300


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)


def _run(mode, out, *args):
    result = subprocess.run([sys.executable, SCRIPT, mode, str(out), *args],
                            capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(str(out) + ("" if str(out).endswith(".npz") else ".npz")))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def union(tmp_path_factory):
    return _run("union", tmp_path_factory.mktemp("union") / "union.npz")


def test_mirrored_step_equals_union(union, tmp_path):
    mirrored = _run("mirrored", tmp_path / "mirrored.npz")
    assert len(mirrored) > 100
    assert _max_diff(mirrored, union) < 1e-5


def test_multi_worker_step_equals_union(union, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, SCRIPT, "worker", str(tmp_path / "worker")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(TF_CONFIG=config)))
    try:
        outputs = [w.communicate(timeout=TIMEOUT) for w in workers]
    finally:
        for w in workers:  # ended by pid, whatever happened
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    for index in range(2):
        weights = dict(np.load(tmp_path / f"worker.{index}.npz"))
        assert _max_diff(weights, union) < 1e-5


@pytest.mark.slow
def test_unsynchronized_bn_differs(union, tmp_path):
    # The comparisons above can fail: per-replica statistics give other weights.
    mirrored = _run("mirrored", tmp_path / "plain.npz", "--unsynchronized")
    assert _max_diff(mirrored, union) > 1e-3


def test_synchronized_bn_without_strategy_is_plain_bn():
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

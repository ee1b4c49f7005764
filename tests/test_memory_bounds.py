"""Temporaries follow the data, not the sizes an input states: ops run in a
child process whose data segment is capped at its baseline plus 1 GB, on
inputs that once made them allocate several GB (a [K, num_in_rows]
transposed table, a [K, n] neighbour table, n * K candidate keys), and
their results are checked."""

import os
import subprocess
import sys
import textwrap

import pytest

from sparse_ops import _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = textwrap.dedent("""
    import os, resource
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf, sparse_ops as so
    lib = so._loader.library()
    so.ops.conv(so.SparseTensor(tf.ones([2, 1]), [[0, 0], [0, 1]]), tf.ones([3, 1, 1]))

    def data_bytes():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmData"))
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + (1 << 30),
                                              resource.RLIM_INFINITY))
    i64 = lambda v: tf.constant(v, tf.int64)
    i32 = lambda v: tf.constant(v, tf.int32)

    # One pair per offset (64 offsets), 2^26 input rows asked for: the
    # output is [2^26, 1] (256 MB); a [64, 2^26] table would be 16 GB.
    K, rows = 64, 2**26
    splits, ins, outs = i64(np.arange(K + 1)), i32(np.arange(K) * 1000), i32(np.zeros(K))
    g = tf.ones([1, 1])
    x = lib.sparse_ops_conv_backprop_input(g, tf.ones([K, 1, 1]), splits, ins, outs,
                                           i64(rows))
    assert x.shape == (rows, 1) and float(tf.reduce_sum(x)) == K
    y = lib.sparse_ops_sum_pool_transpose(g, splits, ins, outs, i64(rows))
    assert float(tf.reduce_sum(y)) == K
    z = lib.sparse_ops_max_pool_grad(g, i32([[7]]), i64(rows))
    assert float(z[7, 0]) == 1.0
    del x, y, z  # 768 MB of outputs
    print("transposed maps ok")

    # 2^14 sites far apart and 2^14 offsets: a [K, n] neighbour table of
    # 2^28 entries (1 GB) is built in chunks; each site meets itself only.
    n = 2**14
    coords = np.stack([np.zeros(n), np.arange(n) * 2**16], 1).astype(np.int32)
    offsets = np.arange(n, dtype=np.int32)[:, None]
    s, i, o = lib.sparse_ops_kernel_map(coords, coords, offsets, i32([1]))
    counts = np.diff(s.numpy())
    assert counts[0] == n and counts[1:].sum() == 0, counts[:4]
    assert np.array_equal(i.numpy(), np.arange(n)) and np.array_equal(o.numpy(), np.arange(n))
    print("kernel map ok")

    # 2^14 neighbouring sites times 2^14 offsets: 2^28 candidate keys (2 GB)
    # for 2^15 - 1 distinct sites, made in chunks.
    line = np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32)
    out = lib.sparse_ops_generative_coordinates(line, offsets, i32([1])).numpy()
    assert np.array_equal(out[:, 1], np.arange(2 * n - 1)) and not out[:, 0].any()
    print("generative ok")
""")


@pytest.mark.skipif(_loader.try_library() is None, reason="the op library is not built")
def test_temporaries_follow_the_data_not_the_stated_sizes():
    # oneDNN's allocator keeps freed blocks in a pool (and retries a failed
    # allocation for 10 s): the plain allocator lets the cap measure each step.
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["transposed", "maps", "ok", "kernel", "map", "ok",
                                   "generative", "ok"], proc.stdout

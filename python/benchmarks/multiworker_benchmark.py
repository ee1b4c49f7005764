"""Training throughput with MultiWorkerMirroredStrategy: 1 vs 2 local workers.

Each worker is its own process on 127.0.0.1 (TF_CONFIG, free ports) and
trains a MinkUNet14 (synchronized BatchNorm) on its own stream of synthetic
scenes (--sites per sample, one sample per worker per step); the global
throughput is samples per second over --steps steps after 2 warm-up steps,
as worker 0 measures it. On a machine with few cores the workers share
them, so 2 workers show the cost of the collectives rather than a gain.

    python python/benchmarks/multiworker_benchmark.py [--steps 10] [--sites 20000]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def worker_main(args):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    workers = strategy.num_replicas_in_sync
    with strategy.scope():
        net = so.models.MinkUNet14(8, bn_synchronized=True)
        optimizer = keras.optimizers.SGD(0.01)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    rng = np.random.default_rng(index)

    def scene(_):
        xyz = rng.normal(size=(args.sites, 3)) * 30
        coords = np.unique(np.floor(xyz).astype(np.int32), axis=0)
        coords = np.concatenate([np.zeros((len(coords), 1), np.int32), coords], 1)
        feats = rng.normal(size=(len(coords), 3)).astype(np.float32)
        labels = rng.integers(0, 8, len(coords))
        return so.SparseTensor(tf.constant(feats), tf.constant(coords)), tf.constant(labels)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = net(x, training=True).features
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True)) / workers
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))

    def step():
        inputs = strategy.experimental_distribute_values_from_function(scene)
        strategy.run(replica_step, args=inputs)

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    if index == 0:
        print(json.dumps({"workers": workers, "samples_per_s": args.steps * workers / elapsed,
                          "seconds": elapsed}))


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(workers, args):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    procs = []
    for index in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", "--steps", str(args.steps),
             "--sites", str(args.sites)], stdout=subprocess.PIPE, text=True, env=env))
    try:
        outputs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(outputs[0].strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sites", type=int, default=20000)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    results = {n: run(n, args) for n in (1, 2)}
    for n, r in results.items():
        print(f"{n} worker(s): {r['samples_per_s']:.2f} samples/s "
              f"({args.steps} steps in {r['seconds']:.1f} s)")
    print(f"2 workers / 1 worker: {results[2]['samples_per_s'] / results[1]['samples_per_s']:.2f}x "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

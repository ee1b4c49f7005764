"""Lists which sparse_ops ops have GPU kernels in the installed build.

    python tools/check_gpu_kernels.py [--require-gpu OP ...] [--require-all]

Loads the op library (it must load on a machine without a GPU as well:
every symbol is bound at load, LD_BIND_NOW), prints each op's devices, and
fails when an op lacks a CPU kernel or a required op lacks a GPU kernel.
CI runs it on the CUDA build (.ci/cuda_check.sh).
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("LD_BIND_NOW") != "1":  # bind every symbol at load
    os.environ["LD_BIND_NOW"] = "1"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import kernels  # noqa: E402

import sparse_ops  # noqa: E402
from sparse_ops import _loader  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpu", nargs="*", default=[], metavar="OP",
                        help="ops (without the SparseOps> prefix) that must have a GPU kernel")
    parser.add_argument("--require-all", action="store_true",
                        help="every op must have a GPU kernel")
    args = parser.parse_args()
    _loader.library()  # raises, saying why, if the library cannot load
    ops = sorted({k.op for k in kernels.get_all_registered_kernels().kernel
                  if k.op.startswith("SparseOps>")})
    if not ops:
        sys.exit("no SparseOps> kernels are registered: the op library did not load")
    problems = []
    on_gpu = []
    for op in ops:
        devices = sorted({k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel})
        print(f"{op:34s} {', '.join(devices)}")
        short = op.split(">", 1)[1]
        if "CPU" not in devices:
            problems.append(f"{op} has no CPU kernel")
        if "GPU" in devices:
            on_gpu.append(short)
        elif args.require_all or short in args.require_gpu:
            problems.append(f"{op} has no GPU kernel")
    unknown = sorted(set(args.require_gpu) - {op.split(">", 1)[1] for op in ops})
    problems += [f"--require-gpu {name}: no such op" for name in unknown]
    print(f"sparse_ops {sparse_ops.__version__} on TensorFlow {tf.__version__} "
          f"(CUDA build: {tf.test.is_built_with_cuda()}, GPUs visible: "
          f"{len(tf.config.list_physical_devices('GPU'))}): GPU kernels for "
          f"{len(on_gpu)} of {len(ops)} ops")
    if problems:
        sys.exit("\n".join(problems))


if __name__ == "__main__":
    main()

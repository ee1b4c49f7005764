"""Builds sparse_ops' op library against the installed TensorFlow.

TensorFlow is not a declared dependency (so that neither tensorflow-cpu nor
the GPU build is forced on anyone): it must be installed first, and the op
library is compiled with its `tf.sysconfig` flags. Environment variables:

  SPARSE_OPS_MARCH   -march value (default DEFAULT_MARCH of
                     kernels/sources.bzl on x86-64, "x86-64": any x86-64
                     CPU; "native" elsewhere; "native" tunes the baseline
                     code for this CPU; empty or "none": no -march). The
                     AVX2 and AVX-512 kernels are built whatever the value
                     and picked at run time (kernels/core/isa.h).
  SPARSE_OPS_CUDA=1  also compile the CUDA kernels in kernels/cuda with nvcc
                     (flags: kernels/cuda/nvcc_flags.txt) and register the
                     GPU kernels; build against the `tensorflow` GPU wheel
  SPARSE_OPS_CUDA_ARCHS  GPU architectures, e.g. "90" (default 75 80 86 89 90)
  SPARSE_OPS_NVCC_FLAGS  extra nvcc flags
  SPARSE_OPS_CXXFLAGS extra compiler flags

The sources and the compile flags are those of kernels/sources.bzl, which
the Bazel build (kernels/BUILD) loads too.
"""

import ast
import glob
import json
import os
import platform
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = {}
with open(os.path.join(HERE, "sparse_ops", "_version.py")) as f:
    exec(f.read(), VERSION)  # pylint: disable=exec-used

_TF_PROBE = ("import json, tensorflow as tf; print(json.dumps({'version': "
             "tf.__version__, 'cflags': tf.sysconfig.get_compile_flags(), "
             "'lflags': tf.sysconfig.get_link_flags()}))")


def tensorflow_info():
    """Version and flags of the TensorFlow that the library will run with.

    Tried first in this interpreter's environment as the build sees it, then
    with -I, which leaves pip's isolated build environment and sees the
    environment being installed into.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for args in ([sys.executable, "-c", _TF_PROBE],
                 [sys.executable, "-I", "-c", _TF_PROBE]):
        try:
            out = subprocess.run(args, capture_output=True, text=True, env=env,
                                 check=True, timeout=600).stdout
            return json.loads(out.strip().splitlines()[-1])
        except (subprocess.CalledProcessError, ValueError, IndexError):
            continue
    sys.exit(
        "sparse_ops is compiled against the installed TensorFlow, but none was "
        f"found for {sys.executable}. Install TensorFlow "
        f">={VERSION['MIN_TF_VERSION']},<{VERSION['MAX_TF_VERSION_EXCLUSIVE']} "
        "first (`pip install tensorflow-cpu` or `pip install tensorflow`), then "
        "install sparse_ops again.")


def build_description():
    """kernels/sources.bzl (shared with kernels/BUILD): its NAME = literal
    assignments, checked against the files under kernels/."""
    path = os.path.join(HERE, "kernels", "sources.bzl")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            names[node.targets[0].id] = ast.literal_eval(node.value)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            sys.exit(f"{path}:{node.lineno}: only NAME = literal assignments, "
                     "which setup.py can read")
    listed = set(names["CORE_HDRS"] + names["KERNEL_HDRS"] + names["CUDA_HDRS"]
                 + names["TEST_HDRS"] + names["CORE_SRCS"] + names["KERNEL_SRCS"]
                 + names["CUDA_SRCS"]
                 + [f"core/{t}.cc" for t in names["CORE_TESTS"]]
                 + [f"cuda/{t}.cu.cc" for t in names["CUDA_TESTS"]])
    kernels = os.path.join(HERE, "kernels")
    present = {os.path.relpath(p, kernels)
               for pattern in ("*/*.cc", "*/*.h")
               for p in glob.glob(os.path.join(kernels, pattern))}
    if present != listed:
        sys.exit(f"{path} and the files under kernels/ differ: "
                 f"not listed: {sorted(present - listed)}, "
                 f"listed but missing: {sorted(listed - present)}")
    return names


BUILD = build_description()


def default_march():
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return BUILD["DEFAULT_MARCH"] if x86 else "native"


def _version_tuple(v):
    return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())


class BuildOpLibrary(build_ext):
    """Compiles kernels/ into sparse_ops/_sparse_ops*.so with TF's flags."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        info = tensorflow_info()
        if not (_version_tuple(VERSION["MIN_TF_VERSION"]) <= _version_tuple(info["version"])
                < _version_tuple(VERSION["MAX_TF_VERSION_EXCLUSIVE"])):
            print(f"warning: TensorFlow {info['version']} is outside the supported "
                  f"range >={VERSION['MIN_TF_VERSION']},"
                  f"<{VERSION['MAX_TF_VERSION_EXCLUSIVE']}; trying anyway",
                  file=sys.stderr)
        march = os.environ.get("SPARSE_OPS_MARCH", default_march())
        cflags = info["cflags"] + BUILD["COPTS"]
        if march not in ("", "none"):
            cflags.append(f"-march={march}")
        cflags.append("-I" + HERE)
        cflags += os.environ.get("SPARSE_OPS_CXXFLAGS", "").split()
        # The interpreter's own flags add -g and C-only options: drop them.
        for attr in ("compiler", "compiler_so", "compiler_cxx", "compiler_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if cmd:
                setattr(self.compiler, attr,
                        [c for c in cmd if c not in ("-g", "-O2", "-O3", "-Wstrict-prototypes")])
        extra_objects = []
        if os.environ.get("SPARSE_OPS_CUDA") == "1":
            extra_objects = self._build_cuda()
            cflags += ["-D" + define for define in BUILD["CUDA_DEFINES"]]
        for ext in self.extensions:
            ext.extra_compile_args = cflags
            ext.extra_link_args = info["lflags"]
            ext.extra_objects = extra_objects
        self._write_build_info(info, march)
        super().build_extensions()

    def _build_cuda(self):
        nvcc = shutil.which("nvcc") or (
            "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc")
            else None)
        if nvcc is None:
            sys.exit("SPARSE_OPS_CUDA=1 but nvcc was not found on PATH or in "
                     "/usr/local/cuda/bin")
        objects = []
        os.makedirs(self.build_temp, exist_ok=True)
        for source in CUDA_SOURCES:
            obj = os.path.join(self.build_temp, os.path.basename(source) + ".o")
            cmd = [nvcc, "-c", *nvcc_flags(), source, "-o", obj]
            print(" ".join(cmd))
            subprocess.check_call(cmd)
            objects.append(obj)
        return objects

    def _write_build_info(self, info, march):
        text = ("# Written by setup.py: how the op library was built.\n"
                f"TF_VERSION = {info['version']!r}\n"
                f"MARCH = {march!r}\n")
        targets = [os.path.join(HERE, "sparse_ops", "_build_info.py")]
        if not self.inplace:
            targets.append(os.path.join(self.build_lib, "sparse_ops", "_build_info.py"))
        for path in targets:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)


def nvcc_flags():
    """kernels/cuda/nvcc_flags.txt (shared with configure.sh for Bazel)."""
    with open(os.path.join(HERE, "kernels", "cuda", "nvcc_flags.txt")) as f:
        lines = [line.strip() for line in f]
    flags = [line for line in lines if line and not line.startswith("#")]
    archs = os.environ.get("SPARSE_OPS_CUDA_ARCHS", "").split()
    if archs:
        flags = [f for f in flags if not f.startswith("-gencode")]
        flags += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags = [part for flag in flags for part in flag.split(" ")]  # "-x cu"
    return flags + ["-I" + HERE] + os.environ.get("SPARSE_OPS_NVCC_FLAGS", "").split()


SOURCES = [os.path.join("kernels", s) for s in BUILD["CORE_SRCS"] + BUILD["KERNEL_SRCS"]]
CUDA_SOURCES = [os.path.join(HERE, "kernels", s) for s in BUILD["CUDA_SRCS"]]

setup(
    version=VERSION["__version__"],
    packages=find_packages(include=["sparse_ops", "sparse_ops.*"]),
    ext_modules=[Extension("sparse_ops._sparse_ops", sources=SOURCES, language="c++")],
    cmdclass={"build_ext": BuildOpLibrary},
)

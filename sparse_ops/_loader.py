"""Lazy loading of the compiled op library, with actionable errors."""

import glob
import os
import warnings

import tensorflow as tf

from sparse_ops import _version

_library = None
_error = None
_warned = False


def _library_path():
    override = os.environ.get("SPARSE_OPS_LIBRARY")
    if override:
        return override
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = sorted(glob.glob(os.path.join(here, "_sparse_ops*.so")))
    if not candidates:
        raise ImportError(
            "the sparse_ops op library (_sparse_ops*.so) was not found in "
            f"{here}. Build it with `pip install .` (or `pip install -e .`) "
            "from the source tree, or point SPARSE_OPS_LIBRARY at a built "
            "library (e.g. from `bazel build //:_sparse_ops.so`).")
    return candidates[0]


def _build_info():
    try:
        from sparse_ops import _build_info as info  # pylint: disable=import-outside-toplevel
        return info
    except ImportError:
        return None


def _version_tuple(v):
    return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())


def _check_cpu(info):
    """A library built for x86-64-v3 needs AVX2 and FMA: say so instead of
    letting the process die of an illegal instruction."""
    if getattr(info, "MARCH", None) != "x86-64-v3":
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), None)
    except OSError:
        return
    if flags is not None and not {"avx2", "fma"} <= set(flags):
        raise ImportError(
            "the sparse_ops op library was built with SPARSE_OPS_MARCH=x86-64-v3 "
            "(AVX2, FMA), which this CPU lacks. Rebuild it without SPARSE_OPS_MARCH "
            "(the default build runs on any x86-64 CPU): pip install "
            "--force-reinstall --no-deps --no-cache-dir . (or use "
            "SPARSE_OPS_IMPLEMENTATION=reference).")


def _load():
    tf_version = tf.__version__
    if not (_version_tuple(_version.MIN_TF_VERSION) <= _version_tuple(tf_version)
            < _version_tuple(_version.MAX_TF_VERSION_EXCLUSIVE)):
        warnings.warn(
            f"sparse_ops {_version.__version__} supports TensorFlow "
            f">={_version.MIN_TF_VERSION},<{_version.MAX_TF_VERSION_EXCLUSIVE}"
            f"; TensorFlow {tf_version} is installed. If loading the ops "
            "fails, install a supported TensorFlow or rebuild sparse_ops.")
    path = _library_path()
    info = _build_info()
    _check_cpu(info)
    built_with = getattr(info, "TF_VERSION", None)
    try:
        return tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as e:
        hint = ""
        if built_with and built_with != tf_version:
            hint = (f" The library was built against TensorFlow {built_with} "
                    f"but TensorFlow {tf_version} is installed;")
        raise ImportError(
            f"could not load the sparse_ops op library {path}: {e}.{hint} "
            "Rebuild it against the installed TensorFlow: `pip install "
            "--force-reinstall --no-deps --no-cache-dir .` from the source "
            "tree. Meanwhile SPARSE_OPS_IMPLEMENTATION=reference runs the "
            "pure-TensorFlow ops.") from e


def check_build_version():
    """Warns at import when the op library was built for another TensorFlow."""
    info = _build_info()
    built_with = getattr(info, "TF_VERSION", None)
    if built_with and built_with != tf.__version__:
        warnings.warn(
            f"sparse_ops was built against TensorFlow {built_with} but "
            f"TensorFlow {tf.__version__} is installed; its ops may fail to load. "
            "Rebuild: `pip install --force-reinstall --no-deps --no-cache-dir .` "
            "from the source tree.")


def library():
    """The loaded op module; raises ImportError saying how to fix a failure."""
    global _library, _error
    if _library is None:
        if _error is not None:
            raise _error
        try:
            _library = _load()
        except ImportError as e:
            _error = e
            raise
    return _library


def try_library():
    """The loaded op module, or None (with one warning) if it cannot load."""
    global _warned
    try:
        return library()
    except ImportError as e:
        if not _warned:
            _warned = True
            warnings.warn(f"{e} Falling back to the pure-TensorFlow reference "
                          "ops, which are slower.")
        return None


def load_ops():
    """Registers the custom ops (`SparseOps>*`) with TensorFlow; True if they loaded.

    `import sparse_ops` calls it, so that `tf.saved_model.load` of a model
    exported with the custom ops works in a process that only imported
    sparse_ops. A failure is not raised here: the ops report it when first
    used (or fall back to the reference path under "auto").
    """
    try:
        library()
        return True
    except ImportError:
        return False

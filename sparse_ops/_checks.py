"""Argument checks shared by every public entry point.

One place for what an argument may be: whole numbers in a range (never
truncated or wrapped), int32 tensors converted with a range check, and the
limits of the op library (so that no size taken from an input can make a
call allocate more than the outputs it asks for). README.md, "Limits",
states them for users.
"""

import numbers

import numpy as np
import tensorflow as tf

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
# Row indices are int32 and -1 marks "no row": at most 2^31 - 2 rows.
MAX_ROWS = 2**31 - 2
# Per-thread work buffers hold blocks of rows of this many channels.
MAX_CHANNELS = 1 << 16
# Spatial axes of a coordinate (the core packs batch + axes into one key).
MAX_DIMENSION = 31
# Kernel offsets of one convolution (kernel maps hold a table of offsets).
MAX_OFFSETS = 1 << 20
# The batch size (max batch index + 1) is an int32.
MAX_BATCH_INDEX = INT32_MAX - 1


def invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def require(condition, message):
    """Raises InvalidArgumentError now in eager mode; returns a graph
    assertion (for tf.control_dependencies) otherwise."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise invalid(message)
        return None
    return tf.debugging.Assert(condition, [message])


def with_checks(checks, tensor):
    """`tensor`, run after the graph assertions in `checks` (None entries,
    from eager checks that already passed, are skipped)."""
    checks = [c for c in checks if c is not None]
    if not checks:
        return tensor
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def whole_number(value, name):
    """`value` as a Python int: an int, a numpy integer or a float with a
    whole value. Raises TypeError for anything else (bools, 1.5, None,
    strings), so that nothing is silently truncated."""
    if isinstance(value, tf.Tensor) and value.shape.rank == 0:
        static = tf.get_static_value(value)  # a scalar constant
        if static is not None:
            value = np.asarray(static).item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        if np.isfinite(v) and v == np.floor(v):
            return int(v)
    raise TypeError(f"{name} must be an int, got {value!r}")


def int_value(value, name, minimum=None, maximum=INT32_MAX):
    """A whole number in [minimum, maximum], as a Python int."""
    v = whole_number(value, name)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return v


def int_tuple(value, dimension, name, minimum=1, maximum=INT32_MAX):
    """An int or a sequence of `dimension` ints -> tuple of Python ints, each
    in [minimum, maximum] (int32 by default)."""
    if isinstance(value, tf.Tensor):
        static = tf.get_static_value(value)
        if static is None:
            raise TypeError(f"{name} must be known while tracing (ints, not a "
                            "computed tensor)")
        value = static
    if np.ndim(value) == 0:
        values = (whole_number(value, name),) * dimension
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of {dimension} "
                            f"ints, got {value!r}") from None
        values = tuple(whole_number(v, f"{name} entries") for v in items)
        if len(values) != dimension:
            raise ValueError(f"{name} must have {dimension} entries (one per "
                             f"spatial axis), got {value!r}")
    for v in values:
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
        if maximum is not None and v > maximum:
            raise ValueError(f"{name} entries must be <= {maximum}, got {value!r}")
    return values


def int_array(value, name, minimum=INT32_MIN, maximum=INT32_MAX):
    """A numpy int64 array of whole numbers in [minimum, maximum] from ints
    or whole floats; TypeError for other types, ValueError for fractions and
    values out of range."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an int array, got {value!r}")
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int array, got {value!r}") from None
    if a.dtype == object or a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be an int array, got {a.dtype} values")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.floor(a)):
            raise ValueError(f"{name} must be whole numbers, got {value!r}")
        if a.size and (a.min() < minimum or a.max() > maximum):
            raise ValueError(f"{name} must lie in [{minimum}, {maximum}]")
        return a.astype(np.int64)
    if a.size and (int(a.min()) < minimum or int(a.max()) > maximum):
        raise ValueError(f"{name} must lie in [{minimum}, {maximum}], got values "
                         f"from {int(a.min())} to {int(a.max())}")
    return a.astype(np.int64)


def _in_int32_range(t):
    t = tf.cast(t, tf.float64)  # exact for int32 bounds and every whole float32
    return tf.reduce_all((t >= float(INT32_MIN)) & (t <= float(INT32_MAX)))


def int32_tensor(value, name):
    """An int32 tensor from ints, int tensors or whole floats, never wrapped
    or truncated: other integer types and floats are checked (now in eager
    mode, by a graph assertion otherwise); other dtypes raise TypeError.
    A tf.Variable is read (the result is a tensor, never the variable)."""
    if not isinstance(value, tf.Tensor):
        # Variables are read: what is cached by the identity of a tensor
        # must not change under it.
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be an integer tensor: {e}") from None
    t = value
    if t.dtype == tf.int32:
        return t
    if t.dtype.is_integer:
        check = require(_in_int32_range(t), f"{name} do not fit into int32")
    elif t.dtype.is_floating:
        check = require(tf.reduce_all(tf.equal(t, tf.round(t))),
                        f"{name} must be integers; got float values that are "
                        "not whole numbers")
        extra = require(_in_int32_range(t), f"{name} do not fit into int32")
        check = [check, extra]
    else:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype.name}")
    checks = check if isinstance(check, list) else [check]
    return with_checks(checks, tf.cast(t, tf.int32))


def kernel_volume(sizes):
    """The number of offsets of a kernel of `sizes` (exact, Python ints),
    refused above MAX_OFFSETS."""
    volume = 1
    for s in sizes:
        volume *= s
        if volume > MAX_OFFSETS:
            break
    if volume > MAX_OFFSETS:
        raise ValueError(f"a kernel of size {tuple(sizes)} has more than "
                         f"{MAX_OFFSETS} offsets, the most supported")
    return volume

"""Kernel geometry: the offsets a sparse convolution kernel covers."""

import itertools

import numpy as np
import tensorflow as tf

REGIONS = ("hypercube", "hypercross")
MAX_OFFSETS = 1 << 20  # kernel maps hold a table of offsets x sites


def normalize_tuple(value, dimension, name):
    """An int or a length-`dimension` sequence of ints -> tuple of ints."""
    if isinstance(value, (int, np.integer)):
        values = (int(value),) * dimension
    else:
        try:
            values = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or a sequence of {dimension} "
                             f"ints, got {value!r}") from None
        if len(values) != dimension:
            raise ValueError(f"{name} must have {dimension} entries (one per "
                             f"spatial axis), got {value!r}")
    return values


def offsets_array(kernel_size, dilation=1, region="hypercube", dimension=None,
                  stride=1):
    """:func:`kernel_offsets` as a numpy int32 array."""
    if isinstance(region, str):
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS} or an int array "
                             f"of offsets [K, D], got {region!r}")
        if kernel_size is None:
            raise ValueError(f"a {region} region needs kernel_size")
        if dimension is None:
            if isinstance(kernel_size, (int, np.integer)):
                raise ValueError("dimension is needed when kernel_size is an int")
            dimension = len(kernel_size)
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        size = normalize_tuple(kernel_size, dimension, "kernel_size")
        dil = normalize_tuple(dilation, dimension, "dilation")
        strides = normalize_tuple(stride, dimension, "stride")
        if any(k < 1 for k in size):
            raise ValueError(f"kernel_size entries must be >= 1, got {kernel_size!r}")
        if any(d < 1 for d in dil):
            raise ValueError(f"dilation entries must be >= 1, got {dilation!r}")
        if any(s < 1 for s in strides):
            raise ValueError(f"stride entries must be >= 1, got {stride!r}")
        if region == "hypercube":
            if int(np.prod(size, dtype=np.float64)) > MAX_OFFSETS:
                raise ValueError(f"a kernel of size {size} has {np.prod(size, dtype=np.float64):.0f} "
                                 f"offsets; at most {MAX_OFFSETS} are supported")
            # TensorFlow's SAME padding: the window of output j starts at
            # j * s - pad_before, pad_before = max((K - 1) * d + 1 - s, 0) // 2.
            axes = [[k * d - max((n - 1) * d + 1 - s, 0) // 2 for k in range(n)]
                    for n, d, s in zip(size, dil, strides)]
            offsets = list(itertools.product(*axes))
        else:
            if any(k % 2 == 0 for k in size):
                raise ValueError("a hypercross kernel needs odd kernel sizes, got "
                                 f"{kernel_size!r}")
            offsets = {(0,) * dimension}
            for axis, (n, d) in enumerate(zip(size, dil)):
                for step in range(1, (n - 1) // 2 + 1):
                    for sign in (-1, 1):
                        o = [0] * dimension
                        o[axis] = sign * step * d
                        offsets.add(tuple(o))
            offsets = sorted(offsets)  # row-major; symmetric under negation
        return np.asarray(offsets, np.int32).reshape(-1, dimension)
    offsets = np.asarray(region)
    if offsets.ndim == 2 and offsets.shape[0] >= 1 and np.issubdtype(
            offsets.dtype, np.integer):
        # Dilation scales a custom region too (never silently ignored).
        dil = normalize_tuple(dilation, offsets.shape[1], "dilation")
        if any(d < 1 for d in dil):
            raise ValueError(f"dilation entries must be >= 1, got {dilation!r}")
        offsets = offsets.astype(np.int64) * np.asarray(dil, np.int64)
    if offsets.ndim != 2 or offsets.shape[0] < 1 or not np.issubdtype(
            offsets.dtype, np.integer):
        raise ValueError("a custom region must be an int array of offsets [K, D], "
                         f"got {offsets.dtype} array of shape {offsets.shape}")
    if dimension is not None and offsets.shape[1] != dimension:
        raise ValueError(f"custom region has {offsets.shape[1]} columns but the "
                         f"dimension is {dimension}")
    if len({tuple(o) for o in offsets.tolist()}) != len(offsets):
        raise ValueError("a custom region must not repeat an offset")
    if np.abs(offsets).max() >= 2**30:
        raise ValueError("custom region offsets must be below 2^30 in magnitude")
    return offsets.astype(np.int32)


def kernel_offsets(kernel_size, dilation=1, region="hypercube", dimension=None,
                   stride=1):
    """Offsets of a kernel, int32 [K, D], in units of the input tensor stride.

    Hypercube offsets follow TensorFlow's SAME padding, so a stride-1 sparse
    convolution equals ``tf.nn.convolution(padding="SAME")`` for every kernel
    size, odd or even: along an axis with size K, dilation d and stride s,
    offset_k = k * d - max((K - 1) * d + 1 - s, 0) // 2. Offsets are ordered
    row-major over the spatial axes, so ``kernel.reshape([K, Cin, Cout])`` of
    a Keras ``ConvND`` kernel lines up with them.

    Args:
      kernel_size: int or sequence of D ints (ignored for a custom region).
      dilation: int or sequence of D ints.
      region: "hypercube", "hypercross" (odd sizes: the centre plus
        (K - 1) / 2 steps along each axis in both directions), or an int
        array of offsets [K, D] (multiplied by `dilation`).
      dimension: D; needed when kernel_size is an int.
      stride: int or sequence of D ints, the convolution's stride.
    """
    return tf.constant(offsets_array(kernel_size, dilation, region, dimension,
                                     stride))

"""Kernel geometry: the offsets a sparse convolution kernel covers."""

import numpy as np
import tensorflow as tf

from sparse_ops import _checks

REGIONS = ("hypercube", "hypercross", "minkowski")
# Regions whose kernels are [*kernel_size, ...] (the others: [K, ...]).
BOX_REGIONS = ("hypercube", "minkowski")
MAX_OFFSETS = _checks.MAX_OFFSETS  # kernel maps hold a table of offsets x sites
MAX_OFFSET = 2**30 - 1  # |offset| of a custom region, after dilation


def normalize_tuple(value, dimension, name, minimum=1):
    """An int or a length-`dimension` sequence of ints -> tuple of ints, each
    in [minimum, 2^31 - 1]."""
    return _checks.int_tuple(value, dimension, name, minimum=minimum)


def _hypercross(size, dil):
    """Offsets of a hypercross: the centre plus (n - 1) / 2 steps along each
    axis in both directions, row-major (symmetric under negation)."""
    dimension = len(size)
    offsets = {(0,) * dimension}
    for axis, (n, d) in enumerate(zip(size, dil)):
        for step in range(1, (n - 1) // 2 + 1):
            for sign in (-1, 1):
                o = [0] * dimension
                o[axis] = sign * step * d
                offsets.add(tuple(o))
    return sorted(offsets)


def offsets_array(kernel_size, dilation=1, region="hypercube", dimension=None,
                  stride=1):
    """:func:`kernel_offsets` as a numpy int32 array."""
    if dimension is not None:
        dimension = _checks.int_value(dimension, "dimension", minimum=1,
                                      maximum=_checks.MAX_DIMENSION)
    if isinstance(region, str):
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS} or an int array "
                             f"of offsets [K, D], got {region!r}")
        if kernel_size is None:
            raise ValueError(f"a {region} region needs kernel_size")
        if dimension is None:
            if np.ndim(kernel_size) == 0:
                raise ValueError("dimension is needed when kernel_size is an int")
            dimension = _checks.int_value(len(kernel_size), "len(kernel_size)",
                                          minimum=1, maximum=_checks.MAX_DIMENSION)
        size = normalize_tuple(kernel_size, dimension, "kernel_size")
        dil = normalize_tuple(dilation, dimension, "dilation")
        strides = normalize_tuple(stride, dimension, "stride")
        if region in BOX_REGIONS:
            _checks.kernel_volume(size)
            # TensorFlow's SAME padding: the window of output j starts at
            # j * s - pad_before, pad_before = max((K - 1) * d + 1 - s, 0) // 2.
            # MinkowskiEngine's: odd windows centred whatever the stride.
            axes = [np.arange(n, dtype=np.int64) * d - (
                (n - 1) * d // 2 if region == "minkowski" and n % 2 == 1
                else max((n - 1) * d + 1 - s, 0) // 2)
                    for n, d, s in zip(size, dil, strides)]
            # Row-major over the axes (the order of itertools.product).
            offsets = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")],
                               axis=1)
        else:
            if any(k % 2 == 0 for k in size):
                raise ValueError("a hypercross kernel needs odd kernel sizes, got "
                                 f"{kernel_size!r}")
            if 1 + sum(k - 1 for k in size) > MAX_OFFSETS:
                raise ValueError(f"a hypercross of size {size} has more than "
                                 f"{MAX_OFFSETS} offsets, the most supported")
            offsets = np.asarray(_hypercross(size, dil), np.int64)
        offsets = offsets.reshape(-1, dimension)
        if offsets.size and np.abs(offsets).max() > _checks.INT32_MAX:
            raise ValueError(f"kernel offsets of size {size} and dilation {dil} do "
                             "not fit into int32")
        return offsets.astype(np.int32)
    offsets = _checks.int_array(region, "region (custom offsets)")
    if offsets.ndim != 2 or offsets.shape[0] < 1 or offsets.shape[1] < 1:
        raise ValueError("a custom region must be an int array of offsets [K, D], "
                         f"got an array of shape {offsets.shape}")
    if offsets.shape[1] > _checks.MAX_DIMENSION:
        raise ValueError(f"custom region has {offsets.shape[1]} columns; at most "
                         f"{_checks.MAX_DIMENSION} spatial axes are supported")
    if dimension is not None and offsets.shape[1] != dimension:
        raise ValueError(f"custom region has {offsets.shape[1]} columns but the "
                         f"dimension is {dimension}")
    if offsets.shape[0] > MAX_OFFSETS:
        raise ValueError(f"a custom region has {offsets.shape[0]} offsets; at most "
                         f"{MAX_OFFSETS} are supported")
    # Dilation scales a custom region too (never silently ignored); offsets
    # and dilations are int32, so the products fit int64.
    dil = normalize_tuple(dilation, offsets.shape[1], "dilation")
    offsets = offsets * np.asarray(dil, np.int64)
    if len({tuple(o) for o in offsets.tolist()}) != len(offsets):
        raise ValueError("a custom region must not repeat an offset")
    if np.abs(offsets).max() > MAX_OFFSET:
        raise ValueError(f"custom region offsets times dilation must be at most "
                         f"{MAX_OFFSET} in magnitude")
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
        (K - 1) / 2 steps along each axis in both directions), "minkowski"
        (a hypercube whose odd windows stay centred at every stride,
        {-(K - 1) d / 2 .. (K - 1) d / 2}, as MinkowskiEngine's; even windows
        as "hypercube"), or an int array of offsets [K, D] (multiplied by
        `dilation`).
      dimension: D; needed when kernel_size is an int.
      stride: int or sequence of D ints, the convolution's stride.
    """
    return tf.constant(offsets_array(kernel_size, dilation, region, dimension,
                                     stride))

"""Sparse convolution and transposed convolution, with their gradients."""

import numpy as np
import tensorflow as tf

from sparse_ops import _loader
from sparse_ops import geometry
from sparse_ops.ops import coordinates as coords_ops
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor, as_coordinates, as_sparse

_COMPUTE_TYPES = (tf.float32, tf.float64)


# -- raw feature ops (custom or reference), gradients registered beside them --

def _num_rows(t):
    return tf.shape(t, out_type=tf.int64)[0]


def _conv_features(features, kernel, kmap, num_out_rows, use_reference):
    if use_reference:
        return reference.conv(features, kernel, kmap, num_out_rows)
    return _loader.library().sparse_ops_conv(features, kernel, *kmap, num_out_rows)


def _conv_backprop_input(grad, kernel, kmap, num_in_rows, use_reference):
    if use_reference:
        return reference.conv_backprop_input(grad, kernel, kmap, num_in_rows)
    return _loader.library().sparse_ops_conv_backprop_input(
        grad, kernel, *kmap, num_in_rows)


def _conv_backprop_kernel(features, grad, kmap):
    return _loader.library().sparse_ops_conv_backprop_kernel(features, grad, *kmap)


@tf.RegisterGradient("SparseOps>Conv")
def _conv_grad(op, grad):
    features, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_backprop_input(grad, kernel, kmap, _num_rows(features), False),
            _conv_backprop_kernel(features, grad, kmap), None, None, None, None)


@tf.RegisterGradient("SparseOps>ConvBackpropInput")
def _conv_backprop_input_grad(op, grad):
    # z[i] = sum g[o] W_k^T: dg = conv(dz, W), dW_k = sum dz[i]^T g[o].
    g, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_features(grad, kernel, kmap, _num_rows(g), False),
            _conv_backprop_kernel(grad, g, kmap), None, None, None, None)


@tf.RegisterGradient("SparseOps>ConvBackpropKernel")
def _conv_backprop_kernel_grad(op, grad):
    # w_k = sum x[i]^T g[o]: dx = backprop_input(g, dw), dg = conv(x, dw).
    x, g, splits, in_rows, out_rows = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_backprop_input(g, grad, kmap, _num_rows(x), False),
            _conv_features(x, grad, kmap, _num_rows(g), False), None, None, None)


@tf.custom_gradient
def _mask_gradient(x):
    """Identity whose gradient is zero where x is exactly zero (Eq. 3-4)."""
    def grad(dy):
        return dy * tf.cast(tf.not_equal(x, 0), dy.dtype)
    return tf.identity(x), grad


# -- geometry --------------------------------------------------------------

def _kernel_geometry(kernel, dimension, region, transposed, dilation, strides):
    """The kernel as [K, C_a, C_b] and its offsets [K, D] (numpy)."""
    if isinstance(region, str) and region == "hypercube":
        if kernel.shape.rank != dimension + 2:
            layout = "[*kernel_size, Cout, Cin]" if transposed else "[*kernel_size, Cin, Cout]"
            raise ValueError(f"a hypercube kernel for a {dimension}D tensor must be "
                             f"{layout} (rank {dimension + 2}), got shape {kernel.shape}")
        size = tuple(int(s) for s in kernel.shape[:dimension])
        offsets = geometry.offsets_array(size, dilation, region, dimension, strides)
        return tf.reshape(kernel, [len(offsets), kernel.shape[-2], kernel.shape[-1]]), offsets
    if kernel.shape.rank != 3:
        raise ValueError("a hypercross or custom-region kernel must be [K, C_a, C_b], "
                         f"got shape {kernel.shape}")
    size = None
    if isinstance(region, str):  # hypercross: K = 1 + D * (size - 1)
        k = kernel.shape[0]
        if k is None or (k - 1) % dimension or ((k - 1) // dimension) % 2:
            raise ValueError(f"a hypercross kernel in {dimension}D has 1 + {dimension} * "
                             f"(size - 1) offsets for an odd size; got {k}")
        size = (k - 1) // dimension + 1
    return kernel, geometry.offsets_array(size, dilation, region, dimension, strides)


def _check_kernel(kernel, offsets, channels_in, axis, layout):
    if kernel.shape[0] != offsets.shape[0]:
        raise ValueError(f"kernel has {kernel.shape[0]} offsets but the region has "
                         f"{offsets.shape[0]}")
    if channels_in is not None and kernel.shape[axis] != channels_in:
        raise ValueError(f"kernel {layout} expects {kernel.shape[axis]} input channels "
                         f"but the features have {channels_in}")


def _rows_match(x):
    """x's features, checked at run time to have one row per site when the
    row counts are not known while tracing."""
    n_f, n_c = x.features.shape[0], x.coordinates.shape[0]
    if n_f is not None and n_c is not None:
        return x.features  # SparseTensor() checked them
    check = tf.debugging.assert_equal(
        tf.shape(x.features)[0], tf.shape(x.coordinates)[0],
        message="features and coordinates must have the same number of rows")
    with tf.control_dependencies([check]):
        return tf.identity(x.features)


def _prepare(x, kernel, name):
    x = as_sparse(x)
    if x.dimension is None:
        raise ValueError("coordinates must have a static number of columns")
    x = x.with_features(_rows_match(x))
    features = x.features
    kernel = tf.convert_to_tensor(kernel)
    if not kernel.dtype.is_floating:
        raise TypeError(f"{name} must be a float tensor, got {kernel.dtype.name}")
    if kernel.dtype != features.dtype:
        raise TypeError(f"{name} dtype {kernel.dtype.name} does not match the "
                        f"features dtype {features.dtype.name}")
    return x, kernel


def _compute_dtype(features, kernel):
    """float16/bfloat16 run in float32 and are cast back."""
    if features.dtype in _COMPUTE_TYPES:
        return features, kernel, None
    return tf.cast(features, tf.float32), tf.cast(kernel, tf.float32), features.dtype


def _finish(y, bias, out_dtype):
    if out_dtype is not None:
        y = tf.cast(y, out_dtype)
    if bias is not None:
        y = tf.nn.bias_add(y, tf.cast(bias, y.dtype))
    return y


def _times(stride_tensor, strides):
    """The output tensor stride t * s, refusing to wrap around int32."""
    static = tf.get_static_value(stride_tensor)
    if static is not None:
        product = np.asarray(static, np.int64) * np.asarray(strides, np.int64)
        if np.any(product >= 2**31):
            raise ValueError(f"tensor stride {tuple(static)} times strides {strides} "
                             "overflows int32; the chain of strided layers is too long")
        return tf.constant(product.astype(np.int32))
    return stride_tensor * tf.constant(np.asarray(strides, np.int32))


def _check_finer_stride(coordinates, finer_stride, out_stride):
    """The finer coordinates when their stride is the transpose's output
    stride: None when they differ statically, else checked at run time."""
    a, b = tf.get_static_value(finer_stride), tf.get_static_value(out_stride)
    if a is not None and b is not None:
        return coordinates if np.array_equal(a, b) else None
    check = tf.debugging.assert_equal(
        finer_stride, out_stride, message="conv_transpose: the tensor was strided "
        "from a tensor of another stride; pass out_coordinates=")
    with tf.control_dependencies([check]):
        return tf.identity(coordinates)


# -- public ops ------------------------------------------------------------

def conv(x, kernel, bias=None, strides=1, dilation_rate=1, region="hypercube",
         out_coordinates=None, masked_gradients=False):
    """Sparse convolution.

    Args:
      x: `SparseTensor` (or `tf.SparseTensor` [B, *spatial, C], or its fields).
      kernel: [*kernel_size, Cin, Cout] for a hypercube region (Keras' ConvND
        layout), else [K, Cin, Cout] with K = number of offsets.
      bias: optional [Cout].
      strides: int or D ints. 1: output sites = input sites (submanifold).
        s > 1: output sites = unique(floor(c / (s * t)) * (s * t)) for input
        stride t, output stride s * t.
      dilation_rate: int or D ints.
      region: "hypercube", "hypercross" or an int array of offsets [K, D].
      out_coordinates: optional int32 [M, 1 + D] output sites instead.
      masked_gradients: no gradient to zero input entries nor to pruned
        (exactly zero) weights: the paper's sparse back-propagation (Eq. 3-4).
    Returns:
      `SparseTensor` [M, Cout] with stride t * strides. At every output site
      the value equals `tf.nn.convolution(padding="SAME")` of the dense input
      (for strided convolutions: of a dense input whose extent is a multiple
      of the strides).
    """
    x, kernel = _prepare(x, kernel, "kernel")
    d = x.dimension
    strides = geometry.normalize_tuple(strides, d, "strides")
    k3, offsets = _kernel_geometry(kernel, d, region, False, dilation_rate, strides)
    _check_kernel(k3, offsets, x.num_channels, 1, "[K, Cin, Cout]")
    out_stride = _times(x.stride_tensor, strides)
    if out_coordinates is not None:
        out_c = as_coordinates(out_coordinates, "out_coordinates")
    elif all(s == 1 for s in strides):
        out_c = x.coordinates
    else:
        out_c = coords_ops.strided_coordinates(x.coordinates, out_stride,
                                               finer_stride=x.stride_tensor)
    use_reference = coords_ops._use_reference()  # pylint: disable=protected-access
    kmap = coords_ops.kernel_map(x.coordinates, out_c, offsets, x.stride_tensor)
    features, k3c, out_dtype = _compute_dtype(x.features, k3)
    if masked_gradients:
        features, k3c = _mask_gradient(features), _mask_gradient(k3c)
    y = _conv_features(features, k3c, kmap, _num_rows(out_c), use_reference)
    return SparseTensor(_finish(y, bias, out_dtype), out_c, out_stride)


def conv_transpose(x, kernel, bias=None, strides=2, dilation_rate=1,
                   region="hypercube", out_coordinates=None, generative=False):
    """Sparse transposed convolution: the adjoint of `conv` with the same geometry.

    Args:
      x: `SparseTensor` of stride t (coarse).
      kernel: [*kernel_size, Cout, Cin] for a hypercube region (Keras'
        ConvNDTranspose layout), else [K, Cout, Cin].
      strides: int or D ints; the output stride is t / strides.
      out_coordinates: output sites (e.g. a skip connection's coordinates);
        otherwise, if `generative`, every site the kernel reaches; otherwise
        the finer coordinates x was strided from (x's own sites for stride 1).
    Returns:
      `SparseTensor` [M, Cout] equal at its sites to
      `tf.nn.conv_transpose(padding="SAME")` of the dense input.
    """
    x, kernel = _prepare(x, kernel, "kernel")
    d = x.dimension
    strides = geometry.normalize_tuple(strides, d, "strides")
    k3, offsets = _kernel_geometry(kernel, d, region, True, dilation_rate, strides)
    _check_kernel(k3, offsets, x.num_channels, 2, "[K, Cout, Cin]")
    stride = x.stride
    if isinstance(stride, tuple):
        if any(t % s for t, s in zip(stride, strides)):
            raise ValueError(f"tensor stride {stride} is not divisible by strides "
                             f"{strides}")
        out_stride = tf.constant([t // s for t, s in zip(stride, strides)], tf.int32)
    else:
        out_stride = tf.math.floordiv(x.stride_tensor,
                                      tf.constant(strides, tf.int32))
    if out_coordinates is not None:
        out_c = as_coordinates(out_coordinates, "out_coordinates")
    elif all(s == 1 for s in strides) and not generative:
        out_c = x.coordinates
    elif generative:
        # Fine sites c + offset * t_fine; the map below pairs each with the
        # coarse sites whose window reaches it.
        out_c = coords_ops.generative_coordinates(
            x.coordinates, offsets, out_stride)
    else:
        finer = coords_ops.finer_coordinates(x.coordinates)
        out_c = None if finer is None else _check_finer_stride(*finer, out_stride)
        if out_c is None:
            raise ValueError(
                "conv_transpose does not know the output sites: x was not made "
                "from a tensor of stride t / strides by a strided op in this "
                "program (or graph). Pass out_coordinates= (e.g. a skip "
                "connection's coordinates) or generative=True.")
    use_reference = coords_ops._use_reference()  # pylint: disable=protected-access
    # The map of the strided conv from the fine sites to x's sites.
    kmap = coords_ops.kernel_map(out_c, x.coordinates, offsets, out_stride)
    features, k3c, out_dtype = _compute_dtype(x.features, k3)
    y = _conv_backprop_input(features, k3c, kmap, _num_rows(out_c), use_reference)
    return SparseTensor(_finish(y, bias, out_dtype), out_c, out_stride)

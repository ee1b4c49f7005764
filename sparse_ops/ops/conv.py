"""Sparse convolution and transposed convolution, with their gradients."""

import tensorflow as tf

from sparse_ops import geometry
from sparse_ops.ops import _common
from sparse_ops.ops import _dispatch
from sparse_ops.ops import coordinates as coords_ops
from sparse_ops.ops import reference
from sparse_ops.tensor import SparseTensor

_VALIDATE = _dispatch.VALIDATE_LIBRARY_MAPS
_CUSTOM = _dispatch.CUSTOM

# -- raw feature ops (custom or reference), gradients registered beside them --

@_dispatch.dual(reference.conv)
def _conv_features(library, features, kernel, kmap, num_out_rows):
    return library.sparse_ops_conv(features, kernel, *kmap, num_out_rows,
                                   validate_map=_VALIDATE)


@_dispatch.dual(reference.conv_backprop_input)
def _conv_backprop_input(library, grad, kernel, kmap, num_in_rows):
    return library.sparse_ops_conv_backprop_input(grad, kernel, *kmap, num_in_rows,
                                                  validate_map=_VALIDATE)


def _conv_backprop_kernel(features, grad, kmap):
    # In bfloat16 the weight gradient sums in float32 (its kernel has no
    # bfloat16 variant; the widening is exact) and is rounded once.
    dtype = features.dtype
    if dtype == tf.bfloat16:
        features, grad = tf.cast(features, tf.float32), tf.cast(grad, tf.float32)
    dw = _CUSTOM.library.sparse_ops_conv_backprop_kernel(features, grad, *kmap,
                                                         validate_map=_VALIDATE)
    return tf.cast(dw, dtype)


@tf.RegisterGradient("SparseOps>Conv")
def _conv_grad(op, grad):
    features, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_backprop_input(_CUSTOM, grad, kernel, kmap, _common.num_rows(features)),
            _conv_backprop_kernel(features, grad, kmap), None, None, None, None)


@tf.RegisterGradient("SparseOps>ConvBackpropInput")
def _conv_backprop_input_grad(op, grad):
    # z[i] = sum g[o] W_k^T: dg = conv(dz, W), dW_k = sum dz[i]^T g[o].
    g, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_features(_CUSTOM, grad, kernel, kmap, _common.num_rows(g)),
            _conv_backprop_kernel(grad, g, kmap), None, None, None, None)


@tf.RegisterGradient("SparseOps>ConvBackpropKernel")
def _conv_backprop_kernel_grad(op, grad):
    # w_k = sum x[i]^T g[o]: dx = backprop_input(g, dw), dg = conv(x, dw).
    x, g, splits, in_rows, out_rows = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_conv_backprop_input(_CUSTOM, g, grad, kmap, _common.num_rows(x)),
            _conv_features(_CUSTOM, x, grad, kmap, _common.num_rows(g)), None, None, None)


@_dispatch.dual(reference.depthwise_conv)
def _depthwise_features(library, features, kernel, kmap, num_out_rows):
    return library.sparse_ops_depthwise_conv(features, kernel, *kmap, num_out_rows,
                                             validate_map=_VALIDATE)


def _depthwise_backprop_input(grad, kernel, kmap, num_in_rows):
    return _CUSTOM.library.sparse_ops_depthwise_conv_backprop_input(
        grad, kernel, *kmap, num_in_rows, validate_map=_VALIDATE)


def _depthwise_backprop_kernel(features, grad, kmap, multiplier):
    return _CUSTOM.library.sparse_ops_depthwise_conv_backprop_kernel(
        features, grad, *kmap, multiplier, validate_map=_VALIDATE)


def _multiplier(kernel):
    return tf.shape(kernel, out_type=tf.int64)[2]


@tf.RegisterGradient("SparseOps>DepthwiseConv")
def _depthwise_grad(op, grad):
    features, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_depthwise_backprop_input(grad, kernel, kmap, _common.num_rows(features)),
            _depthwise_backprop_kernel(features, grad, kmap, _multiplier(kernel)),
            None, None, None, None)


@tf.RegisterGradient("SparseOps>DepthwiseConvBackpropInput")
def _depthwise_backprop_input_grad(op, grad):
    # z = D^T(g, W) is linear in g and W: dg = D(dz, W), dW from (dz, g).
    g, kernel, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_depthwise_features(_CUSTOM, grad, kernel, kmap, _common.num_rows(g)),
            _depthwise_backprop_kernel(grad, g, kmap, _multiplier(kernel)),
            None, None, None, None)


@tf.RegisterGradient("SparseOps>DepthwiseConvBackpropKernel")
def _depthwise_backprop_kernel_grad(op, grad):
    # w = sum x[i] * g[o] per channel: dx = D^T(g, dw), dg = D(x, dw).
    x, g, splits, in_rows, out_rows, _ = op.inputs
    kmap = (splits, in_rows, out_rows)
    return (_depthwise_backprop_input(g, grad, kmap, _common.num_rows(x)),
            _depthwise_features(_CUSTOM, x, grad, kmap, _common.num_rows(g)),
            None, None, None, None)


@tf.custom_gradient
def _mask_gradient(x):
    """Identity whose gradient is zero where x is exactly zero (Eq. 3-4)."""
    def grad(dy):
        return dy * tf.cast(tf.not_equal(x, 0), dy.dtype)
    return tf.identity(x), grad


# -- geometry --------------------------------------------------------------

def _kernel_geometry(kernel, dimension, region, transposed, dilation, strides):
    """The kernel as [K, C_a, C_b] and its offsets [K, D] (numpy)."""
    if isinstance(region, str) and region in geometry.BOX_REGIONS:
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


def _prepare(x, kernel, bias, name="kernel"):
    x = _common.sparse_input(x)
    kernel = _common.float_weight(kernel, x.features.dtype, name)
    if bias is not None:
        bias = _common.float_weight(bias, x.features.dtype, "bias")
        if bias.shape.rank != 1:
            raise ValueError(f"bias must be a vector [Cout], got shape {bias.shape}")
    return x, kernel, bias


def _finish(y, bias, out_dtype):
    y = _dispatch.from_compute(y, out_dtype)
    if bias is not None:
        if bias.shape[0] is not None and y.shape[-1] is not None and (
                bias.shape[0] != y.shape[-1]):
            raise ValueError(f"bias has {bias.shape[0]} entries but the output has "
                             f"{y.shape[-1]} channels")
        y = tf.nn.bias_add(y, bias)
    return y


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
      region: "hypercube", "hypercross", "minkowski" (odd windows centred
        at every stride, as MinkowskiEngine's; see `so.kernel_offsets`) or an
        int array of offsets [K, D].
      out_coordinates: optional output sites instead: int32 [M, 1 + D]
        coordinates, or a `SparseTensor` (its coordinates; its stride must be
        the output's).
      masked_gradients: no gradient to zero input entries nor to pruned
        (exactly zero) weights: the paper's sparse back-propagation (Eq. 3-4).
    Returns:
      `SparseTensor` [M, Cout] with stride t * strides. At every output site
      the value equals `tf.nn.convolution(padding="SAME")` of the dense input
      (for strided convolutions: of a dense input whose extent is a multiple
      of the strides). A strided output links back to x's sites (see
      `SparseTensor`'s `finer`), for `conv_transpose`.
    """
    x, kernel, bias = _prepare(x, kernel, bias)
    d = x.dimension
    strides = geometry.normalize_tuple(strides, d, "strides")
    k3, offsets = _kernel_geometry(kernel, d, region, False, dilation_rate, strides)
    _check_kernel(k3, offsets, x.num_channels, 1, "[K, Cin, Cout]")
    out_c, out_stride, link = _common.strided_output(x, strides, out_coordinates)
    impl = _dispatch.current()
    kmap = coords_ops.kernel_map(x.coordinates, out_c, offsets, x.stride_tensor)
    features, out_dtype = impl.to_compute(x.features, native_bfloat16=True)
    k3c = tf.cast(k3, features.dtype)
    if masked_gradients:
        features, k3c = _mask_gradient(features), _mask_gradient(k3c)
    y = _conv_features(impl, features, k3c, kmap, _common.num_rows(out_c))
    return SparseTensor(_finish(y, bias, out_dtype), out_c, out_stride, link)


def conv_transpose(x, kernel, bias=None, strides=2, dilation_rate=1,
                   region="hypercube", out_coordinates=None, generative=False):
    """Sparse transposed convolution: the adjoint of `conv` with the same geometry.

    Args:
      x: `SparseTensor` of stride t (coarse).
      kernel: [*kernel_size, Cout, Cin] for a hypercube region (Keras'
        ConvNDTranspose layout), else [K, Cout, Cin].
      strides: int or D ints; the output stride is t / strides.
      out_coordinates: output sites, int32 coordinates or a `SparseTensor`
        (e.g. a skip connection; its stride must be t / strides); otherwise,
        if `generative`, every site the kernel reaches; otherwise the finer
        sites x was strided from (x's `finer` link; x's own sites for stride 1).
    Returns:
      `SparseTensor` [M, Cout] equal at its sites to
      `tf.nn.conv_transpose(padding="SAME")` of the dense input.
    """
    x, kernel, bias = _prepare(x, kernel, bias)
    d = x.dimension
    strides = geometry.normalize_tuple(strides, d, "strides")
    k3, offsets = _kernel_geometry(kernel, d, region, True, dilation_rate, strides)
    _check_kernel(k3, offsets, x.num_channels, 2, "[K, Cout, Cin]")
    # Generative: fine sites c + offset * t_fine; the map below pairs each
    # with the coarse sites whose window reaches it.
    out_c, out_stride, link = _common.transposed_output(
        x, strides, out_coordinates, generative_offsets=offsets if generative else None)
    impl = _dispatch.current()
    # The map of the strided conv from the fine sites to x's sites.
    kmap = coords_ops.kernel_map(out_c, x.coordinates, offsets, out_stride)
    features, out_dtype = impl.to_compute(x.features, native_bfloat16=True)
    y = _conv_backprop_input(impl, features, tf.cast(k3, features.dtype), kmap,
                             _common.num_rows(out_c))
    return SparseTensor(_finish(y, bias, out_dtype), out_c, out_stride, link)


def depthwise_conv(x, kernel, bias=None, strides=1, dilation_rate=1, region="hypercube"):
    """Channel-wise (depthwise) sparse convolution.

    Input channel c is convolved with its own `depth_multiplier` filters and
    gives output channels c * depth_multiplier + m (MinkowskiEngine's
    `MinkowskiChannelwiseConvolution`; Keras' `DepthwiseConv2D` layout). A
    per-channel gather-multiply-scatter over the kernel map, not a dense
    block-diagonal kernel.

    Args:
      x: `SparseTensor` [N, C].
      kernel: [*kernel_size, C, depth_multiplier] for a hypercube region,
        else [K, C, depth_multiplier].
      bias: optional [C * depth_multiplier].
      strides, dilation_rate, region: as for `conv`; the output sites are
        `conv`'s with the same strides.
    Returns:
      `SparseTensor` [M, C * depth_multiplier]. At every output site the
      value equals `tf.nn.depthwise_conv2d(padding="SAME")` of the dense
      input in 2D (in other dimensions: channel c through
      `tf.nn.convolution(padding="SAME")` with `kernel[..., c:c+1, :]`).
    """
    x, kernel, bias = _prepare(x, kernel, bias)
    d = x.dimension
    strides = geometry.normalize_tuple(strides, d, "strides")
    k3, offsets = _kernel_geometry(kernel, d, region, False, dilation_rate, strides)
    _check_kernel(k3, offsets, x.num_channels, 1, "[K, C, depth_multiplier]")
    out_c, out_stride, link = _common.strided_output(x, strides)
    impl = _dispatch.current()
    kmap = coords_ops.kernel_map(x.coordinates, out_c, offsets, x.stride_tensor)
    features, out_dtype = impl.to_compute(x.features)
    y = _depthwise_features(impl, features, tf.cast(k3, features.dtype), kmap,
                            _common.num_rows(out_c))
    return SparseTensor(_finish(y, bias, out_dtype), out_c, out_stride, link)

"""`SparseTensor`: coordinates + features + tensor stride.

A namedtuple of three tensors (features, coordinates, stride) so that it passes
through Keras layers, `tf.function`, `model.fit`, `.keras` saving and
SavedModels unchanged: Keras rebuilds it from its fields, so every piece of
state lives in those three tensors. Kernel maps are cached by the identity
of the coordinates tensor (see `sparse_ops.ops.coordinates`), which layers
pass on unchanged.
"""

import collections

import numpy as np
import tensorflow as tf

_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _is_symbolic_keras(x):
    # Keras hands KerasTensors through while building functional models.
    return type(x).__name__ == "KerasTensor"


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _require(condition, message):
    """Raises now in eager mode; returns a graph assertion otherwise."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise _invalid(message)
        return None
    return tf.debugging.Assert(condition, [message])


def _in_int32_range(c):
    c = tf.cast(c, tf.float64)  # exact for every int32 and whole float32
    return tf.reduce_all((c >= -2.0**31) & (c <= 2.0**31 - 1))


def as_coordinates(coordinates, name="coordinates"):
    """int32 [N, 1 + D] coordinates from ints, or from floats with whole values."""
    if _is_symbolic_keras(coordinates):
        return coordinates
    c = coordinates if isinstance(coordinates, tf.Tensor) else tf.convert_to_tensor(
        coordinates)
    if c.dtype.is_integer and c.dtype != tf.int32:
        check = _require(_in_int32_range(c), f"{name} do not fit into int32")
    elif c.dtype.is_floating:
        check = _require(tf.reduce_all(tf.equal(c, tf.round(c))),
                         f"{name} must be integers; got float values that are "
                         "not whole numbers")
        with tf.control_dependencies([check] if check is not None else []):
            check = _require(_in_int32_range(c), f"{name} do not fit into int32")
    elif c.dtype == tf.int32:
        check = None
    else:
        raise TypeError(f"{name} must be an integer tensor, got {c.dtype.name}")
    if c.dtype != tf.int32:
        with tf.control_dependencies([check] if check is not None else []):
            c = tf.cast(c, tf.int32)
    if c.shape.rank is not None and c.shape.rank != 2:
        raise ValueError(f"{name} must be [N, 1 + D] (column 0 the batch index), "
                         f"got shape {c.shape}")
    if c.shape.rank == 2 and c.shape[1] is not None and c.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 columns (batch + one "
                         f"spatial axis), got shape {c.shape}")
    return c


def _as_stride(stride, dimension):
    if isinstance(stride, tf.Tensor) or _is_symbolic_keras(stride):
        return tf.cast(stride, tf.int32) if stride.dtype != tf.int32 else stride
    values = np.asarray(stride)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"stride must be an int, a sequence of ints or an int32 "
                        f"tensor, got {stride!r}")
    if values.ndim == 0:
        if dimension is None:
            raise ValueError("an int stride needs coordinates with a static number "
                             "of columns")
        values = np.full([dimension], int(values))
    if values.ndim != 1 or (dimension is not None and values.shape[0] != dimension):
        raise ValueError(f"stride must be an int or {dimension} ints, got {stride!r}")
    if np.any(values < 1):
        raise ValueError(f"stride entries must be >= 1, got {stride!r}")
    return tf.constant(values.astype(np.int32))


def _is_data(x):
    """Tensor data, as opposed to what Keras and tf.nest rebuild the tuple
    with: shapes (tuples of ints or None), specs, KerasTensors, configs."""
    if _is_symbolic_keras(x):
        return False
    if isinstance(x, tuple):  # nested tuples of numbers are data, a shape not
        return not all(v is None or isinstance(v, int) for v in x)
    return isinstance(x, (tf.Tensor, tf.Variable, np.ndarray, np.generic, list,
                          int, float))


class SparseTensor(collections.namedtuple(
        "SparseTensor", ["features", "coordinates", "stride_tensor"])):
    """A sparse tensor: features [N, C] at coordinates [N, 1 + D] (batch first).

    Args:
      features: float tensor [N, C].
      coordinates: int32 [N, 1 + D]; column 0 is the batch index. Rows must be
        unique (`sparse_ops.utils.sparse_quantize` makes them so). int64 is
        accepted, and floats whose values are whole numbers.
      stride: int or D ints (or an int32 [D] tensor), the tensor stride:
        coordinates of a stride-s tensor are multiples of s.
    """

    __slots__ = ()

    def __new__(cls, features, coordinates, stride=1, stride_tensor=None):
        # Keras rebuilds namedtuples by field name: stride_tensor=...
        if stride_tensor is not None:
            stride = stride_tensor
        if not (_is_data(features) and _is_data(coordinates)):
            # Keras and tf.nest rebuild the tuple from shapes or specs.
            return super().__new__(cls, features, coordinates, stride)
        coordinates = as_coordinates(coordinates)
        if not isinstance(features, tf.Tensor):
            features = tf.convert_to_tensor(features)
        if features.dtype.is_integer:
            features = tf.cast(features, tf.float32)
        if features.dtype not in _FLOAT_TYPES:
            raise TypeError("features must be a float tensor (float16, bfloat16, "
                            f"float32 or float64), got {features.dtype.name}")
        if features.shape.rank is not None and features.shape.rank != 2:
            raise ValueError(f"features must be [N, C], got shape {features.shape}")
        n_f, n_c = features.shape[0], coordinates.shape[0]
        if n_f is not None and n_c is not None and n_f != n_c:
            raise ValueError(f"features has {n_f} rows but coordinates has {n_c}; "
                             "they must match (one feature row per site)")
        dimension = coordinates.shape[1] - 1 if coordinates.shape[1] is not None else None
        stride = _as_stride(stride, dimension)
        return super().__new__(cls, features, coordinates, stride)

    # -- properties ---------------------------------------------------------
    @property
    def F(self):  # pylint: disable=invalid-name
        return self.features

    @property
    def C(self):  # pylint: disable=invalid-name
        return self.coordinates

    @property
    def stride(self):
        """Tuple of D ints when known statically, else an int32 [D] tensor
        (the field `stride_tensor`)."""
        value = tf.get_static_value(self.stride_tensor)
        if value is None:
            return self.stride_tensor
        return tuple(int(v) for v in np.reshape(value, [-1]))

    @property
    def dimension(self):
        cols = self.coordinates.shape[1]
        return None if cols is None else int(cols) - 1

    @property
    def D(self):  # pylint: disable=invalid-name
        return self.dimension

    @property
    def num_channels(self):
        return self.features.shape[-1]

    @property
    def dtype(self):
        return self.features.dtype

    def batch_size(self):
        """Scalar int32 tensor: max batch index + 1 (0 for no sites)."""
        return tf.reduce_max(tf.concat([self.coordinates[:, 0] + 1, [0]], 0))

    def with_features(self, features):
        """Same coordinates (so the same cached kernel maps), new features."""
        return SparseTensor(features, self.coordinates, self.stride_tensor)

    def __repr__(self):
        if not isinstance(self.features, tf.Tensor):  # a structure Keras rebuilt
            return super().__repr__()
        return (f"SparseTensor(features={self.features.shape} {self.features.dtype.name}, "
                f"coordinates={self.coordinates.shape}, stride={self.stride})")

    # -- dense interop ------------------------------------------------------
    def _grid_indices(self, min_coordinate):
        spatial = self.coordinates[:, 1:]
        if min_coordinate is not None:
            spatial = spatial - tf.cast(min_coordinate, tf.int32)
        return tf.math.floordiv(spatial, self.stride_tensor)

    def dense(self, shape=None, min_coordinate=None):
        """Dense tensor [B, *spatial, C]; inactive sites are zeros.

        Args:
          shape: spatial shape (D ints), or the full [B, *spatial] / [B,
            *spatial, C] shape; by default just large enough.
          min_coordinate: D ints, the coordinate of grid cell 0 (default 0).
        Raises InvalidArgumentError for sites outside the grid.
        """
        d = self.dimension
        idx = self._grid_indices(min_coordinate)
        batch = self.coordinates[:, :1]
        b = self.batch_size()
        channels = tf.shape(self.features)[1]
        if shape is None:
            spatial = tf.reduce_max(tf.concat([idx + 1, tf.zeros([1, d], tf.int32)], 0), 0)
        else:
            shape = [int(s) for s in shape]
            if len(shape) == d + 2:
                shape = shape[:-1]
            if len(shape) == d + 1:
                b = tf.constant(shape[0], tf.int32)
                shape = shape[1:]
            if len(shape) != d:
                raise ValueError(f"shape must have {d} spatial entries, got {shape}")
            spatial = tf.constant(shape, tf.int32)
        checks = [tf.debugging.assert_greater_equal(
            idx, 0, message="dense(): sites lie below min_coordinate"),
                  tf.debugging.assert_less(
            idx, spatial[tf.newaxis], message="dense(): sites lie outside shape"),
                  tf.debugging.assert_less(
            batch[:, 0], b, message="dense(): batch index outside shape")]
        with tf.control_dependencies(checks):
            full = tf.concat([[b], spatial, [channels]], 0)
            return tf.scatter_nd(tf.concat([batch, idx], 1), self.features, full)

    @classmethod
    def from_dense(cls, x, mask=None):
        """Sites of a dense [B, *spatial, C] tensor where any channel is non-zero
        (or where `mask` [B, *spatial] is true)."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank is not None and x.shape.rank < 3:
            raise ValueError(f"x must be [B, *spatial, C], got shape {x.shape}")
        if mask is None:
            mask = tf.reduce_any(tf.not_equal(x, 0), axis=-1)
        coordinates = tf.cast(tf.where(mask), tf.int32)
        return cls(tf.gather_nd(x, coordinates), coordinates)

    def to_tf_sparse(self, shape=None):
        """`tf.SparseTensor` [B, *spatial, C] with one element per non-zero
        feature value; coordinates divided by the stride."""
        dense_shape = None
        d = self.dimension
        idx = self._grid_indices(None)
        with tf.control_dependencies([tf.debugging.assert_greater_equal(
                idx, 0, message="to_tf_sparse(): negative coordinates cannot be "
                "indices of a tf.SparseTensor")]):
            sites = tf.concat([self.coordinates[:, :1], idx], 1)
        nonzero = tf.where(tf.not_equal(self.features, 0))
        indices = tf.concat([tf.gather(tf.cast(sites, tf.int64), nonzero[:, 0]),
                             nonzero[:, 1:]], 1)
        values = tf.gather_nd(self.features, nonzero)
        channels = tf.shape(self.features, out_type=tf.int64)[1:]
        if shape is None:
            extent = tf.reduce_max(tf.concat(
                [tf.cast(sites, tf.int64) + 1, tf.zeros([1, d + 1], tf.int64)], 0), 0)
            dense_shape = tf.concat([extent, channels], 0)
        else:
            shape = [int(s) for s in shape]
            if len(shape) == d:
                dense_shape = tf.concat([[tf.cast(self.batch_size(), tf.int64)],
                                         tf.constant(shape, tf.int64), channels], 0)
            elif len(shape) == d + 1:
                dense_shape = tf.concat([tf.constant(shape, tf.int64), channels], 0)
            elif len(shape) == d + 2:
                dense_shape = tf.constant(shape, tf.int64)
            else:
                raise ValueError(f"shape must have {d}, {d + 1} or {d + 2} entries")
        return tf.sparse.reorder(tf.SparseTensor(indices, values, dense_shape))

    @classmethod
    def from_tf_sparse(cls, sp):
        """Groups the elements of a [B, *spatial, C] `tf.SparseTensor` into sites."""
        if not isinstance(sp, tf.SparseTensor):
            raise TypeError(f"expected a tf.SparseTensor, got {type(sp).__name__}")
        if sp.shape.rank is not None and sp.shape.rank < 3:
            raise ValueError(f"a tf.SparseTensor input must be [B, *spatial, C], "
                             f"got shape {sp.shape}")
        sites, site_of_element = tf.raw_ops.UniqueV2(
            x=sp.indices[:, :-1], axis=tf.constant([0], tf.int64),
            out_idx=tf.int64)
        if sp.shape.rank is not None:
            sites.set_shape([None, sp.shape.rank - 1])
        num_sites = tf.shape(sites, out_type=tf.int64)[0]
        channels = sp.shape[-1] if sp.shape[-1] is not None else sp.dense_shape[-1]
        values = sp.values
        if not values.dtype.is_floating:
            values = tf.cast(values, tf.float32)
        features = tf.scatter_nd(
            tf.stack([site_of_element, sp.indices[:, -1]], 1), values,
            tf.stack([num_sites, tf.cast(channels, tf.int64)]))
        if isinstance(channels, int):
            features = tf.ensure_shape(features, [None, channels])
        return cls(features, sites)  # int64: checked against the int32 range


def as_sparse(x, name="x"):
    """Accepts a SparseTensor, a tf.SparseTensor, or its fields as a list."""
    if isinstance(x, SparseTensor):
        return x
    if isinstance(x, tf.SparseTensor):
        return SparseTensor.from_tf_sparse(x)
    if isinstance(x, (list, tuple)) and len(x) in (2, 3):
        return SparseTensor(*x)
    if isinstance(x, dict) and {"features", "coordinates"} <= set(x):
        return SparseTensor(x["features"], x["coordinates"],
                            x.get("stride_tensor", x.get("stride", 1)))
    raise TypeError(f"{name} must be a sparse_ops.SparseTensor, a tf.SparseTensor "
                    f"[B, *spatial, C], or (features, coordinates[, stride]); got "
                    f"{type(x).__name__}")

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

from sparse_ops import _checks

_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _is_symbolic_keras(x):
    # Keras hands KerasTensors through while building functional models.
    return type(x).__name__ == "KerasTensor"


def as_coordinates(coordinates, name="coordinates", dimension=None):
    """int32 [N, 1 + D] coordinates from ints, or from floats with whole values.

    `dimension` (D), when given, is checked against the number of columns:
    [N, 3] points passed without a batch column are then an error instead of
    2-D data with batch = x.
    """
    if _is_symbolic_keras(coordinates):
        return coordinates
    c = _checks.int32_tensor(coordinates, name)
    if c.shape.rank is not None and c.shape.rank != 2:
        raise ValueError(f"{name} must be [N, 1 + D] (column 0 the batch index), "
                         f"got shape {c.shape}")
    cols = c.shape[1] if c.shape.rank == 2 else None
    if cols is not None and cols < 2:
        raise ValueError(f"{name} must have at least 2 columns (batch + one "
                         f"spatial axis), got shape {c.shape}")
    if cols is not None and cols - 1 > _checks.MAX_DIMENSION:
        raise ValueError(f"{name} has {cols} columns ({cols - 1} spatial axes); at "
                         f"most {_checks.MAX_DIMENSION} spatial axes are supported")
    if dimension is not None and cols is not None and cols != dimension + 1:
        raise ValueError(
            f"{name} must be [N, 1 + {dimension}] for {dimension}-D data (column 0 "
            f"the batch index), got shape {c.shape}"
            + ("; add a batch column, e.g. so.utils.batched_coordinates([points])"
               if cols == dimension else ""))
    return c


def _as_stride(stride, dimension):
    if _is_symbolic_keras(stride):
        return stride
    if isinstance(stride, (tf.Tensor, tf.Variable)):
        stride = _checks.int32_tensor(stride, "stride")  # the ops check >= 1
        if stride.shape.rank == 0 and dimension is not None:
            return tf.fill([dimension], stride)
        if stride.shape.rank not in (None, 1) or (
                dimension is not None and stride.shape[0] not in (None, dimension)):
            raise ValueError(f"stride must be an int or {dimension} ints, got a "
                             f"tensor of shape {stride.shape}")
        return stride
    if dimension is None and np.ndim(stride) == 0:
        raise ValueError("an int stride needs coordinates with a static number "
                         "of columns")
    if dimension is None:
        dimension = len(stride)
    values = _checks.int_tuple(stride, dimension, "stride", minimum=1)
    return tf.constant(values, tf.int32)


def _is_data(x):
    """Tensor data, as opposed to what Keras and tf.nest rebuild the tuple
    with: shapes (tuples of ints or None), specs, KerasTensors, configs,
    flags, names and node references (lists holding strings)."""
    if _is_symbolic_keras(x) or isinstance(x, (bool, np.bool_)):
        return False  # Keras maps structures to flags, e.g. "is a tensor"
    if isinstance(x, tuple):  # nested tuples of numbers are data, a shape not
        return not all(v is None or isinstance(v, int) for v in x)
    if isinstance(x, list):  # a saved model's ['layer', node, index]
        return not any(isinstance(v, str) for v in x)
    return isinstance(x, (tf.Tensor, tf.Variable, np.ndarray, np.generic, int, float))


def _is_rebuild(features, coordinates):
    """Whether SparseTensor(features, coordinates, ...) is Keras or tf.nest
    rebuilding the tuple with something other than data."""
    if features is None or coordinates is None:
        return True  # e.g. a gradient: a tensor for features, None elsewhere
    if _is_symbolic_keras(features) or _is_symbolic_keras(coordinates):
        return True
    return not (_is_data(features) or _is_data(coordinates))


def batch_size(coordinates):
    """Scalar int32: max batch index + 1 of int32 coordinates (0 without
    rows). A batch index of 2^31 - 1 raises instead of wrapping."""
    top = tf.reduce_max(tf.concat([coordinates[:, 0], [-1]], 0))
    check = _checks.require(
        top <= _checks.MAX_BATCH_INDEX,
        f"coordinates: batch indices must be <= {_checks.MAX_BATCH_INDEX} (the "
        "batch size is an int32)")
    return _checks.with_checks([check], top + 1)


def _as_link(finer):
    """The `finer` field: () or (coordinates, stride_tensor, finer), from
    tuples or lists (Keras hands back lists after reloading a model)."""
    if finer is None or (isinstance(finer, (list, tuple)) and len(finer) == 0):
        return ()
    if not isinstance(finer, (list, tuple)) or len(finer) != 3:
        raise TypeError("finer must be () or (coordinates, stride, finer) of the "
                        f"tensor this one was strided from, got {type(finer).__name__}")
    coordinates, stride, rest = finer
    return (coordinates, stride, _as_link(rest))


class SparseTensor(collections.namedtuple(
        "SparseTensor", ["features", "coordinates", "stride_tensor", "finer"])):
    """A sparse tensor: features [N, C] at coordinates [N, 1 + D] (batch first).

    Args:
      features: float tensor [N, C].
      coordinates: int32 [N, 1 + D]; column 0 is the batch index. Rows must be
        unique (`sparse_ops.utils.sparse_quantize` makes them so). int64 is
        accepted, and floats whose values are whole numbers.
      stride: int or D ints (or an int32 [D] tensor), the tensor stride:
        coordinates of a stride-s tensor are multiples of s.
      finer: the link to the finer tensor this one was strided from, set by
        the strided ops: `(coordinates, stride_tensor, finer)` of that tensor,
        or () (a tensor made from data). A transposed convolution or
        unpooling without explicit output sites goes back to those
        coordinates. It travels with the tensor (eager, `tf.function`,
        `tf.cond`, Keras), so no hidden state is involved.
      dimension: optional D, checked against the coordinates' columns (an
        [N, 3] array of points without a batch column is then an error).
    """

    __slots__ = ()

    def __new__(cls, features, coordinates, stride=1, finer=(), stride_tensor=None,
                dimension=None):
        # Keras rebuilds namedtuples by field name: stride_tensor=...
        if stride_tensor is not None:
            stride = stride_tensor
        if _is_rebuild(features, coordinates):
            # Keras and tf.nest rebuild the tuple from shapes, specs, names,
            # flags or gradients (None where a field has none); the ops
            # validate such a tuple when it reaches them (as_sparse).
            return super().__new__(cls, features, coordinates, stride,
                                   () if finer is None else finer)
        return cls._validated(features, coordinates, stride, finer, dimension)

    @classmethod
    def _validated(cls, features, coordinates, stride=1, finer=(), dimension=None):
        """A SparseTensor from data, every field checked and converted."""
        if dimension is not None:
            dimension = _checks.int_value(dimension, "dimension", minimum=1,
                                          maximum=_checks.MAX_DIMENSION)
        coordinates = as_coordinates(coordinates, dimension=dimension)
        if isinstance(features, tf.Variable) or not isinstance(features, tf.Tensor):
            try:
                features = tf.convert_to_tensor(features)
            except (TypeError, ValueError) as e:
                raise TypeError(f"features must be a float tensor [N, C]: {e}") from None
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
        return super().__new__(cls, features, coordinates, stride, _as_link(finer))

    # -- properties ---------------------------------------------------------
    @property
    def F(self):  # pylint: disable=invalid-name
        return self.features

    @property
    def C(self):  # pylint: disable=invalid-name
        return self.coordinates

    # A tuple that Keras or tf.nest rebuilt (a gradient, a structure of
    # specs) may hold None or names in its fields: the properties then say
    # None instead of failing; the ops validate it (as_sparse).
    @property
    def stride(self):
        """Tuple of D ints when known statically, else an int32 [D] tensor
        (the field `stride_tensor`)."""
        if not isinstance(self.stride_tensor, (tf.Tensor, tf.Variable)):
            return self.stride_tensor
        value = tf.get_static_value(self.stride_tensor)
        if value is None:
            return self.stride_tensor
        return tuple(int(v) for v in np.reshape(value, [-1]))

    @property
    def dimension(self):
        shape = getattr(self.coordinates, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] is None:
            return None
        return int(shape[1]) - 1

    @property
    def D(self):  # pylint: disable=invalid-name
        return self.dimension

    @property
    def num_channels(self):
        shape = getattr(self.features, "shape", None)
        return None if shape is None or len(shape) == 0 else shape[-1]

    @property
    def dtype(self):
        return getattr(self.features, "dtype", None)

    def batch_size(self):
        """Scalar int32 tensor: max batch index + 1 (0 for no sites)."""
        return batch_size(self.coordinates)

    def with_features(self, features):
        """Same coordinates (so the same cached kernel maps) and link, new
        features."""
        return SparseTensor(features, self.coordinates, self.stride_tensor, self.finer)

    def __repr__(self):
        if not all(isinstance(t, tf.Tensor) for t in self[:3]):  # a rebuilt structure
            return super().__repr__()
        return (f"SparseTensor(features={self.features.shape} {self.features.dtype.name}, "
                f"coordinates={self.coordinates.shape}, stride={self.stride})")

    # -- dense interop ------------------------------------------------------
    def _grid_indices(self, min_coordinate):
        """int64 [N, D] grid cells: (c - min_coordinate) / stride (int64, so
        that no difference of int32 coordinates wraps)."""
        spatial = tf.cast(self.coordinates[:, 1:], tf.int64)
        if min_coordinate is not None:
            origin = _checks.int_tuple(min_coordinate, self.dimension, "min_coordinate",
                                       minimum=_checks.INT32_MIN)
            spatial = spatial - tf.constant(origin, tf.int64)
        return tf.math.floordiv(spatial, tf.cast(self.stride_tensor, tf.int64))

    def _full_shape(self, shape, method):
        """[B, *spatial] as an int64 tensor from `shape`: D
        spatial entries, or [B, *spatial] / [B, *spatial, C]."""
        d = self.dimension
        if np.ndim(shape) != 1 or len(shape) not in (d, d + 1, d + 2):
            raise ValueError(f"{method}: shape must have {d} spatial entries, or "
                             f"[B, *spatial] / [B, *spatial, C]; got {shape!r}")
        values = list(_checks.int_tuple(shape, len(shape), "shape", minimum=0,
                                        maximum=2**62))
        if len(values) == d + 2:
            channels = self.features.shape[1]
            if channels is not None and values[-1] != channels:
                raise ValueError(f"{method}: shape has {values[-1]} channels but the "
                                 f"features have {channels}")
            values = values[:-1]
        if len(values) == d:
            values = [self.batch_size()] + values
        return tf.stack([tf.cast(v, tf.int64) for v in values])

    def _checked_sites(self, min_coordinate, full_shape, method):
        """int64 [N, 1 + D] (batch, cells), asserted to lie inside full_shape
        ([B, *spatial] int64) and above the origin."""
        idx = self._grid_indices(min_coordinate)
        sites = tf.concat([tf.cast(self.coordinates[:, :1], tf.int64), idx], 1)
        checks = [tf.debugging.assert_greater_equal(
            sites, tf.constant(0, tf.int64),
            message=f"{method}: sites lie below min_coordinate or have a negative "
            "batch index (tf.SparseTensor and dense indices must be >= 0)")]
        if full_shape is not None:
            checks.append(tf.debugging.assert_less(
                sites, full_shape[tf.newaxis],
                message=f"{method}: sites lie outside shape"))
        return _checks.with_checks(checks, sites)

    def dense(self, shape=None, min_coordinate=None):
        """Dense tensor [B, *spatial, C]; inactive sites are zeros.

        Args:
          shape: spatial shape (D ints), or the full [B, *spatial] / [B,
            *spatial, C] shape; by default just large enough.
          min_coordinate: D ints, the coordinate of grid cell 0 (default 0).
        Raises InvalidArgumentError for sites outside the grid.
        """
        channels = tf.shape(self.features, out_type=tf.int64)[1:]
        if shape is None:
            sites = self._checked_sites(min_coordinate, None, "dense()")
            full = tf.reduce_max(tf.concat(
                [sites + 1, tf.zeros([1, self.dimension + 1], tf.int64)], 0), 0)
        else:
            full = self._full_shape(shape, "dense()")
            sites = self._checked_sites(min_coordinate, full, "dense()")
        return tf.scatter_nd(sites, self.features, tf.concat([full, channels], 0))

    @classmethod
    def from_dense(cls, x, mask=None):
        """Sites of a dense [B, *spatial, C] tensor where any channel is non-zero
        (or where `mask` [B, *spatial] is true)."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank is not None and x.shape.rank < 3:
            raise ValueError(f"x must be [B, *spatial, C], got shape {x.shape}")
        if mask is None:
            mask = tf.reduce_any(tf.not_equal(x, 0), axis=-1)
        else:
            mask = tf.convert_to_tensor(mask)
            if mask.dtype != tf.bool:
                raise TypeError(f"mask must be a bool tensor, got {mask.dtype.name}")
            if mask.shape.rank is not None and x.shape.rank is not None and (
                    mask.shape.rank != x.shape.rank - 1
                    or not mask.shape.is_compatible_with(x.shape[:-1])):
                raise ValueError(f"mask must be [B, *spatial] = {x.shape[:-1]} (x's "
                                 f"shape without the channels), got shape {mask.shape}")
            mask = _checks.with_checks([tf.debugging.assert_equal(
                tf.shape(mask), tf.shape(x)[:-1],
                message="mask must have x's shape without the channels")], mask)
        coordinates = tf.where(mask)  # int64: checked against the int32 range
        return cls(tf.gather_nd(x, coordinates), coordinates)

    def to_tf_sparse(self, shape=None):
        """`tf.SparseTensor` [B, *spatial, C] with one element per non-zero
        feature value; coordinates divided by the stride. Sites outside
        `shape` (or below 0) raise InvalidArgumentError."""
        channels = tf.shape(self.features, out_type=tf.int64)[1:]
        if shape is None:
            sites = self._checked_sites(None, None, "to_tf_sparse()")
            extent = tf.reduce_max(tf.concat(
                [sites + 1, tf.zeros([1, self.dimension + 1], tf.int64)], 0), 0)
        else:
            extent = self._full_shape(shape, "to_tf_sparse()")
            sites = self._checked_sites(None, extent, "to_tf_sparse()")
        nonzero = tf.where(tf.not_equal(self.features, 0))
        indices = tf.concat([tf.gather(sites, nonzero[:, 0]), nonzero[:, 1:]], 1)
        values = tf.gather_nd(self.features, nonzero)
        return tf.sparse.reorder(tf.SparseTensor(indices, values,
                                                 tf.concat([extent, channels], 0)))

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
        if isinstance(channels, int):
            if channels > _checks.MAX_CHANNELS:
                raise ValueError(f"a tf.SparseTensor input has {channels} channels; "
                                 f"at most {_checks.MAX_CHANNELS} are supported")
        else:
            channels = _checks.with_checks([tf.debugging.assert_less_equal(
                channels, tf.constant(_checks.MAX_CHANNELS, tf.int64),
                message=f"a tf.SparseTensor input has more than "
                f"{_checks.MAX_CHANNELS} channels")], channels)
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
        if not all(isinstance(t, (tf.Tensor, tf.Variable)) or _is_symbolic_keras(t)
                   for t in x[:2]):
            # Built from something that is not data (None, a name): say what.
            return SparseTensor._validated(*x)  # pylint: disable=protected-access
        return x
    if isinstance(x, tf.SparseTensor):
        return SparseTensor.from_tf_sparse(x)
    if isinstance(x, (list, tuple)) and len(x) in (2, 3, 4):
        return SparseTensor(*x)
    if isinstance(x, dict) and {"features", "coordinates"} <= set(x):
        return SparseTensor(x["features"], x["coordinates"],
                            x.get("stride_tensor", x.get("stride", 1)),
                            x.get("finer", ()))
    raise TypeError(f"{name} must be a sparse_ops.SparseTensor, a tf.SparseTensor "
                    f"[B, *spatial, C], or (features, coordinates[, stride]); got "
                    f"{type(x).__name__}")

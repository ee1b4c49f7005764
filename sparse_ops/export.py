"""SavedModel export for serving: a signature taking (coordinates, features).

    so.export.save_serving(model, "export/1", dimension=3, channels=4)
    so.export.save_serving(model, "export_tf/1", dimension=3, channels=4,
                           pure_tf=True)

The SavedModel's `serving_default` signature takes `coordinates` int32
[N, 1 + D] (column 0 the batch index, unique rows) and `features` float
[N, C] for any N, and returns a dict of tensors (see `save_serving`).

Two flavours:
- custom ops (default): the graph uses the `SparseOps>*` ops. It loads in a
  process that ran `import sparse_ops` (the import registers the ops), and in
  a TF Serving binary that links `//kernels:sparse_ops_kernels`.
- `pure_tf=True`: the model is traced on the pure-TensorFlow reference ops
  (`so.config.implementation("reference")`), so the SavedModel holds only
  stock TensorFlow ops and a stock TF Serving binary (or a process that
  never imports sparse_ops) serves it. Slower, same results within float
  rounding.
"""

import os

import keras
import tensorflow as tf

from sparse_ops import config
from sparse_ops.tensor import SparseTensor

CUSTOM_OP_PREFIX = "SparseOps>"


def serving_signature(dimension, channels, dtype="float32"):
    """[coordinates int32 [None, 1 + D], features dtype [None, C]] TensorSpecs."""
    if int(dimension) < 1 or int(channels) < 1:
        raise ValueError(f"dimension and channels must be >= 1, got {dimension} "
                         f"and {channels}")
    return [tf.TensorSpec([None, 1 + int(dimension)], tf.int32, name="coordinates"),
            tf.TensorSpec([None, int(channels)], tf.as_dtype(dtype), name="features")]


def _named_outputs(outputs, prefix="output"):
    """A flat dict of tensors: a SparseTensor gives <prefix>_features,
    _coordinates and _stride; dicts and sequences are flattened by key/index."""
    if isinstance(outputs, SparseTensor):
        return {f"{prefix}_features": outputs.features,
                f"{prefix}_coordinates": outputs.coordinates,
                f"{prefix}_stride": outputs.stride_tensor}
    if isinstance(outputs, dict):
        named = {}
        for key, value in outputs.items():
            named.update(_named_outputs(value, str(key)))
        return named
    if isinstance(outputs, (list, tuple)):
        named = {}
        for i, value in enumerate(outputs):
            named.update(_named_outputs(value, f"{prefix}_{i}"))
        return named
    return {prefix: outputs}


def _every_value(features, coordinates):
    """A `tf.SparseTensor` [B, *spatial, C] holding every (site, channel)
    value, zeros included, sites in row order: what a model on
    `keras.Input(sparse=True)` reads back as exactly these sites (its layers
    group the elements by site in order of first appearance)."""
    n = tf.shape(features, out_type=tf.int64)[0]
    c = tf.shape(features, out_type=tf.int64)[1]
    sites = tf.cast(coordinates, tf.int64)
    indices = tf.concat([tf.repeat(sites, c, axis=0),
                         tf.tile(tf.range(c)[:, tf.newaxis], [n, 1])], 1)
    extent = tf.reduce_max(tf.concat([sites + 1, tf.ones_like(sites[:1])], 0), 0)
    return tf.SparseTensor(indices, tf.reshape(features, [-1]),
                           tf.concat([extent, [c]], 0))


def default_call(model):
    """`call(features, coordinates)` for each style of model: a functional
    model on `keras.Input(sparse=True)` gets a `tf.SparseTensor` of every
    value; one on two inputs [features, coordinates] those two; any other
    model (on `so.layers.Input`, subclassed) or layer a `SparseTensor`."""
    struct = getattr(model, "_inputs_struct", None)
    flat = keras.tree.flatten(struct) if struct is not None else []
    if len(flat) == 1 and getattr(flat[0], "sparse", False):
        return lambda features, coordinates: model(
            _every_value(features, coordinates), training=False)
    if len(flat) == 2 and not isinstance(struct, SparseTensor):
        return lambda features, coordinates: model([features, coordinates],
                                                   training=False)
    return lambda features, coordinates: model(SparseTensor(features, coordinates),
                                               training=False)


def custom_ops(graph_def):
    """The `SparseOps>*` op types a graph needs: a sorted list, empty for a
    pure-TF graph. `graph_def` is a tf.compat.v1.GraphDef, a concrete
    function, or the path of a SavedModel directory."""
    if isinstance(graph_def, (str, os.PathLike)):
        from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(graph_def, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        defs = [m.graph_def for m in saved.meta_graphs]
    elif hasattr(graph_def, "graph"):
        defs = [graph_def.graph.as_graph_def()]
    else:
        defs = [graph_def]
    ops = set()
    for d in defs:
        nodes = list(d.node)
        for function in d.library.function:  # tf.function bodies, cond/while
            nodes.extend(function.node_def)
        ops.update(n.op for n in nodes if n.op.startswith(CUSTOM_OP_PREFIX))
    return sorted(ops)


def save_serving(model, path, dimension, channels, dtype="float32", pure_tf=False,
                 call=None):
    """Exports `model` as a SavedModel with a (coordinates, features) signature.

    Args:
      model: a built Keras model (or layer) of sparse_ops layers.
      path: the SavedModel directory (TF Serving wants `<model>/<version>`).
      dimension: D, the number of spatial axes.
      channels: C, the number of input feature channels.
      dtype: the features' dtype.
      pure_tf: trace on the pure-TF reference ops, so that the SavedModel
        needs no custom ops (for a stock TF Serving binary). Raises
        ValueError if some op has no reference path.
      call: optional `call(features, coordinates) -> outputs`; by default
        the model is called the way its inputs ask (`default_call`): a
        functional model on `keras.Input(sparse=True)` with a
        `tf.SparseTensor` of every (site, channel) value, one on
        `so.layers.Input` or a subclassed model or layer with a
        `SparseTensor`, one on two inputs with [features, coordinates].
    Returns:
      `path`. The signature `serving_default` (also `serve`) returns a dict:
      a dense output as "output"; a SparseTensor output as
      "output_features", "output_coordinates", "output_stride"; a dict or a
      sequence of outputs by key or index.
    """
    if isinstance(model, keras.layers.Layer) and not model.built:
        raise ValueError("save_serving: the model is not built; call it on data first")
    if call is None:
        call = default_call(model)

    def serve(coordinates, features):
        return _named_outputs(call(features, coordinates))

    # The implementation is chosen while tracing: trace (once) and save inside.
    with config.implementation("reference" if pure_tf else config.get_implementation()):
        concrete = tf.function(serve, autograph=False, input_signature=serving_signature(
            dimension, channels, dtype)).get_concrete_function()
        if pure_tf and custom_ops(concrete):
            raise ValueError(f"pure_tf=True, but the model still uses the custom ops "
                             f"{custom_ops(concrete)}: they have no pure-TF reference path")
        # Only the concrete function: saving a tf.function would trace it again.
        root = tf.Module()
        root.model_variables = list(concrete.variables)  # saved beside the graph
        tf.saved_model.save(root, os.fspath(path),
                            signatures={"serving_default": concrete, "serve": concrete})
    return path

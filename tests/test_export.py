"""SavedModel export (`so.export.save_serving`, Keras' `model.export`) and
serving in fresh processes.

One net covers the layer kinds: submanifold and strided Conv, MaxPool /
AvgPool / SumPool, Unpool, ConvTranspose (onto the finer sites and onto a
skip connection), BatchNorm, ReLU, InstanceNorm, Dense, Dropout, global
pooling, broadcasting and Concat. It is exported twice, with the custom ops
and as pure TensorFlow; children load the exports:
- with the custom ops, in a process that only ran `import sparse_ops`: the
  outputs are bitwise those of the model in this process;
- the pure-TF export in a process where importing sparse_ops is impossible,
  whose graph holds no SparseOps> op: equal within float rounding.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

from conftest import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, C = 2, 3


def _net():
    """A functional model on (features, coordinates) -> [per-site logits as
    a SparseTensor, dense per-item logits]. Layers of the same geometry share
    kernel maps, which keeps the pure-TF trace small."""
    f_in = keras.Input(shape=(C,), name="features")
    c_in = keras.Input(shape=(1 + D,), dtype="int32", name="coordinates")
    x = so.layers.Conv(8, 3)([f_in, c_in])                       # submanifold
    x = so.layers.ReLU()(so.layers.BatchNorm()(x))
    down = so.layers.Conv(8, 2, strides=2)(x)                    # strided
    pools = [so.layers.MaxPool(2)(x), so.layers.AvgPool(2)(x), so.layers.SumPool(2)(x)]
    h = so.layers.Concat()([down] + pools)
    h = so.layers.Conv(8, 3)(h)                                  # at stride 2
    up = so.layers.ConvTranspose(8, 2, strides=2)(h)             # onto x's sites
    skip = so.layers.ConvTranspose(8, 3, strides=2)(h, coordinates=x)
    unpooled = so.layers.Unpool(2)(h)                            # generative
    up = so.layers.BroadcastAdd()(up, so.layers.GlobalSumPool()(unpooled))
    y = so.layers.Concat()([up, skip])
    y = so.layers.InstanceNorm()(y)
    y = so.layers.Dropout(0.5)(y)                                # no-op serving
    segmentation = so.layers.Dense(2)(y)
    classification = keras.layers.Dense(3)(so.layers.GlobalMaxPool()(
        so.layers.Activation("tanh")(y)))
    return keras.Model([f_in, c_in], [segmentation, classification])


def _inputs(rng):
    """(coordinates, features) pairs: different sizes, negative coordinates,
    one site, no sites."""
    out = []
    for items, n in ((2, 40), (3, 70), (1, 1)):
        c = np.concatenate([rng.integers(0, items, (n, 1)),
                            rng.integers(-5, 6, (n, D))], 1)
        c = np.unique(c, axis=0)
        rng.shuffle(c)
        out.append((c.astype(np.int32), rng.normal(size=(len(c), C)).astype(np.float32)))
    out.append((np.zeros((0, 1 + D), np.int32), np.zeros((0, C), np.float32)))
    return out


def _expected(model, inputs):
    """Outputs of the model in this process, named as the signature names them."""
    out = []
    for coordinates, features in inputs:
        sparse, dense = model([features, coordinates], training=False)
        out.append({"output_0_features": sparse.features.numpy(),
                    "output_0_coordinates": sparse.coordinates.numpy(),
                    "output_0_stride": sparse.stride_tensor.numpy(),
                    "output_1": dense.numpy()})
    return out


def _run_child(code, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# Serves every input of inputs.npz with every SavedModel named on the command
# line; writes outputs.npz. BLOCK (first argument) makes importing
# sparse_ops fail, for the pure-TF export.
_SERVE_CHILD = """
    import sys
    block, folder, names = sys.argv[1] == "block", sys.argv[2], sys.argv[3:]
    if block:
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "sparse_ops":
                    raise ImportError("this process must not import sparse_ops")
        sys.meta_path.insert(0, Blocker())
    else:
        import sparse_ops  # noqa: F401  (registers the custom ops)
    import os
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    data = np.load(os.path.join(folder, "inputs.npz"))
    out = {}
    for name in names:
        path = os.path.join(folder, name)
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        ops = set()
        for meta in saved.meta_graphs:
            ops.update(n.op for n in meta.graph_def.node)
            for fn in meta.graph_def.library.function:
                ops.update(n.op for n in fn.node_def)
        out[name + "/custom_ops"] = np.array(sorted(o for o in ops if o.startswith("SparseOps>")))
        loaded = tf.saved_model.load(path)  # holds the variables
        serve = loaded.signatures["serving_default"]
        for i in range(len(data.files) // 2):
            result = serve(coordinates=tf.constant(data[f"coordinates_{i}"]),
                           features=tf.constant(data[f"features_{i}"]))
            for key, value in result.items():
                out[f"{name}/{i}/{key}"] = value.numpy()
    out["imported_sparse_ops"] = np.array("sparse_ops" in sys.modules)
    np.savez(os.path.join(folder, "outputs.npz"), **out)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The net with non-trivial weights, exported three ways, its inputs and
    the outputs the model gives in this process (custom ops)."""
    folder = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(17)
    keras.utils.set_random_seed(17)
    model = _net()
    for layer in model.layers:  # moving statistics away from 0 and 1
        if isinstance(layer, so.layers.BatchNorm):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    inputs = _inputs(rng)
    np.savez(folder / "inputs.npz",
             **{f"coordinates_{i}": c for i, (c, _) in enumerate(inputs)},
             **{f"features_{i}": f for i, (_, f) in enumerate(inputs)})
    with so.config.implementation("custom"):
        expected = _expected(model, inputs)
        so.export.save_serving(model, folder / "custom", D, C)
    so.export.save_serving(model, folder / "pure_tf", D, C, pure_tf=True)
    return folder, model, inputs, expected


def test_custom_op_export_serves_identically_after_import_sparse_ops(exported):
    folder, _, _, expected = exported
    _run_child(_SERVE_CHILD, "import", folder, "custom")
    out = np.load(folder / "outputs.npz")
    assert bool(out["imported_sparse_ops"])
    assert "SparseOps>Conv" in out["custom/custom_ops"]
    for i, want in enumerate(expected):
        assert {k.split("/")[-1] for k in out.files if k.startswith(f"custom/{i}/")} == set(want)
        for key, value in want.items():
            np.testing.assert_array_equal(out[f"custom/{i}/{key}"], value, err_msg=key)
    assert expected[-1]["output_0_features"].shape == (0, 2)  # no sites served


def test_pure_tf_export_serves_without_sparse_ops(exported):
    folder, _, _, expected = exported
    assert so.export.custom_ops(folder / "pure_tf") == []
    _run_child(_SERVE_CHILD, "block", folder, "pure_tf")
    out = np.load(folder / "outputs.npz")
    assert not bool(out["imported_sparse_ops"])
    assert out["pure_tf/custom_ops"].size == 0
    for i, want in enumerate(expected):
        for key, value in want.items():
            got = out[f"pure_tf/{i}/{key}"]
            if value.dtype.kind == "f":
                assert_close(got, value, np.float32, err_msg=key)
            else:  # coordinates and strides: exact
                np.testing.assert_array_equal(got, value, err_msg=key)


def test_custom_ops_lists_the_ops_of_an_export(exported):
    folder, _, _, _ = exported
    ops = so.export.custom_ops(folder / "custom")
    assert {"SparseOps>Conv", "SparseOps>ConvBackpropInput", "SparseOps>KernelMap",
            "SparseOps>MaxPool", "SparseOps>StridedCoordinates",
            "SparseOps>GenerativeCoordinates"} <= set(ops)
    assert ops == sorted(ops)


def test_keras_model_export_with_custom_ops(exported, tmp_path):
    """Keras' own `model.export` of a model of sparse layers with a dense
    output (a signature cannot return a SparseTensor: save_serving flattens
    it), served here (the ops are registered) equal to the model."""
    _, model, inputs, expected = exported
    classifier = keras.Model(model.inputs, model.outputs[-1])  # the dense head
    path = tmp_path / "keras_export"
    with so.config.implementation("custom"):
        classifier.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(path))  # holds the variables
    serve = loaded.serve
    for (coordinates, features), want in zip(inputs, expected):
        np.testing.assert_array_equal(serve([features, coordinates]).numpy(),
                                      want["output_1"])


def test_pure_tf_refuses_an_op_without_reference_path(tmp_path):
    """A custom op called directly (no reference path) cannot go into a
    pure-TF export: a ValueError names it."""
    model = so.layers.Dense(2)
    model([tf.zeros([1, C]), tf.zeros([1, 1 + D], tf.int32)])

    def call(features, coordinates):
        coarse = so._loader.library().sparse_ops_strided_coordinates(  # pylint: disable=protected-access
            coordinates, tf.constant([2] * D))
        return model([features, coordinates]).features, coarse

    with pytest.raises(ValueError, match="SparseOps>StridedCoordinates"):
        so.export.save_serving(model, tmp_path / "m", D, C, pure_tf=True, call=call)
    assert not (tmp_path / "m").exists()


def test_save_serving_rejects_an_unbuilt_model(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        so.export.save_serving(so.layers.Dense(2), tmp_path / "m", D, C)
    with pytest.raises(ValueError, match="dimension and channels"):
        so.export.serving_signature(0, C)


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = so.layers.Conv(4, 3)
        self.down = so.layers.Conv(4, 2, strides=2)
        self.up = so.layers.ConvTranspose(4, 2, strides=2)
        self.pool = so.layers.GlobalMaxPool()

    def call(self, x):
        return self.pool(self.up(self.down(self.conv(x))))


@pytest.mark.parametrize("style", ["keras_sparse_input", "so_input", "subclassed"])
def test_save_serving_works_by_default_for_each_model_style(style, tmp_path):
    """The README's model styles export with save_serving's defaults and
    serve what the model computes on the same sites (negative coordinates,
    zero features and an empty batch item included)."""
    keras.utils.set_random_seed(3)
    layers = [so.layers.Conv(4, 3), so.layers.Conv(4, 2, strides=2),
              so.layers.ConvTranspose(4, 2, strides=2), so.layers.GlobalMaxPool()]

    def chain(x):
        for layer in layers:
            x = layer(x)
        return x

    if style == "keras_sparse_input":
        inputs = keras.Input(shape=(None,) * D + (C,), sparse=True)
        model = keras.Model(inputs, chain(inputs))
    elif style == "so_input":
        inputs = so.layers.Input(C, D)
        model = keras.Model(inputs, chain(inputs))
    else:
        model = SubclassedNet()
        layers = [model.conv, model.down, model.up, model.pool]
    rng = np.random.default_rng(5)
    coordinates = np.array([[0, -3, 2], [0, -2, 2], [0, 4, 4], [2, 0, 0], [2, 1, -7]],
                           np.int32)
    features = rng.normal(size=[5, C]).astype(np.float32)
    features[1] = 0.0  # a site with zero features stays a site
    x = so.SparseTensor(features, coordinates)
    if style == "subclassed":
        model(x)
    want = chain(x).numpy()
    path = so.export.save_serving(model, tmp_path / style, D, C)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        coordinates=tf.constant(coordinates), features=tf.constant(features))
    np.testing.assert_allclose(served["output"].numpy(), want, rtol=1e-6, atol=1e-6)
    assert want.shape == (3, 4)

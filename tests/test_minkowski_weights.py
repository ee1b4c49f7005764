"""so.models.load_minkowski_weights: real MinkowskiEngine 0.5.4 checkpoints
(tests/fixtures/minkowski/, made by its make_fixture.py; README there)
loaded into so.models give ME's eval-mode outputs on ME's input."""

import os

import numpy as np
import pytest

import sparse_ops as so

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "minkowski")


def _fixture(name):
    with np.load(os.path.join(FIXTURES, name)) as data:
        arrays = {k: data[k] for k in data.files}
    extra = {k: arrays.pop(k) for k in ("input_coordinates", "input_features",
                                        "output_features")}
    return arrays, extra


def _minkunet(dtype):
    return so.models.MinkUNet14(5, planes=(8, 16, 16, 16, 16, 16, 8, 8), init_dim=8,
                                dtype=dtype)


def _resnet(dtype, **kwargs):
    options = dict(minkowski_windows=True, instance_norm_epsilon=1e-8)
    options.update(kwargs)
    return so.models.ResNet14(4, planes=(8, 16, 16, 16), init_dim=8, dtype=dtype, **options)


@pytest.mark.parametrize("name,make,dtype,tol", [
    ("minkunet14_small.npz", _minkunet, "float32", 1e-5),
    ("minkunet14_small_f64.npz", _minkunet, "float64", 1e-12),
    ("resnet14_small.npz", _resnet, "float32", 1e-5),
    ("resnet14_small_f64.npz", _resnet, "float64", 1e-8),
])
def test_gives_minkowski_engine_outputs(name, make, dtype, tol):
    state_dict, data = _fixture(name)
    net = so.models.load_minkowski_weights(make(dtype), state_dict)
    x = so.SparseTensor(data["input_features"].astype(dtype), data["input_coordinates"])
    out = net(x, training=False)
    out = out.features if isinstance(out, so.SparseTensor) else out
    want = data["output_features"]
    # ME returns rows in the input's order (MinkUNet) or by batch item (ResNet).
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=tol * np.abs(want).max())


def test_from_a_path_and_an_unbuilt_or_built_model(tmp_path):
    state_dict, data = _fixture("minkunet14_small_f64.npz")
    path = str(tmp_path / "weights.npz")
    np.savez(path, **state_dict)
    built = _minkunet("float64")
    built(so.SparseTensor(np.zeros((1, 3)), np.zeros((1, 4), np.int32)))
    so.models.load_minkowski_weights(built, path)
    out = built(so.SparseTensor(data["input_features"], data["input_coordinates"]))
    np.testing.assert_allclose(out.features.numpy(), data["output_features"], atol=1e-10)


def test_errors_name_the_entry():
    state_dict, _ = _fixture("minkunet14_small.npz")
    missing = dict(state_dict)
    del missing["block3.0.conv2.kernel"]
    with pytest.raises(ValueError, match="no 'block3.0.conv2.kernel'"):
        so.models.load_minkowski_weights(_minkunet("float32"), missing)
    wrong = dict(state_dict, **{"bn0.bn.weight": np.ones(7, np.float32)})
    with pytest.raises(ValueError, match=r"bn0.bn.weight: the checkpoint's shape \(7,\)"):
        so.models.load_minkowski_weights(_minkunet("float32"), wrong)
    extra = dict(state_dict, **{"head.weight": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="does not use: \\['head.weight'\\]"):
        so.models.load_minkowski_weights(_minkunet("float32"), extra)
    with pytest.raises(ValueError, match="planes|shape"):  # another architecture
        so.models.load_minkowski_weights(so.models.MinkUNet14(5, init_dim=8), state_dict)
    resnet_dict, _ = _fixture("resnet14_small.npz")
    with pytest.raises(ValueError, match="minkowski_windows=True"):
        so.models.load_minkowski_weights(_resnet("float32", minkowski_windows=False),
                                         resnet_dict)
    with pytest.raises(TypeError, match="MinkUNet and ResNet"):
        so.models.load_minkowski_weights(so.layers.Conv(4, 3), state_dict)


def test_minkowski_region_windows():
    # Odd windows stay centred at every stride; even ones and stride 1 are TF-SAME's.
    cube = so.kernel_offsets(3, region="minkowski", dimension=1, stride=2).numpy().ravel()
    assert cube.tolist() == [-1, 0, 1]
    same = so.kernel_offsets(3, region="hypercube", dimension=1, stride=2).numpy().ravel()
    assert same.tolist() == [0, 1, 2]
    assert so.kernel_offsets(2, region="minkowski", dimension=1, stride=2).numpy().ravel() \
        .tolist() == [0, 1]
    np.testing.assert_array_equal(so.kernel_offsets(5, region="minkowski", dimension=3),
                                  so.kernel_offsets(5, region="hypercube", dimension=3))

"""Tests of python/examples/segmentation.py: its smoke setting end to end
(tf.data of raw points -> in-model voxelization -> MinkUNet14 with
synchronized batch norm -> SavedModel on raw points -> the serving client in
a fresh process), with one and with two MultiWorkerMirroredStrategy worker
processes, on both scans; and its parts against direct computations."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "python" / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load("segmentation")


@pytest.fixture(scope="module")
def autzen(example):
    pytest.importorskip("laspy", reason="the example reads .laz with laspy[lazrs]")
    pytest.importorskip("lazrs", reason="the example reads .laz with laspy[lazrs]")
    try:
        return example.fetch_autzen()
    except Exception as e:  # pylint: disable=broad-except
        pytest.skip(f"autzen_trim.laz could not be fetched (offline?): {e}")


@pytest.fixture(scope="module")
def b9(example):
    try:
        return example.fetch_b9()
    except Exception as e:  # pylint: disable=broad-except
        pytest.skip(f"b9_training.ply could not be fetched (no apt-get?): {e}")


def test_metrics_against_direct_count(example):
    true = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0])
    m = example.metrics(pred, true, 2)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 1 -> 2/4
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx([0.5, 0.5])
    assert m["miou"] == pytest.approx(0.5)


def test_height_above_lowest_against_loop(example):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 30, (300, 3))
    h = example.height_above_lowest(xyz, 10.0)
    cells = [tuple(c) for c in np.floor(xyz[:, :2] / 10.0).astype(int)]
    for i, c in enumerate(cells):
        lowest = min(xyz[j, 2] for j, d in enumerate(cells) if d == c)
        assert h[i] == pytest.approx(xyz[i, 2] - lowest)


def test_flatness_of_a_plane_and_a_blob(example):
    rng = np.random.default_rng(1)
    plane = np.c_[rng.uniform(0, 5, (200, 2)), np.zeros(200)] @ np.linalg.qr(
        rng.normal(size=(3, 3)))[0]  # any orientation
    blob = rng.normal(size=(200, 3))
    np.testing.assert_allclose(example.flatness(plane), 1.0, atol=1e-9)
    assert np.median(example.flatness(blob)) < 0.75


def test_model_height_feature_equals_numpy(example):
    """The in-graph height (voxelize of -z per column) equals the numpy one,
    per batch item."""
    rng = np.random.default_rng(2)
    xyz = rng.uniform(-40, 40, (500, 3)).astype(np.float32)
    batch = (np.arange(500) % 2).astype(np.float32)
    model = example.make_model(2, 3, 4, voxel_size=2.0, column=10.0, synchronized=True)
    got = model.height(tf.constant(np.c_[batch, xyz]), 10.0).numpy()[:, 0]
    want = np.empty(500)
    for b in (0, 1):
        m = batch == b
        want[m] = example.height_above_lowest(xyz[m].astype(np.float64), 10.0) / 10.0
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_chunk_dataset_batches_and_augments(example):
    """Chunks lie within the training points' labels, the batch column
    numbers the chunks, augmentation keeps each point's distance to the
    chunk centre up to the scale (0.9-1.1) and the jitter."""
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, 100, (4000, 3))
    labels = (xyz[:, 2] > 50).astype(np.int32)
    train = xyz[:, 0] < 75
    scan = example.Scan("t", xyz, rng.normal(size=(4000, 2)).astype(np.float32), labels,
                        train, ~train, ("a", "b"))
    points, attributes, y = next(iter(example.chunk_dataset(scan, 20.0, 3, 7, 1.0)))
    points, attributes, y = points.numpy(), attributes.numpy(), y.numpy()
    assert points.shape[1] == 4 and attributes.shape == (len(points), 2)
    assert set(np.unique(points[:, 0])) == {0.0, 1.0, 2.0}
    assert np.all(np.diff(points[:, 0]) >= 0)
    assert set(np.unique(y)) <= {0, 1}
    # Rotation about z and scaling: |xy| <= scale * half diagonal (+ jitter).
    assert np.abs(points[:, 1:3]).max() <= 1.1 * np.sqrt(2) * 10 + 0.2
    # Each chunk's attribute rows are training points' rows.
    train_rows = {tuple(r) for r in scan.attributes[train]}
    assert all(tuple(r) in train_rows for r in attributes)


def test_b9_held_out_labels_are_hidden_in_training(example, b9):
    scan = example.load_b9(b9)
    assert scan.classes == ("ground", "vegetation", "roof")
    seen = scan.training_labels()
    assert np.all(seen[scan.test_mask] == example.IGNORE)
    for c in range(3):  # every class on both sides
        assert np.sum(scan.labels[scan.test_mask] == c) > 0
        assert np.sum(seen == c) > 0


def _check_run(example, result, scan):
    assert result["client_agrees"]
    assert len(result["pred"]) == result["test_points"] == scan.test_mask.sum()
    direct = example.metrics(result["pred"], result["true"], len(scan.classes))
    assert result["network"]["miou"] == pytest.approx(direct["miou"])
    assert result["network"]["accuracy"] == pytest.approx(
        np.mean(result["pred"] == result["true"]))


def test_smoke_autzen_one_worker(example, autzen, tmp_path):
    result = example.main(["--smoke", "--data", str(autzen), "--output", str(tmp_path)])
    _check_run(example, result, example.load_autzen(autzen))
    assert (tmp_path / "autzen.png").stat().st_size > 10_000
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()


def test_smoke_b9(example, b9, tmp_path):
    result = example.main(["--smoke", "--dataset", "b9", "--data", str(b9),
                           "--output", str(tmp_path), "--no-client"])
    scan = example.load_b9(b9)
    assert len(result["pred"]) == scan.test_mask.sum()
    assert result["baseline"]["miou"] > 0.5  # the geometric rule works on b9


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes on 127.0.0.1")
def test_smoke_two_workers(example, autzen, tmp_path):
    """--workers 2: two MultiWorkerMirroredStrategy processes train, worker 0
    exports, the client in a fresh process agrees."""
    result = example.main(["--smoke", "--workers", "2", "--worker-timeout", "300",
                           "--data", str(autzen), "--output", str(tmp_path)])
    assert result["workers"] == 2
    _check_run(example, result, example.load_autzen(autzen))


def test_neighbour_vote_against_loop(example):
    rng = np.random.default_rng(4)
    xyz = rng.uniform(0, 10, (60, 3))
    labels = rng.integers(0, 3, 60).astype(np.int32)
    labels[:5] = example.IGNORE
    test = np.arange(60) >= 40
    scan = example.Scan("t", xyz, np.zeros((60, 1), np.float32), labels, ~test, test,
                        ("a", "b", "c"))
    got = example.neighbour_vote(scan, k=3)
    known = np.flatnonzero(labels >= 0)
    for row, i in enumerate(np.flatnonzero(test)):
        d = np.linalg.norm(xyz[known] - xyz[i], axis=1)
        nearest = known[np.argsort(d)[1:4]]  # the point itself is the first
        assert got[row] == np.bincount(labels[nearest], minlength=3).argmax()

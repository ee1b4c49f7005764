"""Smoke test of python/examples/segmentation.py with its --tiny setting:
the data is fetched (or found in the cache), the network trains a few
steps, and the per-point predictions are the voxel predictions sliced back
through the inverse map; the metrics agree with a direct count."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "python" / "examples" / \
    "segmentation.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("segmentation_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def laz_path(example):
    pytest.importorskip("laspy", reason="the example reads .laz with laspy[lazrs]")
    pytest.importorskip("lazrs", reason="the example reads .laz with laspy[lazrs]")
    try:
        return example.fetch_autzen()
    except Exception as e:  # pylint: disable=broad-except
        pytest.skip(f"autzen_trim.laz could not be fetched (offline?): {e}")


def test_metrics_against_direct_count(example):
    true = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0])
    m = example.metrics(pred, true, 2)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 1 -> 2/4
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx([0.5, 0.5])
    assert m["miou"] == pytest.approx(0.5)


def test_segmentation_example_tiny(example, laz_path, tmp_path):
    png = tmp_path / "seg.png"
    result = example.main(["--tiny", "--output", str(png), "--data", str(laz_path)])
    assert png.exists() and png.stat().st_size > 10_000
    # Points -> voxels -> points: each point gets its voxel's logits.
    np.testing.assert_array_equal(result["point_logits"],
                                  result["voxel_logits"][result["inverse"]])
    assert len(result["pred"]) == result["test_points"] == len(result["true"])
    assert result["test_voxels"] <= result["test_points"]
    direct = example.metrics(result["pred"], result["true"], 2)
    assert result["accuracy"] == pytest.approx(np.mean(result["pred"] == result["true"]))
    assert result["miou"] == pytest.approx(direct["miou"])
    assert 0.0 <= result["miou"] <= 1.0

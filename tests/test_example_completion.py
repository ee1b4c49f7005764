"""The completion example (python/examples/completion.py): its data helpers
against direct computations, the decoder's target and pruning logic, and a
smoke run on generated meshes (no download)."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import sparse_ops as so

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python", "examples"))
import completion  # noqa: E402  pylint: disable=wrong-import-position


def box_mesh(size=(1.0, 0.6, 0.4)):
    """A closed box: 8 vertices, 12 triangles."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)],
                       np.float32) * np.float32(size)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4),
             (1, 5, 7, 3)]
    triangles = [(q[0], q[i], q[i + 1]) for q in quads for i in (1, 2)]
    return corners, np.array(triangles, np.int32)


def octahedron_mesh():
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                  [0, 0, -1]], np.float32)
    f = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5),
         (3, 1, 5), (0, 3, 5)]
    return v, np.array(f, np.int32)


def test_read_off(tmp_path):
    path = tmp_path / "quad.off"
    path.write_text("OFF # a comment\n5 2 0\n# vertices\n0 0 0\n1 0 0\n1 1 0\n"
                    "0 1 0\n0 0 1\n4 0 1 2 3 255 0 0\n3 0 1 4\n")
    v, f = completion.read_off(str(path))
    np.testing.assert_array_equal(v[4], [0, 0, 1])
    # The quad is fanned into two triangles; the colour is ignored.
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 1, 4]])
    path.write_text("OFF\n2 1 0\n0 0 0\n1 0 0\n3 0 1 7\n")
    with pytest.raises(ValueError, match="out of range"):
        completion.read_off(str(path))


def test_sample_surface_lies_on_the_mesh():
    v, f = box_mesh()
    points = completion.sample_surface(v, f, 2000, np.random.default_rng(0))
    assert np.abs(np.linalg.norm(points, axis=1).max() - 1) < 1e-5
    # Centred box of half-extents proportional to (1, .6, .4): every point is
    # on one of its faces, so one coordinate is at +-half-extent.
    half = np.abs(points).max(0)
    np.testing.assert_allclose(half / half[0], [1, 0.6, 0.4], atol=1e-2)
    on_face = np.isclose(np.abs(points), half, atol=1e-5).any(1)
    assert on_face.all()
    # Area-weighted: the two largest faces (1 x .6) hold .6 / (.6 + .4 + .24)
    # of the points.
    frac = np.isclose(np.abs(points[:, 2]), half[2], atol=1e-5).mean()
    assert abs(frac - 0.6 / 1.24) < 0.05


def test_make_pair_cuts_through_the_centre():
    v, f = octahedron_mesh()
    rng = np.random.default_rng(1)
    points = completion.sample_surface(v, f, 4000, rng)
    for _ in range(5):
        half, full = completion.make_pair(points, 16, rng)
        assert full.min() >= 0 and full.max() < 16
        full_set = {tuple(r) for r in full.tolist()}
        assert {tuple(r) for r in half.tolist()} < full_set
        # A plane through the centre of a symmetric shape keeps about half.
        assert 0.25 < len(half) / len(full) < 0.75


def test_voxel_iou_and_split_batch():
    a = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    b = np.array([[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]])
    assert completion.voxel_iou(a, b) == pytest.approx(2 / 5)
    assert completion.voxel_iou(np.zeros([0, 3]), np.zeros([0, 3])) == 1.0
    batched = so.utils.batched_coordinates([a, b])
    parts = completion.split_batch(batched, 3)
    np.testing.assert_array_equal(parts[0], a)
    np.testing.assert_array_equal(parts[1], b)
    assert parts[2].shape == (0, 3)  # nothing left of the last batch item


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_target_mask_is_membership_of_the_strided_target(rng, stride):
    target = so.utils.batched_coordinates(
        [rng.integers(-8, 8, [30, 3]), rng.integers(-8, 8, [20, 3])])
    target = np.unique(target, axis=0)
    sites = np.unique(np.concatenate([
        np.c_[target[:, :1], target[:, 1:] // stride * stride][
            rng.random(len(target)) < 0.5],
        np.c_[rng.integers(0, 2, [40, 1]), rng.integers(-4, 4, [40, 3]) * stride]]),
        axis=0)
    generated = so.SparseTensor(np.zeros([len(sites), 1], np.float32), sites, stride)
    mask = completion.target_mask(generated, tf.constant(target, tf.int32)).numpy()
    strided = {(r[0],) + tuple(c // stride * stride for c in r[1:])
               for r in target.tolist()}
    expected = [tuple(r) in strided for r in sites.tolist()]
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < len(mask)


def test_training_keeps_every_target_site():
    """While training, each level's generated sites contain all target sites
    at that stride (their parents were kept), so every level is supervised
    on the whole shape; the final output is what the head predicts."""
    v, f = octahedron_mesh()
    rng = np.random.default_rng(2)
    points = completion.sample_surface(v, f, 3000, rng)
    pairs = [completion.make_pair(points, 8, rng) for _ in range(2)]
    coords, feats, targets = completion.make_batch(pairs)
    net = completion.CompletionNet(8)
    logits, labels, kept = net(so.SparseTensor(feats, coords), tf.constant(targets),
                              training=True)
    assert len(logits) == 3
    for level, label in zip((4, 2, 1), labels):
        strided = np.unique(np.c_[targets[:, :1], targets[:, 1:] // level * level],
                            axis=0)
        assert int(tf.reduce_sum(tf.cast(label, tf.int32))) == len(strided)
    # The last level is pruned by the prediction alone, the others keep the
    # target's sites too.
    for logit, label, x in zip(logits, labels, kept):
        keep = logit.numpy() > 0
        if x is not kept[-1]:
            keep |= label.numpy()
        assert x.coordinates.shape[0] == keep.sum()
    loss = completion.completion_loss(logits, labels)
    assert np.isfinite(loss.numpy())


def test_resolution_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        completion.CompletionNet(24)


def _smoke(tmp_path, *flags):
    meshes = {"box": box_mesh(), "octahedron": octahedron_mesh(),
              "flat_box": box_mesh((1.0, 0.8, 0.2)), "cube": box_mesh((1, 1, 1))}
    output = tmp_path / "completion.png"
    metrics = completion.main(["--smoke", "--output", str(output), *flags],
                              meshes=meshes, hold_out=("octahedron", "cube"))
    assert output.stat().st_size > 0
    assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["iou_at_half"] <= 1
    assert len(metrics["iou_per_level"]) == len(metrics["baseline_per_level"]) == 3
    assert metrics["threshold"] in completion.THRESHOLDS
    # A box or octahedron cut through its centre keeps about half its voxels.
    assert 0.3 < metrics["baseline_iou"] < 0.7


def test_smoke_run_eager(tmp_path):
    _smoke(tmp_path, "--eager")
    assert not tf.config.functions_run_eagerly()  # restored


@pytest.mark.slow
def test_smoke_run_traced(tmp_path):
    """The tf.function path of the real run (tracing takes a minute or more)."""
    _smoke(tmp_path)
